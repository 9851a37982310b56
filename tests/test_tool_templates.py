"""Prompts with tools: the official Qwen 2.5, Llama 3.1 and Mistral v0.3 chat templates rendered by the
engine (``Runner.apply_chat_template``, the prompt every chat request runs on) equal what transformers'
``apply_chat_template(messages, tools=..., tokenize=False)`` gave for the same conversations, recorded by
``scripts/make_tool_template_fixtures.py`` in ``tests/fixtures/tool_templates/``: tools listed in the
system or user turn, earlier calls and their results, parallel calls, non-ASCII and HTML-like text in
tool descriptions (transformers' ``tojson`` escapes neither), and the errors templates raise.

Equal text is equal tokens: the prompt is tokenized as any other (``add_special_tokens=False``), and
the tokenizer is checked against transformers by the reference tests.
"""

from __future__ import annotations

import json
import pathlib

import pytest
from mistralrs import Runner, Which

TEMPLATES = pathlib.Path(__file__).parent / "fixtures" / "tool_templates"
FIXTURES = sorted(TEMPLATES.glob("*.json"))


def _runner(fixture: dict, llama_tiny_dir: pathlib.Path, tmp_path: pathlib.Path) -> Runner:
    spec = tmp_path / "template.json"
    spec.write_text(json.dumps({
        "chat_template": (TEMPLATES / fixture["template_file"]).read_text(),
        "bos_token": fixture["bos_token"], "eos_token": fixture["eos_token"],
    }))
    which = Which.GGUF(tok_model_id=None, quantized_model_id=str(llama_tiny_dir), quantized_filename="tiny-f32.gguf")
    return Runner(which=which, chat_template=str(spec), max_seqs=1, kv_cache_mb=8)


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_prompts_with_tools_equal_transformers(path, llama_tiny_dir, tmp_path):
    fixture = json.loads(path.read_text())
    runner = _runner(fixture, llama_tiny_dir, tmp_path)
    checked = 0
    for case in fixture["cases"]:
        kwargs = dict(tools=case["tools"], add_generation_prompt=case["add_generation_prompt"])
        if "error" in case:
            with pytest.raises(ValueError, match=case["error"].split("!")[0]):
                runner.apply_chat_template(case["messages"], **kwargs)
            continue
        got = runner.apply_chat_template(case["messages"], **kwargs)
        assert got == case["rendered"], f"{path.stem} case {case['name']}"
        checked += 1
    assert checked >= 6


def test_openai_shaped_history_renders_like_dict_arguments(llama_tiny_dir, tmp_path):
    """OpenAI clients send a call's arguments as JSON text; templates print them as the dict
    transformers gets (vLLM parses them the same way)."""
    fixture = json.loads((TEMPLATES / "qwen2_5_instruct.json").read_text())
    case = next(c for c in fixture["cases"] if c["name"].startswith("c_"))
    runner = _runner(fixture, llama_tiny_dir, tmp_path)
    messages = json.loads(json.dumps(case["messages"]))
    for m in messages:
        for call in m.get("tool_calls") or []:
            call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
    got = runner.apply_chat_template(messages, tools=case["tools"], add_generation_prompt=True)
    assert got == case["rendered"]


def test_the_format_follows_the_template(llama_tiny_dir, tmp_path):
    want = {"qwen2_5_instruct": "hermes", "llama3_1_instruct": "llama3_json", "mistral_v3": "mistral"}
    for path in FIXTURES:
        runner = _runner(json.loads(path.read_text()), llama_tiny_dir, tmp_path)
        assert runner.tool_call_format == want[path.stem]
