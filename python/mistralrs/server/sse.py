"""Streamed responses as server-sent events: ``data: {json}\\n\\n`` per chunk, an optional
usage chunk, then ``data: [DONE]``.

A request's stream is an async iterator of the Python API; a batched
completion prompt has one per prompt, merged here in arrival order. Leaving
the generator early (the client disconnected, so Starlette cancels it)
closes every stream, which cancels their sequences in the engine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any, Optional

from pydantic import BaseModel

from mistralrs.server import schemas, translate
from mistralrs.server.errors import from_engine
from mistralrs.server.metrics import Metrics

DONE = b"data: [DONE]\n\n"


def event(body: BaseModel) -> bytes:
    return b"data: " + body.model_dump_json().encode() + b"\n\n"


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


async def events(
    streams: Sequence[Any],
    *,
    render: Callable[[int, Any], BaseModel],
    has_text: Callable[[Any], bool],
    render_usage: Callable[[schemas.Usage, Optional[str]], BaseModel] | None,
    metrics: Metrics,
    endpoint: str,
    start: float,
    closing: Callable[[], bool],
) -> AsyncIterator[bytes]:
    """The SSE body of a streamed request. An engine error mid-stream (the runner closing, say)
    becomes an ``{"error": ...}`` event, which the openai client raises as ``APIError``, and the
    stream ends without ``[DONE]``."""
    usages: list[schemas.Usage] = []
    fingerprint: str | None = None
    first_text = True
    chunks = merge(streams)
    try:
        async for i, chunk in chunks:
            if first_text and has_text(chunk):
                metrics.time_to_first_token.labels(endpoint).observe(time.perf_counter() - start)
                first_text = False
            if chunk.usage is not None:  # each request's last chunk carries its usage
                usages.append(translate.usage(chunk.usage))
                metrics.record_usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens, chunk.usage.avg_compl_tok_per_sec)
            fingerprint = chunk.system_fingerprint
            yield event(render(i, chunk))
    except Exception as e:
        yield from_engine(e, closing=closing()).sse()
        return
    finally:
        await chunks.aclose()
        for s in streams:
            await s.aclose()
    if render_usage is not None and usages:
        yield event(render_usage(translate.sum_usage(usages), fingerprint))
    yield DONE
