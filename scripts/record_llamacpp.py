#!/usr/bin/env python3
"""Record llama.cpp's (llama-cpp-python 0.3.36) greedy outputs on the fixture GGUF files.

Run after scripts/make_fixtures.py, with a Python that has llama-cpp-python, numpy
and tokenizers:

    python scripts/record_llamacpp.py

For every GGUF file named in tests/fixtures/<model>/references.json and every
prompt case there, the prompt ids (already recorded, BOS included) are fed to
llama.cpp as tokens, then N=16 greedy steps are taken, ignoring EOS.  Per step:
the chosen id, its natural-log softmax logprob (float64 log_softmax of llama.cpp's
float32 logits), the top-1/top-2 logit gap and the top-5 alternatives.  The first
step's full log-softmax is kept too, and compared with the transformers
(dequantized-GGUF) reference to measure how far llama.cpp itself is from it.

Settings: n_threads=2, one batch for the prompt, KV cache in F32 (type_k/type_v =
F32, so the cache adds no rounding of its own), no flash attention.  The default
F16 KV cache is also run and whether its greedy ids agree is recorded.

Writes tests/fixtures/<model>/references_llamacpp.json.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
MODELS = ["llama-tiny", "llama-tiny-256"]
N_STEPS = 16
TOP_K = 5
GGML_TYPE_F32 = 0


def rnd(x: float) -> float:
    return float(f"{x:.7g}")


def load(path: Path, n_ctx: int, f32_kv: bool):
    import llama_cpp

    kw = dict(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=2,
              n_threads_batch=2, logits_all=False, verbose=False, flash_attn=False, seed=0)
    if f32_kv:
        kw.update(type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
    return llama_cpp.Llama(**kw)


def last_logits(llm) -> np.ndarray:
    import llama_cpp

    n_vocab = llm.n_vocab()
    ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float32).copy()


def log_softmax64(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def greedy(llm, prompt_ids, n_steps=N_STEPS):
    llm.reset()
    llm.eval(list(prompt_ids))
    steps, first = [], None
    for s in range(n_steps):
        logits = last_logits(llm)
        lp = log_softmax64(logits)
        order = np.argsort(-logits, kind="stable")
        tid = int(order[0])
        if s == 0:
            first = lp
        steps.append({"id": tid, "logprob": rnd(lp[tid]), "gap": rnd(float(logits[order[0]] - logits[order[1]])),
                      "top": [{"id": int(j), "logprob": rnd(lp[j])} for j in order[:TOP_K]]})
        llm.eval([tid])
    return steps, first


def main():
    from tokenizers import Tokenizer

    for model in MODELS:
        d = FIX / model
        ref = json.loads((d / "references.json").read_text())
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        out = {"schema": 1, "n_steps": N_STEPS,
               "source": "llama-cpp-python 0.3.36 (llama.cpp), n_threads=2, F32 KV cache, no flash attention; "
                         "prompt ids fed as tokens, greedy argmax of llama_get_logits_ith(ctx,-1), EOS ignored",
               "files": {}}
        for fname, gref in ref["gguf"].items():
            path = d / fname
            cfg_ctx = {"llama-tiny": 256, "llama-tiny-256": 512}[model]
            llm = load(path, cfg_ctx, f32_kv=True)
            llm16 = load(path, cfg_ctx, f32_kv=False)
            results, max_diff_top5, max_diff_ref_top1 = [], 0.0, 0.0
            for case, rres in zip(ref["cases"], gref["results"]):
                assert case["name"] == rres["name"]
                pids = case["prompt_ids"]
                # llama.cpp's own tokenizer on the GGUF vocabulary must agree with tokenizer.json
                if case["kind"] == "completion":
                    lt = llm.tokenize(case["prompt"].encode("utf-8"), add_bos=True, special=False)
                else:
                    lt = llm.tokenize(case["rendered"].encode("utf-8"), add_bos=False, special=True)
                steps, first = greedy(llm, pids)
                steps16, _ = greedy(llm16, pids)
                ids = [s["id"] for s in steps]
                ids16 = [s["id"] for s in steps16]
                ref_first = np.asarray(rres["first_step_logprobs"], dtype=np.float64)
                top5 = np.argsort(-ref_first, kind="stable")[:5]
                diff = float(np.max(np.abs(first[top5] - ref_first[top5])))
                max_diff_top5 = max(max_diff_top5, diff)
                max_diff_ref_top1 = max(max_diff_ref_top1, float(abs(first[top5[0]] - ref_first[top5[0]])))
                same = 0
                while same < N_STEPS and ids[same] == rres["ids"][same]:
                    same += 1
                results.append({
                    "name": case["name"],
                    "ids": ids,
                    "text": tok.decode(ids, skip_special_tokens=True),
                    "text_llamacpp_detokenize": llm.detokenize(ids).decode("utf-8", errors="replace"),
                    "steps": steps,
                    "first_step_logprobs": [rnd(v) for v in first.tolist()],
                    "tokenize_matches_reference": lt == pids,
                    "ids_f16_kv_cache": ids16,
                    "f16_kv_cache_agrees": ids16 == ids,
                    "steps_equal_to_transformers_reference": same,
                    "first_step_top5_max_abs_diff_vs_transformers": rnd(diff),
                })
                print(f"{model}/{fname} {case['name']}: tok ok={lt == pids} first-step top5 diff={diff:.4f} "
                      f"agree w/ transformers for {same} steps, min gap={min(s['gap'] for s in steps):.4f}, "
                      f"f16-kv agrees={ids16 == ids}")
            out["files"][fname] = {
                "results": results,
                "first_step_top5_max_abs_diff_vs_transformers": rnd(max_diff_top5),
                "min_greedy_gap": min(s["gap"] for r in results for s in r["steps"]),
            }
            print(f"== {model}/{fname}: max first-step top5 |llama.cpp - transformers| = {max_diff_top5:.4f}")
            del llm, llm16
        (d / "references_llamacpp.json").write_text(json.dumps(out, separators=(",", ":")) + "\n")
    record_spm()


def record_spm():
    """llama.cpp's tokenizer and greedy ids on the SentencePiece-vocabulary (GGUF `llama`) file."""
    import sentencepiece  # noqa: F401  (only to decode the generated ids the way transformers' Llama tokenizer does)

    d = FIX / "llama-tiny-spm"
    ref = json.loads((d / "references.json").read_text())
    fname = ref["gguf_file"]
    llm = load(d / fname, 256, f32_kv=True)
    vb = ref["vocab_bytes"]
    results = []
    for case in ref["cases"]:
        lt = llm.tokenize(case["prompt"].encode("utf-8"), add_bos=True, special=False)
        steps, _ = greedy(llm, case["prompt_ids"])
        ids = [s["id"] for s in steps]
        results.append({"prompt": case["prompt"], "llamacpp_tokenize": lt,
                        "tokenize_matches_reference": lt == case["prompt_ids"], "ids": ids,
                        "generated_bytes": b"".join(bytes(vb[i]) for i in ids).hex(),
                        "min_gap": min(s["gap"] for s in steps), "steps": steps})
        print(f"llama-tiny-spm {case['prompt']!r}: llama.cpp tokenize matches sentencepiece: "
              f"{lt == case['prompt_ids']}; min gap {results[-1]['min_gap']:.4f}")
    out = {"schema": 1, "source": "llama-cpp-python 0.3.36, F32 KV cache, greedy 16 steps ignoring EOS",
           "files": {fname: {"results": results}}}
    (d / "references_llamacpp.json").write_text(json.dumps(out, separators=(",", ":"), ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
