"""The server soaked with mixed load (scripts/soak.py): greedy and streamed chats, streams dropped mid-way, clients
that give up while waiting, n=3, JSON mode, bodies that are not JSON, bad fields, wrong API keys and prompts over the
context, 12-16 at a time, on SmolLM2-135M (fetched from PyPI by scripts/fetch_models.py) under a 24 MB KV budget
that forces preemption.

References: the OpenAI API's shapes (a chat.completion with `n` indexed choices and usage; chat.completion.chunk
events ending in one finish_reason and `[DONE]`; errors as {"error": {message, type, param, code}} with 400 / 401),
and the engine's own answer to each greedy request sent alone, after the load, which every answer it gave under
load must equal.  Afterwards /metrics must show no running or waiting sequence and no KV block in use, at least one
preemption, and the server's RSS over the last quarter of the run no more than 32 MiB above its mean over the third.

CI runs 150 requests; `--run-slow` runs the 1,000-request soak (about a minute here).
"""

from __future__ import annotations

import asyncio

import pytest
from fetch_models import model_path  # conftest puts scripts/ on sys.path
from server_support import ServerProcess
from soak import API_KEY, checks, run_soak


def _soak(requests: int, concurrency: int) -> dict:
    gguf = model_path("smollm2")
    args = ["--gguf", str(gguf), "--api-key", API_KEY, "--kv-cache-mb", "24", "--max-seqs", "16", "--no-access-log"]
    with ServerProcess(args) as server:
        rep = asyncio.run(run_soak(server.url, requests=requests, concurrency=concurrency, seed=7,
                                   context_len=8192, server_pid=server.proc.pid, log=lambda _: None))
    summary = rep.summary()
    print(summary)
    return summary


def test_soak_short():
    summary = _soak(150, 12)
    assert checks(summary, rss_slack_mib=32.0) == []
    assert summary["requests_cancelled"] >= summary["by_kind"].get("stream_drop", 0)


@pytest.mark.slow
def test_soak_1000_requests():
    summary = _soak(1000, 16)
    assert checks(summary, rss_slack_mib=32.0) == []
    assert summary["requests_cancelled"] >= summary["by_kind"].get("stream_drop", 0)
