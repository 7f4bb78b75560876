"""scripts/campaign/cells.py on hand-made runs: a cell's mean and spread over seeds."""
from __future__ import annotations

import math
import sys
from pathlib import Path

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from campaign.cells import MISSING, Cell, mean_sd  # noqa: E402
from campaign.store import Run  # noqa: E402


def _seed(seed: int, train_loss, accuracy) -> Run:
    return Run("SST2", "mezo", "1e-4", seed, Path("."), {"status": "completed", "final_train_loss": train_loss,
                                                         "test": {"accuracy": accuracy}}, {})


def test_a_seed_without_a_finite_train_loss_is_left_out_of_the_mean_not_averaged_as_nan():
    cell = Cell("SST2", "mezo", runs=[_seed(1, 0.5, 0.6), _seed(2, None, 0.7), _seed(3, math.nan, 0.8),
                                      _seed(4, 0.7, None)])
    assert cell.losses == [0.5, 0.7] and cell.loss == 0.6
    assert cell.metrics == [0.6, 0.7, 0.8] and math.isclose(cell.metric, 0.7)
    assert "nan" not in mean_sd(cell.losses)


def test_the_spread_over_seeds_is_the_sample_standard_deviation():
    assert mean_sd([1.0, 2.0, 3.0]) == "2.0000 ± 1.0000"  # n - 1 in the denominator (population: 0.8165)
    assert mean_sd([0.25]) == "0.2500" and mean_sd([]) == MISSING
