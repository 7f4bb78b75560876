"""The campaign plan: every run it wants, in phase order, each with its fingerprint and state.

Phase 1: LR grids of the core methods (MeZO, ZO-FT new bank) on every task, first seed.
Phase 2: the other seeds of the core methods at their best-of-grid LR (needs that grid complete).
Phase 3: LR grids of every other method.  Phase 4: their seeds.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .noise_grid import file_sha256, measured_trace_ratio
from .settings import CORE_METHODS, Method, Settings, put_repo_on_path
from .store import CAMPAIGN_FILE, best_lr, is_final, load_run, lr_key, read_json, run_dir

PHASES = {1: "LR grid, core methods", 2: "seeds, core methods", 3: "LR grid, other methods",
          4: "seeds, other methods"}
TRAIN_LOSS_SUBSET = 64


@dataclass
class PlannedRun:
    phase: int
    task: str
    method: Method
    lr: str
    seed: int
    folder: Path
    fingerprint: dict
    state: str = "pending"  # done | stale (finished with other settings: rerun) | pending


@dataclass
class Plan:
    runs: list[PlannedRun] = field(default_factory=list)
    blocked: dict[int, int] = field(default_factory=dict)  # phase -> seed runs waiting for an incomplete grid
    # (task, method) -> the best LR of its complete grid, and those whose best LR is at the grid's edge
    best_lr: dict[tuple[str, str], str] = field(default_factory=dict)
    at_edge: set[tuple[str, str]] = field(default_factory=set)
    # (task, method) -> the best LR of its finished grid runs while only the grid's extension is pending: the
    # report shows it, marked; the seed runs wait for the final choice
    provisional_lr: dict[tuple[str, str], str] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # method -> why

    def pending(self) -> list[PlannedRun]:
        return [r for r in self.runs if r.state != "done"]


def resolve_bank(settings: Settings, method: Method) -> Path | None:
    if method.generated_bank_seed is not None:
        model = Path(settings.model).name if settings.model else "SmolLM2-135M"
        return settings.results_dir / "banks" / f"untrained_seed{method.generated_bank_seed}_{model}.safetensors"
    return method.bank_path()


def bank_in_training(bank: Path) -> bool:
    """A safetensors bank that meta-training is still writing: its metadata says complete=false without a
    stop_reason (a bank stopped by hand, as the shipped SmolLM2 bank, says why). Read from the file's JSON
    header, without torch; an authors' .pth has no such metadata."""
    if bank.suffix != ".safetensors" or not bank.is_file():
        return False
    try:
        with bank.open("rb") as handle:
            size = struct.unpack("<Q", handle.read(8))[0]
            meta = json.loads(handle.read(size)).get("__metadata__") or {}
    except (OSError, ValueError, struct.error, AttributeError):
        return False  # not a bank this can read: fine-tuning says what is wrong with it
    return meta.get("complete") == "false" and not meta.get("stop_reason")


def unavailable_reason(settings: Settings, method: Method) -> str | None:
    """Why a method cannot run here (a train mode or bank that does not exist yet), or None."""
    bank = resolve_bank(settings, method)
    if bank is not None and method.generated_bank_seed is None and not bank.is_file():
        return f"bank not found: {method.bank}"
    if bank is not None and bank_in_training(bank):
        return f"bank still being meta-trained (complete=false, no stop_reason in its metadata): {method.bank}"
    by_task = all(settings.get(f"LRS_{method.name}_{task}") for task in settings.tasks_for(method))
    if method.noise_grid and not by_task and measured_trace_ratio(bank) is None:
        return (f"its LR grid comes from the bank's measured noise, not measured yet for these bytes: run python "
                f"scripts/bank_noise_budget.py {method.bank} --write (or set LRS_{method.name})")
    if method.train_mode == "zo_fine_tuner":
        return None
    put_repo_on_path()
    try:  # the recipe's own validation says whether it knows the train mode
        from zo.recipes.finetune import FineTuneConfig
        FineTuneConfig(task_name="SST2", train_mode=method.train_mode).validate()
    except Exception as err:  # noqa: BLE001 - any refusal means "not runnable here", reported, not crashed on
        return f"train mode {method.train_mode!r}: {str(err).splitlines()[0]}"  # one line in the plan
    return None


def _bank_digest(path: Path | None) -> str | None:
    return file_sha256(path)[:16] if path is not None and path.is_file() else None


def fingerprint(settings: Settings, task: str, method: Method, lr: str, seed: int) -> dict:
    """Everything that defines a run's result; a finished run with another fingerprint is stale."""
    caps = settings.caps[task]
    bank = resolve_bank(settings, method)
    # only when used: the runs made before the setting existed keep their fingerprint
    layout = {"length_groups": caps.length_groups} if caps.length_groups != 1 else {}
    return {**layout, "task": task, "method": method.name, "train_mode": method.train_mode, "lr": lr_key(lr), "seed": seed,
            "model": Path(settings.model).name if settings.model else "SmolLM2-135M",
            "bank": bank.name if bank else None,
            # a generated bank is determined by its seed; a shipped one by its content
            "bank_sha256": None if method.generated_bank_seed is not None else _bank_digest(bank),
            "steps": caps.steps, "eval_steps": caps.eval_steps, "train": caps.train, "dev": caps.dev,
            "test": caps.test, "max_length": caps.max_length, "max_new_tokens": caps.max_new_tokens,
            "batch_size": int(settings.get("BS", "16")), "eps": float(settings.get("EPS", "1e-3")),
            "dtype": settings.get("DTYPE", "float32"), "train_loss_subset": TRAIN_LOSS_SUBSET,
            "method_args": list(method.args), "extra_args": settings.get("EXTRA_ARGS", "")}


