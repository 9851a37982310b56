"""Plain ASGI middleware of the app: request metrics, Bearer auth and the body size limit.

Plain ASGI rather than Starlette's ``BaseHTTPMiddleware``: that one runs the
endpoint in another task and buffers, which would hide a client's disconnect
from a streaming response (the disconnect is what cancels its sequence).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Container

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mistralrs.server.errors import APIError
from mistralrs.server.metrics import Metrics

# Status recorded for a request whose client left before the answer (nginx's convention).
CLIENT_CLOSED = 499


def _path(scope: Scope) -> str:
    """The path inside this app, also when it is mounted under a prefix."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


class ObserveRequests:
    """Counts each answer by endpoint and status and times it to the end of its body."""

    def __init__(self, app: ASGIApp, metrics: Metrics, endpoints: Container[str]) -> None:
        self.app, self.metrics, self.endpoints = app, metrics, endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = _path(scope)
        # Unknown paths share one label, so scanners cannot grow the label set.
        endpoint = path if path in self.endpoints else "other"
        start = time.perf_counter()
        status = CLIENT_CLOSED

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except Exception:
            status = 500
            raise
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


class BearerAuth:
    """``Authorization: Bearer <key>`` on every path but the open ones (health, metrics, docs)."""

    def __init__(self, app: ASGIApp, api_key: str, open_paths: Container[str]) -> None:
        self.app, self.open_paths = app, open_paths
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _path(scope) in self.open_paths:
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"authorization", b"")
        # compare_digest: the time taken does not tell how much of the key was right.
        if not secrets.compare_digest(given, self.expected):
            message = "missing API key" if not given else "incorrect API key provided"
            err = APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
            await err.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuses a body over ``max_bytes`` with 413: at once when Content-Length says so, else
    (chunked uploads) as soon as the bytes read pass it, before it is all in memory."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self) -> APIError:
        return APIError(413, f"the request body is larger than {self.max_bytes} bytes", code="request_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._too_large().response()(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Raised inside FastAPI's body reading, which passes HTTPExceptions on to our handler.
                    raise self._too_large()
            return message

        await self.app(scope, limited_receive, send)
