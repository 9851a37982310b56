"""``create_app(runner)``: the OpenAI-compatible FastAPI app over one ``Runner``.

Every request is sent with the Python API's asyncio methods, so a request in
flight holds no thread: thousands of open streams cost only their sequences
in the engine. A client that goes away cancels its request, streamed or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Optional, TypeVar

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive

import mistralrs
from mistralrs.server import responses, schemas, sse, translate
from mistralrs.server.errors import APIError, bad_request, install_handlers
from mistralrs.server.metrics import Metrics
from mistralrs.server.middleware import BearerAuth, BodyLimit, ObserveRequests

# Far above any prompt a context window holds (a 128k-token prompt is ~0.5 MB of text,
# ~1 MB as token ids), small enough that a runaway client cannot fill memory.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024

# Reachable without the API key: probes, scrapers and the API's own docs.
OPEN_PATHS = frozenset({"/health", "/metrics", "/docs", "/redoc", "/openapi.json"})

log = logging.getLogger("mistralrs.server")

T = TypeVar("T")


class ServerState:
    """What the routes share; ``app.state.mistralrs``. ``closing`` is set when the server
    is shutting down, so requests failed by the closing runner get 503, not 500."""

    def __init__(self, runner: Any, model_name: str, metrics: Metrics) -> None:
        self.runner = runner
        self.model_name = model_name
        self.metrics = metrics
        self.created = int(time.time())
        self.closing = False


def _json(body: BaseModel, status: int = 200) -> Response:
    return Response(body.model_dump_json(), status_code=status, media_type="application/json")


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has gone. Once the body is read, the server's ``receive`` only
    answers with ``http.disconnect`` (or once the response is complete)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> Optional[T]:
    """``await work``, cancelling it (and so its request in the engine) if the client leaves
    first, in which case None. Streams get the same from Starlette's StreamingResponse."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
    if task.done():
        return task.result()
    # The client left: let the cancelled request unwind (it is dropped in the engine).
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def _all(works: Sequence[Awaitable[T]]) -> list[T]:
    """All results; the first failure cancels the others (their sequences too)."""
    tasks = [asyncio.ensure_future(w) for w in works]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            t.cancel()


