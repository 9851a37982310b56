"""Tool calling in the Python API (ChatCompletionRequest(tools=..., tool_choice=...)).

The reference for a call is OpenAI's contract, checked with ``jsonschema`` (an independent validator):
with ``tool_choice="required"`` or a named function every answer is calls of the listed tools whose
arguments validate against that tool's ``parameters``; ``parallel_tool_calls=False`` gives exactly one
call; ``"none"`` gives text. Each of the four call formats is run (``Runner(tool_call_format=...)``):

- on the tiny random llama, sampled: junk without a grammar, so every valid call is the grammar's
  doing, on all 20 tool sets (a random model ends its strings, where a small real one can loop);
- on SmolLM2-135M, greedy: its template has no tool support, so the tools are described in a system
  message in the format's own words; it calls the right tool, streams, and finishes a round trip.

Qwen2.5-Coder, whose template teaches the Hermes format, is in tests/test_tools_qwen.py (slow).
"""

from __future__ import annotations

import json

import jsonschema
import pytest
from mistralrs import ChatCompletionRequest, Runner, Which
from tool_sets import TIME, TOOL_SETS, WEATHER

FORMATS = ["generic", "hermes", "mistral", "llama3_json"]


@pytest.fixture(scope="module")
def runners(smollm2_which):
    made = {f: Runner(which=smollm2_which, tool_call_format=f, max_seqs=8, kv_cache_mb=256) for f in FORMATS}
    yield made
    for r in made.values():
        r.close()


@pytest.fixture(scope="module")
def tiny(llama_tiny_dir):
    which = Which.Plain(model_id=str(llama_tiny_dir), arch="llama")
    made = {f: Runner(which=which, tool_call_format=f, max_seqs=8, kv_cache_mb=64) for f in FORMATS}
    yield made
    for r in made.values():
        r.close()


def bounded(schema):
    """``schema`` with its free strings at most 12 characters, lists at most 3 items and numbers integers
    within ±1000: a random model ends a string (or a number) once in hundreds of tokens, and the tiny model's
    context is 256. Every output valid against the bounded schema is valid against the original."""
    if isinstance(schema, list):
        return [bounded(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: bounded(v) for k, v in schema.items()}
    if out.get("type") == "string" and not {"enum", "const", "pattern", "format"} & out.keys():
        out["maxLength"] = 12
    if out.get("type") == "array":
        out.setdefault("maxItems", 3)
    if out.get("type") == "number":  # fractions a random model never ends; an integer is a number
        out["type"] = "integer"
    if out.get("type") in ("integer", "number") and "enum" not in out:
        out.setdefault("minimum", -1000)
        out.setdefault("maximum", 1000)
    return out


def sampled(runner, question, tools, seed, **kwargs):
    """Four sampled answers of the tiny model. Its context (256 tokens of a 384-piece vocabulary) has no
    room for the tools' description, so the prompt is an already-templated string (no tools rendered):
    what is tested is the grammar, which is the same whatever the prompt."""
    # The end token is one of ~400 for a random model: raised, answers end where the grammar lets them
    # (it is allowed only once the calls are complete) instead of listing calls until max_tokens.
    eos = runner.tokenize("</s>", add_special_tokens=False)[0]
    req = ChatCompletionRequest(model="t", messages=f"<|user|>{question}<|assistant|>", tools=bounded(tools),
                                temperature=1.0, seed=seed, n_choices=4, max_tokens=180, logit_bias={eos: 4.0},
                                **kwargs)
    return runner.send_chat_completion_request(req)


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
def test_required_gives_valid_calls_of_listed_tools(tiny, fmt):
    for i, (tools, question) in enumerate(TOOL_SETS):
        res = sampled(tiny[fmt], question, tools, seed=i, tool_choice="required", parallel_tool_calls=False)
        for c in res.choices:
            check_calls(c, bounded(tools))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_named_function_is_the_one_called_once(tiny, fmt):
    for i, (tools, question) in enumerate(TOOL_SETS):
        name = tools[-1]["function"]["name"]
        choice = {"type": "function", "function": {"name": name}}
        res = sampled(tiny[fmt], question, tools, seed=100 + i, tool_choice=choice, parallel_tool_calls=False)
        for c in res.choices:
            assert len(check_calls(c, bounded(tools), names=[name])) == 1


def test_the_tiny_model_writes_no_calls_on_its_own(tiny):
    """Without the grammar (tool_choice none) the random model's output is no call at all: the calls
    above are the grammar's work, not luck."""
    tools, question = TOOL_SETS[0]
    res = sampled(tiny["hermes"], question, tools, seed=1, tool_choice="none")
    assert all(c.message.tool_calls is None for c in res.choices)


def test_smollm2_calls_the_right_tool(runners):
    for fmt in FORMATS:
        res = ask(runners[fmt], "What's the weather like in Paris?", [WEATHER, TIME], tool_choice="required",
                  parallel_tool_calls=False)
        call = check_calls(res.choices[0], [WEATHER, TIME])[0]
        assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] == "Paris", fmt


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
        res = ask(runners["generic"], question, tools, parallel_tool_calls=False)
        c = res.choices[0]
        if c.message.tool_calls:
            check_calls(c, tools)
        else:
            assert c.finish_reason in ("stop", "length") and c.message.content is not None


