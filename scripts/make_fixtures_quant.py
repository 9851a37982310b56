#!/usr/bin/env python3
"""Build tests/fixtures/quant-types/: one GGUF file per ggml weight type, made by llama.cpp's own quantizer.

Run with a Python that has torch, transformers, tokenizers, gguf, safetensors, numpy and llama-cpp-python
(the reference environment: /work/refenv/bin/python):

    python scripts/make_fixtures_quant.py                 # search the seed, write everything
    python scripts/make_fixtures_quant.py --seed 4000     # reuse a known seed (no search)

CI never runs this script; the tests only read what it writes.  Everything is deterministic (fixed seed,
single-threaded torch, llama.cpp's quantizer on one thread, its inference on two).

The model: a random, *well-conditioned* LlamaForCausalLM -- hidden 256 (so K-quant super-blocks of 256 fit
every row), intermediate 512, 2 layers, 4 heads of 64, 2 KV heads, rope_theta 1e4 (plain rope), untied
output head, vocabulary = scripts/make_fixtures.py's 384-token byte-level BPE tokenizer and prompt cases.
Its linear weights are drawn with half the std of the chaotic tiny models (gain 0.5 / sqrt(fan_in)) and the
head with gain 3 / sqrt(256) (see /work/shared/REFERENCES.md, "Lessons from measuring"), and the seed is
the first one (from --seed-start) where every case's first greedy step has a top-1/top-2 logit gap above
MIN_FIRST_GAP in f32.

Per type (F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K):
  * the f32 model is written as an F32 GGUF (make_fixtures.write_gguf: llama.cpp tensor names, Q/K rows
    permuted as llama.cpp's converter does; a temporary file, not committed) and quantized with
    `llama_cpp.llama_model_quantize(f32, out, params)`, params.ftype = LLAMA_FTYPE_MOSTLY_<type>,
    params.pure = True: every 2-D tensor (token_embd, attn_q/k/v/output, ffn_gate/up/down, output) has that
    one type, the norms stay F32 -- checked with the gguf reader;
  * `dequant_ref`: transformers (f32, CPU) on the file's weights dequantized with the gguf package (Q/K
    un-permuted, make_fixtures.model_from_gguf_dequant): first-step top-8 and 16 greedy ids per case;
  * `llamacpp`: llama-cpp-python on the same file, the protocol of scripts/record_llamacpp.py: n_threads 2,
    the whole prompt evaluated in ONE batch (n_batch = n_ubatch = n_ctx), F32 KV cache, no flash attention,
    prompt ids fed as tokens, greedy argmax of llama_get_logits_ith(ctx, -1), EOS ignored, 16 steps;
  * `llamacpp_dev`: max over cases of max |llama.cpp logprob - dequant_ref logprob| over dequant_ref's
    top-5 ids of the first step (llama.cpp's own error on these weights: it quantizes activations to
    Q8_0/Q8_1/Q8_K inside its matmuls).  Also `llamacpp_dev_vs_f32_ref` and `dequant_dev_vs_f32_ref`.
Q8_K: llama.cpp has no LLAMA_FTYPE for it, and asking its quantizer for Q8_K tensors (token_embedding_type /
output_tensor_type / tensor-type overrides) aborts in ggml_quantize_chunk; the script tries it in a child
process and records the outcome under `not_written`.

Also: `f32_ref` (transformers on model.safetensors: first-step top-8 and 16 greedy steps per case) and
`llamacpp_f32` (llama.cpp on the F32 GGUF, which must match f32_ref within F32_TOL on the first step's
top-5).  The folder is also a plain transformers model (config.json, generation_config.json,
model.safetensors, tokenizer.json, tokenizer_config.json) for the in-situ-quantization tests.
See tests/fixtures/quant-types/README.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GGML_NO_BACKTRACE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as M  # noqa: E402  (sets torch to 1 thread, deterministic)
import record_llamacpp as R  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

OUT = M.FIX / "quant-types"
N_STEPS = M.N_STEPS  # 16
TOP_K = M.TOP_K  # 8
MIN_FIRST_GAP = 0.05  # required f32 top-1/top-2 logit gap on every case's first step
F32_TOL = 1e-3  # llama.cpp on the F32 GGUF vs f32_ref, first-step top-5 logprobs
N_CTX = 256
GAIN, EMBED_STD, HEAD_GAIN = 0.5, 1.0, 3.0

# ggml type name -> llama_ftype constant name (llama_cpp.LLAMA_FTYPE_*)
TYPES = [
    ("F16", "LLAMA_FTYPE_MOSTLY_F16"),
    ("BF16", "LLAMA_FTYPE_MOSTLY_BF16"),
    ("Q4_0", "LLAMA_FTYPE_MOSTLY_Q4_0"),
    ("Q4_1", "LLAMA_FTYPE_MOSTLY_Q4_1"),
    ("Q5_0", "LLAMA_FTYPE_MOSTLY_Q5_0"),
    ("Q5_1", "LLAMA_FTYPE_MOSTLY_Q5_1"),
    ("Q8_0", "LLAMA_FTYPE_MOSTLY_Q8_0"),
    ("Q2_K", "LLAMA_FTYPE_MOSTLY_Q2_K"),
    ("Q3_K", "LLAMA_FTYPE_MOSTLY_Q3_K_M"),  # with pure=True every 2-D tensor is Q3_K whatever the S/M/L suffix
    ("Q4_K", "LLAMA_FTYPE_MOSTLY_Q4_K_M"),
    ("Q5_K", "LLAMA_FTYPE_MOSTLY_Q5_K_M"),
    ("Q6_K", "LLAMA_FTYPE_MOSTLY_Q6_K"),
]
# the types the gguf package can encode too: llama.cpp's (imatrix-free) reference quantizer must give the same bytes
GGUF_PKG_ENCODES = {"F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"}


def fname_of(t: str) -> str:
    return f"model-{t.lower()}.gguf"


def quant_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=M.VOCAB_SIZE, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-5, hidden_act="silu",
        bos_token_id=0, eos_token_id=1, attention_bias=False, mlp_bias=False,
        max_position_embeddings=N_CTX, rope_theta=10000.0, tie_word_embeddings=False,
    )


# --------------------------------------------------------------------------- transformers
def first_step(model, ids):
    """(f32 logits, float64 log-softmax) of the last position."""
    return M.logprobs_of(model, ids)


def top_entries(lp: np.ndarray, logits: np.ndarray, table, k=TOP_K):
    order = np.argsort(-logits, kind="stable")[:k]
    return [{"id": int(j), "bytes": table[int(j)], "logprob": float(lp[j])} for j in order]


def first_gaps(model, cases):
    out = []
    for c in cases:
        logits, _ = first_step(model, c["prompt_ids"])
        o = np.argsort(-logits, kind="stable")
        out.append(float(logits[o[0]] - logits[o[1]]))
    return out


def pick_seed(cfg, cases, start: int):
    for seed in range(start, start + 500):
        model = M.random_model(cfg, seed, GAIN, EMBED_STD, HEAD_GAIN)
        gaps = first_gaps(model, cases)
        print(f"  seed {seed}: first-step gaps {np.round(gaps, 3).tolist()}")
        if min(gaps) > MIN_FIRST_GAP:
            return seed, model
    raise SystemExit("no seed found")


def transformers_results(model, cases, hf_tok, table):
    """Per case: full greedy (make_fixtures.greedy) and the first step's full log-softmax."""
    res = {}
    for c in cases:
        steps, min_gap, first_lp = M.greedy(model, c["prompt_ids"], table, N_STEPS)
        ids = [s["id"] for s in steps]
        res[c["name"]] = {"steps": steps, "ids": ids, "text": hf_tok.decode(ids, skip_special_tokens=True),
                          "first_lp": first_lp, "min_gap": min_gap}
    return res


