"""OpenAI request bodies to the Python API's requests, and its answers back:
responses, streamed chunks and exceptions.

The engine already answers with OpenAI's field names, so a response is read
into its schema by those names (``_read``); what changes on the way out is the
layout OpenAI's wire format has and the Python API does not: legacy completion
logprobs (parallel lists), ``usage`` only where the client asked for it, one id
for all the requests of a batched prompt, and choices re-indexed across that batch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, List, TypeVar, Union

from pydantic import BaseModel

from mistralrs import ChatCompletionRequest, CompletionRequest
from mistralrs.server import schemas
from mistralrs.server.errors import APIError, bad_request

log = logging.getLogger("mistralrs.server")

# A prompt of the legacy completions API after splitting a batch: text or token ids.
Prompt = Union[str, List[int]]

# The Python API's names of OpenAI's request fields where the two differ: requests go out
# under the Python API's names, and the engine's errors name fields by them (``param``).
_PYTHON_API_NAMES = {"n": "n_choices", "stop": "stop_seqs", "echo": "echo_prompt"}
_OPENAI_NAMES = {api: openai for openai, api in _PYTHON_API_NAMES.items()}

# OpenAI's "developer" role is its newer name for "system"; the chat templates know only the latter.
_ROLE_ALIASES = {"developer": "system"}


# ----------------------------------------------------------------------------- requests


def text_of(content: Any, param: str = "messages", kinds: Sequence[str] = ("text",)) -> str:
    """A message's content as text: the string, or its text parts (of ``kinds``) joined by newlines,
    as vLLM joins them; any other part is a 400 naming ``param``."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type not in kinds or part.text is None:
            raise bad_request(f"content parts of type `{part.type}` are not supported (only {', '.join(kinds)})",
                              param=param)
        texts.append(part.text)
    return "\n".join(texts)


def _stops(stop: str | list[str] | None) -> list[str] | None:
    if stop is None:
        return None
    return [stop] if isinstance(stop, str) else list(stop)


def _logit_bias(bias: dict[str, float] | None) -> dict[int, float] | None:
    if bias is None:
        return None
    try:
        return {int(k): v for k, v in bias.items()}
    except ValueError:
        raise bad_request("logit_bias keys must be token ids", param="logit_bias") from None


def _check_stream_options(body: schemas.GenerationRequestBody) -> None:
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed with stream=true", param="stream_options")


def _as_is(body: schemas.GenerationRequestBody, *fields: str) -> dict[str, Any]:
    """``fields`` of ``body`` that the Python API takes as they are, under its names."""
    return {_PYTHON_API_NAMES.get(f, f): getattr(body, f) for f in fields}


def _choice_grammar(choices: list[str], param: str) -> dict[str, Any]:
    """Output that is exactly one of ``choices`` (vLLM's guided_choice), as a Lark grammar of
    string literals (JSON's string syntax, which Lark's literals share)."""
    if not choices:
        raise bad_request("the list of choices is empty", param=param)
    return {"grammar": "start: " + " | ".join(json.dumps(c) for c in choices), "grammar_type": "lark"}


def _constraint(body: schemas.GenerationRequestBody) -> dict[str, Any]:
    """The body's structured-output field, whichever spelling it uses, as the Python API's
    ``grammar`` + ``grammar_type`` (or ``response_format``), which check and compile it."""
    given: dict[str, dict[str, Any]] = {}
    if body.response_format is not None:
        given["response_format"] = {"response_format": body.response_format.model_dump(exclude_none=True)}
    if body.grammar is not None or body.grammar_type is not None:
        given["grammar"] = {"grammar": body.grammar, "grammar_type": body.grammar_type}
    for field, kind in (("guided_json", "json_schema"), ("json_schema", "json_schema"),
                        ("guided_regex", "regex"), ("guided_grammar", "lark")):
        if getattr(body, field) is not None:
            given[field] = {"grammar": getattr(body, field), "grammar_type": kind}
    if body.guided_choice is not None:
        given["guided_choice"] = _choice_grammar(body.guided_choice, "guided_choice")
    so = body.structured_outputs
    if so is not None:
        inner = {
            "json": so.json_ is not None and {"grammar": so.json_, "grammar_type": "json_schema"},
            "regex": so.regex is not None and {"grammar": so.regex, "grammar_type": "regex"},
            "grammar": so.grammar is not None and {"grammar": so.grammar, "grammar_type": "lark"},
            "choice": so.choice is not None and _choice_grammar(so.choice, "structured_outputs"),
            "json_object": bool(so.json_object) and {"grammar": {"type": "object"}, "grammar_type": "json_schema"},
        }
        set_ = {k: v for k, v in inner.items() if v}
        if len(set_) != 1:
            raise bad_request("structured_outputs needs exactly one of json, regex, grammar, choice, json_object"
                              f" (got {', '.join(sorted(set_)) or 'none'})", param="structured_outputs")
        given["structured_outputs"] = next(iter(set_.values()))
    if len(given) > 1:
        raise bad_request(f"give one way to constrain the output, not several ({', '.join(sorted(given))})",
                          param=sorted(given)[1])
    return next(iter(given.values()), {})