@pytest.mark.parametrize("fmt", FORMATS)
def test_streamed_deltas_reassemble_to_the_calls(runners, fmt):
    question = "What's the weather like in Paris?"
    for kw in ({"tool_choice": "required", "parallel_tool_calls": False}, {"tool_choice": "auto"}):
        whole = ask(runners[fmt], question, [WEATHER, TIME], **kw)
        calls: dict[int, dict] = {}
        text, finish = "", None
        for chunk in ask(runners[fmt], question, [WEATHER, TIME], stream=True, **kw):
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
        w = whole.choices[0]
        assert finish == w.finish_reason
        want = [(c.function.name, c.function.arguments) for c in w.message.tool_calls or []]
        assert [(calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)] == want
        assert all(c["id"] for c in calls.values())
        assert text == (w.message.content or "")


@pytest.mark.parametrize("fmt", FORMATS)
def test_parallel_tool_calls_false_gives_one_call(tiny, fmt):
    res = sampled(tiny[fmt], "What's the weather in Paris and in Rome?", [WEATHER], seed=5, tool_choice="required",
                  parallel_tool_calls=False)
    for c in res.choices:
        assert len(check_calls(c, [WEATHER])) == 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_with_parallel_calls_allowed_answers_are_valid_calls_or_cut_off(tiny, fmt):
    """Several calls allowed: a random model lists calls as long as it likes; each answer is complete
    valid calls, or calls cut off by max_tokens, which stay text (a call is never malformed). That the
    grammar takes two calls here and refuses them without parallel calls is the Rust test
    `tools::grammar::tests::the_grammars_take_calls_and_text_and_refuse_malformed_calls`; Qwen writing
    two calls for two cities is tests/test_tools_qwen.py."""
    for seed in range(4):
        res = sampled(tiny[fmt], "What's the weather in Paris and in Rome?", [WEATHER, TIME], seed=200 + seed,
                      tool_choice="required")
        for c in res.choices:
            if c.message.tool_calls is not None:  # complete calls (max_tokens may have come right after)
                tools = {t["function"]["name"]: t["function"]["parameters"] for t in bounded([WEATHER, TIME])}
                for call in c.message.tool_calls:
                    jsonschema.validate(json.loads(call.function.arguments), tools[call.function.name])
            else:
                assert c.finish_reason == "length" and c.message.content


def test_a_round_trip_reaches_a_final_answer(runners):
    """Call, tool result, answer: the history's call (arguments as JSON text, as OpenAI clients send
    it) and the tool turn render, and the model answers."""
    for fmt in FORMATS:
        r = runners[fmt]
        first = ask(r, "What's the weather like in Paris?", [WEATHER], tool_choice="required", parallel_tool_calls=False)
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
        [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "a", "content": "x"}],
        [{"role": "user", "content": "hi"},
         {"role": "assistant", "content": None, "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": "{}"}}]},
         {"role": "tool", "tool_call_id": "b", "content": "x"}],
    ]
    for messages in bad:
        with pytest.raises(ValueError) as e:
            tiny_runner.send_chat_completion_request(ChatCompletionRequest(model="t", messages=messages, max_tokens=2))
        assert e.value.param == "messages", str(e.value)
