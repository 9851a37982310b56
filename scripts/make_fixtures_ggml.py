#!/usr/bin/env python3
"""Build tests/fixtures/ggml/: legacy GGML (pre-GGUF llama.cpp) files of the quant-types model.

Run with the reference environment (numpy, gguf, safetensors, tokenizers, llama-cpp-python 0.3.36):

    /work/refenv/bin/pip download --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d /tmp/lcpp-sdist
    /work/refenv/bin/python scripts/make_fixtures_ggml.py --lcpp-sdist /tmp/lcpp-sdist
    /work/refenv/bin/python scripts/make_fixtures_ggml.py --no-check     # only the .bin files

CI never runs this script; the tests only read what it writes.  Deterministic: two runs give byte-identical
files (references.json included).

Source: tests/fixtures/quant-types/ (a 256-wide llama, 2 layers, 4 heads of 64, 2 KV heads, n_ff 512,
vocab 384, untied head).  The tensors of each GGML file are copied from the matching GGUF file that llama.cpp's
quantizer wrote there (model-<type>.gguf); F32 tensors come from model.safetensors with llama.cpp's Q/K row
permutation (make_fixtures.permute_rows), checked against model-f16.gguf (f16 of the permuted f32 tensors ==
its bytes, and != without the permutation).

The container, as llama.cpp's convert_llama_ggml_to_gguf.py reads it (all integers little-endian):
  magic u32: 0x67676d6c "ggml" (no version) | 0x67676d66 "ggmf" + u32 version 1 | 0x67676a74 "ggjt" + u32
  version 1..3;
  hparams 7 x u32: n_vocab 384, n_embd 256, n_mult 256, n_head 4, n_layer 2, n_rot 64, ftype;
  vocab: n_vocab x (u32 len, bytes, f32 score 0.0 -- no score in "ggml" files); the bytes are the token's raw
  bytes (the byte-level BPE table inverted, special tokens as their text: quant-types' vocab_bytes);
  tensors until EOF: u32 n_dims, u32 name_len, u32 ggml type, n_dims x u32 ne (innermost first), name,
  (ggjt only) zero padding to a 32-byte file offset, data.
n_mult: llama's n_ff = ((2*(4*n_embd)/3 + n_mult - 1)/n_mult)*n_mult is >= 682 for n_embd 256 and any n_mult,
so no n_mult gives n_ff = 512; 256 (LLaMA-1's value) is written, and n_ff must come from the w1 tensor (as the
converter does).  n_head_kv (2), rms_norm_eps (1e-5) and rope theta (1e4) are not in a GGML file.

Block layouts: ggjt v3 = today's ggml blocks (copied raw from the GGUF files); ggjt v2 = today's for
F32/F16/Q5_0/Q5_1, and Q4_0 {f32 d; u8 qs[16]} (20 B), Q4_1 {f32 d; f32 m; u8 qs[16]} (24 B),
Q8_0 {f32 d; i8 qs[32]} (36 B): the GGUF blocks' f16 scales widened to f32 (exact), quants unchanged.
bad-ggjt1-q4_0.bin uses ggjt v1's Q4_0 {f32 d; u8 qs[16]} with v1's nibble order (byte j = q[2j] | q[2j+1]<<4).

Cross-check (unless --no-check): llama.cpp's own convert_llama_ggml_to_gguf.py and its gguf-py, taken from the
llama-cpp-python 0.3.36 sdist (vendor/llama.cpp) into a temporary folder, with one patch (PATCH_OLD ->
PATCH_NEW: the converter hands the writer element shapes while gguf-py 0.19 reads raw_shape of uint8 data as
a byte shape), run with --gqa 2 --eps 1e-5 --context-length 256 on every file; then the converted GGUF's
tensors are compared (name, type, shape, bytes) with model-<type>.gguf (with the safetensors F32 tensors for
F32), and llama-cpp-python runs the converted GGUF with scripts/record_llamacpp.py's protocol (n_threads 2,
whole prompt in one batch, F32 KV cache; make_fixtures_quant._lc_greedy) on the quant-types cases; its
first-step top-8 and 16 greedy ids are compared (exactly) with quant-types/references.json
files[<type>].llamacpp (llamacpp_f32 for F32).  See tests/fixtures/ggml/README.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

os.environ.setdefault("GGML_NO_BACKTRACE", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "tests" / "fixtures" / "quant-types"
OUT = ROOT / "tests" / "fixtures" / "ggml"
N_CTX = 256

MAGIC = {"ggml": 0x67676D6C, "ggmf": 0x67676D66, "ggjt": 0x67676A74}
# ggml type ids (ggml.h) and today's (block elements, block bytes)
GGML_TYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8,
             "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}
BLOCK = {"F32": (1, 4), "F16": (1, 2), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24),
         "Q8_0": (32, 34), "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176),
         "Q6_K": (256, 210)}
# ggjt v1/v2 blocks that differ from today's (v1 Q4_0 also has another nibble order)
BLOCK_OLD = {"Q4_0": (32, 20), "Q4_1": (32, 24), "Q8_0": (32, 36)}
# GGMLFType (convert_llama_ggml_to_gguf.py) == llama_ftype for these
FTYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10,
         "Q3_K": 12, "Q4_K": 15, "Q5_K": 17, "Q6_K": 18}  # K: the S/M/L the quant-types files carry
FTYPE_NAME = {0: "ALL_F32", 1: "MOSTLY_F16", 2: "MOSTLY_Q4_0", 3: "MOSTLY_Q4_1", 7: "MOSTLY_Q8_0",
              8: "MOSTLY_Q5_0", 9: "MOSTLY_Q5_1", 10: "MOSTLY_Q2_K", 11: "MOSTLY_Q3_K_S", 12: "MOSTLY_Q3_K_M",
              13: "MOSTLY_Q3_K_L", 14: "MOSTLY_Q4_K_S", 15: "MOSTLY_Q4_K_M", 16: "MOSTLY_Q5_K_S",
              17: "MOSTLY_Q5_K_M", 18: "MOSTLY_Q6_K"}

HP = {"n_vocab": 384, "n_embd": 256, "n_mult": 256, "n_head": 4, "n_layer": 2, "n_rot": 64}
N_HEAD_KV = 2

# (container, version, type, file name)
GOOD = (
    [("ggjt", 3, t, f"model-ggjt3-{t.lower()}.bin") for t in
     ["F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]]
    + [("ggjt", 2, t, f"model-ggjt2-{t.lower()}.bin") for t in ["F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]]
    + [("ggjt", 1, "F16", "model-ggjt1-f16.bin"), ("ggmf", 1, "F16", "model-ggmf1-f16.bin"),
       ("ggml", None, "F32", "model-ggml-f32.bin"), ("ggml", None, "F16", "model-ggml-f16.bin")]
)
BAD = [
    ("ggjt", 2, "Q4_K", "bad-ggjt2-q4_k.bin",
     "ggjt v2 with Q4_K tensors (ftype MOSTLY_Q4_K_M): K-quants only ever existed in ggjt v3"),
    ("ggjt", 1, "Q4_0", "bad-ggjt1-q4_0.bin",
     "ggjt v1 with Q4_0 tensors (v1 layout: f32 d, pairwise nibbles): quantized files older than ggjt v2 "
     "cannot be read (llama.cpp's converter refuses them too)"),
    ("ggjt", 3, "Q4_0", "bad-truncated-ggjt3-q4_0.bin",
     "model-ggjt3-q4_0.bin cut in the middle of its last tensor's data (layers.1.ffn_norm.weight, F32)"),
]

# GGUF name -> GGML name
def ggml_name(gguf_name: str) -> str:
    fixed = {"token_embd.weight": "tok_embeddings.weight", "output_norm.weight": "norm.weight",
             "output.weight": "output.weight"}
    if gguf_name in fixed:
        return fixed[gguf_name]
    _, i, rest = gguf_name.split(".", 2)
    sub = {"attn_q.weight": "attention.wq.weight", "attn_k.weight": "attention.wk.weight",
           "attn_v.weight": "attention.wv.weight", "attn_output.weight": "attention.wo.weight",
           "attn_norm.weight": "attention_norm.weight", "ffn_gate.weight": "feed_forward.w1.weight",
           "ffn_down.weight": "feed_forward.w2.weight", "ffn_up.weight": "feed_forward.w3.weight",
           "ffn_norm.weight": "ffn_norm.weight"}[rest]
    return f"layers.{i}.{sub}"


def ggml_order(n_layer: int) -> list[str]:
    names = ["tok_embeddings.weight", "norm.weight", "output.weight"]
    for i in range(n_layer):
        p = f"layers.{i}."
        names += [p + "attention.wq.weight", p + "attention.wk.weight", p + "attention.wv.weight",
                  p + "attention.wo.weight", p + "attention_norm.weight", p + "feed_forward.w1.weight",
                  p + "feed_forward.w2.weight", p + "feed_forward.w3.weight", p + "ffn_norm.weight"]
    return names


def gguf_file_of(t: str) -> str:
    return "model-f32 (none committed: quant-types' model.safetensors, Q/K permuted)" if t == "F32" \
        else f"model-{t.lower()}.gguf"


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- sources
def vocab_bytes() -> list[bytes]:
    """Raw bytes of each token of quant-types/tokenizer.json (byte-level BPE inverted; specials as text)."""
    tj = json.loads((SRC / "tokenizer.json").read_text())
    # GPT-2 byte <-> unicode table
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    b2u = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in b2u:
            b2u[b] = chr(256 + extra)
            extra += 1
    u2b = {c: b for b, c in b2u.items()}
    specials = {a["content"]: a["id"] for a in tj["added_tokens"]}
    vocab = dict(tj["model"]["vocab"])
    vocab.update(specials)
    out: list[bytes | None] = [None] * len(vocab)
    for s, i in vocab.items():
        out[i] = s.encode("utf-8") if s in specials else bytes(u2b[c] for c in s)
    assert all(x is not None for x in out) and len(out) == HP["n_vocab"]
    ref = json.loads((SRC / "references.json").read_text())["vocab_bytes"]
    assert [list(x) for x in out] == ref, "vocab bytes differ from quant-types/references.json vocab_bytes"
    return out  # type: ignore[return-value]


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp converter's Q/K row order (scripts/make_fixtures.py permute_rows)."""
    hd = w.shape[0] // n_head
    return w.reshape(n_head, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def f32_tensors() -> dict[str, np.ndarray]:
    """model.safetensors -> GGML names, Q/K rows permuted like llama.cpp's converter, float32 (numpy shape)."""
    from safetensors.numpy import load_file

    sd = load_file(str(SRC / "model.safetensors"))
    cfg = json.loads((SRC / "config.json").read_text())
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    assert (nh, nkv, cfg["hidden_size"], cfg["num_hidden_layers"]) == (HP["n_head"], N_HEAD_KV, HP["n_embd"],
                                                                        HP["n_layer"])
    out = {"tok_embeddings.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"],
           "output.weight": sd["lm_head.weight"]}
    for i in range(cfg["num_hidden_layers"]):
        p, q = f"model.layers.{i}.", f"layers.{i}."
        out.update({
            q + "attention.wq.weight": permute_rows(sd[p + "self_attn.q_proj.weight"], nh),
            q + "attention.wk.weight": permute_rows(sd[p + "self_attn.k_proj.weight"], nkv),
            q + "attention.wv.weight": sd[p + "self_attn.v_proj.weight"],
            q + "attention.wo.weight": sd[p + "self_attn.o_proj.weight"],
            q + "attention_norm.weight": sd[p + "input_layernorm.weight"],
            q + "feed_forward.w1.weight": sd[p + "mlp.gate_proj.weight"],
            q + "feed_forward.w2.weight": sd[p + "mlp.down_proj.weight"],
            q + "feed_forward.w3.weight": sd[p + "mlp.up_proj.weight"],
            q + "ffn_norm.weight": sd[p + "post_attention_layernorm.weight"],
        })
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def gguf_tensors(path: Path) -> dict[str, tuple[str, list[int], bytes]]:
    """GGUF file -> {GGML name: (type name, ne (innermost first), raw bytes)}, plus general.file_type."""
    import gguf

    r = gguf.GGUFReader(str(path))
    out = {}
    for ti in r.tensors:
        out[ggml_name(ti.name)] = (ti.tensor_type.name, [int(x) for x in ti.shape], np.asarray(ti.data).tobytes())
    return out


