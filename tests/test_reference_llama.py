"""Llama outputs checked against recorded references from transformers and llama.cpp.

The fixtures under tests/fixtures/ are written by scripts/make_fixtures.py
(transformers 5.24 / torch on CPU, f32) and scripts/record_llamacpp.py
(llama-cpp-python 0.3.36); see tests/fixtures/README.md.  Nothing here imports
torch or transformers: the references are the recorded JSON files.

Bounds for quantized files (first-step logprobs of the generated/top tokens
against the transformers reference that runs the *dequantized* GGUF weights in
f32).  llama.cpp itself, which quantizes activations (F16 for F16 weights, Q8_0
for Q8_0/Q4_0, Q8_K for K-quants), was measured at these maximum deviations over
the top-5 reference tokens of all 7 prompts; each bound is ~1.5x that:

    file               llama.cpp measured   bound
    tiny-f16.gguf            0.0066          0.02
    tiny-q8_0.gguf           0.193           0.30
    tiny-q4_0.gguf           0.316           0.50
    tiny256-q4_k.gguf        0.500           0.75

The tiny random models are far more sensitive than real ones (every weight
matters), which is why the Q8_0 bound is large; the greedy token sequence on
each quantized file must equal llama.cpp's on the same file exactly.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import mistralrs
import pytest

from mistralrs import Runner, Which
from reference_support import OTHER_KERNELS, by_name, check_greedy_steps, choice_text, content, greedy_agrees, send_greedy

FIX = Path(__file__).resolve().parent / "fixtures"
TINY = FIX / "llama-tiny"
TINY256 = FIX / "llama-tiny-256"

N_STEPS = 16
F32_TOL = 1e-3
QUANT_BOUNDS = {
    "tiny-f16.gguf": 0.02,
    "tiny-q8_0.gguf": 0.30,
    "tiny-q4_0.gguf": 0.50,
    "tiny256-q4_k.gguf": 0.75,
}
QUANT_FILES = [(TINY, "tiny-f16.gguf"), (TINY, "tiny-q8_0.gguf"), (TINY, "tiny-q4_0.gguf"),
               (TINY256, "tiny256-q4_k.gguf")]
ALL_GGUF = [(TINY, "tiny-f32.gguf")] + QUANT_FILES


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"missing fixture {path}; run scripts/make_fixtures.py and scripts/record_llamacpp.py")
    return path


def _load_json(path: Path) -> dict:
    return json.loads(_need(path).read_text())


_REFS: dict[Path, dict] = {}
_LCPP: dict[Path, dict] = {}


def refs(folder: Path) -> dict:
    if folder not in _REFS:
        _REFS[folder] = _load_json(folder / "references.json")
    return _REFS[folder]


def lcpp(folder: Path) -> dict:
    if folder not in _LCPP:
        _LCPP[folder] = _load_json(folder / "references_llamacpp.json")
    return _LCPP[folder]


def case_names() -> list[str]:
    return [c["name"] for c in refs(TINY)["cases"]]


def completion_names() -> list[str]:
    return [c["name"] for c in refs(TINY)["cases"] if c["kind"] == "completion"]


def get_case(folder: Path, name: str) -> dict:
    return next(c for c in refs(folder)["cases"] if c["name"] == name)


def bytes_to_id(folder: Path) -> dict[tuple, int]:
    return {tuple(b): i for i, b in enumerate(refs(folder)["vocab_bytes"])}


# --------------------------------------------------------------------------- runners
class _Runners:
    """Each model loads once per module; outputs of each (model, case) are computed once."""

    def __init__(self):
        self.runners: dict[tuple, Runner] = {}
        self.outputs: dict[tuple, object] = {}

    def get(self, key: tuple) -> Runner:
        if key not in self.runners:
            kind, folder = key[0], key[1]
            if kind == "plain":
                _need(folder / "model.safetensors")
                which = Which.Plain(model_id=str(folder), arch="llama")
            else:
                _, _, fname, tok = key
                _need(folder / fname)
                which = Which.GGUF(tok_model_id=(str(folder) if tok else None),
                                   quantized_model_id=str(folder), quantized_filename=fname)
            self.runners[key] = Runner(which=which)
        return self.runners[key]

    def run(self, key: tuple, folder: Path, name: str | None, prompt: str | None = None):
        okey = key + (name, prompt)
        if okey not in self.outputs:
            case = get_case(folder, name) if prompt is None else {"kind": "completion", "prompt": prompt}
            self.outputs[okey] = send_greedy(self.get(key), case, N_STEPS)
        return self.outputs[okey]

    def close(self):
        for r in self.runners.values():
            close = getattr(r, "close", None)
            if close is not None:
                close()


@pytest.fixture(scope="module")
def runners():
    rs = _Runners()
    yield rs
    rs.close()


def plain_key(folder):
    return ("plain", folder)


def gguf_key(folder, fname, tok_from_dir=False):
    return ("gguf", folder, fname, tok_from_dir)


# --------------------------------------------------------------------------- comparison helpers
def check_against_steps(res, folder: Path, case: dict, ref_steps: list[dict], ref_text: str, tol: float, label: str):
    check_greedy_steps(res, case, ref_steps, ref_text, tol, label, refs(folder)["vocab_bytes"], N_STEPS)


# --------------------------------------------------------------------------- plain (safetensors)
@pytest.mark.parametrize("name", completion_names())
def test_plain_tokenize_matches_transformers(runners, name):
    """Reference: transformers PreTrainedTokenizerFast(tokenizer.json)(prompt) ids (BOS added)."""
    case = get_case(TINY, name)
    assert runners.get(plain_key(TINY)).tokenize(case["prompt"]) == case["prompt_ids"]


@pytest.mark.parametrize("name", completion_names())
def test_plain_detokenize_roundtrip(runners, name):
    """Reference: transformers tokenizer.decode(ids) == prompt (the recorded ids decode to the prompt text)."""
    case = get_case(TINY, name)
    assert runners.get(plain_key(TINY)).detokenize(case["prompt_ids"][1:]) == case["prompt"]


@pytest.mark.parametrize("folder", [TINY, TINY256], ids=["llama-tiny", "llama-tiny-256"])
@pytest.mark.parametrize("name", case_names())
def test_plain_greedy_matches_transformers(runners, folder, name):
    """Reference: transformers LlamaForCausalLM (f32, CPU) greedy loop on model.safetensors, 16 steps ignoring
    EOS; chosen token, logprob (1e-3), top-5 logprobs (1e-3), decoded text, usage.prompt_tokens.
    llama-tiny: GQA, untied head, legacy config.json layout; llama-tiny-256: tied embeddings, llama3
    rope scaling, transformers-5 `rope_parameters` config.json layout."""
    case = get_case(folder, name)
    ref = by_name(refs(folder)["plain"]["results"], name)
    res = runners.run(plain_key(folder), folder, name)
    check_against_steps(res, folder, case, ref["steps"], ref["text"], F32_TOL, f"{folder.name}/plain/{name}")


# --------------------------------------------------------------------------- GGUF F32
@pytest.mark.parametrize("tok_from_dir", [False, True], ids=["gguf-tokenizer", "tokenizer-json"])
@pytest.mark.parametrize("name", case_names())
def test_gguf_f32_matches_transformers(runners, name, tok_from_dir):
    """Reference: transformers from_pretrained(dir, gguf_file='tiny-f32.gguf') greedy loop (identical to the
    safetensors reference; llama.cpp agrees too); same checks and 1e-3 tolerance as the plain model.
    Catches a missing Q/K un-permutation."""
    case = get_case(TINY, name)
    ref = by_name(refs(TINY)["gguf"]["tiny-f32.gguf"]["results"], name)
    res = runners.run(gguf_key(TINY, "tiny-f32.gguf", tok_from_dir), TINY, name)
    check_against_steps(res, TINY, case, ref["steps"], ref["text"], F32_TOL, f"tiny-f32.gguf/{name}")


# --------------------------------------------------------------------------- GGUF tokenizer
@pytest.mark.parametrize("folder,fname", ALL_GGUF, ids=[f for _, f in ALL_GGUF])
def test_gguf_metadata_tokenizer_matches_tokenizer_json(runners, folder, fname):
    """Reference: transformers PreTrainedTokenizerFast(tokenizer.json) ids; the engine builds its tokenizer from
    the GGUF `tokenizer.ggml.*` metadata (gpt2 BPE, tok_model_id=None). llama.cpp's tokenizer on the same
    files gives the same ids (recorded)."""
    r = runners.get(gguf_key(folder, fname))
    for case in refs(folder)["cases"]:
        if case["kind"] == "completion":
            assert r.tokenize(case["prompt"]) == case["prompt_ids"], case["name"]
            assert r.detokenize(case["prompt_ids"][1:]) == case["prompt"], case["name"]
    for res in lcpp(folder)["files"][fname]["results"]:
        assert res["tokenize_matches_reference"], res["name"]


@pytest.mark.parametrize("folder,fname", ALL_GGUF, ids=[f for _, f in ALL_GGUF])
@pytest.mark.parametrize("name", case_names())
def test_gguf_prompt_tokens(runners, folder, fname, name):
    """Reference: transformers tokenizer(prompt) / apply_chat_template(add_generation_prompt=True) token counts;
    the engine takes tokenizer and chat template from the GGUF metadata (tok_model_id=None)."""
    case = get_case(folder, name)
    res = runners.run(gguf_key(folder, fname), folder, name)
    assert res.usage.prompt_tokens == len(case["prompt_ids"])


# --------------------------------------------------------------------------- quantized GGUF
@pytest.mark.parametrize("folder,fname", QUANT_FILES, ids=[f for _, f in QUANT_FILES])
@pytest.mark.parametrize("name", case_names())
def test_quantized_first_step_logprobs(runners, folder, fname, name):
    """Reference: transformers on the dequantized GGUF weights (f32; from_pretrained(gguf_file=...) for
    llama-tiny, gguf.quants.dequantize + the model's config for the llama3-rope K-quant file), full first-step
    log-softmax. Every returned first-step logprob (chosen and top-5) within the file's bound (module
    docstring: ~1.5x what llama.cpp itself deviates), and the reference's top-1 token among the returned top-5."""
    bound = QUANT_BOUNDS[fname]
    ref = by_name(refs(folder)["gguf"][fname]["results"], name)
    full = ref["first_step_logprobs"]
    b2i = bytes_to_id(folder)
    res = runners.run(gguf_key(folder, fname), folder, name)
    first = content(res)[0]
    tid = b2i[tuple(first.bytes)]
    assert abs(first.logprob - full[tid]) <= bound, (first.token, first.logprob, full[tid])
    got_ids = []
    for t in first.top_logprobs:
        j = b2i[tuple(t.bytes)]
        got_ids.append(j)
        assert abs(t.logprob - full[j]) <= bound, (fname, name, t.token, t.logprob, full[j])
    ref_top1 = max(range(len(full)), key=lambda k: full[k])
    assert ref_top1 in got_ids, f"reference top-1 id {ref_top1} not in returned top-5 {got_ids}"


