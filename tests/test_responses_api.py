"""OpenAI's Responses API on the server (``POST /v1/responses``, what the OpenAI Agents SDK calls),
run as ``python -m mistralrs serve`` and driven by the official ``openai`` client, sync and async,
streamed and not.

References: the ``openai`` package's own types (every answer validates as
``openai.types.responses.Response``, every streamed event as a ``ResponseStreamEvent``, and its
``responses.stream()`` helper rebuilds the response from the events); the Python API's greedy
output for the chat messages a request stands for (so ``instructions``, ``input`` items and
``previous_response_id`` are checked by what the model saw); ``jsonschema`` for ``text.format``
outputs. The model is SmolLM2-135M (greedy); the store's bound runs on the tiny llama.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
jsonschema = pytest.importorskip("jsonschema")
pydantic = pytest.importorskip("pydantic")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from mistralrs import ChatCompletionRequest  # noqa: E402
from openai.types.responses import Response, ResponseStreamEvent  # noqa: E402
from server_support import ServerProcess  # noqa: E402
from tool_sets import TIME, WEATHER  # noqa: E402

EVENT = pydantic.TypeAdapter(ResponseStreamEvent)

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
    "required": ["city", "n"],
    "additionalProperties": False,
}

INSTRUCTIONS = "You are a helpful assistant. Answer in one short sentence."
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def server(smollm2_path):
    with ServerProcess(["--gguf", str(smollm2_path), "--served-model-name", "smollm2"]) as s:
        yield s


@pytest.fixture(scope="module")
def c(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def valid(r: Any) -> Response:
    """``r`` (a parsed Response) re-validated from its JSON, as the official type."""
    return Response.model_validate(json.loads(r.to_json()))


def python_api(runner, messages, max_tokens):
    """The Python API's greedy answer to ``messages``: (text, prompt tokens, completion tokens, finish reason)."""
    res = runner.send_chat_completion_request(
        ChatCompletionRequest(model="m", messages=messages, temperature=0.0, max_tokens=max_tokens))
    ch = res.choices[0]
    return ch.message.content, res.usage.prompt_tokens, res.usage.completion_tokens, ch.finish_reason


def sse_events(server, body: dict) -> list[dict]:
    """The raw events of a streamed request, each checked against its ``event:`` name."""
    with httpx.stream("POST", f"{server.url}/v1/responses", json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = []
    for block in raw.strip().split("\n\n"):
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), block
        event = json.loads(data[len("data: "):])
        assert event["type"] == name[len("event: "):]
        events.append(event)
    return events


# ----------------------------------------------------------------------------- whole responses


