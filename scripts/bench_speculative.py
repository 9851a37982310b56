#!/usr/bin/env python3
"""Speculative decoding on real models: a target alone against the same target with a draft model,
on the same greedy chat requests, interleaved, by wall clock around the Python call.

    .venv/bin/python scripts/bench_speculative.py                       # Qwen2.5-Coder 0.5B drafting for 1.5B
    .venv/bin/python scripts/bench_speculative.py --gammas 2,4,8 --reps 3

Prints, per prompt and gamma, the median generated tokens/s of both, the ratio, the acceptance rate,
and whether the texts are identical (they must be: greedy speculative output is the target's).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fetch_models import model_path  # noqa: E402

from mistralrs import ChatCompletionRequest, Runner, Which  # noqa: E402

PROMPTS = {
    "code": "Write a Python function that checks whether a number is prime, with a docstring.",
    "prose": "Explain what a hash map is and when to use one, in a short paragraph.",
}


def which(name: str) -> Which:
    p = model_path(name)
    return Which.GGUF(tok_model_id=None, quantized_model_id=str(p.parent), quantized_filename=p.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", default="qwen2.5-coder-1.5b")
    ap.add_argument("--draft", default="qwen2.5-coder-0.5b")
    ap.add_argument("--gammas", default="2,4,8")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    target = Runner(which=which(args.target))
    spec = {g: Runner(which=which(args.target), which_draft=which(args.draft), speculative_gamma=g)
            for g in (int(x) for x in args.gammas.split(","))}
    print(f"target {args.target}, draft {args.draft}, {args.max_tokens} tokens, greedy, median of {args.reps}")
    print(f"{'prompt':8} {'gamma':>5} {'alone tok/s':>12} {'spec tok/s':>11} {'ratio':>6} {'accepted':>9} same")
    for name, prompt in PROMPTS.items():
        req = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": prompt}],
                                    max_tokens=args.max_tokens, temperature=0.0)
        for g, runner in spec.items():
            alone, fast, same, rate = [], [], True, 0.0
            for _ in range(args.reps):
                for r, out in ((target, alone), (runner, fast)):
                    t = time.perf_counter()
                    res = r.send_chat_completion_request(req)
                    out.append((res.usage.completion_tokens / (time.perf_counter() - t), res))
            a, f = statistics.median(x[0] for x in alone), statistics.median(x[0] for x in fast)
            same = all(x[1].choices[0].message.content == alone[0][1].choices[0].message.content for x in fast)
            rate = fast[0][1].usage.acceptance_rate or 0.0
            print(f"{name:8} {g:>5} {a:>12.1f} {f:>11.1f} {f / a:>5.2f}x {rate:>9.2f} {same}")


if __name__ == "__main__":
    main()
