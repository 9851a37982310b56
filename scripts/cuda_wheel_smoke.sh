#!/usr/bin/env bash
# The mistralrs-cuda wheel on a machine without a GPU: installed with its dependencies (the CUDA
# 13.0 runtime libraries from PyPI) into a fresh venv, it must import, find cuBLAS/cuRAND/NVRTC/
# cudart through its RPATH, report CUDA in build_info(), and refuse `device="cuda:0"` with a
# ValueError that names the driver stub (the link-time libcuda stub stands in for a driver here),
# and still run on the CPU: the tiny llama's greedy tokens equal transformers' (references.json).
#
#   bash scripts/cuda_wheel_smoke.sh dist/cuda/mistralrs_cuda-*.whl
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
WHEEL="${1:?usage: cuda_wheel_smoke.sh WHEEL}"
STUBS="${CUDA_STUBS:-$PWD/target/cuda-venv/cuda-root/lib64/stubs}"
PYTHON="${PYTHON:-python3}"
[ -f "$STUBS/libcuda.so.1" ] || { echo "no driver stub at $STUBS (run scripts/build_cuda.sh)" >&2; exit 1; }

SMOKE="$(mktemp -d)"
trap 'rm -rf "$SMOKE"' EXIT
"$PYTHON" -m venv "$SMOKE/venv"
"$SMOKE/venv/bin/python" -m pip install -q --disable-pip-version-check "$WHEEL"
"$SMOKE/venv/bin/python" -m pip list --disable-pip-version-check 2>/dev/null | grep -iE "mistralrs|nvidia"
TINY="$PWD/tests/fixtures/llama-tiny"
cd "$SMOKE"
LD_LIBRARY_PATH="$STUBS" "$SMOKE/venv/bin/python" - "$TINY" <<'PY'
import json, sys
import mistralrs
from mistralrs import CompletionRequest, Runner, Which

info = mistralrs.build_info()
print("build_info:", {k: info[k] for k in ("version", "features", "devices", "default_device", "cuda_device_count")})
assert "cuda" in info["features"] and info["default_device"] == "cuda:0", info
try:
    Runner(which=Which.Plain(model_id="/nonexistent", arch="llama"), device="cuda:0")
except ValueError as e:
    print("device='cuda:0' ->", e)
    assert "cuda:0" in str(e) and "STUB_LIBRARY" in str(e) and "stub" in str(e), e
else:
    raise SystemExit("cuda:0 opened against the driver stub")
tiny = sys.argv[1]
refs = json.load(open(f"{tiny}/references.json"))
case = next(c for c in refs["cases"] if c["kind"] == "completion")
want = next(r for r in refs["plain"]["results"] if r["name"] == case["name"])["ids"][:8]
with Runner(which=Which.Plain(model_id=tiny, arch="llama"), device="cpu") as r:
    res = r.send_completion_request(CompletionRequest(model="tiny", prompt=case["prompt"], max_tokens=8,
                                                      temperature=0.0, logprobs=True, ignore_eos=True))
got = [list(t.bytes) for t in res.choices[0].logprobs.content]
assert got == [refs["vocab_bytes"][i] for i in want], (got, want)
print("cpu in the cuda build: 8 greedy tokens equal transformers'")
print("cuda wheel smoke passed")
PY
