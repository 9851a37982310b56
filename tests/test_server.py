"""The OpenAI-compatible server (SPEC §7, issue 10), run as ``python -m mistralrs serve`` on loopback
and driven by the official ``openai`` client, sync and async, streaming and not.

References: the ``openai`` client's own parsing of every answer (a response it cannot parse, or an
error shape it does not recognise, fails these tests), and the Python API's output for the same
greedy or seeded request in this process (itself tested against transformers and llama.cpp in
test_reference_llama.py and test_smollm2.py). ``runner.tokenize`` / ``detokenize`` for
``/tokenize`` / ``/detokenize``, and ``prometheus_client``'s parser for ``/metrics``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from conftest import QUESTIONS, chat  # noqa: E402
from mistralrs import CompletionRequest  # noqa: E402
from server_support import ServerProcess  # noqa: E402

TINY_KEY = "sk-tiny-test"
TINY_MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def tiny_server(llama_tiny_dir):
    """The tiny llama (safetensors), with an API key and a small body limit."""
    with ServerProcess(["--model-id", str(llama_tiny_dir), "--arch", "llama", "--served-model-name", "tiny",
                        "--api-key", TINY_KEY, "--max-body-bytes", str(TINY_MAX_BODY)]) as server:
        yield server
        assert server.stop() == 0, "SIGTERM with nothing in flight: exit 0"


@pytest.fixture(scope="module")
def smollm2_server(smollm2_path):
    with ServerProcess(["--gguf", str(smollm2_path), "--served-model-name", "smollm2"]) as server:
        yield server


def client(server, key: str | None = None, timeout: float = 60) -> openai.OpenAI:
    # max_retries=0: the client retries 5xx and connection errors by default, which would hide them.
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key or "unused", max_retries=0, timeout=timeout)


def aclient(server, key: str | None = None) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=key or "unused", max_retries=0, timeout=120)


def user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


# ----------------------------------------------------------------------------- tiny model: fields pass through


def test_chat_equals_the_python_api(tiny_server, tiny_runner):
    c = client(tiny_server, TINY_KEY)
    got = c.chat.completions.create(model="tiny", messages=user("Hello there"), temperature=0, max_tokens=12,
                                    logprobs=True, top_logprobs=3)
    want = chat(tiny_runner, "Hello there", max_tokens=12, logprobs=True, top_logprobs=3)
    assert got.object == "chat.completion" and got.model == "tiny"
    choice = got.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == want.choices[0].message.content
    assert choice.finish_reason == want.choices[0].finish_reason
    assert (got.usage.prompt_tokens, got.usage.completion_tokens) == (want.usage.prompt_tokens, want.usage.completion_tokens)
    assert got.usage.total_tokens == got.usage.prompt_tokens + got.usage.completion_tokens
    ours, theirs = choice.logprobs.content, want.choices[0].logprobs.content
    assert [t.token for t in ours] == [t.token for t in theirs]
    assert [t.bytes for t in ours] == [t.bytes for t in theirs]
    for a, b in zip(ours, theirs):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-5)
        assert [x.token for x in a.top_logprobs] == [x.token for x in b.top_logprobs]
        assert len(a.top_logprobs) == 3


def test_chat_fields_pass_through(tiny_server, tiny_runner):
    c = client(tiny_server, TINY_KEY)
    # content as a list of text parts, as newer clients send it; max_completion_tokens is max_tokens' new name
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]
    got = c.chat.completions.create(model="tiny", messages=parts, temperature=0, max_completion_tokens=5)
    assert got.choices[0].message.content == chat(tiny_runner, "Hello there", max_tokens=5).choices[0].message.content
    assert got.choices[0].finish_reason == "length" and got.usage.completion_tokens == 5
    # n and seed: each choice equals the Python API's with the same seed
    got = c.chat.completions.create(model="tiny", messages=user("Hi"), temperature=1.0, seed=7, n=3, max_tokens=8)
    want = chat(tiny_runner, "Hi", temperature=1.0, seed=7, n_choices=3, max_tokens=8)
    assert [ch.index for ch in got.choices] == [0, 1, 2]
    assert [ch.message.content for ch in got.choices] == [ch.message.content for ch in want.choices]
    # stop: cut before the stop string, exactly where the Python API cuts
    whole = chat(tiny_runner, "Hi", max_tokens=24, ignore_eos=True).choices[0].message.content
    stop = whole[6:9]
    got = c.chat.completions.create(model="tiny", messages=user("Hi"), temperature=0, max_tokens=24, stop=[stop],
                                    extra_body={"ignore_eos": True})
    want = chat(tiny_runner, "Hi", max_tokens=24, ignore_eos=True, stop_seqs=[stop])
    assert got.choices[0].message.content == want.choices[0].message.content == whole[: whole.index(stop)]
    assert got.choices[0].finish_reason == "stop"
    # vLLM's sampling extras and unknown fields (ignored, as vLLM does)
    got = c.chat.completions.create(model="tiny", messages=user("Hi"), temperature=0.9, seed=3, max_tokens=6,
                                    extra_body={"top_k": 5, "min_p": 0.05, "repetition_penalty": 1.1, "no_such_field": 1})
    want = chat(tiny_runner, "Hi", temperature=0.9, seed=3, max_tokens=6, top_k=5, min_p=0.05, repetition_penalty=1.1)
    assert got.choices[0].message.content == want.choices[0].message.content


def test_completions_equal_the_python_api(tiny_server, tiny_runner):
    c = client(tiny_server, TINY_KEY)

    def python_api(prompt, **kw):
        return tiny_runner.send_completion_request(CompletionRequest(model="m", prompt=prompt, temperature=0, **kw))

    got = c.completions.create(model="tiny", prompt="Once upon", temperature=0, max_tokens=10)
    want = python_api("Once upon", max_tokens=10)
    assert got.object == "text_completion"
    assert got.choices[0].text == want.choices[0].text and got.choices[0].finish_reason == want.choices[0].finish_reason
    assert got.usage.prompt_tokens == want.usage.prompt_tokens

    # a prompt of token ids
    ids = tiny_runner.tokenize("Once upon")
    got = c.completions.create(model="tiny", prompt=ids, temperature=0, max_tokens=10)
    assert got.choices[0].text == want.choices[0].text

    # logprobs (legacy layout), echo, n, stop
    got = c.completions.create(model="tiny", prompt="Once upon", temperature=0, max_tokens=6, logprobs=2, echo=True)
    want = python_api("Once upon", max_tokens=6, logprobs=True, top_logprobs=2, echo_prompt=True)
    lp, ref = got.choices[0].logprobs, want.choices[0].logprobs.content
    assert got.choices[0].text == want.choices[0].text and got.choices[0].text.startswith("Once upon")
    assert lp.tokens == [t.token for t in ref]
    assert lp.token_logprobs == pytest.approx([t.logprob for t in ref], abs=1e-5)
    assert [list(d) for d in lp.top_logprobs] == [[a.token for a in t.top_logprobs] for t in ref]
    assert lp.text_offset[0] == len(got.choices[0].text) - sum(len(t) for t in lp.tokens)

    whole = python_api("Once upon", max_tokens=20, ignore_eos=True).choices[0].text
    got = c.completions.create(model="tiny", prompt="Once upon", temperature=0, max_tokens=20, stop=whole[5:8], n=2,
                               extra_body={"ignore_eos": True})
    assert [ch.text for ch in got.choices] == [whole[: whole.index(whole[5:8])]] * 2
    assert [ch.index for ch in got.choices] == [0, 1]

    # seeded sampling
    got = c.completions.create(model="tiny", prompt="Once upon", temperature=1.0, seed=5, max_tokens=8)
    want = tiny_runner.send_completion_request(CompletionRequest(model="m", prompt="Once upon", temperature=1.0,
                                                                 seed=5, max_tokens=8))
    assert got.choices[0].text == want.choices[0].text


def test_completion_batches_are_one_request_per_prompt(tiny_server, tiny_runner):
    c = client(tiny_server, TINY_KEY)
    prompts = ["Once upon", "The end", "Hello"]
    want = [tiny_runner.send_completion_request(CompletionRequest(model="m", prompt=p, temperature=0, max_tokens=5))
            for p in prompts]
    for batch in (prompts, [tiny_runner.tokenize(p) for p in prompts]):
        got = c.completions.create(model="tiny", prompt=batch, temperature=0, max_tokens=5, n=2)
        # OpenAI's numbering: prompt i's choices at i*n .. i*n+n-1
        assert [ch.index for ch in got.choices] == list(range(6))
        assert [ch.text for ch in got.choices] == [w.choices[0].text for w in want for _ in range(2)]
        assert got.usage.prompt_tokens == sum(w.usage.prompt_tokens for w in want)
        assert got.usage.completion_tokens == 2 * sum(w.usage.completion_tokens for w in want)


def test_tokenize_and_detokenize_equal_the_python_api(tiny_server, tiny_runner):
    h = {"Authorization": f"Bearer {TINY_KEY}"}
    for text in ["Hello world", "Once upon a time, 123!"]:
        for special in (True, False):
            r = httpx.post(f"{tiny_server.url}/tokenize", json={"prompt": text, "add_special_tokens": special}, headers=h)
            assert r.status_code == 200, r.text
            ids = tiny_runner.tokenize(text, add_special_tokens=special)
            assert r.json()["tokens"] == ids and r.json()["count"] == len(ids)
        r = httpx.post(f"{tiny_server.url}/detokenize", json={"tokens": ids}, headers=h)
        assert r.status_code == 200 and r.json() == {"prompt": tiny_runner.detokenize(ids)}
    r = httpx.post(f"{tiny_server.url}/detokenize", json={"tokens": [10**6]}, headers=h)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    # Chat messages: the prompt a chat request runs on (the template's text, tokenized as is).
    messages = [{"role": "user", "content": "Hi there"}]
    r = httpx.post(f"{tiny_server.url}/tokenize", json={"messages": messages}, headers=h)
    want = tiny_runner.tokenize(tiny_runner.apply_chat_template(messages), add_special_tokens=False)
    assert r.status_code == 200 and r.json()["tokens"] == want and want
    r = httpx.post(f"{tiny_server.url}/tokenize", json={"messages": messages, "prompt": "x"}, headers=h)
    assert r.status_code == 400


def test_models_health_and_metrics(tiny_server):
    c = client(tiny_server, TINY_KEY)
    assert [m.id for m in c.models.list().data] == ["tiny"]
    assert c.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-4")
    assert httpx.get(f"{tiny_server.url}/health").json() == {"status": "ok"}
    c.chat.completions.create(model="tiny", messages=user("Hi"), temperature=0, max_tokens=3)
    m = tiny_server.metrics()  # parsed by prometheus_client's parser
    assert m['mistralrs_http_requests_total{endpoint="/v1/chat/completions",status="200"}'] >= 1
    assert m["mistralrs_generation_tokens_total"] >= 3 and m["mistralrs_prompt_tokens_total"] > 0
    assert m['mistralrs_request_latency_seconds_count{endpoint="/v1/chat/completions"}'] >= 1
    assert m["mistralrs_generation_tokens_per_second_count"] >= 1
    for gauge in ("seqs_running", "seqs_waiting", "kv_blocks_used", "kv_blocks_total"):
        assert f"mistralrs_{gauge}" in m
    for counter in ("requests_cancelled", "preemptions", "prefix_cache_hit_tokens"):
        assert f"mistralrs_{counter}_total" in m
    assert m["mistralrs_kv_blocks_total"] > 0


def test_api_key(tiny_server):
    with pytest.raises(openai.AuthenticationError) as e:
        client(tiny_server, "wrong-key").chat.completions.create(model="tiny", messages=user("Hi"), max_tokens=2)
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    for headers in ({"Authorization": "Bearer wrong-key"}, {"Authorization": TINY_KEY}, {}):
        r = httpx.post(f"{tiny_server.url}/tokenize", json={"prompt": "Hi"}, headers=headers)
        assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}
        r = httpx.get(f"{tiny_server.url}/v1/models", headers=headers)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    # probes and scrapers need no key
    assert httpx.get(f"{tiny_server.url}/health").status_code == 200
    assert httpx.get(f"{tiny_server.url}/metrics").status_code == 200


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(tiny_server, tiny_runner):
    c = client(tiny_server, TINY_KEY)
    url, h = f"{tiny_server.url}/v1/chat/completions", {"Authorization": f"Bearer {TINY_KEY}"}
    # invalid JSON
    err = _error(httpx.post(url, content=b'{"messages": [', headers={**h, "Content-Type": "application/json"}), 400)
    assert err["type"] == "invalid_request_error" and "JSON" in err["message"]
    # wrong field types (OpenAI's 400, not FastAPI's 422)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny", messages=user("Hi"), max_tokens="five")
    assert e.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": 5}])
    assert e.value.param == "messages.0.content"
    err = _error(httpx.post(url, json={"model": "tiny"}, headers=h), 400)
    assert err["param"] == "messages"
    # the engine's own checks: top_p=0, the context overflowing, bad token ids, unknown roles
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny", messages=user("Hi"), top_p=0)
    assert e.value.param == "top_p" and "top_p" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="tiny", messages=user("Hi"), max_tokens=10_000)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="tiny", prompt="Hi " * 300, max_tokens=4)  # the tiny model's context is 256
    assert "context" in e.value.message
    for ids in ([10**6], [-1], [2**40], []):
        with pytest.raises(openai.BadRequestError):
            c.completions.create(model="tiny", prompt=ids, max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=[{"role": "tool", "content": "x"}], max_tokens=2)
    # numbers JSON allows and the engine's fields do not hold
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=user("Hi"), seed=2**70, max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=user("Hi"), logit_bias={str(2**40): 1.0}, max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=user("Hi"), stream=True, top_logprobs=30, logprobs=True)
    # a body over the limit: 413 before it is parsed (Content-Length), and while reading (chunked)
    big = json.dumps({"model": "tiny", "messages": user("x" * TINY_MAX_BODY)}).encode()
    err = _error(httpx.post(url, content=big, headers={**h, "Content-Type": "application/json"}), 413)
    assert err["code"] == "request_too_large"
    chunked = httpx.post(url, content=iter([big[i:i + 8192] for i in range(0, len(big), 8192)]),
                         headers={**h, "Content-Type": "application/json"})
    _error(chunked, 413)
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="tiny", messages=user("x" * TINY_MAX_BODY))
    assert e.value.status_code == 413
    # unknown paths and methods, same shape
    _error(httpx.get(f"{tiny_server.url}/v1/nothing", headers=h), 404)
    _error(httpx.get(url, headers=h), 405)
    # ... and it still serves
    got = c.chat.completions.create(model="tiny", messages=user("Hello there"), temperature=0, max_tokens=4)
    assert got.choices[0].message.content == chat(tiny_runner, "Hello there", max_tokens=4).choices[0].message.content
    m = tiny_server.metrics()
    assert m['mistralrs_http_requests_total{endpoint="/v1/chat/completions",status="400"}'] >= 5
    assert m['mistralrs_http_requests_total{endpoint="/v1/chat/completions",status="413"}'] >= 3


def test_create_app_mounts_in_another_app(tiny_runner):
    """Two apps in one process (each has its own metrics registry), one mounted under a prefix."""
    from fastapi import FastAPI
    from mistralrs.server import create_app

    outer = FastAPI()
    outer.mount("/a", create_app(tiny_runner, model_name="a"))
    outer.mount("/b", create_app(tiny_runner, model_name="b", api_key="k"))

    async def main():
        transport = httpx.ASGITransport(app=outer)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as h:
            r = await h.post("/a/v1/chat/completions", json={"messages": user("Hello there"), "temperature": 0, "max_tokens": 4})
            assert r.status_code == 200, r.text
            assert r.json()["model"] == "a"
            want = chat(tiny_runner, "Hello there", max_tokens=4).choices[0].message.content
            assert r.json()["choices"][0]["message"]["content"] == want
            assert (await h.get("/b/v1/models")).status_code == 401
            assert (await h.get("/b/v1/models", headers={"Authorization": "Bearer k"})).json()["data"][0]["id"] == "b"
            metrics = (await h.get("/a/metrics")).text
            assert 'mistralrs_http_requests_total{endpoint="/v1/chat/completions",status="200"} 1.0' in metrics

    asyncio.run(main())


# ----------------------------------------------------------------------------- SmolLM2: streaming, concurrency, cancellation



def test_streamed_chat_equals_the_whole_response(smollm2_server, smollm2_runner):
    c = client(smollm2_server)
    want = chat(smollm2_runner, QUESTIONS[0], max_tokens=40)
    whole = c.chat.completions.create(model="smollm2", messages=user(QUESTIONS[0]), temperature=0, max_tokens=40)
    assert whole.choices[0].message.content == want.choices[0].message.content
    chunks = list(c.chat.completions.create(model="smollm2", messages=user(QUESTIONS[0]), temperature=0, max_tokens=40,
                                            stream=True, stream_options={"include_usage": True}))
    assert all(ch.id == chunks[0].id and ch.object == "chat.completion.chunk" for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == want.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == want.choices[0].finish_reason
    # include_usage: a last chunk with usage and no choices; the others carry none
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == want.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == want.usage.prompt_tokens
    assert all(ch.usage is None for ch in chunks[:-1])
    # without include_usage there is no usage chunk
    chunks = list(c.chat.completions.create(model="smollm2", messages=user(QUESTIONS[0]), temperature=0, max_tokens=5,
                                            stream=True))
    assert all(ch.choices and ch.usage is None for ch in chunks)


def test_streamed_completion_equals_the_whole_response(smollm2_server, smollm2_runner):
    c = client(smollm2_server)
    want = smollm2_runner.send_completion_request(
        CompletionRequest(model="m", prompt="The capital of France is", temperature=0, max_tokens=16))
    chunks = list(c.completions.create(model="smollm2", prompt="The capital of France is", temperature=0, max_tokens=16,
                                       stream=True, stream_options={"include_usage": True}, logprobs=1))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == want.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == want.usage.completion_tokens
    offsets = [o for ch in chunks if ch.choices for o in ch.choices[0].logprobs.text_offset]
    tokens = [t for ch in chunks if ch.choices for t in ch.choices[0].logprobs.tokens]
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]


def test_async_client_streams_and_whole_responses(smollm2_server, smollm2_runner):
    want = [chat(smollm2_runner, q, max_tokens=16).choices[0].message.content for q in QUESTIONS[:4]]

    async def main():
        c = aclient(smollm2_server)

        async def streamed(q):
            stream = await c.chat.completions.create(model="smollm2", messages=user(q), temperature=0, max_tokens=16,
                                                     stream=True)
            return "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])

        async def whole(q):
            r = await c.chat.completions.create(model="smollm2", messages=user(q), temperature=0, max_tokens=16)
            return r.choices[0].message.content

        return await asyncio.gather(*(streamed(q) for q in QUESTIONS[:4]), *(whole(q) for q in QUESTIONS[:4]))

    assert asyncio.run(main()) == want + want


def test_64_concurrent_streaming_clients_get_their_sequential_outputs(smollm2_server, smollm2_runner):
    prompts = [f"{q} (question {i})" for i in range(2) for q in QUESTIONS]  # 16 different prompts
    # Reference: each prompt alone, one after another, through the Python API.
    expected = {p: chat(smollm2_runner, p, max_tokens=10).choices[0].message.content for p in prompts}
    clients = [prompts[i % len(prompts)] for i in range(64)]

    async def main():
        c = aclient(smollm2_server)

        async def one(p):
            stream = await c.chat.completions.create(model="smollm2", messages=user(p), temperature=0, max_tokens=10,
                                                     stream=True)
            return "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])

        return await asyncio.gather(*(one(p) for p in clients))

    got = asyncio.run(main())
    assert got == [expected[p] for p in clients]


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("streamed", [True, False], ids=["stream", "whole"])
def test_a_client_that_disconnects_cancels_its_sequence(smollm2_server, streamed):
    before = smollm2_server.metrics()["mistralrs_requests_cancelled_total"]
    long = {"model": "smollm2", "messages": user("Write a long story."), "max_tokens": 2000, "stream": streamed,
            "extra_body": {"ignore_eos": True}}
    if streamed:
        stream = client(smollm2_server).chat.completions.create(**long)
        for _, _ in zip(range(3), stream):
            pass
        assert smollm2_server.metrics()["mistralrs_seqs_running"] == 1
        stream.close()
    else:
        with pytest.raises(openai.APITimeoutError):
            client(smollm2_server, timeout=1.0).chat.completions.create(**long)
    m: dict[str, float] = {}

    def freed() -> bool:
        m.update(smollm2_server.metrics())
        return m["mistralrs_seqs_running"] == 0 and m["mistralrs_kv_blocks_used"] == 0

    assert _wait_for(freed), m
    assert m["mistralrs_requests_cancelled_total"] == before + 1
    status = "200" if streamed else "499"
    assert m[f'mistralrs_http_requests_total{{endpoint="/v1/chat/completions",status="{status}"}}'] >= 1


def test_sigterm_finishes_or_fails_in_flight_requests_and_exits_0(smollm2_path):
    """Streams too long for the grace period end with an error event (the openai client raises
    APIError), a short one finishes normally, a whole request gets an error answer; the process
    exits 0 soon after the grace period and no client hangs."""
    grace = 1.0
    server = ServerProcess(["--gguf", str(smollm2_path), "--shutdown-grace", str(grace)])
    outcomes: dict[str, object] = {}
    started = threading.Barrier(6, timeout=60)  # 5 clients and this thread

    def long_stream(name):
        try:
            stream = client(server, timeout=30).chat.completions.create(
                model="m", messages=user("Write a long story."), max_tokens=4000, stream=True, temperature=0,
                extra_body={"ignore_eos": True})
            next(iter(stream))
            started.wait()
            outcomes[name] = sum(1 for _ in stream)
        except Exception as e:
            outcomes[name] = e

    def short_stream():
        # Started right before SIGTERM; finishes well within the grace period.
        started.wait()
        text = "".join(ch.choices[0].delta.content or "" for ch in client(server, timeout=30).chat.completions.create(
            model="m", messages=user("Hi"), max_tokens=8, stream=True, temperature=0) if ch.choices)
        outcomes["short"] = text

    def whole():
        started.wait()
        try:
            client(server, timeout=30).chat.completions.create(
                model="m", messages=user("Write a long story."), max_tokens=4000, extra_body={"ignore_eos": True})
            outcomes["whole"] = "finished"
        except Exception as e:
            outcomes["whole"] = e

    threads = [threading.Thread(target=long_stream, args=(f"long{i}",)) for i in range(3)]
    threads += [threading.Thread(target=short_stream), threading.Thread(target=whole)]
    try:
        for t in threads:
            t.start()
        started.wait()
        time.sleep(0.3)  # the short and the whole requests are in flight
        t0 = time.monotonic()
        server.terminate()
        rc = server.proc.wait(timeout=grace + 10)
        elapsed = time.monotonic() - t0
        for t in threads:
            t.join(timeout=10)
        assert not any(t.is_alive() for t in threads), outcomes  # no client hangs
    finally:
        log = server.output()
        server.stop()
    assert rc == 0, log
    assert elapsed < grace + 5, (elapsed, log)
    assert isinstance(outcomes["short"], str) and outcomes["short"], outcomes
    for i in range(3):
        e = outcomes[f"long{i}"]
        assert isinstance(e, openai.APIError) and "closed" in str(e), outcomes
    # the whole request: 503 from the closing runner (or, if it raced the socket closing, a connection error)
    assert isinstance(outcomes["whole"], (openai.InternalServerError, openai.APIConnectionError)), outcomes


def test_ray_flag_without_ray_installed_says_what_to_install(llama_tiny_dir, tmp_path):
    import os
    import subprocess
    import sys

    fake = tmp_path / "ray"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('No module named ray (this test hides it)')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "mistralrs", "serve", "--ray", "--model-id", str(llama_tiny_dir),
                           "--arch", "llama"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "pip install 'mistralrs[ray]'" in proc.stderr
