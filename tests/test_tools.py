"""Tool calling in the Python API (ChatCompletionRequest(tools=..., tool_choice=...)).

The reference for a call is OpenAI's contract, checked with ``jsonschema`` (an independent validator):
with ``tool_choice="required"`` or a named function every answer is calls of the listed tools whose
arguments validate against that tool's ``parameters``; ``parallel_tool_calls=False`` gives exactly one
call; ``"none"`` gives text. They run on SmolLM2-135M (CI) in each of the four call formats: its
template has no tool support (the generic JSON format), and ``Runner(tool_call_format=...)`` puts the
Hermes, Mistral and Llama 3 formats' grammars and parsers to work on the same model. A stream's tool-call
deltas reassemble to the non-streamed calls. Qwen2.5-Coder, whose template teaches the Hermes format,
is in tests/test_tools_qwen.py (slow).
"""

from __future__ import annotations

import json

import jsonschema
import pytest
from mistralrs import ChatCompletionRequest, Runner
from tool_sets import TIME, TOOL_SETS, WEATHER

FORMATS = ["generic", "hermes", "mistral", "llama3_json"]


@pytest.fixture(scope="module")
def runners(smollm2_which):
    made = {f: Runner(which=smollm2_which, tool_call_format=f, max_seqs=8, kv_cache_mb=256) for f in FORMATS}
    yield made
    for r in made.values():
        r.close()


def ask(runner, question, tools, **kwargs):
    kwargs.setdefault("max_tokens", 192)
    req = ChatCompletionRequest(model="t", messages=[{"role": "user", "content": question}], tools=tools,
                                temperature=0.0, **kwargs)
    return runner.send_chat_completion_request(req)


def check_calls(choice, tools, *, names=None, most=None):
    """The choice is calls of the listed tools (or of ``names``) whose arguments validate."""
    assert choice.finish_reason == "tool_calls", (choice.finish_reason, choice.message.content)
    calls = choice.message.tool_calls
    assert calls, choice.message.content
    if most is not None:
        assert len(calls) <= most
    by_name = {t["function"]["name"]: t["function"] for t in tools}
    for c in calls:
        assert c.type == "function" and c.id
        assert c.function.name in (names or by_name), c.function.name
        args = json.loads(c.function.arguments)
        schema = by_name[c.function.name].get("parameters", {"type": "object"})
        jsonschema.validate(args, schema)
    return calls


def test_the_template_decides_the_format(smollm2_runner, runners):
    assert smollm2_runner.tool_call_format == "generic"
    assert {f: r.tool_call_format for f, r in runners.items()} == {f: f for f in FORMATS}


@pytest.mark.parametrize("fmt", FORMATS)
def test_required_gives_valid_calls_of_listed_tools(runners, fmt):
    for tools, question in TOOL_SETS[:10]:
        res = ask(runners[fmt], question, tools, tool_choice="required")
        check_calls(res.choices[0], tools)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_named_function_is_the_one_called(runners, fmt):
    for tools, question in TOOL_SETS[10:]:
        name = tools[-1]["function"]["name"]
        choice = {"type": "function", "function": {"name": name}}
        res = ask(runners[fmt], question, tools, tool_choice=choice, parallel_tool_calls=False)
        calls = check_calls(res.choices[0], tools, names=[name], most=1)
        assert len(calls) == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_none_gives_text(runners, fmt):
    res = ask(runners[fmt], "What's the weather like in Paris?", [WEATHER, TIME], tool_choice="none", max_tokens=24)
    c = res.choices[0]
    assert c.message.tool_calls is None and c.finish_reason in ("stop", "length")
    assert isinstance(c.message.content, str) and c.message.content


def test_auto_answers_in_text_or_calls_and_never_malformed(runners):
    """With auto the model chooses; whatever it chooses is well-formed (the generic format's answer is
    JSON either way, so each answer is text or valid calls)."""
    for tools, question in TOOL_SETS[:6]:
        res = ask(runners["generic"], question, tools)
        c = res.choices[0]
        if c.message.tool_calls:
            check_calls(c, tools)
        else:
            assert c.finish_reason in ("stop", "length") and c.message.content is not None


