#!/usr/bin/env python3
"""What a grammar costs per generated token: the same chat requests with and without a JSON Schema
(and with a regex), interleaved, wall clock around the Python call, medians.

    .venv/bin/python scripts/bench_grammar.py                  # Qwen2.5-Coder-0.5B
    .venv/bin/python scripts/bench_grammar.py --model smollm2 --reps 5

Both runs generate exactly --tokens tokens (ignore_eos, and the grammar's language is long enough),
so tokens/s compare like for like; the difference is the mask computed each step.
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

# Long enough a language that `tokens` tokens never complete it: an array of records.
SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["name", "age", "tags"],
        "additionalProperties": False,
    },
}
REGEX = r"([A-Z][a-z]+ ){1000}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    p = model_path(args.model)
    runner = Runner(which=Which.GGUF(tok_model_id=None, quantized_model_id=str(p.parent), quantized_filename=p.name))
    msgs = [{"role": "user", "content": "List some people as JSON records with name, age and tags."}]
    cases = {"none": {}, "json_schema": {"grammar": SCHEMA, "grammar_type": "json_schema"},
             "regex": {"grammar": REGEX, "grammar_type": "regex"}}
    rates: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.reps):
        for name, kw in cases.items():
            req = ChatCompletionRequest(model="m", messages=msgs, max_tokens=args.tokens, temperature=0.0,
                                        ignore_eos=True, **kw)
            t = time.perf_counter()
            res = runner.send_chat_completion_request(req)
            rates[name].append(res.usage.completion_tokens / (time.perf_counter() - t))
    base = statistics.median(rates["none"])
    print(f"{args.model}, {args.tokens} tokens, greedy, median of {args.reps}")
    for name, r in rates.items():
        m = statistics.median(r)
        print(f"{name:12} {m:7.1f} tok/s  {m / base:5.2f}x  ({1000 / m - 1000 / base:+.2f} ms per token)")


if __name__ == "__main__":
    main()