def _state(folder: Path, wanted: dict) -> str:
    metrics, campaign = read_json(folder / "metrics.json"), read_json(folder / CAMPAIGN_FILE)
    if not is_final(metrics) or campaign is None:
        return "pending"
    return "done" if campaign.get("fingerprint") == wanted else "stale"


def run_state(run: PlannedRun) -> str:
    """The run's state now, read again from disk (another driver may have published it since the plan)."""
    return _state(run.folder, run.fingerprint)


def build_plan(settings: Settings) -> Plan:
    plan = Plan()

    def add(phase: int, task: str, method: Method, lr: str, seed: int) -> PlannedRun:
        wanted = fingerprint(settings, task, method, lr, seed)
        folder = run_dir(settings.runs_dir, task, method.name, lr, seed)
        run = PlannedRun(phase, task, method, lr_key(lr), seed, folder, wanted, _state(folder, wanted))
        plan.runs.append(run)
        return run

    core = [m for m in settings.methods if m.name in CORE_METHODS]
    others = [m for m in settings.methods if m.name not in CORE_METHODS]
    for grid_phase, group in ((1, core), (3, others)):
        runnable = []
        for method in group:
            reason = unavailable_reason(settings, method)
            if reason:
                plan.unavailable[method.name] = reason
            else:
                runnable.append(method)
        grids = {}
        for task in settings.tasks:  # task-major: each task's comparison completes as early as possible
            for method in runnable:
                if task in settings.tasks_for(method):
                    first_seed = settings.seeds_for(task)[0]
                    grids[task, method.name] = [add(grid_phase, task, method, lr, first_seed)
                                                for lr in settings.grid_for(method, task)]
        for task in settings.tasks:
            for method in runnable:
                grid = grids.get((task, method.name))
                if not grid:
                    continue
                extra_seeds = settings.seeds_for(task)[1:]
                chosen = selected_lr(grid, settings.select_by)
                # a best LR at the grid's edge may not be the best: go one LR further, up to EXTEND_GRID times
                for _ in range(int(settings.get("EXTEND_GRID", "1"))):
                    if chosen is None or not at_grid_edge(chosen, grid):
                        break
                    so_far = chosen
                    grid.append(add(grid_phase, task, method, lr_beyond(chosen, grid), grid[0].seed))
                    chosen = selected_lr(grid, settings.select_by)
                    if chosen is None:
                        plan.provisional_lr[task, method.name] = so_far
                if chosen is not None:
                    plan.best_lr[task, method.name] = chosen
                    if at_grid_edge(chosen, grid):
                        plan.at_edge.add((task, method.name))
                if not extra_seeds:
                    continue
                if chosen is None:
                    plan.blocked[grid_phase + 1] = plan.blocked.get(grid_phase + 1, 0) + len(extra_seeds)
                    continue
                for seed in extra_seeds:
                    add(grid_phase + 1, task, method, chosen, seed)
    plan.runs.sort(key=lambda r: r.phase)  # stable: keeps the task-major order within a phase
    return plan


def at_grid_edge(lr: str, grid: list[PlannedRun]) -> bool:
    """The chosen LR is the largest or the smallest of its grid: the best may lie outside it."""
    values = sorted(float(r.lr) for r in grid)
    return len(values) > 1 and float(lr) in (values[0], values[-1])


def lr_beyond(lr: str, grid: list[PlannedRun]) -> str:
    """The next LR outside the grid, past the edge that `lr` sits on: one step of the 1-3-10 ladder the grids
    use (1e-4 -> 3e-4, 3e-6 -> 1e-6), or of the grid's own outermost ratio for other values."""
    values = sorted(float(r.lr) for r in grid)
    value, up = float(lr), float(lr) == values[-1]
    exponent = math.floor(math.log10(value))
    mantissa = round(value / 10 ** exponent, 6)
    if mantissa == 1.0:  # 1e-4: up 3e-4, down 3e-5
        return lr_key(3 * 10.0 ** (exponent if up else exponent - 1))
    if mantissa == 3.0:  # 3e-5: up 1e-4, down 1e-5
        return lr_key(10.0 ** (exponent + 1 if up else exponent))
    ratio = values[-1] / values[-2] if up else values[1] / values[0]
    return lr_key(value * ratio if up else value / ratio)


def selected_lr(grid: list[PlannedRun], select_by: str) -> str | None:
    """The best LR of a complete, up-to-date grid; None while any grid run is missing or stale."""
    if any(r.state != "done" for r in grid):
        return None
    runs = [load_run(r.folder) for r in grid]
    return best_lr([r for r in runs if r is not None], select_by)