def test_a_response_is_the_chat_answer_to_its_instructions_and_input(c, smollm2_runner):
    r = valid(c.responses.create(model="smollm2", instructions=INSTRUCTIONS, input=QUESTION, temperature=0,
                                 max_output_tokens=40))
    text, prompt, completion, finish = python_api(
        smollm2_runner, [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": QUESTION}], 40)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "smollm2" and r.error is None
    assert r.output_text == text and text
    assert [o.type for o in r.output] == ["message"]
    msg = r.output[0]
    assert msg.role == "assistant" and msg.id.startswith("msg_") and msg.content[0].type == "output_text"
    assert (r.usage.input_tokens, r.usage.output_tokens) == (prompt, completion)
    assert r.usage.total_tokens == prompt + completion and r.usage.output_tokens_details.reasoning_tokens == 0
    assert r.status == ("completed" if finish == "stop" else "incomplete")
    # The request's settings are echoed.
    assert (r.instructions, r.temperature, r.max_output_tokens, r.tools, r.tool_choice) == (INSTRUCTIONS, 0, 40, [], "auto")
    assert r.text.format.type == "text" and r.previous_response_id is None


def test_input_items_are_the_conversation(c, smollm2_runner):
    """Message items, with input_text and output_text parts (an earlier answer sent back, as the
    Agents SDK does), developer messages as system ones."""
    items = [
        {"role": "developer", "content": "Answer briefly."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Name a fruit."}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "An apple.", "annotations": []}]},
        {"role": "user", "content": "Another one?"},
    ]
    r = valid(c.responses.create(model="smollm2", input=items, temperature=0, max_output_tokens=24))
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a fruit."},
                {"role": "assistant", "content": "An apple."}, {"role": "user", "content": "Another one?"}]
    text, prompt, _, _ = python_api(smollm2_runner, messages, 24)
    assert r.output_text == text and r.usage.input_tokens == prompt


def test_max_output_tokens_makes_an_incomplete_response(c, server):
    r = valid(c.responses.create(model="smollm2", input="Write a long story about a dragon.", max_output_tokens=5,
                                 temperature=0))
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 5 and r.output[0].status == "incomplete"
    events = sse_events(server, {"input": "Write a long story about a dragon.", "max_output_tokens": 5, "temperature": 0})
    assert events[-1]["type"] == "response.incomplete"
    final = valid(Response.model_validate(events[-1]["response"]))
    assert final.output_text == r.output_text and final.incomplete_details.reason == "max_output_tokens"


# ----------------------------------------------------------------------------- streams


def test_stream_events_come_in_openais_order_and_rebuild_the_whole_response(c, server):
    body = {"instructions": INSTRUCTIONS, "input": QUESTION, "temperature": 0, "max_output_tokens": 40}
    whole = valid(c.responses.create(model="smollm2", **body))
    events = sse_events(server, body)
    for e in events:
        EVENT.validate_python(e)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    types = [e["type"] for e in events]
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert len(deltas) > 1
    assert types == (["response.created", "response.in_progress", "response.output_item.added",
                      "response.content_part.added"] + ["response.output_text.delta"] * len(deltas)
                     + ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                        f"response.{whole.status}"])
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    item_id = events[2]["item"]["id"]
    assert all(e["item_id"] == item_id and e["output_index"] == 0 for e in deltas)
    text = "".join(e["delta"] for e in deltas)
    assert text == whole.output_text == events[-2]["item"]["content"][0]["text"] == events[-4]["text"]
    final = valid(Response.model_validate(events[-1]["response"]))
    assert final.id == events[0]["response"]["id"] and final.output_text == text
    assert (final.usage.input_tokens, final.usage.output_tokens) == (whole.usage.input_tokens, whole.usage.output_tokens)

    # The openai client's stream helper rebuilds the same response from the events.
    with c.responses.stream(model="smollm2", **body) as stream:
        helper_deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        got = stream.get_final_response()
    assert "".join(helper_deltas) == got.output_text == whole.output_text
    assert valid(got).status == whole.status


def test_async_client_streams_and_whole_responses(server):
    questions = ["What is the capital of Germany?", "What is 2 + 2?", "Name a primary colour."]

    async def main():
        c = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)

        async def whole(q):
            return (await c.responses.create(model="smollm2", input=q, temperature=0, max_output_tokens=16)).output_text

        async def streamed(q):
            stream = await c.responses.create(model="smollm2", input=q, temperature=0, max_output_tokens=16, stream=True)
            return "".join([e.delta async for e in stream if e.type == "response.output_text.delta"])

        return await asyncio.gather(*(whole(q) for q in questions), *(streamed(q) for q in questions))

    got = asyncio.run(main())
    assert got[:3] == got[3:] and all(got)


def test_an_engine_error_mid_stream_is_an_error_event_then_response_failed(smollm2_path):
    """SIGTERM closes the runner after the grace period, which fails a stream in flight."""
    server = ServerProcess(["--gguf", str(smollm2_path), "--shutdown-grace", "0.5"])
    events = []
    try:
        body = {"input": "Write a very long story about a dragon.", "max_output_tokens": 4000, "temperature": 0,
                "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/responses", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[len("data: "):]))
                    if len(events) == 6:
                        server.terminate()
        assert server.proc.wait(timeout=15) == 0
    finally:
        server.stop()
    for e in events:
        EVENT.validate_python(e)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"], events[-3:]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert "closed" in events[-2]["message"]
    failed = Response.model_validate(events[-1]["response"])
    assert failed.status == "failed" and failed.error.code == "server_error" and failed.id == events[0]["response"]["id"]
    assert failed.output_text == "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


# ----------------------------------------------------------------------------- structured output


