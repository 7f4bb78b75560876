"""Tables and plots from the finished runs of the current plan (same env / preset as the campaign).

Only runs whose fingerprint matches the plan count; a cell without runs reads "missing", never 0.
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .method_notes import hizoo_note
from .noise_grid import noise_record
from .plan import Plan, PlannedRun, build_plan
from .settings import (DIAGNOSTICS, PRESET_DIR, REFERENCES, TABLE2, TABLE3, ZERO_SHOT, Settings,
                       method_from_word)
from .store import Run, load_run

MISSING = "missing"
REFERENCE_FILE = PRESET_DIR / "paper_reference.json"


@dataclass
class Cell:
    """One (task, method): its grid, the LR chosen on dev and the runs at that LR."""
    task: str
    method: str
    grid_done: int = 0
    grid_size: int = 0
    best_lr: str | None = None
    at_edge: bool = False  # the best LR is the largest or smallest of the grid: extend the grid to be sure
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


def reference_for(settings: Settings) -> dict:
    """The paper's numbers for this model, when the preset names one that the reference file has."""
    if not REFERENCE_FILE.is_file():
        return {}
    table = json.loads(REFERENCE_FILE.read_text())
    model = settings.get("PAPER_MODEL") or (Path(settings.model).name if settings.model else "")
    return table.get("models", {}).get(model, {})


def on_seed(cell: Cell, seed: int) -> Cell:
    """The cell with its run of this seed only (none if it has no such run)."""
    return dataclasses.replace(cell, runs=[r for r in cell.runs if r.seed == seed])


def count_wins(cells: dict[tuple[str, str], Cell], tasks) -> tuple[int, int, int, set[int]]:
    """(tasks compared, where ZO-FT's loss is the lowest, where its metric is the highest, the seed counts of the
    cells compared): ZO-FT (new bank) against the ZO baselines (not its own variants, not the references)."""
    pairs = lowest = highest = 0
    seed_counts: set[int] = set()
    for task in tasks:
        mine = cells.get((task, "zoft_new"))
        rivals = [c for (t, m), c in cells.items() if t == task and m != "zoft_new" and not m.startswith("zoft")
                  and m not in REFERENCES and c.loss is not None and c.metric is not None]
        if mine is None or mine.loss is None or mine.metric is None or not rivals:
            continue
        pairs += 1
        lowest += mine.loss < min(c.loss for c in rivals)
        highest += mine.metric > max(c.metric for c in rivals)
        seed_counts |= {len(c.runs) for c in [mine, *rivals]}
    return pairs, lowest, highest, seed_counts


def wins(cells: dict[tuple[str, str], Cell], settings: Settings) -> list[str]:
    """Counted from the table: ZO-FT (new bank) against the ZO baselines (not its own variants, not first order)."""
    lines = []
    pairs, lowest, highest, seed_counts = count_wins(cells, settings.tasks)
    if pairs:
        lines.append(f"ZO-FT (new bank) has the lowest final training loss in {lowest} of {pairs} tasks and the "
                     f"highest test metric in {highest} of {pairs}, against the ZO baselines with results on the "
                     f"same task.")
    if len(seed_counts) > 1:
        # a one-seed cell holds the very run its LR was chosen on (the lowest dev loss of its grid): next to a mean
        # over seeds it is flattered by that choice; on the first seed alone every method is chosen alike
        first = {(t, m): on_seed(c, settings.seeds_for(t)[0]) for (t, m), c in cells.items()}
        pairs, lowest, highest, _ = count_wins(first, settings.tasks)
        lines.append(f"On the first seed alone (the one each LR was chosen on, so every method is on the same "
                     f"footing; a one-seed cell above is flattered by that choice, a mean over seeds is not): lowest "
                     f"loss in {lowest} of {pairs} tasks, highest test metric in {highest} of {pairs}.")
    vs = [(cells[t, "zoft_new"], cells[t, "mezo"]) for t in settings.tasks
          if (t, "zoft_new") in cells and (t, "mezo") in cells
          and None not in (cells[t, "zoft_new"].loss, cells[t, "mezo"].loss, cells[t, "zoft_new"].metric,
                           cells[t, "mezo"].metric)]
    if vs:
        gain = statistics.mean(a.metric - b.metric for a, b in vs)
        lines.append(f"Against MeZO alone: lower loss in {sum(a.loss < b.loss for a, b in vs)} of {len(vs)} tasks, "
                     f"higher test metric in {sum(a.metric > b.metric for a, b in vs)} of {len(vs)}; mean test "
                     f"metric difference {gain:+.4f} (the paper, over 4 LLMs: +2.5 points of accuracy).")
        ends = [(a.end_loss, b.end_loss) for a, b in vs if None not in (a.end_loss, b.end_loss)]
        if ends:  # the losses above are at the best-dev state, which can be an early step for one method only
            lines.append(f"The same losses after the last step instead of at the best-dev state: lower for ZO-FT in "
                         f"{sum(a < b for a, b in ends)} of {len(ends)} tasks.")
        lines += ["", sampling_noise_line(vs)]
    return lines or ["No task has both ZO-FT (new bank) and a ZO baseline at a selected LR yet."]


