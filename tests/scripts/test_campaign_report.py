"""scripts/campaign/report.py on hand-made runs: the test-sampling noise printed next to ZO-FT − MeZO, the
paper-style table."""
from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from campaign.report import (Cell, ablation_table, cpu_lines, lr_robustness_plot, mcnemar_p,  # noqa: E402
                             near_best_range, not_started_line, paired_differences, paper_table,
                             sampling_noise_line, wins)
from campaign.settings import load_settings  # noqa: E402
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


def _scored(task: str, method: str, results: list[tuple[float, float]], folder: Path, grid_done: int = 1) -> Cell:
    """A cell whose runs (one a (train loss, test accuracy) pair) sit at its best LR."""
    runs = [Run(task, method, "1e-4", seed, folder, {"status": "completed", "final_train_loss": loss,
                                                     "test": {"accuracy": accuracy}}, {})
            for seed, (loss, accuracy) in enumerate(results)]
    return Cell(task, method, grid_done=grid_done, grid_size=3, best_lr="1e-4", runs=runs)


def test_the_loss_count_against_mezo_is_also_given_after_the_last_step(tmp_path):
    """The loss at the best-dev state can be an early step for one method only: the count at the end is given too."""
    settings = load_settings({"RESULTS_DIR": str(tmp_path), "TASKS": "SST2 CB", "METHODS": "mezo zoft_new"})
    cells = {key: _scored(key[0], key[1], [(loss, 0.6)], tmp_path)
             for key, loss in ((("SST2", "mezo"), 0.60), (("SST2", "zoft_new"), 0.65), (("CB", "mezo"), 1.0),
                               (("CB", "zoft_new"), 1.1))}
    for key, end in ((("SST2", "mezo"), 0.58), (("SST2", "zoft_new"), 0.55), (("CB", "mezo"), 0.9),
                     (("CB", "zoft_new"), 1.2)):
        cells[key].runs[0].metrics["last_step_train_loss"] = end
    text = "\n".join(wins(cells, settings))
    assert "Against MeZO alone: lower loss in 0 of 2 tasks" in text
    assert "after the last step instead of at the best-dev state: lower for ZO-FT in 1 of 2 tasks" in text


def test_with_mixed_seed_counts_the_wins_are_also_counted_on_the_first_seed_alone(tmp_path):
    settings = load_settings({"RESULTS_DIR": str(tmp_path), "TASKS": "SST2 CB", "METHODS": "mezo zoft_new hizoo",
                              "SEEDS": "0 1 2"})
    # SST2: ZO-FT's mean over 3 seeds (0.633 / 0.70) loses to HiZOO's one seed (0.60 / 0.72), its first seed wins
    cells = {("SST2", "zoft_new"): _scored("SST2", "zoft_new", [(0.50, 0.75), (0.70, 0.70), (0.70, 0.65)], tmp_path),
             ("SST2", "hizoo"): _scored("SST2", "hizoo", [(0.60, 0.72)], tmp_path),
             ("CB", "zoft_new"): _scored("CB", "zoft_new", [(1.0, 0.6)], tmp_path),
             ("CB", "mezo"): _scored("CB", "mezo", [(1.1, 0.5)], tmp_path)}
    text = "\n".join(wins(cells, settings))
    assert "lowest final training loss in 1 of 2 tasks and the highest test metric in 1 of 2" in text
    assert "On the first seed alone" in text and "lowest loss in 2 of 2 tasks, highest test metric in 2 of 2." in text
    # the same seed count everywhere: nothing to add
    del cells["SST2", "zoft_new"], cells["SST2", "hizoo"]
    assert "first seed alone" not in "\n".join(wins(cells, settings))


