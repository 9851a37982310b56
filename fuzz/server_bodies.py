#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris, libFuzzer for Python) of the server's JSON bodies: every request path of
``create_app`` (chat, completions, responses, tokenize, detokenize) through FastAPI's test client, over the tiny
llama fixture.

    .venv/bin/pip install atheris                       # not a test dependency
    .venv/bin/python fuzz/server_bodies.py fuzz/corpus/server_bodies -max_total_time=1800 -timeout=30 \
        -artifact_prefix=fuzz/artifacts/server_bodies/

An input is either raw bytes sent as the body, or a valid body of the chosen path with a few fields replaced by
arbitrary JSON values, removed, or joined by unknown ones (numbers that would only make generation long are kept
small, as the Rust request target does). A finding is an answer of 500 or above (the server must answer a bad body
with a 4xx and OpenAI's error shape, and a good one with 200), a 4xx without that shape, or an exception out of the
app; libFuzzer saves the input under fuzz/artifacts/server_bodies/, and it becomes a regression test.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "tests" / "fixtures" / "llama-tiny"

with atheris.instrument_imports(include=["mistralrs"]):
    from mistralrs import Runner, Which
    from mistralrs.server.app import create_app

from fastapi.testclient import TestClient  # noqa: E402

MSG = {"role": "user", "content": "hello there"}
TOOL = {"type": "function", "function": {"name": "f", "description": "d",
                                         "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}
BASES = {
    "/v1/chat/completions": {"model": "m", "messages": [MSG], "max_tokens": 4, "temperature": 0.0, "tools": [TOOL],
                             "tool_choice": "auto", "response_format": {"type": "text"}, "logprobs": True,
                             "top_logprobs": 2, "stop": ["x"], "n": 1, "seed": 1, "stream": False},
    "/v1/completions": {"model": "m", "prompt": "hello", "max_tokens": 4, "temperature": 0.0, "echo": False,
                        "logprobs": 1, "stop": "x", "n": 1, "best_of": 1, "stream": False},
    "/v1/responses": {"model": "m", "input": "hello", "max_output_tokens": 4, "temperature": 0.0,
                      "instructions": "be brief", "tools": [{"type": "function", "name": "f", "parameters": {}}],
                      "stream": False},
    "/tokenize": {"model": "m", "prompt": "hello", "add_special_tokens": True},
    "/detokenize": {"model": "m", "tokens": [1, 2, 3]},
}
PATHS = list(BASES)
SMALL = {"max_tokens", "max_output_tokens", "n", "best_of", "top_logprobs", "logprobs", "max_completion_tokens"}


def value(fdp: atheris.FuzzedDataProvider, depth: int = 0):
    kind = fdp.ConsumeIntInRange(0, 7 if depth < 2 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeIntInRange(-(2**63), 2**63)
    if kind == 3:
        return fdp.ConsumeRegularFloat()
    if kind in (4, 5):
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 64))
    if kind == 6:
        return [value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    return {fdp.ConsumeUnicodeNoSurrogates(8): value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))}


def places(obj, prefix=()):
    """Every (container, key) in the body, nested ones included."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield obj, k
            yield from places(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield obj, i
            yield from places(v, prefix + (i,))


def body_of(fdp: atheris.FuzzedDataProvider, path: str) -> bytes:
    if fdp.ConsumeIntInRange(0, 3) == 0:
        return fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 2048))
    obj = copy.deepcopy(BASES[path])
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        spots = list(places(obj))
        if not spots:
            break
        container, key = spots[fdp.ConsumeIntInRange(0, len(spots) - 1)]
        action = fdp.ConsumeIntInRange(0, 4)
        if action == 0 and isinstance(container, dict):
            del container[key]
        elif action == 1 and isinstance(container, dict):
            container[fdp.ConsumeUnicodeNoSurrogates(12)] = value(fdp)
        else:
            container[key] = value(fdp)
    for k in SMALL & set(obj):
        if isinstance(obj[k], int) and not isinstance(obj[k], bool) and 4 < obj[k] < 100_000:
            obj[k] = obj[k] % 4
    return json.dumps(obj, allow_nan=fdp.ConsumeBool()).encode()


def error_shaped(r) -> bool:
    try:
        e = r.json()["error"]
    except Exception:
        return False
    return isinstance(e, dict) and {"message", "type", "param", "code"} <= set(e)


def main() -> None:
    runner = Runner(which=Which.GGUF(tok_model_id=str(TINY), quantized_model_id=str(TINY),
                                     quantized_filename="tiny-q8_0.gguf"), kv_cache_mb=8)
    client = TestClient(create_app(runner, model_name="m"), raise_server_exceptions=True)

    def one(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        path = PATHS[fdp.ConsumeIntInRange(0, len(PATHS) - 1)]
        body = body_of(fdp, path)
        r = client.post(path, content=body, headers={"Content-Type": "application/json"})
        if r.status_code >= 500:
            raise AssertionError(f"{path} answered {r.status_code}: {r.text[:500]}\nbody: {body[:1000]!r}")
        if r.status_code >= 400 and not error_shaped(r):
            raise AssertionError(f"{path} answered {r.status_code} without OpenAI's error shape: {r.text[:500]}")

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
