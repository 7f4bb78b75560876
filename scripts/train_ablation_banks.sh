#!/usr/bin/env bash
# The paper's ablation banks for the embedded SmolLM2-135M, meta-trained on local Copa one after another
# with the settings of scripts/train_smollm2_bank.sh (6 epochs, restart every 2, Adam trajectory lr 1e-5,
# Adam bank lr 1e-3, eta 1e-6, batch 8, fp32) and only the ablated switch changed (docs/ablations.md):
#   Table 2: base (RESET=False NEED_NORMALIZATION=False), reset, norm, reset_norm (the method);
#   Table 3: layer_reset_norm (GRANULARITY=layer, reset and normalization on), against reset_norm.
# The block-wise reset_norm bank and the layer-wise one go first: they anchor both tables, so a deadline that
# stops the list early leaves out the others. After each bank, bank_noise_budget.py --write records its noise
# beside it (<bank>.noise.json): the campaign sizes the LR grids of base and reset (no normalization) from it
# (scripts/campaign/noise_grid.py), and the report shows every bank's noise split next to its tables.
# Resumable: a bank whose file says complete (with the same MAX_STEPS, EPOCH and switches) is skipped; a
# killed one continues from its run's last checkpoint (every CHECKPOINT_STEPS=20 meta steps; bit-exact); a
# run folder without checkpoints is replaced. Takes hours on 2 cores; MAX_STEPS=2 makes a smoke run of every
# variant.
#   bash scripts/train_ablation_banks.sh                     # all five, into learned_finetuner/ablations/
#   VARIANTS="base layer_reset_norm" BANK_DIR=/tmp/banks MAX_STEPS=2 bash scripts/train_ablation_banks.sh
#   bash scripts/train_ablation_banks.sh --status           # each bank: complete / resumable / not started
# DEADLINE=03:30 (scripts/campaign/deadline.py): start a bank only if BANK_SECONDS are left before it, else stop
# there (default 1500: the reset_norm bank, this recipe's 228 meta steps, took 965 s alone on the 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."

BANK_DIR=${BANK_DIR:-learned_finetuner/ablations}
RUN_DIR=${RUN_DIR:-runs/ablations}
VARIANTS=${VARIANTS:-"reset_norm layer_reset_norm base norm reset"}
MAX_STEPS=${MAX_STEPS:-0}
EPOCH=${EPOCH:-6}

switches_of() {  # variant -> "reset norm granularity"
  case $1 in
    base)             echo "False False block" ;;
    reset)            echo "True False block" ;;
    norm)             echo "False True block" ;;
    reset_norm)       echo "True True block" ;;
    layer_reset_norm) echo "True True layer" ;;
    *) echo "unknown variant '$1' (base reset norm reset_norm layer_reset_norm)" >&2; return 2 ;;
  esac
}

bank_is_complete() {  # complete=true in the bank's metadata, trained with this MAX_STEPS, EPOCH and switches
  python - "$1" "$MAX_STEPS" "$EPOCH" $2 <<'EOF'
import json, sys
from safetensors import safe_open
try:
    with safe_open(sys.argv[1], framework="pt") as handle:
        meta = handle.metadata() or {}
    hyper = json.loads(meta.get("hyperparameters", "{}"))
    reset, norm, granularity = sys.argv[4:7]
    same = (hyper.get("max_steps") == int(sys.argv[2]) and hyper.get("num_train_epochs") == int(sys.argv[3])
            and hyper.get("reset") == (reset == "True") and hyper.get("need_normalization") == (norm == "True")
            and hyper.get("bank_granularity") == granularity)
    sys.exit(0 if json.loads(meta.get("complete", "false")) is True and same else 1)
except Exception:
    sys.exit(1)
EOF
}