def gguf_file_type(path: Path) -> int:
    import gguf

    r = gguf.GGUFReader(str(path))
    f = r.fields["general.file_type"]
    return int(f.parts[f.data[0]][0])


def source_tensors(t: str, f32: dict[str, np.ndarray]) -> dict[str, tuple[str, list[int], bytes]]:
    """Type t's tensors in today's layout: from model-<t>.gguf, or (F32) from the safetensors."""
    if t == "F32":
        return {n: ("F32", list(a.shape[::-1]), a.tobytes()) for n, a in f32.items()}
    tens = gguf_tensors(SRC / f"model-{t.lower()}.gguf")
    for n, (tt, ne, _) in tens.items():
        want = "F32" if n.endswith("norm.weight") else t
        assert tt == want, (t, n, tt)
        assert ne == list(f32[n].shape[::-1]), (t, n, ne)
    return tens


def check_permutation(f32: dict[str, np.ndarray]):
    """f16 of the permuted safetensors tensors == model-f16.gguf's bytes (and the unpermuted ones differ)."""
    g = gguf_tensors(SRC / "model-f16.gguf")
    assert set(g) == set(f32), sorted(set(g) ^ set(f32))
    for n, a in f32.items():
        tt, ne, raw = g[n]
        mine = a.astype(np.float16 if tt == "F16" else np.float32).tobytes()
        assert mine == raw, f"{n}: f16(safetensors, permuted) != model-f16.gguf"
    from safetensors.numpy import load_file

    sd = load_file(str(SRC / "model.safetensors"))
    unperm = sd["model.layers.0.self_attn.q_proj.weight"].astype(np.float16).tobytes()
    assert unperm != g["layers.0.attention.wq.weight"][2], "Q rows not permuted in model-f16.gguf?"


