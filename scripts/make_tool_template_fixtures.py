#!/usr/bin/env python3
"""Record reference renderings of tool-calling chat templates with Hugging Face transformers.

The outputs under tests/fixtures/tool_templates/*.json are what
`tokenizer.apply_chat_template(messages, tools=..., tokenize=False, add_generation_prompt=...)`
returns for the official Qwen 2.5 Instruct, Llama 3.1 Instruct and Mistral v3 (7B Instruct v0.3)
templates. Our Rust (minijinja) renderer is tested against them.

How to run (outside the project's own environment; needs no torch and no network once installed):

    python3 -m venv /work/venv-tf
    /work/venv-tf/bin/pip install transformers jinja2
    /work/venv-tf/bin/python scripts/make_tool_template_fixtures.py

It rewrites tests/fixtures/tool_templates/<name>.json next to the <name>.jinja templates.
No model is downloaded: a tiny WordLevel `tokenizers.Tokenizer` holding only the special tokens is
wrapped in `PreTrainedTokenizerFast`, so the render goes through transformers' own
`apply_chat_template` (message normalisation, special-token variables, its jinja environment with
trim_blocks/lstrip_blocks, its `tojson` filter and `raise_exception`).

Notes on inputs:
- tools are OpenAI-style dicts {"type": "function", "function": {name, description, parameters}},
  as vLLM passes them.
- assistant tool calls carry `arguments` as a dict (not a JSON string), and ids of exactly
  9 alphanumeric characters (Mistral's template rejects anything else).
- `date_string` is not passed, so Llama 3.1's template uses its default "26 Jul 2024".
- transformers >= 5 drops message keys whose value is None before rendering
  (`_normalize_chat_messages`), so `"content": None` reaches the template as an absent key.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import transformers
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "tool_templates"

TEMPLATES = {
    # name: (template file, bos_token, eos_token)
    "qwen2_5_instruct": ("qwen2_5_instruct.jinja", None, "<|im_end|>"),
    "llama3_1_instruct": ("llama3_1_instruct.jinja", "<|begin_of_text|>", "<|eot_id|>"),
    "mistral_v3": ("mistral_v3.jinja", "<s>", "</s>"),
}

# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

GET_WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}

GET_TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the current local time in a timezone",
        "parameters": {
            "type": "object",
            "properties": {
                "timezone": {"type": "string", "description": "IANA timezone, e.g. Europe/Paris"},
            },
            "required": ["timezone"],
        },
    },
}

PLAN_TRIP = {
    "type": "function",
    "function": {
        "name": "plan_trip",
        "description": "Plane un voyage. Température en °C, distances en km — « idéal » pour l'été.",
        "parameters": {
            "type": "object",
            "properties": {
                "destination": {
                    "type": "object",
                    "description": "Où aller",
                    "properties": {
                        "city": {"type": "string"},
                        "coords": {
                            "type": "array",
                            "items": {"type": "number"},
                            "minItems": 2,
                            "maxItems": 2,
                        },
                    },
                    "required": ["city"],
                },
                "stops": {
                    "type": "array",
                    "description": "Étapes <optionnelles> & ordonnées",
                    "items": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "nights": {"type": "integer", "minimum": 1},
                        },
                    },
                },
                "max_temp": {"type": "number", "description": "Température en °C", "default": 25.0},
                "flexible": {"type": "boolean", "default": False},
                "budget": {"type": ["number", "null"]},
            },
            "required": ["destination"],
        },
    },
}

TOOLS = [GET_WEATHER, GET_TIME]

USER_Q = {"role": "user", "content": "What's the weather like in Paris right now, and what time is it there?"}

CALL_WEATHER = {
    "id": "abcDEF123",
    "type": "function",
    "function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}},
}
CALL_TIME = {
    "id": "xyzXYZ789",
    "type": "function",
    "function": {"name": "get_time", "arguments": {"timezone": "Europe/Paris"}},
}
RESULT_WEATHER = {
    "role": "tool",
    "tool_call_id": "abcDEF123",
    "name": "get_weather",
    "content": '{"temperature": 21, "unit": "celsius", "condition": "sunny"}',
}
RESULT_TIME = {
    "role": "tool",
    "tool_call_id": "xyzXYZ789",
    "name": "get_time",
    "content": '{"time": "14:05"}',
}

PARALLEL_HISTORY = [
    USER_Q,
    {"role": "assistant", "content": "", "tool_calls": [CALL_WEATHER, CALL_TIME]},
    RESULT_WEATHER,
    RESULT_TIME,
]


def cases() -> list[dict]:
    out = [
        {
            "name": "a_user_two_tools",
            "messages": [USER_Q],
            "tools": TOOLS,
            "add_generation_prompt": True,
        },
        {
            "name": "b_system_user_tools",
            "messages": [
                {"role": "system", "content": "You are a concise assistant. Use tools when useful."},
                USER_Q,
            ],
            "tools": TOOLS,
            "add_generation_prompt": True,
        },
        {
            "name": "c_single_tool_call_and_result",
            "messages": [
                {"role": "user", "content": "What's the weather like in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [CALL_WEATHER]},
                RESULT_WEATHER,
            ],
            "tools": TOOLS,
            "add_generation_prompt": True,
        },
        {
            "name": "d_parallel_tool_calls_and_results",
            "messages": PARALLEL_HISTORY,
            "tools": TOOLS,
            "add_generation_prompt": True,
        },
        {
            "name": "e_parallel_then_answer_then_user",
            "messages": PARALLEL_HISTORY
            + [
                {"role": "assistant", "content": "It is 21 °C and sunny in Paris, and the local time is 14:05."},
                {"role": "user", "content": "Thanks! And in Tokyo?"},
            ],
            "tools": TOOLS,
            "add_generation_prompt": True,
        },
        {
            "name": "f_plain_chat_no_tools",
            "messages": [
                {"role": "user", "content": "Hello!"},
                {"role": "assistant", "content": "Hi, how can I help?"},
                {"role": "user", "content": "Tell me a joke."},
            ],
            "tools": None,
            "add_generation_prompt": True,
        },
        {
            "name": "g_nested_params_non_ascii",
            "messages": [{"role": "user", "content": "Planifie un voyage à Zürich, max 25 °C."}],
            "tools": [PLAN_TRIP, GET_WEATHER],
            "add_generation_prompt": True,
        },
        # Extras beyond the required set.
        {
            "name": "h_single_tool_call_no_generation_prompt",
            "messages": [
                {"role": "user", "content": "What's the weather like in Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [CALL_WEATHER]},
                RESULT_WEATHER,
            ],
            "tools": TOOLS,
            "add_generation_prompt": False,
        },
        {
            "name": "i_tool_call_with_text_content",
            "messages": [
                {"role": "user", "content": "What's the weather like in Paris?"},
                {"role": "assistant", "content": "Let me check.", "tool_calls": [CALL_WEATHER]},
                RESULT_WEATHER,
            ],
            "tools": TOOLS,
            "add_generation_prompt": True,
        },
    ]
    return copy.deepcopy(out)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def make_tokenizer(template: str, bos: str | None, eos: str) -> PreTrainedTokenizerFast:
    specials = [t for t in ("[UNK]", bos, eos) if t is not None]
    vocab = {tok: i for i, tok in enumerate(specials)}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="[UNK]"))
    kwargs = {"tokenizer_object": tok, "unk_token": "[UNK]", "eos_token": eos, "chat_template": template}
    if bos is not None:
        kwargs["bos_token"] = bos
    return PreTrainedTokenizerFast(**kwargs)


def render(tokenizer: PreTrainedTokenizerFast, case: dict) -> dict:
    # Deep copies so a template (or transformers) can never see state left by a previous render.
    messages = copy.deepcopy(case["messages"])
    tools = copy.deepcopy(case["tools"])
    try:
        text = tokenizer.apply_chat_template(
            messages,
            tools=tools,
            tokenize=False,
            add_generation_prompt=case["add_generation_prompt"],
        )
    except Exception as e:  # the template's raise_exception -> jinja2 TemplateError
        return {"error": str(e), "error_type": type(e).__name__}
    assert isinstance(text, str), type(text)
    return {"rendered": text}


def main() -> int:
    for name, (tfile, bos, eos) in TEMPLATES.items():
        template = (FIXTURES / tfile).read_text(encoding="utf-8")
        tokenizer = make_tokenizer(template, bos, eos)
        assert tokenizer.bos_token == bos, (tokenizer.bos_token, bos)
        assert tokenizer.eos_token == eos, (tokenizer.eos_token, eos)
        recorded = []
        for case in cases():
            first = render(tokenizer, case)
            second = render(tokenizer, case)
            assert first == second, f"{name}/{case['name']}: render is not deterministic"
            recorded.append({**case, **first})
            status = "ERROR " + first["error"] if "error" in first else f"{len(first['rendered'])} chars"
            print(f"{name:20s} {case['name']:42s} {status}")
        doc = {
            "template_file": tfile,
            "bos_token": bos,
            "eos_token": eos,
            "transformers_version": transformers.__version__,
            "render_call": "PreTrainedTokenizerFast.apply_chat_template(messages, tools=tools, "
            "tokenize=False, add_generation_prompt=add_generation_prompt)",
            "cases": recorded,
        }
        out = FIXTURES / f"{name}.json"
        out.write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
