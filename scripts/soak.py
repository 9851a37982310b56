#!/usr/bin/env python3
"""Soak test of the OpenAI-compatible server: many requests of mixed kinds at once, under a KV budget that forces
preemption, then checks that every answer had the right status and shape, that greedy answers under load equal the
same requests sent alone, that nothing is left held, and that the server's RSS stayed flat.

    .venv/bin/python scripts/soak.py                          # SmolLM2 (fetch_models.py smollm2), 1000 requests
    .venv/bin/python scripts/soak.py --requests 200 --concurrency 8 --json soak.json

Request kinds (drawn with a seeded RNG, weights in KINDS):
  chat          greedy chat completion, one of PROMPTS, max_tokens 8 / 16 / 32: 200, one choice, text, usage
  stream        the same, streamed: every chunk a chat.completion.chunk, one finish_reason, then [DONE]
  stream_drop   a streamed chat whose client closes the connection after two chunks
  disconnect    a chat whose client gives up after 50 ms, before any answer
  n_choices     n=3 at temperature 0.8 with a seed: 3 choices, indices 0..2
  json_mode     response_format json_object: the text parses as JSON where finish_reason is "stop"
  bad_body      a body that is not JSON: 400 with OpenAI's error shape
  bad_field     temperature -1: 400 with OpenAI's error shape, param "temperature"
  wrong_key     a wrong API key: 401 with OpenAI's error shape
  over_context  a prompt longer than the context: 400 with OpenAI's error shape

Afterwards: every distinct greedy request (prompt, max_tokens) is sent again alone and must give the same text as
every answer it got under load (streamed ones reassembled); /metrics must show no running or waiting sequence and
no KV block in use; the server's RSS (sampled from /proc while the load runs) over the last quarter of the run
may not exceed its mean over the third quarter by more than --rss-slack-mib.

Exit status 0 when every check holds; the report (also --json) gives requests/s, preemptions, cancellations and RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent

PROMPTS = [
    "Name three primary colors.",
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Count from one to five.",
    "Give me a short tip for learning to cook.",
    "What does a compiler do?",
    "Describe a cat in five words.",
    "Why is the sky blue?",
    "Say hello in Spanish.",
    "What is two plus two?",
    "Suggest a name for a small boat.",
    "What is a prime number?",
]
MAX_TOKENS = [8, 16, 32]
KINDS = {
    "chat": 30,
    "stream": 20,
    "stream_drop": 8,
    "disconnect": 6,
    "n_choices": 8,
    "json_mode": 8,
    "bad_body": 5,
    "bad_field": 5,
    "wrong_key": 5,
    "over_context": 5,
}
API_KEY = "soak-key"


@dataclass
class Report:
    requests: int = 0
    seconds: float = 0.0
    by_kind: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    greedy: dict[str, set[str]] = field(default_factory=dict)
    greedy_checked: int = 0
    greedy_mismatches: list[str] = field(default_factory=list)
    rss_mib: list[tuple[int, float]] = field(default_factory=list)
    metrics_after: dict[str, float] = field(default_factory=dict)

    def fail(self, kind: str, what: str) -> None:
        self.failures.append(f"{kind}: {what}")

    def summary(self) -> dict:
        done = [r for _, r in self.rss_mib]
        n = len(done)
        third, last = done[n // 2 : 3 * n // 4], done[3 * n // 4 :]
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 1),
            "requests_per_s": round(self.requests / self.seconds, 2) if self.seconds else None,
            "by_kind": self.by_kind,
            "failures": self.failures,
            "greedy_checked": self.greedy_checked,
            "greedy_mismatches": self.greedy_mismatches,
            "preemptions": self.metrics_after.get("mistralrs_preemptions_total", self.metrics_after.get("mistralrs_preemptions")),
            "requests_cancelled": self.metrics_after.get(
                "mistralrs_requests_cancelled_total", self.metrics_after.get("mistralrs_requests_cancelled")
            ),
            "seqs_running": self.metrics_after.get("mistralrs_seqs_running"),
            "seqs_waiting": self.metrics_after.get("mistralrs_seqs_waiting"),
            "kv_blocks_used": self.metrics_after.get("mistralrs_kv_blocks_used"),
            "rss_mib_first": round(done[0], 1) if done else None,
            "rss_mib_max": round(max(done), 1) if done else None,
            "rss_mib_third_quarter_mean": round(statistics.mean(third), 1) if third else None,
            "rss_mib_last_quarter_max": round(max(last), 1) if last else None,
        }


def _error_shape(r: httpx.Response) -> bool:
    try:
        e = r.json()["error"]
    except Exception:
        return False
    return isinstance(e, dict) and {"message", "type", "param", "code"} <= set(e) and bool(e["message"])


def _chat_body(prompt: str, max_tokens: int, **extra) -> dict:
    return {"model": "soak", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.0, **extra}


def _check_completion(rep: Report, kind: str, r: httpx.Response, n: int = 1) -> dict | None:
    if r.status_code != 200:
        rep.fail(kind, f"status {r.status_code}: {r.text[:200]}")
        return None
    body = r.json()
    choices = body.get("choices", [])
    ok = (
        body.get("object") == "chat.completion"
        and [c.get("index") for c in choices] == list(range(n))
        and all(isinstance(c.get("message", {}).get("content"), str) for c in choices)
        and all(c.get("finish_reason") in ("stop", "length") for c in choices)
        and {"prompt_tokens", "completion_tokens", "total_tokens"} <= set(body.get("usage", {}))
    )
    if not ok:
        rep.fail(kind, f"malformed completion: {json.dumps(body)[:300]}")
        return None
    return body


async def _one(client: httpx.AsyncClient, rep: Report, kind: str, rnd: random.Random, context_len: int) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    p, m = rnd.randrange(len(PROMPTS)), rnd.choice(MAX_TOKENS)
    url = "/v1/chat/completions"
    if kind == "chat":
        body = _check_completion(rep, kind, await client.post(url, json=_chat_body(PROMPTS[p], m), headers=auth))
        if body:
            rep.greedy.setdefault(f"{p}/{m}", set()).add(body["choices"][0]["message"]["content"])
    elif kind == "stream":
        text, finishes, done = [], [], False
        async with client.stream("POST", url, json=_chat_body(PROMPTS[p], m, stream=True), headers=auth) as r:
            if r.status_code != 200:
                rep.fail(kind, f"status {r.status_code}")
                return
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[len("data: ") :]
                if data == "[DONE]":
                    done = True
                    continue
                chunk = json.loads(data)
                if chunk.get("object") != "chat.completion.chunk":
                    rep.fail(kind, f"not a chunk: {data[:200]}")
                    return
                for c in chunk.get("choices", []):
                    text.append(c.get("delta", {}).get("content") or "")
                    if c.get("finish_reason"):
                        finishes.append(c["finish_reason"])
        if not done or len(finishes) != 1 or finishes[0] not in ("stop", "length"):
            rep.fail(kind, f"stream ended badly: done={done} finishes={finishes}")
            return
        rep.greedy.setdefault(f"{p}/{m}", set()).add("".join(text))
    elif kind == "stream_drop":
        async with client.stream("POST", url, json=_chat_body(PROMPTS[p], 32, stream=True), headers=auth) as r:
            if r.status_code != 200:
                rep.fail(kind, f"status {r.status_code}")
                return
            seen = 0
            async for line in r.aiter_lines():
                seen += line.startswith("data: ")
                if seen >= 2:
                    break  # leaving the block closes the connection mid-stream
    elif kind == "disconnect":
        try:
            await client.post(url, json=_chat_body(PROMPTS[p], 32), headers=auth, timeout=0.05)
        except httpx.TimeoutException:
            pass  # the point: the client is gone before the answer
    elif kind == "n_choices":
        body = _chat_body(PROMPTS[p], m, n=3, temperature=0.8, seed=rnd.randrange(1 << 30))
        _check_completion(rep, kind, await client.post(url, json=body, headers=auth), n=3)
    elif kind == "json_mode":
        body = _chat_body("Reply with a JSON object describing a dog.", 48, response_format={"type": "json_object"})
        out = _check_completion(rep, kind, await client.post(url, json=body, headers=auth))
        if out and out["choices"][0]["finish_reason"] == "stop":
            try:
                json.loads(out["choices"][0]["message"]["content"])
            except ValueError:
                rep.fail(kind, f"not JSON: {out['choices'][0]['message']['content'][:200]!r}")
    elif kind == "bad_body":
        r = await client.post(url, content=b'{"model": "soak", "messages": [', headers={**auth, "Content-Type": "application/json"})
        if r.status_code != 400 or not _error_shape(r):
            rep.fail(kind, f"status {r.status_code}: {r.text[:200]}")
    elif kind == "bad_field":
        r = await client.post(url, json=_chat_body(PROMPTS[p], m, temperature=-1), headers=auth)
        if r.status_code != 400 or not _error_shape(r) or r.json()["error"]["param"] != "temperature":
            rep.fail(kind, f"status {r.status_code}: {r.text[:200]}")
    elif kind == "wrong_key":
        r = await client.post(url, json=_chat_body(PROMPTS[p], m), headers={"Authorization": "Bearer wrong"})
        if r.status_code != 401 or not _error_shape(r):
            rep.fail(kind, f"status {r.status_code}: {r.text[:200]}")
    elif kind == "over_context":
        long = "word " * (context_len + 64)
        r = await client.post(url, json=_chat_body(long, 8), headers=auth)
        if r.status_code != 400 or not _error_shape(r):
            rep.fail(kind, f"status {r.status_code}: {r.text[:200]}")
    else:
        raise ValueError(kind)


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def _metrics(client: httpx.AsyncClient) -> dict[str, float]:
    out = {}
    for line in (await client.get("/metrics")).text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


async def run_soak(url: str, *, requests: int, concurrency: int, seed: int, context_len: int,
                   server_pid: int | None = None, log=print) -> Report:
    """The load against a server started with ``--api-key soak-key``; the checks are in the report."""
    rep = Report()
    rnd = random.Random(seed)
    kinds = rnd.choices(list(KINDS), weights=list(KINDS.values()), k=requests)
    for k in kinds:
        rep.by_kind[k] = rep.by_kind.get(k, 0) + 1
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as client:
        sem = asyncio.Semaphore(concurrency)
        done = 0

        async def task(i: int, kind: str) -> None:
            nonlocal done
            async with sem:
                try:
                    await _one(client, rep, kind, random.Random(seed * 1_000_003 + i), context_len)
                except Exception as e:  # a transport error is a failure of the server, not of the soak
                    rep.fail(kind, f"{type(e).__name__}: {e}")
                done += 1
                if server_pid and done % 10 == 0:
                    rss = _rss_mib(server_pid)
                    if rss is not None:
                        rep.rss_mib.append((done, rss))
                if done % 100 == 0:
                    log(f"  {done}/{requests} requests, {len(rep.failures)} failures")

        t0 = time.monotonic()
        await asyncio.gather(*(task(i, k) for i, k in enumerate(kinds)))
        rep.seconds = time.monotonic() - t0
        rep.requests = requests

        # Cancelled sequences are retired by the engine's next step: give it a moment.
        for _ in range(100):
            rep.metrics_after = await _metrics(client)
            if all(rep.metrics_after.get(f"mistralrs_{k}", 1) == 0 for k in ("seqs_running", "seqs_waiting", "kv_blocks_used")):
                break
            await asyncio.sleep(0.1)
        else:
            rep.fail("after", f"still held: { {k: v for k, v in rep.metrics_after.items() if 'seqs' in k or 'kv_blocks_used' in k} }")

        # Every greedy answer under load equals the same request alone.
        auth = {"Authorization": f"Bearer {API_KEY}"}
        for key in sorted(rep.greedy):
            p, m = (int(x) for x in key.split("/"))
            r = await client.post("/v1/chat/completions", json=_chat_body(PROMPTS[p], m), headers=auth)
            alone = r.json()["choices"][0]["message"]["content"] if r.status_code == 200 else f"<status {r.status_code}>"
            rep.greedy_checked += 1
            for under_load in rep.greedy[key]:
                if under_load != alone:
                    rep.greedy_mismatches.append(f"{key}: {under_load!r} under load, {alone!r} alone")
    return rep


def start_server(gguf: Path, kv_cache_mb: int, max_seqs: int) -> tuple[subprocess.Popen, str, object]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tempfile.NamedTemporaryFile(prefix="mistralrs-soak-", suffix=".log", delete=False)
    cmd = [sys.executable, "-m", "mistralrs", "serve", "--gguf", str(gguf), "--port", str(port), "--api-key", API_KEY,
           "--kv-cache-mb", str(kv_cache_mb), "--max-seqs", str(max_seqs), "--log-level", "warning", "--no-access-log"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {Path(log.name).read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return proc, url, log
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start")


def checks(summary: dict, rss_slack_mib: float) -> list[str]:
    """What a passing soak must show, as the failed checks' descriptions."""
    bad = list(summary["failures"]) + list(summary["greedy_mismatches"])
    if summary["greedy_checked"] == 0:
        bad.append("no greedy answer was compared")
    if not summary["preemptions"]:
        bad.append("the KV budget forced no preemption")
    third, last = summary["rss_mib_third_quarter_mean"], summary["rss_mib_last_quarter_max"]
    if third is not None and last is not None and last > third + rss_slack_mib:
        bad.append(f"RSS grew: {last} MiB in the last quarter against a mean of {third} in the third")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", help="a model of scripts/fetch_models.py (default smollm2)")
    ap.add_argument("--gguf", help="a GGUF file instead of --model")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--kv-cache-mb", type=int, default=24, help="small enough to force preemption (default 24)")
    ap.add_argument("--max-seqs", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rss-slack-mib", type=float, default=32.0)
    ap.add_argument("--json", help="also write the report here")
    args = ap.parse_args()
    if args.gguf:
        gguf = Path(args.gguf)
    else:
        sys.path.insert(0, str(ROOT / "scripts"))
        from fetch_models import model_path

        gguf = model_path(args.model)
    proc, url, log = start_server(gguf, args.kv_cache_mb, args.max_seqs)
    try:
        ctx = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).json()["data"][0]
        context_len = int(ctx.get("max_model_len") or ctx.get("context_length") or 8192)
        print(f"soak: {args.requests} requests, {args.concurrency} at a time, KV budget {args.kv_cache_mb} MB, {gguf.name}")
        rep = asyncio.run(run_soak(url, requests=args.requests, concurrency=args.concurrency, seed=args.seed,
                                   context_len=context_len, server_pid=proc.pid))
    finally:
        proc.terminate()
        proc.wait(30)
        os.unlink(log.name)
    summary = rep.summary()
    bad = checks(summary, args.rss_slack_mib)
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    print("PASS" if not bad else "FAIL:\n  " + "\n  ".join(bad[:20]))
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