# --------------------------------------------------------------------------- old block layouts
def to_v2(t: str, raw: bytes) -> bytes:
    """Today's Q4_0/Q4_1/Q8_0 blocks -> ggjt v2 (f32 scales; quants and nibble order unchanged)."""
    if t == "Q4_0":
        src = np.frombuffer(raw, dtype=[("d", "<f2"), ("qs", "u1", 16)])
        dst = np.empty(len(src), dtype=[("d", "<f4"), ("qs", "u1", 16)])
        dst["d"], dst["qs"] = src["d"].astype(np.float32), src["qs"]
    elif t == "Q4_1":
        src = np.frombuffer(raw, dtype=[("d", "<f2"), ("m", "<f2"), ("qs", "u1", 16)])
        dst = np.empty(len(src), dtype=[("d", "<f4"), ("m", "<f4"), ("qs", "u1", 16)])
        dst["d"], dst["m"], dst["qs"] = src["d"].astype(np.float32), src["m"].astype(np.float32), src["qs"]
    elif t == "Q8_0":
        src = np.frombuffer(raw, dtype=[("d", "<f2"), ("qs", "i1", 32)])
        dst = np.empty(len(src), dtype=[("d", "<f4"), ("qs", "i1", 32)])
        dst["d"], dst["qs"] = src["d"].astype(np.float32), src["qs"]
    else:
        return raw
    assert np.array_equal(dst["d"].astype(np.float16).astype(np.float32), dst["d"])  # exact widening
    return dst.tobytes()


