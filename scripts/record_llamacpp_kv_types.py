#!/usr/bin/env python3
"""Record llama.cpp's own first-step logprob error with an F16 or Q8_0 KV cache instead of F32.

    python scripts/fetch_models.py smollm2 gemma3-270m     # once; honours MISTRALRS_MODELS_DIR
    python scripts/record_llamacpp_kv_types.py            # all targets: tiny fixtures + real models
    python scripts/record_llamacpp_kv_types.py tiny       # only tests/fixtures/{llama,gemma3,qwen2}-tiny
    python scripts/record_llamacpp_kv_types.py smollm2 gemma3-270m

Needs a Python with llama-cpp-python (0.3.36 was used; see /work/shared/REFERENCES.md for building it on a CPU
with AMX) and numpy.

Purpose: tests of our engine's F16 / Q8_0 KV caches bound their error relative to llama.cpp's own error with the
same cache type on the same file ("within 1.5x of llama.cpp's error").  This script measures that error.

For every (file, prompt) below the file is run under five configurations (`RUNS`): KV cache type (type_k =
type_v) and flash attention,

  f32       F32 cache, no flash attention: the baseline (nothing in attention is rounded below f32; the setting of
            every other llama.cpp recording here),
  f32_fa    F32 cache, flash_attn=True,
  f16       F16 cache, flash_attn=True,
  f16_nofa  F16 cache, no flash attention,
  q8_0      Q8_0 cache, flash_attn=True (llama.cpp needs flash attention for a quantized V cache),

n_threads=2, n_batch = n_ubatch = the prompt length (the prompt is one batch).  The prompt ids are fed as tokens
(`Llama.eval`), the last position's logits (`llama_get_logits_ith(ctx, -1)`) go through a float64 log_softmax,
then 24 greedy steps follow (argmax, EOS ignored).

Why not flash attention for all three cache types, so that only the type differs: with flash attention llama.cpp
casts an F32 K/V cache to F16 before ggml_flash_attn_ext (llama-graph.cpp build_attn_mha, "this can happen when
KV cache is not used"), so f32_fa gives exactly the f16 logits and measures no F16 error at all.  The F32 baseline
is therefore the no-flash-attention run; f32_fa is recorded to show that.

  f32 run         top-20 ids and their logprobs after the prompt, the 24 greedy ids and each step's
                  top-1 - top-2 logit gap.
  other runs      the logprobs of those same 20 ids, max_abs_err_top20 = max |lp_run - lp_f32| over them
                  (and max_abs_err_top20_vs_f32_fa against the f32_fa run), the 24 greedy ids, whether they equal
                  f32's and the first differing step (0-based, null if none).  A configuration llama.cpp refuses
                  (Q8_0 K/V with a head dim that is not a multiple of Q8_0's 32-value block:
                  llama_init_from_model returns NULL) is recorded as {"refused": reason}.

Files and prompts:
  tests/fixtures/llama-tiny/tiny-f32.gguf, tiny-q8_0.gguf, tests/fixtures/qwen2-tiny/*.gguf and
  tests/fixtures/gemma3-tiny/*.gguf (sliding window 8 on 6 of its 7 layers): every case of the folder's
  references.json, with its recorded `prompt_ids`.
  SmolLM2-135M-Instruct Q4_1 (fetch_models.py smollm2) and Gemma 3 270M Q4_K_M (gemma3-270m): two chat-like
  prompts written in the model's own chat format and tokenized by llama.cpp (`llm.tokenize(..., add_bos=True,
  special=True)`: BOS where the GGUF asks for it), a short one (~30 tokens) and a long one (>= 1,500 tokens, built
  deterministically below; it crosses Gemma 3 270M's 512-token sliding window).

Writes tests/fixtures/<folder>/kv_types_llamacpp.json for llama-tiny, qwen2-tiny, gemma3-tiny, smollm2 and
gemma3-270m.

What llama.cpp's CPU attention does with each type (llama.cpp 0c1e570 vendored by 0.3.36, ggml-cpu ops.cpp),
which is all part of "its own error": flash attention with F16 K and V and at least 64 query rows (the long
prompts) takes the tiled path (K/V converted to f32, Q stays f32); otherwise (the tiny-fixture prompts, the short
real-model prompts, every Q8_0 run and the single-token greedy steps) the one-row path, where Q is converted to
K's vec_dot type before Q.K (F16 K: Q rounded to f16; Q8_0 K: Q quantized to Q8_0, V dequantized to f32) and, for
F16 V, the V-weighted sum is accumulated in f16.  Without flash attention an F16 cache goes through ggml_mul_mat,
which rounds Q (for K.Q) and the softmax weights (for V.softmax) to f16.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT / "scripts"))
from record_llamacpp import last_logits, log_softmax64  # noqa: E402

N_STEPS = 24
TOP_K = 20
N_THREADS = 2
GGML_F32, GGML_F16, GGML_Q8_0 = 0, 1, 8  # ggml_type ids
RUNS = {  # name: (type_k = type_v, flash_attn)
    "f32": (GGML_F32, False),
    "f32_fa": (GGML_F32, True),
    "f16": (GGML_F16, True),
    "f16_nofa": (GGML_F16, False),
    "q8_0": (GGML_Q8_0, True),
}
BASELINE = "f32"
Q8_0_BLOCK = 32
EXTRA_CFLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"

TINY = {
    "llama-tiny": ["tiny-f32.gguf", "tiny-q8_0.gguf"],
    "qwen2-tiny": ["qwen2-tiny-f32.gguf", "qwen2-tiny-q8_0.gguf"],
    "gemma3-tiny": ["gemma3-tiny-f32.gguf", "gemma3-tiny-q8_0.gguf"],
}
TINY_N_CTX = 256
REAL = ["smollm2", "gemma3-270m"]
REAL_N_CTX = 2048
LONG_TARGET_TOKENS = 1500


def r9(x: float) -> float:
    return float(f"{x:.9g}")


# --------------------------------------------------------------------------- prompts for the real models
SYSTEM_SHORT = "You are a helpful assistant."
USER_SHORT = "What is the capital of France, and which river flows through it?"
SYSTEM_LONG = "You are a careful assistant who summarises long notes faithfully."

_SUBJ = ["the old lighthouse keeper", "a young botanist", "the village baker", "our neighbour's dog",
         "the river ferry captain", "a travelling musician", "the night-train conductor", "the school librarian",
         "a pair of grey herons", "the market clockmaker", "the mountain guide", "a retired sailor",
         "the orchard owner"]
_VERB = ["noticed", "repaired", "painted", "counted", "followed", "described", "forgot about", "carried",
         "measured", "photographed", "visited"]
_OBJ = ["the broken garden gate", "seven copper coins", "a map of the northern coast", "the first snow of the season",
        "an unfinished letter", "the blue fishing boat", "a basket of late apples", "the tower's cracked bell",
        "a recipe for barley soup"]
_WHEN = ["before dawn", "after the storm had passed", "on a quiet Sunday", "during the long harvest",
         "beside the harbour wall", "at the edge of the pine forest", "while the kettle boiled"]
_CODA = ["", " Nobody was surprised.", " It took longer than anyone expected.",
         " Later, everyone agreed it had been worth the trouble.", " The weather stayed mild all day.",
         " A few children watched and asked questions."]


def diary_sentence(i: int) -> str:
    """Sentence i of a deterministic, varied diary (no randomness: only index arithmetic)."""
    s = _SUBJ[i % len(_SUBJ)]
    return (f"On day {i + 1}, {s} {_VERB[(3 * i) % len(_VERB)]} {_OBJ[(5 * i + i // 9) % len(_OBJ)]} "
            f"{_WHEN[(2 * i + i // 13) % len(_WHEN)]}.{_CODA[(i * 7) % len(_CODA)]}")


def diary(n: int) -> str:
    sents = [diary_sentence(i) for i in range(n)]
    return "\n\n".join(" ".join(sents[k:k + 6]) for k in range(0, n, 6))


def user_long(n: int) -> str:
    return (f"Here are my notes from the village diary:\n\n{diary(n)}\n\n"
            "Summarise the notes in three sentences, mentioning the people who appear most often.")


def chat(model: str, system: str, user: str) -> str:
    if model == "smollm2":  # ChatML, as SmolLM2-Instruct's chat template renders it
        return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                "<|im_start|>assistant\n")
    if model == "gemma3-270m":  # Gemma 3 turn format (system text folded into the first user turn)
        return f"<start_of_turn>user\n{system}\n\n{user}<end_of_turn>\n<start_of_turn>model\n"
    raise ValueError(model)


def real_prompts(llm, model: str) -> list[dict]:
    def tok(text: str) -> list[int]:
        return llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    short = chat(model, SYSTEM_SHORT, USER_SHORT)
    n = 8
    while len(tok(chat(model, SYSTEM_LONG, user_long(n)))) < LONG_TARGET_TOKENS:
        n += 8
    while n > 1 and len(tok(chat(model, SYSTEM_LONG, user_long(n - 1)))) >= LONG_TARGET_TOKENS:
        n -= 1
    long = chat(model, SYSTEM_LONG, user_long(n))
    return [{"name": "short_chat", "prompt_text": short, "prompt_ids": tok(short)},
            {"name": "long_chat", "diary_sentences": n, "prompt_text": long, "prompt_ids": tok(long)}]


# --------------------------------------------------------------------------- llama.cpp
def load(path: Path, n_ctx: int, n_batch: int, type_id: int, flash_attn: bool):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                           n_threads=N_THREADS, n_threads_batch=N_THREADS, logits_all=False, verbose=False,
                           flash_attn=flash_attn, type_k=type_id, type_v=type_id, seed=0)


def head_dims(llm) -> tuple[int, int]:
    """(K head dim, V head dim) from the GGUF metadata, as llama.cpp reads them."""
    md = llm.metadata
    arch = md["general.architecture"]

    def get(key):
        v = md.get(f"{arch}.{key}")
        return None if v is None else int(v)

    default = get("embedding_length") // get("attention.head_count")
    return get("attention.key_length") or default, get("attention.value_length") or default


def run(llm, prompt_ids: list[int]) -> tuple[np.ndarray, list[int], list[float]]:
    """First-step float64 log_softmax after the prompt (one batch), then N_STEPS greedy ids and logit gaps."""
    llm.reset()
    llm.eval(list(prompt_ids))
    first, ids, gaps = None, [], []
    for s in range(N_STEPS):
        logits = last_logits(llm)
        if s == 0:
            first = log_softmax64(logits)
        order = np.argsort(-logits, kind="stable")
        ids.append(int(order[0]))
        gaps.append(float(logits[order[0]] - logits[order[1]]))
        if s + 1 < N_STEPS:
            llm.eval([ids[-1]])
    return first, ids, gaps


def record_file(path: Path, n_ctx: int, cases: list[dict], label: str) -> dict:
    """cases: [{"name", "prompt_ids", ...}]; every other key of a case is copied to its result."""
    probe = load(path, n_ctx, 8, GGML_F32, False)
    dk, dv = head_dims(probe)
    del probe
    out = {"head_dim_k": dk, "head_dim_v": dv, "results": [dict(c) for c in cases]}
    firsts: dict[str, list] = {}
    for tname, (tid, fa) in RUNS.items():
        runs = []
        for c in cases:
            pids = c["prompt_ids"]
            try:
                llm = load(path, n_ctx, len(pids), tid, fa)
            except Exception as e:  # llama.cpp refused the context
                why = repr(e)
                if tid == GGML_Q8_0 and (dk % Q8_0_BLOCK or dv % Q8_0_BLOCK):
                    why = (f"llama.cpp refuses a Q8_0 KV cache with flash attention when the head dim "
                           f"(K {dk}, V {dv}) is not a multiple of the Q8_0 block ({Q8_0_BLOCK}): "
                           f"llama_init_from_model returns NULL ({why})")
                runs = why
                print(f"{label} {tname}: refused: {why}")
                break
            runs.append(run(llm, pids))
            del llm
        firsts[tname] = runs
    f32, f32fa = firsts[BASELINE], firsts["f32_fa"]
    assert not isinstance(f32, str) and not isinstance(f32fa, str), f"{label}: llama.cpp refused an F32 KV cache"
    errs = {t: 0.0 for t in RUNS if t != BASELINE}
    for k, res in enumerate(out["results"]):
        lp32, ids32, gaps32 = f32[k]
        top = [int(j) for j in np.argsort(-lp32, kind="stable")[:TOP_K]]
        res[BASELINE] = {"top_ids": top, "top_logprobs": [r9(lp32[j]) for j in top], "greedy_ids": ids32,
                         "greedy_gaps": [r9(g) for g in gaps32], "min_greedy_gap": r9(min(gaps32))}
        line = f"{label} {res['name']} ({len(res['prompt_ids'])} tok):"
        for t in errs:
            if isinstance(firsts[t], str):
                res[t] = {"refused": firsts[t]}
                errs[t] = None
                line += f" {t} refused;"
                continue
            lp, ids, _ = firsts[t][k]
            err = float(np.max(np.abs(lp[top] - lp32[top])))
            err_fa = float(np.max(np.abs(lp[top] - f32fa[k][0][top])))
            diff = next((s for s in range(N_STEPS) if ids[s] != ids32[s]), None)
            res[t] = {"top_logprobs": [r9(lp[j]) for j in top], "max_abs_err_top20": r9(err),
                      "max_abs_err_top20_vs_f32_fa": r9(err_fa), "greedy_ids": ids,
                      "greedy_equal_f32": diff is None, "first_diff_step": diff}
            errs[t] = max(errs[t], err)
            line += f" {t} err={err:.3g}" + ("" if diff is None else f" greedy differs at step {diff} "
                                                                    f"(f32 gap {gaps32[diff]:.3g})") + ";"
        print(line, flush=True)
    out["max_abs_err_top20"] = {t: (None if e is None else r9(e)) for t, e in errs.items()}
    return out


def cpu_simd() -> str:
    """The SIMD features of this CPU that ggml's native build can use (they change llama.cpp's rounding)."""
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    keep = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
            "amx_tile", "amx_int8", "amx_bf16")
    return " ".join(f for f in keep if f in flags)


def source_note() -> str:
    import llama_cpp

    return (f"llama-cpp-python {llama_cpp.__version__} (llama.cpp), CPU build CMAKE_ARGS=-DGGML_NATIVE=ON "
            f"CFLAGS/CXXFLAGS='{EXTRA_CFLAGS}' on {platform.machine()} ({cpu_simd()}); runs: "
            + ", ".join(f"{n} = type_k=type_v={t} flash_attn={fa}" for n, (t, fa) in RUNS.items())
            + f" (ggml types F32=0 F16=1 Q8_0=8; baseline {BASELINE}: with flash_attn llama.cpp casts an F32 cache "
            f"to F16, so f32_fa == f16); n_threads={N_THREADS}, n_batch=n_ubatch=prompt length "
            f"(one batch); prompt ids fed as tokens with Llama.eval, logits of llama_get_logits_ith(ctx,-1), "
            f"float64 log_softmax; greedy {N_STEPS} steps, EOS ignored; scripts/record_llamacpp_kv_types.py")


def write(folder: str, files: dict, extra: dict | None = None):
    doc = {"schema": 1, "source": source_note(), "n_steps": N_STEPS, "top_k": TOP_K, "baseline": BASELINE,
           "runs": {n: {"type_k": t, "type_v": t, "flash_attn": fa} for n, (t, fa) in RUNS.items()},
           **(extra or {}), "files": files}
    d = FIX / folder
    d.mkdir(parents=True, exist_ok=True)
    (d / "kv_types_llamacpp.json").write_text(json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n")
    print(f"wrote {d / 'kv_types_llamacpp.json'}")


def record_tiny():
    for folder, fnames in TINY.items():
        d = FIX / folder
        ref = json.loads((d / "references.json").read_text())
        cases = [{"name": c["name"], "prompt_ids": list(c["prompt_ids"])} for c in ref["cases"]]
        files = {}
        for fname in fnames:
            files[fname] = record_file(d / fname, TINY_N_CTX, cases, f"{folder}/{fname}")
        write(folder, files)


def record_real(model: str):
    import llama_cpp  # noqa: F401
    from fetch_models import MODELS, model_path

    path = model_path(model)
    m = MODELS[model]
    tok_llm = load(path, REAL_N_CTX, 512, GGML_F32, False)
    cases = real_prompts(tok_llm, model)
    del tok_llm
    assert max(len(c["prompt_ids"]) for c in cases) + N_STEPS <= REAL_N_CTX
    files = {m.filename: record_file(path, REAL_N_CTX, cases, model)}
    write(model, files, {"model": m.description, "sha256": m.sha256,
                         "tokenize": "llm.tokenize(prompt_text.encode(), add_bos=True, special=True)"})


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("targets", nargs="*", default=["tiny", *REAL],
                    help="tiny (llama-tiny, qwen2-tiny, gemma3-tiny), smollm2, gemma3-270m (default: all)")
    args = ap.parse_args()
    for t in args.targets:
        if t == "tiny":
            record_tiny()
        elif t in REAL:
            record_real(t)
        else:
            ap.error(f"unknown target {t}")
