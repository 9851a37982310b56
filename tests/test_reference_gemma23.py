"""Gemma 2 and Gemma 3 (issue 14) checked against recorded references from transformers and llama.cpp.

Fixtures: tests/fixtures/gemma2-tiny/, gemma3-tiny/, gemma3-mm-tiny/, written by scripts/make_fixtures_gemma.py
(transformers 5.23 / torch on CPU, f32, eager attention), which also records llama.cpp (llama-cpp-python 0.3.36)
on every GGUF into references_llamacpp.json; see its docstring and tests/fixtures/README.md.  Nothing here imports
torch.

The three random tiny models share: hidden 64, 4 heads / 2 KV heads, head_dim 32 (!= 64/4), query_pre_attn_scalar
24 (!= head_dim), GeGLU, four (1 + w) RMSNorms per layer, sqrt(hidden) embedding scale, tied head, sliding window 8
on the local layers (every prompt is 32-56 tokens, so longer than the window), vocab 384 with Gemma's special
tokens <bos>=0, <eos>=1, <start_of_turn>=2, <end_of_turn>=3 and Gemma's own chat templates.
  gemma2     Gemma2ForCausalLM, local/global alternating, attention-logit soft-cap 8 and final soft-cap 40 (both bite)
  gemma3     Gemma3ForCausalLM (model_type gemma3_text), layer_types 5 local : 1 global with the last layer local,
             Q/K norms, rope base 1e6 on global and 1e4 on local layers
  gemma3-mm  the Gemma3ForConditionalGeneration layout (config.json model_type gemma3 with a text_config,
             language_model.* tensor names, vision tensors a text-only loader skips), linear rope scaling 8 on the
             global layers; loaded with arch="gemma3"

Per model:
- plain (`Which.Plain(model_id=dir, arch=...)`): greedy 16 steps (EOS ignored) equal to transformers, token bytes
  and text equal, chosen and top-5 logprobs within 1e-3; prompt ids equal to transformers' tokenizer, chat prompts
  rendered with tokenizer_config.json's template;
- GGUF F32 (tokenizer and template from the GGUF metadata): the same against transformers on the GGUF's weights
  with llama.cpp's semantics.  llama.cpp scales attention by 1/sqrt(head_dim) and never reads
  query_pre_attn_scalar (no GGUF key carries it), so these references use query_pre_attn_scalar := head_dim and
  differ from `plain` on purpose (0.4-0.6 in first-step logprobs).  The engine's greedy ids equal llama.cpp's on
  the same file too (llama.cpp's F32 greedy equals that reference on every prompt, recorded);
- GGUF Q8_0 (gemma2, gemma3): first-step logprobs within a bound of transformers on the dequantized weights: 1.5x
  llama.cpp's own maximum first-step top-5 deviation from that reference (llama.cpp quantizes activations to
  Q8_0), computed from references_llamacpp.json (`first_step_top5_max_abs_diff_vs_transformers` of the file):

      file                     llama.cpp measured   bound
      gemma2-tiny-q8_0.gguf         0.324            0.49
      gemma3-tiny-q8_0.gguf         0.114            0.17

  and greedy token bytes equal to llama.cpp's on the same file, or leaving them only at a near tie (llama.cpp's
  top-1/top-2 gap below that bound) for llama.cpp's second token.  The issue asks for either the greedy text or
  the first-step bound; here the bound is required everywhere (as for the other architectures,
  tests/test_reference_archs.py) and the greedy run may part from llama.cpp's only at such a near tie: the
  recorded llama.cpp gaps on these files go down to 0.04, below the two engines' different activation rounding;
- end of sequence: generation_config.json's eos_token_id [<eos>, <end_of_turn>] (what transformers' generate stops
  at) for the plain model; for the GGUF, whose tokenizer.ggml.eos_token_id is <eos> only, <end_of_turn> too (what
  llama.cpp counts as end of generation).  Made deterministic with logit_bias (+100 on one token beats every
  logit of these models: all first-step logprobs are > -60);
- `Runner(chat_template=...)` with a Gemma template renders what transformers' apply_chat_template renders;
- `arch` disagreeing with config.json raises ValueError naming both; `Architecture.Gemma2` / `Architecture.Gemma3`
  and the strings "gemma2" / "gemma3" are both accepted.
"""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import gguf_edit as ge
import pytest
from mistralrs import Architecture, ChatCompletionRequest, CompletionRequest, Runner, Which
from reference_support import TinyModels, by_name, bytes_to_ids, check_greedy_steps, choice_text, content, send_greedy

