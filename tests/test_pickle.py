"""Requests and responses pickle (multiprocessing, Ray Serve replicas answering an ingress in
another process): a round trip gives back equal values, streamed chunks and tool calls included."""

from __future__ import annotations

import json
import pickle

import pytest

from mistralrs import ChatCompletionRequest, CompletionRequest


def _fields(obj):
    """Every attribute, recursively, as plain data: what a round trip must keep."""
    if isinstance(obj, (list, tuple)):
        return [_fields(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _fields(v) for k, v in obj.items()}
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    return {name: _fields(getattr(obj, name)) for name in dir(obj)
            if not name.startswith("_") and not callable(getattr(obj, name))}


def test_requests_round_trip():
    chat = ChatCompletionRequest(
        model="m", messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}], max_tokens=7,
        temperature=0.5, top_k=3, stop_seqs=["x"], logit_bias={5: -1.0}, seed=2**63, stream=True,
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        tool_choice="auto", response_format={"type": "json_object"}, adapters=["a"], parallel_tool_calls=False)
    completion = CompletionRequest(prompt=[1, 2, 3], model="m", echo_prompt=True, best_of=2, n_choices=2,
                                   grammar="root ::= \"a\"", grammar_type="lark", suffix=None, ignore_eos=True)
    for req in (chat, completion):
        back = pickle.loads(pickle.dumps(req))
        assert type(back) is type(req)
        assert _fields(back) == _fields(req)


def test_responses_round_trip(tiny_runner):
    req = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hello"}], max_tokens=5,
                                temperature=0.0, logprobs=True, top_logprobs=2)
    res = tiny_runner.send_chat_completion_request(req)
    back = pickle.loads(pickle.dumps(res))
    assert type(back) is type(res)
    assert _fields(back) == _fields(res)
    assert back.choices[0].logprobs.content[0].logprob == res.choices[0].logprobs.content[0].logprob

    req.stream = True
    chunks = list(tiny_runner.send_chat_completion_request(req))
    assert [_fields(pickle.loads(pickle.dumps(c))) for c in chunks] == [_fields(c) for c in chunks]

    text = tiny_runner.send_completion_request(CompletionRequest(prompt="a b", model="m", max_tokens=3))
    assert _fields(pickle.loads(pickle.dumps(text))) == _fields(text)


def test_corrupt_pickle_is_a_value_error():
    from mistralrs import ChatCompletionResponse

    with pytest.raises(ValueError, match="missing field"):
        ChatCompletionResponse._from_json(json.dumps({"id": "x"}))


def test_floats_come_back_to_the_last_bit():
    """Python's own float parsing is the reference: serde_json's default parser is off by one unit in
    the last place on some of these (it was, on the rates of a CI run)."""
    from mistralrs import Usage

    texts = ["11262.904825169213", "11829.349799788255", "12359.411692003461", "10725.470848170235", "1e-7",
             "0.1", "123456.78901234567"]
    for t in texts:
        fields = dict(prompt_tokens=1, completion_tokens=2, total_tokens=3, avg_tok_per_sec=float(t),
                      avg_prompt_tok_per_sec=0.0, avg_compl_tok_per_sec=float(t), total_time_sec=float(t),
                      total_prompt_time_sec=0.0, total_completion_time_sec=0.0,
                      prompt_tokens_details={"cached_tokens": 0}, acceptance_rate=None)
        usage = Usage._from_json(json.dumps(fields))
        assert usage.avg_tok_per_sec == float(t)
        back = pickle.loads(pickle.dumps(usage))
        assert (back.avg_tok_per_sec, back.total_time_sec) == (float(t), float(t))