def q4_0_to_v1(raw: bytes) -> bytes:
    """Today's Q4_0 -> ggjt v1 Q4_0: {f32 d; u8 qs[16]} with byte j = q[2j] | q[2j+1] << 4."""
    src = np.frombuffer(raw, dtype=[("d", "<f2"), ("qs", "u1", 16)])
    q = np.concatenate([src["qs"] & 0x0F, src["qs"] >> 4], axis=1)  # today: q[j] low, q[j+16] high
    dst = np.empty(len(src), dtype=[("d", "<f4"), ("qs", "u1", 16)])
    dst["d"], dst["qs"] = src["d"].astype(np.float32), (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)
    return dst.tobytes()


def dequant_v2(t: str, raw: bytes) -> np.ndarray:
    """Independent numpy dequantization of the ggjt v2 Q4_0/Q4_1/Q8_0 layouts (flat f32)."""
    if t == "Q4_0":
        b = np.frombuffer(raw, dtype=[("d", "<f4"), ("qs", "u1", 16)])
        q = np.concatenate([b["qs"] & 0x0F, b["qs"] >> 4], axis=1).astype(np.int8) - 8
        return (b["d"][:, None] * q.astype(np.float32)).reshape(-1)
    if t == "Q4_1":
        b = np.frombuffer(raw, dtype=[("d", "<f4"), ("m", "<f4"), ("qs", "u1", 16)])
        q = np.concatenate([b["qs"] & 0x0F, b["qs"] >> 4], axis=1).astype(np.float32)
        return (b["d"][:, None] * q + b["m"][:, None]).reshape(-1)
    if t == "Q8_0":
        b = np.frombuffer(raw, dtype=[("d", "<f4"), ("qs", "i1", 32)])
        return (b["d"][:, None] * b["qs"].astype(np.float32)).reshape(-1)
    raise ValueError(t)


def block_size(container: str, version: int | None, t: str) -> tuple[int, int]:
    if container == "ggjt" and version == 3:
        return BLOCK[t]
    return BLOCK_OLD.get(t, BLOCK[t])


