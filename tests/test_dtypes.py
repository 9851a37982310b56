"""Compute dtypes against transformers on a half-precision checkpoint.

``tests/fixtures/llama-tiny-bf16/`` is the tiny llama stored in bf16 with ``torch_dtype: bfloat16``
(``scripts/make_fixtures_dtypes.py``). Its ``references.json`` holds transformers' greedy runs of
that checkpoint loaded as float32, bfloat16 and float16 (eager attention, CPU).

- With no ``dtype`` the CPU computes in f32: the config's dtype is read (``checkpoint_dtype``) but
  an accelerator's default, not the CPU's. That run matches transformers' f32 run within 1e-3.
- ``Runner(dtype="bf16" | "f16")`` runs weights, activations and the KV cache in that dtype (on the
  CPU through candle's tensor ops, the path accelerators take) and is compared with transformers'
  run in the same dtype. Two implementations in half precision round differently: the bounds come
  from transformers' own deviation from f32 in that dtype (DEVIATION), and where the reference's
  token is within a near tie of the engine's at that precision the runs may part; the comparison
  ends there.
"""

from __future__ import annotations

import json

import pytest
from conftest import FIXTURES, TEST_DEVICE
from mistralrs import Runner, Which
from reference_support import check_greedy_steps, content, send_greedy

FOLDER = FIXTURES / "llama-tiny-bf16"
REFS = json.loads((FOLDER / "references.json").read_text()) if (FOLDER / "references.json").exists() else None
CASES = [c["name"] for c in REFS["cases"]] if REFS else []


def reference_deviation(dtype: str, first_step_only: bool) -> float:
    """transformers' own deviation in `dtype` from its f32 run of the same weights: the largest
    |logprob| difference over the top-5 tokens of every case's steps, as long as the two runs have
    generated the same tokens (or of the first step only)."""
    d = 0.0
    for lo, hi in zip(REFS["runs"][dtype]["results"], REFS["runs"]["f32"]["results"]):
        for a, b in zip(lo["steps"][:1] if first_step_only else lo["steps"], hi["steps"]):
            a_top = {tuple(t["bytes"]): t["logprob"] for t in a["top"]}
            d = max([d] + [abs(a_top[tuple(t["bytes"])] - t["logprob"]) for t in b["top"] if tuple(t["bytes"]) in a_top])
            if a["id"] != b["id"]:
                break
    return d


# Per dtype, from the recorded runs:
# - on the first step the engine in that dtype may deviate from the f32 run by 1.5x what
#   transformers does (FIRST: bf16 about 0.18, f16 about 0.04);
# - over the steps, the engine and transformers in that dtype, each as far from f32 as transformers
#   gets (DEVIATION), may differ by twice that, and a step whose lead is under it may go either way.
FIRST = {d: reference_deviation(d, True) for d in ("bf16", "f16")} if REFS else {}
DEVIATION = {d: reference_deviation(d, False) for d in ("bf16", "f16")} if REFS else {}

_RUNNERS: dict[str, Runner] = {}


def runner(dtype: str | None) -> Runner:
    key = dtype or "default"
    if key not in _RUNNERS:
        kw = {} if dtype is None else {"dtype": dtype}
        _RUNNERS[key] = Runner(which=Which.Plain(model_id=str(FOLDER), arch="llama"), **kw)
    return _RUNNERS[key]


def case(name: str) -> dict:
    return next(c for c in REFS["cases"] if c["name"] == name)


def reference(dtype: str, name: str) -> dict:
    return next(r for r in REFS["runs"][dtype]["results"] if r["name"] == name)


def test_fixture_is_a_bf16_checkpoint():
    cfg = json.loads((FOLDER / "config.json").read_text())
    assert cfg["torch_dtype"] == "bfloat16"
    header_len = int.from_bytes((FOLDER / "model.safetensors").read_bytes()[:8], "little")
    header = json.loads((FOLDER / "model.safetensors").read_bytes()[8:8 + header_len])
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}


@pytest.mark.skipif(TEST_DEVICE is not None, reason="checks the CPU's default dtype")
def test_cpu_reads_the_checkpoint_dtype_and_computes_in_f32():
    r = runner(None)
    assert (r.device, r.dtype, r.checkpoint_dtype) == ("cpu", "f32", "bf16")
    assert "dtype='f32', checkpoint_dtype='bf16'" in repr(r)


@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
def test_explicit_dtype_is_used(dtype):
    r = runner(dtype)
    assert (r.dtype, r.checkpoint_dtype) == (dtype, "bf16")


@pytest.mark.parametrize("name", CASES)
def test_f32_matches_transformers_f32(name):
    """The bf16 weights widened to f32, as transformers loads them with torch_dtype=float32."""
    c, ref = case(name), reference("f32", name)
    res = send_greedy(runner("f32"), c, REFS["n_steps"])
    check_greedy_steps(res, c, ref["steps"], ref["text"], 1e-3, f"f32/{name}", REFS["vocab_bytes"], REFS["n_steps"])


@pytest.mark.parametrize("dtype", ["bf16", "f16"])
@pytest.mark.parametrize("name", CASES)
def test_half_precision_matches_transformers(dtype, name):
    """Greedy tokens equal transformers' in the same dtype, chosen and top-5 logprobs within twice
    transformers' own deviation from f32; the first step no farther from f32 than 1.5x that."""
    c, ref, f32 = case(name), reference(dtype, name), reference("f32", name)
    res = send_greedy(runner(dtype), c, REFS["n_steps"])
    assert res.usage.prompt_tokens == len(c["prompt_ids"])
    steps = content(res)
    assert len(steps) == REFS["n_steps"]
    dev = DEVIATION[dtype]
    assert 0 < FIRST[dtype] <= dev < 0.5, (FIRST[dtype], dev)

    first = {tuple(t.bytes): t.logprob for t in steps[0].top_logprobs}
    for t in f32["steps"][0]["top"]:
        if tuple(t["bytes"]) in first:
            assert abs(first[tuple(t["bytes"])] - t["logprob"]) <= 1.5 * FIRST[dtype], (
                f"{dtype}/{name} first step: {t['bytes']} {first[tuple(t['bytes'])]:.4f} vs f32 {t['logprob']:.4f}")

    tol = 2 * dev
    for i, (got, want) in enumerate(zip(steps, ref["steps"])):
        where = f"{dtype}/{name} step {i}"
        if list(got.bytes) != want["bytes"]:
            alts = {tuple(t.bytes): t.logprob for t in got.top_logprobs}
            lead = got.logprob - alts.get(tuple(want["bytes"]), float("-inf"))
            assert lead <= tol, f"{where}: got {list(got.bytes)}, transformers chose {want['bytes']} (lead {lead:.3f})"
            break
        assert abs(got.logprob - want["logprob"]) <= tol, f"{where}: logprob {got.logprob} vs {want['logprob']}"
        ref_top = {tuple(t["bytes"]): t["logprob"] for t in want["top"]}
        for t in got.top_logprobs:
            if tuple(t.bytes) in ref_top:
                assert abs(t.logprob - ref_top[tuple(t.bytes)]) <= tol, f"{where}: top {list(t.bytes)}"
