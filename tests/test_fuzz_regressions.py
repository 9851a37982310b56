"""Issue 13: every input the fuzzer (scripts/fuzz.sh) ever crashed on, replayed through the Python
API in a child process under the same address-space cap as tests/test_hostile_files.py.

Inputs live in fuzz/regressions/<target>/, as the fuzz target received them. Each must now either
load and answer a 3-token chat, or raise ValueError / FileNotFoundError; an abort, a signal, a hang
or any other exception (a RuntimeError from a caught panic included) fails.
"""

from __future__ import annotations

import pathlib
import shutil

import pytest
from test_hostile_files import run_child

REPO = pathlib.Path(__file__).resolve().parents[1]
REGRESSIONS = REPO / "fuzz" / "regressions"
FIXTURE = REPO / "fuzz" / "fixture" / "tokenizer"  # the fuzz targets' tiny llama folder
FOLDER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors")
JSON_KINDS = {0: "config.json", 1: "tokenizer.json", 3: "tokenizer_config.json"}

CASES = sorted(p for p in REGRESSIONS.glob("*/*") if p.is_file() and p.parent.name != "request")


def fixture_copy(dst: pathlib.Path) -> pathlib.Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in FOLDER_FILES:
        shutil.copy(FIXTURE / f, dst / f)
    return dst


def spec_for(case: pathlib.Path, work: pathlib.Path) -> dict:
    """The child spec that loads ``case`` the way its fuzz target did."""
    data = case.read_bytes()
    target = case.parent.name
    if target == "gguf":
        (work / "model.gguf").write_bytes(data)
        return {"which": "GGUF", "which_kwargs": {"tok_model_id": None, "quantized_model_id": str(work),
                                                  "quantized_filename": "model.gguf"}}
    if target == "ggml":
        (work / "model.bin").write_bytes(data)
        return {"which": "GGML", "which_kwargs": {"tok_model_id": str(FIXTURE), "quantized_model_id": str(work),
                                                  "quantized_filename": "model.bin"}}
    folder = fixture_copy(work / "m")
    plain = {"which": "Plain", "which_kwargs": {"model_id": str(folder), "arch": "llama"}}
    if target == "safetensors":
        (folder / "model.safetensors").write_bytes(data)
        return plain
    assert target == "json", target
    kind, text = data[0] % 4, data[1:]
    if kind == 2:
        return {**plain, "runner_kwargs": {"chat_template": text.decode("utf-8", errors="replace")}}
    (folder / JSON_KINDS[kind]).write_bytes(text)
    return plain


def test_there_are_regressions_to_replay():
    assert CASES, "fuzz/regressions/ is empty"


@pytest.mark.parametrize("case", CASES, ids=lambda p: f"{p.parent.name}/{p.name[:20]}")
def test_a_crashing_input_is_now_an_error_or_a_load(case, tmp_path):
    result = run_child(spec_for(case, tmp_path))
    if result["outcome"] == "ok":
        return
    assert result["type"] in ("ValueError", "FileNotFoundError"), result
    assert result["message"], result