FIX = Path(__file__).resolve().parent / "fixtures"
ALL_MODELS = ["gemma2", "gemma3", "gemma3-mm"]
ARCH = {"gemma2": "gemma2", "gemma3": "gemma3", "gemma3-mm": "gemma3"}
N_STEPS = 16
F32_TOL = 1e-3
QUANT_BOUND_FACTOR = 1.5
# The bounds the module docstring states (1.5x the recorded llama.cpp deviation, rounded); kept in step with the
# JSON by test_fixture_references_are_consistent.  The tests themselves compute the bound from the JSON.
DOCUMENTED_QUANT_BOUNDS = {"gemma2-tiny-q8_0.gguf": 0.49, "gemma3-tiny-q8_0.gguf": 0.17}
BOS, EOS, START_OF_TURN, END_OF_TURN = 0, 1, 2, 3
LOGIT_BIAS = 100.0  # OpenAI's largest allowed bias


TINY = TinyModels(FIX, ALL_MODELS, "scripts/make_fixtures_gemma.py", arch=ARCH)
folder, f32_file, q8_file, refs, lcpp, get_case = TINY.folder, TINY.f32_file, TINY.q8_file, TINY.refs, TINY.lcpp, TINY.get_case
which_for = TINY.which_for


MODELS = TINY.names


def gguf_files(model: str) -> list[str]:
    """The GGUF files recorded for the model: F32 for all three, Q8_0 for gemma2 and gemma3."""
    return [f for f in (f32_file(model), q8_file(model)) if f in refs(model)["gguf"]]


def q8_models() -> list[str]:
    return [m for m in MODELS if q8_file(m) in refs(m)["gguf"]]


def quant_bound(model: str) -> float:
    """1.5x llama.cpp's own first-step top-5 deviation from transformers on the dequantized Q8_0 weights."""
    return QUANT_BOUND_FACTOR * lcpp(model)["files"][q8_file(model)]["first_step_top5_max_abs_diff_vs_transformers"]


def model_cases(models=None) -> list[tuple[str, str]]:
    return TINY.cases(models)


def model_completion_cases() -> list[tuple[str, str]]:
    return TINY.cases(kind="completion")


def ids_of(pairs) -> list[str]:
    return ["-".join(p) for p in pairs]


def first_case(model: str, kind: str) -> dict:
    return next(c for c in refs(model)["cases"] if c["kind"] == kind)


def template_of(model: str) -> str:
    return json.loads((folder(model) / "tokenizer_config.json").read_text())["chat_template"]


# --------------------------------------------------------------------------- runners
@pytest.fixture(scope="module")
def runners():
    rs = TINY.runners(N_STEPS)
    yield rs
    rs.close()


def plain_key(model):
    return ("plain", model)


def gguf_key(model, fname):
    return ("gguf", model, fname)


def check_against_steps(res, model: str, case: dict, ref_steps: list[dict], ref_text: str, tol: float, label: str):
    check_greedy_steps(res, case, ref_steps, ref_text, tol, label, refs(model)["vocab_bytes"], N_STEPS)


# --------------------------------------------------------------------------- plain (safetensors)
@pytest.mark.parametrize("model,name", model_completion_cases(), ids=ids_of(model_completion_cases()))
def test_plain_tokenize_matches_transformers(runners, model, name):
    """Reference: transformers PreTrainedTokenizerFast(tokenizer.json)(prompt) ids (BOS added) and
    decode(ids) == prompt."""
    case = get_case(model, name)
    r = runners.get(plain_key(model))
    assert r.tokenize(case["prompt"]) == case["prompt_ids"]
    assert r.tokenize(case["prompt"], add_special_tokens=False) == case["prompt_ids"][1:]
    assert r.detokenize(case["prompt_ids"][1:]) == case["prompt"]


