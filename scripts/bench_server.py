#!/usr/bin/env python3
"""Throughput through the OpenAI-compatible server against the Python API called directly.

The same chat requests (each a different prompt, ``max_tokens`` generated
tokens with ``ignore_eos``, greedy) are sent by C concurrent clients, each
sending its next request when the previous one is answered, until R requests
are done (R = max(8, 2*C)):

  direct   in this process, ``await runner.send_chat_completion_request_async``
           from C asyncio tasks (no thread per request).
  server   ``python -m mistralrs serve`` in a subprocess on loopback, the same
           requests POSTed to /v1/chat/completions by C asyncio tasks over one
           ``httpx.AsyncClient`` (a raw HTTP client, so the table measures the
           server rather than a client library's parsing).

Both runners are loaded with the same options and stay loaded; they take turns,
so the idle one costs no CPU. Every repetition uses fresh prompts (no prefix
cache hits across repetitions) and runs both paths on the same prompts, the
order alternating. The table shows medians over the repetitions of requests/s
and generated tokens/s (wall clock from the first send to the last answer),
and the ratio server / direct. The client runs on the same CPUs as the server,
as it would on a workstation.

    python scripts/bench_server.py                          # SmolLM2-135M Q4_1, 1/8/32 clients, 3 reps
    python scripts/bench_server.py --clients 1,8,32,64 --reps 5 --max-tokens 64 --stream
    python scripts/bench_server.py --gguf path/to/model.gguf
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "tests"))

import httpx  # noqa: E402
from fetch_models import model_path  # noqa: E402
from mistralrs import ChatCompletionRequest, Runner, Which  # noqa: E402
from server_support import ServerProcess  # noqa: E402

TOPICS = ["the sea", "a city at night", "a mountain", "autumn", "a robot", "a library", "the moon", "a train",
          "a garden", "winter", "a river", "a market", "the desert", "a lighthouse", "a forest", "a storm"]

Send = Callable[[str], Awaitable[int]]  # a prompt -> the number of tokens generated


def prompts_for(rep: int, n: int) -> list[str]:
    return [f"Write a short poem about {TOPICS[i % len(TOPICS)]} (poem {rep}-{i})." for i in range(n)]


async def run_clients(send: Send, clients: int, prompts: list[str]) -> tuple[float, int]:
    """(wall seconds, generated tokens) of ``clients`` tasks working through ``prompts``."""
    todo = iter(prompts)
    tokens = 0

    async def client() -> None:
        nonlocal tokens
        for p in todo:  # a shared iterator: each prompt is taken once
            n = await send(p)  # not `tokens += await ...`, which would add to a value read before the await
            tokens += n

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - t0, tokens


def direct_sender(runner: Runner, max_tokens: int, stream: bool) -> Send:
    async def send(prompt: str) -> int:
        req = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                                    temperature=0.0, ignore_eos=True, stream=stream)
        res = await runner.send_chat_completion_request_async(req)
        if not stream:
            return int(res.usage.completion_tokens)
        n = 0
        async for chunk in res:
            if chunk.usage is not None:
                n = chunk.usage.completion_tokens
        return int(n)

    return send


def server_sender(http: httpx.AsyncClient, url: str, max_tokens: int, stream: bool) -> Send:
    async def send(prompt: str) -> int:
        body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                "temperature": 0, "ignore_eos": True}
        if not stream:
            r = await http.post(url, json=body)
            r.raise_for_status()
            return int(r.json()["usage"]["completion_tokens"])
        body.update(stream=True, stream_options={"include_usage": True})
        n = 0
        async with http.stream("POST", url, json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    usage = json.loads(line[6:]).get("usage")
                    if usage:
                        n = usage["completion_tokens"]
        return n

    return send


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", help="a GGUF file (default: SmolLM2-135M-Instruct Q4_1, fetched if missing)")
    ap.add_argument("--clients", default="1,8,32", help="concurrent client counts")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens generated per request")
    ap.add_argument("--max-seqs", type=int, default=32, help="Runner(max_seqs=...) of both paths")
    ap.add_argument("--stream", action="store_true", help="stream the responses (SSE through the server)")
    args = ap.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    gguf = pathlib.Path(args.gguf) if args.gguf else model_path("smollm2")

    runner = Runner(which=Which.GGUF(tok_model_id=None, quantized_model_id=str(gguf.parent),
                                     quantized_filename=gguf.name), max_seqs=args.max_seqs)
    server = ServerProcess(["--gguf", str(gguf), "--max-seqs", str(args.max_seqs), "--no-access-log"])
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}

    async def bench() -> None:
        limits = httpx.Limits(max_connections=max(levels), max_keepalive_connections=max(levels))
        async with httpx.AsyncClient(limits=limits, timeout=600) as http:
            senders = {
                "direct": direct_sender(runner, args.max_tokens, args.stream),
                "server": server_sender(http, f"{server.url}/v1/chat/completions", args.max_tokens, args.stream),
            }
            for send in senders.values():  # warm-up, not timed
                await run_clients(send, 2, ["Hello (warm-up)", "Hi (warm-up)"])
            for rep in range(args.reps):
                for clients in levels:
                    prompts = prompts_for(rep * 1000 + clients, max(8, 2 * clients))
                    order = ["direct", "server"] if rep % 2 == 0 else ["server", "direct"]
                    for name in order:
                        wall, tokens = await run_clients(senders[name], clients, prompts)
                        results.setdefault((name, clients), []).append((len(prompts) / wall, tokens / wall))
                        print(f"rep {rep + 1}/{args.reps}, {clients:3} clients, {name:6}: "
                              f"{len(prompts) / wall:7.2f} req/s {tokens / wall:8.1f} tok/s", file=sys.stderr)

    try:
        asyncio.run(bench())
    finally:
        server.stop()
        runner.close()

    mode = "streamed (SSE)" if args.stream else "whole responses"
    print(f"\n{gguf.name}, {args.max_tokens} tokens per request, {mode}, max_seqs={args.max_seqs}, "
          f"medians of {args.reps} reps; server / direct\n")
    print("| clients | requests | req/s direct | req/s server | ratio | tok/s direct | tok/s server | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for clients in levels:
        d = [statistics.median(x) for x in zip(*results[("direct", clients)])]
        s = [statistics.median(x) for x in zip(*results[("server", clients)])]
        print(f"| {clients} | {max(8, 2 * clients)} | {d[0]:.2f} | {s[0]:.2f} | {s[0] / d[0]:.2f}x "
              f"| {d[1]:.1f} | {s[1]:.1f} | {s[1] / d[1]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
