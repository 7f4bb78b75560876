"""How much of a test-metric difference the draw of test examples alone explains: standard errors (paired over
the same examples where both runs saved per-example scores, binomial otherwise) and an exact McNemar test."""
from __future__ import annotations

import math
import statistics

from .cells import Cell


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
