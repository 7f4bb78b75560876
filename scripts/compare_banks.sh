#!/usr/bin/env bash
# Training loss after the same number of steps on local SST2, at equal LR and seeds, for:
#   MeZO | ZO Fine-tuner + the learned SmolLM2 bank | ZO Fine-tuner + an untrained bank (zo.init_bank).
# Same data order and the same per-step noise seeds in all three runs (paired comparison).
#   bash scripts/compare_banks.sh            (STEPS=100 LR=1e-5 by default; see README)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-100}; LR=${LR:-1e-5}; EPS=${EPS:-1e-3}; BS=${BS:-16}; TASK=${TASK:-SST2}
OUT=${OUT:-runs/compare_${TASK}_${STEPS}_${LR}}
BANK=${BANK:-learned_finetuner/smollm2-135m_copa.safetensors}
mkdir -p "$OUT"
[ -f "$OUT/untrained_bank.safetensors" ] || python -m zo.init_bank --out "$OUT/untrained_bank.safetensors" --seed 42
COMMON="DATA_DIR=${DATA_DIR:-../shared/data} TASK=$TASK STEPS=$STEPS EVAL_STEPS=$STEPS LR=$LR EPS=$EPS BS=$BS DEV=100 EVAL=200"
env $COMMON TRAIN_MODE=mezo OUTPUT_DIR="$OUT/mezo" bash scripts/zo_fine_tuner.sh
env $COMMON TRAIN_MODE=zo_fine_tuner LOAD_MLP_PATH="$BANK" OUTPUT_DIR="$OUT/zoft_learned" bash scripts/zo_fine_tuner.sh
env $COMMON TRAIN_MODE=zo_fine_tuner LOAD_MLP_PATH="$OUT/untrained_bank.safetensors" OUTPUT_DIR="$OUT/zoft_untrained" \
  bash scripts/zo_fine_tuner.sh
python scripts/summarize_runs.py "$OUT/mezo" "$OUT/zoft_learned" "$OUT/zoft_untrained"