# Where the engine's quantized kernels and llama.cpp's round activations differently enough to flip a
# near-tie on these hypersensitive random models. Strict: an engine change that starts matching llama.cpp
# here makes these fail until the entry is removed (the Q4_K entries went when Q4_K moved from candle's
# kernels, whose first-step logprobs differed from llama.cpp's by ~0.1, to this project's panel kernels).
KNOWN_LLAMACPP_DIVERGENCE = {
    ("tiny-q4_0.gguf", "unicode"),
}
# Where Q4_K runs on candle's CPU kernel (MISTRALRS_CPU_KERNELS=candle, or a CPU without the
# panel kernels), its ~0.1 first-step deviation moves these two off llama.cpp's path by more
# than a near tie.
CANDLE_Q4K = mistralrs.build_info()["kernels"]["Q4_K"].startswith("candle")
CANDLE_Q4K_DIVERGENCE = {("tiny256-q4_k.gguf", "numbers"), ("tiny256-q4_k.gguf", "capital")}


@pytest.mark.parametrize("folder,fname", ALL_GGUF, ids=[f for _, f in ALL_GGUF])
@pytest.mark.parametrize("name", case_names())
def test_gguf_greedy_matches_llamacpp(runners, folder, fname, name, request):
    """Reference: llama.cpp (llama-cpp-python 0.3.36) greedy ids on the same GGUF file, prompt ids fed as tokens,
    16 steps ignoring EOS; token sequence and decoded text equal."""
    if (fname, name) in KNOWN_LLAMACPP_DIVERGENCE and not OTHER_KERNELS:
        request.applymarker(pytest.mark.xfail(strict=True, reason="near-tie flipped by activation rounding"))
    if (fname, name) in CANDLE_Q4K_DIVERGENCE and CANDLE_Q4K:
        request.applymarker(pytest.mark.xfail(strict=False, reason="candle's Q4_K CPU kernel rounds activations differently"))
    case = get_case(folder, name)
    ref = by_name(lcpp(folder)["files"][fname]["results"], name)
    vb = refs(folder)["vocab_bytes"]
    res = runners.run(gguf_key(folder, fname), folder, name)
    assert res.usage.prompt_tokens == len(case["prompt_ids"])
    assert len(content(res)) == N_STEPS
    if greedy_agrees(res, [vb[i] for i in ref["ids"]], f"{fname}/{name} vs llama.cpp"):
        assert choice_text(res, case["kind"]) == ref["text"]


