"""Request and response bodies of the HTTP server, with OpenAI's field names.

Requests ignore fields they do not know (as vLLM does), so clients that send
newer or vendor-specific fields keep working, and the server logs each such
name once; a known field of the wrong type is an error. The vLLM extras (``top_k``, ``min_p``, ``repetition_penalty``,
``ignore_eos``) and ``adapters`` (this engine's LoRA sets) are accepted too.

Annotations use ``typing`` forms (``Optional``, ``List``) because pydantic
evaluates them at run time and the package supports Python 3.9.
"""

from typing import Dict, Generic, List, Literal, Optional, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, model_serializer


class _Request(BaseModel):
    # strict: "5" is not an int and 1 is not a bool, as OpenAI's API rejects them. Unknown fields are
    # kept aside (``model_extra``) only so that the server can say once that it ignores them.
    model_config = ConfigDict(extra="allow", strict=True)


def unknown_fields(body: BaseModel, prefix: str = "") -> list[str]:
    """The dotted names of the fields ``body`` carried that its schema does not know, nested
    bodies' too (``messages.tool_calls``: one name for every message)."""
    names = [prefix + k for k in (body.model_extra or {})]
    for name in type(body).model_fields:
        value = getattr(body, name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, _Request):
                names += [n for n in unknown_fields(item, f"{prefix}{name}.") if n not in names]
    return names


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------- requests


class ContentPart(_Request):
    """One part of a message's content; only ``{"type": "text", "text": ...}`` is supported."""

    type: str
    text: Optional[str] = None


class FunctionCallIn(_Request):
    name: str
    # JSON text, as OpenAI sends it (a dict is taken too).
    arguments: Union[str, Dict[str, object]] = "{}"


class ToolCallIn(_Request):
    """A call an earlier assistant turn made."""

    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(_Request):
    role: str
    # None: an assistant turn that only carried tool calls.
    content: Union[str, List[ContentPart], None] = None
    name: Optional[str] = None
    tool_calls: Optional[List[ToolCallIn]] = None
    # A tool turn: the call it answers.
    tool_call_id: Optional[str] = None


class StreamOptions(_Request):
    include_usage: bool = False


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[Dict[str, object]] = None


class StructuredOutputs(_Request):
    """vLLM's ``structured_outputs``: one of these constrains the output."""

    json_: Union[str, Dict[str, object], None] = Field(None, alias="json")
    regex: Optional[str] = None
    grammar: Optional[str] = None
    choice: Optional[List[str]] = None
    json_object: Optional[bool] = None


class GenerationRequestBody(_Request):
    """Fields shared by chat and text completions."""

    model: Optional[str] = None
    frequency_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    logit_bias: Optional[Dict[str, float]] = None
    max_tokens: Optional[int] = None
    n: int = 1
    seed: Optional[int] = None
    stop: Union[str, List[str], None] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    # OpenAI's default; the Python API's default (None) would be greedy.
    temperature: Optional[float] = 1.0
    top_p: Optional[float] = None
    user: Optional[str] = None
    # Extensions, as vLLM names them.
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    ignore_eos: bool = False
    adapters: Optional[List[str]] = None
    # Structured output, at most one of: OpenAI's response_format, the Python API's grammar and
    # grammar_type, vLLM's guided_* fields and structured_outputs, llama.cpp's json_schema.
    response_format: Optional[ResponseFormat] = None
    grammar: Union[str, Dict[str, object], None] = None
    grammar_type: Optional[str] = None
    guided_json: Union[str, Dict[str, object], None] = None
    guided_regex: Optional[str] = None
    guided_grammar: Optional[str] = None
    guided_choice: Optional[List[str]] = None
    structured_outputs: Optional[StructuredOutputs] = None
    json_schema: Optional[Dict[str, object]] = None


class ChatCompletionRequestBody(GenerationRequestBody):
    messages: List[ChatMessage]
    max_completion_tokens: Optional[int] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = None
    # OpenAI's function tools, checked by the engine (which names what is wrong with them).
    tools: Optional[List[Dict[str, object]]] = None
    tool_choice: Union[str, Dict[str, object], None] = None
    parallel_tool_calls: Optional[bool] = None


class CompletionRequestBody(GenerationRequestBody):
    # A text, token ids, or a batch of either (one request per prompt).
    prompt: Union[str, List[str], List[int], List[List[int]]]
    # OpenAI's default for the legacy completions endpoint.
    max_tokens: Optional[int] = 16
    best_of: Optional[int] = None
    echo: bool = False
    logprobs: Optional[int] = None
    suffix: Optional[str] = None


class TokenizeRequestBody(_Request):
    """vLLM's ``/tokenize``: a ``prompt``, or chat ``messages`` (and ``tools``) rendered with the chat
    template first, as a chat request's prompt is."""

    prompt: Optional[str] = None
    messages: Optional[List[ChatMessage]] = None
    tools: Optional[List[Dict[str, object]]] = None
    add_generation_prompt: bool = True
    # None: True for a prompt, False for messages (the template writes the special tokens itself).
    add_special_tokens: Optional[bool] = None
    model: Optional[str] = None


class DetokenizeRequestBody(_Request):
    tokens: List[int]
    model: Optional[str] = None


# ----------------------------------------------------------------------------- requests: the Responses API


class InputContentPart(_Request):
    """A part of an input item's content: ``input_text``, or ``output_text`` (an earlier answer
    sent back, with its ``annotations``/``logprobs``, which are ignored)."""

    type: str
    text: Optional[str] = None
    annotations: Optional[List[object]] = None
    logprobs: Optional[List[object]] = None


