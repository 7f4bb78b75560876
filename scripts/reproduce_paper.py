"""The paper's protocol as a resumable campaign: LR grid per (task, method) on one seed, best LR on dev, more seeds.

    python scripts/reproduce_paper.py            # run what is missing, one run at a time (kill and restart at will)
    WORKERS=2 python scripts/reproduce_paper.py  # two runs at a time, each on its share of the cores
    python scripts/reproduce_paper.py --status   # the plan: done / pending / blocked per phase, CPU-hours spent
Settings are env vars (scripts/reproduce_paper.sh lists them; docs/campaign.md explains the protocol).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from campaign.plan import PHASES, Plan, build_plan  # noqa: E402
from campaign import runner  # noqa: E402
from campaign.runner import scratch_dir  # noqa: E402
from campaign.cost import BENCHMARK_RATIO, TASK_MEDIAN, CostModel  # noqa: E402
from campaign.settings import Settings, available_cores, load_settings, split_words  # noqa: E402
from campaign.deadline import clock  # noqa: E402
from campaign.store import all_runs  # noqa: E402


def status_text(settings: Settings, plan: Plan, threads: int | None = None) -> str:
    """The plan, what is left and what it will cost; `threads`: what each run will get (it prices the runs)."""
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
        lines.append("best LR at the edge of its grid after EXTEND_GRID extensions (extend it with "
                     "LRS_<method>_<task>): " + ", ".join(edges))
    finished = all_runs(settings.runs_dir)
    cpu = sum(r.cpu_seconds for r in finished)
    left = len(plan.pending()) + sum(plan.blocked.values())
    partial = sum(not r.cost_complete for r in finished)
    lines.append(f"left: {len(plan.pending())} runnable now, {sum(plan.blocked.values())} blocked; "
                 f"{left} runs in all. CPU-hours spent on finished runs: {cpu / 3600:.2f}"
                 + (f" (at least: {partial} resumed run{'s' * (partial != 1)} count their last attempt only)"
                    if partial else ""))
    return "\n".join(lines + [estimate_text(plan, finished, threads)] + scratch_lines(settings, plan))


def scratch_lines(settings: Settings, plan: Plan) -> list[str]:
    """Disk held by unfinished attempts (their checkpoints), and which of them this plan will not resume."""
    root = settings.results_dir / ".scratch"
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not folders:
        return []
    size = sum(f.stat().st_size for folder in folders for f in folder.rglob("*") if f.is_file())
    line = f"scratch: {len(folders)} unfinished attempt{'s' * (len(folders) != 1)}, {size / 2**30:.1f} GiB in {root}"
    running = [p.name for p in folders if runner.held_now(p.with_name(p.name + ".lock"))]
    if running:
        line += f"; running now (a driver on this machine holds them): {', '.join(running)}"
    pending = {scratch_dir(settings, r).name for r in plan.pending()}
    others = [p.name for p in folders if p.name not in pending]
    if others:
        line += ("; not pending in this plan (another TASKS / METHODS may still resume them, else delete): "
                 + ", ".join(others))
    return [line]


def estimate_text(plan: Plan, finished: list, threads: int | None = None) -> str:
    """What the runnable runs will cost (campaign.cost: a method's own finished runs, else its ratio to MeZO,
    measured by the campaign or by the step benchmark, else its task's median), and on what each was priced."""
    model = CostModel(finished, threads=threads)
    known, benchmarked, guessed, unknown = [], set(), set(), set()
    for r in plan.pending():
        price = model.price(r)
        if price.seconds is None:
            unknown.add(r.task)
            continue
        known.append(price.seconds)
        if price.basis == BENCHMARK_RATIO:
            benchmarked.add(r.method.name)
        elif price.basis == TASK_MEDIAN:
            guessed.add(r.method.name)
    cores = available_cores()
    text = (f"estimate for the runnable runs: {sum(known) / 3600:.1f} CPU-hours (about "
            f"{sum(known) / 3600 / cores:.1f} wall-hours on {cores} busy cores) for {len(known)} of them")
    if benchmarked:
        text += (f"; at MeZO's times the step benchmark's ratio, no finished run to measure the method yet: "
                 f"{', '.join(sorted(benchmarked))}")
    if guessed:
        text += f"; at their task's median, no finished run to measure the method yet: {', '.join(sorted(guessed))}"
    return text + (f" (no finished run yet to measure {', '.join(sorted(unknown))})" if unknown else "")


def _stop_on_sigterm(*_):
    raise KeyboardInterrupt  # run_campaign stops the runs in progress on the way out


def worker_threads(settings: Settings, workers: int) -> int | None:
    """Threads per run: THREADS, else the cores split evenly between the workers (None: one worker, the run's
    own default)."""
    if settings.get("THREADS"):
        return int(settings.get("THREADS"))
    if workers == 1:
        return None
    cores = available_cores()
    return max(1, cores // workers)


def label(run) -> str:
    return f"{run.task} {run.method.name} lr {run.lr} seed {run.seed}"


def next_runs(stages: list[Settings], skip: set[Path], fits=None) -> tuple[Settings, list, int] | None:
    """The first stage that has a runnable run (not in `skip`, and passing `fits(settings, run)` when given), its
    runnable runs in plan order, and how many runs all the stages have runnable. A later stage's run starts only
    when every earlier stage has none left to start: at a stage's end its last runs and the next stage's first ones
    share the cores."""
    found, runnable, seen = None, 0, set(skip)
    for settings in stages:
        plan = build_plan(settings)  # rebuilt before every start: a finished grid unblocks its seeds
        todo = [r for r in plan.pending() if r.folder not in seen]
        seen |= {r.folder for r in todo}  # a run two stages plan (the seeds of two stages) counts once
        todo = [r for r in todo if fits is None or fits(settings, r)]
        runnable += len(todo)
        if todo and found is None:
            found = settings, todo
    return None if found is None else (*found, runnable)


# A run resumed from a checkpoint is priced at the share of its steps left, but at least this share of a whole run:
# loading, and the evaluation after the last step, are left too.
RESUMED_MIN_SHARE = 0.1


class DeadlineGate:
    """DEADLINE's test for a run about to start: its price in wall seconds (campaign.cost, from the runs finished
    so far with its caps; a run with a checkpoint at the share of its steps left) times DEADLINE_MARGIN must end
    before the deadline; a run nothing prices yet does not start. Each run left out is named once, with why
    (`report`: one line per task, method and price)."""

    def __init__(self, settings: Settings, threads: int | None = None):
        self.deadline, self.margin, self.threads = settings.deadline, settings.deadline_margin, threads
        self.runs_dir = settings.runs_dir
        self.model = CostModel([])
        self.left_out: set[Path] = set()
        self.unreported: list[tuple] = []  # (run, price in seconds or None, "from its checkpoint ..." or "")

    def refresh(self) -> None:  # before each round of starts: a run that finished prices the next ones better
        self.model = CostModel(all_runs(self.runs_dir), measure="wall_seconds", threads=self.threads)

    def seconds_left_of(self, settings: Settings, run) -> tuple[float | None, str]:
        seconds = self.model.price(run).seconds
        done, steps = runner.resumable_step(settings, run), int(run.fingerprint["steps"])
        if seconds is None or not done:
            return seconds, ""
        return seconds * max((steps - done) / steps, RESUMED_MIN_SHARE), f" from its checkpoint at step {done}"

    def __call__(self, settings: Settings, run) -> bool:
        seconds, resumed = self.seconds_left_of(settings, run)
        if seconds is not None and seconds * self.margin <= self.deadline - time.time():
            return True
        if run.folder not in self.left_out:
            self.left_out.add(run.folder)
            self.unreported.append((run, seconds, resumed))
        return False

    def report(self) -> None:
        """Name the runs left out since the last report, one line per task, method and price (a whole stage
        left out would otherwise take a line a run)."""
        groups: dict[tuple, list] = {}
        for run, seconds, resumed in self.unreported:
            price = None if seconds is None else round(seconds / 60)
            groups.setdefault((run.task, run.method.name, price, resumed), []).append(run)
        self.unreported = []
        left = max(self.deadline - time.time(), 0) / 60
        for (task, method, price, resumed), runs in groups.items():
            why = ("no finished run of its task with these caps prices it yet" if price is None else
                   f"priced {price} min{resumed} x {self.margin:g}, {left:.0f} min left")
            lrs = " ".join(dict.fromkeys(str(r.lr) for r in runs))
            seeds = " ".join(dict.fromkeys(str(r.seed) for r in runs))
            count = f", {len(runs)} runs" if len(runs) > 1 else ""
            print(f"[{time.strftime('%H:%M:%S')}] not started before DEADLINE {clock(self.deadline)}: {task} {method} "
                  f"lr {lrs} seed {seeds}{count} ({why})", flush=True)


# A lone run started on a share of the cores is restarted on all of them (from the checkpoint its SIGTERM writes)
# only if this many steps are left: below it, the reload would cost more than the cores gain.
REGROW_MIN_STEPS = 10


def worth_regrowing(attempt: runner.Attempt) -> bool:
    """Whether the last run in progress, started on a share of the cores while others ran, should be stopped at a
    checkpoint and resumed on all of them (a run computes the same losses on 1 or 2 threads:
    scripts/benchmark_workers.py). Not on a GPU, nor with THREADS set, nor near its end."""
    return (attempt.gpu is None and attempt.threads is not None and attempt.threads < available_cores()
            and not attempt.settings.get("THREADS") and attempt.steps_left() >= REGROW_MIN_STEPS)


def run_campaign(stages: Settings | list[Settings], workers: int, max_runs: int = 0) -> int:
    """Keep up to `workers` runs going until no stage has anything runnable left; 0, 1 if a run failed, 130 if
    interrupted (the runs in progress get SIGTERM, checkpoint and stop; the next start resumes them).
    GPUS="0 1 ...": each run gets one of them to itself (CUDA_VISIBLE_DEVICES); list one twice for two runs on it."""
    stages = stages if isinstance(stages, list) else [stages]
    free_gpus = list(split_words(stages[0].get("GPUS")))
    failed: set[Path] = set()  # a run that fails is tried once per invocation, then left for the next start
    elsewhere: set[Path] = set()  # runs another driver holds (or published since our plan)
    running: dict[int, runner.Attempt] = {}
    started = 0
    # priced as the runs will mostly go: each on a share of the cores
    gate = (DeadlineGate(stages[0], worker_threads(stages[0], workers)) if stages[0].deadline is not None
            else None)
    started_folders: set[Path] = set()
    try:
        while True:
            if gate is not None and len(running) < workers:
                gate.refresh()
            while len(running) < workers and (not max_runs or started < max_runs):
                found = next_runs(stages, failed | elsewhere | {a.run.folder for a in running.values()}, gate)
                if found is None:
                    break
                settings, todo, runnable = found
                run = todo[0]
                # the cores are split between the runs that can go at once: a last run alone gets them all
                threads = worker_threads(settings, min(workers, runnable + len(running)))
                gpu = free_gpus.pop(0) if free_gpus else None
                with runner.stop_signals_held():  # a stop must find the new run in `running`
                    attempt = runner.start(settings, run, threads, gpu)
                    if attempt is not None:
                        running[attempt.proc.pid] = attempt
                if attempt is None:
                    if gpu is not None:
                        free_gpus.insert(0, gpu)
                    print(f"[{time.strftime('%H:%M:%S')}] skipped {label(run)}: another driver is running it or "
                          f"has finished it", flush=True)
                    elsewhere.add(run.folder)
                    continue
                started += 1
                started_folders.add(run.folder)
                print(f"[{time.strftime('%H:%M:%S')}] phase {run.phase}: {label(run)} ({len(todo)} runnable"
                      + (f", {len(running)} running" if workers > 1 else "")
                      + (f", GPU {gpu}" if gpu is not None else "") + ")", flush=True)
            if gate is not None:
                gate.report()
            if not running:
                break
            lone = next(iter(running.values())) if len(running) == 1 else None
            if lone is not None and workers > 1 and worth_regrowing(lone):
                with runner.stop_signals_held():  # a stop meanwhile waits, then finds the new run in `running`
                    del running[lone.proc.pid]
                    runner.stop([lone])  # it checkpoints on the SIGTERM, and is resumed at once on every core
                    again = runner.start(lone.settings, lone.run, available_cores())
                    if again is not None:
                        running[again.proc.pid] = again
                if again is None:
                    elsewhere.add(lone.run.folder)
                    continue
                print(f"[{time.strftime('%H:%M:%S')}] {label(lone.run)}: the last run in progress, resumed from "
                      f"its checkpoint on {again.threads} threads", flush=True)
            pid, status, usage = os.wait4(-1, 0)  # whichever run ends first, with its own CPU time
            attempt = running.pop(pid, None)
            if attempt is None:
                continue
            if attempt.gpu is not None:
                free_gpus.append(attempt.gpu)
            ok, message = runner.finish(attempt, os.waitstatus_to_exitcode(status), usage)
            print(f"    {'done' if ok else 'FAILED'}: {message}" + (f" ({label(attempt.run)})" if workers > 1 else ""),
                  flush=True)
            if not ok:
                failed.add(attempt.run.folder)
    except KeyboardInterrupt:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second signal must not cut the runs' checkpoints short
            signal.signal(sig, signal.SIG_IGN)
        runner.stop(running.values())
        print("interrupted: start again to resume (a run in progress continues from its last checkpoint)", flush=True)
        return 130
    for settings in stages:
        print(status_text(settings, build_plan(settings), worker_threads(settings, workers)), flush=True)
    unstarted = (gate.left_out - started_folders) if gate else set()
    if unstarted:
        print(f"DEADLINE {clock(gate.deadline)}: {len(unstarted)} runnable run{'s' * (len(unstarted) != 1)} not "
              f"started: priced to end after it, or not priced yet (named above)", flush=True)
    return 1 if failed else 0


def stage_settings(assignments: str) -> Settings:
    """The env plus one stage's own settings, `NAME=value;NAME=value` (a value may hold spaces)."""
    overrides = {}
    for item in filter(None, (part.strip() for part in assignments.split(";"))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--stage wants NAME=value;NAME=value, got {item!r} in {assignments!r}")
        if name.strip() in ("DEADLINE", "DEADLINE_MARGIN"):
            raise ValueError(f"{name.strip()} applies to the whole driver: set it in the environment, not in a --stage")
        overrides[name.strip()] = value.strip()
    return load_settings({**os.environ, **overrides})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--status", action="store_true", help="print the plan and exit")
    parser.add_argument("--max_runs", type=int, default=0, help="start at most this many runs (0: all)")
    parser.add_argument("--workers", type=int, default=None,
                        help="runs at a time (default: WORKERS, else one a GPU of GPUS, else 1); each gets THREADS "
                             "threads, else an even share of the cores")
    parser.add_argument("--stage", action="append", default=[], metavar="'NAME=value;NAME=value'",
                        help="a stage: the env plus these settings (e.g. 'TASKS=SST2 CB;SEEDS=42'); repeat it for "
                             "stages run in this order, a stage's runs starting once the earlier stages have none "
                             "left to start (default: one stage, the env)")
    args = parser.parse_args(argv)
    try:
        stages = [stage_settings(text) for text in args.stage] or [load_settings()]
    except ValueError as err:
        parser.error(str(err))
    settings = stages[0]
    gpus = split_words(settings.get("GPUS"))
    workers = args.workers if args.workers is not None else int(settings.get("WORKERS", str(len(gpus) or 1)))
    if workers < 1:
        parser.error(f"--workers / WORKERS must be at least 1, got {workers}")
    if gpus and workers > len(gpus):
        parser.error(f"{workers} workers but GPUS lists {len(gpus)}: each run needs a GPU of its own "
                     f"(list a GPU twice to run two runs on it)")
    if args.status:
        for stage in stages:
            print(status_text(stage, build_plan(stage), worker_threads(stage, workers)))
        return 0
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    return run_campaign(stages, workers, args.max_runs)


if __name__ == "__main__":
    sys.exit(main())
