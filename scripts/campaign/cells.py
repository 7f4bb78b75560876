"""The report's unit: one (task, method) cell of the plan, its LR grid, the LR chosen on dev and the runs there.

Only runs whose fingerprint matches the plan count; a cell without runs reads "missing", never 0.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass, field

from .plan import Plan, PlannedRun, build_plan
from .settings import Settings
from .store import Run, load_run

MISSING = "missing"


@dataclass
class Cell:
    """One (task, method): its grid, the LR chosen on dev and the runs at that LR."""
    task: str
    method: str
    grid_done: int = 0
    grid_size: int = 0
    best_lr: str | None = None
    at_edge: bool = False  # the best LR is the largest or smallest of the grid: extend the grid to be sure
    provisional: bool = False  # best_lr is the best so far: the grid's extension past its edge is pending
    runs: list[Run] = field(default_factory=list)
    grid_runs: list[Run] = field(default_factory=list)

    @property
    def losses(self) -> list[float]:
        return [r.train_loss for r in self.runs if math.isfinite(r.train_loss)]

    @property
    def metrics(self) -> list[float]:
        return [r.metric("test") for r in self.runs if math.isfinite(r.metric("test"))]

    @property
    def loss(self) -> float | None:
        return statistics.mean(self.losses) if self.losses else None

    @property
    def metric(self) -> float | None:
        return statistics.mean(self.metrics) if self.metrics else None

    @property
    def end_loss(self) -> float | None:
        """Mean unperturbed train-subset loss after the last step (not at the best-dev state)."""
        ends = [r.end_train_loss for r in self.runs if math.isfinite(r.end_train_loss)]
        return statistics.mean(ends) if ends else None

    @property
    def sampling_variance(self) -> float | None:
        """Variance of the mean test accuracy from the draw of test examples alone (binomial, over every seed's
        examples); None for F1, which is not a proportion, or when the test size is unknown."""
        examples = sum(r.test_examples for r in self.runs if math.isfinite(r.metric("test")))
        if self.metric is None or not examples or any(r.metric_name != "accuracy" for r in self.runs):
            return None
        return self.metric * (1 - self.metric) / examples


def collect(settings: Settings, plan: Plan | None = None) -> dict[tuple[str, str], Cell]:
    plan = plan or build_plan(settings)
    groups: dict[tuple[str, str], list[PlannedRun]] = {}
    for r in plan.runs:
        groups.setdefault((r.task, r.method.name), []).append(r)
    cells = {}
    for (task, method), planned in groups.items():
        grid = [r for r in planned if r.phase in (1, 3)]
        cell = Cell(task, method, grid_done=sum(r.state == "done" for r in grid), grid_size=len(grid))
        cell.grid_runs = [run for r in grid if r.state == "done" and (run := load_run(r.folder))]
        cell.best_lr, cell.at_edge = plan.best_lr.get((task, method)), (task, method) in plan.at_edge
        if cell.best_lr is None and (task, method) in plan.provisional_lr:
            cell.best_lr, cell.provisional = plan.provisional_lr[task, method], True
        if cell.best_lr is not None:
            cell.runs = [run for r in planned if r.lr == cell.best_lr and r.state == "done"
                         and (run := load_run(r.folder))]
        cells[task, method] = cell
    return cells


def mean_sd(values: list[float]) -> str:
    if not values:
        return MISSING
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def on_seed(cell: Cell, seed: int) -> Cell:
    """The cell with its run of this seed only (none if it has no such run)."""
    return dataclasses.replace(cell, runs=[r for r in cell.runs if r.seed == seed])