@pytest.mark.parametrize("model", MODELS)
def test_plain_chat_prompt_ids_match_transformers(runners, model):
    """Reference: transformers apply_chat_template(add_generation_prompt=True) with tokenizer_config.json's Gemma
    template (the recorded `rendered` text: bos_token first, `assistant` -> `model`, content trimmed, gemma3: the
    system text prepended to the first user turn), then encoded without special tokens (`prompt_ids`)."""
    r = runners.get(plain_key(model))
    chats = [c for c in refs(model)["cases"] if c["kind"] == "chat"]
    assert chats, f"{model}: no chat cases recorded"
    for case in chats:
        assert case["rendered"].startswith("<bos><start_of_turn>user\n"), case["rendered"]
        assert r.tokenize(case["rendered"], add_special_tokens=False) == case["prompt_ids"], case["name"]


@pytest.mark.parametrize("model,name", model_cases(), ids=ids_of(model_cases()))
def test_plain_greedy_matches_transformers(runners, model, name):
    """Reference: transformers Gemma2ForCausalLM / Gemma3ForCausalLM / Gemma3ForConditionalGeneration (eager, f32,
    CPU) greedy loop on model.safetensors, 16 steps ignoring EOS (chat cases: the messages rendered by the
    template); chosen token bytes, logprob (1e-3), top-5 logprobs (1e-3), decoded text, usage.prompt_tokens."""
    case = get_case(model, name)
    ref = by_name(refs(model)["plain"]["results"], name)
    res = runners.run(plain_key(model), name)
    check_against_steps(res, model, case, ref["steps"], ref["text"], F32_TOL, f"{model}/plain/{name}")


# --------------------------------------------------------------------------- GGUF F32
@pytest.mark.parametrize("model,name", model_cases(), ids=ids_of(model_cases()))
def test_gguf_f32_matches_transformers(runners, model, name):
    """Reference: transformers on the F32 GGUF's weights (gguf.quants.dequantize, minus 1 on every norm weight)
    with query_pre_attn_scalar := head_dim (llama.cpp's attention scale), greedy 16 steps; same checks and 1e-3
    tolerance as the plain model; tokenizer and chat template from the GGUF metadata."""
    case = get_case(model, name)
    ref = by_name(refs(model)["gguf"][f32_file(model)]["results"], name)
    res = runners.run(gguf_key(model, f32_file(model)), name)
    check_against_steps(res, model, case, ref["steps"], ref["text"], F32_TOL, f"{f32_file(model)}/{name}")


@pytest.mark.parametrize("model", MODELS)
def test_gguf_metadata_tokenizer_matches_tokenizer_json(runners, model):
    """Reference: transformers tokenizer ids (tokenizer.json) for every prompt (completion: BOS added; chat: the
    rendered prompt without special tokens); the engine's tokenizer is built from the GGUF `tokenizer.ggml.*`
    metadata (gpt2 BPE); llama.cpp's tokenizer on the same files gives the same ids (recorded)."""
    for fname in gguf_files(model):
        r = runners.get(gguf_key(model, fname))
        for case in refs(model)["cases"]:
            if case["kind"] == "completion":
                assert r.tokenize(case["prompt"]) == case["prompt_ids"], (fname, case["name"])
            else:
                assert r.tokenize(case["rendered"], add_special_tokens=False) == case["prompt_ids"], (
                    fname, case["name"])
        lc = lcpp(model)["files"][fname]
        assert "refused" not in lc, lc
        for res in lc["results"]:
            assert res["tokenize_matches_reference"], res["name"]


# --------------------------------------------------------------------------- llama.cpp
def _llamacpp_result(model: str, fname: str, name: str) -> dict:
    lc = lcpp(model)["files"][fname]
    assert "refused" not in lc, lc
    return by_name(lc["results"], name)


