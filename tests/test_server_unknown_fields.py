"""Fields the server does not know are ignored, as vLLM ignores them, and each name is logged once
(issue 24, item 7): a client that sends vendor fields still gets the answer it would get without
them. References: the Python API's greedy output for the same request, and the server's own log."""

from __future__ import annotations

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from conftest import chat  # noqa: E402
from server_support import ServerProcess  # noqa: E402


def test_unknown_fields_are_ignored_and_logged_once_per_name(llama_tiny_dir, tiny_runner):
    with ServerProcess(["--model-id", str(llama_tiny_dir), "--arch", "llama", "--served-model-name", "tiny"]) as s:
        c = openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0, timeout=60)
        extra = {"vendor_knob": 3, "another_knob": {"a": 1}}
        messages = [{"role": "user", "content": "Hi", "cache_control": {"type": "ephemeral"}}]
        for _ in range(3):
            got = c.chat.completions.create(model="tiny", messages=messages, max_tokens=6, temperature=0,
                                            extra_body=extra)
            assert got.choices[0].message.content == chat(tiny_runner, "Hi", max_tokens=6).choices[0].message.content
        c.completions.create(model="tiny", prompt="Hi", max_tokens=2, extra_body={"vendor_knob": 1})
        log = s.output()
    for name in ("vendor_knob", "another_knob", "messages.cache_control"):
        assert log.count(f"`{name}`") == 1, (name, log)
    # Known fields are never reported.
    assert "`max_tokens`" not in log and "`messages`" not in log
