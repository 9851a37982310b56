"""Streamed responses as server-sent events. Chat and text completions send ``data: {json}\\n\\n``
per chunk, an optional usage chunk, then ``data: [DONE]``; the Responses API frames the same
chunks as its own typed events (``responses.Framing``). One generator serves both.

A request's stream is an async iterator of the Python API; a batched
completion prompt has one per prompt, merged here in arrival order. Leaving
the generator early (the client disconnected, so Starlette cancels it)
closes every stream, which cancels their sequences in the engine.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any, Optional

from mistralrs.server import translate
from mistralrs.server.errors import APIError
from mistralrs.server.metrics import Metrics


def frame(data: str, event: Optional[str] = None) -> bytes:
    """One server-sent event, named ``event`` if given."""
    named = b"event: " + event.encode() + b"\n" if event else b""
    return named + b"data: " + data.encode() + b"\n\n"


DONE = frame("[DONE]")


async def merge(streams: Sequence[Any]) -> AsyncGenerator[tuple[int, Any], None]:
    """(stream index, chunk) from all streams as the chunks come; the first error ends it."""
    if len(streams) == 1:
        async for chunk in streams[0]:
            yield 0, chunk
        return
    queue: asyncio.Queue[tuple[int, Any, Optional[BaseException]]] = asyncio.Queue()
    finished = object()

    async def pump(i: int, stream: Any) -> None:
        try:
            async for chunk in stream:
                queue.put_nowait((i, chunk, None))
            queue.put_nowait((i, finished, None))
        except Exception as e:
            queue.put_nowait((i, None, e))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            i, chunk, error = await queue.get()
            if error is not None:
                raise error
            if chunk is finished:
                remaining -= 1
            else:
                yield i, chunk
    finally:
        for t in tasks:
            t.cancel()


class Framing:
    """How a streamed request's chunks become events; this one is chat and text completions':
    a chunk per event, the usage chunk if ``stream_options.include_usage``, then ``[DONE]``. An
    engine error mid-stream (the runner closing, say) becomes an ``{"error": ...}`` event, which the
    openai client raises as ``APIError``, and the stream ends without ``[DONE]``."""

    def __init__(self, reply: translate.Reply) -> None:
        self.reply = reply

    def head(self) -> list[bytes]:
        """Events sent before the first chunk."""
        return []

    def chunk(self, prompt: int, chunk: Any) -> list[bytes]:
        return [frame(self.reply.chunk(prompt, chunk).model_dump_json())]

    def error(self, error: APIError) -> list[bytes]:
        return [frame(json.dumps(error.body()))]

    def tail(self, usages: list[Any]) -> list[bytes]:
        """Events after the last chunk; ``usages``: each request's usage (the Python API's)."""
        options = self.reply.body.stream_options
        usage = [frame(self.reply.usage_chunk(usages).model_dump_json())] if options and options.include_usage and usages else []
        return usage + [DONE]


async def events(
    streams: Sequence[Any],
    framing: Framing,
    *,
    metrics: Metrics,
    endpoint: str,
    start: float,
    closing: Callable[[], bool],
) -> AsyncIterator[bytes]:
    """The SSE body of a streamed request, framed by ``framing``."""
    usages: list[Any] = []
    first_text = True
    chunks = merge(streams)
    try:
        for event in framing.head():
            yield event
        async for i, chunk in chunks:
            if first_text and framing.reply.has_text(chunk):
                metrics.time_to_first_token.labels(endpoint).observe(time.perf_counter() - start)
                first_text = False
            if chunk.usage is not None:  # each request's last chunk carries its usage
                usages.append(chunk.usage)
                metrics.record_usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens, chunk.usage.avg_compl_tok_per_sec)
            for event in framing.chunk(i, chunk):
                yield event
    except Exception as e:
        for event in framing.error(translate.error(e, closing=closing())):
            yield event
        return
    finally:
        await chunks.aclose()
        for s in streams:
            await s.aclose()
    for event in framing.tail(usages):
        yield event