record_noise() {  # <bank>.noise.json (a grid for a bank without normalization; the report's noise split)
  # if not there yet; a failed measurement costs this bank's campaign runs if it has no normalization (listed
  # as unavailable), a line of the report otherwise, never the other banks
  python scripts/bank_noise_budget.py "$1" ${MODEL:+--model "$MODEL"} --top 3 --write --if_missing \
    || echo "== warning: the noise of $1 was not recorded; run python scripts/bank_noise_budget.py $1 --write" >&2
}

if [ "${1:-}" = "--status" ]; then
  for variant in $VARIANTS; do
    bank="$BANK_DIR/smollm2-135m_copa_$variant.safetensors"
    last=$(ls "$RUN_DIR/$variant/checkpoints/" 2>/dev/null | grep -E '^step-[0-9]+\.json$' | sort -V | tail -1 || true)
    switches=$(switches_of "$variant") || exit 2
    if [ -f "$bank" ] && bank_is_complete "$bank" "$switches"; then state="complete: $bank"
    elif [ -n "$last" ]; then state="resumable from ${last%.json} ($RUN_DIR/$variant)"
    else state="not started"; fi
    echo "ablation bank $variant: $state"
  done
  exit 0
fi

BANK_SECONDS=${BANK_SECONDS:-1500}
if [ -n "${DEADLINE:-}" ]; then  # one instant: a clock time read again after a long bank could mean tomorrow
  DEADLINE=$(python scripts/campaign/deadline.py "$DEADLINE") || exit 2
  [[ "$BANK_SECONDS" =~ ^[0-9]+$ ]] || { echo "BANK_SECONDS must be whole seconds, got '$BANK_SECONDS'" >&2; exit 2; }
fi
mkdir -p "$BANK_DIR" "$RUN_DIR"
for variant in $VARIANTS; do
  switches=$(switches_of "$variant") || exit 2
  read -r reset norm granularity <<< "$switches"
  bank="$BANK_DIR/smollm2-135m_copa_$variant.safetensors"
  if [ -f "$bank" ] && bank_is_complete "$bank" "$switches"; then
    echo "== $variant: $bank is complete, skipped"
    record_noise "$bank"
    continue
  fi
  if [ -n "${DEADLINE:-}" ] && [ $((DEADLINE - $(date +%s))) -lt "$BANK_SECONDS" ]; then
    echo "== $variant: not started, DEADLINE is $(((DEADLINE - $(date +%s)) / 60)) min away and a bank takes" \
         "about $((BANK_SECONDS / 60)) min (BANK_SECONDS); the next start continues from here"
    exit 0
  fi
  run_dir="$RUN_DIR/$variant"
  if compgen -G "$run_dir/checkpoints/*.json" > /dev/null; then
    resume=1 overwrite=0
    echo "== $variant: resuming $run_dir from its last checkpoint"
  else
    resume=0 overwrite=1  # nothing to continue: an earlier run there (another MAX_STEPS, or killed early) goes
  fi
  echo "== $variant: RESET=$reset NEED_NORMALIZATION=$norm GRANULARITY=$granularity -> $bank"
  DATA_DIR=${DATA_DIR:-../shared/data} TASK=Copa EPOCH=$EPOCH EPOCHS_PER_RESTART=2 BS=8 \
  LR_LLM=1e-5 TRAJECTORY_OPTIMIZER=adam LR_MLP=1e-3 LR_UPDATE=1e-6 ZO_EPS=1e-3 SEED=0 \
  RESET=$reset NEED_NORMALIZATION=$norm GRANULARITY=$granularity MAX_STEPS=$MAX_STEPS \
  OUTPUT_DIR="$run_dir" SAVE_MLP_PATH="$bank" RESUME=$resume OVERWRITE=$overwrite \
  CHECKPOINT_STEPS=${CHECKPOINT_STEPS:-20} \
  EXTRA_ARGS="--mlp_optimizer adam --save_every_steps 20 ${EXTRA_ARGS:-}" \
  bash scripts/l2l.sh
  record_noise "$bank"
done
echo "ablation banks in $BANK_DIR: $VARIANTS"
