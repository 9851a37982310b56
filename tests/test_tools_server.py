"""Tool calling through the server, as agent frameworks use it: the official ``openai`` client (sync,
async, streaming) parses every answer into its own types, ``jsonschema`` validates the arguments, and
the OpenAI Agents SDK (``openai-agents`` from PyPI, unchanged) runs a two-tool agent loop against the
server. Validity on 20 tool sets runs on the tiny random llama, sampled (junk without a grammar: each
valid call is the grammar's work); the rest on SmolLM2-135M (greedy), whose template has no tool
support (the generic format). Qwen2.5-Coder's native format is in tests/test_tools_qwen.py (slow)."""

from __future__ import annotations

import asyncio
import json

import pytest

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("fastapi")

from server_support import ServerProcess  # noqa: E402
from tool_sets import TIME, TOOL_SETS, WEATHER  # noqa: E402


@pytest.fixture(scope="module")
def server(smollm2_path):
    with ServerProcess(["--gguf", str(smollm2_path), "--served-model-name", "smol"]) as s:
        yield s


@pytest.fixture(scope="module")
def c(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


def validate(message, tools, names=None):
    """The message's calls are of the listed tools (or of ``names``), with valid arguments; returns them."""
    by_name = {t["function"]["name"]: t["function"] for t in tools}
    assert message.tool_calls, message.content
    for call in message.tool_calls:
        assert call.function.name in (names or by_name)
        jsonschema.validate(json.loads(call.function.arguments), by_name[call.function.name].get("parameters", {}))
    return message.tool_calls


def create(c, question, tools, **kw):
    kw.setdefault("max_tokens", 192)
    return c.chat.completions.create(model="smol", messages=[{"role": "user", "content": question}], tools=tools,
                                     temperature=0, **kw)


def test_required_and_named_calls_on_20_tool_sets(c):
    """Every answer is valid calls of the listed (or named) tools, or, when the small model loops inside
    a string or a list, text cut off by max_tokens (never a malformed call). Validity on all 20 sets is
    the tiny model's test (tests/test_tools.py) and Qwen's (tests/test_tools_qwen.py)."""
    done = 0
    for tools, question in TOOL_SETS:
        name = tools[0]["function"]["name"]
        for choice in ("required", {"type": "function", "function": {"name": name}}):
            res = create(c, question, tools, tool_choice=choice, parallel_tool_calls=False)
            ch = res.choices[0]
            if ch.finish_reason == "length":
                assert ch.message.tool_calls is None and ch.message.content
                continue
            assert ch.finish_reason == "tool_calls"
            validate(ch.message, tools, names=[name] if isinstance(choice, dict) else None)
            done += 1
    assert done >= 24, done


def test_none_gives_text(c):
    res = create(c, "What's the weather like in Paris?", [WEATHER], tool_choice="none", max_tokens=24)
    assert res.choices[0].message.tool_calls is None and res.choices[0].message.content


def test_streamed_calls_reassemble_with_the_clients_own_accumulator(c):
    tools, question = [WEATHER, TIME], "What's the weather like in Paris?"
    whole = create(c, question, tools, tool_choice="required", parallel_tool_calls=False)
    with c.chat.completions.stream(model="smol", messages=[{"role": "user", "content": question}], tools=tools,
                                   tool_choice="required", parallel_tool_calls=False, temperature=0,
                                   max_tokens=192) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    got = [(t.function.name, t.function.arguments) for t in final.choices[0].message.tool_calls]
    want = [(t.function.name, t.function.arguments) for t in whole.choices[0].message.tool_calls]
    assert got == want
    assert final.choices[0].finish_reason == "tool_calls"


def test_async_client_round_trip(server):
    async def run():
        ac = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
        messages = [{"role": "user", "content": "What's the weather like in Paris?"}]
        first = await ac.chat.completions.create(model="smol", messages=messages, tools=[WEATHER],
                                                 tool_choice="required", parallel_tool_calls=False, temperature=0,
                                                 max_tokens=128)
        msg = first.choices[0].message
        validate(msg, [WEATHER])
        messages.append(msg.model_dump(exclude_none=True))
        for call in msg.tool_calls:
            messages.append({"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'})
        final = await ac.chat.completions.create(model="smol", messages=messages, tools=[WEATHER], temperature=0,
                                                 tool_choice="none", max_tokens=32)
        await ac.close()
        return final
    final = asyncio.run(run())
    assert final.choices[0].message.content and final.choices[0].message.tool_calls is None


def test_parallel_tool_calls_false_gives_one_call(c):
    res = create(c, "Weather in Paris and in Rome?", [WEATHER], tool_choice="required", parallel_tool_calls=False)
    assert len(res.choices[0].message.tool_calls) == 1


@pytest.mark.parametrize("tools, reason", [
    ([{"type": "function", "function": {"name": "bad name"}}], "not allowed"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                     "properties": {"x": {"$ref": "#/nope"}}}}}],
     "grammar"),
])
def test_bad_tools_are_400s_naming_the_field(c, tools, reason):
    with pytest.raises(openai.BadRequestError) as e:
        create(c, "hi", tools, tool_choice="required")
    assert reason in e.value.body["message"] and e.value.body["param"] == "tools"
    assert create(c, "hi", [WEATHER], tool_choice="none", max_tokens=4).choices[0].message.content is not None


def run_agent(url: str, model: str, question: str, **agent_kw):
    """The OpenAI Agents SDK (``openai-agents``), unchanged, on its chat-completions model against
    ``url``, with a weather and a time tool; returns (its result, the tool calls it ran)."""
    agents = pytest.importorskip("agents")
    calls = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Get the current weather in a city."""
        calls.append(("get_weather", city))
        return f"It is 21 degrees and sunny in {city}."

    @agents.function_tool
    def get_time(timezone: str) -> str:
        """Get the local time in an IANA timezone."""
        calls.append(("get_time", timezone))
        return "It is 14:05."

    async def run():
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
        agents.set_tracing_disabled(True)
        agent = agents.Agent(name="assistant", instructions="You answer questions using the tools.",
                             tools=[get_weather, get_time],
                             model=agents.OpenAIChatCompletionsModel(model=model, openai_client=client), **agent_kw)
        result = await agents.Runner.run(agent, question, max_turns=6)
        await client.close()
        return result

    return asyncio.run(run()), calls


def test_an_agent_framework_runs_its_tool_loop(server):
    """The SDK sends the request, parses the call, runs the tool and ends its loop (stopping at the
    first tool's output: SmolLM2, not trained for tools, would call again rather than answer; the
    full loop to a final answer is Qwen's, in tests/test_tools_qwen.py)."""
    agents = pytest.importorskip("agents")
    result, calls = run_agent(
        server.url, "smol", "What's the weather in Paris?", tool_use_behavior="stop_on_first_tool",
        model_settings=agents.ModelSettings(tool_choice="required", temperature=0, parallel_tool_calls=False,
                                            max_tokens=128))
    assert calls == [("get_weather", "Paris")]
    assert result.final_output == "It is 21 degrees and sunny in Paris."
