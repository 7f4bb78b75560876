"""scripts/campaign/significance.py on hand-made runs: the test-sampling noise printed next to ZO-FT − MeZO."""
from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from campaign.cells import Cell  # noqa: E402
from campaign.significance import mcnemar_p, paired_differences, sampling_noise_line  # noqa: E402
from campaign.store import Run  # noqa: E402


def _cell(task: str, method: str, tests: list[dict], folder: Path, scores: list[list[float]] | None = None,
          digests: list[list[str]] | None = None) -> Cell:
    """One run per entry of `tests` (seeds 0, 1, ...); `scores`: each run's per-example scores file, with the
    examples' `digests` if given."""
    runs = []
    for seed, test in enumerate(tests):
        run_folder = folder / task / method / str(seed)
        run_folder.mkdir(parents=True)
        if scores is not None:
            rows = [{"index": i, "score": x, **({"example": digests[seed][i]} if digests else {})}
                    for i, x in enumerate(scores[seed])]
            (run_folder / "test_predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        runs.append(Run(task, method, "1e-4", seed, run_folder, {"status": "completed", "test": test}, {}))
    return Cell(task, method, best_lr="1e-4", runs=runs)


def test_the_binomial_error_pools_every_seeds_examples(tmp_path):
    cell = _cell("SST2", "mezo", [{"accuracy": 0.6, "num_examples": 200}, {"accuracy": 0.7, "num_examples": 200}],
                 tmp_path)
    assert math.isclose(cell.sampling_variance, 0.65 * 0.35 / 400)
    assert _cell("SQuAD", "mezo", [{"f1": 0.4, "num_examples": 100}], tmp_path).sampling_variance is None
    assert _cell("CB", "mezo", [{"accuracy": 0.6}], tmp_path).sampling_variance is None  # test size unknown


def test_without_per_example_scores_differences_are_judged_against_the_binomial_error(tmp_path):
    small = (_cell("SST2", "zoft_new", [{"accuracy": 0.67, "num_examples": 200}], tmp_path),
             _cell("SST2", "mezo", [{"accuracy": 0.655, "num_examples": 200}], tmp_path))
    large = (_cell("CB", "zoft_new", [{"accuracy": 0.9, "num_examples": 1000}], tmp_path),
             _cell("CB", "mezo", [{"accuracy": 0.5, "num_examples": 1000}], tmp_path))
    f1 = (_cell("DROP", "zoft_new", [{"f1": 0.3, "num_examples": 100}], tmp_path),
          _cell("DROP", "mezo", [{"f1": 0.2, "num_examples": 100}], tmp_path))
    line = sampling_noise_line([small, large, f1])
    se_small = math.sqrt(0.67 * 0.33 / 200 + 0.655 * 0.345 / 200)
    assert f"SST2 +0.015 ± {se_small:.3f} (binomial)" in line
    assert "CB +0.400 ± 0.018 (binomial)" in line
    assert "DROP +0.100 (F1 without per-example scores: no SE)" in line
    assert "Within one standard error: 1 of 2; more than two from zero: 1 of 2." in line


def test_paired_accuracy_gets_an_exact_mcnemar_p_and_one_se_exactly_counts_as_within(tmp_path):
    # Copa's case: 100 examples, one right only for ZO-FT, three only for MeZO: -0.020 +- 0.020 (paired)
    mine = [1] * 60 + [1] + [0] * 3 + [0] * 36
    mezo = [1] * 60 + [0] + [1] * 3 + [0] * 36
    cells = (_cell("Copa", "zoft_new", [{"accuracy": 0.61, "num_examples": 100}], tmp_path, [mine]),
             _cell("Copa", "mezo", [{"accuracy": 0.63, "num_examples": 100}], tmp_path, [mezo]))
    line = sampling_noise_line([cells])
    assert "Copa -0.020 ± 0.020 (paired; exact McNemar p = 0.62)" in line  # 2 * (1 + 4) / 16 = 0.625
    assert "Within one standard error: 1 of 1; more than two from zero: 0 of 1." in line
    assert mcnemar_p([1.0] * 10) == 2 / 2 ** 10 and mcnemar_p([0.0, 0.0]) == 1.0
    assert mcnemar_p([0.5, -1.0]) is None  # F1 scores: not right / wrong


def test_runs_that_scored_other_examples_are_not_paired(tmp_path):
    test = [{"accuracy": 0.5, "num_examples": 2}]
    mine = _cell("SST2", "zoft_new", test, tmp_path, [[1, 0]], [["a1", "b2"]])
    same = _cell("SST2", "mezo", test, tmp_path, [[0, 0]], [["a1", "b2"]])
    other = _cell("SST2", "lozo", test, tmp_path, [[0, 0]], [["a1", "c3"]])  # another data copy, say
    unknown = _cell("SST2", "hizoo", test, tmp_path, [[0, 0]])  # a file from before the digests: by position
    assert paired_differences(mine, same) == [1, 0] and paired_differences(mine, unknown) == [1, 0]
    assert paired_differences(mine, other) is None


def test_per_example_scores_give_the_paired_error_over_every_seed(tmp_path):
    # the same 4 examples per seed; the methods disagree on one example of seed 0 and on none of seed 1
    mine_scores, mezo_scores = [[1, 1, 0, 1], [0.5, 1, 0, 0]], [[1, 0, 0, 1], [0.5, 1, 0, 0]]
    mine = _cell("SQuAD", "zoft_new", [{"f1": 0.75, "num_examples": 4}, {"f1": 0.375, "num_examples": 4}],
                 tmp_path, mine_scores)
    mezo = _cell("SQuAD", "mezo", [{"f1": 0.5, "num_examples": 4}, {"f1": 0.375, "num_examples": 4}],
                 tmp_path, mezo_scores)
    differences = [0, 1, 0, 0, 0, 0, 0, 0]
    assert paired_differences(mine, mezo) == differences
    se = statistics.stdev(differences) / math.sqrt(8)
    assert f"SQuAD +0.125 ± {se:.3f} (paired)" in sampling_noise_line([(mine, mezo)])
    # a cell whose seeds differ from the other's, or a run without the file, falls back
    assert paired_differences(mine, _cell("SQuAD", "lozo", [{"f1": 0.5, "num_examples": 4}], tmp_path,
                                          mezo_scores[:1])) is None
    assert paired_differences(mine, _cell("SQuAD", "hizoo", [{"f1": 0.5, "num_examples": 4}] * 2, tmp_path)) is None
