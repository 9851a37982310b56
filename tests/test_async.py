"""The asyncio API (SPEC §7): ``await runner.send_*_async(req)`` and ``async for`` over
streams. Reference: the blocking API's outputs for the same greedy requests (which equal
llama.cpp's, tests/test_smollm2.py); no thread is held while awaiting; cancelling the task
or closing the iterator cancels the request."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time

import pytest
from conftest import QUESTIONS, assert_serves, chat
from mistralrs import ChatCompletionRequest, CompletionRequest



def _req(q: str, **kw) -> ChatCompletionRequest:
    kw.setdefault("max_tokens", 24)
    return ChatCompletionRequest(model="m", messages=[{"role": "user", "content": q}], temperature=0.0, **kw)


def test_64_awaited_requests_equal_the_blocking_ones_and_hold_no_thread(smollm2_runner):
    prompts = [f"{q} (question {i})" for i in range(8) for q in QUESTIONS]
    expected = [chat(smollm2_runner, p, max_tokens=12).choices[0].message.content for p in prompts]

    async def main():
        before = threading.active_count()
        tasks = [asyncio.ensure_future(smollm2_runner.send_chat_completion_request_async(_req(p, max_tokens=12))) for p in prompts]
        await asyncio.sleep(0.05)
        during = threading.active_count()
        out = await asyncio.gather(*tasks)
        return before, during, out

    before, during, out = asyncio.run(main())
    assert len(out) == 64
    assert during == before, (before, during)
    assert [r.choices[0].message.content for r in out] == expected
    assert all(r.usage.completion_tokens > 0 for r in out)


def test_async_streams_equal_the_whole_response(smollm2_runner):
    whole = [chat(smollm2_runner, q, max_tokens=24).choices[0].message.content for q in QUESTIONS[:3]]

    async def collect(q):
        stream = await smollm2_runner.send_chat_completion_request_async(_req(q, stream=True))
        return "".join([c.choices[0].delta.content async for c in stream if c.choices])

    async def main():
        return await asyncio.gather(*(collect(q) for q in QUESTIONS[:3]))

    assert asyncio.run(main()) == whole


def test_async_completions(smollm2_runner):
    req = CompletionRequest(model="m", prompt="The capital of France is", max_tokens=8, temperature=0.0)
    blocking = smollm2_runner.send_completion_request(req).choices[0].text
    got = asyncio.run(smollm2_runner.send_completion_request_async(req))
    assert got.choices[0].text == blocking


def _blocks_freed(runner, seconds=2.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if runner.stats()["kv_blocks_used"] == 0:
            return True
        time.sleep(0.01)
    return False


def test_cancelling_the_task_cancels_the_request(smollm2_runner):
    async def main():
        task = asyncio.ensure_future(
            smollm2_runner.send_chat_completion_request_async(_req("Write a long story.", max_tokens=500, ignore_eos=True))
        )
        # Running: its blocks are held (polled: a loaded machine may take a while to start the step).
        deadline = time.monotonic() + 30
        while smollm2_runner.stats()["kv_blocks_used"] == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert smollm2_runner.stats()["kv_blocks_used"] > 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert _blocks_freed(smollm2_runner)
    assert_serves(smollm2_runner)


def test_closing_an_async_stream_cancels_the_request(smollm2_runner):
    async def main():
        stream = await smollm2_runner.send_chat_completion_request_async(
            _req("Write a long story.", max_tokens=500, ignore_eos=True, stream=True)
        )
        n = 0
        async for _ in stream:
            n += 1
            if n == 3:
                break
        await stream.aclose()

    asyncio.run(main())
    assert _blocks_freed(smollm2_runner)


def test_bad_requests_raise_when_awaited(smollm2_runner):
    with pytest.raises(ValueError):
        asyncio.run(smollm2_runner.send_chat_completion_request_async(_req("Hi", max_tokens=0)))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open fds through /proc")
def test_each_event_loop_gives_its_wake_pipe_back(smollm2_runner):
    """Issue 26: every `asyncio.run` used to leave its loop's wake-up pipe open (two fds) for the life of
    the process. The pipe is closed once its loop is closed and no request of it is in the engine."""

    async def one():
        res = await smollm2_runner.send_completion_request_async(
            CompletionRequest(prompt="The sky is", model="m", max_tokens=2, temperature=0.0))
        assert res.usage.completion_tokens == 2

    def open_fds() -> int:
        gc.collect()
        return len(os.listdir("/proc/self/fd"))

    asyncio.run(one())
    before = open_fds()
    for _ in range(20):
        asyncio.run(one())
    # At most the last loop's pipe waits for the next call (or for the loop to be collected).
    assert open_fds() - before <= 2
