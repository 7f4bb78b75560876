"""What the runs say about a baseline beyond its table cell: read from their logs, printed under the tables."""
from __future__ import annotations

import math

from .store import Run

# HiZOO's curvature D starts at 1; if its mean has moved less than this, the preconditioner has not acted yet
UNMOVED_CURVATURE = 0.01
# dev losses closer than this are the same run for the LR choice (the grids' dev losses differ by 0.01 or more)
SAME_DEV_LOSS = 0.005


def _runs_of(cells, method: str) -> list[Run]:
    runs = {r.folder: r for (_, m), c in cells.items() if m == method for r in c.grid_runs + c.runs}
    return list(runs.values())


def _largest_gap(pairs, value) -> float | None:
    gaps = [abs(value(a) - value(b)) for a, b in pairs if math.isfinite(value(a)) and math.isfinite(value(b))]
    return max(gaps) if gaps else None


def _agreement(pairs) -> tuple[int, int, int]:
    """Test examples on which both runs of a pair predicted the same, examples compared, and pairs compared
    (runs finished before runs saved their predictions are left out)."""
    same = total = compared = 0
    for a, b in pairs:
        mine, other = a.test_predictions(), b.test_predictions()
        if mine is None or other is None or len(mine) != len(other):
            continue
        same += sum(x == y for x, y in zip(mine, other))
        total += len(mine)
        compared += 1
    return same, total, compared


def _final_curvatures(runs: list[Run]) -> list[tuple[Run, float]]:
    """(run, the mean of HiZOO's curvature D after its last step), for the runs that logged it."""
    return [(r, step["curvature_mean"]) for r, step in ((r, r.last_step()) for r in runs)
            if step and isinstance(step.get("curvature_mean"), (int, float))]


def _alphas(runs) -> str:
    alphas = sorted({r.config.get("hizoo_alpha") for r in runs} - {None})
    return ", ".join(format(a, "g") for a in alphas) or "unknown"


def hizoo_note(cells) -> list[str]:
    """How far HiZOO's curvature moved, and how far its runs are from MeZO's at the same task, LR and seed
    (which draw the same z: with D = 1 a HiZOO step is a MeZO step)."""
    hizoo = _runs_of(cells, "hizoo")
    drifts = [abs(d - 1) for _, d in _final_curvatures(hizoo)]
    if not drifts:
        return []
    mezo = {(r.task, r.lr, r.seed): r for r in _runs_of(cells, "mezo")}
    pairs = [(r, mezo[r.task, r.lr, r.seed]) for r in hizoo if (r.task, r.lr, r.seed) in mezo]
    text = (f"HiZOO (α = {_alphas(hizoo)}): after its last step, the mean "
            f"of its curvature D (1 at the start) is within {max(drifts):.2%} of 1 in all {len(drifts)} runs.")
    dev, test = _largest_gap(pairs, lambda r: r.dev_loss), _largest_gap(pairs, lambda r: r.metric("test"))
    if pairs and dev is not None:
        same, total, compared = _agreement(pairs)
        agreement = (f"; the {compared} pairs with saved predictions predict the same on {same} of {total} test "
                     "examples" if total else "")
        text += (f" Against MeZO at the same task, LR and seed ({len(pairs)} pairs): best dev loss differs by at "
                 f"most {dev:.4f}, test metric by at most {test:.4f}{agreement}.")
        if max(drifts) < UNMOVED_CURVATURE and dev < SAME_DEV_LOSS:
            text += (" At this budget HiZOO is MeZO with one more forward a step: its cells measure MeZO again, not "
                     "its preconditioner (the authors ran 20k steps; docs/campaign.md).")
    return [text]


def curvature_line(cells, method: str) -> list[str]:
    """How far a HiZOO variant's curvature D moved: the mean of D after the last step, per run, by LR."""
    runs = sorted(_runs_of(cells, method), key=lambda r: (r.task, float(r.lr), r.seed))
    moved = _final_curvatures(runs)
    if not moved:
        return []
    each = ", ".join(f"{r.task} lr {r.lr} seed {r.seed}: {d:.4g}" for r, d in moved)
    return [f"{method} (α = {_alphas(r for r, _ in moved)}): the mean of its curvature D (1 at the start) after "
            f"the last step: {each}."]
