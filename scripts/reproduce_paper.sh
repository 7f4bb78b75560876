#!/usr/bin/env bash
# The paper's comparison as a campaign you can kill and restart at any time (docs/campaign.md).
#   bash scripts/reproduce_paper.sh                 # run what is missing, one run at a time
#   bash scripts/reproduce_paper.sh --status        # done / pending per phase, CPU-hours spent
#   bash scripts/reproduce_paper.sh --stage 'TASKS=SST2;SEEDS=42' --stage 'TASKS=CB'   # stages, in order
#   PRESET=llama-3.2-1b MODEL=/path/Llama-3.2-1B bash scripts/reproduce_paper.sh   # the authors' settings
# Env vars (defaults in scripts/campaign/settings.py):
#   TASKS="SST2 Copa CB WSC BoolQ SQuAD DROP"   METHODS="mezo zoft_new zero_shot zoft_old zoft_untrained mezo_adam lozo fzoo fo_adam hizoo"
#   LRS_<method>="1e-5 3e-6 ..." (LRS_<method>_<task> for one task)  SEEDS="42 43 44" (SEEDS_<task> per task)  BANK_<method>=path  ARGS_<method>="--flag v"
#   TASKS_<method>="SST2"  STEPS, EVAL_STEPS, TRAIN, DEV, EVAL, MAX_LENGTH, MAX_NEW_TOKENS (also <VAR>_<task>)
#   BS (16)  EPS (1e-3)  DTYPE (float32|float16|bfloat16)  SELECT_BY (dev_loss|dev_metric)  EXTRA_ARGS
#   EXTEND_GRID (1: a best LR at its grid's edge gets one more LR beyond it, before the seeds; 0: never)
#   WORKERS (1: runs at a time)  THREADS (threads a run; default: the cores / WORKERS when WORKERS > 1)
#   GPUS="0 1 ..." (one run a GPU at a time, CUDA_VISIBLE_DEVICES; WORKERS defaults to how many are listed)
#   DEADLINE (03:30, 2026-11-27T03:30 or Unix seconds: start only runs priced to end before it)  DEADLINE_MARGIN (1.5)
#   CHECKPOINT_STEPS (10, MeZO / ZO-FT)  CHECKPOINT_MINUTES (5, other methods): a killed run resumes from there
#   MODEL (empty: embedded SmolLM2-135M)  DATA_DIR (../shared/data)  RESULTS_DIR (results)  PRESET (scripts/presets/*.env)
# Then: python scripts/make_report.py
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${MODEL:-}" ] && [ ! -f models/SmolLM2-135M/config.json ]; then
  bash scripts/setup.sh
fi
exec python scripts/reproduce_paper.py "$@"
