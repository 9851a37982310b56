"""OpenAI's Responses API (``POST /v1/responses``), as a translation onto chat completions.

A request body becomes a chat completion body (``chat_body``): ``instructions`` a system
message, ``input`` items chat messages (``function_call`` items an assistant turn's
``tool_calls``, ``function_call_output`` items ``tool`` messages), the flat function tools
chat's nested ones, ``text.format`` chat's ``response_format``, ``max_output_tokens`` its
``max_completion_tokens``. That body goes the chat path (``translate.chat_request``, the
server's ``generate``), and its answer comes back as a Response object: the assistant's text
an ``output_text`` message item, each tool call a ``function_call`` item, a length stop
``status: "incomplete"``. Streams get the Responses events (``Framing``), built from the same
chat chunks: ``response.created``, ``response.in_progress``, per item ``output_item.added``
... ``output_item.done`` with the text or argument deltas between, then ``response.completed``
(or ``response.incomplete``); an error mid-stream is an ``error`` event then ``response.failed``.

``previous_response_id`` continues a stored response: each response (unless ``store`` is
false) is kept with its whole conversation as chat messages in a bounded in-memory LRU
``Store``, and the next turn's messages are that conversation then the new input. As in
OpenAI's API, ``instructions`` are not carried over from the previous response.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import secrets
import time
from collections.abc import Awaitable, Sequence
from typing import Any, Callable, Dict, List, Literal, Optional, Union

from mistralrs.server import schemas, sse, translate
from mistralrs.server.errors import APIError, bad_request

# Responses kept for previous_response_id by default (each holds its conversation's text).
DEFAULT_MAX_STORED = 1000

# The Python API's names of request fields (which its errors carry as ``param``) as this API names them.
_PARAMS = {"max_tokens": "max_output_tokens", "response_format": "text.format", "grammar": "text.format",
           "messages": "input"}

_TEXT_PARTS = ("input_text", "output_text", "text")


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


# ----------------------------------------------------------------------------- the Response object


class OutputText(schemas._Response):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: List[object] = []
    logprobs: List[object] = []


class OutputMessage(schemas._Response):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: List[OutputText]


class FunctionCall(schemas._Response):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = Union[OutputMessage, FunctionCall]


class InputTokensDetails(schemas._Response):
    cached_tokens: int
    cache_write_tokens: int = 0


class OutputTokensDetails(schemas._Response):
    reasoning_tokens: int = 0


class ResponseUsage(schemas._Response):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()
    total_tokens: int


class ResponseError(schemas._Response):
    code: str
    message: str


class IncompleteDetails(schemas._Response):
    reason: Literal["max_output_tokens"]


class ResponseObject(schemas._Response):
    """A Response, with the fields of OpenAI's in its order; the request's settings are echoed."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    background: bool = False
    error: Optional[ResponseError] = None
    incomplete_details: Optional[IncompleteDetails] = None
    instructions: Optional[str]
    max_output_tokens: Optional[int]
    model: str
    output: List[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: Optional[str]
    reasoning: Optional[Dict[str, object]] = None
    store: bool
    temperature: Optional[float]
    text: Dict[str, object]
    tool_choice: Union[str, Dict[str, object]]
    tools: List[Dict[str, object]]
    top_p: Optional[float]
    truncation: Literal["disabled"] = "disabled"
    usage: Optional[ResponseUsage] = None
    user: Optional[str]
    metadata: Dict[str, str]


class DeletedResponse(schemas._Response):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


# ----------------------------------------------------------------------------- the store


@dataclasses.dataclass
class Stored:
    response: ResponseObject
    # The whole conversation up to and including this response's output, as chat messages.
    messages: List[Dict[str, Any]]


class Store:
    """The last ``capacity`` stored responses, least recently used dropped first."""

    def __init__(self, capacity: int = DEFAULT_MAX_STORED) -> None:
        self.capacity = capacity
        self._items: collections.OrderedDict[str, Stored] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, stored: Stored) -> None:
        if self.capacity <= 0:
            return
        self._items[stored.response.id] = stored
        self._items.move_to_end(stored.response.id)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def get(self, response_id: str, param: str = "response_id") -> Stored:
        """The stored response, or 404 in OpenAI's shape naming ``param``."""
        stored = self._items.get(response_id)
        if stored is None:
            raise APIError(404, f"Response with id '{response_id}' not found.", param=param,
                           code="previous_response_not_found" if param == "previous_response_id" else None)
        self._items.move_to_end(response_id)
        return stored

    def delete(self, response_id: str) -> DeletedResponse:
        self.get(response_id)
        del self._items[response_id]
        return DeletedResponse(id=response_id)


