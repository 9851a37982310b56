"""Failures a user can cause, checked against SPEC.md §1: each raises the
exception class the spec names (FileNotFoundError for missing files, ValueError
for bad content or bad request fields) with a message naming the file or field,
and a Runner keeps serving after a bad request."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
from conftest import assert_serves, chat
from mistralrs import ChatCompletionRequest, CompletionRequest, Runner, Which


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # A missing local path must never turn into a network fetch.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def copy_tiny(src, dst):
    """A writable copy of the tiny llama's safetensors files (no GGUFs)."""
    dst.mkdir()
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ):
        if (src / name).exists():
            shutil.copy(src / name, dst / name)
    return dst


def gguf_which(folder, filename, tok_dir):
    return Which.GGUF(tok_model_id=str(tok_dir), quantized_model_id=str(folder), quantized_filename=filename)


# ----------------------------------------------------------------------------- loading


def test_missing_model_folder(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        Runner(which=Which.Plain(model_id=str(missing), arch="llama"))


def test_missing_safetensors(tmp_path, llama_tiny_dir):
    d = copy_tiny(llama_tiny_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        Runner(which=Which.Plain(model_id=str(d), arch="llama"))


def test_missing_config(tmp_path, llama_tiny_dir):
    d = copy_tiny(llama_tiny_dir, tmp_path / "m")
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        Runner(which=Which.Plain(model_id=str(d), arch="llama"))


def test_missing_gguf_file(tmp_path, llama_tiny_dir):
    with pytest.raises(FileNotFoundError, match="absent.gguf"):
        Runner(which=gguf_which(tmp_path, "absent.gguf", llama_tiny_dir))


@pytest.mark.parametrize("keep", ["header", "data"])
def test_truncated_gguf(tmp_path, tiny_gguf, llama_tiny_dir, keep):
    # Cut inside the metadata, or inside the tensor data (the last tensor runs past the end).
    data = tiny_gguf.read_bytes()
    n = 64 if keep == "header" else len(data) - 100
    (tmp_path / "cut.gguf").write_bytes(data[:n])
    with pytest.raises(ValueError, match="cut.gguf") as e:
        Runner(which=gguf_which(tmp_path, "cut.gguf", llama_tiny_dir))
    assert any(
        w in str(e.value).lower()
        for w in (
            "truncat",
            "end of file",
            "eof",
            "too short",
            "past the end",
            "exceeds",
            "out of bounds",
            "unexpected end",
        )
    ), str(e.value)


def test_gguf_bad_magic(tmp_path, tiny_gguf, llama_tiny_dir):
    data = bytearray(tiny_gguf.read_bytes())
    data[:4] = b"GGXX"
    (tmp_path / "magic.gguf").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="magic.gguf") as e:
        Runner(which=gguf_which(tmp_path, "magic.gguf", llama_tiny_dir))
    assert "magic" in str(e.value).lower(), str(e.value)


def test_gguf_unsupported_version(tmp_path, tiny_gguf, llama_tiny_dir):
    # SPEC §2: GGUF v2 and v3.
    data = bytearray(tiny_gguf.read_bytes())
    data[4:8] = struct.pack("<I", 99)
    (tmp_path / "v99.gguf").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="v99.gguf") as e:
        Runner(which=gguf_which(tmp_path, "v99.gguf", llama_tiny_dir))
    assert "99" in str(e.value).replace("v99.gguf", ""), str(e.value)


@pytest.mark.parametrize("type_id,type_name", [(16, "IQ2_XXS"), (23, "IQ4_XS"), (35, "TQ2_0"), (39, "MXFP4")])
def test_gguf_unsupported_tensor_type_is_named(tmp_path, tiny_gguf, llama_tiny_dir, type_id, type_name):
    # Issue 7: a type the engine cannot run is refused with the tensor's name and the type's (llama.cpp's
    # ggml.h ids), not as a corrupt header.
    data = bytearray(tiny_gguf.read_bytes())
    name = b"blk.0.attn_q.weight"
    at = data.index(name) + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, type_id)
    (tmp_path / "iq.gguf").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"blk\.0\.attn_q\.weight.*{type_name}"):
        Runner(which=gguf_which(tmp_path, "iq.gguf", llama_tiny_dir))


