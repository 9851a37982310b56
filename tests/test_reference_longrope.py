"""Phi-3 LongRoPE (`rope_scaling.type == "longrope"`) checked against recorded transformers and llama.cpp references.

Fixture: tests/fixtures/phi3-longrope-tiny/ (scripts/make_fixtures_archs.py phi3-longrope; transformers 5.24 / torch
CPU f32, llama-cpp-python 0.3.36), see tests/fixtures/README.md "phi3-longrope-tiny".  A random Phi3ForCausalLM
(hidden 64, 2 layers, 4 heads / 2 KV heads, head_dim 16, the phi3-tiny SentencePiece vocabulary) with
short_factor / long_factor (8 values each), original_max_position_embeddings 32, max_position_embeddings 256, so
the attention factor sqrt(1 + ln(256/32) / ln(32)) = sqrt(1.6) scales cos and sin.

transformers' rule (the reference for the plain model): a forward whose max(position_ids) + 1 exceeds 32 rotates
its new queries and keys with long_factor, otherwise short_factor; with a KV cache, cached keys keep the rotation
they were computed with.  Cases: prompts of 7/10/16 tokens (short factors at every step), 22/25/32 tokens (the
16-step generation crosses 32 tokens: steps from 11/8/1 on use long factors for the new token while the cached
prompt keys stay short-rotated), and 33/37/50/127 tokens (long factors from the prefill on).  The references are a
greedy loop WITH the KV cache (prompt in one forward, then one token per forward), as an engine with a KV cache runs
it; a full recompute every step (and transformers' generate(), which drops its cache at the crossing) gives
different tokens on the crossing cases (recorded in references.json `plain_no_cache`, not used here).

llama.cpp picks one factor set for the whole context, statically: long when n_ctx > 32; llama-cpp-python rounds
n_ctx up to 256, so on this file it always uses long factors.  The GGUF tests therefore use only the cases whose
prompt is longer than 32 tokens, where transformers' choice is long at every step too.

While the engine does not implement longrope, loading raises ValueError and every engine test here fails.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mistralrs import Runner, Which
from reference_support import by_name, check_greedy_steps, choice_text, content, send_greedy

D = Path(__file__).resolve().parent / "fixtures" / "phi3-longrope-tiny"
GGUF = "phi3-longrope-tiny-f32.gguf"
N_STEPS = 16
TOL = 1e-3


def _load(name: str) -> dict:
    p = D / name
    if not p.exists():
        pytest.fail(f"missing fixture {p}; run scripts/make_fixtures_archs.py phi3-longrope")
    return json.loads(p.read_text())


REFS = _load("references.json") if (D / "references.json").exists() else {"cases": [], "plain": {"results": []}}
CASES = [c["name"] for c in REFS["cases"]]


def case(name: str) -> dict:
    return next(c for c in REFS["cases"] if c["name"] == name)


def regime(name: str) -> str:
    return by_name(REFS["plain"]["results"], name)["rope"]["regime"]


# cases where transformers uses long factors at every step, as llama.cpp does on this file
LONG_CASES = [n for n in CASES if regime(n) == "long"]


# --------------------------------------------------------------------------- comparison
def check(res, c: dict, ref_steps: list[dict], ref_text: str, label: str):
    """Per step: token bytes equal, chosen logprob and top-5 logprobs within 1e-3; decoded text equal."""
    check_greedy_steps(res, c, ref_steps, ref_text, TOL, label, REFS["vocab_bytes"], N_STEPS)


# --------------------------------------------------------------------------- runners
class _Runners:
    def __init__(self):
        self.runners: dict[tuple, Runner] = {}
        self.errors: dict[tuple, BaseException] = {}
        self.outputs: dict[tuple, object] = {}

    def get(self, key: tuple) -> Runner:
        if key in self.errors:
            raise self.errors[key]
        if key not in self.runners:
            kind, path = key
            if kind == "plain":
                which = Which.Plain(model_id=str(path), arch="phi3")
            else:
                which = Which.GGUF(tok_model_id=None, quantized_model_id=str(path.parent),
                                   quantized_filename=path.name)
            try:
                self.runners[key] = Runner(which=which)
            except BaseException as e:  # loading fails once (e.g. ValueError: longrope unsupported); reuse it
                self.errors[key] = e
                raise
        return self.runners[key]

    def run(self, key: tuple, name: str):
        okey = key + (name,)
        if okey not in self.outputs:
            self.outputs[okey] = send_greedy(self.get(key), case(name), N_STEPS)
        return self.outputs[okey]

    def close(self):
        for r in self.runners.values():
            r.close()


@pytest.fixture(scope="module")
def runners():
    rs = _Runners()
    yield rs
    rs.close()


PLAIN = ("plain", D)
GGUF_KEY = ("gguf", D / GGUF)


# --------------------------------------------------------------------------- fixture sanity (no engine)
def test_fixture_is_longrope():
    """Reference: the recorded files: config.json declares classic `rope_scaling` {type: longrope, short_factor,
    long_factor} (8 values each), original_max_position_embeddings 32 < max_position_embeddings 256; the cases cover
    the short, crossing and long regimes; the no-cache recompute differs from the KV-cache reference exactly on the
    crossing cases; llama.cpp's ids equal transformers' on every long case."""
    cfg = json.loads((D / "config.json").read_text())
    rs = cfg["rope_scaling"]
    assert rs["type"] == "longrope" and len(rs["short_factor"]) == len(rs["long_factor"]) == 8
    assert cfg["original_max_position_embeddings"] == 32 and cfg["max_position_embeddings"] == 256
    assert {regime(n) for n in CASES} == {"short", "crossing", "long"}
    cmp = REFS["plain_no_cache"]["vs_kv_cache"]
    for n in CASES:
        assert cmp[n]["no_cache_ids_equal"] == (regime(n) != "crossing"), n
    lc = _load("references_llamacpp.json")["files"][GGUF]["results"]
    g = REFS["gguf"][GGUF]["results"]
    for n in LONG_CASES:
        assert by_name(lc, n)["ids"] == by_name(g, n)["ids"] == by_name(REFS["plain"]["results"], n)["ids"], n
        assert by_name(g, n)["factor_choice_agrees_with_llamacpp"]


# --------------------------------------------------------------------------- plain (safetensors)
@pytest.mark.parametrize("name", CASES)
def test_plain_prompt_ids_match_transformers(runners, name):
    """Reference: transformers PreTrainedTokenizerFast(tokenizer.json) ids (completion: BOS added; chat: the
    rendered template encoded without special tokens); the prompt lengths decide the factor regime."""
    c = case(name)
    r = runners.get(PLAIN)
    if c["kind"] == "completion":
        assert r.tokenize(c["prompt"]) == c["prompt_ids"]
    else:
        assert r.tokenize(c["rendered"], add_special_tokens=False) == c["prompt_ids"]


@pytest.mark.parametrize("name", CASES)
def test_plain_greedy_matches_transformers_kv_cache(runners, name):
    """Reference: transformers Phi3ForCausalLM (f32, CPU) on model.safetensors, greedy 16 steps ignoring EOS WITH
    the KV cache (references.json `plain`): short factors while max position + 1 <= 32, long factors for the new
    token's query/key beyond, cached keys never re-rotated; attention factor sqrt(1.6) in both regimes.  Token
    bytes per step equal, chosen and top-5 logprobs within 1e-3, text equal."""
    c = case(name)
    ref = by_name(REFS["plain"]["results"], name)
    res = runners.run(PLAIN, name)
    check(res, c, ref["steps"], ref["text"], f"phi3-longrope/plain/{name} ({ref['rope']['regime']})")


@pytest.mark.parametrize("spelling", ["rope_type"])
@pytest.mark.parametrize("name", [n for n in CASES if regime(n) != "short"][:2])
def test_plain_rope_type_key_spelling(tmp_path, spelling, name):
    """Reference: the same transformers KV-cache reference as above: a copy of the model whose config.json spells
    the key `rope_scaling.rope_type: longrope` (transformers 5's spelling; real Phi-3 checkpoints use `type`) gives
    the same greedy tokens and logprobs (transformers loads both spellings identically)."""
    for f in D.iterdir():
        if f.suffix != ".gguf" and not f.name.startswith("references"):
            shutil.copy(f, tmp_path / f.name)
    cfg = json.loads((tmp_path / "config.json").read_text())
    rs = cfg["rope_scaling"]
    cfg["rope_scaling"] = {spelling: rs.pop("type"), **rs}
    (tmp_path / "config.json").write_text(json.dumps(cfg, indent=2))
    rs_ = _Runners()
    try:
        res = rs_.run(("plain", tmp_path), name)
        ref = by_name(REFS["plain"]["results"], name)
        check(res, case(name), ref["steps"], ref["text"], f"phi3-longrope/{spelling}/{name}")
    finally:
        rs_.close()


# --------------------------------------------------------------------------- GGUF F32
@pytest.mark.parametrize("name", LONG_CASES)
def test_gguf_f32_matches_transformers(runners, name):
    """Reference: transformers Phi3ForCausalLM with the model's longrope config.json on the F32 GGUF's weights
    (gguf.quants.dequantize; transformers' own GGUF loader ignores rope_factors_* and loads default rope, so it is
    not used), greedy with the KV cache (references.json `gguf[file].results`).  Only the cases with a prompt longer
    than 32 tokens, where transformers uses long factors at every step, as llama.cpp does on this file (the factor
    choices agree).  Same checks and 1e-3 tolerance as the plain model; tokenizer from the GGUF metadata."""
    c = case(name)
    ref = by_name(REFS["gguf"][GGUF]["results"], name)
    assert ref["factor_choice_agrees_with_llamacpp"]
    res = runners.run(GGUF_KEY, name)
    check(res, c, ref["steps"], ref["text"], f"{GGUF}/{name}")


@pytest.mark.parametrize("name", LONG_CASES)
def test_gguf_f32_greedy_matches_llamacpp(runners, name):
    """Reference: llama.cpp (llama-cpp-python 0.3.36, n_ctx=256 -> rope_factors_long for every position) greedy
    ids on the same F32 GGUF (references_llamacpp.json), prompt ids fed as tokens, 16 steps ignoring EOS, F32 KV
    cache.  Only the cases where transformers' factor choice is also long at every step (prompt > 32 tokens); token
    bytes per step and decoded text equal."""
    c = case(name)
    lc = by_name(_load("references_llamacpp.json")["files"][GGUF]["results"], name)
    assert lc["factor_choice_agrees_with_transformers"]
    vb = REFS["vocab_bytes"]
    res = runners.run(GGUF_KEY, name)
    assert res.usage.prompt_tokens == len(c["prompt_ids"])
    got = [list(t.bytes) for t in content(res)]
    assert len(got) == N_STEPS
    for i, (g, w) in enumerate(zip(got, [vb[j] for j in lc["ids"]])):
        assert g == w, f"{GGUF}/{name}: step {i}: got bytes {g}, llama.cpp chose id {lc['ids'][i]} bytes {w}"
    assert choice_text(res, c["kind"]) == lc["text"]
