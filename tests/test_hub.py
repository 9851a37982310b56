"""Hub ids resolve through the standard Hugging Face cache (SPEC §2), checked
against the layout huggingface_hub itself writes:

    $HF_HUB_CACHE (default $HF_HOME/hub)/models--{org}--{name}/refs/main      -> commit hash
    .../models--{org}--{name}/snapshots/{commit}/{file}

With HF_HUB_OFFLINE=1 nothing is fetched and a missing file is a FileNotFoundError.
Each case runs in its own interpreter so the environment it sets cannot leak.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
PLAIN_FILES = ("config.json", "model.safetensors", "generation_config.json") + TOKENIZER_FILES


def make_hub_cache(cache: pathlib.Path, repo: str, src: pathlib.Path, files) -> pathlib.Path:
    """Put `files` of `src` into an HF cache at `cache` as repo `repo` (revision main)."""
    org, name = repo.split("/")
    root = cache / f"models--{org}--{name}"
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)
    for f in files:
        if (src / f).exists():
            shutil.copy(src / f, snap / f)
    return snap


SCRIPT = textwrap.dedent(
    """
    import json, sys
    from mistralrs import Runner, Which, ChatCompletionRequest
    spec = json.loads(sys.argv[1])
    which = getattr(Which, spec["variant"])(**spec["kwargs"])
    try:
        with Runner(which=which) as r:
            res = r.send_chat_completion_request(ChatCompletionRequest(
                messages=[{"role": "user", "content": "Hi"}], model="m", max_tokens=4, ignore_eos=True,
                temperature=0))
            out = {"ok": True, "text": res.choices[0].message.content,
                   "completion_tokens": res.usage.completion_tokens}
    except Exception as e:
        out = {"ok": False, "type": type(e).__name__, "msg": str(e)}
    print("RESULT " + json.dumps(out))
    """
)


def run_isolated(variant: str, env_updates: dict, timeout=300, **kwargs) -> dict:
    """Load Which.<variant>(**kwargs) and generate 4 tokens in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(env_updates)
    p = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps({"variant": variant, "kwargs": kwargs})],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"subprocess failed (rc {p.returncode}):\n{p.stdout}\n{p.stderr}"
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.fixture(params=["HF_HUB_CACHE", "HF_HOME"])
def hub_env(request, tmp_path):
    """(cache folder, env): the cache named directly, or found as $HF_HOME/hub."""
    if request.param == "HF_HUB_CACHE":
        cache = tmp_path / "cache"
        env = {"HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "empty-home")}
    else:
        cache = tmp_path / "home" / "hub"
        env = {"HF_HOME": str(tmp_path / "home")}
    cache.mkdir(parents=True)
    env["HF_HUB_OFFLINE"] = "1"
    return cache, env


def test_plain_hub_id_resolves_offline(hub_env, llama_tiny_dir):
    cache, env = hub_env
    make_hub_cache(cache, "org/name", llama_tiny_dir, PLAIN_FILES)
    out = run_isolated("Plain", env, model_id="org/name", arch="llama")
    assert out["ok"], out
    assert out["completion_tokens"] == 4


def test_gguf_hub_id_resolves_offline(hub_env, llama_tiny_dir, tiny_gguf):
    cache, env = hub_env
    make_hub_cache(cache, "org/tiny-gguf", llama_tiny_dir, TOKENIZER_FILES + (tiny_gguf.name,))
    out = run_isolated(
        "GGUF",
        env,
        tok_model_id="org/tiny-gguf",
        quantized_model_id="org/tiny-gguf",
        quantized_filename=tiny_gguf.name,
    )
    assert out["ok"], out
    assert out["completion_tokens"] == 4


def test_hub_and_local_give_the_same_text(hub_env, llama_tiny_dir):
    cache, env = hub_env
    make_hub_cache(cache, "org/name", llama_tiny_dir, PLAIN_FILES)
    hub = run_isolated("Plain", env, model_id="org/name", arch="llama")
    local = run_isolated("Plain", env, model_id=str(llama_tiny_dir), arch="llama")
    assert hub["ok"] and local["ok"], (hub, local)
    assert hub["text"] == local["text"]


def test_offline_missing_repo(hub_env):
    _, env = hub_env
    out = run_isolated("Plain", env, model_id="org/not-cached", arch="llama")
    assert out["type"] == "FileNotFoundError", out
    assert "org/not-cached" in out["msg"], out


def test_offline_missing_file_in_repo(hub_env, llama_tiny_dir):
    cache, env = hub_env
    make_hub_cache(cache, "org/partial", llama_tiny_dir, ("config.json",) + TOKENIZER_FILES)
    out = run_isolated("Plain", env, model_id="org/partial", arch="llama")
    assert out["type"] == "FileNotFoundError", out
    assert "model.safetensors" in out["msg"], out


def test_offline_missing_gguf_file(hub_env, llama_tiny_dir):
    cache, env = hub_env
    make_hub_cache(cache, "org/tok-only", llama_tiny_dir, TOKENIZER_FILES)
    out = run_isolated(
        "GGUF",
        env,
        tok_model_id="org/tok-only",
        quantized_model_id="org/tok-only",
        quantized_filename="missing.gguf",
    )
    assert out["type"] == "FileNotFoundError", out
    assert "missing.gguf" in out["msg"], out