def test_text_format_json_schema_and_json_object(c, server):
    fmt = {"type": "json_schema", "name": "city", "schema": SCHEMA, "strict": True}
    r = valid(c.responses.create(model="smollm2", input="Name a city as JSON.", text={"format": fmt}, temperature=0,
                                 max_output_tokens=60))
    assert r.status == "completed"
    jsonschema.validate(json.loads(r.output_text), SCHEMA)
    assert r.text.format.type == "json_schema" and r.text.format.name == "city"
    events = sse_events(server, {"input": "Name a city as JSON.", "text": {"format": fmt}, "temperature": 0,
                                 "max_output_tokens": 60})
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == r.output_text
    r = valid(c.responses.create(model="smollm2", input="Name a city as JSON.", text={"format": {"type": "json_object"}},
                                 temperature=0, max_output_tokens=120))
    assert r.status == "completed" and isinstance(json.loads(r.output_text), dict)


def test_the_clients_parse_helper_gets_its_pydantic_model(c):
    class City(pydantic.BaseModel):
        city: str
        n: int

    r = c.responses.parse(model="smollm2", input="Name a city and a digit as JSON.", text_format=City, temperature=0,
                          max_output_tokens=60)
    assert isinstance(r.output_parsed, City)


# ----------------------------------------------------------------------------- previous_response_id and the store


def test_previous_response_id_continues_the_conversation(c, smollm2_runner):
    first = c.responses.create(model="smollm2", instructions="Be brief.", input="My name is Ada. Say hello to me.",
                               temperature=0, max_output_tokens=24)
    second = valid(c.responses.create(model="smollm2", input="What is my name?", previous_response_id=first.id,
                                      temperature=0, max_output_tokens=24))
    assert second.previous_response_id == first.id
    # The model saw the first turn, its answer and the new input; not the first turn's instructions
    # (OpenAI's rule: instructions are not carried over).
    messages = [{"role": "user", "content": "My name is Ada. Say hello to me."},
                {"role": "assistant", "content": first.output_text}, {"role": "user", "content": "What is my name?"}]
    text, prompt, _, _ = python_api(smollm2_runner, messages, 24)
    assert second.output_text == text and second.usage.input_tokens == prompt
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens - 5
    # The first turn's prompt blocks came from the prefix cache.
    assert second.usage.input_tokens_details.cached_tokens > 0

    # A chain: the third turn continues the second, and so both earlier turns.
    third = c.responses.create(model="smollm2", input="Thanks!", previous_response_id=second.id, temperature=0,
                               max_output_tokens=8)
    assert third.usage.input_tokens > second.usage.input_tokens + second.usage.output_tokens - 5


def test_a_streamed_response_is_stored_and_continued(c):
    events = list(c.responses.create(model="smollm2", input="My favourite number is 7.", temperature=0,
                                     max_output_tokens=12, stream=True))
    assert events[-1].type in ("response.completed", "response.incomplete")
    first = events[-1].response
    assert c.responses.retrieve(first.id).output_text == first.output_text
    second = c.responses.create(model="smollm2", input="What is it?", previous_response_id=first.id, temperature=0,
                                max_output_tokens=12)
    assert second.usage.input_tokens > first.usage.input_tokens


def test_retrieve_delete_and_store_false(c):
    r = c.responses.create(model="smollm2", input="Hi", temperature=0, max_output_tokens=4)
    got = valid(c.responses.retrieve(r.id))
    assert got.id == r.id and got.output_text == r.output_text and got.usage == r.usage
    c.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError) as e:
        c.responses.create(model="smollm2", input="Hi", previous_response_id=r.id, max_output_tokens=4)
    assert e.value.body["param"] == "previous_response_id" and e.value.body["type"] == "invalid_request_error"
    unstored = c.responses.create(model="smollm2", input="Hi", store=False, max_output_tokens=4)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(unstored.id)