def paired_differences(mine: Cell, other: Cell) -> list[float] | None:
    """Per test example, mine's score minus other's, over the seeds of their best LRs (a seed fixes the test
    sample, so the examples line up, which the examples' digests check where both files have them); None when
    the seeds differ, a run lacks test_predictions.jsonl, or the digests show other examples."""
    mine_runs, other_runs = {r.seed: r for r in mine.runs}, {r.seed: r for r in other.runs}
    if set(mine_runs) != set(other_runs):
        return None
    differences = []
    for seed in sorted(mine_runs):
        a, b = mine_runs[seed].test_scores(), other_runs[seed].test_scores()
        if a is None or b is None or len(a) != len(b):
            return None
        digests = mine_runs[seed].test_example_digests(), other_runs[seed].test_example_digests()
        if None not in digests and digests[0] != digests[1]:
            return None
        differences += [x - y for x, y in zip(a, b)]
    return differences if len(differences) > 1 else None


def difference_se(mine: Cell, other: Cell) -> tuple[float | None, str]:
    """The standard error that sampling the test examples puts on mine.metric − other.metric, and how it was
    had: paired over the same examples when both cells saved their per-example scores, else binomial."""
    differences = paired_differences(mine, other)
    if differences is not None:
        return statistics.stdev(differences) / math.sqrt(len(differences)), "paired"
    if mine.sampling_variance is None or other.sampling_variance is None:
        return None, "F1 without per-example scores: no SE"
    return math.sqrt(mine.sampling_variance + other.sampling_variance), "binomial"


def mcnemar_p(differences: list[float] | None) -> float | None:
    """Exact two-sided McNemar test of paired right/wrong outcomes (accuracy): under "no difference" each example
    that only one method gets right is a fair coin. None when a difference is not -1, 0 or 1."""
    if not differences or any(d not in (-1.0, 0.0, 1.0) for d in differences):
        return None
    wins, losses = sum(d > 0 for d in differences), sum(d < 0 for d in differences)
    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