class InputItem(_Request):
    """One item of ``input``, a union flattened into one schema and checked by ``type`` when it is
    translated: a message (``type`` "message" or absent, ``role``, ``content``), a ``function_call``
    (``call_id``, ``name``, ``arguments``) or a ``function_call_output`` (``call_id``, ``output``).
    ``id`` and ``status``, which output items passed back as input carry, are ignored."""

    type: Optional[str] = None
    role: Optional[str] = None
    content: Union[str, List[InputContentPart], None] = None
    id: Optional[str] = None
    status: Optional[str] = None
    call_id: Optional[str] = None
    name: Optional[str] = None
    arguments: Optional[str] = None
    output: Union[str, List[InputContentPart], None] = None


class ResponsesTool(_Request):
    """The Responses API's flat function tool; other tool types are refused when translated."""

    type: str
    name: Optional[str] = None
    description: Optional[str] = None
    parameters: Optional[Dict[str, object]] = None
    strict: Optional[bool] = None


class ResponsesToolChoice(_Request):
    """``{"type": "function", "name": ...}``; the strings "auto", "none" and "required" are also allowed."""

    type: str
    name: Optional[str] = None


class TextFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]
    name: Optional[str] = None
    schema_: Optional[Dict[str, object]] = Field(None, alias="schema")
    description: Optional[str] = None
    strict: Optional[bool] = None


class TextConfig(_Request):
    format: Optional[TextFormat] = None


class ResponsesRequestBody(_Request):
    """``POST /v1/responses``: translated to a chat completion (``responses.py``)."""

    model: Optional[str] = None
    input: Union[str, List[InputItem]]
    instructions: Optional[str] = None
    tools: Optional[List[ResponsesTool]] = None
    tool_choice: Union[str, ResponsesToolChoice, None] = None
    parallel_tool_calls: Optional[bool] = None
    max_output_tokens: Optional[int] = None
    # OpenAI's default; the Python API's default (None) would be greedy.
    temperature: Optional[float] = 1.0
    top_p: Optional[float] = None
    stream: bool = False
    text: Optional[TextConfig] = None
    previous_response_id: Optional[str] = None
    store: bool = True
    metadata: Optional[Dict[str, str]] = None
    user: Optional[str] = None


# ----------------------------------------------------------------------------- responses


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: Optional[List[int]] = None


class TokenLogprob(TopLogprob):
    top_logprobs: List[TopLogprob]


class ChoiceLogprobs(_Response):
    content: Optional[List[TokenLogprob]]


class CompletionLogprobs(_Response):
    """The legacy completions layout: parallel lists, one entry per generated token."""

    tokens: List[str]
    token_logprobs: List[Optional[float]]
    top_logprobs: List[Optional[Dict[str, float]]]
    text_offset: List[int]


class PromptTokensDetails(_Response):
    cached_tokens: int


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: Optional[PromptTokensDetails] = None


class FunctionCall(_Response):
    name: str
    arguments: str


class ToolCall(_Response):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class _Sparse(_Response):
    """Written without its unset (None) fields, as OpenAI streams tool-call deltas: clients merge
    deltas key by key, and a ``"type": null`` would overwrite the call's ``type`` (the ``openai``
    client's stream accumulator then fails)."""

    @model_serializer(mode="wrap")
    def _without_nones(self, handler):  # type: ignore[no-untyped-def]
        return {k: v for k, v in handler(self).items() if v is not None}


class FunctionCallDelta(_Sparse):
    name: Optional[str] = None
    arguments: Optional[str] = None


class ToolCallDelta(_Sparse):
    index: int
    id: Optional[str] = None
    type: Optional[Literal["function"]] = None
    function: FunctionCallDelta


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: Optional[str]
    tool_calls: Optional[List[ToolCall]] = None


class Delta(_Response):
    role: Optional[str] = None
    content: Optional[str] = None
    tool_calls: Optional[List[ToolCallDelta]] = None


class _Choice(_Response):
    """One of an answer's choices, numbered from 0; each kind adds its content, finish_reason
    and logprobs after the index."""

    index: int


class ChatChoice(_Choice):
    message: AssistantMessage
    finish_reason: Optional[str]
    logprobs: Optional[ChoiceLogprobs] = None


class ChatChunkChoice(_Choice):
    delta: Delta
    finish_reason: Optional[str] = None
    logprobs: Optional[ChoiceLogprobs] = None


class CompletionChoice(_Choice):
    text: str
    finish_reason: Optional[str] = None
    logprobs: Optional[CompletionLogprobs] = None


Choice = TypeVar("Choice", bound=_Choice)


class Answer(_Response, Generic[Choice]):
    """The fields of every generated answer, in OpenAI's order; each kind fixes ``object``."""

    id: str
    object: str
    created: int
    model: str
    system_fingerprint: Optional[str] = None
    choices: List[Choice]
    usage: Optional[Usage] = None


class ChatCompletion(Answer[ChatChoice]):
    object: Literal["chat.completion"] = "chat.completion"
    usage: Usage


class ChatCompletionChunk(Answer[ChatChunkChoice]):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"


class Completion(Answer[CompletionChoice]):
    """A whole text completion, and also each streamed chunk of one (as OpenAI streams them)."""

    object: Literal["text_completion"] = "text_completion"


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "mistralrs"


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: List[ModelCard]


class TokenizeResponse(_Response):
    tokens: List[int]
    count: int
    # The Python API does not expose the context length yet.
    max_model_len: Optional[int] = None


class DetokenizeResponse(_Response):
    prompt: str


class ErrorDetail(_Response):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(_Response):
    error: ErrorDetail = Field(description="OpenAI's error shape")


# Every field name a request body may carry: what an error's ``param`` path is made of.
REQUEST_FIELDS = frozenset(
    name for body in list(globals().values()) if isinstance(body, type) and issubclass(body, _Request)
    for name in body.model_fields
)