# --------------------------------------------------------------------------- llama.cpp
def llamacpp_results(path: Path, cases, table, hf_tok, f16_kv_too=True):
    """llama.cpp greedy on `path` with scripts/record_llamacpp.py's settings (one prompt batch, F32 KV)."""
    llm = R.load(path, N_CTX, f32_kv=True)
    llm16 = R.load(path, N_CTX, f32_kv=False) if f16_kv_too else None
    res = {}
    for c in cases:
        steps, first_lp, first_logits = _lc_greedy(llm, c["prompt_ids"])
        ids = [s["id"] for s in steps]
        r = {"ids": ids, "text": hf_tok.decode(ids, skip_special_tokens=True), "steps": steps,
             "first_lp": first_lp, "top": top_entries(first_lp, first_logits, table)}
        if llm16 is not None:
            s16, _, _ = _lc_greedy(llm16, c["prompt_ids"])
            r["ids_f16_kv_cache"] = [s["id"] for s in s16]
        res[c["name"]] = r
    del llm, llm16
    return res


def _lc_greedy(llm, prompt_ids):
    llm.reset()
    llm.eval(list(prompt_ids))  # n_batch = n_ctx: one batch
    steps, first_lp, first_logits = [], None, None
    for s in range(N_STEPS):
        logits = R.last_logits(llm)
        lp = R.log_softmax64(logits)
        order = np.argsort(-logits, kind="stable")
        tid = int(order[0])
        if s == 0:
            first_lp, first_logits = lp, logits
        steps.append({"id": tid, "logprob": float(lp[tid]), "gap": float(logits[order[0]] - logits[order[1]])})
        llm.eval([tid])
    return steps, first_lp, first_logits


