"""scripts/campaign/report.py on hand-made runs: the paper-style table, the win counts, the ablation tables, the CPU
hours and the README block."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from campaign.cells import Cell  # noqa: E402
from campaign.report import (PROVISIONAL_NOTE, ablation_table, count_wins, cpu_lines, not_started_line,  # noqa: E402
                             paper_table, wins)
from campaign.settings import load_settings  # noqa: E402
from campaign.store import Run  # noqa: E402


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

    # a grid under way chooses no LR: the table says how far each grid is, not that nothing ran
    partial = {("CB", "zoft_no_embed"): Cell("CB", "zoft_no_embed", grid_done=1, grid_size=3),
               ("SQuAD", "mezo_embed_only"): Cell("SQuAD", "mezo_embed_only", grid_size=3)}
    assert ablation_table(partial, settings, ("zoft_no_embed", "mezo_embed_only"), first="method") == [
        "No LR chosen yet for zoft_no_embed, mezo_embed_only: grids partly run (CB zoft_no_embed 1/3); "
        "their runs are in the table of every grid run."]
    del partial["CB", "zoft_no_embed"]
    assert ablation_table(partial, settings, ("zoft_no_embed", "mezo_embed_only"), first="method") == [
        "No runs yet for zoft_no_embed, mezo_embed_only."]


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


def test_a_provisional_cell_is_shown_marked_and_said_to_count_as_it_stands(tmp_path):
    settings = load_settings({"RESULTS_DIR": str(tmp_path), "TASKS": "SST2", "METHODS": "mezo zoft_new lozo"})
    cells = {("SST2", "mezo"): _scored("SST2", "mezo", [(0.6, 0.7)], tmp_path),
             ("SST2", "zoft_new"): _scored("SST2", "zoft_new", [(0.65, 0.74)], tmp_path),
             ("SST2", "lozo"): _scored("SST2", "lozo", [(0.5, 0.6)], tmp_path)}
    cells["SST2", "lozo"].provisional = True
    table = paper_table(cells, settings)
    assert "| lozo | **0.500** / 0.600 † |" in table and table[-1].endswith(PROVISIONAL_NOTE)
    assert "(provisional cells count as they stand)" in "\n".join(wins(cells, settings))
    rows = ablation_table(cells, settings, ("lozo",), first="method")
    assert rows[-1] == "| lozo | 0.5000 / 0.6000 (1e-4, provisional) |"

    cells["SST2", "lozo"].provisional = False  # nothing provisional: no mark, no note
    cells["SST2", "fo_adam"] = _scored("SST2", "fo_adam", [(0.1, 0.9)], tmp_path)
    cells["SST2", "fo_adam"].provisional = True  # a reference: marked in the table, but not counted
    assert "(provisional cells count as they stand)" not in "\n".join(wins(cells, settings))
    del cells["SST2", "fo_adam"]
    assert PROVISIONAL_NOTE not in "\n".join(paper_table(cells, settings))
    assert "provisional" not in "\n".join(wins(cells, settings))

    # a provisional baseline on a task where ZO-FT has no result is not compared, so it is not said to count
    settings = load_settings({"RESULTS_DIR": str(tmp_path), "TASKS": "SST2 CB", "METHODS": "mezo zoft_new lozo"})
    cells["CB", "lozo"] = _scored("CB", "lozo", [(0.9, 0.5)], tmp_path)
    cells["CB", "lozo"].provisional = True
    assert count_wins(cells, settings.tasks).pairs == 1
    assert "provisional" not in "\n".join(wins(cells, settings))


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


def test_win_counts_need_a_strict_win_over_every_baseline_and_ignore_zofts_own_variants(tmp_path):
    settings = load_settings({"RESULTS_DIR": str(tmp_path), "TASKS": "SST2 CB",
                              "METHODS": "mezo zoft_new zoft_old lozo"})
    cells = {("SST2", "zoft_new"): _scored("SST2", "zoft_new", [(0.60, 0.70)], tmp_path),
             ("SST2", "mezo"): _scored("SST2", "mezo", [(0.60, 0.65)], tmp_path),  # a tied loss is no win
             ("SST2", "lozo"): _scored("SST2", "lozo", [(0.70, 0.75)], tmp_path),  # ZO-FT's metric between two
             ("CB", "zoft_new"): _scored("CB", "zoft_new", [(0.90, 0.60)], tmp_path),
             ("CB", "mezo"): _scored("CB", "mezo", [(1.00, 0.50)], tmp_path),
             # its own variant beats it everywhere: not a rival
             ("CB", "zoft_old"): _scored("CB", "zoft_old", [(0.10, 0.99)], tmp_path)}
    counts = count_wins(cells, settings.tasks)
    assert (counts.pairs, counts.lowest, counts.highest) == (2, 1, 1)
    text = "\n".join(wins(cells, settings))
    # ZO-FT - MeZO: +0.05 on SST2, +0.10 on CB
    assert "lower loss in 1 of 2 tasks, higher test metric in 2 of 2; mean test metric difference +0.0750" in text