def sampling_noise_line(pairs: list[tuple[Cell, Cell]]) -> str:
    """Each task's ZO-FT − MeZO test difference next to the noise that the draw of test examples alone puts on it,
    so that a difference of a few examples is not read as a win."""
    parts, within, beyond_two, counted = [], 0, 0, 0
    for mine, mezo in pairs:
        difference = mine.metric - mezo.metric
        se, how = difference_se(mine, mezo)
        if se is None:
            parts.append(f"{mine.task} {difference:+.3f} ({how})")
            continue
        counted += 1
        within += abs(difference) <= se * (1 + 1e-9)  # a difference of exactly one SE counts as within it
        beyond_two += abs(difference) > 2 * se * (1 + 1e-9)
        accuracy = all(r.metric_name == "accuracy" for r in mine.runs + mezo.runs)  # right / wrong per example
        exact = mcnemar_p(paired_differences(mine, mezo)) if how == "paired" and accuracy else None
        parts.append(f"{mine.task} {difference:+.3f} ± {se:.3f} ({how}"
                     + (f"; exact McNemar p = {exact:.2g}" if exact is not None else "") + ")")
    return (f"ZO-FT − MeZO test metric per task, ± the standard error that sampling the test examples alone gives "
            f"the difference (paired: over the same examples, from each run's test_predictions.jsonl; binomial, "
            f"for runs without that file: as if the methods saw independent examples, which usually overstates it). "
            f"Neither counts the seed-to-seed spread: {'; '.join(parts)}. "
            f"Within one standard error: {within} of {counted}; more than two from zero: {beyond_two} of {counted}.")


def _ordered(cells, settings):
    task_order = {t: i for i, t in enumerate(settings.tasks)}
    method_order = {m.name: i for i, m in enumerate(settings.methods)}
    return sorted(cells.items(), key=lambda kv: (task_order.get(kv[0][0], 99), method_order.get(kv[0][1], 99)))


