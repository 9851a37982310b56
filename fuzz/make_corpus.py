#!/usr/bin/env python3
"""Seed corpus for the fuzz targets in fuzz/fuzz_targets/, and the committed fixture folder they load.

    .venv/bin/python fuzz/make_corpus.py           # write fuzz/fixture/tokenizer/ and fuzz/corpus/<target>/
    .venv/bin/python fuzz/make_corpus.py --check   # ... then load every seed with mistralrs and generate

Standard library + numpy only (GGUF files through tests/gguf_edit.py). Deterministic: every random draw comes
from numpy RandomState(0), so two runs write byte-identical files. Only the files named here are (over)written;
inputs libFuzzer adds to fuzz/corpus/<target>/ are left alone.

All models are one tiny llama: hidden 32, 2 heads of 16, 1 KV head, intermediate 64, context 64, rms eps 1e-5,
rope theta 1e4; weights N(0, 0.02), norms 1.0. GGUF files hold llama.cpp's tensor names and shapes (dims
innermost first, as tests/fixtures/llama-tiny/*.gguf); Q/K rows are not permuted (random weights: no need).
The Gemma 2 / 3 GGUF seeds have the same sizes (head_dim 16 as attention.key_length / value_length), 2 blocks,
rms eps 1e-6, sliding window 8, tied embeddings, and norms as llama.cpp stores Gemma's: 1 + w, w N(0, 0.02).

fuzz/fixture/tokenizer/ (what the ggml, safetensors, json and request targets load beside their input):
  tokenizer.json         byte-level BPE, 128 tokens: <s> </s> <|im_start|> <|im_end|> (special), the 94
                         printable ASCII bytes, space/newline/tab (Ġ Ċ ĉ), 27 merges. Other bytes are dropped
                         when encoding (no unk token), which is what `tokenizers` does without one.
  tokenizer_config.json  ChatML chat_template, bos <s>, eos </s>.
  config.json            llama, vocab 128, 1 layer, tied embeddings.
  model.safetensors      F16 weights for that config, plus q/k/v_proj biases (a llama ignores them; they let
                         the same folder load as qwen2, whose q/k/v always have biases).

Corpus (fuzz/corpus/<target>/):
  gguf/         GGUF v3 llama files with their vocabulary in the metadata: gpt2 (small / all 256 bytes,
                pre-tokenizers default, llama-bpe, gpt-2, smollm) and llama (SentencePiece: <unk> <s> </s>,
                <0x00>..<0xFF>, ▁-pieces with scores, a user-defined, a control and unused tokens);
                Q8_0 / F16 / F32 with Q4_0, Q4_1, Q8_0, F16 mixed in; 1 or 2 blocks; one with
                general.alignment 64; tied (no output.weight) and untied.
                Gemma: gemma2 and gemma3 files, llama vocabulary plus <start_of_turn> / <end_of_turn>
                (control), add_space_prefix false, Gemma chat template. gemma2: token_embd, output_norm,
                blk.N.{attn_norm, attn_q/k/v, attn_output, post_attention_norm, ffn_norm, ffn_gate/up/down,
                post_ffw_norm}, attn_logit_softcapping 50, final_logit_softcapping 30, F16 with Q8_0
                token_embd and MLP. gemma3: the same plus blk.N.attn_q_norm / attn_k_norm, rope.freq_base 1e6,
                rope.freq_base_swa 1e4, no soft-capping; F16 + Q8_0 as gemma2 (no sliding_window_pattern),
                Q4_0 / Q4_1 / Q8_0 with sliding_window_pattern [true, false] and an eot_token_id, and Q8_0
                with sliding_window_pattern 2 (a u32: every 2nd layer global).
  ggml/         legacy files for the fixture's vocabulary (n_vocab 128): ggjt v3 Q8_0 (untied), ggjt v2
                Q4_0/Q4_1/Q8_0 with f32 scales, ggjt v1 F16, ggmf v1 F16, unversioned ggml F32.
  safetensors/  model.safetensors for the fixture config: F16, BF16, F32 (the F32 one is ~55 KB: hidden 32
                and intermediate 64 alone take 37 KB in F32; it is under scripts/fuzz.sh's -max_len 65536).
  json/         first byte = kind (0 config.json, 1 tokenizer.json, 2 chat template, 3 tokenizer_config.json),
                then the text.
  request/      random bytes (for arbitrary::Unstructured), plus all-zero and all-0xff inputs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
import tempfile
import traceback
from pathlib import Path

import numpy as np

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
sys.path.insert(0, str(ROOT / "tests"))
import gguf_edit as ge  # noqa: E402

CORPUS = FUZZ / "corpus"
FIXTURE = FUZZ / "fixture" / "tokenizer"

# The model.
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FF, CTX = 32, 2, 1, 16, 64, 64
EPS, THETA = 1e-5, 10000.0

# ggml type ids
F32, F16, Q4_0, Q4_1, Q8_0, BF16 = 0, 1, 2, 3, 8, 30

# =========================================================================== vocabularies


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode char table."""
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


B2U = bytes_to_unicode()
U2B = {c: b for b, c in B2U.items()}
SPACE, NEWLINE, TAB = B2U[0x20], B2U[0x0A], B2U[0x09]  # Ġ Ċ ĉ

SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
BOS_ID, EOS_ID, IM_END_ID = 0, 1, 3

MERGES_ALL = [
    ("Ġ", "t"), ("h", "e"), ("Ġ", "a"), ("i", "n"), ("e", "r"), ("o", "n"), ("Ġt", "he"), ("r", "e"),
    ("Ġ", "s"), ("Ġ", "w"), ("a", "t"), ("e", "n"), ("o", "r"), ("l", "l"), ("Ġ", "o"), ("e", "s"),
    ("i", "s"), ("Ġ", "i"), ("H", "e"), ("He", "ll"), ("Hell", "o"), ("Ġw", "or"), ("Ġwor", "l"),
    ("Ġworl", "d"), ("Ġ", "H"), ("Ġ", "b"), ("o", "u"),
]


