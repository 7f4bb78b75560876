#!/usr/bin/env bash
# Check the GPU path on every visible accelerator: the invariant tests on that device, a 20-step SST-2 run
# with MeZO and with ZO Fine-tuner (each rebuilt from its step log, compared bit for bit with its saved best
# state and rescored), and the step benchmark (ZO-FT/MeZO, MeZO/(2 x forward), peak memory of
# a step relative to inference from torch.cuda.max_memory_allocated). Without an accelerator: says so, exit 0.
# With two CUDA devices or more, also a two-run campaign with one run a GPU (GPUS="0 1").
#   DATA_DIR=../shared/data bash scripts/gpu_check.sh        (MODEL=/path/to/model to use another model)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-../shared/data}
MODEL=${MODEL:-}
OUT=${OUT:-/tmp/zo-gpu-check}

DEVICES=$(python - <<'PY'
import torch
found = [f"cuda:{k}" for k in range(torch.cuda.device_count())]
if not found and torch.backends.mps.is_available():
    found = ["mps"]
print(" ".join(found))
PY
)
if [ -z "$DEVICES" ]; then
  echo "gpu_check: no accelerator visible (torch.cuda.device_count() == 0, no MPS): nothing to check."
  exit 0
fi
if [ -z "$MODEL" ] && [ ! -f models/SmolLM2-135M/config.json ]; then bash scripts/setup.sh; fi
echo "gpu_check: accelerators: $DEVICES"
MODEL_ARGS=(); [ -n "$MODEL" ] && MODEL_ARGS=(--model "$MODEL")

# 1. the invariant tests, every accelerator (the `gpu`-marked cases of tests/zo/test_devices.py),
#    and the two-device placement test when there are two CUDA devices
HF_HUB_OFFLINE=1 python -m pytest -q -m gpu tests/zo/test_devices.py

for DEVICE in $DEVICES; do
  echo "== $DEVICE =="
  # 2. 20-step SST-2 runs, MeZO and ZO Fine-tuner (the embedded model's bank, or a fresh one for MODEL)
  BANK=learned_finetuner/smollm2-135m_copa.safetensors
  if [ -n "$MODEL" ]; then
    BANK="$OUT/bank.safetensors"; mkdir -p "$OUT"
    python -m zo.init_bank --model "$MODEL" --out "$BANK"
  fi
  for MODE in mezo zo_fine_tuner; do
    # LR 1e-5 (not the launcher's 1e-6): the weights must move for the rebuild below to mean something
    TRAIN_MODE=$MODE LOAD_MLP_PATH=$BANK DEVICE=$DEVICE DATA_DIR=$DATA_DIR TASK=SST2 STEPS=20 EVAL_STEPS=20 \
      LR=${CHECK_LR:-1e-5} DEV=50 EVAL=100 OUTPUT_DIR="$OUT/$MODE-${DEVICE/:/}" MODEL=$MODEL \
      bash scripts/zo_fine_tuner.sh
    python -c "import json,sys; m=json.load(open(sys.argv[1])); print('$MODE on $DEVICE:', m['status'], 'test', m.get('test'), 'train s', m['train_seconds'])" \
      "$OUT/$MODE-${DEVICE/:/}/metrics.json"
    # 2b. the run's evaluated weights rebuilt on this device from its step log: bit for bit the saved best
    #     state (and moved from the pretrained weights), and the test accuracy comes back
    python - "$OUT/$MODE-${DEVICE/:/}" <<'PY'
import sys
import torch
from zo.loop import BEST_STATE_FILE, load_weights
from zo.models import load_model
from zo.recipes.rebuild import rebuild
run = sys.argv[1]
rebuilt = rebuild(run)
saved, _ = load_model(rebuilt.config.model_name)
pretrained = {k: v.clone() for k, v in saved.state_dict().items()}
load_weights(saved, f"{run}/{BEST_STATE_FILE}")
same = all(torch.equal(p.detach().cpu(), q) for p, q in zip(rebuilt.model.parameters(), saved.parameters()))
moved = max(float((q - pretrained[k]).abs().max()) for k, q in saved.state_dict().items())
print(f"rebuilt at step {rebuilt.step}: equal to {BEST_STATE_FILE} bit for bit: {same}; max weight change {moved:.2e}")
sys.exit(0 if same and (rebuilt.step == 0 or moved > 0) else 1)
PY
    python -m zo.recipes.rebuild "$OUT/$MODE-${DEVICE/:/}" --rescore_test
  done
  # 3. step times and peak memory relative to inference
  python scripts/benchmark_step.py --data_dir "$DATA_DIR" --device "$DEVICE" --repeats 5 "${MODEL_ARGS[@]}"
done

# 4. two or more CUDA devices: a two-run campaign with one run a GPU (GPUS); campaign.json names each run's GPU
if [ "$(echo "$DEVICES" | tr ' ' '\n' | grep -c '^cuda:')" -ge 2 ]; then
  rm -rf "$OUT/campaign"
  RESULTS_DIR="$OUT/campaign" TASKS=SST2 METHODS=mezo LRS_mezo="1e-5 1e-6" SEEDS=42 STEPS=10 EVAL_STEPS=10 DEV=50 \
    EVAL=100 GPUS="0 1" MODEL=$MODEL DATA_DIR=$DATA_DIR python scripts/reproduce_paper.py
  python - "$OUT/campaign" <<'PY'
import json, sys
from pathlib import Path
records = [json.loads(p.read_text()) for p in Path(sys.argv[1]).glob("runs/*/*/*/*/campaign.json")]
for r in records:
    print("campaign run", r["fingerprint"]["lr"], "on GPU", r.get("cuda_visible_devices"), f"{r['wall_seconds']:.0f} s")
gpus = sorted(r.get("cuda_visible_devices") for r in records)
print("two runs, one on each GPU:", gpus == ["0", "1"])
PY
fi