def test_the_diagnostics_table_shows_mezo_and_zoft_beside_the_variants_on_their_tasks_only(tmp_path):
    settings = load_settings({"RESULTS_DIR": str(tmp_path), "TASKS": "SST2 CB SQuAD"})
    cells = {("SST2", "mezo"): _scored("SST2", "mezo", [(0.6, 0.7)], tmp_path),
             ("CB", "mezo"): _scored("CB", "mezo", [(1.0, 0.6)], tmp_path),
             ("CB", "zoft_new"): _scored("CB", "zoft_new", [(1.1, 0.5)], tmp_path),
             ("CB", "zoft_no_embed"): _scored("CB", "zoft_no_embed", [(0.9, 0.65)], tmp_path)}
    rows = ablation_table(cells, settings, ("zoft_no_embed", "mezo_embed_only"), first="method",
                          shown_with=("mezo", "zoft_new"))
    assert rows[0] == "| method | CB: loss / metric (best LR) |"  # SST2 and SQuAD have no diagnostic run
    assert [r.split(" |")[0] for r in rows[2:]] == ["| mezo", "| zoft_new", "| zoft_no_embed", "| mezo_embed_only"]
    assert "0.9000 / 0.6500 (1e-4)" in rows[4] and rows[5].endswith("| missing |")


def test_the_paper_table_bolds_the_best_zeroth_order_cell_and_marks_what_has_not_run(tmp_path):
    settings = load_settings({"RESULTS_DIR": str(tmp_path), "TASKS": "SST2 CB WSC BoolQ",
                              "METHODS": "mezo zoft_new hizoo fo_adam"})
    cells = {("SST2", "mezo"): _scored("SST2", "mezo", [(0.6, 0.7), (0.8, 0.8)], tmp_path),
             ("SST2", "zoft_new"): _scored("SST2", "zoft_new", [(0.65, 0.74)], tmp_path),
             # first order is a reference: its lower loss and higher accuracy take no bold from the ZO methods
             ("SST2", "fo_adam"): _scored("SST2", "fo_adam", [(0.1, 0.95)], tmp_path),
             ("CB", "mezo"): _scored("CB", "mezo", [(1.0, 0.5)], tmp_path),
             ("CB", "zoft_new"): _scored("CB", "zoft_new", [(0.9, 0.5)], tmp_path),
             ("CB", "hizoo"): Cell("CB", "hizoo", grid_done=1, grid_size=3),  # grid under way, no LR chosen
             ("WSC", "mezo"): _scored("WSC", "mezo", [(0.7, 0.6)], tmp_path),  # alone: no bold
             ("WSC", "fo_adam"): _scored("WSC", "fo_adam", [(0.5, 0.7)], tmp_path),
             ("BoolQ", "mezo"): Cell("BoolQ", "mezo", grid_size=3)}
    table = paper_table(cells, settings)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in table if line.startswith("| ") and "---" not in line}
    assert rows["method"] == ["SST2", "CB", "WSC"]  # BoolQ: no run at a selected LR yet, no column
    assert rows["mezo"] == ["0.700 / **0.750** (2 seeds)", "1.000 / **0.500**", "0.700 / 0.600"]  # a tie: both
    assert rows["zoft_new"] == ["**0.650** / 0.740", "**0.900** / **0.500**", "·"]
    assert rows["fo_adam"] == ["0.100 / 0.950", "·", "0.500 / 0.700"]
    # no result on any task: named under the table rather than a row of dots
    assert "hizoo" not in rows and table[-1].endswith("No task has one yet for hizoo.")

    line = not_started_line(cells, settings)[0]
    assert line.endswith("BoolQ: mezo.") and "hizoo" not in line  # a grid under way is in the main table
    assert paper_table({}, settings) == ["No (task, method) has a selected LR yet."]


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


def test_the_cpu_hours_count_each_run_once_by_phase_and_say_when_a_resumed_run_counts_its_last_attempt_only():
    def run(lr, cpu, **campaign):
        return Run("SST2", "mezo", lr, 42, Path(lr), {}, {"cpu_seconds": cpu, "phase": 1, **campaign})

    full = run("1e-4", 3600)
    resumed = run("3e-5", 1800, resumed_from_step=50, last_attempt_cpu_seconds=900)
    cells = {("SST2", "mezo"): Cell("SST2", "mezo", runs=[full], grid_runs=[full, resumed])}
    (line,) = cpu_lines(cells)
    assert line == "CPU-hours spent on the 2 finished runs: 1.50 (phase 1: 1.50)."
    cells["SST2", "mezo"].grid_runs.append(run("1e-5", 360, resumed_from_step=50))  # resumed before the carry
    (line,) = cpu_lines(cells)
    assert line.startswith("CPU-hours spent on the 3 finished runs: 1.60 (phase 1: 1.60). At least: 1 of them")