def bpe_vocab(chars: list[str], n_merges: int | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """Specials, then `chars` (byte-level forms), then the merges of MERGES_ALL whose parts exist (in order)."""
    tokens = SPECIALS + chars
    have = set(tokens)
    merges = []
    for a, b in MERGES_ALL:
        if a in have and b in have and a + b not in have:
            merges.append((a, b))
            tokens.append(a + b)
            have.add(a + b)
        if n_merges is not None and len(merges) == n_merges:
            break
    assert len(set(tokens)) == len(tokens)
    return tokens, merges


PRINTABLE = [chr(c) for c in range(0x21, 0x7F)]
# The fixture: all printable ASCII + space, newline, tab; 128 tokens.
FIX_TOKENS, FIX_MERGES = bpe_vocab(PRINTABLE + [SPACE, NEWLINE, TAB])
assert len(FIX_TOKENS) == 128, len(FIX_TOKENS)
VOCAB = len(FIX_TOKENS)
# A 64-token one for small GGUF seeds: lowercase letters, a few capitals and punctuation.
SMALL_TOKENS, SMALL_MERGES = bpe_vocab(
    [SPACE, NEWLINE] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("HITW.,!?'"), n_merges=23
)
assert len(SMALL_TOKENS) == 64, len(SMALL_TOKENS)
# All 256 bytes (GPT-2's table order) and every merge.
BYTES_TOKENS, BYTES_MERGES = bpe_vocab([B2U[b] for b in range(256)])


def token_bytes(tok: str) -> bytes:
    """A byte-level BPE token's raw bytes (special tokens: their UTF-8 text)."""
    if tok in SPECIALS:
        return tok.encode()
    return bytes(U2B[c] for c in tok)


def spm_vocab(controls: tuple[str, ...] = ()):
    """SentencePiece (llama.cpp `llama` model): tokens, scores, token types; `controls`: more control tokens
    at the end (Gemma's turn markers)."""
    toks, scores, types = [], [], []

    def add(t, s, ty):
        toks.append(t)
        scores.append(float(s))
        types.append(ty)

    add("<unk>", 0.0, 2)
    add("<s>", 0.0, 3)
    add("</s>", 0.0, 3)
    for b in range(256):
        add(f"<0x{b:02X}>", 0.0, 6)
    singles = ["▁"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("HITW")
    for i, s in enumerate(singles):
        add(s, -1000.0 - i, 1)
    multi = ["▁t", "he", "▁the", "in", "er", "on", "ll", "or", "▁a", "▁w", "▁H", "el", "ell", "ello", "▁Hello",
             "▁wor", "ld", "▁world"]
    for i, s in enumerate(multi):
        add(s, -float(i), 1)
    add("<|user|>", 0.0, 4)  # user-defined
    add("<|end|>", 0.0, 3)  # control
    add("<pad_0>", 0.0, 5)  # unused
    add("<pad_1>", 0.0, 5)
    for c in controls:
        add(c, 0.0, 3)
    return toks, scores, types


# =========================================================================== weights and ggml blocks


def f16_bytes(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x, dtype="<f2").tobytes()


def bf16_bytes(x: np.ndarray) -> bytes:
    u = np.ascontiguousarray(x, dtype="<f4").view("<u4").astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")
    return r.tobytes()


def _blocks(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    assert x.size % 32 == 0
    return x.reshape(-1, 32)


def q8_0(x: np.ndarray) -> bytes:
    b = _blocks(x)
    d = np.abs(b).max(axis=1) / 127.0
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1), 0.0)
    q = np.clip(np.round(b * inv[:, None]), -127, 127).astype(np.int8)
    out = np.zeros(len(b), dtype=[("d", "<f2"), ("qs", "i1", 32)])
    out["d"], out["qs"] = d, q
    return out.tobytes()


def _nibbles(q: np.ndarray) -> np.ndarray:
    q = q.astype(np.uint8)
    return (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)


def q4_0(x: np.ndarray, f32_scales: bool = False) -> bytes:
    """ggml Q4_0: d = signed max-abs / -8, q = x/d + 8 (rounded, clamped to 0..15); low nibbles hold 0..15."""
    b = _blocks(x)
    idx = np.abs(b).argmax(axis=1)
    mx = b[np.arange(len(b)), idx]
    d = mx / -8.0
    inv = np.where(d != 0, 1.0 / np.where(d != 0, d, 1), 0.0)
    q = np.clip(np.floor(b * inv[:, None] + 8.5), 0, 15)
    out = np.zeros(len(b), dtype=[("d", "<f4" if f32_scales else "<f2"), ("qs", "u1", 16)])
    out["d"], out["qs"] = d, _nibbles(q)
    return out.tobytes()


def q4_1(x: np.ndarray, f32_scales: bool = False) -> bytes:
    """ggml Q4_1: d = (max - min) / 15, m = min, q = (x - m)/d rounded, clamped to 0..15."""
    b = _blocks(x)
    lo, hi = b.min(axis=1), b.max(axis=1)
    d = (hi - lo) / 15.0
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1), 0.0)
    q = np.clip(np.round((b - lo[:, None]) * inv[:, None]), 0, 15)
    s = "<f4" if f32_scales else "<f2"
    out = np.zeros(len(b), dtype=[("d", s), ("m", s), ("qs", "u1", 16)])
    out["d"], out["m"], out["qs"] = d, lo, _nibbles(q)
    return out.tobytes()


def q8_0_f32(x: np.ndarray) -> bytes:
    """ggjt v2's Q8_0: f32 scale + 32 int8."""
    b = _blocks(x)
    d = np.abs(b).max(axis=1) / 127.0
    inv = np.where(d > 0, 1.0 / np.where(d > 0, d, 1), 0.0)
    q = np.clip(np.round(b * inv[:, None]), -127, 127).astype(np.int8)
    out = np.zeros(len(b), dtype=[("d", "<f4"), ("qs", "i1", 32)])
    out["d"], out["qs"] = d, q
    return out.tobytes()


def encode(x: np.ndarray, ty: int, v2: bool = False) -> bytes:
    if ty == F32:
        return np.ascontiguousarray(x, dtype="<f4").tobytes()
    if ty == F16:
        return f16_bytes(x)
    if ty == Q8_0:
        return q8_0_f32(x) if v2 else q8_0(x)
    if ty == Q4_0:
        return q4_0(x, v2)
    if ty == Q4_1:
        return q4_1(x, v2)
    raise ValueError(ty)


def llama_weights(vocab: int, layers: int, tied: bool, qkv_bias: bool = False) -> dict[str, np.ndarray]:
    """transformers names -> float32 arrays in transformers' (out, in) shapes. Same draws for the same shapes."""
    rng = np.random.RandomState(0)
    w = lambda *s: (rng.standard_normal(s) * 0.02).astype(np.float32)  # noqa: E731
    ones = lambda n: np.ones(n, dtype=np.float32)  # noqa: E731
    t = {"model.embed_tokens.weight": w(vocab, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}"
        t[f"{p}.self_attn.q_proj.weight"] = w(HEADS * HEAD_DIM, HIDDEN)
        t[f"{p}.self_attn.k_proj.weight"] = w(KV_HEADS * HEAD_DIM, HIDDEN)
        t[f"{p}.self_attn.v_proj.weight"] = w(KV_HEADS * HEAD_DIM, HIDDEN)
        t[f"{p}.self_attn.o_proj.weight"] = w(HIDDEN, HEADS * HEAD_DIM)
        t[f"{p}.mlp.gate_proj.weight"] = w(FF, HIDDEN)
        t[f"{p}.mlp.up_proj.weight"] = w(FF, HIDDEN)
        t[f"{p}.mlp.down_proj.weight"] = w(HIDDEN, FF)
        t[f"{p}.input_layernorm.weight"] = ones(HIDDEN)
        t[f"{p}.post_attention_layernorm.weight"] = ones(HIDDEN)
        if qkv_bias:
            t[f"{p}.self_attn.q_proj.bias"] = w(HEADS * HEAD_DIM)
            t[f"{p}.self_attn.k_proj.bias"] = w(KV_HEADS * HEAD_DIM)
            t[f"{p}.self_attn.v_proj.bias"] = w(KV_HEADS * HEAD_DIM)
    t["model.norm.weight"] = ones(HIDDEN)
    if not tied:
        t["lm_head.weight"] = w(vocab, HIDDEN)
    return t


# =========================================================================== GGUF

GGUF_PART = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}
BLOCK_ORDER = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]


