"""What a planned run will cost, priced from the runs the campaign has finished (for `--status` and DEADLINE).

A run is priced at the median CPU seconds of the finished, undiverged runs of its (task, method); else at MeZO's
on that task times the method's cost ratio to MeZO, measured by the campaign on other tasks; else at MeZO's times
the step benchmark's ratio (STEP_COST_VS_MEZO); else at the task's median over all methods; else not at all.
Runs whose cost covers their last attempt only are left out: they would price a run too low.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from .settings import STEP_COST_VS_MEZO

# how a price was found, in the order tried
OWN_RUNS, RATIO_TO_MEZO, BENCHMARK_RATIO, TASK_MEDIAN = "own runs", "ratio to mezo", "benchmark ratio", "task median"


@dataclass(frozen=True)
class Price:
    cpu_seconds: float | None  # None: nothing finished on the task to price it by
    basis: str | None


class CostModel:
    def __init__(self, finished: list):
        costs: dict[tuple[str, str], list[float]] = {}
        for r in finished:
            if not r.diverged and r.cpu_seconds > 0 and r.cost_complete:
                costs.setdefault((r.task, r.method), []).append(r.cpu_seconds)
        self.median = {key: statistics.median(values) for key, values in costs.items()}
        by_task: dict[str, list[float]] = {}
        for (task, _), values in costs.items():
            by_task.setdefault(task, []).extend(values)
        self.task_median = {task: statistics.median(values) for task, values in by_task.items()}
        ratios: dict[str, list[float]] = {}
        for (task, method), value in self.median.items():
            if method != "mezo" and (task, "mezo") in self.median:
                ratios.setdefault(method, []).append(value / self.median[task, "mezo"])
        self.ratio = {method: statistics.median(values) for method, values in ratios.items()}

    def price(self, run) -> Price:
        task, method = run.task, run.method.name
        mezo = self.median.get((task, "mezo"))
        if (task, method) in self.median:
            return Price(self.median[task, method], OWN_RUNS)
        if method in self.ratio and mezo is not None:
            return Price(mezo * self.ratio[method], RATIO_TO_MEZO)
        if run.method.train_mode in STEP_COST_VS_MEZO and mezo is not None:
            return Price(mezo * STEP_COST_VS_MEZO[run.method.train_mode], BENCHMARK_RATIO)
        if task in self.task_median:
            return Price(self.task_median[task], TASK_MEDIAN)
        return Price(None, None)