def test_the_readme_block_is_replaced_only_between_two_marker_lines():
    from campaign.report import BlockMarkersError, splice_block

    text = "intro\n<!-- campaign-table:begin (generated) -->\nold\ntable\n<!-- campaign-table:end -->\nafter\n"
    once = splice_block(text, ["new"], "README")
    assert once == "intro\n<!-- campaign-table:begin (generated) -->\nnew\n<!-- campaign-table:end -->\nafter\n"
    assert splice_block(once, ["new"], "README") == once  # idempotent
    for bad in ("no markers\n",
                "<!-- campaign-table:begin --> <!-- campaign-table:end -->\n",  # both on one line
                "<!-- campaign-table:end -->\n<!-- campaign-table:begin -->\n",  # end first
                "<!-- campaign-table:begin -->\nkeep <!-- campaign-table:end -->\n",  # end inside a line
                text + "<!-- campaign-table:begin -->\n"):  # two begins
        with pytest.raises(BlockMarkersError):
            splice_block(bad, ["new"], "README")


def test_a_bank_table_shows_each_banks_noise_split_from_its_record(tmp_path):
    import hashlib

    banks = {}
    for name in ("base", "norm", "reset"):
        banks[name] = tmp_path / f"{name}.safetensors"
        banks[name].write_bytes(name.encode())
    digest = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in banks.items()}
    banks["base"].with_suffix(".noise.json").write_text(json.dumps(
        {"bank_sha256": digest["base"], "noise_trace_vs_mezo": 39.47, "need_normalization": False,
         "embedding_share": 0.9869}))
    banks["norm"].with_suffix(".noise.json").write_text(json.dumps(
        {"bank_sha256": digest["norm"], "noise_trace_vs_mezo": float("nan"), "need_normalization": None,
         "embedding_share": 0.25}))  # fields a record should not have: nothing made up from them
    banks["reset"].with_suffix(".noise.json").write_text(json.dumps(  # measured other bytes: retrained since
        {"bank_sha256": "0" * 64, "noise_trace_vs_mezo": 0.5, "need_normalization": False, "embedding_share": 0.1}))
    # zoft_reset is not in METHODS: its row still shows its bank's record
    settings = load_settings({"RESULTS_DIR": str(tmp_path), "TASKS": "SST2", "METHODS": "zoft_base zoft_norm",
                              **{f"BANK_zoft_{name}": str(path) for name, path in banks.items()}})
    cells = {("SST2", f"zoft_{name}"): _scored("SST2", f"zoft_{name}", [(0.6, 0.7)], tmp_path) for name in banks}
    rows = ablation_table(cells, settings, ("zoft_base", "zoft_norm", "zoft_reset"))
    assert rows[0].endswith("| bank noise at the start of a run |") and rows[1] == "|---|---|---|"
    assert all(r.count("|") == rows[0].count("|") for r in rows[1:])
    assert rows[2].endswith("| no c: trace 39.5× MeZO's, 98.7% on the embedding / head |")
    assert rows[3].endswith("| c unknown, 25.0% on the embedding / head |")
    assert rows[4].endswith("| missing |")
    banks["reset"].with_suffix(".noise.json").write_text(json.dumps(
        {"bank_sha256": digest["reset"], "noise_trace_vs_mezo": 0.5, "need_normalization": False}))
    rows = ablation_table(cells, settings, ("zoft_base", "zoft_norm", "zoft_reset"))
    assert rows[4].endswith("| no c: trace 0.5× MeZO's |")  # found outside METHODS; no share recorded
    # tables of methods, not banks, have no such column
    plain = ablation_table(cells, settings, ("zoft_base",), first="method")
    assert "bank noise" not in plain[0] and plain[2].count("|") == 3