def quantize(src: Path, dst: Path, ftype_name: str):
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype_name)
    params.nthread = 1
    params.pure = True
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    assert rc == 0, (ftype_name, rc)


Q8K_CHILD = r"""
import ctypes, sys, llama_cpp
src, dst = sys.argv[1], sys.argv[2]
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
p.nthread = 1
p.pure = True
ov = (llama_cpp.llama_model_tensor_override * 2)()
ov[0].pattern = b".*"
ov[0].type = llama_cpp.GGML_TYPE_Q8_K
ov[1].pattern = None
p.tt_overrides = ctypes.cast(ov, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
p.token_embedding_type = llama_cpp.GGML_TYPE_Q8_K
p.output_tensor_type = llama_cpp.GGML_TYPE_Q8_K
print("rc", llama_cpp.llama_model_quantize(src.encode(), dst.encode(), p), flush=True)
"""


def try_q8k(src: Path, td: Path) -> str:
    """Ask llama.cpp's quantizer for Q8_K weights in a child process (it aborts); return what happened."""
    dst = td / "q8k.gguf"
    p = subprocess.run([sys.executable, "-c", Q8K_CHILD, str(src), str(dst)], capture_output=True, text=True,
                       env={**os.environ, "GGML_NO_BACKTRACE": "1"}, timeout=300)
    asserts = [ln.strip() for ln in (p.stdout + p.stderr).splitlines() if "GGML_ASSERT" in ln or ln.startswith("rc ")]
    if p.returncode == 0 and dst.exists():
        return f"written?! types {sorted(set(M.gguf_tensor_types(dst).values()))}"
    msg = asserts[-1] if asserts else (p.stderr.strip().splitlines() or ["?"])[-1]
    if "GGML_ASSERT" in msg:  # drop the build machine's path
        msg = msg[msg.index("ggml/src/"):] if "ggml/src/" in msg else msg
    return (f"llama_model_quantize with every tensor overridden to GGML_TYPE_Q8_K (tt_overrides '.*', "
            f"token_embedding_type, output_tensor_type) exits with status {p.returncode}: {msg}; "
            "there is no LLAMA_FTYPE for Q8_K (it is only the activation type of K-quant dot products)")