def _engine_vs_llamacpp(runners, model: str, fname: str, name: str):
    """The case, llama.cpp's recorded result on `fname`, the engine's greedy response, and both token sequences
    as bytes (the engine's and llama.cpp's ids spelled through the vocabulary); the prompt counted alike."""
    case = get_case(model, name)
    ref = _llamacpp_result(model, fname, name)
    vb = refs(model)["vocab_bytes"]
    res = runners.run(gguf_key(model, fname), name)
    assert res.usage.prompt_tokens == len(case["prompt_ids"])
    got = [list(t.bytes) for t in content(res)]
    assert len(got) == N_STEPS
    return case, ref, res, got, [vb[i] for i in ref["ids"]]


@pytest.mark.parametrize("model,name", model_cases(), ids=ids_of(model_cases()))
def test_gguf_f32_greedy_matches_llamacpp(runners, model, name):
    """Reference: llama.cpp (llama-cpp-python 0.3.36) greedy ids on the same F32 GGUF file, prompt ids fed as tokens
    in one batch, 16 steps ignoring EOS, F32 KV cache (its default F16 KV cache gives the same ids, recorded);
    token bytes and decoded text equal, no exception."""
    fname = f32_file(model)
    case, ref, res, got, want = _engine_vs_llamacpp(runners, model, fname, name)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, (f"{fname}/{name}: step {i}: got bytes {g}, llama.cpp chose id {ref['ids'][i]} bytes {w} "
                        f"(llama.cpp top1-top2 gap there {ref['steps'][i]['gap']})")
    assert choice_text(res, case["kind"]) == ref["text"]


@pytest.mark.parametrize("model,name", model_cases(q8_models()), ids=ids_of(model_cases(q8_models())))
def test_gguf_q8_0_greedy_follows_llamacpp(runners, model, name):
    """Reference: llama.cpp (llama-cpp-python 0.3.36) greedy ids on the same Q8_0 GGUF file (prompt ids fed as tokens
    in one batch, 16 steps ignoring EOS, F32 KV cache; the F16 KV cache gives the same ids, recorded).

    Token bytes equal (then the text too), except that the answer may leave llama.cpp's at a near tie: a step where
    llama.cpp's top-1/top-2 gap is below the file's bound (1.5x llama.cpp's own first-step deviation from the exact
    reference, see the module docstring) and the engine took llama.cpp's second token.  The two engines round
    activations differently (llama.cpp quantizes them to Q8_0), and the recorded gaps go down to 0.04; after such a
    departure the contexts differ and nothing further is compared.  The agreement is printed (pytest -s)."""
    fname = q8_file(model)
    bound = quant_bound(model)
    case, ref, res, got, want = _engine_vs_llamacpp(runners, model, fname, name)
    agree = 0
    while agree < N_STEPS and got[agree] == want[agree]:
        agree += 1
    print(f"\n{fname}/{name}: greedy agreement with llama.cpp {agree}/{N_STEPS}")
    if agree == N_STEPS:
        assert choice_text(res, case["kind"]) == ref["text"]
        return
    step = ref["steps"][agree]
    second = refs(model)["vocab_bytes"][step["top"][1]["id"]]
    assert step["gap"] < bound and got[agree] == second, (
        f"{fname}/{name}: left llama.cpp's greedy at step {agree} (llama.cpp top1-top2 gap {step['gap']:.4f}, "
        f"near-tie bound {bound:.3f}): got bytes {got[agree]}, llama.cpp chose id {ref['ids'][agree]} bytes "
        f"{want[agree]}, its second id {step['top'][1]['id']} bytes {second}")


@pytest.mark.parametrize("model,name", model_cases(q8_models()), ids=ids_of(model_cases(q8_models())))
def test_quantized_first_step_logprobs(runners, model, name):
    """Reference: transformers on the dequantized Q8_0 GGUF weights (f32, query_pre_attn_scalar := head_dim), full
    first-step log-softmax (`gguf[<q8_0 file>].results[].first_step_logprobs`).  Every returned first-step logprob
    (chosen and top-5) within 1.5x llama.cpp's own maximum first-step top-5 deviation from that reference on the
    file (`files[<q8_0 file>].first_step_top5_max_abs_diff_vs_transformers` in references_llamacpp.json), and the
    reference's top-1 token among the returned top-5."""
    fname = q8_file(model)
    bound = quant_bound(model)
    full = by_name(refs(model)["gguf"][fname]["results"], name)["first_step_logprobs"]
    b2i = bytes_to_ids(refs(model)["vocab_bytes"])
    res = runners.run(gguf_key(model, fname), name)
    first = content(res)[0]
    got_ids: set[int] = set()
    for t in [first] + list(first.top_logprobs):
        cands = b2i[tuple(t.bytes)]
        got_ids |= cands
        assert min(abs(t.logprob - full[j]) for j in cands) <= bound, (fname, name, bound, t.token, t.logprob,
                                                                       [full[j] for j in cands])
    ref_top1 = max(range(len(full)), key=lambda k: full[k])
    assert ref_top1 in got_ids, f"reference top-1 id {ref_top1} not in returned top-5 {sorted(got_ids)}"


