#!/usr/bin/env bash
# L2L meta-training launcher, env vars as upstream's scripts/l2l.sh (see README for every variable).
#   DATA_DIR=../shared/data TASK=Copa EPOCH=2 EPOCHS_PER_RESTART=1 SAVE_MLP_PATH=/tmp/bank.safetensors bash scripts/l2l.sh
# Runs: RESUME=1 continues OUTPUT_DIR from its last checkpoint, OVERWRITE=1 replaces a run there (otherwise a
# folder holding a run is refused), CHECKPOINT_STEPS=N checkpoints every N meta steps. CONFIG=configs/x.yaml:
# the file's settings, overridden only by the env vars the caller sets (see docs/runs.md).
set -euo pipefail
cd "$(dirname "$0")/.."
USER_VARS=" $(compgen -e | tr '\n' ' ') "   # env vars set by the caller (before the defaults below)

MODEL=${MODEL:-}                          # empty: the embedded SmolLM2-135M
TASK=${TASK:-Copa}
EPOCH=${EPOCH:-20}
BS=${BS:-8}
LR_LLM=${LR_LLM:-1e-5}                   # with adam; upstream values (1e-2..1e-1) need TRAJECTORY_OPTIMIZER=sgd
LR_MLP=${LR_MLP:-1e-3}
LR_UPDATE=${LR_UPDATE:-1e-6}
EPOCHS_PER_RESTART=${EPOCHS_PER_RESTART:-4}
RESET=${RESET:-True}                       # False: no resets, one trajectory and lr horizon (Table 2 ablation)
GRANULARITY=${GRANULARITY:-block}          # layer: one PertNN per transformer layer (Table 3 ablation)
ZO_EPS=${ZO_EPS:-1e-3}
NEED_NORMALIZATION=${NEED_NORMALIZATION:-True}   # upstream script default False; its README run uses True
LOAD_FLOAT_16=${LOAD_FLOAT_16:-False}
MULTI_TASK_TRAINING=${MULTI_TASK_TRAINING:-False}
MULTI_TASK_NAME=${MULTI_TASK_NAME:-"SST2 Copa WSC"}
SHUFFLE=${SHUFFLE:-False}
SEED=${SEED:-0}                            # data sampling seed (--train_set_seed)
TRAIN=${TRAIN:-1000}
DEV=${DEV:-50}
EVAL=${EVAL:-1000}
TRAJECTORY_OPTIMIZER=${TRAJECTORY_OPTIMIZER:-adam}  # adam | sgd (upstream: SGD momentum 0.8)
GA=${GA:-}                                 # micro-batches per step; empty: upstream's case (MultiRC, ReCoRD, DROP) or 1
L2L_ACCUMULATION=${L2L_ACCUMULATION:-batch}  # batch: GA micro-batches act as one batch | upstream: the authors' loop
MAX_STEPS=${MAX_STEPS:-0}
SAVE_MLP_PATH=${SAVE_MLP_PATH:-}           # empty: <output dir>/bank.safetensors
DATA_DIR=${DATA_DIR:-}
OUTPUT_DIR=${OUTPUT_DIR:-}
source scripts/lib/launcher.sh   # EXTRA_ARGS, CONFIG, RESUME, OVERWRITE, CHECKPOINT_STEPS (header above)
prepare_embedded_model

if [ "$MULTI_TASK_TRAINING" != "True" ]; then   # upstream applied these cases even in multi-task mode
  case $TASK in
    CB|Copa) user_set DEV || DEV=100 ;;   # upstream: DEV=100 whatever DEV said
  esac
  # Upstream's memory cases (80 GB A100): micro-batches of 2 (MultiRC, ReCoRD) or 1 (DROP), BS/micro of them per
  # step. Under L2L_ACCUMULATION=batch this is the same training as one batch of BS, in less memory. (Upstream
  # floors an odd BS/2; here an odd BS keeps one batch of BS.)
  if [ -z "$GA" ]; then
    case $TASK in
      MultiRC|ReCoRD) if [ $((BS % 2)) = 0 ]; then GA=$((BS / 2)); BS=2; fi ;;
      DROP) GA=$BS; BS=1 ;;
    esac
  fi
fi
GA=${GA:-1}
if [ "$GA" != 1 ]; then echo "Gradient accumulation: $GA micro-batches of $BS ($L2L_ACCUMULATION)"; fi

ARGS=()
add_run_args
flag TASK --task_name; flag EPOCH --num_train_epochs; flag BS --per_device_train_batch_size; flag LR_LLM --lr_llm
flag LR_MLP --lr_mlp; flag LR_UPDATE --lr_update; flag EPOCHS_PER_RESTART --epochs_per_restart; flag ZO_EPS --zo_eps
flag NEED_NORMALIZATION --need_normalization; flag LOAD_FLOAT_16 --load_float16
flag MULTI_TASK_TRAINING --multi_task_training; flag SHUFFLE --shuffle; flag SEED --train_set_seed
flag TRAIN --num_train; flag DEV --num_dev; flag EVAL --num_eval; flag TRAJECTORY_OPTIMIZER --trajectory_optimizer
flag MAX_STEPS --max_steps; flag CHECKPOINT_STEPS --checkpoint_steps; flag RESET --reset
flag GRANULARITY --bank_granularity; flag GA --gradient_accumulation_steps; flag L2L_ACCUMULATION --l2l_accumulation
[ "$MULTI_TASK_TRAINING" = "True" ] && ARGS+=(--multi_task_name $MULTI_TASK_NAME)
[ -n "$SAVE_MLP_PATH" ] && ARGS+=(--save_mlp_path "$SAVE_MLP_PATH")

if [ -n "$CONFIG" ]; then
  config_banner TASK MULTI_TASK_TRAINING EPOCH BS LR_LLM LR_MLP EPOCHS_PER_RESTART RESET NEED_NORMALIZATION GRANULARITY SAVE_MLP_PATH
else
  echo "L2L TASK=$TASK MULTI=$MULTI_TASK_TRAINING EPOCH=$EPOCH BS=$BS LR_LLM=$LR_LLM LR_MLP=$LR_MLP RESTART=$EPOCHS_PER_RESTART RESET=$RESET NORM=$NEED_NORMALIZATION GRANULARITY=$GRANULARITY"
fi
# shellcheck disable=SC2086
exec python run_l2l.py "${ARGS[@]}" $EXTRA_ARGS "$@"