def paper_table(cells, settings) -> list[str]:
    """Methods x tasks, as the paper's Table 1: final train loss / test metric at the best LR, mean over seeds.
    Bold: the lowest loss and the highest metric of the task among the zeroth-order methods (first order and zero
    shot are references), where two or more have results; "·": no run at a selected LR yet. A method with no result on any
    task is named below the table instead of taking a row of dots."""
    tasks = [t for t in settings.tasks if any(c.runs for (task, _), c in cells.items() if task == t)]
    if not tasks:
        return ["No (task, method) has a selected LR yet."]

    def has_result(m, t):
        c = cells.get((t, m))
        return c is not None and c.loss is not None and c.metric is not None

    planned = [m.name for m in settings.methods if any((t, m.name) in cells for t in tasks)]
    methods = [m for m in planned if any(has_result(m, t) for t in tasks)]
    waiting = [m for m in planned if m not in methods]
    rows = ["| method | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    best = {}
    for t in tasks:
        zo = [cells[t, m] for (task, m) in cells if task == t and m not in REFERENCES and has_result(m, t)]
        # nothing to win against with fewer than two methods
        best[t] = (min(c.loss for c in zo), max(c.metric for c in zo)) if len(zo) > 1 else (None, None)
    for m in methods:
        parts = []
        for t in tasks:
            if not has_result(m, t):
                parts.append("·")
                continue
            c = cells[t, m]
            zo = m not in REFERENCES
            loss = f"**{c.loss:.3f}**" if zo and c.loss == best[t][0] else f"{c.loss:.3f}"
            metric = f"**{c.metric:.3f}**" if zo and c.metric == best[t][1] else f"{c.metric:.3f}"
            seeds = f" ({len(c.runs)} seeds)" if len(c.runs) > 1 else ""
            parts.append(f"{loss} / {metric}{seeds}")
        rows.append(f"| {m} | " + " | ".join(parts) + " |")
    metric_names = sorted({c.runs[0].metric_name for (t, _), c in cells.items() if t in tasks and c.runs})
    return rows + ["", f"Each cell: final train loss / test {' or '.join(metric_names)}, one seed unless it says "
                       "more. Bold: the task's lowest loss and highest metric among the zeroth-order methods, "
                       "where two or more have results. ·: no run at a selected LR yet."
                       + (f" {ZERO_SHOT}: the model without training (a reference, as first order: never bold)."
                          if ZERO_SHOT in methods else "")
                       + (f" No task has one yet for {', '.join(waiting)}." if waiting else "")]


def not_started_line(cells, settings) -> list[str]:
    """The (task, method) pairs without a finished run, one line instead of a table row each."""
    waiting: dict[str, list[str]] = {}
    for (task, method), c in _ordered(cells, settings):
        if not c.grid_done and not c.runs:
            waiting.setdefault(task, []).append(method)
    if not waiting:
        return []
    return ["No run finished yet (not in the table): "
            + "; ".join(f"{task}: {', '.join(methods)}" for task, methods in waiting.items()) + "."]


def main_table(cells, settings, reference) -> list[str]:
    ref_col = bool(reference)
    head = "| task | method | best LR (dev) | final train loss | test metric | seeds | stopped non-finite |"
    rows = [head + (" paper loss / metric |" if ref_col else ""), "|---" * (7 + ref_col) + "|"]
    for (task, method), c in _ordered(cells, settings):
        if not c.grid_done and not c.runs and not ref_col:
            continue  # named in not_started_line
        if c.best_lr is None:
            lr = f"{MISSING} (grid {c.grid_done}/{c.grid_size})"
        else:
            lr = c.best_lr + (" (grid edge)" if c.at_edge else "")
        metric_name = c.runs[0].metric_name if c.runs else ""
        metric = mean_sd(c.metrics) + (f" ({metric_name})" if c.metrics else "")
        diverged = sum(r.diverged for r in c.runs)
        row = f"| {task} | {method} | {lr} | {mean_sd(c.losses)} | {metric} | {len(c.runs)} | {diverged} |"
        if ref_col:
            ref = reference.get(task, {}).get(method)
            row += f" {ref['loss']:.2f} / {ref['metric']:.2f} |" if ref else " not transcribed |"
        rows.append(row)
    return rows


def grid_table(cells, settings) -> list[str]:
    """Every grid run (first seed): what the best LR was chosen from."""
    rows = ["| task | method | LR | best dev loss (step) | train loss there | train loss at the end | test metric |",
            "|---" * 7 + "|"]
    task_order = {t: i for i, t in enumerate(settings.tasks)}
    for (task, method), c in sorted(cells.items(), key=lambda kv: (task_order.get(kv[0][0], 99), kv[0][1])):
        for r in sorted(c.grid_runs, key=lambda r: -float(r.lr)):
            chosen = " (chosen)" if r.lr == c.best_lr else ""
            status = "" if not r.diverged else f" ({r.metrics.get('status')})"
            rows.append(f"| {task} | {method} | {r.lr}{chosen} | {r.dev_loss:.4f} ({r.metrics.get('best_step')}) | "
                        f"{r.train_loss:.4f} | {r.end_train_loss:.4f}{status} | {r.metric('test'):.4f} |")
    return rows if len(rows) > 2 else ["No grid run has finished yet."]


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def bank_noise(method) -> str:
    """Where the method's bank puts its noise, from <bank>.noise.json (scripts/bank_noise_budget.py --write)."""
    if not method.bank:
        return "no bank"
    record = noise_record(method.bank_path())
    if record is None:
        return MISSING
    scale = {True: "with c", False: "no c"}.get(record.get("need_normalization"), "c unknown")
    ratio, share = record.get("noise_trace_vs_mezo"), record.get("embedding_share")
    parts = [f"{scale}: trace {ratio:.3g}× MeZO's" if _finite(ratio) else scale]
    if _finite(share):
        parts.append(f"{share:.1%} on the embedding / head")
    return ", ".join(parts)


def ablation_table(cells, settings, methods: tuple[str, ...], first: str = "bank",
                   shown_with: tuple[str, ...] = ()) -> list[str]:
    """One row per method, one column per task where `methods` have runs; `shown_with` adds rows for reference.
    A table of banks (first == "bank") ends with each bank's noise split, as measured beside the bank."""
    tasks = [t for t in settings.tasks if any((t, m) in cells and cells[t, m].runs for m in methods)]
    if not tasks:
        return [f"No runs yet for {', '.join(methods)}."]
    methods = tuple(dict.fromkeys(shown_with + methods))
    by_name = {m.name: m for m in settings.methods}
    with_noise = first == "bank"
    rows = [f"| {first} | " + " | ".join(f"{t}: loss / metric (best LR)" for t in tasks)
            + (" | bank noise at the start of a run |" if with_noise else " |"),
            "|---" * (len(tasks) + 1 + with_noise) + "|"]
    for m in methods:
        parts = []
        for t in tasks:
            c = cells.get((t, m))
            if c is None or c.loss is None:
                parts.append(MISSING)
                continue
            metric = f"{c.metric:.4f}" if c.metric is not None else MISSING
            parts.append(f"{c.loss:.4f} / {metric} ({c.best_lr}{', grid edge' if c.at_edge else ''})")
        if with_noise:  # a table's row may name a method outside METHODS: its bank is the built-in one
            parts.append(bank_noise(by_name.get(m) or method_from_word(settings, m)))
        rows.append(f"| {m} | " + " | ".join(parts) + " |")
    return rows


def cpu_lines(cells) -> list[str]:
    runs = {r.folder: r for c in cells.values() for r in c.grid_runs + c.runs}.values()
    by_phase: dict[int, float] = {}
    for r in runs:
        by_phase[r.campaign.get("phase", 0)] = by_phase.get(r.campaign.get("phase", 0), 0.0) + r.cpu_seconds
    total = sum(by_phase.values())
    detail = ", ".join(f"phase {p}: {s / 3600:.2f}" for p, s in sorted(by_phase.items()))
    partial = sum(not r.cost_complete for r in runs)
    note = (f" At least: {partial} of them were resumed from checkpoints that carried no time (older versions), and "
            "count their last attempt only." if partial else "")
    return [f"CPU-hours spent on the {len(runs)} finished runs: {total / 3600:.2f} ({detail or 'none'}).{note}"]


def plots(cells, settings, out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task in settings.tasks:
        task_cells = [c for (t, _), c in cells.items() if t == task]
        curves = [c for c in task_cells if c.runs and any(r.curve() for r in c.runs)]
        if curves:
            fig, ax = plt.subplots(figsize=(6, 4))
            for c in curves:
                by_step: dict[int, list[float]] = {}
                for r in c.runs:
                    for step, loss in r.curve():
                        by_step.setdefault(step, []).append(loss)
                steps = sorted(by_step)
                ax.plot(steps, [statistics.mean(by_step[s]) for s in steps], marker="o",
                        label=f"{c.method} ({'no training' if c.method == ZERO_SHOT else f'lr {c.best_lr}'}, "
                              f"{len(c.runs)} seed{'s' * (len(c.runs) != 1)})")
            ax.set(xlabel="step", ylabel="train loss, unperturbed (fixed subset)", title=f"{task}: loss at best LR")
            ax.legend(fontsize=7)
            written.append(_save(fig, out_dir / f"loss_{task}.png"))
        grids = [c for c in task_cells if c.grid_runs]
        if grids:
            written.append(lr_robustness_plot(grids, task, out_dir / f"lr_robustness_{task}.png"))
    return written


def lr_robustness_plot(grids: list[Cell], task: str, path: Path) -> Path:
    """The paper's Figure 3: train loss after the last step against the LR, per method. Left, every run on a log
    scale (blow-ups included); right, the same near the best zeroth-order loss, where the methods differ at usable
    LRs (a run outside the range, such as the first-order reference below it, is drawn on its edge as a triangle)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (full, near) = plt.subplots(1, 2, figsize=(10, 4))
    # the end of training, as the paper's Figure 3: the best-dev state can be an early one
    series = [(c.method, sorted((float(r.lr), r.end_train_loss, r.diverged) for r in c.grid_runs)) for c in grids
              if c.method != ZERO_SHOT]
    low, top = near_best_range(series)
    # the untrained model has no LR: a level line, what training has to beat
    untrained = [r.end_train_loss for c in grids if c.method == ZERO_SHOT for r in c.grid_runs
                 if math.isfinite(r.end_train_loss)]
    if untrained and untrained[0] < 3 * low:  # the zoom reaches up to it, unless that would undo the zoom
        top = max(top, untrained[0] * 1.05)
    for panel in (full, near) if untrained else ():
        panel.axhline(untrained[0], color="black", linestyle="--", linewidth=1, label="zero_shot (no training)")
    for method, points in series:
        lrs, losses = [p[0] for p in points], [p[1] for p in points]
        line, = full.plot(lrs, losses, marker="o", label=method)
        bad = [p for p in points if p[2]]
        full.scatter([p[0] for p in bad], [p[1] for p in bad], marker="x", s=80, color=line.get_color())
        clipped = [min(max(loss, low), top) if math.isfinite(loss) else top for loss in losses]
        near.plot(lrs, clipped, marker="o", color=line.get_color(), label=method)
        over = [(lr, top) for lr, loss in zip(lrs, losses) if not (math.isfinite(loss) and loss <= top)]
        near.scatter([p[0] for p in over], [p[1] for p in over], marker="^", s=80, color=line.get_color())
        under = [(lr, low) for lr, loss in zip(lrs, losses) if math.isfinite(loss) and loss < low]
        near.scatter([p[0] for p in under], [p[1] for p in under], marker="v", s=80, color=line.get_color())
    full.set(xscale="log", yscale="log", xlabel="learning rate", ylabel="train loss after the last step (x: diverged)",
             title=f"{task}: LR robustness (grid seed)")
    near.set(xscale="log", ylim=(low * 0.98, top * 1.02), xlabel="learning rate",
             title="near the best zeroth-order loss (triangles: outside)")
    full.legend(fontsize=7)
    return _save(fig, path)


def near_best_range(series: list[tuple[str, list[tuple[float, float, bool]]]]) -> tuple[float, float]:
    """The loss range of the zoomed panel: from the lowest zeroth-order loss to 1.5x it. A first-order reference
    far below would otherwise squeeze every zeroth-order method onto the top edge."""
    def finite(methods):
        return [loss for m, points in methods for _, loss, _ in points if math.isfinite(loss)]
    losses = finite([s for s in series if s[0] not in REFERENCES]) or finite(series)
    low = min(losses) if losses else 1.0
    return low, low * 1.5


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def with_ablation_runs(settings: Settings) -> Settings:
    """The settings plus the Table 2 / 3 banks and the diagnostics that have runs in the results folder although
    METHODS does not name them: they run as campaigns of their own (scripts/campaign_queue.sh), and their tables
    belong in the one report."""
    named = {m.name for m in settings.methods}
    extra = tuple(method_from_word(settings, name) for name in dict.fromkeys(TABLE2 + TABLE3 + DIAGNOSTICS)
                  if name not in named and any((settings.runs_dir / task / name).is_dir() for task in settings.tasks))
    return dataclasses.replace(settings, methods=settings.methods + extra)


BLOCK_BEGIN = "<!-- campaign-table:begin"
BLOCK_END = "<!-- campaign-table:end -->"


class BlockMarkersError(ValueError):
    """A file given to --readme without exactly one begin line and, after it, one end line."""


def splice_block(text: str, block: list[str], where: str) -> str:
    """`text` with the lines between its campaign-table marker lines replaced by `block` (the marker lines stay):
    one line that starts with BLOCK_BEGIN, then one line that is BLOCK_END, each on a line of its own."""
    lines = text.splitlines(keepends=True)
    begins = [i for i, line in enumerate(lines) if line.lstrip().startswith(BLOCK_BEGIN)]
    ends = [i for i, line in enumerate(lines) if line.strip() == BLOCK_END]
    if len(begins) != 1 or len(ends) != 1 or ends[0] <= begins[0] or text.count(BLOCK_END) != 1:
        raise BlockMarkersError(f"{where} needs one line starting '{BLOCK_BEGIN}' and, below it, one line "
                                f"'{BLOCK_END}', where the generated table goes")
    return "".join(lines[:begins[0] + 1]) + "\n".join(block) + "\n" + "".join(lines[ends[0]:])


def write_report(settings: Settings, readme: Path | None = None) -> Path:
    """<RESULTS_DIR>/README.md and plots/; with `readme`, also the paper-style table and the win counts into the
    marked block of that file (the project README), so that its numbers are the report's."""
    main_methods = {m.name for m in settings.methods}  # the main table and plots; the ablations have their tables
    settings = with_ablation_runs(settings)
    plan = build_plan(settings)
    cells = collect(settings, plan)
    main_cells = {key: c for key, c in cells.items() if key[1] in main_methods}
    reference = reference_for(settings)
    table, counts = paper_table(main_cells, settings), wins(main_cells, settings)
    if readme is not None:  # checked before anything is written: a README without the markers changes nothing
        readme_text = splice_block(readme.read_text(), table + [""] + counts, str(readme))
    out = settings.results_dir / "README.md"
    pngs = plots(main_cells, settings, settings.results_dir / "plots")
    model = settings.model or "embedded SmolLM2-135M"
    lines = ["# Campaign results", "",
             "Generated by `python scripts/make_report.py` from `runs/`; do not edit. Protocol: docs/campaign.md.", "",
             f"Model: {model}. Tasks: {' '.join(settings.tasks)}. LR chosen per (task, method) on the dev split "
             f"({settings.select_by.replace('_', ' ')}) with seed {settings.seeds[0]}; then the other seeds at that "
             "LR. Final train loss: cross-entropy on a fixed 64-example train subset at the unperturbed weights of "
             "the state evaluated on test (best dev loss). Mean ± sd over seeds.", ""]
    if plan.unavailable:
        lines += ["Not run (unavailable here): " + "; ".join(f"{m} ({why})" for m, why in plan.unavailable.items()),
                  ""]
    lines += ["## Paper-style table", ""] + table + [""]
    lines += ["## Main table", ""] + main_table(main_cells, settings, reference) + [""]
    if not reference:  # with a paper column, every row stays: the paper's number is worth seeing
        lines += not_started_line(main_cells, settings) + [""]
    edges = sorted(f"{t} {m}" for (t, m), c in main_cells.items() if c.at_edge)
    if edges:
        lines += ["\"grid edge\": the best LR is the largest or smallest of its grid, so a better one may lie "
                  "outside it; extend the grid (`LRS_<method>_<task>`): " + ", ".join(edges) + ".", ""]
    if reference:
        lines += [f"Paper column: {reference.get('_source', 'see scripts/presets/paper_reference.json')}.", ""]
    lines += counts + [""]
    notes = hizoo_note(main_cells)
    lines += notes + [""] if notes else []
    lines += ["## Table 2: reset and normalization in meta-training", ""] + ablation_table(cells, settings, TABLE2)
    lines += ["", "## Table 3: layer-wise against block-wise banks", ""] + ablation_table(cells, settings, TABLE3)
    lines += ["", "## Diagnostics: the tied embedding's share of ZO-FT's noise", "",
              "zoft_no_embed: ZO-FT (new bank) with the embedding / head frozen, c normalizing the other blocks to "
              "MeZO's noise budget; mezo_embed_only: MeZO on the embedding / head alone (docs/campaign.md).", ""]
    lines += ablation_table(cells, settings, DIAGNOSTICS, first="method", shown_with=("mezo", "zoft_new"))
    lines += ["", "## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in pngs] + [""]
    lines += ["## Every grid run", ""] + grid_table(cells, settings) + [""]
    lines += cpu_lines(cells) + [""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    if readme is not None:
        readme.write_text(readme_text)
    return out