def test_fixture_references_are_consistent():
    """Reference: the recorded files themselves: every prompt longer than the sliding window; llama.cpp on every GGUF
    agrees with the transformers reference for that file (greedy ids on all 16 steps); the GGUF references differ
    from the plain ones only through query_pre_attn_scalar (the recorded `greedy_ids_equal_to_plain` flags hold);
    eos ids [<eos>, <end_of_turn>] in references.json and generation_config.json; the Q8_0 bounds in the module
    docstring are 1.5x the recorded deviations."""
    for model in MODELS:
        r = refs(model)
        assert r["n_steps"] == N_STEPS and lcpp(model)["n_steps"] == N_STEPS
        assert r["query_pre_attn_scalar"] != r["head_dim"]
        for case in r["cases"]:
            assert len(case["prompt_ids"]) > r["sliding_window"], (model, case["name"])
        plain = r["plain"]["results"]
        for fname in gguf_files(model):
            ref = r["gguf"][fname]["results"]
            lc = lcpp(model)["files"][fname]["results"]
            assert [x["name"] for x in ref] == [x["name"] for x in lc] == [c["name"] for c in r["cases"]]
            for b, c in zip(ref, lc):
                assert b["ids"] == c["ids"], (fname, b["name"])
                assert c["steps_equal_to_transformers_reference"] == N_STEPS, (fname, c["name"])
            assert r["gguf"][fname]["greedy_ids_equal_to_plain"] == [a["ids"] == b["ids"] for a, b in
                                                                     zip(plain, ref)], fname
        for res in plain:
            assert all(math.isfinite(s["logprob"]) for s in res["steps"])
        assert r["eos_ids"] == [EOS, END_OF_TURN]
        assert r["special_tokens"] == {"<bos>": BOS, "<eos>": EOS, "<start_of_turn>": START_OF_TURN,
                                       "<end_of_turn>": END_OF_TURN}
        gen = json.loads((folder(model) / "generation_config.json").read_text())
        assert gen["eos_token_id"] == [EOS, END_OF_TURN]
    for model in q8_models():
        assert round(quant_bound(model), 2) == DOCUMENTED_QUANT_BOUNDS[q8_file(model)], (model, quant_bound(model))


# --------------------------------------------------------------------------- end of sequence
def _biased(runner: Runner, case: dict, token: int, ignore_eos: bool, max_tokens: int = 3):
    """The case's prompt, greedy, with +100 on one token: the model emits that token at every step."""
    common = {"model": "tiny", "max_tokens": max_tokens, "temperature": 0.0, "ignore_eos": ignore_eos,
                  "logit_bias": {token: LOGIT_BIAS}}
    if case["kind"] == "completion":
        return runner.send_completion_request(CompletionRequest(prompt=case["prompt"], **common))
    return runner.send_chat_completion_request(ChatCompletionRequest(messages=case["messages"], **common))


def _eos_keys() -> list[tuple]:
    return [k for m in MODELS for k in (plain_key(m), gguf_key(m, f32_file(m)))]


