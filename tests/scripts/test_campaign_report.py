"""scripts/campaign/report.py on hand-made runs: the test-sampling noise printed next to ZO-FT − MeZO."""
from __future__ import annotations

import math
import sys
from pathlib import Path

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from campaign.report import Cell, sampling_noise_line  # noqa: E402
from campaign.store import Run  # noqa: E402


def _cell(task: str, method: str, tests: list[dict]) -> Cell:
    runs = [Run(task, method, "1e-4", seed, Path("."), {"status": "completed", "test": test}, {})
            for seed, test in enumerate(tests)]
    return Cell(task, method, best_lr="1e-4", runs=runs)


def test_the_binomial_error_pools_every_seeds_examples():
    cell = _cell("SST2", "mezo", [{"accuracy": 0.6, "num_examples": 200}, {"accuracy": 0.7, "num_examples": 200}])
    assert math.isclose(cell.sampling_variance, 0.65 * 0.35 / 400)
    assert _cell("SQuAD", "mezo", [{"f1": 0.4, "num_examples": 100}]).sampling_variance is None
    assert _cell("SST2", "mezo", [{"accuracy": 0.6}]).sampling_variance is None  # test size unknown


def test_differences_are_judged_against_the_error_of_the_difference():
    small = (_cell("SST2", "zoft_new", [{"accuracy": 0.67, "num_examples": 200}]),
             _cell("SST2", "mezo", [{"accuracy": 0.655, "num_examples": 200}]))
    large = (_cell("CB", "zoft_new", [{"accuracy": 0.9, "num_examples": 1000}]),
             _cell("CB", "mezo", [{"accuracy": 0.5, "num_examples": 1000}]))
    f1 = (_cell("DROP", "zoft_new", [{"f1": 0.3, "num_examples": 100}]),
          _cell("DROP", "mezo", [{"f1": 0.2, "num_examples": 100}]))
    line = sampling_noise_line([small, large, f1])
    se_small = math.sqrt(0.67 * 0.33 / 200 + 0.655 * 0.345 / 200)
    assert f"SST2 +0.015 ± {se_small:.3f}" in line
    assert "CB +0.400 ± 0.018" in line
    assert "DROP +0.100 (F1: no binomial SE)" in line
    assert "Within one standard error: 1 of 2." in line