@pytest.mark.parametrize("corruption", ["header_too_long", "header_not_json"])
def test_corrupt_safetensors_header(tmp_path, llama_tiny_dir, corruption):
    d = copy_tiny(llama_tiny_dir, tmp_path / "m")
    path = d / "model.safetensors"
    data = bytearray(path.read_bytes())
    if corruption == "header_too_long":
        data[:8] = struct.pack("<Q", len(data) * 2)  # header length beyond the file
    else:
        (n,) = struct.unpack("<Q", data[:8])
        data[8 : 8 + min(n, 16)] = b"#" * min(n, 16)  # JSON header starts with garbage
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model.safetensors"):
        Runner(which=Which.Plain(model_id=str(d), arch="llama"))


def test_safetensors_missing_tensor(tmp_path, llama_tiny_dir):
    # A config asking for more layers than the file has: names the missing tensor.
    d = copy_tiny(llama_tiny_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    n = cfg["num_hidden_layers"]
    cfg["num_hidden_layers"] = n + 1
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=rf"model\.layers\.{n}\."):
        Runner(which=Which.Plain(model_id=str(d), arch="llama"))


def test_arch_disagrees_with_config(llama_tiny_dir):
    # SPEC §1: config.json (model_type, architectures) must agree with arch, else ValueError naming both.
    with pytest.raises(ValueError) as e:
        Runner(which=Which.Plain(model_id=str(llama_tiny_dir), arch="qwen2"))
    msg = str(e.value).lower()
    assert "qwen2" in msg and "llama" in msg, str(e.value)


def test_bad_config_json(tmp_path, llama_tiny_dir):
    d = copy_tiny(llama_tiny_dir, tmp_path / "m")
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        Runner(which=Which.Plain(model_id=str(d), arch="llama"))


# ----------------------------------------------------------------------------- requests
# Each bad request raises ValueError when built or sent, and the runner keeps serving.


def test_prompt_plus_max_tokens_beyond_context(tiny_runner):
    # The tiny llama has max_position_embeddings 256.
    with pytest.raises(ValueError, match="max_tokens|context"):
        chat(tiny_runner, "Hi", max_tokens=1000)
    long_prompt = "hello " * 400
    with pytest.raises(ValueError, match="context|prompt"):
        tiny_runner.send_completion_request(CompletionRequest(prompt=long_prompt, model="m", max_tokens=1))
    assert_serves(tiny_runner)


@pytest.mark.parametrize("top_p", [0.0, -0.5, 1.5])
def test_top_p_outside_unit_interval(tiny_runner, top_p):
    with pytest.raises(ValueError, match="top_p"):
        chat(tiny_runner, "Hi", max_tokens=2, temperature=0.7, top_p=top_p)
    assert_serves(tiny_runner)


def test_unknown_role(tiny_runner):
    with pytest.raises(ValueError, match="wizard"):
        tiny_runner.send_chat_completion_request(
            ChatCompletionRequest(messages=[{"role": "wizard", "content": "Hi"}], model="m", max_tokens=2)
        )
    assert_serves(tiny_runner)


def test_message_without_content(tiny_runner):
    with pytest.raises(ValueError, match="content"):
        tiny_runner.send_chat_completion_request(
            ChatCompletionRequest(messages=[{"role": "user"}], model="m", max_tokens=2)
        )
    assert_serves(tiny_runner)


def test_empty_messages(tiny_runner):
    with pytest.raises(ValueError, match="messages"):
        tiny_runner.send_chat_completion_request(ChatCompletionRequest(messages=[], model="m", max_tokens=2))
    assert_serves(tiny_runner)


def test_negative_max_tokens(tiny_runner):
    with pytest.raises(ValueError, match="max_tokens"):
        chat(tiny_runner, "Hi", max_tokens=-1)
    assert_serves(tiny_runner)