def gguf_tensors(hf: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """llama.cpp names, in llama.cpp's order: token_embd, blk.N.*, output_norm, output."""
    named = {}
    for k, v in hf.items():
        if k == "model.embed_tokens.weight":
            named["token_embd.weight"] = v
        elif k == "model.norm.weight":
            named["output_norm.weight"] = v
        elif k == "lm_head.weight":
            named["output.weight"] = v
        else:
            rest = k[len("model.layers."):]
            idx, sub = rest.split(".", 1)
            mod, suffix = sub.rsplit(".", 1)
            named[f"blk.{idx}.{GGUF_PART[mod]}.{suffix}"] = v
    layers = sorted({int(n.split(".")[1]) for n in named if n.startswith("blk.")})
    order = ["token_embd.weight"] + [f"blk.{i}.{p}.weight" for i in layers for p in BLOCK_ORDER]
    order += ["output_norm.weight", "output.weight"]
    return [(n, named[n]) for n in order if n in named]


# Gemma 2 / 3 (llama.cpp's gemma2 / gemma3): norms after attention and after the MLP as well as before them,
# Q/K norms per head (Gemma 3), tied embeddings.
GEMMA_BLOCK_ORDER = ["attn_norm", "attn_q", "attn_q_norm", "attn_k", "attn_k_norm", "attn_v", "attn_output",
                     "post_attention_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm"]
GEMMA_EPS, GEMMA_WINDOW = 1e-6, 8
GEMMA_TURNS = ("<start_of_turn>", "<end_of_turn>")


def gemma_tensors(vocab: int, layers: int, qk_norm: bool) -> list[tuple[str, np.ndarray]]:
    """Gemma 2 (Gemma 3 with `qk_norm`) in llama.cpp's names, token_embd, blk.N.*, output_norm (tied: no
    output.weight), in transformers' (out, in) shapes. Matrices N(0, 0.02); norms as llama.cpp's converter
    stores them, 1 + w with w N(0, 0.02) (around 1.0; Q/K norms are head_dim long). Same draws for the same
    arguments."""
    rng = np.random.RandomState(0)
    w = lambda *s: (rng.standard_normal(s) * 0.02).astype(np.float32)  # noqa: E731
    norm = lambda n: (1.0 + rng.standard_normal(n) * 0.02).astype(np.float32)  # noqa: E731
    shapes = {
        "attn_norm": (HIDDEN,), "attn_q": (HEADS * HEAD_DIM, HIDDEN), "attn_q_norm": (HEAD_DIM,),
        "attn_k": (KV_HEADS * HEAD_DIM, HIDDEN), "attn_k_norm": (HEAD_DIM,), "attn_v": (KV_HEADS * HEAD_DIM, HIDDEN),
        "attn_output": (HIDDEN, HEADS * HEAD_DIM), "post_attention_norm": (HIDDEN,), "ffn_norm": (HIDDEN,),
        "ffn_gate": (FF, HIDDEN), "ffn_up": (FF, HIDDEN), "ffn_down": (HIDDEN, FF), "post_ffw_norm": (HIDDEN,),
    }
    t = [("token_embd.weight", w(vocab, HIDDEN))]
    for i in range(layers):
        for part in GEMMA_BLOCK_ORDER:
            if part in ("attn_q_norm", "attn_k_norm") and not qk_norm:
                continue
            shape = shapes[part]
            t.append((f"blk.{i}.{part}.weight", norm(*shape) if len(shape) == 1 else w(*shape)))
    t.append(("output_norm.weight", norm(HIDDEN)))
    return t


def write_gguf(path: Path, metadata: list[tuple[str, int, object]], tensors: list[tuple[str, np.ndarray, int]],
               alignment: int = 32) -> None:
    infos, data = [], bytearray()
    for name, arr, ty in tensors:
        if arr.ndim == 1:
            ty = F32 if ty not in (F32, F16) else ty
        raw = encode(arr, ty)
        data += b"\0" * (-len(data) % alignment)
        infos.append(ge.TensorInfo(name, list(reversed(arr.shape)), ty, len(data)))
        assert infos[-1].n_bytes() == len(raw), (name, infos[-1].n_bytes(), len(raw))
        data += raw
    data += b"\0" * (-len(data) % alignment)
    kvs = [ge.KV(k, t, v) for k, t, v in metadata]
    f = ge.GGUFFile(3, kvs, infos, alignment, bytes(data), alignment)
    path.write_bytes(f.to_bytes())
    ge.GGUFFile.parse(path.read_bytes())  # round trip: the file is well formed


def llama_meta(name: str, layers: int, file_type: int, vocab: int, quantized: bool) -> list:
    m = [
        ("general.architecture", ge.STRING, "llama"),
        ("general.name", ge.STRING, name),
        ("llama.vocab_size", ge.UINT32, vocab),
        ("llama.context_length", ge.UINT32, CTX),
        ("llama.embedding_length", ge.UINT32, HIDDEN),
        ("llama.block_count", ge.UINT32, layers),
        ("llama.feed_forward_length", ge.UINT32, FF),
        ("llama.attention.head_count", ge.UINT32, HEADS),
        ("llama.attention.head_count_kv", ge.UINT32, KV_HEADS),
        ("llama.rope.freq_base", ge.FLOAT32, THETA),
        ("llama.attention.layer_norm_rms_epsilon", ge.FLOAT32, EPS),
        ("llama.rope.dimension_count", ge.UINT32, HEAD_DIM),
        ("general.file_type", ge.UINT32, file_type),
    ]
    if quantized:
        m.append(("general.quantization_version", ge.UINT32, 2))
    return m


def gemma_meta(arch: str, name: str, layers: int, file_type: int, quantized: bool, extra: list) -> list:
    """gemma2 / gemma3 hyperparameters as llama.cpp's converter writes them (no vocab_size, no
    rope.dimension_count; head_dim in key_length / value_length), then `extra` (arch-specific keys)."""
    k = lambda s: f"{arch}.{s}"  # noqa: E731
    m = [
        ("general.architecture", ge.STRING, arch),
        ("general.name", ge.STRING, name),
        (k("context_length"), ge.UINT32, CTX),
        (k("embedding_length"), ge.UINT32, HIDDEN),
        (k("block_count"), ge.UINT32, layers),
        (k("feed_forward_length"), ge.UINT32, FF),
        (k("attention.head_count"), ge.UINT32, HEADS),
        (k("attention.head_count_kv"), ge.UINT32, KV_HEADS),
        (k("attention.key_length"), ge.UINT32, HEAD_DIM),
        (k("attention.value_length"), ge.UINT32, HEAD_DIM),
        (k("attention.layer_norm_rms_epsilon"), ge.FLOAT32, GEMMA_EPS),
        (k("attention.sliding_window"), ge.UINT32, GEMMA_WINDOW),
    ]
    m += [(k(key), ty, v) for key, ty, v in extra]
    m.append(("general.file_type", ge.UINT32, file_type))
    if quantized:
        m.append(("general.quantization_version", ge.UINT32, 2))
    return m


def gpt2_meta(tokens, merges, pre: str, template: str | None = None, eot: int | None = None) -> list:
    types = [3 if t in SPECIALS else 1 for t in tokens]
    m = [
        ("tokenizer.ggml.model", ge.STRING, "gpt2"),
        ("tokenizer.ggml.pre", ge.STRING, pre),
        ("tokenizer.ggml.tokens", ge.ARRAY, (ge.STRING, list(tokens))),
        ("tokenizer.ggml.token_type", ge.ARRAY, (ge.INT32, types)),
        ("tokenizer.ggml.merges", ge.ARRAY, (ge.STRING, [f"{a} {b}" for a, b in merges])),
        ("tokenizer.ggml.bos_token_id", ge.UINT32, BOS_ID),
        ("tokenizer.ggml.eos_token_id", ge.UINT32, EOS_ID),
        ("tokenizer.ggml.add_bos_token", ge.BOOL, True),
        ("tokenizer.ggml.add_eos_token", ge.BOOL, False),
    ]
    if eot is not None:
        m.append(("tokenizer.ggml.eot_token_id", ge.UINT32, eot))
    if template is not None:
        m.append(("tokenizer.chat_template", ge.STRING, template))
    return m


def spm_meta(template: str | None = None, controls: tuple[str, ...] = (), space_prefix: bool = True,
             eot: int | None = None) -> list:
    toks, scores, types = spm_vocab(controls)
    m = [
        ("tokenizer.ggml.model", ge.STRING, "llama"),
        ("tokenizer.ggml.pre", ge.STRING, "default"),
        ("tokenizer.ggml.tokens", ge.ARRAY, (ge.STRING, toks)),
        ("tokenizer.ggml.scores", ge.ARRAY, (ge.FLOAT32, scores)),
        ("tokenizer.ggml.token_type", ge.ARRAY, (ge.INT32, types)),
        ("tokenizer.ggml.unknown_token_id", ge.UINT32, 0),
        ("tokenizer.ggml.bos_token_id", ge.UINT32, 1),
        ("tokenizer.ggml.eos_token_id", ge.UINT32, 2),
        ("tokenizer.ggml.add_bos_token", ge.BOOL, True),
        ("tokenizer.ggml.add_eos_token", ge.BOOL, False),
        ("tokenizer.ggml.add_space_prefix", ge.BOOL, space_prefix),
    ]
    if eot is not None:
        m.append(("tokenizer.ggml.eot_token_id", ge.UINT32, eot))
    if template is not None:
        m.append(("tokenizer.chat_template", ge.STRING, template))
    return m


def typed(tensors: list[tuple[str, np.ndarray]], default: int, per_part: dict[str, int] | None = None):
    """(name, array, ggml type): 1-D tensors F32, matrices `default` unless `per_part` names their part."""
    out = []
    for name, arr in tensors:
        part = name.split(".")[-2] if name.startswith("blk.") else name.split(".")[0]
        ty = F32 if arr.ndim == 1 else (per_part or {}).get(part, default)
        out.append((name, arr, ty))
    return out


CHATML = (
    "{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)


def make_gguf() -> list[Path]:
    out = CORPUS / "gguf"
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def emit(fname, meta, tensors, alignment=32):
        p = out / fname
        if alignment != 32:
            meta = meta + [("general.alignment", ge.UINT32, alignment)]
        write_gguf(p, meta, tensors, alignment)
        written.append(p)

    # 1. gpt2 (64 tokens, pre "default"), every matrix Q8_0, one block, untied, ChatML template.
    t = gguf_tensors(llama_weights(len(SMALL_TOKENS), 1, tied=False))
    emit("llama-gpt2-q8_0.gguf",
         llama_meta("fuzz-gpt2-q8_0", 1, 7, len(SMALL_TOKENS), True)
         + gpt2_meta(SMALL_TOKENS, SMALL_MERGES, "default", template=CHATML),
         typed(t, Q8_0))
    # 2. gpt2 (64 tokens, pre "llama-bpe", an EOT id), F16, one block, tied (no output.weight).
    t = gguf_tensors(llama_weights(len(SMALL_TOKENS), 1, tied=True))
    emit("llama-gpt2-f16-tied.gguf",
         llama_meta("fuzz-gpt2-f16", 1, 1, len(SMALL_TOKENS), False)
         + gpt2_meta(SMALL_TOKENS, SMALL_MERGES, "llama-bpe", eot=IM_END_ID),
         typed(t, F16))
    # 3. gpt2 (64 tokens, pre "gpt-2"), F32 file with Q4_0 / Q4_1 / Q8_0 / F16 matrices, two blocks,
    #    general.alignment 64.
    t = gguf_tensors(llama_weights(len(SMALL_TOKENS), 2, tied=False))
    mix = {"attn_q": Q4_0, "attn_v": F16, "attn_output": Q8_0, "ffn_gate": Q4_0, "ffn_up": Q4_1,
           "ffn_down": Q4_1, "output": Q4_1}
    emit("llama-gpt2-f32mix-2blk.gguf",
         llama_meta("fuzz-gpt2-f32mix", 2, 0, len(SMALL_TOKENS), True)
         + gpt2_meta(SMALL_TOKENS, SMALL_MERGES, "gpt-2"),
         typed(t, F32, mix), alignment=64)
    # 4. SentencePiece vocabulary (llama model), Q4_0 / Q4_1 / Q8_0 matrices, untied, Llama-2 template.
    toks = spm_vocab()[0]
    t = gguf_tensors(llama_weights(len(toks), 1, tied=False))
    mix = {"attn_k": Q4_1, "attn_v": Q8_0, "ffn_gate": Q4_1, "ffn_down": Q8_0, "output": Q4_1}
    emit("llama-spm-q4mix.gguf",
         llama_meta("fuzz-spm-q4mix", 1, 2, len(toks), True) + spm_meta(template=LLAMA2),
         typed(t, Q4_0, mix))
    # 5. gpt2 with all 256 byte tokens and every merge (pre "smollm"), Q8_0, tied.
    t = gguf_tensors(llama_weights(len(BYTES_TOKENS), 1, tied=True))
    emit("llama-gpt2-bytes-q8_0-tied.gguf",
         llama_meta("fuzz-gpt2-bytes", 1, 7, len(BYTES_TOKENS), True)
         + gpt2_meta(BYTES_TOKENS, BYTES_MERGES, "smollm"),
         typed(t, Q8_0))

    # Gemma 2 / 3: two blocks, SentencePiece vocabulary with <start_of_turn> / <end_of_turn> (control) at the
    # end and no space prefix (as Gemma's files), Gemma chat template. F16 files with Q8_0 token_embd and
    # MLP keep them under 64 KB (an F16 table of 314 tokens alone is 20 KB).
    gemma_vocab = spm_vocab(GEMMA_TURNS)[0]
    gemma_tok = spm_meta(template=GEMMA, controls=GEMMA_TURNS, space_prefix=False)
    f16mix = {"token_embd": Q8_0, "ffn_gate": Q8_0, "ffn_up": Q8_0, "ffn_down": Q8_0}
    # 6. gemma2: local/global layers by llama.cpp's default (every 2nd global), window 8, both soft-caps.
    t = gemma_tensors(len(gemma_vocab), 2, qk_norm=False)
    emit("gemma2-spm-f16mix.gguf",
         gemma_meta("gemma2", "fuzz-gemma2-f16mix", 2, 1, True, [
             ("attn_logit_softcapping", ge.FLOAT32, 50.0), ("final_logit_softcapping", ge.FLOAT32, 30.0)])
         + gemma_tok,
         typed(t, F16, f16mix))
    # 7-9. gemma3: Q/K norms, global rope base 1e6, local 1e4, no soft-caps. Which layers are local: the
    #      default (every 6th global: both local here), a bool per layer (local, global), a period of 2.
    gemma3 = [("rope.freq_base", ge.FLOAT32, 1e6), ("rope.freq_base_swa", ge.FLOAT32, 1e4)]
    t = gemma_tensors(len(gemma_vocab), 2, qk_norm=True)
    emit("gemma3-spm-f16mix.gguf",
         gemma_meta("gemma3", "fuzz-gemma3-f16mix", 2, 1, True, gemma3) + gemma_tok,
         typed(t, F16, f16mix))
    mix = {"attn_k": Q4_1, "attn_v": Q8_0, "ffn_up": Q4_1, "ffn_down": Q8_0}
    emit("gemma3-spm-swa-bools-q4mix.gguf",
         gemma_meta("gemma3", "fuzz-gemma3-swa-bools", 2, 2, True,
                    gemma3 + [("attention.sliding_window_pattern", ge.ARRAY, (ge.BOOL, [True, False]))])
         + spm_meta(template=GEMMA, controls=GEMMA_TURNS, space_prefix=False,
                    eot=gemma_vocab.index("<end_of_turn>")),
         typed(t, Q4_0, mix))
    emit("gemma3-spm-q8_0.gguf",
         gemma_meta("gemma3", "fuzz-gemma3-q8_0", 2, 7, True,
                    gemma3 + [("attention.sliding_window_pattern", ge.UINT32, 2)])
         + gemma_tok,
         typed(t, Q8_0))
    return written


# =========================================================================== legacy GGML

GGML_MAGIC = {"ggml": 0x67676D6C, "ggmf": 0x67676D66, "ggjt": 0x67676A74}
GGML_PART = {
    "attn_q": "attention.wq", "attn_k": "attention.wk", "attn_v": "attention.wv", "attn_output": "attention.wo",
    "attn_norm": "attention_norm", "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2",
    "ffn_up": "feed_forward.w3", "ffn_norm": "ffn_norm",
}
# llama.cpp's old order: tok_embeddings, norm, output, then per layer wq wk wv wo attention_norm w1 w2 w3 ffn_norm.
GGML_BLOCK_ORDER = ["attn_q", "attn_k", "attn_v", "attn_output", "attn_norm", "ffn_gate", "ffn_down", "ffn_up",
                    "ffn_norm"]


def ggml_tensors(hf: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    g = dict(gguf_tensors(hf))
    layers = sorted({int(n.split(".")[1]) for n in g if n.startswith("blk.")})
    out = [("tok_embeddings.weight", g["token_embd.weight"]), ("norm.weight", g["output_norm.weight"])]
    if "output.weight" in g:
        out.append(("output.weight", g["output.weight"]))
    for i in layers:
        for part in GGML_BLOCK_ORDER:
            out.append((f"layers.{i}.{GGML_PART[part]}.weight", g[f"blk.{i}.{part}.weight"]))
    return out


def write_ggml(path: Path, container: str, version: int | None, ftype: int, layers: int,
               tensors: list[tuple[str, np.ndarray, int]]) -> None:
    buf = bytearray(struct.pack("<I", GGML_MAGIC[container]))
    if version is not None:
        buf += struct.pack("<I", version)
    # n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype (n_ff is read from w1's shape; no n_mult gives 64)
    buf += struct.pack("<7I", VOCAB, HIDDEN, 32, HEADS, layers, HEAD_DIM, ftype)
    for tok in FIX_TOKENS:
        b = token_bytes(tok)
        buf += struct.pack("<I", len(b)) + b
        if container != "ggml":
            buf += struct.pack("<f", 0.0)
    v2 = container == "ggjt" and version == 2
    for name, arr, ty in tensors:
        ne = list(reversed(arr.shape))  # innermost first
        nb = name.encode()
        buf += struct.pack("<3I", len(ne), len(nb), ty) + struct.pack(f"<{len(ne)}I", *ne) + nb
        if container == "ggjt":
            buf += b"\0" * (-len(buf) % 32)
        buf += encode(arr, ty, v2=v2)
    path.write_bytes(bytes(buf))


def make_ggml() -> list[Path]:
    out = CORPUS / "ggml"
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def emit(fname, container, version, ftype, tied, default, per_part=None):
        t = ggml_tensors(llama_weights(VOCAB, 1, tied=tied))
        typed_t = []
        for name, arr in t:
            part = name.split(".")[-2] if name.startswith("layers.") else name.split(".")[0]
            ty = F32 if arr.ndim == 1 else (per_part or {}).get(part, default)
            typed_t.append((name, arr, ty))
        p = out / fname
        write_ggml(p, container, version, ftype, 1, typed_t)
        written.append(p)

    emit("ggjt3-q8_0.bin", "ggjt", 3, 7, tied=False, default=Q8_0)
    emit("ggjt2-q4mix.bin", "ggjt", 2, 2, tied=True, default=Q4_0,
         per_part={"wk": Q4_1, "wv": Q8_0, "w1": Q4_1, "w2": Q8_0})
    emit("ggjt1-f16.bin", "ggjt", 1, 1, tied=True, default=F16)
    emit("ggmf1-f16.bin", "ggmf", 1, 1, tied=True, default=F16)
    emit("ggml-f32.bin", "ggml", None, 0, tied=True, default=F32)
    return written


# =========================================================================== safetensors


def safetensors_bytes(tensors: dict[str, np.ndarray], dtype: str, metadata: dict | None = None) -> bytes:
    header, blobs, off = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, arr in tensors.items():
        if dtype == "F32":
            raw = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        elif dtype == "F16":
            raw = f16_bytes(arr)
        elif dtype == "BF16":
            raw = bf16_bytes(arr)
        else:
            raise ValueError(dtype)
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def make_safetensors() -> list[Path]:
    out = CORPUS / "safetensors"
    out.mkdir(parents=True, exist_ok=True)
    w = llama_weights(VOCAB, 1, tied=True)
    written = []
    for fname, dtype, meta in [("model-f16.safetensors", "F16", {"format": "pt"}),
                               ("model-bf16.safetensors", "BF16", None),
                               ("model-f32.safetensors", "F32", {"format": "pt"})]:
        p = out / fname
        p.write_bytes(safetensors_bytes(w, dtype, meta))
        written.append(p)
    return written


# =========================================================================== fixture folder

FIX_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "intermediate_size": FF,
    "num_hidden_layers": 1,
    "num_attention_heads": HEADS,
    "num_key_value_heads": KV_HEADS,
    "hidden_act": "silu",
    "max_position_embeddings": CTX,
    "rms_norm_eps": EPS,
    "rope_theta": THETA,
    "tie_word_embeddings": True,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "torch_dtype": "float16",
}

FIX_TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "add_bos_token": True,
    "add_eos_token": False,
    "model_max_length": CTX,
    "clean_up_tokenization_spaces": False,
    "chat_template": CHATML,
}


def added(i: int, content: str, special: bool = True) -> dict:
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": not special, "special": special}


def bos_post_processor(bos: str, bos_id: int) -> dict:
    return {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }


def byte_level_tokenizer(merges_as_strings: bool = False, llama3_split: bool = False) -> dict:
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    pre = byte_level
    if llama3_split:
        pre = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|"
                                                   "\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
                                                   "\\s+(?!\\S)|\\s+"},
             "behavior": "Isolated", "invert": False},
            dict(byte_level, use_regex=False)]}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [added(i, t) for i, t in enumerate(SPECIALS)],
        "normalizer": None,
        "pre_tokenizer": pre,
        "post_processor": bos_post_processor("<s>", BOS_ID),
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {t: i for i, t in enumerate(FIX_TOKENS)},
            "merges": [f"{a} {b}" for a, b in FIX_MERGES] if merges_as_strings else [[a, b] for a, b in FIX_MERGES],
        },
    }