# --------------------------------------------------------------------------- the container
def write_ggml(path: Path, container: str, version: int | None, ftype: int, vocab: list[bytes],
               tensors: list[tuple[str, str, list[int], bytes]]) -> None:
    buf = bytearray(struct.pack("<I", MAGIC[container]))
    if container != "ggml":
        buf += struct.pack("<I", version)
    buf += struct.pack("<7I", HP["n_vocab"], HP["n_embd"], HP["n_mult"], HP["n_head"], HP["n_layer"],
                       HP["n_rot"], ftype)
    for tok in vocab:
        buf += struct.pack("<I", len(tok)) + tok
        if container != "ggml":
            buf += struct.pack("<f", 0.0)
    for name, t, ne, data in tensors:
        nb = name.encode()
        blk, tsz = block_size(container, version, t)
        assert ne[0] % blk == 0 and len(data) == int(np.prod(ne)) // blk * tsz, (name, t, ne, len(data))
        buf += struct.pack("<3I", len(ne), len(nb), GGML_TYPE[t]) + struct.pack(f"<{len(ne)}I", *ne) + nb
        if container == "ggjt":
            buf += b"\0" * (-len(buf) % 32)
        buf += data
    path.write_bytes(bytes(buf))


def read_ggml(path: Path) -> dict:
    """Our own reader (version-aware block sizes): header, vocab and {name: (type, ne, bytes)}; must end at EOF."""
    data = path.read_bytes()
    inv = {v: k for k, v in MAGIC.items()}
    (magic,) = struct.unpack_from("<I", data, 0)
    container = inv[magic]
    off, version = 4, None
    if container != "ggml":
        (version,) = struct.unpack_from("<I", data, 4)
        off = 8
    hp = struct.unpack_from("<7I", data, off)
    off += 28
    vocab = []
    for _ in range(hp[0]):
        (n,) = struct.unpack_from("<I", data, off)
        vocab.append(data[off + 4:off + 4 + n])
        off += 4 + n
        if container != "ggml":
            assert struct.unpack_from("<f", data, off)[0] == 0.0
            off += 4
    inv_t = {v: k for k, v in GGML_TYPE.items()}
    tensors = {}
    while off < len(data):
        nd, nl, tid = struct.unpack_from("<3I", data, off)
        off += 12
        ne = list(struct.unpack_from(f"<{nd}I", data, off))
        off += 4 * nd
        name = data[off:off + nl].decode()
        off += nl
        if container == "ggjt":
            off += -off % 32
        t = inv_t[tid]
        blk, tsz = block_size(container, version, t)
        n = int(np.prod(ne)) // blk * tsz
        assert off + n <= len(data), f"{path.name}: {name} runs past EOF"
        tensors[name] = (t, ne, data[off:off + n])
        off += n
    assert off == len(data)
    return {"container": container, "version": version, "hparams": hp, "vocab": vocab, "tensors": tensors}


def build_file(container: str, version: int | None, t: str, f32: dict[str, np.ndarray], vocab: list[bytes],
               v1_q4_0: bool = False) -> tuple[int, list[tuple[str, str, list[int], bytes]]]:
    src = source_tensors(t, f32)
    tensors = []
    for name in ggml_order(HP["n_layer"]):
        tt, ne, raw = src[name]
        if v1_q4_0 and tt == "Q4_0":
            raw = q4_0_to_v1(raw)
        elif not (container == "ggjt" and version == 3):
            raw = to_v2(tt, raw)
        tensors.append((name, tt, ne, raw))
    return FTYPE[t], tensors


# --------------------------------------------------------------------------- llama.cpp's converter
PATCH_OLD = """                raw_shape = tempdims,
                raw_dtype = tensor.dtype)"""
PATCH_NEW = """                raw_shape = gguf.quant_shape_to_byte_shape(tempdims, tensor.dtype),  # PATCHED
                raw_dtype = tensor.dtype)"""


def prepare_converter(sdist: Path, td: Path) -> tuple[Path, str]:
    """Extract vendor/llama.cpp/{convert_llama_ggml_to_gguf.py, gguf-py/} from the sdist; patch the script."""
    tars = [sdist] if sdist.is_file() else sorted(sdist.glob("llama_cpp_python-*.tar.gz"))
    assert tars, f"no llama_cpp_python sdist in {sdist}"
    with tarfile.open(tars[0]) as tf:
        members = [m for m in tf.getmembers()
                   if "/vendor/llama.cpp/convert_llama_ggml_to_gguf.py" in m.name or "/vendor/llama.cpp/gguf-py/" in m.name]
        tf.extractall(td / "sdist", members=members, filter="data")
    lc = next((td / "sdist").glob("*/vendor/llama.cpp"))
    script = lc / "convert_llama_ggml_to_gguf.py"
    text = script.read_text()
    assert text.count(PATCH_OLD) == 1, "converter source changed: patch does not apply"
    patched = lc / "convert_llama_ggml_to_gguf_patched.py"
    patched.write_text(text.replace(PATCH_OLD, PATCH_NEW))
    ver = next(ln for ln in (lc / "gguf-py" / "pyproject.toml").read_text().splitlines() if ln.startswith("version"))
    return patched, ver.split("=")[1].strip().strip('"')


