"""The Python API surface, checked against SPEC.md §1 (names, fields, defaults,
value-object behaviour, request/response shapes) and OpenAI's response format
(field names, logprobs layout, finish_reason values)."""

from __future__ import annotations

import json
import math
import re

import mistralrs
import pytest
from conftest import REPO, chat
from mistralrs import (
    Architecture,
    ChatCompletionChunkResponse,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    Runner,
    Usage,
    Which,
)

# ----------------------------------------------------------------------------- Architecture

# SPEC §1 "Architecture": member name -> value.
ARCHITECTURES = {
    "Mistral": "mistral",
    "Gemma": "gemma",
    "Mixtral": "mixtral",
    "Llama": "llama",
    "Phi2": "phi2",
    "Phi3": "phi3",
    "Qwen2": "qwen2",
}


def arch_str(a) -> str:
    """An arch field may hold the Architecture member or the lowercase string."""
    return a.value if isinstance(a, Architecture) else a


@pytest.mark.parametrize("name,value", ARCHITECTURES.items())
def test_architecture_members_and_values(name, value):
    member = getattr(Architecture, name)
    assert isinstance(member, Architecture)
    assert member.value == value


@pytest.mark.parametrize("as_member", [True, False], ids=["Architecture.Llama", "llama"])
def test_arch_accepts_member_and_lowercase_string(as_member):
    w = Which.Plain(model_id="some/model", arch=Architecture.Llama if as_member else "llama")
    assert arch_str(w.arch) == "llama"


def test_unknown_arch_string_is_a_value_error(llama_tiny_dir):
    # SPEC §1: arch is one of the seven; anything else is bad content -> ValueError naming it.
    with pytest.raises(ValueError, match="gpt5"):
        Runner(which=Which.Plain(model_id=str(llama_tiny_dir), arch="gpt5"))


# ----------------------------------------------------------------------------- Which

# SPEC §1 "Which" table: variant -> (required fields with sample values, defaults).
_ADAPTER = dict(order="/p/order.json")
_GG = dict(tok_model_id="org/tok", quantized_model_id="org/q", quantized_filename="m.gguf")
_DEF = dict(tokenizer_json=None, repeat_last_n=64)
WHICH_TABLE = {
    "Plain": (dict(model_id="org/m", arch="llama"), dict(_DEF)),
    "XLora": (
        dict(arch="llama", xlora_model_id="org/x", **_ADAPTER),
        dict(tgt_non_granular_index=None, model_id=None, **_DEF),
    ),
    "Lora": (dict(arch="llama", adapters_model_id="org/a", **_ADAPTER), dict(model_id=None, **_DEF)),
    "GGUF": (dict(_GG), dict(_DEF)),
    "XLoraGGUF": (dict(xlora_model_id="org/x", **_ADAPTER, **_GG), dict(tgt_non_granular_index=None, **_DEF)),
    "LoraGGUF": (dict(adapters_model_id="org/a", **_ADAPTER, **_GG), dict(_DEF)),
    "GGML": (dict(_GG), dict(_DEF)),
    "XLoraGGML": (dict(xlora_model_id="org/x", **_ADAPTER, **_GG), dict(tgt_non_granular_index=None, **_DEF)),
    "LoraGGML": (dict(adapters_model_id="org/a", **_ADAPTER, **_GG), dict(_DEF)),
}
# Non-default values for every optional field, to check they are stored.
OVERRIDES = dict(tokenizer_json="/p/tokenizer.json", repeat_last_n=7, model_id="org/base", tgt_non_granular_index=3)


def field_value(w, name):
    v = getattr(w, name)
    return arch_str(v) if name == "arch" else v


def test_which_has_exactly_the_nine_variants():
    for name in WHICH_TABLE:
        assert hasattr(Which, name), f"Which.{name} is missing"


@pytest.mark.parametrize("variant", WHICH_TABLE)
def test_which_required_fields_and_defaults(variant):
    required, defaults = WHICH_TABLE[variant]
    w = getattr(Which, variant)(**required)
    for k, v in required.items():
        assert field_value(w, k) == v, f"Which.{variant}.{k}"
    for k, v in defaults.items():
        assert field_value(w, k) == v, f"Which.{variant}.{k} default"


