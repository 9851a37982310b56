"""Every error the server sends has OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, so the official ``openai``
client raises its matching exception (``BadRequestError`` for 400,
``AuthenticationError`` for 401, ...) with our message.

The engine's exceptions map here, once: ``ValueError`` (a bad request),
``OverflowError`` (a number too large for its field) and ``NotImplementedError``
(a feature this build lacks) are the client's fault;
``RuntimeError`` (the runner closed, an engine failure) is the server's.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from mistralrs.server.schemas import ErrorDetail, ErrorResponse

log = logging.getLogger("mistralrs.server")

# The engine names its request fields in its messages ("top_p must be in (0, 1], got 0");
# these are the OpenAI names of those that differ, so `param` says what the client sent.
_OPENAI_NAMES = {"n_choices": "n", "stop_seqs": "stop", "echo_prompt": "echo"}
_FIELDS = {
    "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "n", "n_choices",
    "best_of", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty", "repetition_penalty",
    "stop", "stop_seqs", "logit_bias", "seed", "messages", "prompt", "suffix", "adapters", "tokens",
}


class APIError(HTTPException):
    """An error answer. A subclass of Starlette's HTTPException so that FastAPI re-raises it
    untouched when it comes out of reading the body (the size limit raises it there)."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.message, self.type, self.param, self.code = message, type, param, code

    def body(self) -> dict[str, Any]:
        detail = ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=detail).model_dump(mode="json")

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers)

    def sse(self) -> bytes:
        """The error as a server-sent event; the openai client raises ``APIError`` on it."""
        return b"data: " + json.dumps(self.body()).encode() + b"\n\n"


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def from_engine(e: BaseException, *, closing: bool = False) -> APIError:
    """The answer for an exception raised by the Python API."""
    message = str(e) or type(e).__name__
    if isinstance(e, ValueError):
        first = re.match(r"[A-Za-z_]+", message)
        param = first.group(0) if first and first.group(0) in _FIELDS else None
        param = _OPENAI_NAMES.get(param or "", param)
        code = "context_length_exceeded" if "context length" in message else None
        return APIError(400, message, param=param, code=code)
    if isinstance(e, OverflowError):
        # A JSON integer beyond what the engine's field holds (a seed over 2**64, say).
        return APIError(400, f"a number in the request is out of range ({message})")
    if isinstance(e, NotImplementedError):
        return APIError(400, message, code="unsupported")
    if isinstance(e, RuntimeError) and closing:
        return APIError(503, message, type="server_error", code="shutting_down")
    log.error("request failed: %r", e)
    return APIError(500, message, type="server_error")


def _field_names() -> frozenset[str]:
    from mistralrs.server import schemas

    names: set[str] = set()
    for obj in vars(schemas).values():
        if isinstance(obj, type) and issubclass(obj, schemas._Request):
            names.update(obj.model_fields)
    return frozenset(names)


_REQUEST_FIELDS = _field_names()


def _param(loc: tuple[object, ...]) -> str | None:
    """The field path of an error location: ``("body", "messages", 0, "content", "str")`` is
    ``messages.0.content``. What follows the fields names the union member that was tried."""
    path = []
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int) or part in _REQUEST_FIELDS:
            path.append(str(part))
        else:
            break
    return ".".join(path) or None


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        return f"the request body is not valid JSON: {ctx.get('error', first.get('msg'))}", None
    param = _param(tuple(first.get("loc", ())))
    if first.get("type") == "missing":
        return (f"`{param}` is required" if param else "a JSON request body is required"), param
    if param is None:
        return str(first.get("msg", "invalid request body")), None
    if len(errors) > 1 and all(_param(tuple(e.get("loc", ()))) == param for e in errors):
        # One value tried against each member of a union (a prompt: text, ids or a batch).
        return f"`{param}` has an invalid type or value: {first.get('msg')}", param
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    return f"`{param}`: {first.get('msg')}{more}", param


def install_handlers(app: FastAPI) -> None:
    """OpenAI-shaped answers for our errors, FastAPI's validation errors (400, not its 422),
    Starlette's HTTP errors (404, 405, ...) and anything unexpected (500)."""

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return exc.response()

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message, param = _validation_message(exc)
        return bad_request(message, param=param).response()

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        err = APIError(exc.status_code, str(exc.detail), type=kind, headers=dict(exc.headers) if exc.headers else None)
        return err.response()

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path, exc_info=exc)
        return APIError(500, "internal server error", type="server_error").response()

    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
