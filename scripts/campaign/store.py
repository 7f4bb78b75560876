"""The run store: results/runs/<task>/<method>/<lr>/<seed>/ with config.json, metrics.json, train_log.jsonl
and campaign.json (fingerprint, CPU seconds). A folder appears there only once its run has finished."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .settings import put_repo_on_path

put_repo_on_path()
from zo.run.status import is_finished, is_stopped  # noqa: E402  (torch-free: the driver never imports torch)

SMALL_FILES = ("config.json", "metrics.json", "train_log.jsonl", "test_predictions.jsonl")
CAMPAIGN_FILE = "campaign.json"


def lr_key(lr: str | float) -> str:
    """One spelling per LR value ('1e-6', '0.000001' -> '1e-06') for folder names and grouping."""
    return format(float(lr), "g")


def run_dir(runs_dir: Path, task: str, method: str, lr: str | float, seed: int) -> Path:
    return Path(runs_dir) / task / method / lr_key(lr) / str(seed)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def is_final(metrics: dict | None) -> bool:
    """Completed, stopped on a non-finite loss (a diverged LR is a result, and rerunning repeats it), or evaluated
    without training (zero_shot)."""
    return is_finished((metrics or {}).get("status"))


@dataclass
class Run:
    task: str
    method: str
    lr: str
    seed: int
    folder: Path
    metrics: dict
    campaign: dict

    @property
    def diverged(self) -> bool:
        return is_stopped(self.metrics.get("status"))

    def _number(self, key: str) -> float:
        """metrics[key] as a float; NaN when it is missing or not a number (a diverged run's null)."""
        value = self.metrics.get(key)
        return float(value) if isinstance(value, (int, float)) else math.nan

    @property
    def dev_loss(self) -> float:
        return self._number("best_dev_loss")

    def metric(self, split: str) -> float:
        values = self.metrics.get(split) or {}
        for name in ("accuracy", "f1"):
            if isinstance(values.get(name), (int, float)):
                return float(values[name])
        return math.nan

    @property
    def test_examples(self) -> int:
        """How many test examples the test metric averages over (0 when metrics.json does not say)."""
        value = (self.metrics.get("test") or {}).get("num_examples")
        return int(value) if isinstance(value, (int, float)) else 0

    @property
    def metric_name(self) -> str:
        test = self.metrics.get("test") or {}
        return "f1" if "f1" in test else "accuracy"

    @property
    def train_loss(self) -> float:
        return self._number("final_train_loss")

    @property
    def end_train_loss(self) -> float:
        """The unperturbed train-subset loss after the last step taken (not the best-dev state's)."""
        return self._number("last_step_train_loss")

    @property
    def cpu_seconds(self) -> float:
        return float(self.campaign.get("cpu_seconds") or 0.0)

    @property
    def wall_seconds(self) -> float:
        return float(self.campaign.get("wall_seconds") or 0.0)

    @property
    def threads(self) -> int | None:
        """The --threads its command gave it (None: its own default, all the cores). CPU seconds depend on it: a
        run on 2 threads here spends about twice the CPU time of the same run on 1."""
        command = self.campaign.get("command") or []
        if "--threads" in command[:-1]:
            value = command[command.index("--threads") + 1]
            return int(value) if str(value).isdigit() else None
        return None

    @property
    def cost_complete(self) -> bool:
        """False for a run resumed before runs carried their training time across attempts: its CPU seconds are
        its last attempt's only (campaign.json: resumed_from_step without the carried time)."""
        return not (self.campaign.get("resumed_from_step") is not None and "last_attempt_cpu_seconds" not in
                    self.campaign)

    @cached_property
    def _test_rows(self) -> list[dict] | None:
        """test_predictions.jsonl, read once: the report asks for a run's scores, predictions and digests."""
        rows = _jsonl_rows(self.folder / "test_predictions.jsonl")
        return rows if rows and len(rows) == self.test_examples else None

    def test_scores(self) -> list[float] | None:
        """Each test example's score (1/0, or F1) in the run's test order; None for a run finished before runs
        wrote test_predictions.jsonl, or a file that does not cover the whole test split."""
        rows = self._test_rows
        return [float(row["score"]) for row in rows] if rows else None

    def test_predictions(self) -> list[str] | None:
        """Each test example's prediction (the chosen option or the generated answer) in test order."""
        rows = self._test_rows
        return [str(row["prediction"]) for row in rows] if rows and all("prediction" in row for row in rows) else None

    def test_example_digests(self) -> list[str] | None:
        """Each test example's digest (zo.recipes.finetune.example_digest) in test order; None for files written
        before the digests were."""
        rows = self._test_rows
        return [row["example"] for row in rows] if rows and all("example" in row for row in rows) else None

    @property
    def config(self) -> dict:
        return read_json(self.folder / "config.json") or {}

    @cached_property
    def _log_rows(self) -> list[dict]:
        return _jsonl_rows(self.folder / "train_log.jsonl") or []

    def last_step(self) -> dict | None:
        """The train_log.jsonl record of the last training step taken (method extras included), or None."""
        steps = [row for row in self._log_rows if row.get("kind") == "step"]
        return steps[-1] if steps else None

    def curve(self) -> list[tuple[int, float]]:
        """(step, unperturbed train-subset loss) from the dev lines of train_log.jsonl."""
        return [(int(row["step"]), float(row["train_eval_loss"])) for row in self._log_rows
                if isinstance(row.get("train_eval_loss"), (int, float))]


def _jsonl_rows(path: Path) -> list[dict] | None:
    """The records of a JSON-lines file, or None when it does not exist."""
    if not path.exists():
        return None
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_run(folder: Path) -> Run | None:
    """The finished run in `folder`, or None (missing, unfinished, or not written by the campaign)."""
    metrics, campaign = read_json(folder / "metrics.json"), read_json(folder / CAMPAIGN_FILE)
    if not is_final(metrics) or campaign is None:
        return None
    seed, lr, method, task = folder.parts[-1], folder.parts[-2], folder.parts[-3], folder.parts[-4]
    return Run(task=task, method=method, lr=lr, seed=int(seed), folder=folder, metrics=metrics, campaign=campaign)


def all_runs(runs_dir: Path) -> list[Run]:
    found = (load_run(p.parent) for p in sorted(Path(runs_dir).glob("*/*/*/*/metrics.json")))
    return [r for r in found if r is not None]


def best_lr(grid_runs: list[Run], select_by: str = "dev_loss") -> str | None:
    """The LR chosen on the dev split (never test): lowest best dev loss, or highest dev metric.

    Ties go to the next criterion (dev loss <-> dev metric), then to the smaller LR. Runs without a finite
    dev score are never chosen."""
    def key(run: Run):
        loss, metric = run.dev_loss, run.metric("dev")
        primary = (-metric, loss) if select_by == "dev_metric" else (loss, -metric)
        return tuple(math.inf if math.isnan(x) else x for x in primary) + (float(run.lr),)

    eligible = [r for r in grid_runs if math.isfinite(r.dev_loss if select_by == "dev_loss" else r.metric("dev"))]
    return lr_key(min(eligible, key=key).lr) if eligible else None