def test_too_many_top_logprobs(tiny_runner):
    # SPEC §1 / OpenAI: at most 20 alternatives.
    with pytest.raises(ValueError, match="top_logprobs"):
        chat(tiny_runner, "Hi", max_tokens=2, logprobs=True, top_logprobs=21)
    res = chat(tiny_runner, "Hi", max_tokens=1, logprobs=True, top_logprobs=20)
    assert len(res.choices[0].logprobs.content[0].top_logprobs) == 20
    assert_serves(tiny_runner)


def test_bad_request_in_stream_mode(tiny_runner):
    # Validation happens before any chunk is produced.
    with pytest.raises(ValueError, match="max_tokens"):
        it = tiny_runner.send_chat_completion_request(
            ChatCompletionRequest(messages=[{"role": "user", "content": "Hi"}], model="m", max_tokens=-3, stream=True)
        )
        list(it)
    assert_serves(tiny_runner)


@pytest.mark.parametrize("kw,field", [
    ({"seed": -1}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"logit_bias": {-1: 1.0}}, "logit_bias"),
    ({"logit_bias": {2**40: 1.0}}, "logit_bias"),
    ({"logit_bias": {1: float("nan")}}, "logit_bias"),
    ({"logit_bias": {1: float("inf")}}, "logit_bias"),
    ({"presence_penalty": float("nan")}, "presence_penalty"),
    ({"frequency_penalty": float("-inf")}, "frequency_penalty"),
    ({"top_logprobs": 50}, "top_logprobs"),  # checked with logprobs off too
])
def test_out_of_range_numbers_are_value_errors_naming_the_field(tiny_runner, kw, field):
    # Issue 13: never an OverflowError from the int conversion, never NaN logits in the batch.
    with pytest.raises(ValueError, match=field):
        tiny_runner.send_completion_request(CompletionRequest(prompt="Hi", model="m", max_tokens=2, **kw))
    assert_serves(tiny_runner)


def test_a_runner_seed_out_of_range_is_a_value_error(llama_tiny_dir):
    with pytest.raises(ValueError, match="seed"):
        Runner(which=Which.Plain(model_id=str(llama_tiny_dir), arch="llama"), seed=-5)


def test_a_vanishing_temperature_is_greedy(tiny_runner):
    # Dividing logits by 1e-40 overflows to infinities; below 1e-5 the engine takes the argmax, as at 0.
    greedy = tiny_runner.send_completion_request(
        CompletionRequest(prompt="Once", model="m", max_tokens=8, temperature=0.0, ignore_eos=True))
    tiny = tiny_runner.send_completion_request(
        CompletionRequest(prompt="Once", model="m", max_tokens=8, temperature=1e-40, ignore_eos=True, seed=3))
    assert tiny.choices[0].text == greedy.choices[0].text


@pytest.mark.parametrize("template,message", [
    # Nested loops: each alone is small, together 10^10 steps.
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "budget"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", "budget"),
    # A string doubled in a loop: few instructions, but the data it builds is charged too.
    ("{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
     "budget"),
    # Within the budget of work, but a hundred MB of text.
    ("{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}", "MiB"),
])
def test_a_runaway_chat_template_is_a_value_error_in_bounded_time(llama_tiny_dir, template, message):
    # Issue 13, item 4: templates run on a budget of instructions and of output.
    import time

    runner = Runner(which=Which.Plain(model_id=str(llama_tiny_dir), arch="llama"), chat_template=template)
    start = time.monotonic()
    with pytest.raises(ValueError, match=message):
        chat(runner, "Hi", max_tokens=2)
    assert time.monotonic() - start < 10
    runner.close()


def test_a_long_conversation_renders_within_the_template_budget(smollm2_runner):
    # The budget is far above what real templates take: 400 turns through SmolLM2's GGUF template.
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"} for i in range(400)]
    res = smollm2_runner.send_chat_completion_request(ChatCompletionRequest(model="m", messages=msgs, max_tokens=1))
    assert res.usage.prompt_tokens > 2000