@pytest.mark.parametrize("variant", WHICH_TABLE)
def test_which_optional_fields_are_stored(variant):
    required, defaults = WHICH_TABLE[variant]
    optional = {k: OVERRIDES[k] for k in defaults}
    w = getattr(Which, variant)(**required, **optional)
    for k, v in {**required, **optional}.items():
        assert field_value(w, k) == v, f"Which.{variant}.{k}"


@pytest.mark.parametrize("variant", WHICH_TABLE)
def test_which_rejects_missing_and_unknown_fields(variant):
    required, _ = WHICH_TABLE[variant]
    cls = getattr(Which, variant)
    for k in required:
        kwargs = {kk: vv for kk, vv in required.items() if kk != k}
        with pytest.raises(TypeError):
            cls(**kwargs)
    with pytest.raises(TypeError):
        cls(**required, no_such_field=1)


@pytest.mark.parametrize("variant", WHICH_TABLE)
def test_which_is_immutable(variant):
    required, _ = WHICH_TABLE[variant]
    w = getattr(Which, variant)(**required)
    for k in required:
        with pytest.raises(AttributeError):
            setattr(w, k, "changed")
    assert field_value(w, next(iter(required))) == next(iter(required.values()))


@pytest.mark.parametrize("variant", WHICH_TABLE)
def test_which_repr_names_variant_and_fields(variant):
    required, _ = WHICH_TABLE[variant]
    r = repr(getattr(Which, variant)(**required))
    assert variant in r
    for k, v in required.items():
        assert k in r, f"{k} not in {r}"
        assert str(v).lower() in r.lower(), f"{v} not in {r}"  # arch may show as Architecture.Llama


def test_which_is_a_value_object():
    a = Which.Plain(model_id="org/m", arch="llama")
    assert a == Which.Plain(model_id="org/m", arch="llama")
    assert a != Which.Plain(model_id="org/other", arch="llama")
    assert isinstance(a, Which)


# ----------------------------------------------------------------------------- requests

# SPEC §1 "Requests": the defaults of both signatures.
COMMON_DEFAULTS = dict(
    logit_bias=None,
    logprobs=False,
    top_logprobs=None,
    max_tokens=None,
    n_choices=1,
    presence_penalty=None,
    frequency_penalty=None,
    repetition_penalty=None,
    stop_seqs=None,
    temperature=None,
    top_p=None,
    top_k=None,
    min_p=None,
    stream=False,
    grammar=None,
    grammar_type=None,
    adapters=None,
    seed=None,
    ignore_eos=False,
)
# best_of None: as many as n_choices (OpenAI's and vLLM's default).
COMPLETION_ONLY_DEFAULTS = dict(echo_prompt=False, best_of=None, suffix=None)
CHAT_ONLY_DEFAULTS = dict(tools=None, tool_choice=None, parallel_tool_calls=None, response_format=None)


def test_chat_request_defaults():
    msgs = [{"role": "user", "content": "hi"}]
    req = ChatCompletionRequest(messages=msgs, model="m")
    assert req.model == "m"
    for k, v in {**COMMON_DEFAULTS, **CHAT_ONLY_DEFAULTS}.items():
        assert getattr(req, k) == v, k


def test_completion_request_defaults():
    req = CompletionRequest(prompt="hi", model="m")
    assert req.prompt == "hi" and req.model == "m"
    for k, v in {**COMMON_DEFAULTS, **COMPLETION_ONLY_DEFAULTS}.items():
        assert getattr(req, k) == v, k


def test_version():
    # The Python package version is the Rust workspace's version.
    cargo = (REPO / "Cargo.toml").read_text()
    m = re.search(r'^\[workspace\.package\][^\[]*?^version\s*=\s*"([^"]+)"', cargo, re.M | re.S)
    assert isinstance(mistralrs.__version__, str)
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", mistralrs.__version__)
    if m:
        assert mistralrs.__version__ == m.group(1)


# ----------------------------------------------------------------------------- not yet implemented


def _order_file(tmp_path, base):
    p = tmp_path / "order.json"
    p.write_text(json.dumps({"base_model_id": str(base), "order": ["a1"], "layers": {}}))
    return str(p)


