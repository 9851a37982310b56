"""Every GGUF weight type llama.cpp writes for these models, checked against llama.cpp (issue 7).

Fixture: tests/fixtures/quant-types/ (scripts/make_fixtures_quant.py): a well-conditioned random llama (hidden
256, so K-quant blocks fit; every first step's top-1/top-2 gap > 0.8) quantized by llama.cpp's own quantizer
(`llama_model_quantize`, pure: every 2-D tensor one type) to F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K,
Q4_K, Q5_K and Q6_K (llama.cpp cannot write Q8_K weights). References per file: transformers on the file's
weights dequantized by the `gguf` package (`dequant_ref`), and llama.cpp's own first step on the file.

Per type: the engine's first-step top-5 logprobs are within max(0.02, 1.5 x llama.cpp's own deviation from
`dequant_ref` on that file) of `dequant_ref` (llama.cpp's deviations, 0.001-0.08, are in the fixture's README),
and its first greedy token is llama.cpp's.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mistralrs import Runner, Which
from reference_support import content, send_greedy

QT = Path(__file__).resolve().parent / "fixtures" / "quant-types"
TYPES = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def refs() -> dict:
    p = QT / "references.json"
    if not p.exists():
        pytest.fail("missing tests/fixtures/quant-types; run scripts/make_fixtures_quant.py")
    return json.loads(p.read_text())


@pytest.mark.parametrize("qtype", TYPES)
def test_gguf_type_first_step_against_llamacpp(qtype):
    r = refs()
    f = r["files"][qtype]
    assert set(f["tensor_types"][n] for n in f["tensor_types"] if not n.endswith("norm.weight")) == {qtype}
    runner = Runner(which=Which.GGUF(tok_model_id=str(QT), quantized_model_id=str(QT), quantized_filename=f["file"]))
    bound = max(0.02, 1.5 * f["llamacpp_dev"])
    worst = 0.0
    for case in r["cases"]:
        name = case["name"]
        step = content(send_greedy(runner, case, 1))[0]
        got = {tuple(t.bytes): t.logprob for t in step.top_logprobs}
        ref = sorted(f["dequant_ref"][name]["top"], key=lambda t: -t["logprob"])
        for t in ref[:5]:
            if tuple(t["bytes"]) in got:
                worst = max(worst, abs(got[tuple(t["bytes"])] - t["logprob"]))
            else:  # only a near-tie with the 6th may drop out of the engine's top-5
                assert t["logprob"] - ref[5]["logprob"] <= 2 * bound, f"{qtype}/{name}: top-5 token {t['id']} missing"
        assert list(step.bytes) == f["llamacpp"][name]["top"][0]["bytes"], f"{qtype}/{name}: first token differs"
    assert worst <= bound, f"{qtype}: {worst:.4f} from the dequantized reference (bound {bound:.4f})"