@pytest.mark.parametrize("key", _eos_keys(), ids=["-".join(k) for k in _eos_keys()])
def test_end_of_turn_and_eos_end_the_answer(runners, key):
    """Reference: for the plain model generation_config.json's eos_token_id [<eos>=1, <end_of_turn>=3], at either of
    which transformers' generate stops; for the GGUF (tokenizer.ggml.eos_token_id = <eos> only, as the real Gemma
    GGUFs have it) llama.cpp's end-of-generation set, which adds <end_of_turn> by its text.  With ignore_eos false
    a chat answer (and a completion) whose first token is <end_of_turn> or <eos> (forced by logit_bias +100) stops
    there: finish_reason "stop", no visible text, no completion token counted.  <start_of_turn> is no stop token
    (the answer runs to max_tokens), and ignore_eos runs on past <end_of_turn>."""
    r = runners.get(key)
    model = key[1]
    for kind in ("chat", "completion"):
        case = first_case(model, kind)
        for stop_id in (END_OF_TURN, EOS):
            res = _biased(r, case, stop_id, ignore_eos=False)
            where = (key, kind, stop_id)
            assert res.choices[0].finish_reason == "stop", (
                f"{where}: the answer did not end at id {stop_id} (eos ids must be [<eos>=1, <end_of_turn>=3]; for a "
                f"GGUF <end_of_turn> by its text, as llama.cpp does); text {choice_text(res, kind)!r}")
            assert choice_text(res, kind) == "", where
            assert res.usage.completion_tokens == 0, (where, res.usage.completion_tokens)
            assert res.usage.prompt_tokens == len(case["prompt_ids"]), where
        res = _biased(r, case, START_OF_TURN, ignore_eos=False)
        assert res.choices[0].finish_reason == "length", (key, kind, "<start_of_turn>")
        assert res.usage.completion_tokens == 3
        res = _biased(r, case, END_OF_TURN, ignore_eos=True)
        assert res.choices[0].finish_reason == "length", (key, kind, "ignore_eos")
        assert res.usage.completion_tokens == 3


# --------------------------------------------------------------------------- chat_template=
def test_chat_template_argument_renders_gemma_chat(runners):
    """Reference: transformers apply_chat_template with Gemma 3's template (gemma3-tiny/tokenizer_config.json) on the
    `system` case: its recorded `prompt_ids` (the three tiny models share one tokenizer.json).  The gemma2 model's
    own template (Gemma 2's) refuses a system message with raise_exception('System role not supported'), as
    transformers does; `Runner(chat_template=<Gemma 3 template>)` on the same model renders the system text into the
    first user turn: the chat answer equals greedy decoding from the recorded prompt ids, step for step."""
    if not {"gemma2", "gemma3"} <= set(MODELS):
        pytest.skip("needs the gemma2-tiny and gemma3-tiny fixtures")
    assert (folder("gemma2") / "tokenizer.json").read_bytes() == (folder("gemma3") / "tokenizer.json").read_bytes()
    case = get_case("gemma3", "system")
    assert case["messages"][0]["role"] == "system"
    with pytest.raises(ValueError, match="System role not supported"):
        runners.get(plain_key("gemma2")).send_chat_completion_request(
            ChatCompletionRequest(model="tiny", messages=case["messages"], max_tokens=2, temperature=0.0))
    common = {"model": "tiny", "max_tokens": 8, "temperature": 0.0, "logprobs": True, "top_logprobs": 5,
              "ignore_eos": True}
    r = Runner(which=which_for(plain_key("gemma2")), chat_template=template_of("gemma3"))
    try:
        chat = r.send_chat_completion_request(ChatCompletionRequest(messages=case["messages"], **common))
        ids = r.send_completion_request(CompletionRequest(prompt=case["prompt_ids"], **common))
    finally:
        r.close()
    assert chat.usage.prompt_tokens == len(case["prompt_ids"]) == ids.usage.prompt_tokens
    got, want = content(chat), content(ids)
    assert [list(t.bytes) for t in got] == [list(t.bytes) for t in want]
    for a, b in zip(got, want):
        assert abs(a.logprob - b.logprob) <= 1e-5, (a.token, a.logprob, b.logprob)
    assert chat.choices[0].message.content == ids.choices[0].text


