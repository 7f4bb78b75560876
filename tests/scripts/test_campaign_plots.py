"""scripts/campaign/plots.py on hand-made runs: the LR-robustness plot and its zoomed panel."""
from __future__ import annotations

import math
import sys

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from campaign.cells import Cell  # noqa: E402
from campaign.plots import curves_top, loss_curves_plot, lr_robustness_plot, near_best_range  # noqa: E402
from campaign.store import Run  # noqa: E402


def test_the_lr_robustness_plot_takes_blow_ups_and_diverged_runs(tmp_path):
    def grid(method, losses):
        runs = [Run("SST2", method, lr, 42, tmp_path, {"status": status, "last_step_train_loss": loss}, {})
                for lr, loss, status in losses]
        return Cell("SST2", method, grid_done=len(runs), grid_size=len(runs), grid_runs=runs)

    cells = [grid("mezo", [("1e-4", 0.6, "completed"), ("3e-4", 1908.0, "completed"),
                           ("1e-3", None, "stopped: loss is nan")]),
             grid("zoft_new", [("1e-4", 0.55, "completed"), ("1e-5", 0.61, "completed")])]
    path = lr_robustness_plot(cells, "SST2", tmp_path / "lr.png")
    assert path.stat().st_size > 10_000 and path.read_bytes()[:4] == b"\x89PNG"


def test_the_zoomed_lr_panel_is_set_by_the_best_zeroth_order_loss_not_the_first_order_reference():
    series = [("mezo", [(1e-4, 0.6, False), (3e-4, math.nan, True)]), ("zoft_new", [(1e-4, 0.55, False)]),
              ("fo_adam", [(3e-5, 0.06, False)])]
    assert near_best_range(series) == (0.55, 0.55 * 1.5)
    assert near_best_range([("fo_adam", [(3e-5, 0.06, False)])]) == (0.06, 0.06 * 1.5)  # nothing else: its own
    assert near_best_range([("mezo", [(3e-4, math.nan, True)])]) == (1.0, 1.5)


def test_the_loss_curves_end_above_every_chosen_state_not_at_a_later_blow_up(tmp_path):
    def cell(method, losses, chosen, provisional=False):
        folder = tmp_path / method
        folder.mkdir()
        (folder / "train_log.jsonl").write_text("".join(
            f'{{"kind": "dev", "step": {25 * (i + 1)}, "train_eval_loss": {loss}}}\n' for i, loss in enumerate(losses)))
        run = Run("SST2", method, "1e-4", 42, folder, {"status": "completed", "final_train_loss": chosen}, {})
        return Cell("SST2", method, best_lr="1e-4", runs=[run], provisional=provisional)

    mezo = cell("mezo", [0.7, 0.65, 0.64, 0.63], 0.63)
    lozo = cell("lozo", [0.62, 0.61, 1.2, 9.7], 0.61, provisional=True)  # chosen at step 50, blown up by step 100
    assert curves_top([mezo, lozo]) == 1.25 * 0.63
    assert curves_top([cell("fzoo", [0.5, 0.4], math.nan)]) == 0.5  # no chosen loss: every point fits
    path = loss_curves_plot([mezo, lozo], "SST2", tmp_path / "loss.png")
    assert path.stat().st_size > 10_000 and path.read_bytes()[:4] == b"\x89PNG"