@pytest.mark.parametrize("variant", ["GGML", "XLoraGGML", "LoraGGML"])
def test_ggml_variants_given_a_gguf_file(variant, tmp_path, llama_tiny_dir, tiny_gguf):
    # A GGUF file handed to a GGML variant is refused with a pointer to Which.GGUF (GGML files: test_ggml.py).
    required, _ = WHICH_TABLE[variant]
    kwargs = dict(required)
    for k in kwargs:
        if k.endswith("model_id"):
            kwargs[k] = str(llama_tiny_dir)
    kwargs["quantized_filename"] = tiny_gguf.name
    lora = llama_tiny_dir.parent / "lora" / "llama"
    if variant == "LoraGGML":
        kwargs.update(adapters_model_id=str(lora / "adapters"), order=str(lora / "order_attn.json"))
    if variant == "XLoraGGML":
        x = lora / "xlora" / "flat_d1"
        kwargs.update(xlora_model_id=str(x), order=str(x / "order.json"))
    with pytest.raises(ValueError, match="GGUF"):
        Runner(which=getattr(Which, variant)(**kwargs))


# ----------------------------------------------------------------------------- runner basics


@pytest.mark.parametrize("text", ["Hello world", "The capital of France is Paris.", "a  b\tc\nd"])
def test_tokenize_detokenize_round_trip_tiny(tiny_runner, text):
    ids = tiny_runner.tokenize(text)
    assert isinstance(ids, list) and ids and all(isinstance(i, int) for i in ids)
    assert tiny_runner.detokenize(ids) == text


@pytest.mark.parametrize("text", ["Hello world", " Paris, France — café 東京 🙂", "def f(x):\n    return x"])
def test_tokenize_detokenize_round_trip_smollm2(smollm2_runner, text):
    # SmolLM2's GGUF vocabulary is gpt2 byte-level BPE: every string round-trips.
    ids = smollm2_runner.tokenize(text)
    assert all(isinstance(i, int) for i in ids)
    assert smollm2_runner.detokenize(ids) == text


def test_context_manager_closes_runner(llama_tiny_dir):
    with Runner(which=Which.Plain(model_id=str(llama_tiny_dir), arch="llama")) as r:
        assert chat(r, "Hi", max_tokens=2).usage.completion_tokens >= 1
    with pytest.raises(RuntimeError):
        chat(r, "Hi", max_tokens=2)


def test_close_is_idempotent_and_stops_requests(llama_tiny_dir):
    r = Runner(which=Which.Plain(model_id=str(llama_tiny_dir), arch="llama"))
    r.close()
    r.close()
    with pytest.raises(RuntimeError):
        chat(r, "Hi", max_tokens=2)
    with pytest.raises(RuntimeError):
        r.send_completion_request(CompletionRequest(prompt="Hi", model="m", max_tokens=2))


# ----------------------------------------------------------------------------- responses


def test_chat_response_shape(tiny_runner):
    # OpenAI chat.completion object: field names and types.
    res = chat(tiny_runner, "Hi", max_tokens=4, ignore_eos=True)
    assert isinstance(res, ChatCompletionResponse)
    assert res.object == "chat.completion"
    assert isinstance(res.id, str) and res.id
    assert isinstance(res.created, int) and res.created > 1_600_000_000
    assert isinstance(res.model, str)
    assert len(res.choices) == 1
    c = res.choices[0]
    assert c.index == 0
    assert c.message.role == "assistant"
    assert isinstance(c.message.content, str)
    assert c.finish_reason == "length"
    assert c.logprobs is None
    u = res.usage
    assert isinstance(u, Usage)
    assert u.completion_tokens == 4
    assert u.prompt_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    for f in (
        "avg_tok_per_sec",
        "avg_prompt_tok_per_sec",
        "avg_compl_tok_per_sec",
        "total_time_sec",
        "total_prompt_time_sec",
        "total_completion_time_sec",
    ):
        assert isinstance(getattr(u, f), float) and getattr(u, f) >= 0, f
    assert "ChatCompletionResponse" in repr(res)
    assert "Usage" in repr(u) and "prompt_tokens" in repr(u)


