#!/usr/bin/env python3
"""Record llama.cpp's tokenization of a seeded corpus on every SentencePiece (`tokenizer.ggml.model = llama`) GGUF
the tests use: the reference for the engine's own SentencePiece encoder (mistralrs-core/src/tokenizer/spm.rs).

    python scripts/fetch_models.py gemma3-270m        # once; honours MISTRALRS_MODELS_DIR
    python scripts/record_llamacpp_spm_tokenize.py

Needs a Python with llama-cpp-python (0.3.36 was used; see /work/shared/REFERENCES.md for building it on a CPU
with AMX).  The vocabulary alone is loaded (vocab_only=True).

Corpus (CORPUS_SEED, built below, the same for every file): 400 strings of 1-80 characters drawn from words,
runs of spaces / tabs / newlines, punctuation, digits, accented Latin, Greek, Cyrillic, CJK, Hangul, emoji with
ZWJ and skin-tone modifiers, zero-width and no-break spaces, U+2581 itself, characters outside every vocabulary
(byte fallback), and the text of control tokens (`<bos>`, `<start_of_turn>`, `<unk>`, `<s>`, ...), plus a few
fixed edge cases (the empty string, one space, only newlines).

Per file and string: llama.cpp's `tokenize(text, add_bos=True, special=True)` (the engine matches control-token
text in prompts, as llama.cpp's special=True does) and `detokenize(ids without BOS, special=True)` as bytes in hex.

Writes tests/fixtures/spm_tokenize_llamacpp.json.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from fetch_models import MODELS, model_path  # noqa: E402

CORPUS_SEED = 20261206
OUT = ROOT / "tests" / "fixtures" / "spm_tokenize_llamacpp.json"

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "Hello", "world", "tokenization",
         "internationalization", "def", "return", "self", "print", "http://example.com/a?b=c", "x_1", "naïve",
         "café", "Straße", "résumé", "日本語", "中文", "한국어", "Ελληνικά", "Русский", "ﬁ", "Ǆ", "İ"]
CHUNKS = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", ".", ",", "!", "?", "'", '"', "(", ")", "{", "}", "[", "]",
          "0", "7", "42", "3.14", "1,000", "-", "_", "=", "==", "->", "::", "#", "@", "$", "%", "&", "*", "/", "\\",
          "é", "ü", "ñ", "ß", "ç", "ø", "å", "α", "β", "Ж", "д", "中", "文", "😀", "🎉", "👍🏽", "👩‍💻", "\u200b",
          "\u00a0", "\u2581", "\u2581\u2581", "\U0001d54f", "\U000e0041", "\x07", "\x00", "\ufeff",
          "<bos>", "<eos>", "<pad>", "<unk>", "<s>", "</s>", "<start_of_turn>", "<end_of_turn>", "<|endoftext|>",
          "<|user|>", "<|assistant|>", "<|end|>", "<0x41>", "<start_of", "turn>"]
EDGES = ["", " ", "  ", "\n", "\n\n\n", "a", " a", "a ", "  leading and trailing  "]


def corpus() -> list[str]:
    rnd = random.Random(CORPUS_SEED)
    out = list(EDGES)
    for _ in range(400):
        parts = []
        while sum(len(p) for p in parts) < rnd.randint(1, 80):
            parts.append(rnd.choice(WORDS) if rnd.random() < 0.45 else rnd.choice(CHUNKS))
        out.append("".join(parts)[:80])
    return out


def files() -> list[tuple[str, Path]]:
    out = [("llama-tiny-spm", ROOT / "tests/fixtures/llama-tiny-spm/tiny-spm-q8_0.gguf"),
           ("phi3-tiny", ROOT / "tests/fixtures/phi3-tiny/phi3-tiny-f32.gguf")]
    out.append(("gemma3-270m", model_path("gemma3-270m")))
    return out


def main() -> None:
    from llama_cpp import Llama, __version__

    texts = corpus()
    record = {"llama_cpp_python": __version__, "corpus_seed": CORPUS_SEED, "texts": texts, "files": {}}
    for name, path in files():
        llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
        meta = llm.metadata
        assert meta.get("tokenizer.ggml.model") == "llama", (path, meta.get("tokenizer.ggml.model"))
        bos = int(meta["tokenizer.ggml.bos_token_id"])
        rows = []
        for t in texts:
            ids = llm.tokenize(t.encode("utf-8"), add_bos=True, special=True)
            body = ids[1:] if ids[:1] == [bos] else ids
            rows.append({"ids": ids, "detokenized_hex": llm.detokenize(body, special=True).hex()})
        entry = {"path": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name,
                 "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bos_id": bos,
                 "add_space_prefix": str(meta.get("tokenizer.ggml.add_space_prefix", "true")).lower() == "true", "rows": rows}
        if name in MODELS:
            entry["model"] = name
        record["files"][name] = entry
        print(f"{name}: {len(rows)} strings, {sum(len(r['ids']) for r in rows)} tokens")
    OUT.write_text(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
