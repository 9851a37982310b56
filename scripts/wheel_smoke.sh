#!/usr/bin/env bash
# The CPU wheel as a user gets it: installed into a fresh venv with nothing else (no
# dependencies, no build tools, no source tree on the path), then examples/chat.py on
# SmolLM2-135M-Instruct, whose greedy answer must name Berlin.
#
#   bash scripts/wheel_smoke.sh dist/cpu/mistralrs-*.whl
#
# The model must already be in .models/ (scripts/fetch_models.py smollm2).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
WHEEL="${1:?usage: wheel_smoke.sh WHEEL}"
PYTHON="${PYTHON:-python3}"

SMOKE="$(mktemp -d)"
trap 'rm -rf "$SMOKE"' EXIT
"$PYTHON" -m venv "$SMOKE/venv"
"$SMOKE/venv/bin/python" -m pip install -q --disable-pip-version-check --no-index --no-deps "$WHEEL"
echo "==> installed: $("$SMOKE/venv/bin/python" -m pip list --disable-pip-version-check 2>/dev/null | grep -i mistralrs)"

# From outside the checkout, so that only the installed package can be imported.
out="$(cd "$SMOKE" && "$SMOKE/venv/bin/python" "$OLDPWD/examples/chat.py" "What is the capital of Germany?")"
echo "$out"
(cd "$SMOKE" && "$SMOKE/venv/bin/python" -c 'import mistralrs, sys; f = mistralrs.__file__; print("imported from", f); sys.exit(0 if "/venv/" in f else 1)')
grep -q "Berlin" <<<"$out" || { echo "wheel smoke: the answer does not name Berlin" >&2; exit 1; }
echo "==> wheel smoke passed"
