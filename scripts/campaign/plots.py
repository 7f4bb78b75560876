"""The report's plots: train loss against the step at each method's best LR, and train loss against the LR (the
paper's Figure 3), per task, as PNG files (matplotlib, headless)."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from .cells import Cell
from .settings import REFERENCES, ZERO_SHOT


def plots(cells, settings, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for task in settings.tasks:
        task_cells = [c for (t, _), c in cells.items() if t == task]
        curves = [c for c in task_cells if c.runs and any(r.curve() for r in c.runs)]
        if curves:
            written.append(loss_curves_plot(curves, task, out_dir / f"loss_{task}.png"))
        grids = [c for c in task_cells if c.grid_runs]
        if grids:
            written.append(lr_robustness_plot(grids, task, out_dir / f"lr_robustness_{task}.png"))
    return written


def loss_curves_plot(curves: list[Cell], task: str, path: Path) -> Path:
    """Train loss against the step at each method's best LR, mean over its seeds. The y range ends a little above
    the highest loss any method has at its chosen state (or the untrained model's): a run chosen at an early step
    that blows up later would otherwise flatten every other curve; its points above are drawn on the top edge as
    triangles."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    top = curves_top(curves)
    for c in curves:
        by_step: dict[int, list[float]] = {}
        for r in c.runs:
            for step, loss in r.curve():
                by_step.setdefault(step, []).append(loss)
        steps = sorted(by_step)
        losses = [statistics.mean(by_step[s]) for s in steps]
        what = "no training" if c.method == ZERO_SHOT else f"lr {c.best_lr}{' †' if c.provisional else ''}"
        line, = ax.plot(steps, [min(loss, top) for loss in losses], marker="o",
                        label=f"{c.method} ({what}, {len(c.runs)} seed{'s' * (len(c.runs) != 1)})")
        over = [s for s, loss in zip(steps, losses) if loss > top]
        ax.scatter(over, [top] * len(over), marker="^", s=80, color=line.get_color())
    ax.set(xlabel="step", ylabel="train loss, unperturbed (fixed subset)", ylim=(0, top * 1.02),
           title=f"{task}: loss at best LR" + (" (triangles: above the range)" if top < _highest(curves) else ""))
    ax.legend(fontsize=7)
    return _save(fig, path)


def curves_top(curves: list[Cell]) -> float:
    """The top of the loss-curve plot: 1.25x the highest loss of a cell at its chosen state (the table's loss), the
    untrained model's included; every point when no cell has one."""
    chosen = [c.loss for c in curves if c.loss is not None and math.isfinite(c.loss)]
    return 1.25 * max(chosen) if chosen else _highest(curves)


def _highest(curves: list[Cell]) -> float:
    points = [loss for c in curves for r in c.runs for _, loss in r.curve() if math.isfinite(loss)]
    return max(points) if points else 1.0


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