def create_app(
    runner: mistralrs.Runner,
    *,
    model_name: str = "mistralrs",
    api_key: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_stored_responses: int = responses.DEFAULT_MAX_STORED,
) -> FastAPI:
    """An OpenAI-compatible app serving ``runner``: ``/v1/chat/completions``, ``/v1/completions``,
    ``/v1/responses``, ``/v1/models``, ``/tokenize``, ``/detokenize``, ``/health`` and ``/metrics``.

    ``model_name`` is the id ``/v1/models`` lists and responses carry (the ``model`` a request
    names is not checked). With ``api_key``, every path but ``/health``, ``/metrics`` and the docs
    needs ``Authorization: Bearer <api_key>``. ``/v1/responses`` keeps the last
    ``max_stored_responses`` responses in memory for ``previous_response_id`` (0: none). Mount it in
    another app with ``app.mount("/llm", create_app(runner))``; the caller keeps owning the runner
    (close it after the app stops).
    """
    metrics = Metrics(runner)
    state = ServerState(runner, model_name, metrics)
    app = FastAPI(title="mistralrs", version=mistralrs.__version__,
                  description="OpenAI-compatible API over a mistralrs Runner")
    app.state.mistralrs = state
    install_handlers(app)
    router = APIRouter()

    def fail(e: BaseException) -> APIError:
        return translate.error(e, closing=state.closing)

    ignored: set[str] = set()

    def note_unknown(body: BaseModel) -> None:
        """Logs each request field name the server ignores, the first time it comes."""
        for name in schemas.unknown_fields(body):
            if name not in ignored:
                ignored.add(name)
                log.warning("ignoring the request field `%s`, which this server does not know (logged once)", name)

    async def generate(request: Request, reply: translate.Reply, send: Callable[[Any], Awaitable[Any]],
                       framing: type[sse.Framing] = sse.Framing) -> Response:
        """The one path of chat and text completions (and the Responses API, a chat completion): the
        body's requests sent to the runner, and their responses (or streams, framed by ``framing``)
        answered in OpenAI's shape."""
        start = time.perf_counter()
        body = reply.body
        note_unknown(body)
        try:
            reqs = reply.requests()
        except (ValueError, OverflowError, NotImplementedError) as e:  # the Python API checks fields as it builds
            raise fail(e) from e
        sends = _all([send(r) for r in reqs])
        try:
            # A stream comes back at once; Starlette's StreamingResponse then watches for the disconnect.
            results: Any = await (sends if body.stream else _unless_disconnected(request, sends))
        except Exception as e:
            raise fail(e) from e
        if results is None:
            return Response(status_code=499)
        if body.stream:
            events = sse.events(results, framing(reply), metrics=metrics, endpoint=request.scope["route"].path,
                                start=start, closing=lambda: state.closing)
            return StreamingResponse(events, media_type="text/event-stream")
        for r in results:
            metrics.record_usage(r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.avg_compl_tok_per_sec)
        return _json(reply.response(results))

    @router.post("/v1/chat/completions", response_model=None,
                 responses={200: {"model": schemas.ChatCompletion}, 400: {"model": schemas.ErrorResponse}})
    async def chat_completions(body: schemas.ChatCompletionRequestBody, request: Request) -> Response:
        return await generate(request, translate.ChatReply(body, model_name), runner.send_chat_completion_request_async)

    @router.post("/v1/completions", response_model=None,
                 responses={200: {"model": schemas.Completion}, 400: {"model": schemas.ErrorResponse}})
    async def completions(body: schemas.CompletionRequestBody, request: Request) -> Response:
        return await generate(request, translate.CompletionReply(body, model_name), runner.send_completion_request_async)

    stored = responses.Store(max_stored_responses)

    @router.post("/v1/responses", response_model=None,
                 responses={200: {"model": responses.ResponseObject}, 400: {"model": schemas.ErrorResponse}})
    async def create_response(body: schemas.ResponsesRequestBody, request: Request) -> Response:
        return await generate(request, responses.ResponsesReply(body, model_name, stored),
                              responses.sender(runner.send_chat_completion_request_async), responses.Framing)

    @router.get("/v1/responses/{response_id}", response_model=responses.ResponseObject)
    async def retrieve_response(response_id: str) -> responses.ResponseObject:
        return stored.get(response_id).response

    @router.delete("/v1/responses/{response_id}", response_model=responses.DeletedResponse)
    async def delete_response(response_id: str) -> responses.DeletedResponse:
        return stored.delete(response_id)

    @router.get("/v1/models", response_model=schemas.ModelList)
    async def list_models() -> schemas.ModelList:
        return schemas.ModelList(data=[schemas.ModelCard(id=model_name, created=state.created)])

    @router.get("/v1/models/{model_id:path}", response_model=schemas.ModelCard)
    async def retrieve_model(model_id: str) -> schemas.ModelCard:
        if model_id != model_name:
            raise APIError(404, f"the model `{model_id}` does not exist", param="model", code="model_not_found")
        return schemas.ModelCard(id=model_name, created=state.created)

    @router.post("/tokenize", response_model=schemas.TokenizeResponse)
    async def tokenize(body: schemas.TokenizeRequestBody) -> schemas.TokenizeResponse:
        note_unknown(body)
        if (body.prompt is None) == (body.messages is None):
            raise bad_request("give either `prompt` or `messages`", param="prompt")

        def ids_of() -> list[int]:
            if body.messages is None:
                return runner.tokenize(body.prompt, body.add_special_tokens is not False)
            text = runner.apply_chat_template([translate.message(m) for m in body.messages], tools=body.tools,
                                              add_generation_prompt=body.add_generation_prompt)
            return runner.tokenize(text, bool(body.add_special_tokens))

        try:
            # A thread: a long prompt takes a while to tokenize, and streams must keep flowing.
            ids = await run_in_threadpool(ids_of)
        except Exception as e:
            raise fail(e) from e
        return schemas.TokenizeResponse(tokens=ids, count=len(ids))

    @router.post("/detokenize", response_model=schemas.DetokenizeResponse)
    async def detokenize(body: schemas.DetokenizeRequestBody) -> schemas.DetokenizeResponse:
        note_unknown(body)
        try:
            text = await run_in_threadpool(runner.detokenize, translate.token_ids(body.tokens, "tokens"))
        except APIError:
            raise
        except Exception as e:
            raise fail(e) from e
        return schemas.DetokenizeResponse(prompt=text)

    @router.get("/health")
    async def health() -> Response:
        if state.closing:
            return APIError(503, "shutting down", type="server_error", code="shutting_down").response()
        return Response('{"status":"ok"}', media_type="application/json")

    @router.get("/metrics")
    async def get_metrics() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    app.include_router(router)
    endpoints = frozenset(r.path for r in router.routes if hasattr(r, "path"))
    # Added innermost first: the size limit runs inside auth, and metrics see every answer.
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    if api_key:
        app.add_middleware(BearerAuth, api_key=api_key, open_paths=OPEN_PATHS)
    app.add_middleware(ObserveRequests, metrics=metrics, endpoints=endpoints)
    return app