def test_completion_response_shape(tiny_runner):
    res = tiny_runner.send_completion_request(
        CompletionRequest(prompt="Hello", model="m", max_tokens=3, ignore_eos=True, temperature=0.0)
    )
    assert isinstance(res, CompletionResponse)
    assert res.object == "text_completion"
    c = res.choices[0]
    assert c.index == 0 and isinstance(c.text, str) and c.finish_reason == "length"
    assert res.usage.completion_tokens == 3
    assert "CompletionResponse" in repr(res)


def test_echo_prompt(tiny_runner):
    plain = tiny_runner.send_completion_request(
        CompletionRequest(prompt="Hello", model="m", max_tokens=3, ignore_eos=True)
    )
    echo = tiny_runner.send_completion_request(
        CompletionRequest(prompt="Hello", model="m", max_tokens=3, ignore_eos=True, echo_prompt=True)
    )
    assert echo.choices[0].text == "Hello" + plain.choices[0].text
    # Streamed, the prompt comes first in each choice's first chunk (as OpenAI's and vLLM's streams).
    texts = ["", ""]
    for chunk in tiny_runner.send_completion_request(CompletionRequest(
            prompt="Hello", model="m", max_tokens=3, ignore_eos=True, echo_prompt=True, stream=True,
            n_choices=2, best_of=2, temperature=0.0)):
        for c in chunk.choices:
            texts[c.index] += c.text
    assert texts == [echo.choices[0].text] * 2


def test_messages_as_templated_string(tiny_runner):
    # SPEC §1: a str is used as an already-templated prompt (same tokens as the rendered messages).
    msgs = [{"role": "user", "content": "Hi there"}]
    a = tiny_runner.send_chat_completion_request(ChatCompletionRequest(messages=msgs, model="m", max_tokens=6))
    res = tiny_runner.send_chat_completion_request(
        ChatCompletionRequest(messages="Hi there", model="m", max_tokens=6, ignore_eos=True)
    )
    assert res.usage.completion_tokens == 6
    assert a.usage.prompt_tokens > res.usage.prompt_tokens  # the template adds role markers


def test_stream_returns_chunks(tiny_runner):
    it = tiny_runner.send_chat_completion_request(
        ChatCompletionRequest(
            messages=[{"role": "user", "content": "Hi"}], model="m", max_tokens=5, ignore_eos=True, stream=True
        )
    )
    chunks = list(it)
    assert chunks and all(isinstance(c, ChatCompletionChunkResponse) for c in chunks)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_n_choices(tiny_runner):
    res = chat(tiny_runner, "Hi", max_tokens=6, ignore_eos=True, n_choices=2, temperature=0.9, seed=7)
    assert [c.index for c in res.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in res.choices)
    # OpenAI/vLLM usage counts the tokens of every choice.
    assert res.usage.completion_tokens == 12
    greedy = chat(tiny_runner, "Hi", max_tokens=6, ignore_eos=True, n_choices=2)
    assert greedy.choices[0].message.content == greedy.choices[1].message.content


def test_n_choices_completion(tiny_runner):
    # OpenAI completions: best_of candidates, the n best returned (best_of >= n).
    res = tiny_runner.send_completion_request(
        CompletionRequest(
            prompt="Hello", model="m", max_tokens=4, ignore_eos=True, n_choices=3, best_of=3, temperature=1.0
        )
    )
    assert sorted(c.index for c in res.choices) == [0, 1, 2]


def test_best_of_defaults_to_n_choices(tiny_runner):
    """As OpenAI and vLLM: asking for several choices needs no best_of (it raised ValueError: best_of (1)
    must be at least n_choices (4); issue 26)."""
    req = CompletionRequest(prompt="Hello", model="m", max_tokens=4, ignore_eos=True, n_choices=4, temperature=1.0)
    assert req.best_of is None
    res = tiny_runner.send_completion_request(req)
    assert sorted(c.index for c in res.choices) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="best_of"):
        tiny_runner.send_completion_request(CompletionRequest(prompt="Hello", model="m", n_choices=4, best_of=2))


