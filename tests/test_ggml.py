"""Legacy GGML files (Which.GGML; issue 7): every container and version llama.cpp wrote before GGUF.

Fixtures: tests/fixtures/ggml/ (scripts/make_fixtures_ggml.py): the quant-types model (tests/fixtures/quant-types,
256-wide llama) written into unversioned `ggml`, `ggmf` v1 and `ggjt` v1/v2/v3 containers with the same tensors
as the GGUF files llama.cpp's quantizer wrote for it (ggjt v2 with its f32-scale Q4_0/Q4_1/Q8_0 blocks). The
generator checked its files with llama.cpp's own `convert_llama_ggml_to_gguf.py`: the GGUF it produces from each
has the same tensors as the matching GGUF file, and llama.cpp's output on it (recorded in references.json) is
llama.cpp's output on that file.

Checks: each GGML file gives the same greedy tokens and logprobs as the engine on the matching GGUF (F32 files:
the plain safetensors model), and its first greedy token is llama.cpp's on the converted GGUF; a type/version pair
that never existed, pre-GGJTv2 quantized blocks and a truncated file raise ValueError.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mistralrs import Runner, Which
from reference_support import content, send_greedy

FIX = Path(__file__).resolve().parent / "fixtures"
QT = FIX / "quant-types"
GGML = FIX / "ggml"
FILES = sorted(p.name for p in GGML.glob("model-*.bin")) if GGML.exists() else []
N = 8


def qt_refs() -> dict:
    return json.loads((QT / "references.json").read_text())


def ggml_refs() -> dict:
    p = GGML / "references.json"
    return json.loads(p.read_text()) if p.exists() else {}


def ggml_runner(fname: str) -> Runner:
    return Runner(which=Which.GGML(tok_model_id=str(QT), quantized_model_id=str(GGML), quantized_filename=fname))


def twin_runner(fname: str) -> Runner:
    """The same tensors from a GGUF file (or the plain model for F32)."""
    qtype = re.match(r"model-[a-z]+\d?-(.+)\.bin", fname).group(1).upper()
    if qtype == "F32":
        return Runner(which=Which.Plain(model_id=str(QT), arch="llama"))
    gguf = qt_refs()["files"][qtype]["file"]
    return Runner(which=Which.GGUF(tok_model_id=str(QT), quantized_model_id=str(QT), quantized_filename=gguf))


def test_fixture_files_present():
    assert FILES, "missing tests/fixtures/ggml; run scripts/make_fixtures_ggml.py"


@pytest.mark.parametrize("fname", FILES)
def test_ggml_file_equals_its_gguf_twin(fname):
    a, b = ggml_runner(fname), twin_runner(fname)
    lcpp = ggml_refs().get("files", {}).get(fname, {}).get("llamacpp")
    for case in qt_refs()["cases"]:
        x, y = content(send_greedy(a, case, N)), content(send_greedy(b, case, N))
        assert [list(s.bytes) for s in x] == [list(s.bytes) for s in y], (fname, case["name"])
        assert max(abs(p.logprob - q.logprob) for p, q in zip(x, y)) < 1e-4, (fname, case["name"])
        if lcpp and case["name"] in lcpp:
            assert list(x[0].bytes) == lcpp[case["name"]]["top"][0]["bytes"], (fname, case["name"], "llama.cpp")


@pytest.mark.parametrize("fname,pattern", [
    ("bad-ggjt2-q4_k.bin", r"Q4_K.*GGJT v3"),
    ("bad-ggjt1-q4_0.bin", r"Q4_0.*before GGJT v2"),
    ("bad-truncated-ggjt3-q4_0.bin", r"truncated"),
])
def test_bad_ggml_files_are_value_errors(fname, pattern):
    if not (GGML / fname).exists():
        pytest.fail(f"missing fixture {fname}")
    with pytest.raises(ValueError, match=pattern) as e:
        ggml_runner(fname)
    assert fname in str(e.value)


def test_ggml_without_a_tokenizer_is_value_error():
    with pytest.raises(ValueError, match="tok_model_id"):
        Runner(which=Which.GGML(tok_model_id=None, quantized_model_id=str(GGML), quantized_filename=FILES[0]))