@pytest.mark.parametrize("fmt", FORMATS)
def test_streamed_deltas_reassemble_to_the_calls(runners, fmt):
    tools, question = TOOL_SETS[1]
    whole = ask(runners[fmt], question, tools, tool_choice="required")
    calls: dict[int, dict] = {}
    text, finish = "", None
    stream = ask(runners[fmt], question, tools, tool_choice="required", stream=True)
    for chunk in stream:
        ch = chunk.choices[0]
        text += ch.delta.content or ""
        for d in ch.delta.tool_calls or []:
            slot = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
            if d.id:
                assert slot["id"] is None, "an id comes once, on the call's first delta"
                slot["id"] = d.id
                assert d.function.name and d.type == "function"
                slot["name"] = d.function.name
            slot["arguments"] += d.function.arguments
        finish = ch.finish_reason or finish
    assert finish == "tool_calls"
    want = [(c.function.name, c.function.arguments) for c in whole.choices[0].message.tool_calls]
    assert [(calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)] == want
    assert all(c["id"] for c in calls.values())
    assert text == (whole.choices[0].message.content or "")


@pytest.mark.parametrize("fmt", FORMATS)
def test_parallel_tool_calls_false_gives_one_call(runners, fmt):
    res = ask(runners[fmt], "What's the weather in Paris and in Rome?", [WEATHER], tool_choice="required",
              parallel_tool_calls=False)
    assert len(check_calls(res.choices[0], [WEATHER])) == 1


def test_a_round_trip_reaches_a_final_answer(runners):
    """Call, tool result, answer: the history's call (arguments as JSON text, as OpenAI clients send
    it) and the tool turn render, and the model answers."""
    for fmt in FORMATS:
        r = runners[fmt]
        first = ask(r, "What's the weather like in Paris?", [WEATHER], tool_choice="required")
        call = check_calls(first.choices[0], [WEATHER])[0]
        messages = [
            {"role": "user", "content": "What's the weather like in Paris?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call.id, "type": "function",
                 "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
            {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "condition": "sunny"}'},
        ]
        req = ChatCompletionRequest(model="t", messages=messages, tools=[WEATHER], tool_choice="none",
                                    temperature=0.0, max_tokens=32)
        final = r.send_chat_completion_request(req).choices[0]
        assert final.message.tool_calls is None and final.message.content


def test_bad_tools_are_value_errors_naming_the_field(tiny_runner):
    def send(**kw):
        return tiny_runner.send_chat_completion_request(ChatCompletionRequest(
            model="t", messages=[{"role": "user", "content": "hi"}], max_tokens=4, **kw))

    cases = [
        (dict(tools=[{"type": "function", "function": {"name": "has space"}}]), "tools", "not allowed"),
        (dict(tools=[{"type": "retrieval"}]), "tools", "must be \"function\""),
        (dict(tools=[WEATHER, WEATHER]), "tools", "given twice"),
        (dict(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice",
         "not among the tools"),
        (dict(tool_choice="required"), "tool_choice", "requires tools"),
        (dict(tools=[WEATHER], tool_choice="maybe"), "tool_choice", "unknown"),
        (dict(tools=[WEATHER], response_format={"type": "json_object"}), "tools", "cannot be combined"),
        (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
            "x": {"$ref": "#/$defs/missing"}}}}}], tool_choice="required"), "tools", "grammar"),
    ]
    for kw, param, words in cases:
        with pytest.raises(ValueError, match=words) as e:
            send(**kw)
        assert e.value.param == param, (kw, e.value.param, str(e.value))
    # The runner keeps serving.
    assert send().choices[0].message.content is not None


def test_history_messages_are_checked(tiny_runner):
    bad = [
        [{"role": "assistant"}],
        [{"role": "user", "content": "hi", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}],
        [{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}],
    ]
    for messages in bad:
        with pytest.raises(ValueError) as e:
            tiny_runner.send_chat_completion_request(ChatCompletionRequest(model="t", messages=messages, max_tokens=2))
        assert e.value.param == "messages", str(e.value)
