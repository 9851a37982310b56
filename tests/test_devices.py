"""Device selection, the build report, and the kernel paths a CPU can be forced onto.

- ``Runner(device=...)`` / ``num_device_layers`` / ``dtype``: a clear ValueError for a device the build
  lacks or the machine does not have, and for malformed values.
- ``build_info()`` says what was compiled in; ``Runner.device`` / ``.dtype`` / its repr what is in use.
- ``MISTRALRS_CPU_KERNELS=scalar`` (our kernels without SIMD: what a CPU without AVX2 runs) and
  ``=candle`` (none of ours: candle's tensor ops, the path CUDA and Metal take) pass the reference
  tests against transformers and llama.cpp, in a child pytest run each.
"""

from __future__ import annotations

import os
import subprocess
import sys

import mistralrs
import pytest
from conftest import LLAMA_TINY, REPO, TEST_DEVICE
from mistralrs import ChatCompletionRequest, Runner, Which

INFO = mistralrs.build_info()
HAS_CUDA = "cuda" in INFO["features"]
HAS_METAL = "metal" in INFO["features"]


def plain_tiny() -> Which:
    return Which.Plain(model_id=str(LLAMA_TINY), arch="llama")


def test_build_info_reports_devices():
    assert INFO["devices"][0] == "cpu"
    assert ("cuda" in INFO["devices"]) == HAS_CUDA and ("metal" in INFO["devices"]) == HAS_METAL
    expected_default = "cuda:0" if HAS_CUDA else "metal" if HAS_METAL else "cpu"
    assert INFO["default_device"] == expected_default
    if not HAS_CUDA:
        assert INFO["cuda_device_count"] == 0
    assert INFO["cpu_kernels"] == os.environ.get("MISTRALRS_CPU_KERNELS", "auto")
    assert "torch_dtype" in INFO["default_dtype"]


@pytest.mark.skipif(HAS_CUDA, reason="this build has CUDA")
def test_cuda_device_without_the_cuda_build():
    with pytest.raises(ValueError, match=r"cuda:0.*needs the CUDA build.*mistralrs-cuda.*this build of mistralrs has cpu"):
        Runner(which=plain_tiny(), device="cuda:0")


@pytest.mark.skipif(HAS_METAL, reason="this build has Metal")
def test_metal_device_without_the_metal_build():
    with pytest.raises(ValueError, match=r"metal.*needs the Metal build"):
        Runner(which=plain_tiny(), device="metal")


@pytest.mark.skipif(not HAS_CUDA, reason="needs the CUDA build")
def test_cuda_device_that_does_not_exist():
    with pytest.raises(ValueError, match=r"cuda:97.*does not exist: the CUDA driver reports \d+ device"):
        Runner(which=plain_tiny(), device="cuda:97")


@pytest.mark.parametrize("bad", ["tpu", "cuda:x", "cuda:-1", "gpu:0", ""])
def test_malformed_device_names(bad):
    with pytest.raises(ValueError, match="device"):
        Runner(which=plain_tiny(), device=bad)


@pytest.mark.parametrize("bad", ["f64", "int8", "fp8", "q4k"])
def test_malformed_dtype(bad):
    with pytest.raises(ValueError, match=r'dtype must be "f32", "f16", "bf16" or "auto"'):
        Runner(which=plain_tiny(), device="cpu", dtype=bad)


def test_num_device_layers_is_checked():
    with pytest.raises(ValueError, match="ORDINAL:LAYERS"):
        Runner(which=plain_tiny(), num_device_layers=["zero:4"])
    if not HAS_CUDA:
        with pytest.raises(ValueError, match=r"num_device_layers.*needs the CUDA build"):
            Runner(which=plain_tiny(), num_device_layers=["0:2"])


def test_bad_kernel_choice_is_refused():
    code = (
        "import mistralrs, sys\n"
        "try:\n"
        f"    mistralrs.Runner(which=mistralrs.Which.Plain(model_id={str(LLAMA_TINY)!r}, arch='llama'), device='cpu')\n"
        "except ValueError as e:\n"
        "    print(e); sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    env = dict(os.environ, MISTRALRS_CPU_KERNELS="avx9")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'MISTRALRS_CPU_KERNELS="avx9": expected "auto", "scalar" or "candle"' in out.stdout


@pytest.mark.skipif(TEST_DEVICE is not None, reason="checks the CPU defaults")
def test_runner_reports_device_and_dtype():
    with Runner(which=plain_tiny(), device="cpu") as r:
        assert (r.device, r.dtype, r.checkpoint_dtype) == ("cpu", "f32", "f32")
        assert repr(r).startswith("Runner(device='cpu', dtype='f32', checkpoint_dtype='f32'")
        res = r.send_chat_completion_request(ChatCompletionRequest(
            model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=3, ignore_eos=True))
        assert res.usage.completion_tokens == 3


# The reference tests of the engine's own kernels: dense and GGUF llama against transformers and
# llama.cpp, every ggml type against llama.cpp's products, Gemma 2/3 soft-capping and local layers;
# and a prefix-cached second turn on SmolLM2 (paged blocks gathered for tensor-op attention). The
# rest of test_paged_kv takes minutes per test on candle's CPU kernels.
FORCED_SUITES = [
    "tests/test_reference_llama.py",
    "tests/test_quant_types.py",
    "tests/test_reference_gemma23.py",
    "tests/test_paged_kv.py::test_the_second_turn_of_a_chat_reuses_the_first_turns_blocks",
]


@pytest.mark.skipif(TEST_DEVICE is not None, reason="forces CPU kernel paths")
@pytest.mark.parametrize("choice", ["scalar", "candle"])
def test_reference_suites_pass_on_forced_kernels(choice):
    env = dict(os.environ, MISTRALRS_CPU_KERNELS=choice)
    probe = subprocess.run(
        [sys.executable, "-c", "import mistralrs, json; i = mistralrs.build_info(); print(json.dumps([i['cpu_kernels'], i['kernels']]))"],
        env=env, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert f'["{choice}"' in probe.stdout
    if choice == "scalar":
        assert "mistralrs scalar" in probe.stdout and "AVX" not in probe.stdout.split("Q4_0")[1].split(",")[0]
    else:
        assert "mistralrs" not in probe.stdout
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *FORCED_SUITES],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    tail = "\n".join(out.stdout.splitlines()[-15:])
    assert out.returncode == 0, f"MISTRALRS_CPU_KERNELS={choice}:\n{tail}\n{out.stderr[-2000:]}"
    assert " passed" in tail and " failed" not in tail
