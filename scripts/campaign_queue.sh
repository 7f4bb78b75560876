#!/usr/bin/env bash
# Issue 9's SmolLM2 campaign on a CPU as one queue of stages, in the order that makes a partial result useful
# (docs/campaign.md). Every stage resumes: finished runs and banks are skipped, a killed one continues from its
# checkpoint, so after a kill the same command carries on where it stopped.
#   nohup bash scripts/campaign_queue.sh > campaign.log 2>&1 &    # run (or continue) the whole queue
#   bash scripts/campaign_queue.sh --status                       # what each stage has done and has left
#   STAGES="ablation_banks ablations" bash scripts/campaign_queue.sh   # only some stages, in this order
# Stages, in the issue's order: MeZO against the new bank on all 7 tasks first, then the ablations (small and a
# claim of their own), then seeds and the other methods (the bulk of the CPU-hours):
#   core            MeZO and ZO-FT (new bank): LR grids (seed 42) on SST2 Copa WSC CB
#   long            MeZO and ZO-FT on BoolQ SQuAD DROP, LR grids, one seed
#   ablation_banks  the Table 2 / Table 3 banks (scripts/train_ablation_banks.sh)
#   ablations       those banks on SST-2, LR grid, seed 42
#   core_seeds      MeZO and ZO-FT: 3 seeds at the best LR on SST2 Copa WSC CB
#   others          the LR grid (seed 42) of every other method on SST2 Copa WSC CB
#   seeds           3 seeds at the best LR for the other methods on SST2 Copa WSC CB
# After each stage of runs the report (results/README.md, plots) is made again (REPORT=0: not).
# Other env vars (DATA_DIR, RESULTS_DIR, MODEL, LRS_*, ...) reach the stages unchanged. WORKERS defaults to 2
# here: two 1-thread runs at once get more done on a 2-core CPU than one 2-thread run (1.1-1.3x,
# scripts/benchmark_workers.py).
set -uo pipefail
cd "$(dirname "$0")/.."

SHORT_TASKS="SST2 Copa WSC CB"
LONG_TASKS="BoolQ SQuAD DROP"
ABLATION_METHODS="zoft_base zoft_reset zoft_norm zoft_reset_norm zoft_layerwise"
STAGES=${STAGES:-"core long ablation_banks ablations core_seeds others seeds"}
export DATA_DIR=${DATA_DIR:-../shared/data}
export WORKERS=${WORKERS:-2}

stage_command() {  # sets CMD to the command of one stage, with the env it needs
  case $1 in
    core)           CMD=(env TASKS="$SHORT_TASKS" METHODS="mezo zoft_new" SEEDS=42 bash scripts/reproduce_paper.sh) ;;
    ablation_banks) CMD=(bash scripts/train_ablation_banks.sh) ;;
    ablations)      CMD=(env TASKS=SST2 METHODS="$ABLATION_METHODS" SEEDS=42 bash scripts/reproduce_paper.sh) ;;
    others)         CMD=(env TASKS="$SHORT_TASKS" SEEDS=42 bash scripts/reproduce_paper.sh) ;;
    long)           CMD=(env TASKS="$LONG_TASKS" METHODS="mezo zoft_new" bash scripts/reproduce_paper.sh) ;;
    core_seeds)     CMD=(env TASKS="$SHORT_TASKS" METHODS="mezo zoft_new" bash scripts/reproduce_paper.sh) ;;
    seeds)          CMD=(env TASKS="$SHORT_TASKS" bash scripts/reproduce_paper.sh) ;;
    *) return 1 ;;
  esac
}

for stage in $STAGES; do  # refuse a typo before any work
  stage_command "$stage" || {
    echo "unknown stage '$stage' (core long ablation_banks ablations core_seeds others seeds)" >&2; exit 2; }
done

child=""
stop() {  # a kill of the queue stops the stage in progress (its whole process group) and nothing else
  if [ -n "$child" ]; then
    kill -TERM -- "-$child" 2>/dev/null
    # a run checkpoints on SIGTERM before it exits: wait for every process of the group, not just its leader
    for _ in $(seq 600); do kill -0 -- "-$child" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$child" 2>/dev/null
    wait "$child"
  fi
  echo "queue stopped: start it again to continue"
  exit 130
}
trap stop TERM INT

failed=""
for stage in $STAGES; do
  stage_command "$stage"
  if [ "${1:-}" = "--status" ]; then
    echo "== stage $stage: ${CMD[*]} --status"
    "${CMD[@]}" --status | grep -vE '^  [^ ]+ +[^ ]+ +[^ ]+/s[0-9]+:'  # one line a run: the stage's own --status
    continue
  fi
  echo "== [$(date +%H:%M:%S)] stage $stage: ${CMD[*]}"
  setsid -w "${CMD[@]}" &  # its own process group, so that stop() reaches every process the stage starts
  child=$!
  wait "$child"
  rc=$?
  child=""
  if [ $rc != 0 ]; then
    echo "== stage $stage ended with exit code $rc; going on with the next stage"
    failed="$failed $stage"
  fi
  if [ "$stage" != ablation_banks ] && [ "${REPORT:-1}" = 1 ]; then  # the report follows the runs (REPORT=0: not)
    python scripts/make_report.py > /dev/null 2>&1 && echo "== report updated: ${RESULTS_DIR:-results}/README.md" \
      || echo "== the report could not be made: run python scripts/make_report.py to see why"
  fi
done
[ "${1:-}" = "--status" ] && exit 0
if [ -n "$failed" ]; then echo "queue done; stages with failures:$failed (rerun to retry them)"; exit 1; fi
echo "queue done"