@pytest.mark.parametrize("folder,fname", [(TINY, "tiny-q8_0.gguf"), (TINY256, "tiny256-q4_k.gguf")],
                         ids=["tiny-q8_0.gguf", "tiny256-q4_k.gguf"])
def test_gguf_tokenizer_json_path_same_as_metadata(runners, folder, fname):
    """Reference: llama.cpp greedy ids on the file; with tok_model_id=dir (tokenizer.json/tokenizer_config.json)
    the engine gives the same prompt ids and the same greedy output as with the GGUF-metadata tokenizer."""
    r = runners.get(gguf_key(folder, fname, True))
    for case in refs(folder)["cases"]:
        if case["kind"] == "completion":
            assert r.tokenize(case["prompt"]) == case["prompt_ids"], case["name"]
    vb = refs(folder)["vocab_bytes"]
    for case in refs(folder)["cases"]:
        ref = by_name(lcpp(folder)["files"][fname]["results"], case["name"])
        res = runners.run(gguf_key(folder, fname, True), folder, case["name"])
        assert res.usage.prompt_tokens == len(case["prompt_ids"]), case["name"]
        got = [list(t.bytes) for t in content(res)]
        if (fname, case["name"]) in KNOWN_LLAMACPP_DIVERGENCE or OTHER_KERNELS:
            # Compare with the engine's own metadata-tokenizer run instead of llama.cpp.
            meta = runners.run(gguf_key(folder, fname), folder, case["name"])
            assert got == [list(t.bytes) for t in content(meta)], case["name"]
        else:
            assert got == [vb[i] for i in ref["ids"]], case["name"]


