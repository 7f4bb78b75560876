"""scripts/campaign/method_notes.py on hand-made runs: HiZOO's curvature drift and its distance to MeZO's runs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from campaign.cells import Cell  # noqa: E402
from campaign.method_notes import curvature_line, hizoo_note  # noqa: E402
from campaign.store import Run  # noqa: E402


def _run(folder: Path, method: str, lr: str, dev_loss: float, accuracy: float, predictions: list[str] | None,
         curvature: float | None = None) -> Run:
    run_folder = folder / "SST2" / method / lr / "42"
    run_folder.mkdir(parents=True)
    step = {"kind": "step", "step": 1, "loss_plus": 0.7, "loss_minus": 0.6}
    if curvature is not None:
        step["curvature_mean"] = curvature
    log = [{**step, "step": 0, "curvature_mean": 1.0} if curvature is not None else {**step, "step": 0}, step,
           {"kind": "eval", "step": 1, "dev_loss": dev_loss}]
    (run_folder / "train_log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in log))
    alpha = {"hizoo": 1e-8, "hizoo_alpha": 1e-4}.get(method)
    (run_folder / "config.json").write_text(json.dumps({} if alpha is None else {"hizoo_alpha": alpha}))
    if predictions is not None:
        rows = [{"index": i, "prediction": p, "score": 1.0} for i, p in enumerate(predictions)]
        (run_folder / "test_predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    metrics = {"status": "completed", "best_dev_loss": dev_loss,
               "test": {"accuracy": accuracy, "num_examples": len(predictions or [])}}
    return Run("SST2", method, lr, 42, run_folder, metrics, {})


def _cells(hizoo: list[Run], mezo: list[Run]) -> dict:
    return {("SST2", "hizoo"): Cell("SST2", "hizoo", grid_runs=hizoo),
            ("SST2", "mezo"): Cell("SST2", "mezo", grid_runs=mezo)}


def test_hizoo_whose_curvature_has_not_moved_is_called_mezo_again(tmp_path):
    cells = _cells([_run(tmp_path, "hizoo", "1e-4", 0.6123, 0.655, ["a", "b", "a"], curvature=1.003),
                    _run(tmp_path, "hizoo", "3e-5", 0.6420, 0.64, None, curvature=0.999)],
                   [_run(tmp_path, "mezo", "1e-4", 0.6125, 0.66, ["a", "b", "b"]),
                    _run(tmp_path, "mezo", "3e-5", 0.6421, 0.64, None)])
    [line] = hizoo_note(cells)
    assert "α = 1e-08" in line and "within 0.30% of 1 in all 2 runs" in line
    assert "(2 pairs): best dev loss differs by at most 0.0002, test metric by at most 0.0050" in line
    assert "the 1 pairs with saved predictions predict the same on 2 of 3 test examples" in line
    assert "HiZOO is MeZO with one more forward a step" in line


def test_hizoo_whose_curvature_moved_or_whose_runs_differ_gets_its_numbers_only(tmp_path):
    moved = _cells([_run(tmp_path / "a", "hizoo", "1e-4", 0.6123, 0.655, ["a"], curvature=1.2)],
                   [_run(tmp_path / "a", "mezo", "1e-4", 0.6123, 0.655, ["a"])])
    apart = _cells([_run(tmp_path / "b", "hizoo", "1e-4", 0.58, 0.7, ["a"], curvature=1.001)],
                   [_run(tmp_path / "b", "mezo", "1e-4", 0.61, 0.655, ["b"])])
    [moved_line], [apart_line] = hizoo_note(moved), hizoo_note(apart)
    assert "within 20.00% of 1" in moved_line and "MeZO with one more forward" not in moved_line
    assert "differs by at most 0.0300" in apart_line and "MeZO with one more forward" not in apart_line


def test_no_note_without_hizoo_runs_and_no_comparison_without_mezo_at_its_lr(tmp_path):
    assert hizoo_note({}) == []
    lonely = {("SST2", "hizoo"): Cell("SST2", "hizoo", grid_runs=[
        _run(tmp_path, "hizoo", "1e-4", 0.6, 0.6, ["a"], curvature=1.0)])}
    [line] = hizoo_note(lonely)
    assert "Against MeZO" not in line and "MeZO with one more forward" not in line


def test_the_curvature_line_gives_each_runs_final_mean_of_d_by_lr(tmp_path):
    runs = [_run(tmp_path, "hizoo_alpha", "1e-3", 0.60, 0.7, None, curvature=812.5),
            _run(tmp_path, "hizoo_alpha", "3e-4", 0.62, 0.7, None, curvature=1530.0)]
    cells = {("SST2", "hizoo_alpha"): Cell("SST2", "hizoo_alpha", grid_runs=runs)}
    [line] = curvature_line(cells, "hizoo_alpha")
    assert line == ("hizoo_alpha (α = 0.0001): the mean of its curvature D (1 at the start) after the last step: "
                    "SST2 lr 3e-4 seed 42: 1530, SST2 lr 1e-3 seed 42: 812.5.")
    assert curvature_line(cells, "hizoo") == []
