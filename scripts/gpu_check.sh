#!/usr/bin/env bash
# The GPU run (issue 12), for a machine with an NVIDIA GPU whose Python has PyTorch's CUDA 13
# libraries (site-packages/nvidia/cu13/lib, where the wheel's RUNPATH looks) but no Rust toolchain
# and no network. Prepared on the build machine:
#   bash scripts/build_cuda.sh                               # dist/cuda/mistralrs_cuda-*.whl
#   python3 -m pip download -q -d dist/gpu-deps pytest       # in case that Python lacks pytest
# then run there from the checkout (the device tool: carry dist/cuda, dist/gpu-deps and, for the
# real-model tests and the benchmark, .models/smollm2), all within ten minutes:
#   bash scripts/gpu_check.sh
# Prints the GPU, build_info(), the test counts on cuda:0 (MISTRALRS_TEST_DEVICE makes every Runner
# the tests create use it; tolerances per dtype are in the tests) and tokens/s on SmolLM2.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
start=$(date +%s)

nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv
"$PY" -m pip install -q --disable-pip-version-check --no-deps --no-index --force-reinstall dist/cuda/mistralrs_cuda-*.whl
"$PY" -c "import pytest" 2>/dev/null \
    || "$PY" -m pip install -q --disable-pip-version-check --no-index --find-links dist/gpu-deps pytest
"$PY" -c "import json, mistralrs; print(json.dumps(mistralrs.build_info()))"

echo "==> reference suites on cuda:0"
SUITES=(tests/test_devices.py tests/test_dtypes.py tests/test_reference_llama.py tests/test_reference_archs.py
        tests/test_reference_gemma23.py tests/test_quant_types.py tests/test_api.py tests/test_errors.py)
[ -f .models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ] && SUITES+=(tests/test_smollm2.py)
MISTRALRS_TEST_DEVICE=cuda:0 timeout 360 "$PY" -m pytest -q -p no:cacheprovider -rf "${SUITES[@]}" 2>&1 | tail -40

if [ -f .models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
    echo "==> benchmark: SmolLM2-135M Q4_1 on cuda:0 (mistralrs only: no llama.cpp build there)"
    timeout 150 "$PY" scripts/bench.py --model smollm2 --device cuda:0 --engines mistralrs --reps 2 \
        --prompt-lens 128,512 --decode-after 16,512 --decode 64 --concurrent 8 2>&1 | tail -20
fi
echo "==> done in $(( $(date +%s) - start )) s"
