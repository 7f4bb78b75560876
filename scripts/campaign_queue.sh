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
#   zero_shot       the model without training, on all 7 tasks (the seeds of each task): what training must beat
#   ablation_banks  the Table 2 / Table 3 banks (scripts/train_ablation_banks.sh)
#   ablations       those banks on SST-2, LR grid, seed 42
#   core_seeds      MeZO and ZO-FT: 3 seeds at the best LR on SST2 Copa WSC CB
#   others          the LR grid (seed 42) of every other method on SST2 Copa WSC CB
#   diagnose        where ZO-FT trails: it without the tied embedding, MeZO on that alone (CB, SQuAD; seed 42)
#   hizoo_alpha     HiZOO with a smoothing rate (1e-4) at which its curvature acts within the budget (SST2; seed 42)
#   seeds           3 seeds at the best LR for the other methods on SST2 Copa WSC CB
# Consecutive stages of runs go to one driver (reproduce_paper.py --stage ...), in order: a stage's runs start
# once the earlier stages have none left to start, so a stage's last run and the next stage's first share the
# cores. After each such group (and before the banks) the report (results/README.md, plots) is made again
# (REPORT=0: not).
# DEADLINE=03:30 (or an ISO date and time): start only the runs, and banks, expected to end before it (docs/campaign.md).
# Other env vars (DATA_DIR, RESULTS_DIR, MODEL, LRS_*, ...) reach the stages unchanged. WORKERS defaults to 2
# here: two 1-thread runs at once get more done on a 2-core CPU than one 2-thread run (1.1-1.3x,
# scripts/benchmark_workers.py).
set -uo pipefail
cd "$(dirname "$0")/.."

SHORT_TASKS="SST2 Copa WSC CB"
LONG_TASKS="BoolQ SQuAD DROP"
ABLATION_METHODS="zoft_base zoft_reset zoft_norm zoft_reset_norm zoft_layerwise"
ALL_STAGES="core long zero_shot ablation_banks ablations core_seeds others diagnose hizoo_alpha seeds"
STAGES=${STAGES:-$ALL_STAGES}
DIAGNOSTICS="zoft_no_embed mezo_embed_only"
export DATA_DIR=${DATA_DIR:-../shared/data}
export WORKERS=${WORKERS:-2}
if [ -n "${DEADLINE:-}" ]; then  # one instant for every step: a clock time read again later could mean tomorrow
  DEADLINE=$(python scripts/campaign/deadline.py "$DEADLINE") || exit 2
  export DEADLINE
fi

stage_spec() {  # sets SPEC: a stage of runs as reproduce_paper.py --stage settings, or "banks"
  case $1 in
    core)           SPEC="TASKS=$SHORT_TASKS;METHODS=mezo zoft_new;SEEDS=42" ;;
    long)           SPEC="TASKS=$LONG_TASKS;METHODS=mezo zoft_new" ;;
    zero_shot)      SPEC="TASKS=$SHORT_TASKS $LONG_TASKS;METHODS=zero_shot" ;;
    ablation_banks) SPEC=banks ;;
    ablations)      SPEC="TASKS=SST2;METHODS=$ABLATION_METHODS;SEEDS=42" ;;
    core_seeds)     SPEC="TASKS=$SHORT_TASKS;METHODS=mezo zoft_new" ;;
    others)         SPEC="TASKS=$SHORT_TASKS;SEEDS=42" ;;
    diagnose)       SPEC="TASKS=CB SQuAD;METHODS=$DIAGNOSTICS;SEEDS=42" ;;
    hizoo_alpha)    SPEC="TASKS=SST2;METHODS=hizoo_alpha;SEEDS=42" ;;
    seeds)          SPEC="TASKS=$SHORT_TASKS" ;;
    *) return 1 ;;
  esac
}

for stage in $STAGES; do  # refuse a typo before any work
  stage_spec "$stage" || { echo "unknown stage '$stage' ($ALL_STAGES)" >&2; exit 2; }
done

child="" reaped=""
stop() {  # a kill of the queue stops the step in progress (its whole process group) and nothing else
  # $!: a signal between a step's start and `child=$!` must reach that step too, not leave it running
  local pid=${child:-$!}
  if [ -n "$pid" ] && [ "$pid" != "$reaped" ]; then
    kill -TERM -- "-$pid" 2>/dev/null
    # the driver stops its runs (each checkpoints on SIGTERM) before it exits: wait for the whole group
    for _ in $(seq 600); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null
    wait "$pid"
  fi
  echo "queue stopped: start it again to continue"
  exit 130
}
trap stop TERM INT

# the queue as steps: each group of consecutive run stages (one driver), and the banks stage on its own
STEP_NAMES=(); STEP_ARGS=(); names=""; args=()
flush() {
  if [ -n "$names" ]; then
    STEP_NAMES+=("${names# }"); STEP_ARGS+=("$(printf '%q ' "${args[@]}")"); names=""; args=()
  fi
}
for stage in $STAGES; do
  stage_spec "$stage"
  if [ "$SPEC" = banks ]; then
    flush; STEP_NAMES+=(ablation_banks); STEP_ARGS+=(banks)
  else
    names="$names $stage"; args+=(--stage "$SPEC")
  fi
done
flush

failed=""
for i in "${!STEP_NAMES[@]}"; do
  name=${STEP_NAMES[$i]}
  if [ "${STEP_ARGS[$i]}" = banks ]; then
    CMD=(bash scripts/train_ablation_banks.sh)
  else
    eval "stage_args=(${STEP_ARGS[$i]})"
    CMD=(bash scripts/reproduce_paper.sh "${stage_args[@]}")
  fi
  if [ "${1:-}" = "--status" ]; then
    echo "== $name: ${CMD[*]} --status"
    "${CMD[@]}" --status | grep -vE '^  [^ ]+ +[^ ]+ +[^ ]+/s[0-9]+:'  # one line a run: the stage's own --status
    continue
  fi
  echo "== [$(date +%H:%M:%S)] $name: ${CMD[*]}"
  setsid -w "${CMD[@]}" &  # its own process group, so that stop() reaches every process the step starts
  child=$!
  wait "$child"
  rc=$?
  reaped=$child child=""
  if [ $rc != 0 ]; then
    echo "== $name ended with exit code $rc; going on with the next step"
    failed="$failed $name"
  fi
  if [ "$name" != ablation_banks ] && [ "${REPORT:-1}" = 1 ]; then  # the report follows the runs (REPORT=0: not)
    python scripts/make_report.py > /dev/null 2>&1 && echo "== report updated: ${RESULTS_DIR:-results}/README.md" \
      || echo "== the report could not be made: run python scripts/make_report.py to see why"
  fi
done
[ "${1:-}" = "--status" ] && exit 0
if [ -n "$failed" ]; then echo "queue done; with failures:$failed (rerun to retry them)"; exit 1; fi
echo "queue done"
