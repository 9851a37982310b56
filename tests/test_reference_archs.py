"""The six non-llama architectures checked against recorded references from transformers and llama.cpp.

Fixtures: tests/fixtures/<arch>-tiny/, written by scripts/make_fixtures_archs.py (transformers 5.24 / torch on
CPU, f32) and scripts/record_llamacpp.py archs (llama-cpp-python 0.3.36); see tests/fixtures/README.md and the
docstring of make_fixtures_archs.py for what each tiny model exercises.  Nothing here imports torch.

Per architecture present:
- plain (`Which.Plain(model_id=dir, arch=<arch>)`): greedy 16 steps (EOS ignored) equal to transformers, token
  bytes and text equal, chosen and top-5 logprobs within 1e-3 (mistral: sliding window 16, prompts longer than
  the window, one of ~60 tokens);
- GGUF F32 (tokenizer from the GGUF metadata): the same against transformers on the GGUF's weights (for
  mistral the GGUF is `llama`, without sliding window, so that reference runs full attention);
- GGUF Q8_0: greedy token bytes equal to llama.cpp's on the same file, and first-step logprobs within a bound
  of transformers on the dequantized weights.  llama.cpp quantizes activations to Q8_0; its own measured
  maximum deviation over the top-5 reference tokens of every prompt, and the bound (~1.5x):

      file                   llama.cpp measured   bound
      qwen2-tiny-q8_0.gguf        0.297            0.45
      mistral-tiny-q8_0.gguf      0.193            0.30
      gemma-tiny-q8_0.gguf        0.027            0.05
      phi3-tiny-q8_0.gguf         0.267            0.40
      phi2-tiny-q8_0.gguf         0.269            0.40
      mixtral-tiny-q8_0.gguf      0.280            0.45

  On the F32 files llama.cpp agrees with transformers (max first-step top-5 difference <= 2.2e-5 for qwen2,
  mistral, phi3, mixtral; 3.4e-4 gemma and 3.4e-3 phi2, from ggml's tabulated F16 GELU) and its greedy ids
  equal the references on every prompt; the engine's F32 greedy must equal llama.cpp's too.
- `arch` disagreeing with config.json raises ValueError naming both; a GGUF whose general.architecture is not
  supported raises ValueError listing the supported ones.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mistralrs import Runner, Which
from reference_support import TinyModels, by_name, bytes_to_ids, check_greedy_steps, choice_text, content

FIX = Path(__file__).resolve().parent / "fixtures"
ALL_ARCHS = ["qwen2", "mistral", "gemma", "phi3", "phi2", "mixtral"]
TINY = TinyModels(FIX, ALL_ARCHS, "scripts/make_fixtures_archs.py and scripts/record_llamacpp.py archs")
ARCHS = TINY.names
N_STEPS = 16
F32_TOL = 1e-3
QUANT_BOUNDS = {"qwen2": 0.45, "mistral": 0.30, "gemma": 0.05, "phi3": 0.40, "phi2": 0.40, "mixtral": 0.45}
# GGUF general.architecture names the engine must accept (Mistral and Mixtral files declare `llama`)
SUPPORTED_GGUF = ["llama", "qwen2", "gemma", "phi2", "phi3"]

# (arch, file, case) where the engine is known to flip a llama.cpp near-tie on a quantized file; strict xfail.
KNOWN_LLAMACPP_DIVERGENCE: set[tuple[str, str, str]] = set()

folder, f32_file, q8_file, refs, lcpp, get_case = TINY.folder, TINY.f32_file, TINY.q8_file, TINY.refs, TINY.lcpp, TINY.get_case


def arch_cases() -> list[tuple[str, str]]:
    return TINY.cases()


def arch_completion_cases() -> list[tuple[str, str]]:
    return TINY.cases(kind="completion")


def ids_of(pairs) -> list[str]:
    return [f"{a}-{n}" for a, n in pairs]


# --------------------------------------------------------------------------- runners
@pytest.fixture(scope="module")
def runners():
    rs = TINY.runners(N_STEPS)
    yield rs
    rs.close()


def plain_key(arch):
    return ("plain", arch)


def gguf_key(arch, fname):
    return ("gguf", arch, fname)


# --------------------------------------------------------------------------- comparison
def check_against_steps(res, arch: str, case: dict, ref_steps: list[dict], ref_text: str, tol: float, label: str):
    check_greedy_steps(res, case, ref_steps, ref_text, tol, label, refs(arch)["vocab_bytes"], N_STEPS)


# --------------------------------------------------------------------------- plain (safetensors)
@pytest.mark.parametrize("arch,name", arch_completion_cases(), ids=ids_of(arch_completion_cases()))
def test_plain_tokenize_matches_transformers(runners, arch, name):
    """Reference: transformers PreTrainedTokenizerFast(tokenizer.json)(prompt) ids (BOS added; phi3: the
    SentencePiece vocabulary, equal to sentencepiece's own ids) and decode(ids) == prompt."""
    case = get_case(arch, name)
    r = runners.get(plain_key(arch))
    assert r.tokenize(case["prompt"]) == case["prompt_ids"]
    assert r.detokenize(case["prompt_ids"][1:]) == case["prompt"]


@pytest.mark.parametrize("arch", ARCHS)
def test_plain_chat_prompt_ids_match_transformers(runners, arch):
    """Reference: transformers apply_chat_template(add_generation_prompt=True) then encoded without special
    tokens (the recorded `rendered` text and ids)."""
    r = runners.get(plain_key(arch))
    for case in refs(arch)["cases"]:
        if case["kind"] == "chat":
            assert r.tokenize(case["rendered"], add_special_tokens=False) == case["prompt_ids"], case["name"]


@pytest.mark.parametrize("arch,name", arch_cases(), ids=ids_of(arch_cases()))
def test_plain_greedy_matches_transformers(runners, arch, name):
    """Reference: transformers <Arch>ForCausalLM (f32, CPU) greedy loop on model.safetensors, 16 steps ignoring
    EOS; chosen token bytes, logprob (1e-3), top-5 logprobs (1e-3), decoded text, usage.prompt_tokens."""
    case = get_case(arch, name)
    ref = by_name(refs(arch)["plain"]["results"], name)
    res = runners.run(plain_key(arch), name)
    check_against_steps(res, arch, case, ref["steps"], ref["text"], F32_TOL, f"{arch}/plain/{name}")


# --------------------------------------------------------------------------- GGUF F32
@pytest.mark.parametrize("arch,name", arch_cases(), ids=ids_of(arch_cases()))
def test_gguf_f32_matches_transformers(runners, arch, name):
    """Reference: transformers on the F32 GGUF's weights (from_pretrained(dir, gguf_file=...) for qwen2, mistral
    (`llama`), phi3; gguf.quants.dequantize into the transformers model for gemma, phi2, mixtral), greedy 16
    steps; same checks and 1e-3 tolerance as the plain model; tokenizer from the GGUF metadata."""
    case = get_case(arch, name)
    ref = by_name(refs(arch)["gguf"][f32_file(arch)]["results"], name)
    res = runners.run(gguf_key(arch, f32_file(arch)), name)
    check_against_steps(res, arch, case, ref["steps"], ref["text"], F32_TOL, f"{f32_file(arch)}/{name}")


@pytest.mark.parametrize("arch", ARCHS)
def test_gguf_metadata_tokenizer_matches_tokenizer_json(runners, arch):
    """Reference: transformers tokenizer ids (tokenizer.json) for every prompt; the engine's tokenizer is built
    from the GGUF `tokenizer.ggml.*` metadata (gpt2 BPE, or llama/SentencePiece for phi3); llama.cpp's
    tokenizer on the same files gives the same ids (recorded)."""
    for fname in (f32_file(arch), q8_file(arch)):
        r = runners.get(gguf_key(arch, fname))
        for case in refs(arch)["cases"]:
            if case["kind"] == "completion":
                assert r.tokenize(case["prompt"]) == case["prompt_ids"], (fname, case["name"])
            else:
                assert r.tokenize(case["rendered"], add_special_tokens=False) == case["prompt_ids"], (
                    fname, case["name"])
        lc = lcpp(arch)["files"][fname]
        assert "refused" not in lc, lc
        for res in lc["results"]:
            assert res["tokenize_matches_reference"], res["name"]


# --------------------------------------------------------------------------- llama.cpp
@pytest.mark.parametrize("quant", ["f32", "q8_0"])
@pytest.mark.parametrize("arch,name", arch_cases(), ids=ids_of(arch_cases()))
def test_gguf_greedy_matches_llamacpp(runners, arch, name, quant, request):
    """Reference: llama.cpp (llama-cpp-python 0.3.36) greedy ids on the same GGUF file, prompt ids fed as tokens,
    16 steps ignoring EOS, F32 KV cache; token bytes and decoded text equal."""
    fname = f"{arch}-tiny-{quant}.gguf"
    if (arch, fname, name) in KNOWN_LLAMACPP_DIVERGENCE:
        request.applymarker(pytest.mark.xfail(strict=True, reason="near-tie flipped by activation rounding"))
    case = get_case(arch, name)
    lc = lcpp(arch)["files"][fname]
    assert "refused" not in lc, lc
    ref = by_name(lc["results"], name)
    vb = refs(arch)["vocab_bytes"]
    res = runners.run(gguf_key(arch, fname), name)
    assert res.usage.prompt_tokens == len(case["prompt_ids"])
    got = [list(t.bytes) for t in content(res)]
    want = [vb[i] for i in ref["ids"]]
    assert len(got) == N_STEPS
    for i, (g, w) in enumerate(zip(got, want)):
        assert g == w, (f"{fname}/{name}: step {i}: got bytes {g}, llama.cpp chose id {ref['ids'][i]} bytes {w} "
                        f"(llama.cpp top1-top2 gap there {ref['steps'][i]['gap']})")
    assert choice_text(res, case["kind"]) == ref["text"]


@pytest.mark.parametrize("arch,name", arch_cases(), ids=ids_of(arch_cases()))
def test_quantized_first_step_logprobs(runners, arch, name):
    """Reference: transformers on the dequantized Q8_0 GGUF weights (f32), full first-step log-softmax. Every
    returned first-step logprob (chosen and top-5) within the architecture's bound (module docstring: ~1.5x
    llama.cpp's own deviation), and the reference's top-1 token among the returned top-5."""
    fname = q8_file(arch)
    bound = QUANT_BOUNDS[arch]
    full = by_name(refs(arch)["gguf"][fname]["results"], name)["first_step_logprobs"]
    b2i = bytes_to_ids(refs(arch)["vocab_bytes"])
    res = runners.run(gguf_key(arch, fname), name)
    first = content(res)[0]
    got_ids: set[int] = set()
    for t in [first] + list(first.top_logprobs):
        cands = b2i[tuple(t.bytes)]
        got_ids |= cands
        assert min(abs(t.logprob - full[j]) for j in cands) <= bound, (fname, name, t.token, t.logprob,
                                                                       [full[j] for j in cands])
    ref_top1 = max(range(len(full)), key=lambda k: full[k])
    assert ref_top1 in got_ids, f"reference top-1 id {ref_top1} not in returned top-5 {sorted(got_ids)}"


def test_fixture_references_are_consistent():
    """Reference: the recorded files themselves: F32 GGUF reference ids == safetensors reference ids (mistral:
    only where the window cannot matter, i.e. nowhere, so its F32 GGUF reference is compared with llama.cpp
    only); llama.cpp on each F32 file agrees with the transformers reference on every prompt."""
    for arch in ARCHS:
        r = refs(arch)
        f32 = r["gguf"][f32_file(arch)]["results"]
        lc = lcpp(arch)["files"][f32_file(arch)]["results"]
        for b, c in zip(f32, lc):
            assert b["ids"] == c["ids"], (arch, b["name"])
        if arch != "mistral":
            for a, b in zip(r["plain"]["results"], f32):
                assert a["ids"] == b["ids"], (arch, a["name"])
        for res in r["plain"]["results"]:
            assert all(math.isfinite(s["logprob"]) for s in res["steps"])
    if "mistral" in ARCHS:
        long = get_case("mistral", "long")
        assert len(long["prompt_ids"]) > refs("mistral")["sliding_window"]


# --------------------------------------------------------------------------- errors
def test_arch_mismatch_raises_value_error():
    """Reference: SPEC §1: a plain model's config.json (model_type qwen2) disagreeing with `arch` raises
    ValueError naming both."""
    src = "qwen2" if "qwen2" in ARCHS else ARCHS[0]
    other = "gemma" if src != "gemma" else "phi3"
    with pytest.raises(ValueError) as ei:
        Runner(which=Which.Plain(model_id=str(folder(src)), arch=other))
    msg = str(ei.value).lower()
    assert other in msg and src in msg, msg


def _patched_arch_copy(src: Path, dst: Path, old: str, new: str) -> None:
    """A copy of a GGUF file with general.architecture's value replaced by a string of the same length."""
    assert len(old) == len(new)
    data = bytearray(src.read_bytes())
    key = b"general.architecture"
    k = data.index(key)
    pos = k + len(key)
    assert int.from_bytes(data[pos:pos + 4], "little") == 8  # GGUF string
    n = int.from_bytes(data[pos + 4:pos + 12], "little")
    assert data[pos + 12:pos + 12 + n] == old.encode()
    data[pos + 12:pos + 12 + n] = new.encode()
    dst.write_bytes(bytes(data))


def test_unsupported_gguf_architecture_raises_value_error(tmp_path):
    """Reference: SPEC §1/§2: a GGUF file whose general.architecture the engine does not implement (here `bloom`,
    written over a copy of qwen2-tiny-f32.gguf) raises ValueError naming it and listing the supported ones."""
    arch = "qwen2" if "qwen2" in ARCHS else None
    if arch is None:
        pytest.skip("needs the qwen2-tiny fixture")
    _patched_arch_copy(folder(arch) / f32_file(arch), tmp_path / "bloom.gguf", "qwen2", "bloom")
    with pytest.raises(ValueError) as ei:
        Runner(which=Which.GGUF(tok_model_id=None, quantized_model_id=str(tmp_path),
                                quantized_filename="bloom.gguf"))
    msg = str(ei.value)
    assert "bloom" in msg, msg
    missing = [a for a in SUPPORTED_GGUF if a not in msg]
    assert not missing, f"supported architectures {missing} not listed in: {msg}"