# --------------------------------------------------------------------------- comparisons
def dev_top5(lp: np.ndarray, ref_lp: np.ndarray) -> float:
    top5 = np.argsort(-ref_lp, kind="stable")[:5]
    return float(np.max(np.abs(lp[top5] - ref_lp[top5])))


def common_prefix(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def ref_entry(r):
    """dequant_ref / f32 first step: top-8 of the float64 log-softmax, ordered by logit."""
    s0 = r["steps"][0]
    return {"top": s0["top"], "gap": M.rnd(s0["gap"]), "ids": r["ids"], "text": r["text"]}


def at_ids(lp: np.ndarray, ids: list[int], table) -> list[dict]:
    """First-step logprobs at given ids (so that any two of f32_ref / dequant_ref / llamacpp compare on the
    other's top ids even where those fall outside its own top-8)."""
    return [{"id": i, "bytes": table[i], "logprob": float(lp[i])} for i in ids]


def check_types(types: dict[str, str], want: str):
    """Every weight matrix of type `want`, every norm F32."""
    bad = {}
    for name, t in types.items():
        two_d = name.endswith(".weight") and not name.endswith("norm.weight")
        exp = want if two_d else "F32"
        if t != exp:
            bad[name] = t
    assert not bad, f"{want}: unexpected tensor types {bad}"


def compare_with_gguf_package(path: Path, f32_tensors: dict[str, np.ndarray], tname: str) -> bool:
    """llama.cpp's bytes == gguf.quants.quantize (a port of ggml's reference quantizer) on the same f32 tensor."""
    import gguf

    qt = gguf.GGMLQuantizationType[tname]
    r = gguf.GGUFReader(str(path))
    for ti in r.tensors:
        if ti.tensor_type != qt:
            continue
        mine = gguf.quants.quantize(f32_tensors[ti.name], qt)
        if mine.tobytes() != np.asarray(ti.data).tobytes():
            print(f"    {tname} {ti.name}: differs from gguf.quants.quantize")
            return False
    return True


# --------------------------------------------------------------------------- main
def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=None, help="use this seed (no search)")
    ap.add_argument("--seed-start", type=int, default=4000)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--only", nargs="*", default=None, help="only these types (testing; writes a partial folder)")
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    import gguf
    import llama_cpp
    import transformers

    raw_tok = M.build_tokenizer()
    M.write_tokenizer_files(raw_tok, out)
    hf_tok = M.hf_tokenizer(out)
    table = M.token_bytes_table(raw_tok)
    cases = M.prompt_cases(raw_tok, hf_tok)

    cfg = quant_config()
    if args.seed is None:
        seed, model = pick_seed(cfg, cases, args.seed_start)
    else:
        seed, model = args.seed, M.random_model(cfg, args.seed, GAIN, EMBED_STD, HEAD_GAIN)
    M.save_plain(model, out, legacy_config=False)
    ref = M.load_plain(out)
    for (k1, v1), (k2, v2) in zip(sorted(model.state_dict().items()), sorted(ref.state_dict().items())):
        assert k1 == k2 and torch.equal(v1, v2), k1
    f32 = transformers_results(ref, cases, hf_tok, table)
    gaps = {n: r["steps"][0]["gap"] for n, r in f32.items()}
    assert min(gaps.values()) > MIN_FIRST_GAP, gaps
    print(f"seed {seed}: f32 first-step gaps {({k: round(v, 3) for k, v in gaps.items()})}, "
          f"min 16-step gap {min(r['min_gap'] for r in f32.values()):.4f}")

    doc = {
        "schema": 1,
        "n_steps": N_STEPS,
        "top_k": TOP_K,
        "model": {"arch": "llama", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
                  "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": M.VOCAB_SIZE,
                  "tie_word_embeddings": False, "seed": seed, "linear_gain": GAIN, "embed_std": EMBED_STD,
                  "head_gain": HEAD_GAIN, "min_first_step_gap_required": MIN_FIRST_GAP},
        "versions": {"transformers": transformers.__version__, "torch": torch.__version__,
                     "gguf": _version("gguf"), "llama_cpp_python": llama_cpp.__version__,
                     "tokenizers": _version("tokenizers")},
        "vocab_bytes": table,
        "special_tokens": {s: i for i, s in enumerate(M.SPECIALS)},
        "bos_id": 0, "eos_id": 1,
        "cases": [M.case_entry(c) for c in cases],
        "f32_ref": {
            "source": "transformers LlamaForCausalLM (f32, CPU) on model.safetensors; top = first step's top-8 "
                      "(float64 log_softmax of the f32 logits), ids = 16 greedy ids (EOS ignored)",
            "results": [{"name": c["name"], **ref_entry(f32[c["name"]]),
                         "steps": M.serialize_steps(f32[c["name"]]["steps"])} for c in cases],
        },
        "llamacpp_settings": "llama-cpp-python %s: n_threads=2, whole prompt in one batch (n_batch=n_ubatch="
                             "n_ctx=%d), F32 KV cache (type_k=type_v=F32), no flash attention; prompt ids fed as "
                             "tokens; greedy argmax of llama_get_logits_ith(ctx,-1), EOS ignored; logprobs = "
                             "float64 log_softmax of its f32 logits; ids_f16_kv_cache: the same with the default "
                             "F16 KV cache" % (llama_cpp.__version__, N_CTX),
        "quantizer": "llama_cpp.llama_model_quantize(F32 GGUF, file, params) with params.ftype = the type's "
                     "LLAMA_FTYPE_MOSTLY_*, params.pure = True, params.nthread = 1, no imatrix",
        "files": {},
        "not_written": {},
    }

    with tempfile.TemporaryDirectory() as tdn:
        td = Path(tdn)
        f32_gguf = td / "model-f32.gguf"
        M.write_gguf(ref, raw_tok, f32_gguf, "F32", "quant-types")
        f32_tensors = dict(M.gguf_tensors(ref))
        # the F32 GGUF must be the safetensors model
        m_f32 = M.model_from_gguf_dequant(f32_gguf, ref.config)
        r_f32 = transformers_results(m_f32, cases, hf_tok, table)
        d = max(dev_top5(r_f32[n]["first_lp"], f32[n]["first_lp"]) for n in f32)
        assert d < 1e-4 and all(r_f32[n]["ids"] == f32[n]["ids"] for n in f32), d
        # llama.cpp on the F32 GGUF
        lc32 = llamacpp_results(f32_gguf, cases, table, hf_tok)
        d32 = {n: dev_top5(lc32[n]["first_lp"], f32[n]["first_lp"]) for n in f32}
        same32 = {n: common_prefix(lc32[n]["ids"], f32[n]["ids"]) for n in f32}
        print(f"llama.cpp F32 GGUF vs f32_ref: first-step top5 max diff {max(d32.values()):.2e}; "
              f"greedy agreeing prefix {same32}")
        assert max(d32.values()) < F32_TOL, d32
        doc["llamacpp_f32"] = {
            "file": "F32 GGUF written by make_fixtures.write_gguf (not committed; regenerated by this script)",
            "max_abs_diff_vs_f32_ref_first_step_top5": M.rnd(max(d32.values())),
            "tolerance": F32_TOL,
            "results": {n: {"top": r["top"], "ids": r["ids"], "steps_equal_to_f32_ref": same32[n],
                            "ids_f16_kv_cache": r["ids_f16_kv_cache"]} for n, r in lc32.items()},
        }

        for tname, ftype in TYPES:
            if args.only and tname not in args.only:
                continue
            fname = fname_of(tname)
            path = out / fname
            if path.exists():
                path.unlink()
            quantize(f32_gguf, path, ftype)
            types = M.gguf_tensor_types(path)
            check_types(types, tname)
            same_bytes = compare_with_gguf_package(path, f32_tensors, tname) if tname in GGUF_PKG_ENCODES else None
            deq = transformers_results(M.model_from_gguf_dequant(path, ref.config), cases, hf_tok, table)
            lc = llamacpp_results(path, cases, table, hf_tok)
            per_case = {n: dev_top5(lc[n]["first_lp"], deq[n]["first_lp"]) for n in deq}
            lc_vs_f32 = {n: dev_top5(lc[n]["first_lp"], f32[n]["first_lp"]) for n in deq}
            deq_vs_f32 = {n: dev_top5(deq[n]["first_lp"], f32[n]["first_lp"]) for n in deq}
            at = {}  # per case: the union of the three first-step top-8 id sets
            for n in deq:
                at[n] = sorted({t["id"] for t in f32[n]["steps"][0]["top"]} | {t["id"] for t in deq[n]["steps"][0]["top"]}
                               | {t["id"] for t in lc[n]["top"]})
            entry = {
                "file": fname,
                "ftype": ftype,
                "size_bytes": path.stat().st_size,
                "sha256": sha(path),
                "tensor_types": types,
                "llamacpp_bytes_equal_gguf_package_quantize": same_bytes,
                "dequant_ref": {n: {**ref_entry(deq[n]), "at_ids": at_ids(deq[n]["first_lp"], at[n], table)}
                                for n in deq},
                "f32_ref_at_ids": {n: at_ids(f32[n]["first_lp"], at[n], table) for n in deq},
                "llamacpp": {n: {"top": lc[n]["top"], "ids": lc[n]["ids"], "text": lc[n]["text"],
                                 "gaps": [M.rnd(s["gap"]) for s in lc[n]["steps"]],
                                 "at_ids": at_ids(lc[n]["first_lp"], at[n], table),
                                 "ids_f16_kv_cache": lc[n]["ids_f16_kv_cache"],
                                 "steps_equal_to_dequant_ref": common_prefix(lc[n]["ids"], deq[n]["ids"]),
                                 "first_step_top5_max_abs_diff_vs_dequant_ref": M.rnd(per_case[n])}
                             for n in lc},
                "llamacpp_dev": M.rnd(max(per_case.values())),
                "llamacpp_dev_vs_f32_ref": M.rnd(max(lc_vs_f32.values())),
                "dequant_dev_vs_f32_ref": M.rnd(max(deq_vs_f32.values())),
            }
            doc["files"][tname] = entry
            top1_lc = sum(lc[n]["ids"][0] == deq[n]["ids"][0] for n in deq)
            top1_f32 = sum(deq[n]["ids"][0] == f32[n]["ids"][0] for n in deq)
            print(f"{tname:5s} {fname:18s} {entry['size_bytes']:>8} B  llamacpp_dev {entry['llamacpp_dev']:.4f}  "
                  f"(vs f32 {entry['llamacpp_dev_vs_f32_ref']:.4f}; dequant vs f32 {entry['dequant_dev_vs_f32_ref']:.4f})"
                  f"  first token lc=deq {top1_lc}/{len(cases)}, deq=f32 {top1_f32}/{len(cases)}; "
                  f"min deq first gap {min(r['steps'][0]['gap'] for r in deq.values()):.3f}; "
                  f"lc=deq steps {[entry['llamacpp'][n]['steps_equal_to_dequant_ref'] for n in deq]}"
                  + ("" if same_bytes is None else f"; bytes == gguf pkg: {same_bytes}"))

        if not args.only:
            doc["not_written"]["Q8_K"] = try_q8k(f32_gguf, td)
            print("Q8_K:", doc["not_written"]["Q8_K"])

    (out / "references.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    total = 0
    for p in sorted(out.iterdir()):
        if p.is_file():
            total += p.stat().st_size
            print(f"  {p.relative_to(M.ROOT) if p.is_relative_to(M.ROOT) else p}  {p.stat().st_size:>9}  {sha(p)[:16]}")
    print(f"total {total} bytes")


def _version(pkg: str) -> str:
    import importlib.metadata as md

    return md.version(pkg)


if __name__ == "__main__":
    main()
