"""Every error the server sends has OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, so the official ``openai``
client raises its matching exception (``BadRequestError`` for 400,
``AuthenticationError`` for 401, ...) with our message. The Python API's
exceptions become these in ``translate.error``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from mistralrs.server.schemas import REQUEST_FIELDS, ErrorDetail, ErrorResponse

log = logging.getLogger("mistralrs.server")


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


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def _param(loc: tuple[object, ...]) -> str | None:
    """The field path of an error location: ``("body", "messages", 0, "content", "str")`` is
    ``messages.0.content``. What follows the fields names the union member that was tried."""
    path = []
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int) or part in REQUEST_FIELDS:
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