def _shared(body: schemas.GenerationRequestBody, model: str) -> dict[str, Any]:
    """The fields chat and text completions share, under the Python API's names."""
    return dict(
        _as_is(body, "n", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p",
               "top_k", "min_p", "stream", "adapters", "seed", "ignore_eos"),
        model=model,
        logit_bias=_logit_bias(body.logit_bias),
        stop_seqs=_stops(body.stop),
        # The engine compiles it and says what is wrong with it.
        **_constraint(body),
    )


def message(m: schemas.ChatMessage) -> dict[str, Any]:
    """A message of the body as the Python API takes it: its text, and its tool calls or the call
    it answers."""
    out: dict[str, Any] = {"role": _ROLE_ALIASES.get(m.role, m.role)}
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id or "", "type": "function",
             "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in m.tool_calls
        ]
        out["content"] = None if m.content is None else text_of(m.content)
    else:
        out["content"] = text_of(m.content)
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        out["name"] = m.name
    return out


def chat_request(body: schemas.ChatCompletionRequestBody, model: str) -> ChatCompletionRequest:
    _check_stream_options(body)
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs=true", param="top_logprobs")
    return ChatCompletionRequest(
        messages=[message(m) for m in body.messages],
        **_as_is(body, "logprobs", "top_logprobs", "tools", "tool_choice", "parallel_tool_calls"),
        # max_completion_tokens is OpenAI's newer name; it wins when both are sent.
        max_tokens=body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens,
        **_shared(body, model),
    )


def token_ids(ids: Sequence[int], param: str) -> list[int]:
    """``ids`` if each fits a vocabulary id's type; the engine checks them against the vocabulary.
    (JSON integers are unbounded, and a huge one would not even reach the engine's check.)"""
    for t in ids:
        if not 0 <= t < 2**32:
            raise bad_request(f"token id {t} is not a vocabulary id", param=param)
    return list(ids)


def completion_prompts(body: schemas.CompletionRequestBody) -> list[Prompt]:
    """The prompts of a request: one, or each of a batch (``list[str]`` / ``list[list[int]]``)."""
    p = body.prompt
    if isinstance(p, str):
        return [p]
    if not p:
        raise bad_request("the prompt is empty", param="prompt")
    if isinstance(p[0], int):
        return [token_ids(p, "prompt")]
    return [q if isinstance(q, str) else token_ids(q, "prompt") for q in p]


def completion_requests(body: schemas.CompletionRequestBody, model: str) -> list[CompletionRequest]:
    """One engine request per prompt of the batch."""
    _check_stream_options(body)
    best_of = body.best_of if body.best_of is not None else body.n
    if body.stream and best_of > body.n:
        # As OpenAI: the discarded candidates would already have been streamed.
        raise bad_request("best_of greater than n cannot be streamed", param="best_of")
    return [
        CompletionRequest(
            prompt=prompt,
            best_of=best_of,
            # The legacy API's `logprobs` is the number of top logprobs.
            logprobs=body.logprobs is not None,
            top_logprobs=body.logprobs,
            **_as_is(body, "echo", "max_tokens", "suffix"),
            **_shared(body, model),
        )
        for prompt in completion_prompts(body)
    ]


# ----------------------------------------------------------------------------- responses

M = TypeVar("M", bound=BaseModel)


def _read(schema: type[M], obj: Any, **given: Any) -> M:
    """``obj``, an object of the Python API, as ``schema``: each field (nested ones too) read from
    the attribute of the same name, but for the fields ``given``."""
    fields = {name: given[name] if name in given else getattr(obj, name) for name in schema.model_fields}
    return schema.model_validate(fields, from_attributes=True)


def _sum_usage(usages: Sequence[Any]) -> schemas.Usage:
    """The usage of a batch: its requests' counts (the Python API's ``Usage``) added up."""
    return schemas.Usage(
        prompt_tokens=sum(u.prompt_tokens for u in usages),
        completion_tokens=sum(u.completion_tokens for u in usages),
        total_tokens=sum(u.total_tokens for u in usages),
        prompt_tokens_details=schemas.PromptTokensDetails(
            cached_tokens=sum(u.prompt_tokens_details.cached_tokens for u in usages)),
    )