def test_fixture_references_are_consistent():
    """Reference: the recorded files themselves: F32 GGUF reference == safetensors reference (transformers), and
    llama.cpp on the F32 file agrees with both; every recorded logprob is finite."""
    plain = refs(TINY)["plain"]["results"]
    f32 = refs(TINY)["gguf"]["tiny-f32.gguf"]["results"]
    lc = lcpp(TINY)["files"]["tiny-f32.gguf"]["results"]
    for a, b, c in zip(plain, f32, lc):
        assert a["ids"] == b["ids"] == c["ids"], a["name"]
    for folder in (TINY, TINY256):
        for r in refs(folder)["plain"]["results"]:
            assert all(math.isfinite(s["logprob"]) for s in r["steps"])


# --------------------------------------------------------------------------- GGUF `llama` (SentencePiece) vocabulary
SPM = FIX / "llama-tiny-spm"


def spm_refs() -> dict:
    return refs(SPM)


def spm_prompts() -> list[str]:
    return [c["prompt"] for c in spm_refs()["cases"]]


@pytest.mark.parametrize("prompt", spm_prompts())
def test_gguf_spm_tokenizer_matches_sentencepiece(runners, prompt):
    """Reference: sentencepiece (BPE, byte_fallback) encode(prompt) with BOS prepended, from the GGUF
    `tokenizer.ggml.model=llama` vocabulary (tokens, scores, token_type; tok_model_id=None); llama.cpp's
    tokenizer on the file gives the same ids (recorded). Round trip: detokenize(ids without BOS) == prompt."""
    ref = spm_refs()
    case = next(c for c in ref["cases"] if c["prompt"] == prompt)
    r = runners.get(gguf_key(SPM, ref["gguf_file"]))
    assert r.tokenize(prompt) == case["prompt_ids"], case["pieces"]
    assert r.detokenize(case["prompt_ids"][1:]) == prompt
    lc = next(x for x in lcpp(SPM)["files"][ref["gguf_file"]]["results"] if x["prompt"] == prompt)
    assert lc["tokenize_matches_reference"]


@pytest.mark.parametrize("prompt", spm_prompts())
def test_gguf_spm_greedy_matches_llamacpp(runners, prompt):
    """Reference: llama.cpp greedy ids (16 steps, EOS ignored) on tiny-spm-q8_0.gguf; each generated token's
    bytes (SentencePiece piece with U+2581 as a space, <0xNN> byte pieces as that byte) equal llama.cpp's."""
    ref = spm_refs()
    case = next(c for c in ref["cases"] if c["prompt"] == prompt)
    lc = next(x for x in lcpp(SPM)["files"][ref["gguf_file"]]["results"] if x["prompt"] == prompt)
    res = runners.run(gguf_key(SPM, ref["gguf_file"]), SPM, None, prompt=prompt)
    assert res.usage.prompt_tokens == len(case["prompt_ids"])
    got = [list(t.bytes) for t in content(res)]
    want = [ref["vocab_bytes"][i] for i in lc["ids"]]
    assert got == want, f"llama.cpp ids {lc['ids']}"