def make_fixture() -> list[Path]:
    FIXTURE.mkdir(parents=True, exist_ok=True)
    files = {
        "config.json": json.dumps(FIX_CONFIG, indent=2) + "\n",
        "tokenizer_config.json": json.dumps(FIX_TOKENIZER_CONFIG, indent=2) + "\n",
        "tokenizer.json": json.dumps(byte_level_tokenizer(), ensure_ascii=False) + "\n",
    }
    written = []
    for name, text in files.items():
        (FIXTURE / name).write_text(text, encoding="utf-8")
        written.append(FIXTURE / name)
    p = FIXTURE / "model.safetensors"
    p.write_bytes(safetensors_bytes(llama_weights(VOCAB, 1, tied=True, qkv_bias=True), "F16", {"format": "pt"}))
    written.append(p)
    return written


# =========================================================================== json target


def wordpiece_tokenizer() -> dict:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = specials + letters + ["##" + c for c in letters] + list("0123456789") + list(".,!?'")
    vocab += ["hello", "world", "hi", "there", "the", "be", "brief", "bye", "##s", "##ing"]
    assert len(vocab) <= VOCAB
    cls_sep = lambda t: {"SpecialToken": {"id": t, "type_id": 0}}  # noqa: E731
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(i, t) for i, t in enumerate(specials)],
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [cls_sep("[CLS]"), {"Sequence": {"id": "A", "type_id": 0}}, cls_sep("[SEP]")],
            "pair": [cls_sep("[CLS]"), {"Sequence": {"id": "A", "type_id": 0}}, cls_sep("[SEP]"),
                     {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                               "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}},
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": {t: i for i, t in enumerate(vocab)}},
    }


def unigram_tokenizer() -> dict:
    pieces = [["<pad>", 0.0], ["</s>", 0.0], ["<unk>", 0.0], ["▁", -2.5]]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("HIW.,!?")
    pieces += [[c, -5.0 - i * 0.01] for i, c in enumerate(letters)]
    words = ["▁hello", "▁world", "▁the", "▁hi", "▁there", "▁be", "▁bye", "ello", "▁H", "▁w", "or", "ld", "▁a"]
    pieces += [[w, -3.0 - i * 0.1] for i, w in enumerate(words)]
    assert len(pieces) <= VOCAB
    meta = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(0, "<pad>"), added(1, "</s>"), added(2, "<unk>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Nmt"}, {"type": "NFKC"}, {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}]},
        "pre_tokenizer": meta,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                           "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}},
                                    {"Sequence": {"id": "B", "type_id": 0}}, {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                           "special_tokens": {"</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}}},
        "decoder": meta,
        "model": {"type": "Unigram", "unk_id": 2, "vocab": pieces, "byte_fallback": False},
    }


def spm_bpe_tokenizer() -> dict:
    """A llama-style tokenizer.json: SentencePiece BPE with byte fallback (a few byte tokens), ▁ normalizer."""
    vocab = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in (0x0A, 0x20, 0xC3, 0xA9, 0xE6, 0x97, 0xA5, 0xF0)]
    vocab += ["▁"] + [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("HIW.,!?")
    merges = [("▁", "t"), ("h", "e"), ("▁t", "he"), ("i", "n"), ("e", "r"), ("o", "n"), ("l", "l"), ("o", "r"),
              ("▁", "a"), ("▁", "w"), ("▁", "H"), ("e", "ll"), ("ell", "o"), ("▁H", "ello"), ("▁w", "or"),
              ("l", "d"), ("▁wor", "ld")]
    for a, b in merges:
        vocab.append(a + b)
    assert len(vocab) <= VOCAB and len(set(vocab)) == len(vocab)
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": None,
        "post_processor": bos_post_processor("<s>", 1),
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(vocab)}, "merges": [[a, b] for a, b in merges]},
    }


