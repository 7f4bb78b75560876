"""The paper's protocol as a resumable campaign: LR grid per (task, method) on one seed, best LR on dev, more seeds.

    python scripts/reproduce_paper.py            # run what is missing, one run at a time (kill and restart at will)
    python scripts/reproduce_paper.py --status   # the plan: done / pending / blocked per phase, CPU-hours spent
Settings are env vars (scripts/reproduce_paper.sh lists them; docs/campaign.md explains the protocol).
"""
from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from campaign.plan import PHASES, Plan, build_plan  # noqa: E402
from campaign.runner import execute, scratch_dir  # noqa: E402
from campaign.settings import Settings, load_settings  # noqa: E402
from campaign.store import all_runs  # noqa: E402


def status_text(settings: Settings, plan: Plan) -> str:
    model = settings.model or "embedded SmolLM2-135M"
    lines = [f"campaign: model {model}; results {settings.results_dir}; tasks {' '.join(settings.tasks)}; "
             f"seeds {' '.join(map(str, settings.seeds))}; best LR by {settings.select_by}"]
    for name, reason in plan.unavailable.items():
        lines.append(f"  unavailable: {name} ({reason})")
    for phase, title in PHASES.items():
        runs = [r for r in plan.runs if r.phase == phase]
        done = sum(r.state == "done" for r in runs)
        stale = sum(r.state == "stale" for r in runs)
        blocked = plan.blocked.get(phase, 0)
        lines.append(f"phase {phase} ({title}): {done} done, {len(runs) - done} pending"
                     + (f" ({stale} stale: finished with other settings, rerun)" if stale else "")
                     + (f", {blocked} blocked until their LR grid is complete" if blocked else ""))
        groups: dict[tuple[str, str], list] = {}
        for r in runs:
            groups.setdefault((r.task, r.method.name), []).append(r)
        for (task, method), rs in groups.items():
            marks = " ".join(f"{r.lr}/s{r.seed}:{'ok' if r.state == 'done' else r.state}" for r in rs)
            lines.append(f"  {task:6s} {method:15s} {marks}")
    edges = [f"{t} {m} {plan.best_lr[t, m]}" for t, m in sorted(plan.at_edge)]
    if edges:
        lines.append("best LR at the edge of its grid (extend it with LRS_<method>_<task>): " + ", ".join(edges))
    finished = all_runs(settings.runs_dir)
    cpu = sum(r.cpu_seconds for r in finished)
    left = len(plan.pending()) + sum(plan.blocked.values())
    lines.append(f"left: {len(plan.pending())} runnable now, {sum(plan.blocked.values())} blocked; "
                 f"{left} runs in all. CPU-hours spent on finished runs: {cpu / 3600:.2f}")
    return "\n".join(lines + [estimate_text(plan, finished)] + scratch_lines(settings, plan))


def scratch_lines(settings: Settings, plan: Plan) -> list[str]:
    """Disk held by unfinished attempts (their checkpoints), and which of them this plan will not resume."""
    root = settings.results_dir / ".scratch"
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not folders:
        return []
    size = sum(f.stat().st_size for folder in folders for f in folder.rglob("*") if f.is_file())
    line = f"scratch: {len(folders)} unfinished attempt{'s' * (len(folders) != 1)}, {size / 2**30:.1f} GiB in {root}"
    pending = {scratch_dir(settings, r).name for r in plan.pending()}
    others = [p.name for p in folders if p.name not in pending]
    if others:
        line += ("; not pending in this plan (another TASKS / METHODS may still resume them, else delete): "
                 + ", ".join(others))
    return [line]


def estimate_text(plan: Plan, finished: list) -> str:
    """What the runnable runs will cost, at the median CPU time of each task's finished, undiverged runs."""
    costs: dict[str, list[float]] = {}
    for r in finished:
        if not r.diverged and r.cpu_seconds > 0:
            costs.setdefault(r.task, []).append(r.cpu_seconds)
    known = [statistics.median(costs[r.task]) for r in plan.pending() if r.task in costs]
    unknown = sorted({r.task for r in plan.pending() if r.task not in costs})
    text = f"estimate for the runnable runs: {sum(known) / 3600:.1f} CPU-hours for {len(known)} of them"
    return text + (f" (no finished run yet to measure {', '.join(unknown)})" if unknown else "")


def _stop_on_sigterm(*_):
    raise KeyboardInterrupt  # subprocess.run kills the running child on the way out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--status", action="store_true", help="print the plan and exit")
    parser.add_argument("--max_runs", type=int, default=0, help="stop after this many runs (0: all)")
    args = parser.parse_args(argv)
    settings = load_settings()
    if args.status:
        print(status_text(settings, build_plan(settings)))
        return 0
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    failed: set[Path] = set()  # a run that fails is tried once per invocation, then left for the next start
    count = 0
    while not args.max_runs or count < args.max_runs:
        plan = build_plan(settings)  # rebuilt after every run: a finished grid unblocks its seeds
        todo = [r for r in plan.pending() if r.folder not in failed]
        if not todo:
            break
        run = todo[0]
        print(f"[{time.strftime('%H:%M:%S')}] phase {run.phase}: {run.task} {run.method.name} lr {run.lr} "
              f"seed {run.seed} ({len(todo)} runnable)", flush=True)
        try:
            ok, message = execute(settings, run)
        except KeyboardInterrupt:
            print("interrupted: start again to resume (the run in progress continues from its last checkpoint)", flush=True)
            return 130
        print(f"    {'done' if ok else 'FAILED'}: {message}", flush=True)
        if not ok:
            failed.add(run.folder)
        count += 1
    print(status_text(settings, build_plan(settings)), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
