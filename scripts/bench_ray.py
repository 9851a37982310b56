#!/usr/bin/env python3
"""Requests/s and time to first token of mistralrs on Ray Serve: 1 replica against 2, and 2 with
Ray's default router against the prefix-affinity router, on a shared-prefix chat workload.

The workload (what an assistant product sends): ``--chats`` conversations share one system prompt of
about ``--system-tokens`` tokens; each opens with its own document of about ``--context-tokens``
tokens (the customer's order history, say) and a question, and goes on for ``--turns`` turns, each
turn resending the whole conversation so far. ``--concurrency`` clients each work through their share of
conversations one turn after another. Every request is streamed (greedy, ``--max-tokens`` tokens,
``ignore_eos``), so time to first token is the time to the first content chunk, by wall clock in the
client. Requests/s is all requests over the wall time of the whole workload. ``cached`` is the share
of prompt tokens that replicas served from their prefix caches (``usage.prompt_tokens_details``).

Each configuration runs on a fresh local Ray cluster (loopback, ``--cpus`` CPUs); each replica
reserves ``--replica-cpus`` and runs that many engine threads. The order of configurations rotates
between repetitions; the table shows medians.

    python scripts/bench_ray.py                       # SmolLM2-135M, 2 CPUs, 1 CPU per replica
    python scripts/bench_ray.py --model qwen2.5-coder-0.5b --reps 3
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import pathlib
import shlex
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

import openai  # noqa: E402
from fetch_models import model_path  # noqa: E402
from ray_support import LocalRayCluster  # noqa: E402
from server_support import ServerProcess  # noqa: E402

CONFIGS = {
    "1 replica": ["--replicas", "1"],
    "2 replicas, pow2": ["--replicas", "2", "--router", "pow2"],
    "2 replicas, prefix": ["--replicas", "2", "--router", "prefix"],
}

WORDS = ("the assistant answers politely and briefly, cites its sources, refuses unsafe requests, keeps "
         "answers under three sentences unless asked otherwise, and uses the metric system ").split()


def system_prompt(tokens: int) -> str:
    # About 1.3 tokens per word for this text.
    words = [WORDS[i % len(WORDS)] for i in range(int(tokens / 1.3))]
    return "You are a support assistant for a hardware shop. Rules: " + " ".join(words)


def document(i: int, tokens: int) -> str:
    """Conversation ``i``'s own context: an order history no other conversation shares."""
    lines = [f"order {i}-{k}: {3 + (i * 7 + k) % 9} units of part {(i * 131 + k * 17) % 9973}, shipped" for k in range(tokens // 16)]
    return "My order history:\n" + "\n".join(lines)


def one_request(c: openai.OpenAI, messages: list[dict], max_tokens: int) -> tuple[float, str, int, int]:
    """(time to first content, text, prompt tokens, cached tokens) of one streamed greedy request."""
    start = time.perf_counter()
    first = None
    text = []
    usage = None
    for chunk in c.chat.completions.create(model="m", messages=messages, max_tokens=max_tokens, temperature=0,
                                           stream=True, stream_options={"include_usage": True},
                                           extra_body={"ignore_eos": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter() - start
            text.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    return first or 0.0, "".join(text), usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens


def workload(url: str, args: argparse.Namespace) -> dict[str, float]:
    c = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    system = system_prompt(args.system_tokens)
    # The ingress learns of the replicas a moment after the application is ready: measure the
    # steady state, not a first second in which one replica takes every conversation.
    time.sleep(3)
    one_request(c, [{"role": "user", "content": "warm up"}], 2)

    def conversation(i: int) -> list[tuple[float, int, int]]:
        messages = [{"role": "system", "content": system}]
        out = []
        for turn in range(args.turns):
            question = f"Customer {i}, question {turn}: is part {i * 31 + turn} in stock, and how long is its warranty?"
            if turn == 0:
                question = document(i, args.context_tokens) + "\n\n" + question
            messages.append({"role": "user", "content": question})
            ttft, text, prompt, cached = one_request(c, messages, args.max_tokens)
            messages.append({"role": "assistant", "content": text})
            out.append((ttft, prompt, cached))
        return out

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        results = [r for conv in pool.map(conversation, range(args.chats)) for r in conv]
    wall = time.perf_counter() - start
    ttfts = sorted(r[0] for r in results)
    return {
        "rps": len(results) / wall,
        "ttft_p50": statistics.median(ttfts),
        "ttft_p90": ttfts[int(0.9 * (len(ttfts) - 1))],
        "cached": sum(r[2] for r in results) / sum(r[1] for r in results),
    }


def second_turns(url: str, n: int = 16) -> int:
    """``tests/test_ray_serve.py``'s check, as a figure: of ``n`` chats whose first turns were sent
    together, how many second turns found the first turn's whole blocks in their replica's cache."""
    c = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    firsts = [[{"role": "user", "content": f"Chat {i}: tell me a short fact about the number {i * 7 + 3}, "
                                           f"and then one about the colour number {i}."}] for i in range(n)]

    def ask(m: list[dict]) -> object:
        return c.chat.completions.create(model="m", messages=m, max_tokens=12, temperature=0)

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        r1 = list(pool.map(ask, firsts))
        r2 = list(pool.map(ask, [m + [{"role": "assistant", "content": r.choices[0].message.content},
                                      {"role": "user", "content": "And another one, please."}]
                                 for m, r in zip(firsts, r1)]))
    return sum(b.usage.prompt_tokens_details.cached_tokens >= (a.usage.prompt_tokens // 16 - 1) * 16
               for a, b in zip(r1, r2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--replica-cpus", type=int, default=1)
    ap.add_argument("--chats", type=int, default=24)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--system-tokens", type=int, default=600)
    ap.add_argument("--context-tokens", type=int, default=400)
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--serve-flags", default="", help='more flags for every server, e.g. "--prefix-cache-mb 256"')
    args = ap.parse_args()

    os.environ["RAY_AUTH_MODE"] = "disabled"  # a loopback cluster of the benchmark's own
    gguf = model_path(args.model)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
    names = list(CONFIGS)
    for rep in range(args.reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            cluster = LocalRayCluster(num_cpus=args.cpus)
            try:
                server_args = ["--ray", "--ray-address", cluster.address, "--gguf", str(gguf),
                               "--replica-cpus", str(args.replica_cpus), *CONFIGS[name], *shlex.split(args.serve_flags)]
                with ServerProcess(server_args, ready_timeout=300, port=cluster.serve_port) as server:
                    r = workload(server.url, args)
                    r["second_turns"] = second_turns(server.url)
            finally:
                cluster.close()
            runs[name].append(r)
            print(f"rep {rep} {name}: {r}", file=sys.stderr, flush=True)

    print(f"\n{args.model}: {args.chats} chats x {args.turns} turns, {args.concurrency} clients, "
          f"system prompt ~{args.system_tokens} tokens, own context ~{args.context_tokens} tokens, {args.max_tokens} tokens per answer, "
          f"{args.replica_cpus} CPU per replica {args.serve_flags}; medians of {args.reps}\n")
    print("| configuration | requests/s | TTFT p50 (s) | TTFT p90 (s) | prompt tokens from cache | second turns from cache |")
    print("|---|---|---|---|---|---|")
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print(f"| {name} | {med['rps']:.2f} | {med['ttft_p50']:.3f} | {med['ttft_p90']:.3f} | {med['cached']:.0%} "
              f"| {med['second_turns']:.0f}/16 |")


if __name__ == "__main__":
    main()