def byte_level_with_user_tokens() -> dict:
    """The fixture's vocabulary with llama3-style splitting, "a b" merges and two non-special added tokens
    taking the place of two merged tokens (ids stay within 128)."""
    t = byte_level_tokenizer(merges_as_strings=True, llama3_split=True)
    vocab = t["model"]["vocab"]
    t["model"]["merges"] = t["model"]["merges"][:-2]
    for tok in FIX_TOKENS[-2:]:
        del vocab[tok]
    t["added_tokens"] += [added(VOCAB - 2, "<|tool|>", special=False), added(VOCAB - 1, "<think>", special=True)]
    return t


GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)
MACROS = """{%- macro turn(role, text, last=false) -%}
<|{{ role | upper }}|>{{ text | trim }}{% if not last %}{{ eos_token }}{% endif %}

{%- endmacro -%}
{%- set ns = namespace(system='', turns=0, roles=[]) -%}
{%- for m in messages -%}
  {%- if m['role'] == 'system' -%}
    {%- set ns.system = ns.system ~ m['content'] ~ ' ' -%}
  {%- else -%}
    {%- set ns.turns = ns.turns + 1 -%}
    {%- set ns.roles = ns.roles + [m.role] -%}
  {%- endif -%}
{%- endfor -%}
{{ bos_token }}
{%- if ns.system | length > 0 %}{{ turn('system', ns.system) }}{% endif -%}
{%- for m in messages | rejectattr('role', 'equalto', 'system') -%}
  {{ turn(m.role, m.content, loop.last and not add_generation_prompt) }}
{%- endfor -%}
{%- if add_generation_prompt %}{{ '<|ASSISTANT|>' }}{% endif -%}
{#- ns.turns turns: ns.roles -#}
{%- if ns.turns > 3 and 'user' in ns.roles %}{{ '' }}{% endif -%}
"""
LLAMA3 = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""
MISTRAL = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message["role"] == "user") != (loop.index0 % 2 == 0) %}
        {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif %}
    {%- if message["role"] == "user" %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + "
    "'<|end|>\\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}"
)
QWEN_DEFAULT_SYSTEM = """{%- if messages[0]['role'] != 'system' %}
    {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.content is string and message.content.startswith('<think>') %}
        {%- set content = message.content.split('</think>')[-1].lstrip('\\n') %}
    {%- else %}
        {%- set content = message.content %}
    {%- endif %}
    {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>' + '\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
FILTERS = (
    "{% for m in messages %}{{ loop.index }}/{{ loop.length }} {{ m.role|capitalize }}: "
    "{{ m.content|replace('\\n', ' ')|lower }}{{ '\\n' if not loop.last }}{% endfor %}"
    "{% set roles = messages|map(attribute='role')|list %}[{{ roles|join(',') }}|{{ roles|unique|list|length }}]"
    "{{ {'n': messages|length, 'gen': add_generation_prompt}|tojson }}"
    "{% if add_generation_prompt %}{{ eos_token if messages[-1].role == 'assistant' else '>' }}{% endif %}"
)
TEMPLATES = {
    "chatml": CHATML, "llama2": LLAMA2, "gemma": GEMMA, "macros": MACROS, "llama3": LLAMA3,
    "mistral": MISTRAL, "phi3": PHI3, "qwen": QWEN_DEFAULT_SYSTEM, "filters": FILTERS,
}


def json_configs() -> dict[str, dict]:
    base = dict(FIX_CONFIG)
    c = {"base": base}
    c["legacy-nulls"] = dict(base, rope_scaling=None, head_dim=HEAD_DIM, attention_bias=False, mlp_bias=False,
                             pretraining_tp=1, use_cache=True)
    c["rope-linear"] = dict(base, rope_scaling={"type": "linear", "factor": 2.0})
    c["rope-llama3"] = dict(base, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    t5 = {k: v for k, v in base.items() if k != "rope_theta"}
    c["rope-parameters"] = dict(t5, rope_parameters={"rope_type": "default", "rope_theta": THETA}, dtype="float16")
    c["rope-longrope"] = dict(base, original_max_position_embeddings=32, rope_scaling={
        "type": "longrope", "short_factor": [1.0 + 0.05 * i for i in range(HEAD_DIM // 2)],
        "long_factor": [1.0 + 0.5 * i for i in range(HEAD_DIM // 2)]})
    c["sliding-window"] = dict(base, sliding_window=8)
    c["llama-window-off"] = dict(base, sliding_window=8, use_sliding_window=False, max_window_layers=1)
    c["mistral"] = dict(base, model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=16,
                        rope_theta=1e6)
    c["qwen2"] = dict(base, model_type="qwen2", architectures=["Qwen2ForCausalLM"], use_sliding_window=False,
                      sliding_window=32, max_window_layers=1, rope_theta=1e6, rms_norm_eps=1e-6)
    c["arch-class-only"] = {k: v for k, v in base.items() if k != "model_type"}
    return c


def json_tokenizers() -> dict[str, dict]:
    return {"bpe-bytelevel": byte_level_tokenizer(), "bpe-llama3-added": byte_level_with_user_tokens(),
            "wordpiece": wordpiece_tokenizer(), "unigram": unigram_tokenizer(), "bpe-spm-bytefallback": spm_bpe_tokenizer()}


def json_tokenizer_configs() -> dict[str, dict]:
    base = dict(FIX_TOKENIZER_CONFIG)
    tok = lambda s: {"content": s, "lstrip": False, "normalized": False, "rstrip": False,  # noqa: E731
                     "single_word": False, "__type": "AddedToken"}
    return {
        "base": base,
        "addedtoken-named-templates": dict(
            base, bos_token=tok("<s>"), eos_token=tok("<|im_end|>"), pad_token=None, unk_token=None,
            added_tokens_decoder={str(i): dict(added(i, t), content=t) for i, t in enumerate(SPECIALS)},
            additional_special_tokens=["<|im_start|>", "<|im_end|>"], model_max_length=1000000000000000019884624838656,
            chat_template=[{"name": "default", "template": CHATML}, {"name": "tool_use", "template": MISTRAL}]),
        "no-template": {k: v for k, v in base.items() if k != "chat_template"} | {"eos_token": "<|im_end|>",
                                                                                   "legacy": False, "padding_side": "left"},
        "llama2": dict(base, bos_token=None, eos_token=tok("</s>"), chat_template=LLAMA2),
    }


def make_json() -> list[Path]:
    out = CORPUS / "json"
    out.mkdir(parents=True, exist_ok=True)
    written = []

    def emit(kind: int, name: str, text: str):
        p = out / f"{kind}-{name}"
        p.write_bytes(bytes([kind]) + text.encode("utf-8"))
        written.append(p)

    for name, cfg in json_configs().items():
        emit(0, f"config-{name}.json", json.dumps(cfg, indent=2) + "\n")
    for name, tok in json_tokenizers().items():
        emit(1, f"tokenizer-{name}.json", json.dumps(tok, ensure_ascii=False) + "\n")
    for name, tpl in TEMPLATES.items():
        emit(2, f"template-{name}.jinja", tpl)
    for name, cfg in json_tokenizer_configs().items():
        emit(3, f"tokenizer_config-{name}.json", json.dumps(cfg, indent=2) + "\n")
    return written


# =========================================================================== request target


def make_request() -> list[Path]:
    out = CORPUS / "request"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    written = []
    for i in range(20):
        n = int(rng.randint(16, 513))
        p = out / f"random-{i:02d}.bin"
        p.write_bytes(rng.randint(0, 256, size=n).astype(np.uint8).tobytes())
        written.append(p)
    for n in (16, 64, 512):
        for fill, tag in ((0x00, "zeros"), (0xFF, "ones")):
            p = out / f"{tag}-{n}.bin"
            p.write_bytes(bytes([fill]) * n)
            written.append(p)
    return written


# =========================================================================== --check


class Checker:
    def __init__(self):
        import mistralrs

        self.m = mistralrs
        self.failures = 0
        self.tmp = Path(tempfile.mkdtemp(prefix="mistralrs-corpus-check-"))

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def runner(self, which, **kw):
        return self.m.Runner(which=which, kv_cache_mb=4, seed=0, **kw)

    def generate(self, runner, chat: bool) -> str:
        m = self.m
        r = runner.send_completion_request(m.CompletionRequest(model="m", prompt="Hello", max_tokens=4, ignore_eos=True))
        n = r.usage.completion_tokens
        assert n == 4, f"completion produced {n} tokens"
        s = f"completion {r.choices[0].text!r}"
        if chat:
            msgs = [{"role": "user", "content": "Hi there"}]
            c = runner.send_chat_completion_request(m.ChatCompletionRequest(messages=msgs, model="m", max_tokens=4,
                                                                              ignore_eos=True))
            assert c.usage.completion_tokens == 4
            s += f", chat {c.choices[0].message.content!r} (prompt {c.usage.prompt_tokens} tokens)"
        return s

    def one(self, label: str, fn, expect_ok: bool = True):
        try:
            what = fn()
            ok, msg = True, what
        except Exception as e:  # noqa: BLE001
            ok, msg = False, f"{type(e).__name__}: {e}"
        if ok == expect_ok:
            print(f"  ok    {label}: {msg if ok else 'rejected as expected: ' + msg}", flush=True)
        else:
            self.failures += 1
            print(f"  FAIL  {label}: {msg if not ok else 'loaded, but was expected to be rejected'}", flush=True)
            if not ok:
                traceback.print_exc()

    def load_gen(self, which, chat: bool, **kw):
        def fn():
            with self.runner(which, **kw) as r:
                return self.generate(r, chat)
        return fn

    def folder(self, name: str, replace: dict[str, bytes] | None = None, files=None) -> Path:
        d = self.tmp / name
        d.mkdir(parents=True, exist_ok=True)
        for f in files or ["config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"]:
            shutil.copy(FIXTURE / f, d / f)
        for f, data in (replace or {}).items():
            (d / f).write_bytes(data)
        return d


def check(paths: dict[str, list[Path]]) -> int:
    c = Checker()
    W = c.m.Which
    try:
        print("fixture", flush=True)
        c.one("fuzz/fixture/tokenizer (Plain llama)", c.load_gen(W.Plain(model_id=str(FIXTURE), arch="llama"), True))
        qdir = c.folder("qwen2-fixture", {"config.json": json.dumps(json_configs()["qwen2"]).encode()})
        c.one("fixture weights with the qwen2 config (Plain qwen2: uses the q/k/v biases)",
              c.load_gen(W.Plain(model_id=str(qdir), arch="qwen2"), True))

        print("gguf", flush=True)
        for p in paths["gguf"]:
            which = W.GGUF(tok_model_id=None, quantized_model_id=str(p.parent), quantized_filename=p.name)
            chat = p.name in ("llama-gpt2-q8_0.gguf", "llama-spm-q4mix.gguf") or p.name.startswith("gemma")
            c.one(p.name, c.load_gen(which, chat))

        print("ggml", flush=True)
        for p in paths["ggml"]:
            which = W.GGML(tok_model_id=str(FIXTURE), quantized_model_id=str(p.parent), quantized_filename=p.name)
            c.one(p.name, c.load_gen(which, True))

        print("safetensors", flush=True)
        for p in paths["safetensors"]:
            d = c.folder(p.stem, {"model.safetensors": p.read_bytes()},
                         files=["config.json", "tokenizer.json", "tokenizer_config.json"])
            c.one(p.name, c.load_gen(W.Plain(model_id=str(d), arch="llama"), True))

        print("json (the fuzz target loads every folder as arch llama)", flush=True)
        fname = {0: "config.json", 1: "tokenizer.json", 3: "tokenizer_config.json"}
        long_ctx = c.folder("long-context", {"config.json": json.dumps(dict(FIX_CONFIG, max_position_embeddings=1024)).encode()})
        for p in paths["json"]:
            data = p.read_bytes()
            kind, text = data[0], data[1:]
            if kind == 2:
                # The target only renders templates; some render past the fixture's 64-token context with
                # this vocabulary (one token per character), so they are checked with a longer one.
                which = W.Plain(model_id=str(long_ctx), arch="llama")
                c.one(p.name, c.load_gen(which, True, chat_template=text.decode("utf-8")))
                continue
            d = c.folder(p.stem, {fname[kind]: text})
            doc = json.loads(text)
            model_type = doc.get("model_type") if kind == 0 else "llama"
            chat = kind != 3 or "chat_template" in doc
            if kind == 0 and model_type in ("mistral", "qwen2"):
                c.one(f"{p.name} as llama", c.load_gen(W.Plain(model_id=str(d), arch="llama"), chat), expect_ok=False)
                c.one(f"{p.name} as {model_type}", c.load_gen(W.Plain(model_id=str(d), arch=model_type), chat))
            else:
                c.one(p.name + ("" if chat else " (no chat template: completion only)"),
                      c.load_gen(W.Plain(model_id=str(d), arch="llama"), chat))

        print("request: random bytes for arbitrary::Unstructured (nothing to load)", flush=True)
    finally:
        c.close()
    print(f"{'all seeds load and generate' if not c.failures else f'{c.failures} FAILED'}")
    return 1 if c.failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="load every seed with mistralrs and generate 4 tokens")
    args = ap.parse_args()
    paths = {
        "fixture": make_fixture(),
        "gguf": make_gguf(),
        "ggml": make_ggml(),
        "safetensors": make_safetensors(),
        "json": make_json(),
        "request": make_request(),
    }
    for group, ps in paths.items():
        total = sum(p.stat().st_size for p in ps)
        print(f"{group}: {len(ps)} files, {total} bytes")
        for p in ps:
            print(f"  {p.stat().st_size:7d}  {p.relative_to(ROOT)}")
    big = [p for ps in paths.values() for p in ps if p.stat().st_size > 40 * 1024]
    if big:
        print("over 40 KB: " + ", ".join(f"{p.name} ({p.stat().st_size})" for p in big))
    return check(paths) if args.check else 0


if __name__ == "__main__":
    sys.exit(main())