# ----------------------------------------------------------------------------- requests


def _required(item: schemas.InputItem, index: int, field: str) -> Any:
    value = getattr(item, field)
    if value is None:
        param = f"input.{index}.{field}"
        raise bad_request(f"`{param}` is required in a {item.type or 'message'} item", param=param)
    return value


def chat_messages(items: Union[str, List[schemas.InputItem]]) -> List[Dict[str, Any]]:
    """``input`` as chat messages. Consecutive ``function_call`` items (and the assistant text
    before them) are one assistant message with ``tool_calls``, as chat has them."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: List[Dict[str, Any]] = []
    for i, item in enumerate(items):
        kind = item.type or "message"
        param = f"input.{i}"
        if kind == "message":
            content = translate.text_of(item.content, f"{param}.content", _TEXT_PARTS)
            messages.append({"role": _required(item, i, "role"), "content": content})
        elif kind == "function_call":
            call = {"id": _required(item, i, "call_id"), "type": "function",
                    "function": {"name": _required(item, i, "name"), "arguments": _required(item, i, "arguments")}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                last["content"] = last["content"] or None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": _required(item, i, "call_id"),
                             "content": translate.text_of(_required(item, i, "output"), f"{param}.output", _TEXT_PARTS)})
        else:
            raise bad_request(f"input items of type `{kind}` are not supported (message, function_call and "
                              "function_call_output are)", param=f"{param}.type")
    return messages


def _tools(tools: Optional[List[schemas.ResponsesTool]]) -> List[Dict[str, Any]]:
    """The flat function tools as chat's ``{"type": "function", "function": {...}}``."""
    out = []
    for i, tool in enumerate(tools or []):
        if tool.type != "function":
            raise bad_request(f"tools of type `{tool.type}` are not supported (only function tools)", param=f"tools.{i}.type")
        if tool.name is None:
            raise bad_request("a function tool needs a `name`", param=f"tools.{i}.name")
        out.append({"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)})
    return out


def _tool_choice(choice: Union[str, schemas.ResponsesToolChoice, None]) -> Union[str, Dict[str, Any], None]:
    if choice is None or isinstance(choice, str):
        if choice not in (None, "auto", "none", "required"):
            raise bad_request(f"unknown tool_choice `{choice}` (auto, none, required or a function)", param="tool_choice")
        return choice
    if choice.type != "function" or choice.name is None:
        raise bad_request('tool_choice must be "auto", "none", "required" or {"type": "function", "name": ...}',
                          param="tool_choice")
    return {"type": "function", "function": {"name": choice.name}}


def _response_format(text: Optional[schemas.TextConfig]) -> Optional[Dict[str, Any]]:
    """``text.format`` as chat's ``response_format`` (a json_schema's fields nested in ``json_schema``)."""
    f = text.format if text is not None else None
    if f is None or f.type == "text":
        return None
    if f.type == "json_object":
        return {"type": "json_object"}
    if f.schema_ is None:
        raise bad_request("a json_schema text format needs a `schema`", param="text.format.schema")
    spec = f.model_dump(by_alias=True, exclude={"type"}, exclude_none=True)
    return {"type": "json_schema", "json_schema": spec}


def chat_body(body: schemas.ResponsesRequestBody, history: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The chat completion body (JSON) that answers ``body``, after the conversation ``history``."""
    system = [{"role": "system", "content": body.instructions}] if body.instructions is not None else []
    chat: Dict[str, Any] = {
        "model": body.model,
        "messages": system + list(history) + chat_messages(body.input),
        "max_completion_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "stream": body.stream,
        "user": body.user,
        "response_format": _response_format(body.text),
    }
    tools, choice = _tools(body.tools), _tool_choice(body.tool_choice)
    # Only when given: a chat body without tool support would ignore them anyway.
    if tools:
        chat["tools"] = tools
    if choice is not None:
        chat["tool_choice"] = choice
    if body.parallel_tool_calls is not None:
        chat["parallel_tool_calls"] = body.parallel_tool_calls
    return {k: v for k, v in chat.items() if v is not None}


def sender(send: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
    """``send``, with the fields its errors name renamed to this API's (``max_tokens`` is ``max_output_tokens``)."""
    async def send_renamed(request: Any) -> Any:
        try:
            return await send(request)
        except ValueError as e:
            param = getattr(e, "param", None)
            if param in _PARAMS:
                e.param = _PARAMS[param]  # type: ignore[attr-defined]
            raise
    return send_renamed


# ----------------------------------------------------------------------------- responses


def _message(text: str, status: str, item_id: Optional[str] = None) -> OutputMessage:
    return OutputMessage(id=item_id or _id("msg"), status=status, content=[OutputText(text=text)])


def _function_call(call: Dict[str, Any], status: str, item_id: Optional[str] = None) -> FunctionCall:
    fn = call.get("function") or {}
    return FunctionCall(id=item_id or _id("fc"), call_id=call.get("id") or _id("call"), name=fn.get("name") or "",
                        arguments=fn.get("arguments") or "", status=status)


def _usage(prompt: int, completion: int, cached: int) -> ResponseUsage:
    return ResponseUsage(input_tokens=prompt, input_tokens_details=InputTokensDetails(cached_tokens=cached),
                         output_tokens=completion, total_tokens=prompt + completion)


def _assistant_message(items: Sequence[OutputItem]) -> Dict[str, Any]:
    """The output items as the chat message that continues the conversation."""
    text = "".join(p.text for it in items if isinstance(it, OutputMessage) for p in it.content)
    calls = [{"id": it.call_id, "type": "function", "function": {"name": it.name, "arguments": it.arguments}}
             for it in items if isinstance(it, FunctionCall)]
    message: Dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


class ResponsesReply(translate.ChatReply):
    """A Responses request answered by the chat path: its chat request, and the chat answer (or
    stream, with ``Framing``) as a Response object, stored for ``previous_response_id``."""

    def __init__(self, body: schemas.ResponsesRequestBody, model: str, store: Store) -> None:
        super().__init__(body, model)
        self.store = store
        self.id = _id("resp")
        self.created = int(time.time())
        self.messages: List[Dict[str, Any]] = []

    def requests(self) -> list[Any]:
        body = self.body
        history = self.store.get(body.previous_response_id, "previous_response_id").messages \
            if body.previous_response_id is not None else []
        chat = schemas.ChatCompletionRequestBody.model_validate(chat_body(body, history))
        # What this response continues, for the next turn: the system message is this turn's only.
        self.messages = list(history) + chat_messages(body.input)
        return [translate.chat_request(chat, self.model)]

    def result(self, status: str, output: List[OutputItem], usage: Optional[ResponseUsage] = None,
               error: Optional[ResponseError] = None) -> ResponseObject:
        """The Response object; a finished one (completed or incomplete) is stored unless ``store`` is false."""
        b = self.body
        fmt = b.text.format if b.text is not None and b.text.format is not None else None
        response = ResponseObject(
            id=self.id,
            created_at=self.created,
            status=status,
            error=error,
            incomplete_details=IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None,
            instructions=b.instructions,
            max_output_tokens=b.max_output_tokens,
            model=self.model,
            output=output,
            parallel_tool_calls=b.parallel_tool_calls is not False,
            previous_response_id=b.previous_response_id,
            store=b.store,
            temperature=b.temperature,
            text={"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
            tool_choice=b.tool_choice.model_dump(exclude_none=True) if isinstance(b.tool_choice, schemas.ResponsesToolChoice)
            else b.tool_choice or "auto",
            tools=[t.model_dump(exclude_none=True) for t in b.tools or []],
            top_p=1.0 if b.top_p is None else b.top_p,
            usage=usage,
            user=b.user,
            metadata=b.metadata or {},
        )
        if b.store and status in ("completed", "incomplete"):
            self.store.put(Stored(response, self.messages + [_assistant_message(output)]))
        return response

    def response(self, results: Sequence[Any]) -> ResponseObject:  # type: ignore[override]
        chat = super().response(results).model_dump()
        choice = chat["choices"][0]
        status = "incomplete" if choice["finish_reason"] == "length" else "completed"
        content, calls = choice["message"].get("content"), choice["message"].get("tool_calls") or []
        output: List[OutputItem] = [_message(content or "", status)] if content or not calls else []
        output += [_function_call(c, status) for c in calls]
        u = chat["usage"]
        cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        return self.result(status, output, _usage(u["prompt_tokens"], u["completion_tokens"], cached))


class Framing(sse.Framing):
    """The chat chunks of a Responses request as the Responses API's events, in OpenAI's order:
    ``response.created`` and ``response.in_progress`` first; the text as a message item
    (``output_item.added``, ``content_part.added``, ``output_text.delta``..., ``output_text.done``,
    ``content_part.done``, ``output_item.done``); each tool call as a function_call item
    (``output_item.added``, ``function_call_arguments.delta``..., ``function_call_arguments.done``,
    ``output_item.done``); then ``response.completed`` or ``response.incomplete`` with the whole
    Response. Every event carries its ``sequence_number``."""

    reply: ResponsesReply

    def __init__(self, reply: ResponsesReply) -> None:
        super().__init__(reply)
        self.sequence = 0
        self.output: List[OutputItem] = []
        self.open: Optional[OutputItem] = None  # the item deltas go to
        self.calls: Dict[int, FunctionCall] = {}  # by the chat tool call's index
        self.finish_reason: Optional[str] = None

    def event(self, type: str, **fields: Any) -> bytes:
        data = {"type": type, "sequence_number": self.sequence}
        for k, v in fields.items():
            data[k] = v.model_dump(mode="json") if isinstance(v, schemas._Response) else v
        self.sequence += 1
        return sse.frame(json.dumps(data), event=type)

    def head(self) -> list[bytes]:
        r = self.reply.result("in_progress", [])
        return [self.event("response.created", response=r), self.event("response.in_progress", response=r)]

    def _index(self, item: OutputItem) -> int:
        return self.output.index(item)

    def _add(self, item: OutputItem) -> list[bytes]:
        out = self._close("completed")
        self.output.append(item)
        self.open = item
        out.append(self.event("response.output_item.added", output_index=self._index(item), item=item))
        if isinstance(item, OutputMessage):
            part = OutputText(text="")
            out.append(self.event("response.content_part.added", item_id=item.id, output_index=self._index(item),
                                  content_index=0, part=part))
        return out

    def _close(self, status: str) -> list[bytes]:
        """The events that finish the open item, with ``status``."""
        item, self.open = self.open, None
        if item is None:
            return []
        i = self._index(item)
        item.status = status  # type: ignore[assignment]
        if isinstance(item, OutputMessage):
            part = item.content[0]
            out = [self.event("response.output_text.done", item_id=item.id, output_index=i, content_index=0,
                              text=part.text, logprobs=[]),
                   self.event("response.content_part.done", item_id=item.id, output_index=i, content_index=0, part=part)]
        else:
            out = [self.event("response.function_call_arguments.done", item_id=item.id, output_index=i,
                              name=item.name, arguments=item.arguments)]
        return out + [self.event("response.output_item.done", output_index=i, item=item)]

    def chunk(self, prompt: int, chunk: Any) -> list[bytes]:
        out: list[bytes] = []
        data = self.reply.chunk(prompt, chunk).model_dump()
        for choice in data["choices"]:
            delta = choice["delta"]
            if delta.get("content"):
                if not isinstance(self.open, OutputMessage):
                    out += self._add(_message("", "in_progress"))
                assert isinstance(self.open, OutputMessage)
                self.open.content[0].text += delta["content"]
                out.append(self.event("response.output_text.delta", item_id=self.open.id,
                                      output_index=self._index(self.open), content_index=0, delta=delta["content"],
                                      logprobs=[]))
            for call in delta.get("tool_calls") or []:
                index = call.get("index", 0)
                if index not in self.calls:
                    self.calls[index] = _function_call({**call, "function": {**(call.get("function") or {}), "arguments": ""}},
                                                       "in_progress")
                    out += self._add(self.calls[index])
                item = self.calls[index]
                fragment = (call.get("function") or {}).get("arguments") or ""
                if fragment:
                    item.arguments += fragment
                    out.append(self.event("response.function_call_arguments.delta", item_id=item.id,
                                          output_index=self._index(item), delta=fragment))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def error(self, error: APIError) -> list[bytes]:
        failed = self.reply.result("failed", self.output,
                                   error=ResponseError(code="server_error", message=error.message))
        return [self.event("error", code=error.code or error.type, message=error.message, param=error.param),
                self.event("response.failed", response=failed)]

    def tail(self, usages: list[Any]) -> list[bytes]:
        status = "incomplete" if self.finish_reason == "length" else "completed"
        out = [] if self.output else self._add(_message("", "in_progress"))  # as the whole response: a message
        out += self._close(status)
        usage = _usage(sum(u.prompt_tokens for u in usages), sum(u.completion_tokens for u in usages),
                       sum(u.prompt_tokens_details.cached_tokens for u in usages))
        response = self.reply.result(status, self.output, usage)
        return out + [self.event(f"response.{status}", response=response)]
