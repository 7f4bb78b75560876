#!/usr/bin/env bash
# How learned_finetuner/smollm2-135m_copa.safetensors was made: L2L on local Copa for the embedded
# SmolLM2-135M, upstream's recipe scaled to a 2-core CPU (see docs/smollm2_bank.md), with the fair
# effective-dimension rule for the tied embedding (tied_full, the default).
# Upstream llama1B: 15 epochs, restart every 5, SGD lr_llm 1e-2, SGD lr_mlp 0.1, eta 1e-6, batch 8, fp32.
# Here: a 10-epoch schedule with a restart every 2, stopped at meta step 240 (the look-ahead gain had
# plateaued), Adam trajectory lr 1e-5, Adam bank lr 1e-3 (eta=1e-6 gives meta-gradients ~1e-5 that SGD
# would not move in a few hundred steps), eta 1e-6, batch 8, fp32.
# The first bank (upstream's rule, 6 epochs = 228 steps): EPOCH=6 MAX_STEPS=0 EXTRA_ARGS="--effective_dim_rule upstream".
# The bank file exists (shipped): OVERWRITE=1 makes it again in place, SAVE_MLP_PATH=... saves elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-../shared/data} TASK=Copa EPOCH=${EPOCH:-10} EPOCHS_PER_RESTART=2 BS=8 \
LR_LLM=1e-5 TRAJECTORY_OPTIMIZER=adam LR_MLP=1e-3 LR_UPDATE=1e-6 ZO_EPS=1e-3 NEED_NORMALIZATION=True \
MAX_STEPS=${MAX_STEPS:-240} SEED=0 OUTPUT_DIR=${OUTPUT_DIR:-runs/l2l_smollm2_copa} \
SAVE_MLP_PATH=${SAVE_MLP_PATH:-learned_finetuner/smollm2-135m_copa.safetensors} \
EXTRA_ARGS="--mlp_optimizer adam --save_every_steps 20 ${EXTRA_ARGS:-}" \
bash scripts/l2l.sh
