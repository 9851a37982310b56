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


ARCH_FOLDERS = ["qwen2-tiny", "mistral-tiny", "gemma-tiny", "phi3-tiny", "phi2-tiny", "mixtral-tiny"]


def record_archs():
    """The same recording for tests/fixtures/<arch>-tiny (scripts/make_fixtures_archs.py), every GGUF file named
    in its references.json.  A file llama.cpp refuses to load is recorded as {"refused": reason}."""
    import llama_cpp
    from tokenizers import Tokenizer

    for model in ARCH_FOLDERS:
        d = FIX / model
        if not (d / "references.json").exists():
            print(f"{model}: no references.json, skipped")
            continue
        ref = json.loads((d / "references.json").read_text())
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        out = {"schema": 1, "n_steps": N_STEPS,
               "source": "llama-cpp-python %s (llama.cpp), n_threads=2, F32 KV cache, no flash attention; "
                         "prompt ids fed as tokens, greedy argmax of llama_get_logits_ith(ctx,-1), EOS ignored"
                         % llama_cpp.__version__,
               "files": {}}
        for fname, gref in ref["gguf"].items():
            path = d / fname
            try:
                llm = load(path, 256, f32_kv=True)
                llm16 = load(path, 256, f32_kv=False)
            except Exception as e:  # llama.cpp refused the file
                out["files"][fname] = {"refused": repr(e)}
                print(f"== {model}/{fname}: llama.cpp refused it: {e!r}")
                continue
            results, max_diff_top5 = [], 0.0
            for case, rres in zip(ref["cases"], gref["results"]):
                assert case["name"] == rres["name"]
                pids = case["prompt_ids"]
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
                same = 0
                while same < N_STEPS and ids[same] == rres["ids"][same]:
                    same += 1
                results.append({
                    "name": case["name"], "ids": ids, "text": tok.decode(ids, skip_special_tokens=True),
                    "text_llamacpp_detokenize": llm.detokenize(ids).decode("utf-8", errors="replace"),
                    "steps": steps, "first_step_logprobs": [rnd(v) for v in first.tolist()],
                    "tokenize_matches_reference": lt == pids, "ids_f16_kv_cache": ids16,
                    "f16_kv_cache_agrees": ids16 == ids, "steps_equal_to_transformers_reference": same,
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


# --------------------------------------------------------------------------- Qwen2.5-Coder-0.5B-Instruct (real model)
QWEN_N_STEPS = 32
QWEN_TOP_K = 5
QWEN_PROMPTS = [
    {"name": "reverse_string", "messages": [{"role": "user", "content":
        "Write a Python function `reverse_string(s)` that returns s reversed. Reply with only the code."}]},
    {"name": "sum_list", "messages": [{"role": "user", "content":
        "Write a Python function `sum_list(xs)` that returns the sum of the numbers in the list xs. "
        "Reply with only the code."}]},
    {"name": "capital", "messages": [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "What is the capital of France, and which river flows through it?"}]},
]


def gguf_token_bytes(path: Path) -> tuple[list[bytes], list[int], dict]:
    """Raw bytes of every token of a GGUF `gpt2` (byte-level BPE) vocabulary, the token types and the
    metadata the recording needs.  Normal tokens (type 1) map their characters back through GPT-2's
    bytes_to_unicode table; control / user-defined / unused tokens are their UTF-8 text."""
    import gguf

    from make_fixtures import UNICODE_TO_BYTE

    r = gguf.GGUFReader(str(path))
    f = r.fields["tokenizer.ggml.tokens"]
    texts = [bytes(f.parts[i]).decode("utf-8") for i in f.data]
    tt = r.fields["tokenizer.ggml.token_type"]
    types = [int(tt.parts[i][0]) for i in tt.data]
    out = []
    for t, ty in zip(texts, types):
        if ty == 1 and all(c in UNICODE_TO_BYTE for c in t):
            out.append(bytes(UNICODE_TO_BYTE[c] for c in t))
        else:
            out.append(t.encode("utf-8"))
    meta = {k: r.fields[k].contents() for k in ("tokenizer.ggml.model", "tokenizer.chat_template",
                                               "tokenizer.ggml.eos_token_id", "general.architecture")}
    return out, types, meta


def render_chat(template: str, messages: list[dict]) -> str:
    """transformers' own chat-template renderer (what apply_chat_template uses), add_generation_prompt=True;
    the Qwen template uses neither bos_token nor eos_token."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(conversations=[messages], chat_template=template,
                                        add_generation_prompt=True, bos_token="", eos_token="<|im_end|>")
    return rendered[0]


def record_qwen25_coder():
    """llama.cpp greedy (32 steps, EOS ignored) on the real Qwen2.5-Coder-0.5B-Instruct GGUF, chat prompts
    rendered with the GGUF's chat template and tokenized by llama.cpp (special tokens parsed, no BOS)."""
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from fetch_models import MODELS, model_path

    import llama_cpp

    path = model_path("qwen2.5-coder-0.5b")
    vb, types, meta = gguf_token_bytes(path)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["general.architecture"] == "qwen2"
    eos = int(meta["tokenizer.ggml.eos_token_id"])
    n_ctx = 512
    llm = load(path, n_ctx, f32_kv=True)
    llm16 = load(path, n_ctx, f32_kv=False)
    assert llm.n_vocab() == len(vb)
    results = []
    for case in QWEN_PROMPTS:
        rendered = render_chat(meta["tokenizer.chat_template"], case["messages"])
        ids = llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)
        assert b"".join(vb[i] for i in ids) == rendered.encode("utf-8"), case["name"]
        steps, _ = greedy(llm, ids, QWEN_N_STEPS)
        steps16, _ = greedy(llm16, ids, QWEN_N_STEPS)
        gen = [s["id"] for s in steps]
        gen16 = [s["id"] for s in steps16]
        agree16 = 0
        while agree16 < QWEN_N_STEPS and gen16[agree16] == gen[agree16]:
            agree16 += 1
        for s in steps:
            s["bytes"] = list(vb[s["id"]])
            for t in s["top"]:
                t["bytes"] = list(vb[t["id"]])
        # text up to (not including) the first EOS, as a chat response would carry it
        upto = gen.index(eos) if eos in gen else len(gen)
        text = b"".join(vb[i] for i in gen[:upto] if types[i] == 1).decode("utf-8", errors="replace")
        results.append({"name": case["name"], "messages": case["messages"], "rendered": rendered,
                        "prompt_ids": ids, "ids": gen, "text": text, "steps": steps,
                        "ids_f16_kv_cache": gen16, "f16_kv_cache_agreeing_prefix": agree16})
        print(f"qwen2.5-coder {case['name']}: {len(ids)} prompt tokens; min gap "
              f"{min(s['gap'] for s in steps):.4f}; F16-KV agrees for {agree16}/{QWEN_N_STEPS} steps\n  {text!r}")
    m = MODELS["qwen2.5-coder-0.5b"]
    out = {"schema": 1, "n_steps": QWEN_N_STEPS,
           "source": "llama-cpp-python %s (llama.cpp), n_threads=2, F32 KV cache, no flash attention; prompt "
                     "rendered with the GGUF's tokenizer.chat_template (transformers' renderer, "
                     "add_generation_prompt=True), tokenized by llama.cpp (special tokens parsed, no BOS), "
                     "greedy argmax of llama_get_logits_ith(ctx,-1), EOS ignored" % llama_cpp.__version__,
           "model": m.name, "file": m.filename, "sha256": m.sha256, "eos_id": eos,
           "results": results}
    d = FIX / "qwen2.5-coder"
    d.mkdir(parents=True, exist_ok=True)
    (d / "references_llamacpp.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


SMOLLM2_QUESTIONS = [
    "Which city is the capital of France?",
    "What is the capital of Germany?",
    "What is the capital of France?",
    "Name three primary colors.",
]


def record_smollm2():
    """SmolLM2-135M-Instruct Q4_1: llama.cpp's greedy chat answers (its own chat-template rendering of the GGUF's
    template, F32 and default F16 KV cache), 64 tokens or EOS.

    Along each F32 answer, the token that llama.cpp itself picks next at every position under four evaluations
    of the same token sequence: F32 or F16 KV cache, token by token (as generation runs) or the whole sequence in
    one batch. Where these disagree the position is a knife edge: a last-bit difference in a float sum flips
    some 8-bit activation rounding and the near-tie goes either way; another engine may take any of them."""
    import llama_cpp
    from fetch_models import model_path

    path = model_path("smollm2")
    vb, _, meta = gguf_token_bytes(path)
    eos = int(meta["tokenizer.ggml.eos_token_id"])
    results = []
    for f32_kv in (True, False):
        kw = {"type_k": 0, "type_v": 0} if f32_kv else {}
        llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False, **kw)
        for q in SMOLLM2_QUESTIONS:
            out = llm.create_chat_completion(messages=[{"role": "user", "content": q}], max_tokens=64, temperature=0.0)
            c = out["choices"][0]
            results.append({"question": q, "f32_kv_cache": f32_kv, "text": c["message"]["content"],
                            "finish_reason": c["finish_reason"], "completion_tokens": out["usage"]["completion_tokens"]})
        del llm

    def picks(f32_kv: bool, prompt: list[int], answer: list[int]) -> tuple[list[int], list[int]]:
        """Next-token argmax after each answer prefix: token by token, and from one batch of the whole sequence."""
        llm = load(path, 512, f32_kv)
        llm.reset()
        llm.eval(prompt)
        inc = []
        for t in answer + [None]:
            inc.append(int(np.argmax(last_logits(llm))))
            if t is not None:
                llm.eval([t])
        batch_llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_batch=512, n_threads=2, verbose=False,
                                    logits_all=True, flash_attn=False, **({"type_k": 0, "type_v": 0} if f32_kv else {}))
        batch_llm.eval(prompt + answer)
        batch = [int(np.argmax(batch_llm.scores[len(prompt) - 1 + k])) for k in range(len(answer) + 1)]
        return inc, batch

    f32_answers = [r for r in results if r["f32_kv_cache"]]
    for r in f32_answers:
        rendered = render_chat(meta["tokenizer.chat_template"], [{"role": "user", "content": r["question"]}])
        llm = load(path, 512, f32_kv=True)
        prompt = llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)
        steps, _ = greedy(llm, prompt, r["completion_tokens"])
        answer = [s["id"] for s in steps if s["id"] != eos]
        # The prompt is the one create_chat_completion used: its greedy run gives the recorded answer.
        assert b"".join(vb[i] for i in answer).decode("utf-8") == r["text"], r["question"]
        runs = [*picks(True, prompt, answer), *picks(False, prompt, answer)]
        n = len(answer) + (1 if r["finish_reason"] == "stop" else 0)
        r["tokens"] = [{"bytes": list(vb[i])} for i in answer]
        # Per position: every token llama.cpp's four evaluations pick there (null: end of the answer, EOS).
        r["picked_by_llamacpp"] = [sorted({None if run[k] == eos else tuple(vb[run[k]]) for run in runs},
                                          key=lambda b: (b is not None, b or ())) for k in range(n)]
        r["picked_by_llamacpp"] = [[None if b is None else list(b) for b in ks] for ks in r["picked_by_llamacpp"]]
        edges = [k for k, ks in enumerate(r["picked_by_llamacpp"]) if len(ks) > 1]
        print(f"smollm2 {r['question']!r}: {len(answer)} tokens, knife edges at {edges}")
    out = {"source": f"llama-cpp-python {llama_cpp.__version__}", "file": path.name, "results": results}
    d = FIX / "smollm2"
    d.mkdir(parents=True, exist_ok=True)
    (d / "references_llamacpp.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("targets", nargs="*", default=["llama"],
                    help="llama (the llama-tiny* fixtures, default), archs (the <arch>-tiny fixtures), "
                         "qwen2.5-coder (the real Qwen2.5-Coder-0.5B-Instruct GGUF, fetched if missing), "
                         "smollm2 (the real SmolLM2-135M-Instruct GGUF)")
    args = ap.parse_args()
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    for t in args.targets:
        if t == "llama":
            main()
        elif t == "archs":
            record_archs()
        elif t == "qwen2.5-coder":
            record_qwen25_coder()
        elif t == "smollm2":
            record_smollm2()
        else:
            ap.error(f"unknown target {t}")
