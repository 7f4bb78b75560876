#!/usr/bin/env bash
# README's test command: set-up (idempotent, quick once done), then the whole offline test suite.
# With CI=true the real-model tests (marked slow) run in their short form.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python -m pytest -q --durations=15 "$@"
