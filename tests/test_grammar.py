"""Structured output: every completion matches its grammar (SPEC §1 `grammar`, `grammar_type`,
`response_format`; issue 11).

The tiny random llama writes junk when left alone (checked below), so whatever it writes under a
grammar is the grammar's doing. Each output is judged by someone else's implementation of the
same language: Python's `re` for regexes and `jsonschema` for JSON Schemas. Every grammar here has
a finite language, so each choice must also end by itself ("stop"), never by running out of
tokens. The real model (Qwen2.5-Coder-0.5B) must also say something sensible.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from conftest import FIXTURES
from mistralrs import ChatCompletionRequest, CompletionRequest, Runner, Which

SCHEMAS = {
    "object_with_bounds": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    "nested_objects": {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 999}, "admin": {"type": "boolean"}},
                "required": ["id", "admin"],
                "additionalProperties": False,
            },
            "tag": {"enum": ["a", "b"]},
        },
        "required": ["user", "tag"],
        "additionalProperties": False,
    },
    "array_of_small_ints": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 1, "maxItems": 4},
    "enum_of_colors": {"enum": ["red", "green", "blue"]},
    "optional_field": {
        "type": "object",
        "properties": {"x": {"type": "integer", "minimum": -3, "maximum": 3}, "note": {"type": "string", "maxLength": 4}},
        "required": ["x"],
        "additionalProperties": False,
    },
    "bounded_integer": {"type": "integer", "minimum": -50, "maximum": 50},
    "exclusive_bounds": {"type": "integer", "exclusiveMinimum": 10, "exclusiveMaximum": 20},
    "boolean": {"type": "boolean"},
    "null": {"type": "null"},
    "const": {"const": {"ok": True}},
    "array_of_objects": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"k": {"enum": ["p", "q"]}, "v": {"type": "integer", "minimum": 0, "maximum": 99}},
            "required": ["k", "v"],
            "additionalProperties": False,
        },
        "maxItems": 2,
    },
    "any_of": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 5}, {"type": "string", "maxLength": 3}]},
    "string_pattern": {"type": "string", "pattern": "^[a-z]{3}-[0-9]{2}$"},
    "string_lengths": {"type": "string", "minLength": 2, "maxLength": 4},
    "defs_and_refs": {
        "$defs": {"point": {"type": "object", "properties": {"x": {"$ref": "#/$defs/coord"}, "y": {"$ref": "#/$defs/coord"}},
                            "required": ["x", "y"], "additionalProperties": False},
                  "coord": {"type": "integer", "minimum": 0, "maximum": 9}},
        "type": "array", "items": {"$ref": "#/$defs/point"}, "minItems": 1, "maxItems": 2,
    },
    "tuple": {"type": "array", "prefixItems": [{"type": "boolean"}, {"enum": [1, 2, 3]}], "items": False},
}

REGEXES = {
    "date_with_alternations": r" (19|20)\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])",
    "yes_no_maybe": r"(yes|no|maybe)",
    "names": r"[A-Z][a-z]{1,6}( [A-Z][a-z]{1,6})?",
    "phone": r"\(\d{3}\) \d{3}-\d{4}",
    "ipv4": r"((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)",
    "forced_prefix": r"The answer is (yes|no)\.",
}

# A small Lark grammar: a sum of one to three bounded products, each factor a one- or two-digit
# number or a variable.
LARK = r"""
start: term (" + " term){0,2}
term: factor (" * " factor)?
factor: NUMBER | VAR
NUMBER: /[1-9][0-9]?/
VAR: "x" | "y"
"""
LARK_RE = re.compile(r"(?:[1-9][0-9]?|x|y)(?: \* (?:[1-9][0-9]?|x|y))?(?: \+ (?:[1-9][0-9]?|x|y)(?: \* (?:[1-9][0-9]?|x|y))?){0,2}")

CASES = (
    [("json_schema", name, s) for name, s in SCHEMAS.items()]
    + [("regex", name, r) for name, r in REGEXES.items()]
    + [("lark", "sum_of_products", LARK)]
)


def conforms(kind: str, grammar, text: str) -> bool:
    if kind == "regex":
        return re.fullmatch(grammar, text) is not None
    if kind == "lark":
        return LARK_RE.fullmatch(text) is not None
    try:
        jsonschema.validate(json.loads(text), grammar)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


@pytest.fixture(scope="module")
def tiny():
    runner = Runner(which=Which.Plain(model_id=str(FIXTURES / "llama-tiny"), arch="llama"))
    yield runner
    runner.close()


def _completion(kind, grammar, **kw):
    kw.setdefault("seed", 7)
    return CompletionRequest(model="tiny", prompt="Output:", max_tokens=120, temperature=1.0,
                             grammar=grammar, grammar_type=kind, **kw)


def test_the_tiny_model_writes_junk_without_a_grammar(tiny):
    res = tiny.send_completion_request(_completion(None, None, n_choices=4, best_of=4))
    for kind, _, grammar in CASES:
        if kind == "json_schema" and grammar.get("type") == "object":
            assert not any(conforms(kind, grammar, c.text) for c in res.choices)


@pytest.mark.parametrize("kind,name,grammar", CASES, ids=[f"{k}-{n}" for k, n, _ in CASES])
def test_every_choice_matches(tiny, kind, name, grammar):
    res = tiny.send_completion_request(_completion(kind, grammar, n_choices=4, best_of=4))
    assert len(res.choices) == 4
    for c in res.choices:
        assert c.finish_reason == "stop", (c.text, c.finish_reason)
        assert conforms(kind, grammar, c.text), c.text


@pytest.mark.parametrize("kind,name,grammar", CASES[::3], ids=[f"{k}-{n}" for k, n, _ in CASES[::3]])
def test_streamed_choices_match(tiny, kind, name, grammar):
    texts = ["", "", "", ""]
    reasons = [None] * 4
    for chunk in tiny.send_completion_request(_completion(kind, grammar, n_choices=4, best_of=4, stream=True, seed=11)):
        for c in chunk.choices:
            texts[c.index] += c.text
            reasons[c.index] = c.finish_reason or reasons[c.index]
    assert reasons == ["stop"] * 4
    for t in texts:
        assert conforms(kind, grammar, t), t


def test_chat_requests_take_grammars_and_response_format(tiny):
    schema = SCHEMAS["nested_objects"]
    for kw in (
        {"grammar": schema, "grammar_type": "json_schema"},
        {"grammar": json.dumps(schema), "grammar_type": "json_schema"},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}},
    ):
        res = tiny.send_chat_completion_request(ChatCompletionRequest(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=120, temperature=1.0, seed=3,
            n_choices=2, **kw))
        for c in res.choices:
            jsonschema.validate(json.loads(c.message.content), schema)
    res = tiny.send_chat_completion_request(ChatCompletionRequest(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=200, temperature=0.0,
        response_format={"type": "json_object"}))
    if res.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(res.choices[0].message.content), dict)
    else:  # an unbounded language: what was written so far is an object's prefix
        assert res.choices[0].message.content.lstrip().startswith("{")


def test_forced_tokens_are_appended_with_probability_one(tiny):
    res = tiny.send_completion_request(_completion("regex", REGEXES["forced_prefix"], logprobs=True))
    c = res.choices[0]
    assert re.fullmatch(REGEXES["forced_prefix"], c.text)
    steps = c.logprobs.content
    assert "".join(s.token for s in steps) == c.text
    # "The answer is " has one way to be written under the grammar after its first token.
    assert sum(1 for s in steps if s.logprob == 0.0) >= 3


@pytest.mark.parametrize("kw,message", [
    ({"grammar": "(", "grammar_type": "regex"}, "unclosed group"),
    ({"grammar": {"type": "nonsense"}, "grammar_type": "json_schema"}, "nonsense"),
    ({"grammar": "{not json", "grammar_type": "json_schema"}, "not valid JSON"),
    ({"grammar": "start: undefined_rule", "grammar_type": "lark"}, "undefined_rule"),
    ({"grammar": "a", "grammar_type": "xml"}, "unknown grammar_type"),
    ({"grammar": "a"}, "grammar needs grammar_type"),
    ({"grammar_type": "regex"}, "without a grammar"),
    # A keyword llguidance cannot enforce is refused by name (no lenient mode: no output that only
    # looks constrained).
    ({"grammar": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "grammar_type": "json_schema"},
     "uniqueItems"),
])
def test_a_bad_grammar_is_a_value_error_and_the_runner_keeps_serving(tiny, kw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny.send_completion_request(CompletionRequest(model="tiny", prompt="x", max_tokens=4, **kw))
    res = tiny.send_completion_request(_completion("regex", "(yes|no)"))
    assert res.choices[0].text in ("yes", "no")


def test_one_of_is_read_as_any_of(tiny):
    """``oneOf`` compiles (as ``anyOf``, llguidance's coerce_one_of); with disjoint branches, as real
    schemas' tagged unions have, every output is valid against exactly one branch (jsonschema checks
    the ``oneOf`` itself)."""
    schema = {"oneOf": [
        {"type": "object", "properties": {"kind": {"const": "circle"}, "r": {"type": "integer"}},
         "required": ["kind", "r"], "additionalProperties": False},
        {"type": "object", "properties": {"kind": {"const": "square"}, "side": {"type": "integer"}},
         "required": ["kind", "side"], "additionalProperties": False},
    ]}
    res = tiny.send_completion_request(_completion("json_schema", schema, n_choices=4, best_of=4))
    for c in res.choices:
        if c.finish_reason == "stop":
            jsonschema.validate(json.loads(c.text), schema)


def test_bad_response_formats_are_value_errors(tiny):
    for fmt, message in [({"type": "xml"}, "unknown"), ({"type": "json_schema"}, "needs `json_schema`"),
                         ("json", "must be a dict")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            tiny.send_chat_completion_request(ChatCompletionRequest(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, response_format=fmt))


def test_qwen_fills_a_small_schema_sensibly():
    from fetch_models import model_path

    path = model_path("qwen2.5-coder-0.5b")
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 30},
            "country": {"type": "string", "maxLength": 30},
            "population_millions": {"type": "number", "minimum": 0, "maximum": 100},
        },
        "required": ["city", "country", "population_millions"],
        "additionalProperties": False,
    }
    runner = Runner(which=Which.GGUF(tok_model_id=None, quantized_model_id=str(path.parent), quantized_filename=path.name))
    try:
        res = runner.send_chat_completion_request(ChatCompletionRequest(
            model="qwen", messages=[{"role": "user", "content": "Describe the capital of France as JSON."}],
            max_tokens=80, temperature=0.0, response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}))
    finally:
        runner.close()
    out = json.loads(res.choices[0].message.content)
    print(f"\n{out}")
    jsonschema.validate(out, schema)
    assert out["city"] == "Paris" and out["country"] == "France"