def test_max_tokens_gives_length(tiny_runner, smollm2_runner):
    res = chat(tiny_runner, "Hi", max_tokens=7, ignore_eos=True)
    assert res.usage.completion_tokens == 7 and res.choices[0].finish_reason == "length"
    # A real model asked for an essay does not stop by itself within 5 tokens.
    res = chat(smollm2_runner, "Write a long essay about the history of Rome.", max_tokens=5)
    assert res.usage.completion_tokens == 5 and res.choices[0].finish_reason == "length"


def test_ignore_eos(smollm2_runner):
    # The model ends a one-word answer with EOS; ignore_eos=True runs on to max_tokens.
    question = "Answer with one word: what color is the sky on a clear day?"
    free = chat(smollm2_runner, question, max_tokens=48)
    assert free.choices[0].finish_reason == "stop", free.choices[0].message.content
    n = free.usage.completion_tokens + 4
    forced = chat(smollm2_runner, question, max_tokens=n, ignore_eos=True)
    assert forced.usage.completion_tokens == n and forced.choices[0].finish_reason == "length"
    assert forced.choices[0].message.content.startswith(free.choices[0].message.content)


def test_stop_seqs_cut_before_the_stop_string(smollm2_runner):
    # OpenAI semantics: output ends right before the first occurrence of the stop string.
    full = chat(smollm2_runner, "Name three colors of the rainbow.", max_tokens=24, logprobs=True)
    text = full.choices[0].message.content
    pieces = [t.token for t in full.choices[0].logprobs.content]
    assert "".join(pieces) == text
    # A stop string made of whole tokens (so the text ends with it at some step),
    # whose first occurrence is where those tokens are.
    for k in range(3, len(pieces) - 2):
        stop = pieces[k] + pieces[k + 1]
        prefix = "".join(pieces[:k])
        if stop.strip() and text.find(stop) == len(prefix):
            break
    else:
        pytest.fail(f"no usable stop string in {text!r}")
    cut = chat(smollm2_runner, "Name three colors of the rainbow.", max_tokens=24, stop_seqs=[stop])
    assert cut.choices[0].message.content == prefix, (stop, text)
    assert cut.choices[0].finish_reason == "stop"


def _check_logprob_entry(lp, top_n):
    assert isinstance(lp.token, str)
    assert isinstance(lp.bytes, list) and all(isinstance(b, int) and 0 <= b < 256 for b in lp.bytes)
    if "\ufffd" not in lp.token:  # a token that is a whole UTF-8 sequence
        assert bytes(lp.bytes).decode("utf-8") == lp.token
    assert isinstance(lp.logprob, float) and lp.logprob <= 1e-6


def test_logprobs_structure(smollm2_runner):
    # OpenAI logprobs: content[i] = {token, logprob, bytes, top_logprobs[<=N] sorted descending}.
    res = chat(smollm2_runner, "What is 2+2?", max_tokens=8, logprobs=True, top_logprobs=5)
    c = res.choices[0]
    content = c.logprobs.content
    assert len(content) == res.usage.completion_tokens
    for lp in content:
        _check_logprob_entry(lp, 5)
        tops = lp.top_logprobs
        assert 1 <= len(tops) <= 5
        for t in tops:
            _check_logprob_entry(t, 5)
        values = [t.logprob for t in tops]
        assert values == sorted(values, reverse=True)
        assert sum(math.exp(v) for v in values) <= 1 + 1e-4
        # Greedy picks the argmax, which is the first alternative.
        assert lp.logprob == pytest.approx(tops[0].logprob, abs=1e-5)
        assert lp.token == tops[0].token


def test_logprobs_without_top(smollm2_runner):
    res = chat(smollm2_runner, "What is 2+2?", max_tokens=4, logprobs=True)
    content = res.choices[0].logprobs.content
    assert len(content) == 4 or res.choices[0].finish_reason == "stop"
    assert all(lp.top_logprobs == [] or lp.top_logprobs is None for lp in content)


def test_completion_logprobs(tiny_runner):
    res = tiny_runner.send_completion_request(
        CompletionRequest(prompt="Hello", model="m", max_tokens=3, ignore_eos=True, logprobs=True, top_logprobs=2)
    )
    # SPEC §1: completion choices carry logprobs in the same layout as chat choices.
    content = res.choices[0].logprobs.content
    assert len(content) == 3
    for lp in content:
        _check_logprob_entry(lp, 2)
        assert len(lp.top_logprobs) == 2
