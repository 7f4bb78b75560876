#!/usr/bin/env bash
# Step time of MeZO with training batches cut into length groups (--length_groups), side by side in one run:
# for each task, 4 steps of batch 16 per setting, the same batches in each (same seed); prints the summed step
# time of steps 2-4 and its ratio to one padded batch. Run it on a quiet machine.
#   DATA_DIR=../shared/data bash scripts/benchmark_length_groups.sh
#   TASKS="CB" GROUPS_LIST="1 2 4" MODEL=/path/to/model bash scripts/benchmark_length_groups.sh
# max_length is the campaign's cap of the task (scripts/campaign/settings.py, docs/campaign.md).
set -euo pipefail
cd "$(dirname "$0")/.."
TASKS=${TASKS:-"CB WSC BoolQ SST2"}
GROUPS_LIST=${GROUPS_LIST:-"1 2 3"}
DATA_DIR=${DATA_DIR:-../shared/data}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
for task in $TASKS; do
  for g in $GROUPS_LIST; do
    max_length=$(cd scripts && python -c "from campaign.settings import DEFAULT_CAPS, TaskCaps
print(DEFAULT_CAPS.get('$task', TaskCaps()).max_length)")
    python run_zo_fine_tuner.py --task_name "$task" --train_mode mezo --data_dir "$DATA_DIR" --max_steps 4 \
      --eval_steps 0 --num_train 200 --num_dev 0 --num_eval 0 --per_device_train_batch_size 16 \
      --max_length "$max_length" --learning_rate 1e-5 --train_loss_subset 0 --progress False \
      --length_groups "$g" ${MODEL:+--model_name "$MODEL"} --output_dir "$OUT/$task-$g" > "$OUT/$task-$g.log" 2>&1 \
      || { tail -20 "$OUT/$task-$g.log"; exit 1; }
  done
  python - "$OUT" "$task" $GROUPS_LIST <<'EOF'
import json, sys
out, task, settings = sys.argv[1], sys.argv[2], sys.argv[3:]
times = {}
for g in settings:
    lines = [json.loads(l) for l in open(f"{out}/{task}-{g}/train_log.jsonl")]
    times[g] = sum(r["seconds"] for r in lines if r["kind"] == "step" and r["step"] > 0)  # step 0 warms up
base = times[settings[0]]
print(f"{task}: " + "; ".join(f"groups {g}: {t:.1f} s ({t / base:.2f}x)" for g, t in times.items()), flush=True)
EOF
done