# --------------------------------------------------------------------------- arch
def test_architecture_members_and_strings():
    """Reference: SPEC §1 / the stubs: Architecture.Gemma2 / Gemma3 with values "gemma2" / "gemma3"; `arch` takes the
    member or the lowercase string."""
    assert Architecture.Gemma2.value == "gemma2"
    assert Architecture.Gemma3.value == "gemma3"
    for member, value in ((Architecture.Gemma2, "gemma2"), (Architecture.Gemma3, "gemma3")):
        for arch in (member, value):
            w = Which.Plain(model_id="some/model", arch=arch)
            got = w.arch.value if isinstance(w.arch, Architecture) else w.arch
            assert got == value, (arch, w.arch)


@pytest.mark.parametrize("model", MODELS)
def test_loads_with_architecture_member(runners, model):
    """Reference: the plain transformers reference of the first completion case (first greedy step, 1e-3): a model
    loaded with `arch=Architecture.Gemma2/Gemma3` is the one loaded with the string."""
    member = {"gemma2": Architecture.Gemma2, "gemma3": Architecture.Gemma3}[ARCH[model]]
    case = first_case(model, "completion")
    ref = by_name(refs(model)["plain"]["results"], case["name"])
    r = Runner(which=Which.Plain(model_id=str(folder(model)), arch=member))
    try:
        res = send_greedy(r, case, 1)
    finally:
        r.close()
    step = content(res)[0]
    assert list(step.bytes) == ref["steps"][0]["bytes"]
    assert abs(step.logprob - ref["steps"][0]["logprob"]) <= F32_TOL


MISMATCHES = [(src, arch) for src, arch in [("gemma2", "gemma3"), ("gemma3", "gemma2"), ("gemma3-mm", "gemma2")]
              if src in MODELS]


@pytest.mark.parametrize("src,arch", MISMATCHES, ids=[f"{s}-dir-as-{a}" for s, a in MISMATCHES])
def test_arch_mismatch_raises_value_error(src, arch):
    """Reference: SPEC §1: a plain model's config.json (model_type gemma2 / gemma3_text / gemma3) disagreeing with
    `arch` raises ValueError naming both."""
    with pytest.raises(ValueError) as ei:
        Runner(which=Which.Plain(model_id=str(folder(src)), arch=arch))
    msg = str(ei.value).lower()
    assert arch in msg and ARCH[src] in msg, msg


# --------------------------------------------------------------------------- bad Gemma settings
BAD_GGUF_SETTINGS = [
    ("gemma2.attn_logit_softcapping", 0.0),
    ("gemma2.final_logit_softcapping", float("nan")),
    ("gemma2.final_logit_softcapping", -30.0),
]


@pytest.mark.parametrize("key,value", BAD_GGUF_SETTINGS, ids=[f"{k}={v}" for k, v in BAD_GGUF_SETTINGS])
def test_bad_gguf_softcapping_is_refused(tmp_path, key, value):
    """A soft-cap that is not finite and positive (0 would divide by zero; NaN poisons every logit) is a corrupt
    file: ValueError naming the key, as for the other hyper-parameters (tests/test_hostile_files.py)."""
    f = ge.GGUFFile.read(folder("gemma2") / f32_file("gemma2"))
    if f.has(key):
        f.set(key, value, ge.FLOAT32)
    else:
        f.add(key, ge.FLOAT32, value)
    f.write(tmp_path / "bad.gguf")
    with pytest.raises(ValueError, match=re.escape(key)):
        Runner(which=Which.GGUF(tok_model_id=None, quantized_model_id=str(tmp_path), quantized_filename="bad.gguf"))


BAD_CONFIG_SETTINGS = [
    ("gemma2", "query_pre_attn_scalar", -24),
    ("gemma2", "attn_logit_softcapping", 0),
    ("gemma3", "rope_local_base_freq", 0),
]


@pytest.mark.parametrize("model,key,value", BAD_CONFIG_SETTINGS, ids=[f"{m}-{k}" for m, k, _ in BAD_CONFIG_SETTINGS])
def test_bad_config_json_gemma_settings_are_refused(tmp_path, model, key, value):
    """The same for config.json: ValueError naming the key."""
    for p in folder(model).iterdir():
        if not p.name.endswith(".gguf"):
            shutil.copy(p, tmp_path / p.name)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg[key] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=re.escape(key)):
        Runner(which=Which.Plain(model_id=str(tmp_path), arch=ARCH[model]))
