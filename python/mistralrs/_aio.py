"""The asyncio API: ``await runner.send_chat_completion_request_async(req)``.

Awaiting holds no thread. Each event loop gets one non-blocking pipe that the
loop watches (``loop.add_reader``). The engine writes a byte to it whenever an
async request of that loop has news: a response, a stream chunk, or its end.
The pipe (``WakePipe``) is closed once neither the loop's waker nor a request
still in the engine holds it; a closed loop's waker is dropped at the next
async call, or when the loop is collected.
The loop then takes whatever is ready from each of its pending requests.
Cancelling the awaiting task, or closing the stream's async iterator, drops
the request, and the engine stops its sequences before the next step.
"""

from __future__ import annotations

import asyncio
import os
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from mistralrs._mistralrs import WakePipe

_wakers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Waker] = weakref.WeakKeyDictionary()


class _Waker:
    """The wake-up pipe of one event loop and the requests waiting on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weakly: the waker is the value of a WeakKeyDictionary keyed by the loop.
        self._loop = weakref.ref(loop)
        self.pipe = WakePipe()
        self.read_fd = self.pipe.read_fd
        self.pending: dict[int, tuple[Any, Callable[[str, Any], None]]] = {}
        loop.add_reader(self.read_fd, self.drain)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop()
        if loop is None:
            raise RuntimeError("the event loop of this request is gone")
        return loop

    def add(self, pending: Any, on_event: Callable[[str, Any], None]) -> None:
        self.pending[id(pending)] = (pending, on_event)
        # Whatever arrived before registration woke nobody: look now.
        self.loop.call_soon(self.drain)

    def remove(self, pending: Any) -> None:
        self.pending.pop(id(pending), None)

    def drain(self) -> None:
        try:
            while os.read(self.read_fd, 4096):
                pass
        except BlockingIOError:
            pass
        for key, (pending, on_event) in list(self.pending.items()):
            while True:
                try:
                    kind, value = pending.next_ready()
                except BaseException as e:  # the request's own error
                    self.pending.pop(key, None)
                    on_event("error", e)
                    break
                if kind == "pending":
                    break
                if kind == "done":
                    self.pending.pop(key, None)
                on_event(kind, value)
                if kind == "done":
                    break


def _waker() -> _Waker:
    loop = asyncio.get_running_loop()
    for old in [other for other in list(_wakers) if other.is_closed()]:
        _wakers.pop(old, None)
    w = _wakers.get(loop)
    if w is None:
        w = _wakers[loop] = _Waker(loop)
    return w


async def send(runner: Any, request: Any) -> Any:
    """The response, or for ``stream=True`` an async iterator of chunks."""
    waker = _waker()
    pending = runner._send_async(request, waker.pipe)
    if request.stream:
        return _Stream(waker, pending)
    fut: asyncio.Future[Any] = waker.loop.create_future()

    def on_event(kind: str, value: Any) -> None:
        if fut.done():
            return
        if kind == "event":
            fut.set_result(value)
        elif kind == "error":
            fut.set_exception(value)
        else:
            fut.set_exception(RuntimeError("the engine stopped before answering"))

    waker.add(pending, on_event)
    try:
        return await fut
    finally:
        waker.remove(pending)
        pending.close()


class _Stream:
    """The chunks of a streamed response, for ``async for``; ``aclose()`` (or
    dropping it) cancels the request."""

    def __init__(self, waker: _Waker, pending: Any) -> None:
        self._waker, self._pending = waker, pending
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._finished = False
        waker.add(pending, lambda kind, value: self._queue.put_nowait((kind, value)))

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._finished:
            raise StopAsyncIteration
        try:
            kind, value = await self._queue.get()
        except BaseException:  # the consuming task was cancelled
            await self.aclose()
            raise
        if kind == "event":
            return value
        await self.aclose()
        if kind == "error":
            raise value
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self._finished = True
        self._waker.remove(self._pending)
        self._pending.close()

    def __del__(self) -> None:
        self._pending.close()
