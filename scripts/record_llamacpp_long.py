#!/usr/bin/env python3
"""Record llama.cpp's greedy continuation of a long prompt (about 1,500 tokens,
three engine steps of 512) on SmolLM2-135M-Instruct Q4_1, the reference for
chunked prefill over the paged KV cache (tests/test_paged_kv.py).

Run with a Python that has llama-cpp-python 0.3.36 and numpy, after
scripts/fetch_models.py smollm2:

    python scripts/record_llamacpp_long.py

The prompt is tokenized by llama.cpp (BOS added), evaluated in one batch with
an F32 KV cache and no flash attention, then N=24 greedy steps are taken,
ignoring EOS. Per step: the id, its log-softmax logprob and the top-1/top-2
logit gap. The same run with llama.cpp's default F16 KV cache is recorded too,
to show where the continuation is a knife edge.

Writes tests/fixtures/smollm2/long_prompt_llamacpp.json.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
N_STEPS = 24
GGML_TYPE_F32 = 0


def prompt_text() -> str:
    # Numbered facts that never repeat verbatim, so the continuation depends on the whole prompt.
    animals = ["otter", "heron", "badger", "lynx", "falcon", "walrus", "ibis", "marten", "newt", "puffin"]
    places = ["river", "forest", "harbor", "meadow", "glacier", "canyon", "marsh", "island"]
    lines = [
        f"Fact {i}: the {animals[i % 10]} number {i} lives near the {places[(i * 3) % 8]} and eats {i % 7 + 2} fish a day."
        for i in range(1, 70)
    ]
    return "\n".join(lines) + "\nQuestion: how many fish does the otter number 41 eat a day?\nAnswer:"


def main():
    import llama_cpp

    gguf = ROOT / ".models" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    text = prompt_text()
    runs = {}
    for name, f32 in [("f32_kv", True), ("f16_kv", False)]:
        kw = dict(model_path=str(gguf), n_ctx=4096, n_batch=4096, n_ubatch=4096, n_threads=2, n_threads_batch=2,
                  verbose=False, flash_attn=False, seed=0)
        if f32:
            kw.update(type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)
        llm = llama_cpp.Llama(**kw)
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        llm.eval(ids)
        steps = []
        for _ in range(N_STEPS):
            ptr = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
            logits = np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),)).astype(np.float64)
            order = np.argsort(-logits, kind="stable")
            lp = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
            tid = int(order[0])
            steps.append({"id": tid, "logprob": float(f"{lp[tid]:.7g}"), "gap": float(f"{logits[order[0]] - logits[order[1]]:.7g}")})
            llm.eval([tid])
        runs[name] = {"prompt_ids": ids, "steps": steps,
                      "text": llm.detokenize([s["id"] for s in steps]).decode("utf-8", errors="replace")}
        del llm
    out = {"source": "llama-cpp-python 0.3.36, n_threads=2, prompt in one batch, no flash attention, greedy, EOS ignored",
           "prompt": text, **runs}
    dest = ROOT / "tests" / "fixtures" / "smollm2" / "long_prompt_llamacpp.json"
    dest.write_text(json.dumps(out, indent=1) + "\n")
    f32, f16 = runs["f32_kv"], runs["f16_kv"]
    print(f"{len(f32['prompt_ids'])} prompt tokens; f32: {f32['text']!r}; f16 agrees: "
          f"{[s['id'] for s in f16['steps']] == [s['id'] for s in f32['steps']]}; min gap {min(s['gap'] for s in f32['steps']):.3f}")


if __name__ == "__main__":
    main()