class Reply:
    """One HTTP request of chat or text completions, from its body to the Python API's requests
    (one, or one per prompt of a batched completion) and from their responses to the answer:
    one id, choices numbered across the batch, usage added up; streamed chunks carry no usage
    (a last chunk does, if the client asks for it)."""

    answer: type[schemas.Answer]
    chunk_schema: type[schemas.Answer]

    def __init__(self, body: Any, model: str) -> None:
        self.body, self.model = body, model
        # The first response or chunk: its id, time and fingerprint are the whole answer's.
        self._first: Any = None

    def requests(self) -> list[Any]:
        raise NotImplementedError

    def choices(self, prompt: int, res: Any, whole: bool) -> Sequence[Any]:
        """The choices of the response (or chunk) to prompt ``prompt``, for the schema to read."""
        raise NotImplementedError

    def has_text(self, chunk: Any) -> bool:
        raise NotImplementedError

    def response(self, results: Sequence[Any]) -> schemas.Answer:
        choices = [c for i, res in enumerate(results) for c in self.choices(i, res, whole=True)]
        return _read(self.answer, results[0], choices=choices, usage=_sum_usage([r.usage for r in results]))

    def chunk(self, prompt: int, chunk: Any) -> schemas.Answer:
        self._first = self._first or chunk
        return _read(self.chunk_schema, chunk, id=self._first.id, created=self._first.created,
                     choices=self.choices(prompt, chunk, whole=False), usage=None)

    def usage_chunk(self, usages: Sequence[Any]) -> schemas.Answer:
        """The last chunk, which ``stream_options.include_usage`` asks for: no choices, the usage."""
        return _read(self.chunk_schema, self._first, choices=[], usage=_sum_usage(usages))


class ChatReply(Reply):
    answer, chunk_schema = schemas.ChatCompletion, schemas.ChatCompletionChunk

    def requests(self) -> list[ChatCompletionRequest]:
        return [chat_request(self.body, self.model)]

    def choices(self, prompt: int, res: Any, whole: bool) -> Sequence[Any]:
        return res.choices

    def has_text(self, chunk: Any) -> bool:
        return any(c.delta.content or c.delta.tool_calls for c in chunk.choices)


class CompletionReply(Reply):
    answer = chunk_schema = schemas.Completion

    def __init__(self, body: schemas.CompletionRequestBody, model: str) -> None:
        super().__init__(body, model)
        self._logprobs = CompletionLogprobsBuilder()

    def requests(self) -> list[CompletionRequest]:
        return completion_requests(self.body, self.model)

    def choices(self, prompt: int, res: Any, whole: bool) -> Sequence[Any]:
        """Prompt i's choices at indices i*n .. i*n+n-1, as OpenAI numbers them."""
        out = []
        for c in res.choices:
            index = prompt * self.body.n + c.index
            logprobs = self._logprobs.build(index, c.text, c.logprobs, whole)
            out.append(_read(schemas.CompletionChoice, c, index=index, logprobs=logprobs))
        return out

    def has_text(self, chunk: Any) -> bool:
        return any(c.text for c in chunk.choices)


class CompletionLogprobsBuilder:
    """Legacy completion logprobs need each token's character offset in the choice's text,
    which continues across the chunks of a stream; this keeps the offset of each choice."""

    def __init__(self) -> None:
        self._offset: dict[int, int] = {}

    def build(self, index: int, text: str, lp: Any, whole: bool) -> schemas.CompletionLogprobs | None:
        if lp is None:
            return None
        lengths = [len(t.token) for t in lp.content]
        # Generated tokens end the text; an echoed prompt (echo=true) comes before them.
        start = max(0, len(text) - sum(lengths)) if whole else self._offset.get(index, max(0, len(text) - sum(lengths)))
        offsets = []
        for n in lengths:
            offsets.append(start)
            start += n
        self._offset[index] = start
        return schemas.CompletionLogprobs(
            tokens=[t.token for t in lp.content],
            token_logprobs=[t.logprob for t in lp.content],
            top_logprobs=[{a.token: a.logprob for a in t.top_logprobs} for t in lp.content],
            text_offset=offsets,
        )


# ----------------------------------------------------------------------------- errors


def error(e: BaseException, *, closing: bool = False) -> APIError:
    """The answer for an exception raised by the Python API: ``ValueError`` (a bad request),
    ``OverflowError`` (a number too large for its field) and ``NotImplementedError`` (a feature
    this build lacks) are the client's fault; ``RuntimeError`` (the runner closed, an engine
    failure) is the server's."""
    message = str(e) or type(e).__name__
    if isinstance(e, ValueError):
        # The engine says which field is wrong, by the Python API's name, and OpenAI's code if any.
        param = getattr(e, "param", None)
        return APIError(400, message, param=_OPENAI_NAMES.get(param, param), code=getattr(e, "code", None))
    if isinstance(e, OverflowError):
        # A JSON integer beyond what the engine's field holds (a seed over 2**64, say).
        return APIError(400, f"a number in the request is out of range ({message})")
    if isinstance(e, NotImplementedError):
        return APIError(400, message, code="unsupported")
    if isinstance(e, RuntimeError) and closing:
        return APIError(503, message, type="server_error", code="shutting_down")
    log.error("request failed: %r", e)
    return APIError(500, message, type="server_error")
