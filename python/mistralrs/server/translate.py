"""OpenAI request bodies to the Python API's requests, and its responses back.

The engine already answers with OpenAI's field names; what changes on the
way out is the layout OpenAI's wire format has and the Python API does not:
legacy completion logprobs (parallel lists), ``usage`` only where the client
asked for it, one id for all the requests of a batched prompt, and choices
re-indexed across that batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, List, Union

from mistralrs import ChatCompletionRequest, CompletionRequest
from mistralrs.server import schemas
from mistralrs.server.errors import bad_request

# A prompt of the legacy completions API after splitting a batch: text or token ids.
Prompt = Union[str, List[int]]

# OpenAI's "developer" role is its newer name for "system"; the chat templates know only the latter.
_ROLE_ALIASES = {"developer": "system"}


# ----------------------------------------------------------------------------- requests


def _text(content: str | list[schemas.ContentPart] | None) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise bad_request(f"content parts of type `{part.type}` are not supported (only `text`)", param="messages")
        texts.append(part.text)
    # vLLM joins text parts with a newline too.
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


def _check_stream_options(body: schemas._Sampling) -> None:
    if body.stream_options is not None and not body.stream:
        raise bad_request("stream_options is only allowed with stream=true", param="stream_options")


def _shared(body: schemas._Sampling, model: str) -> dict[str, Any]:
    """The fields chat and text completions share, under the Python API's names."""
    return dict(
        model=model,
        logit_bias=_logit_bias(body.logit_bias),
        n_choices=body.n,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        stop_seqs=_stops(body.stop),
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        stream=body.stream,
        adapters=body.adapters,
        seed=body.seed,
        ignore_eos=body.ignore_eos,
    )


def chat_request(body: schemas.ChatCompletionRequestBody, model: str) -> ChatCompletionRequest:
    _check_stream_options(body)
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs=true", param="top_logprobs")
    messages = [{"role": _ROLE_ALIASES.get(m.role, m.role), "content": _text(m.content)} for m in body.messages]
    return ChatCompletionRequest(
        messages=messages,
        logprobs=body.logprobs,
        top_logprobs=body.top_logprobs,
        # max_completion_tokens is OpenAI's newer name; it wins when both are sent.
        max_tokens=body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens,
        **_shared(body, model),
        # The engine maps it onto its JSON-schema grammar (SPEC §1), and says what is wrong with it.
        response_format=None if body.response_format is None else body.response_format.model_dump(exclude_none=True),
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
            echo_prompt=body.echo,
            best_of=best_of,
            max_tokens=body.max_tokens,
            logprobs=body.logprobs is not None,
            top_logprobs=body.logprobs,
            suffix=body.suffix,
            **_shared(body, model),
        )
        for prompt in completion_prompts(body)
    ]


# ----------------------------------------------------------------------------- responses


def usage(u: Any) -> schemas.Usage:
    details = u.prompt_tokens_details
    return schemas.Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        total_tokens=u.total_tokens,
        prompt_tokens_details=schemas.PromptTokensDetails(cached_tokens=details.cached_tokens) if details else None,
    )


def sum_usage(us: Sequence[schemas.Usage]) -> schemas.Usage:
    """The usage of a batch: its requests' counts added up."""
    cached = sum(u.prompt_tokens_details.cached_tokens for u in us if u.prompt_tokens_details)
    return schemas.Usage(
        prompt_tokens=sum(u.prompt_tokens for u in us),
        completion_tokens=sum(u.completion_tokens for u in us),
        total_tokens=sum(u.total_tokens for u in us),
        prompt_tokens_details=schemas.PromptTokensDetails(cached_tokens=cached),
    )


def _chat_logprobs(lp: Any) -> schemas.ChoiceLogprobs | None:
    if lp is None:
        return None
    return schemas.ChoiceLogprobs(
        content=[
            schemas.TokenLogprob(
                token=t.token,
                logprob=t.logprob,
                bytes=t.bytes,
                top_logprobs=[schemas.TopLogprob(token=a.token, logprob=a.logprob, bytes=a.bytes) for a in t.top_logprobs],
            )
            for t in lp.content
        ]
    )


def chat_completion(res: Any, rid: str, created: int, model: str) -> schemas.ChatCompletion:
    return schemas.ChatCompletion(
        id=rid,
        created=created,
        model=model,
        system_fingerprint=res.system_fingerprint,
        choices=[
            schemas.ChatChoice(
                index=c.index,
                message=schemas.AssistantMessage(content=c.message.content),
                finish_reason=c.finish_reason,
                logprobs=_chat_logprobs(c.logprobs),
            )
            for c in res.choices
        ],
        usage=usage(res.usage),
    )


def chat_chunk(chunk: Any, rid: str, created: int, model: str) -> schemas.ChatCompletionChunk:
    """A streamed chat chunk; its ``usage`` is left to the final chunk that include_usage asks for."""
    return schemas.ChatCompletionChunk(
        id=rid,
        created=created,
        model=model,
        system_fingerprint=chunk.system_fingerprint,
        choices=[
            schemas.ChatChunkChoice(
                index=c.index,
                delta=schemas.Delta(role=c.delta.role, content=c.delta.content),
                finish_reason=c.finish_reason,
                logprobs=_chat_logprobs(c.logprobs),
            )
            for c in chunk.choices
        ],
    )


def usage_chunk_chat(u: schemas.Usage, rid: str, created: int, model: str,
                     fingerprint: str | None) -> schemas.ChatCompletionChunk:
    return schemas.ChatCompletionChunk(id=rid, created=created, model=model, system_fingerprint=fingerprint, choices=[], usage=u)


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


def completion(results: Sequence[Any], n: int, rid: str, created: int, model: str) -> schemas.Completion:
    """The whole responses of a batch's requests as one completion; prompt i's choices come
    at indices i*n .. i*n+n-1, as OpenAI numbers them."""
    builder = CompletionLogprobsBuilder()
    choices = [
        schemas.CompletionChoice(
            index=i * n + c.index,
            text=c.text,
            finish_reason=c.finish_reason,
            logprobs=builder.build(i * n + c.index, c.text, c.logprobs, whole=True),
        )
        for i, res in enumerate(results)
        for c in res.choices
    ]
    return schemas.Completion(
        id=rid,
        created=created,
        model=model,
        system_fingerprint=results[0].system_fingerprint if results else None,
        choices=choices,
        usage=sum_usage([usage(r.usage) for r in results]),
    )


def completion_chunk(chunk: Any, prompt_index: int, n: int, rid: str, created: int, model: str,
                     builder: CompletionLogprobsBuilder) -> schemas.Completion:
    choices = []
    for c in chunk.choices:
        index = prompt_index * n + c.index
        logprobs = builder.build(index, c.text, c.logprobs, whole=False)
        choices.append(schemas.CompletionChoice(index=index, text=c.text, finish_reason=c.finish_reason, logprobs=logprobs))
    return schemas.Completion(id=rid, created=created, model=model, system_fingerprint=chunk.system_fingerprint, choices=choices)


def usage_chunk_completion(u: schemas.Usage, rid: str, created: int, model: str,
                           fingerprint: str | None) -> schemas.Completion:
    return schemas.Completion(id=rid, created=created, model=model, system_fingerprint=fingerprint, choices=[], usage=u)
