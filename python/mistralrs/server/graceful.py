"""Serving with uvicorn, and shutting down gracefully on SIGTERM (or Ctrl-C).

uvicorn stops accepting connections and waits for the open ones. We add a
bound: after ``grace`` seconds the runner is closed, which fails every request
still in flight (streams end with an error event, whole requests get 503), so
no client waits on a server that is going away; then the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from typing import Any

import uvicorn
from fastapi import FastAPI

log = logging.getLogger("mistralrs.server")


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, runner: Any, grace: float) -> None:
        super().__init__(config)
        self._state = app.state.mistralrs
        self._runner = runner
        self._grace = grace

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._state.closing = True  # /health says so, and failed requests get 503
        deadline = asyncio.ensure_future(self._close_runner_after(self._grace))
        try:
            await super().shutdown(sockets)
        finally:
            deadline.cancel()

    async def _close_runner_after(self, grace: float) -> None:
        await asyncio.sleep(grace)
        log.warning("grace period of %gs over: closing the runner, requests still in flight fail", grace)
        # close() joins the engine thread: off the event loop, which must keep sending the errors.
        await asyncio.get_running_loop().run_in_executor(None, self._runner.close)


def _ignore(signum: int, frame: object) -> None:
    pass


def serve(app: FastAPI, runner: Any, *, host: str, port: int, grace: float = 3.0,
          log_level: str = "info", access_log: bool = True) -> int:
    """Serves ``app`` until SIGTERM or Ctrl-C; closes ``runner`` at the end. Returns the exit code."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=access_log, lifespan="off",
        # A last resort only: the runner's closing ends every request well before this.
        timeout_graceful_shutdown=int(grace) + 10,
    )
    server = GracefulServer(config, app, runner, grace)
    # uvicorn re-raises the signal it caught once it has shut down, with the handler that was
    # there before it started; for SIGTERM that would end the process by the signal, not exit 0.
    previous = signal.signal(signal.SIGTERM, _ignore)
    try:
        server.run()
    except KeyboardInterrupt:  # Ctrl-C, re-raised by uvicorn after its graceful shutdown
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        runner.close()
    return 0 if server.started else 1