def convert(script: Path, src: Path, dst: Path) -> tuple[bool, str]:
    args = [sys.executable, str(script), "--input", str(src), "--output", str(dst), "--gqa", str(HP["n_head"] // N_HEAD_KV),
            "--eps", "1e-5", "--context-length", str(N_CTX), "--name", src.stem]
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # use the sdist's gguf-py
    p = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
    if p.returncode != 0:
        err = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "?")
        return False, err.strip()
    fmt = next((ln for ln in lines if "* File format:" in ln), "")  # e.g. "* File format: GGJTv3 with ftype ..."
    return True, fmt[fmt.index("* File format:") + 2:].strip() if fmt else ""


def compare_converted(conv: Path, want: dict[str, tuple[str, list[int], bytes]]) -> dict:
    import gguf

    r = gguf.GGUFReader(str(conv))
    got = {ti.name: ti for ti in r.tensors}
    inv = {ggml_name(n): n for n in got}
    res = {"same_names": set(inv) == set(want), "mismatches": []}
    for gname, (tt, ne, raw) in want.items():
        ti = got.get(inv.get(gname, ""))
        if ti is None:
            res["mismatches"].append(f"{gname}: missing")
            continue
        gb = np.asarray(ti.data).tobytes()
        if ti.tensor_type.name != tt:
            res["mismatches"].append(f"{ti.name}: type {ti.tensor_type.name} != {tt}")
        if [int(x) for x in ti.shape] != ne:
            res["mismatches"].append(f"{ti.name}: ne {list(ti.shape)} != {ne}")
        if gb != raw:
            res["mismatches"].append(f"{ti.name}: bytes differ")
    res["byte_identical"] = res["same_names"] and not res["mismatches"]
    return res


LLAMA_CHILD = r"""
import sys, llama_cpp
try:
    llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, n_batch=256, n_ubatch=256, n_threads=2,
                          verbose=True, type_k=0, type_v=0, flash_attn=False)
    llm.eval([0, 316])
    print("LOADED_OK")
except Exception as e:
    print("LOAD_FAILED", type(e).__name__, e)
"""


def llama_load_child(path: Path) -> str:
    p = subprocess.run([sys.executable, "-c", LLAMA_CHILD, str(path)], capture_output=True, text=True, timeout=300)
    out = [ln.strip().replace(str(path.parent) + "/", "") for ln in (p.stdout + p.stderr).splitlines() if ln.strip()]
    errs = [ln for ln in out if ("error" in ln.lower() or "failed" in ln.lower()) and "LOAD_FAILED" not in ln][:2]
    if p.returncode != 0:
        return f"process exited with status {p.returncode}: " + " | ".join(errs or out[-1:])
    res = next((ln for ln in out if ln.startswith(("LOADED_OK", "LOAD_FAILED"))), out[-1] if out else "?")
    return " | ".join([res] + errs)


