"""What a planned run will cost, priced from the runs the campaign has finished (for `--status` and DEADLINE).

A run is priced at the median cost of the finished, undiverged runs of its task and method; else at MeZO's on
that task times the method's cost ratio to MeZO, measured by the campaign on other tasks; else at MeZO's times the
step benchmark's ratio (STEP_COST_VS_MEZO); else at the task's median over all methods; else not at all. Only runs
with the same caps count (steps, subsets, lengths, batch, model, ...: the fingerprint without the method and its
LR and seed), so a smoke run or an older setting does not price a full run. Runs whose cost covers their last
attempt only are left out: they would price a run too low. The cost is CPU seconds (`--status`) or wall seconds
(DEADLINE), as campaign.json records them. Given the threads the next runs will get, a price is taken from the
runs made on that many threads where the task and method have any (CPU time spent on 2 threads here is about twice
that on 1, for the same wall time on a quiet machine), else from all of them; a ratio to MeZO only from runs of
both on the same threads.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass

from .settings import STEP_COST_VS_MEZO

# how a price was found, in the order tried
OWN_RUNS, RATIO_TO_MEZO, BENCHMARK_RATIO, TASK_MEDIAN = "own runs", "ratio to mezo", "benchmark ratio", "task median"
# fingerprint fields that name the method or the point of its grid: the rest are the caps a run's cost depends on
METHOD_FIELDS = ("task", "method", "train_mode", "bank", "bank_sha256", "method_args", "lr", "seed")


def caps_key(fingerprint: dict | None) -> str | None:
    if fingerprint is None:
        return None
    return json.dumps({k: v for k, v in fingerprint.items() if k not in METHOD_FIELDS}, sort_keys=True)


@dataclass(frozen=True)
class Price:
    seconds: float | None  # None: nothing finished on the task (with these caps) to price it by
    basis: str | None


class CostModel:
    def __init__(self, finished: list, measure: str = "cpu_seconds", threads: int | None = None):
        costs: dict[tuple[str, str | None, str], list[float]] = {}
        by_threads: dict[tuple[str, str | None, str, int | None], list[float]] = {}
        for r in finished:
            seconds = getattr(r, measure)
            if not r.diverged and seconds > 0 and r.cost_complete:
                key = (r.task, caps_key(r.campaign.get("fingerprint")), r.method)
                costs.setdefault(key, []).append(seconds)
                by_threads.setdefault(key + (r.threads,), []).append(seconds)
        if threads is not None:  # where the task and method have runs on these threads, only those
            costs.update({key[:3]: values for key, values in by_threads.items() if key[3] == threads})
        self.median = {key: statistics.median(values) for key, values in costs.items()}
        by_task: dict[tuple[str, str | None], list[float]] = {}
        for (task, caps, _), values in costs.items():
            by_task.setdefault((task, caps), []).extend(values)
        self.task_median = {key: statistics.median(values) for key, values in by_task.items()}
        # a method's cost against MeZO's, from runs of both on the same task and the same number of threads (a
        # 1-thread run against a 2-thread one would halve or double it)
        ratios: dict[str, list[float]] = {}
        for (task, caps, method, run_threads), values in by_threads.items():
            mezo = by_threads.get((task, caps, "mezo", run_threads))
            if method != "mezo" and mezo:
                ratios.setdefault(method, []).append(statistics.median(values) / statistics.median(mezo))
        self.ratio = {method: statistics.median(values) for method, values in ratios.items()}

    def price(self, run) -> Price:
        task, method = run.task, run.method.name
        caps = caps_key(getattr(run, "fingerprint", None))
        mezo = self.median.get((task, caps, "mezo"))
        if (task, caps, method) in self.median:
            return Price(self.median[task, caps, method], OWN_RUNS)
        if method in self.ratio and mezo is not None:
            return Price(mezo * self.ratio[method], RATIO_TO_MEZO)
        if run.method.train_mode in STEP_COST_VS_MEZO and mezo is not None:
            return Price(mezo * STEP_COST_VS_MEZO[run.method.train_mode], BENCHMARK_RATIO)
        if (task, caps) in self.task_median:
            return Price(self.task_median[task, caps], TASK_MEDIAN)
        return Price(None, None)
