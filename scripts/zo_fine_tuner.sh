#!/usr/bin/env bash
# ZO fine-tuning launcher, env vars as upstream's scripts/zo_fine_tuner.sh (see README for every variable).
#   DATA_DIR=../shared/data TASK=SST2 STEPS=20 bash scripts/zo_fine_tuner.sh
#   TRAIN_MODE=mezo LR=1e-6 bash scripts/zo_fine_tuner.sh
# Sweep learning rates with a loop: for LR in 1e-6 5e-7; do LR=$LR bash scripts/zo_fine_tuner.sh; done
# Runs: RESUME=1 continues OUTPUT_DIR from its last checkpoint, OVERWRITE=1 replaces a run there (otherwise a
# folder holding a run is refused), CHECKPOINT_STEPS=N checkpoints every N steps. CONFIG=configs/x.yaml: the
# file's settings, overridden only by the env vars the caller sets (see docs/runs.md).
set -euo pipefail
cd "$(dirname "$0")/.."
USER_VARS=" $(compgen -e | tr '\n' ' ') "   # env vars set by the caller (before the defaults below)

MODEL=${MODEL:-}                        # empty: the embedded SmolLM2-135M (models/SmolLM2-135M)
TASK=${TASK:-SST2}                      # a task name, or custom with CUSTOM_TASK=path/to/spec.yaml
CUSTOM_TASK=${CUSTOM_TASK:-}            # your own data file as a task (docs/adding_a_task.md)
TRAIN_MODE=${TRAIN_MODE:-zo_fine_tuner} # mezo | zo_fine_tuner | mezo_adam | hizoo | lozo | fzoo | fo_sgd | fo_adam | none (zero-shot evaluation only)
# Per-method options go through EXTRA_ARGS (docs/methods.md), e.g.
#   TRAIN_MODE=lozo EXTRA_ARGS="--lozo_rank 2 --lozo_interval 50" bash scripts/zo_fine_tuner.sh
LOAD_MLP_PATH=${LOAD_MLP_PATH:-}        # PertNN bank (.safetensors or an authors' .pth)
NEED_NORMALIZATION=${NEED_NORMALIZATION:-True}  # upstream script default False; every upstream run used True
LOAD_FLOAT_16=${LOAD_FLOAT_16:-False}   # upstream default True (GPU); fp16 is slow on CPU
LOAD_BFLOAT_16=${LOAD_BFLOAT_16:-False}
BS=${BS:-16}
LR=${LR:-1e-6}
EPS=${EPS:-1e-3}
SEED=${SEED:-43}                        # data sampling seed (--train_set_seed)
NUM_TRAIN_SETS=${NUM_TRAIN_SETS:-}      # N: N runs with data seeds SEED, SEED+1, ... in OUTPUT_DIR/trainset<i>, mean/sd in metrics.json
TRAIN=${TRAIN:-1000}
DEV=${DEV:-500}
EVAL=${EVAL:-1000}
STEPS=${STEPS:-20000}
EVAL_STEPS=${EVAL_STEPS:-2000}
MODE=${MODE:-ft}
DATA_DIR=${DATA_DIR:-}                  # empty: load datasets from the HF hub
OUTPUT_DIR=${OUTPUT_DIR:-}
PERTURBATION=${PERTURBATION:-virtual}
DEVICE=${DEVICE:-auto}                  # auto (CUDA if available, else CPU) | cpu | cuda | cuda:K | mps
DEVICE_MAP=${DEVICE_MAP:-}              # "auto": spread a large model over the visible GPUs (accelerate)
source scripts/lib/launcher.sh   # EXTRA_ARGS, CONFIG, RESUME, OVERWRITE, CHECKPOINT_STEPS (header above)
prepare_embedded_model

if [ "$MODE" != "ft" ]; then
  echo "MODE=$MODE is not supported: only full fine-tuning (MODE=ft) is implemented" >&2; exit 2
fi
if [ "$TASK" = "custom" ]; then
  [ -n "$CUSTOM_TASK" ] || { echo "TASK=custom needs CUSTOM_TASK=path/to/spec.yaml (docs/adding_a_task.md)" >&2; exit 2; }
  TASK=$CUSTOM_TASK
elif [ -n "$CUSTOM_TASK" ]; then
  echo "CUSTOM_TASK is read with TASK=custom only (TASK=$TASK): set both, or unset CUSTOM_TASK" >&2; exit 2
fi
# Upstream's per-task cases. Its CB and Copa runs used DEV=100 whatever DEV said; a DEV you set wins here.
TASK_ARGS=""
case $TASK in
  CB) user_set DEV || DEV=100 ;;
  Copa) user_set DEV || DEV=100; TASK_ARGS="--train_as_classification False" ;;
  ReCoRD|DROP|SQuAD) TASK_ARGS="--train_as_classification False" ;;
esac
# The embedded model's own bank, when one is shipped and no bank was given (with CONFIG: the file says).
if [ -z "$CONFIG" ] && [ "$TRAIN_MODE" = "zo_fine_tuner" ] && [ -z "$LOAD_MLP_PATH" ] && [ -z "$MODEL" ] \
   && [ -f learned_finetuner/smollm2-135m_copa.safetensors ]; then
  LOAD_MLP_PATH=learned_finetuner/smollm2-135m_copa.safetensors
fi

ARGS=()
add_run_args
flag TASK --task_name; flag TRAIN_MODE --train_mode; flag NEED_NORMALIZATION --need_normalization
flag LOAD_FLOAT_16 --load_float16; flag LOAD_BFLOAT_16 --load_bfloat16; flag BS --per_device_train_batch_size
flag LR --learning_rate; flag EPS --zo_eps; flag SEED --train_set_seed; flag TRAIN --num_train; flag DEV --num_dev
flag EVAL --num_eval; flag STEPS --max_steps; flag EVAL_STEPS --eval_steps; flag PERTURBATION --perturbation
flag CHECKPOINT_STEPS --checkpoint_steps; flag DEVICE --device
[ -n "$DEVICE_MAP" ] && ARGS+=(--device_map "$DEVICE_MAP")
[ -n "$NUM_TRAIN_SETS" ] && ARGS+=(--num_train_sets "$NUM_TRAIN_SETS")
[ -n "$LOAD_MLP_PATH" ] && ARGS+=(--load_mlp_path "$LOAD_MLP_PATH")

if [ -n "$CONFIG" ]; then
  config_banner TASK TRAIN_MODE MODEL LR EPS BS STEPS LOAD_MLP_PATH NUM_TRAIN_SETS
else
  echo "TASK=$TASK TRAIN_MODE=$TRAIN_MODE MODEL=${MODEL:-<embedded SmolLM2>} LR=$LR EPS=$EPS BS=$BS STEPS=$STEPS BANK=${LOAD_MLP_PATH:-none}${NUM_TRAIN_SETS:+ TRAIN_SETS=$NUM_TRAIN_SETS}"
fi
# shellcheck disable=SC2086
exec python run_zo_fine_tuner.py "${ARGS[@]}" $TASK_ARGS $EXTRA_ARGS "$@"