# --------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--lcpp-sdist", type=Path, default=Path("/tmp/lcpp-sdist"),
                    help="llama_cpp_python-0.3.36.tar.gz or the folder holding it")
    ap.add_argument("--no-check", action="store_true", help="write the .bin files only (references.json untouched)")
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    vocab = vocab_bytes()
    f32 = f32_tensors()
    check_permutation(f32)
    for t in FTYPE:
        if t != "F32":
            ft = gguf_file_type(SRC / f"model-{t.lower()}.gguf")
            assert ft == FTYPE[t], (t, ft)
    print("F32 tensors from model.safetensors: Q/K permutation checked against model-f16.gguf")

    written = {}
    for container, version, t, fname in GOOD:
        ftype, tensors = build_file(container, version, t, f32, vocab)
        write_ggml(out / fname, container, version, ftype, vocab, tensors)
        written[fname] = (container, version, t, ftype, tensors, None)
    # bad files
    c, v, t, fname, why = BAD[0]
    ftype, tensors = build_file(c, v, t, f32, vocab)
    write_ggml(out / fname, c, v, ftype, vocab, tensors)
    written[fname] = (c, v, t, ftype, tensors, why)
    c, v, t, fname, why = BAD[1]
    ftype, tensors = build_file(c, v, t, f32, vocab, v1_q4_0=True)
    write_ggml(out / fname, c, v, ftype, vocab, tensors)
    written[fname] = (c, v, t, ftype, tensors, why)
    c, v, t, fname, why = BAD[2]
    full = (out / "model-ggjt3-q4_0.bin").read_bytes()
    last = written["model-ggjt3-q4_0.bin"][4][-1]
    assert full.endswith(last[3])
    cut = len(full) - len(last[3]) // 2
    (out / fname).write_bytes(full[:cut])
    written[fname] = (c, v, t, FTYPE[t], written["model-ggjt3-q4_0.bin"][4], why)

    # read every good file back with our own reader
    for fname, (container, version, t, ftype, tensors, why) in written.items():
        if why is not None:
            continue
        rd = read_ggml(out / fname)
        assert rd["container"] == container and rd["version"] == version and rd["hparams"][6] == ftype
        assert rd["vocab"] == vocab
        assert list(rd["tensors"]) == [n for n, *_ in tensors]
        for n, tt, ne, raw in tensors:
            assert rd["tensors"][n] == (tt, ne, raw), (fname, n)
    # the v2 layouts dequantize to exactly the GGUF's values
    import gguf

    v2_equal = {}
    for t in ["Q4_0", "Q4_1", "Q8_0"]:
        rd = read_ggml(out / f"model-ggjt2-{t.lower()}.bin")["tensors"]
        src = source_tensors(t, f32)
        ok = True
        for n, (tt, ne, raw) in rd.items():
            if tt != t:
                continue
            ref = gguf.quants.dequantize(np.frombuffer(src[n][2], dtype=np.uint8).reshape(ne[1], -1),
                                         gguf.GGMLQuantizationType[t]).reshape(-1)
            ok &= bool(np.array_equal(dequant_v2(t, raw), ref))
        v2_equal[t] = ok
        assert ok, t
    # the v1 Q4_0 layout too (pairwise nibbles)
    b1 = read_ggml(out / "bad-ggjt1-q4_0.bin")["tensors"]["layers.0.attention.wq.weight"]
    blk = np.frombuffer(b1[2], dtype=[("d", "<f4"), ("qs", "u1", 16)])
    q = np.empty((len(blk), 32), np.int8)
    q[:, 0::2], q[:, 1::2] = blk["qs"] & 0x0F, blk["qs"] >> 4
    v1_deq = (blk["d"][:, None] * (q - 8).astype(np.float32)).reshape(-1)
    src = source_tensors("Q4_0", f32)["layers.0.attention.wq.weight"]
    assert np.array_equal(v1_deq, gguf.quants.dequantize(np.frombuffer(src[2], np.uint8).reshape(src[1][1], -1),
                                                        gguf.GGMLQuantizationType.Q4_0).reshape(-1))

    total = 0
    for fname in written:
        total += (out / fname).stat().st_size
        print(f"  {fname:32s} {(out / fname).stat().st_size:>9}")
    print(f"GGML files: {len(written)}, {total} bytes")
    if args.no_check:
        return

    # ------------------------------------------------------------------ cross-check with llama.cpp
    import llama_cpp

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import make_fixtures_quant as Q  # noqa: E402
    import record_llamacpp as R  # noqa: E402

    qref = json.loads((SRC / "references.json").read_text())
    table = qref["vocab_bytes"]
    cases = qref["cases"]
    doc = {
        "schema": 1,
        "source": "tests/fixtures/quant-types (model, tokenizer, cases: see its references.json)",
        "hparams": {**HP, "n_ff": 512, "n_head_kv": N_HEAD_KV, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                    "note": "n_mult 256 is not consistent with n_ff 512 (llama's formula gives >= 682 for any "
                            "n_mult); n_ff comes from layers.0.feed_forward.w1 (ne[1]); n_head_kv, eps and "
                            "rope theta are not stored in GGML files"},
        "vocab": "n_vocab entries: raw token bytes = quant-types references.json vocab_bytes; score 0.0 "
                 "(absent in unversioned ggml)",
        "tensor_order": ggml_order(HP["n_layer"]),
        "versions": {"llama_cpp_python": llama_cpp.__version__, "gguf": Q._version("gguf")},
        "converter": None,
        "llamacpp_settings": qref["llamacpp_settings"].split("; ids_f16_kv_cache")[0],
        "files": {},
    }
    summary = []
    with tempfile.TemporaryDirectory() as tdn:
        td = Path(tdn)
        script, gguf_py_ver = prepare_converter(args.lcpp_sdist, td)
        doc["converter"] = {
            "script": "vendor/llama.cpp/convert_llama_ggml_to_gguf.py of the llama-cpp-python %s sdist, with its "
                      "gguf-py %s" % (llama_cpp.__version__, gguf_py_ver),
            "args": "--gqa 2 --eps 1e-5 --context-length 256 --name <file stem>",
            "patch": {"old": PATCH_OLD.strip(), "new": PATCH_NEW.strip(),
                      "why": "GGUFWriter.add_tensor_info treats raw_shape of uint8 data as a byte shape "
                             "(quant_shape_from_byte_shape), but the converter passes element shapes: unpatched, "
                             "F32 rows come out 1/4 and F16 rows 1/2 as long, and Q4_0 raises (256 bytes per row "
                             "is not a multiple of 18)"},
        }
        for fname, (container, version, t, ftype, tensors, why) in written.items():
            path = out / fname
            conv = td / (path.stem + ".gguf")
            ok, msg = convert(script, path, conv)
            e = {
                "container": container, "version": version, "ftype": ftype, "ftype_name": FTYPE_NAME[ftype],
                "tensor_types": {n: tt for n, tt, _, _ in tensors},
                "block_layout": ("today's ggml blocks" if (container, version) == ("ggjt", 3) or t not in BLOCK_OLD
                                 else ("ggjt v1 Q4_0 {f32 d; u8 qs[16]}, byte j = q[2j] | q[2j+1]<<4"
                                       if version == 1 else
                                       {"Q4_0": "ggjt v2 {f32 d; u8 qs[16]} (20 B)",
                                        "Q4_1": "ggjt v2 {f32 d; f32 m; u8 qs[16]} (24 B)",
                                        "Q8_0": "ggjt v2 {f32 d; i8 qs[32]} (36 B)"}[t])),
                "gguf_file": gguf_file_of(t),
                "size_bytes": path.stat().st_size,
                "sha256": sha(path),
                "converter_accepted": ok,
                "converter_message": msg,
            }
            if why is not None:
                e["bad"] = why
            if container == "ggjt" and version == 2 and t in v2_equal:
                e["dequantizes_equal_to_gguf"] = v2_equal[t]
            line = f"{fname:32s} conv {'ok ' if ok else 'REFUSED'}"
            if ok:
                want = source_tensors(t, f32)
                try:
                    cmp = compare_converted(conv, want)
                except Exception as ex:  # the truncated file: the converter writes a GGUF with a short tensor
                    cmp = {"byte_identical": False,
                           "mismatches": [f"gguf.GGUFReader cannot read the converted file: {type(ex).__name__}: {ex}"]}
                e["converted_tensors_byte_identical"] = cmp["byte_identical"]
                if cmp["mismatches"]:
                    e["converted_mismatches"] = cmp["mismatches"][:8] + (
                        [f"... {len(cmp['mismatches']) - 8} more"] if len(cmp["mismatches"]) > 8 else [])
                line += f"  tensors identical {cmp['byte_identical']}"
                if cmp["byte_identical"]:
                    llm = R.load(conv, N_CTX, f32_kv=True)
                    res = {}
                    for c in cases:
                        steps, first_lp, first_logits = Q._lc_greedy(llm, c["prompt_ids"])
                        res[c["name"]] = {"top": Q.top_entries(first_lp, first_logits, table),
                                          "ids": [s["id"] for s in steps]}
                    del llm
                    ref = (qref["llamacpp_f32"]["results"] if t == "F32" else qref["files"][t]["llamacpp"])
                    eq = {n: r["top"] == ref[n]["top"] and r["ids"] == ref[n]["ids"] for n, r in res.items()}
                    e["llamacpp"] = res
                    e["llamacpp_equal_to_gguf"] = all(eq.values())
                    e["llamacpp_reference"] = ("quant-types references.json llamacpp_f32.results" if t == "F32"
                                               else f"quant-types references.json files.{t}.llamacpp")
                    if not all(eq.values()):
                        e["llamacpp_unequal_cases"] = [n for n, v in eq.items() if not v]
                    line += f"  llama.cpp == GGUF's {all(eq.values())}"
                else:
                    e["llamacpp_load"] = llama_load_child(conv)
                    line += f"  llama.cpp: {e['llamacpp_load']}"
            else:
                line += f"  ({msg})"
            print(line)
            summary.append(line)
            doc["files"][fname] = e
    (out / "references.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"folder total {total} bytes")


if __name__ == "__main__":
    main()