def test_the_store_keeps_the_most_recently_used(llama_tiny_dir):
    with ServerProcess(["--model-id", str(llama_tiny_dir), "--arch", "llama", "--max-stored-responses", "2"]) as s:
        c = openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0, timeout=60)
        a, b = (c.responses.create(model="tiny", input=t, max_output_tokens=2).id for t in ("a", "b"))
        c.responses.retrieve(a)  # a is now the most recently used
        c.responses.create(model="tiny", input="c", max_output_tokens=2)
        c.responses.retrieve(a)
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve(b)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("body,param,reason", [
    ({"input": 5}, "input", "invalid type"),
    ({"input": [{"content": "no role"}]}, "input.0.role", "is required"),
    ({"input": [{"type": "reasoning", "summary": []}]}, "input.0.type", "not supported"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]}, "input.0.content",
     "not supported"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input.0.call_id", "is required"),
    ({"input": "Hi", "tools": [{"type": "web_search"}]}, "tools.0.type", "not supported"),
    ({"input": "Hi", "tool_choice": "sometimes"}, "tool_choice", "unknown tool_choice"),
    ({"input": "Hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema", "needs a `schema`"),
    # The engine names no field for a grammar that admits no output (as on the chat endpoint).
    ({"input": "Hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"$ref": "#"}}}}, None,
     "no output can match"),
    ({"input": "Hi", "top_p": 0.0}, "top_p", ""),
    ({"input": "Hi", "max_output_tokens": "5"}, "max_output_tokens", ""),
])
def test_bad_requests_are_400s_in_openais_shape_and_the_server_keeps_serving(c, server, body, param, reason):
    r = httpx.post(f"{server.url}/v1/responses", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and reason in err["message"], err
    with pytest.raises(openai.BadRequestError):
        c.responses.create(model="smollm2", **body)
    assert c.responses.create(model="smollm2", input="Hi", max_output_tokens=2).usage.output_tokens == 2


# ----------------------------------------------------------------------------- translation (no model)


def test_items_tools_and_formats_translate_to_the_chat_shapes():
    """Reference: OpenAI's chat shapes for the same conversation (assistant ``tool_calls`` with the
    call ids, ``tool`` messages answering them, nested function tools, ``response_format``)."""
    from mistralrs.server import responses, schemas

    body = schemas.ResponsesRequestBody.model_validate({
        "instructions": "Use the tools.",
        "input": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking."}]},
            {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "weather", "arguments": '{"city":"Paris"}'},
            {"type": "function_call", "id": "fc_2", "call_id": "call_b", "name": "weather", "arguments": '{"city":"Rome"}'},
            {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
            {"type": "function_call_output", "call_id": "call_b", "output": [{"type": "input_text", "text": "rain"}]},
            {"type": "function_call", "call_id": "call_c", "name": "time", "arguments": "{}"},
        ],
        "tools": [{"type": "function", "name": "weather", "description": "Weather of a city",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": True},
                  {"type": "function", "name": "time"}],
        "tool_choice": {"type": "function", "name": "weather"},
        "parallel_tool_calls": False,
        "max_output_tokens": 7,
        "text": {"format": {"type": "json_schema", "name": "out", "schema": SCHEMA, "strict": True}},
    })
    chat = responses.chat_body(body, history=[{"role": "user", "content": "earlier"}])

    def call(id_, name, args):
        return {"id": id_, "type": "function", "function": {"name": name, "arguments": args}}

    assert chat["messages"] == [
        {"role": "system", "content": "Use the tools."},
        {"role": "user", "content": "earlier"},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.",
         "tool_calls": [call("call_a", "weather", '{"city":"Paris"}'), call("call_b", "weather", '{"city":"Rome"}')]},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_b", "content": "rain"},
        {"role": "assistant", "content": None, "tool_calls": [call("call_c", "time", "{}")]},
    ]
    assert chat["tools"] == [
        {"type": "function", "function": {"name": "weather", "description": "Weather of a city",
                                          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                                          "strict": True}},
        {"type": "function", "function": {"name": "time"}},
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert chat["parallel_tool_calls"] is False and chat["max_completion_tokens"] == 7
    assert chat["response_format"] == {"type": "json_schema", "json_schema": {"name": "out", "schema": SCHEMA, "strict": True}}
    # The chat body accepts it as it is.
    schemas.ChatCompletionRequestBody.model_validate(chat)


# ----------------------------------------------------------------------------- function tools


def flat(tool: dict) -> dict:
    """A chat function tool in the Responses API's flat shape."""
    return {"type": "function", **tool["function"]}


PARAMETERS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
# Questions SmolLM2 answers with calls that end (two parallel calls; one call).
TOOL_QUESTION = "What's the weather in Paris and in Rome?"
TIME_QUESTION = "What time is it in Tokyo?"


class TimeAnswer(pydantic.BaseModel):
    time: str = pydantic.Field(max_length=40)


def calls_of(r) -> list:
    return [o for o in r.output if o.type == "function_call"]


def test_function_calls_are_the_python_apis_tool_calls(c, smollm2_runner):
    r = valid(c.responses.create(model="smollm2", input=TOOL_QUESTION, tools=[flat(WEATHER)], tool_choice="required",
                                 temperature=0, max_output_tokens=192))
    want = smollm2_runner.send_chat_completion_request(ChatCompletionRequest(
        model="m", messages=[{"role": "user", "content": TOOL_QUESTION}], tools=[WEATHER], tool_choice="required",
        temperature=0.0, max_tokens=192))
    assert want.choices[0].finish_reason == "tool_calls" and len(want.choices[0].message.tool_calls) == 2
    calls = calls_of(r)
    assert [(o.name, o.arguments) for o in calls] == [(t.function.name, t.function.arguments)
                                                     for t in want.choices[0].message.tool_calls]
    assert r.status == "completed" and r.usage.output_tokens == want.usage.completion_tokens
    assert len({o.call_id for o in calls}) == len(calls)
    for o in calls:
        assert o.id.startswith("fc_") and o.status == "completed"
        jsonschema.validate(json.loads(o.arguments), PARAMETERS[o.name])
    assert r.tools[0].name == "get_weather" and r.tool_choice == "required"
    # A named function, and parallel_tool_calls=false (one call where the question asks for two).
    r = valid(c.responses.create(model="smollm2", input=TIME_QUESTION, tools=[flat(WEATHER), flat(TIME)],
                                 tool_choice={"type": "function", "name": "get_time"}, temperature=0,
                                 max_output_tokens=192))
    assert [o.name for o in calls_of(r)] == ["get_time"] and r.tool_choice.name == "get_time"
    r = valid(c.responses.create(model="smollm2", input="What's the weather in Paris and the time in Tokyo?",
                                 tools=[flat(WEATHER), flat(TIME)], tool_choice="required", parallel_tool_calls=False,
                                 temperature=0, max_output_tokens=192))
    assert len(calls_of(r)) == 1 and r.parallel_tool_calls is False


def test_streamed_function_calls_come_as_items_with_argument_deltas(c, server):
    body = {"input": TOOL_QUESTION, "tools": [flat(WEATHER)], "tool_choice": "required", "temperature": 0,
            "max_output_tokens": 192}
    whole = c.responses.create(model="smollm2", **body)
    events = sse_events(server, body)
    for e in events:
        EVENT.validate_python(e)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    types = [e["type"] for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    streamed = []
    i = 2
    while i < len(events) - 1:
        added = events[i]
        assert added["type"] == "response.output_item.added" and added["item"]["type"] == "function_call", types
        item_id, index = added["item"]["id"], added["output_index"]
        assert index == len(streamed) and added["item"]["arguments"] == ""
        j = i + 1
        while events[j]["type"] == "response.function_call_arguments.delta":
            assert events[j]["item_id"] == item_id and events[j]["output_index"] == index
            j += 1
        arguments = "".join(e["delta"] for e in events[i + 1:j])
        assert events[j]["type"] == "response.function_call_arguments.done" and events[j]["arguments"] == arguments
        done = events[j + 1]
        assert done["type"] == "response.output_item.done" and done["item"]["arguments"] == arguments
        streamed.append((done["item"]["name"], arguments))
        i = j + 2
    assert streamed == [(o.name, o.arguments) for o in calls_of(whole)]
    final = valid(Response.model_validate(events[-1]["response"]))
    assert [(o.name, o.arguments) for o in calls_of(final)] == streamed
    # The client's stream helper rebuilds the same calls.
    with c.responses.stream(model="smollm2", **body) as stream:
        for _ in stream:
            pass
        got = stream.get_final_response()
    assert [(o.name, o.arguments) for o in calls_of(got)] == streamed


def test_function_call_outputs_continue_by_previous_response_id_or_by_items(c, smollm2_runner):
    tools = [flat(TIME)]
    question = TIME_QUESTION
    first = c.responses.create(model="smollm2", input=question, tools=tools, tool_choice="required", temperature=0,
                               max_output_tokens=128)
    calls = calls_of(first)
    assert calls
    outputs = [{"type": "function_call_output", "call_id": o.call_id, "output": "It is 14:05."} for o in calls]
    second = valid(c.responses.create(model="smollm2", previous_response_id=first.id, input=outputs, tools=tools,
                                      tool_choice="none", temperature=0, max_output_tokens=32))
    assert second.output_text and not calls_of(second)
    # Reference: the chat conversation it stands for, through the Python API.
    messages = [{"role": "user", "content": question},
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": o.call_id, "type": "function", "function": {"name": o.name, "arguments": o.arguments}}
                    for o in calls]}]
    messages += [{"role": "tool", "tool_call_id": o["call_id"], "content": o["output"]} for o in outputs]
    want = smollm2_runner.send_chat_completion_request(ChatCompletionRequest(
        model="m", messages=messages, tools=[TIME], tool_choice="none", temperature=0.0, max_tokens=32))
    assert second.output_text == want.choices[0].message.content
    assert second.usage.input_tokens == want.usage.prompt_tokens
    # The same conversation sent whole, as items (the Agents SDK's way without previous_response_id).
    items = [{"role": "user", "content": question}, *(o.to_dict() for o in calls), *outputs]
    third = c.responses.create(model="smollm2", input=items, tools=tools, tool_choice="none", temperature=0,
                               max_output_tokens=32)
    assert third.output_text == second.output_text


def test_the_agents_sdk_runs_tools_on_its_default_responses_model(server):
    """The OpenAI Agents SDK, unchanged, on its default (Responses) model, streamed and not: an agent
    that must call its tool gets the call, runs it and stops with its result; a second agent answers
    from that conversation, sent as items (function_call, function_call_output) or as the tool output
    after ``previous_response_id`` (the same answer both ways). Tool_choice stays required only for the
    first agent: SmolLM2 calls tools again and again in auto mode.

    The second agent answers in its ``output_type`` (the SDK sends it as a strict ``text.format``
    json_schema), whose ``maxLength`` bounds the answer: the call ids the server draws at random are in
    the prompt, so a free-text answer's length changes from run to run, and the SDK raises on a
    ``max_output_tokens`` stop."""
    agents = pytest.importorskip("agents")
    calls = []

    @agents.function_tool
    def get_time(timezone: str) -> str:
        """Get the local time in an IANA timezone."""
        calls.append(timezone)
        return "It is 14:05."

    async def run():
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
        agents.set_tracing_disabled(True)
        model = agents.OpenAIResponsesModel(model="smollm2", openai_client=client)
        caller = agents.Agent(name="caller", instructions="You answer questions using the tools.", tools=[get_time],
                              model=model, tool_use_behavior="stop_on_first_tool",
                              model_settings=agents.ModelSettings(tool_choice="required", temperature=0, max_tokens=128))
        first = await agents.Runner.run(caller, TIME_QUESTION)
        streamed = agents.Runner.run_streamed(caller, TIME_QUESTION)
        async for _ in streamed.stream_events():
            pass
        answerer = agents.Agent(name="answerer", instructions="Answer the question from the tool results.", model=model,
                                output_type=TimeAnswer, model_settings=agents.ModelSettings(temperature=0, max_tokens=160))
        by_items = await agents.Runner.run(answerer, first.to_input_list())
        outputs = [i.to_input_item() for i in first.new_items if isinstance(i, agents.ToolCallOutputItem)]
        chained = await agents.Runner.run(answerer, outputs, previous_response_id=first.last_response_id)
        await client.close()
        return first, streamed, by_items, chained

    first, streamed, by_items, chained = asyncio.run(run())
    assert len(calls) == 2 and first.final_output == streamed.final_output == "It is 14:05."
    assert [i["type"] for i in first.to_input_list()[1:]] == ["function_call", "function_call_output"]
    assert isinstance(by_items.final_output, TimeAnswer) and by_items.final_output.time
    assert chained.final_output == by_items.final_output
