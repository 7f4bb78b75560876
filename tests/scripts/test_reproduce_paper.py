"""The campaign end to end on a tiny model: two tasks, LR grid of 2, 2 seeds, killed mid-way and restarted; the report."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import REPO_ROOT, SHARED_DATA
from run_helpers import QUIET_ENV, processes_mentioning, requires_shared_data, run_cmd

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from campaign import runner  # noqa: E402
from campaign.cells import collect  # noqa: E402
from campaign.plan import at_grid_edge, build_plan  # noqa: E402
from campaign.settings import (DIAGNOSTIC_TASKS, PRESET_DIR, STEP_COST_VS_MEZO, TABLE2, TABLE3,  # noqa: E402
                               load_settings)
from campaign.store import Run, best_lr, is_final  # noqa: E402

pytestmark = requires_shared_data

TASKS, METHODS, LRS, SEEDS = ("SST2", "CB"), ("mezo", "zoft_new"), ("0.001", "0.0001"), (1, 2)


@pytest.fixture(scope="module")
def campaign_env(tiny_llama_dir, tiny_llama_bank, tmp_path_factory):
    bank, _ = tiny_llama_bank
    results = tmp_path_factory.mktemp("campaign") / "results"
    return {"MODEL": str(tiny_llama_dir), "DATA_DIR": str(SHARED_DATA), "RESULTS_DIR": str(results),
            "TASKS": " ".join(TASKS), "SEEDS": " ".join(map(str, SEEDS)),
            "METHODS": " ".join(METHODS) + " no_such_mode zoft_missing=/nonexistent/bank.safetensors",
            "BANK_zoft_new": str(bank), "LRS_mezo": " ".join(LRS), "LRS_zoft_new": " ".join(LRS),
            "STEPS": "2", "EVAL_STEPS": "1", "TRAIN": "8", "DEV": "4", "EVAL": "4", "BS": "2", "MAX_LENGTH": "128",
            "MAX_NEW_TOKENS": "4", "EXTRA_ARGS": "--threads 1", "EXTEND_GRID": "0"}  # grids of 2: always an edge


def finished(results: Path) -> dict[Path, float]:
    """Published runs -> mtime of their campaign.json."""
    return {p.parent: p.stat().st_mtime for p in (results / "runs").glob("*/*/*/*/campaign.json")}


def status(env: dict) -> str:
    return run_cmd([sys.executable, "scripts/reproduce_paper.py", "--status"], env).stdout


def test_campaign_survives_a_kill_and_the_report_has_the_right_cells(campaign_env):
    env, results = campaign_env, Path(campaign_env["RESULTS_DIR"])
    plan = status(env)
    assert "unavailable: no_such_mode" in plan and "unavailable: zoft_missing (bank not found" in plan
    assert "phase 1 (LR grid, core methods): 0 done, 8 pending" in plan
    assert "4 blocked until their LR grid is complete" in plan

    # start the campaign and kill it hard once a few runs are published (one is usually in flight)
    driver = subprocess.Popen([sys.executable, "scripts/reproduce_paper.py"], cwd=REPO_ROOT,
                              env={**os.environ, **QUIET_ENV, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 240
    while len(finished(results)) < 3 and time.time() < deadline and driver.poll() is None:
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.time() + 30  # the run in flight dies with its driver (parent-death signal): no orphan
    while processes_mentioning(str(results)) and time.time() < deadline:
        time.sleep(0.2)
    assert not processes_mentioning(str(results))
    before = finished(results)
    assert 3 <= len(before) < 12, driver.stdout.read().decode()[-3000:]
    for folder in before:  # only complete runs were published, never weights
        assert sorted(p.name for p in folder.iterdir()) == ["campaign.json", "config.json", "metrics.json",
                                                            "test_predictions.jsonl", "train_log.jsonl"]
    assert f"{len(before)} done" in status(env).splitlines()[3]  # phase 1 line (after two 'unavailable' lines)
    estimate = [line for line in status(env).splitlines() if line.startswith("estimate for the runnable runs: ")]
    assert len(estimate) == 1 and re.match(r"estimate for the runnable runs: [\d.]+ CPU-hours \(about [\d.]+ "
                                           r"wall-hours on \d+ busy cores\) for [1-9]\d* of them", estimate[0])

    rerun = run_cmd([sys.executable, "scripts/reproduce_paper.py"], env, timeout=600)
    after = finished(results)
    assert len(after) == 12  # 2 tasks x 2 methods x (2 grid LRs + 1 extra seed)
    assert all(after[f] == t for f, t in before.items())  # finished runs were not run again
    assert rerun.stdout.count("    done:") == 12 - len(before)
    final_status = status(env)
    assert "left: 0 runnable now, 0 blocked" in final_status
    assert not list((results / "runs").rglob("*.safetensors"))
    cpu = [json.loads((f / "campaign.json").read_text())["cpu_seconds"] for f in after]
    assert all(c > 0 for c in cpu)

    # other settings make every run stale (rerun), the old results are not silently reused
    assert "0 done, 8 pending (8 stale" in status({**env, "STEPS": "3"})

    # the report: best LR on dev, mean +- sd over the 2 seeds at that LR, computed here from the run files
    run_cmd([sys.executable, "scripts/make_report.py"], env)
    report = (results / "README.md").read_text()
    main_table = report.split("## Main table")[1].split("\n## ")[0]
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in line.split("|")[3:-1]]
            for line in main_table.splitlines() if line.startswith("| ") and line.split("|")[1].strip() in TASKS}
    assert set(rows) == {(t, m) for t in TASKS for m in METHODS}
    for (task, method), (lr_cell, loss_cell, metric_cell, n_cell, _) in rows.items():
        base = results / "runs" / task / method
        grid = [load(base / lr / str(SEEDS[0])) for lr in ("0.001", "0.0001")]
        lr = min(grid, key=lambda r: (r.metrics["best_dev_loss"], -r.metric("dev"), float(r.lr))).lr
        assert lr_cell == f"{lr} (grid edge)"  # a grid of 2: its best is always at an edge
        at_best = [json.loads((base / lr / str(s) / "metrics.json").read_text()) for s in SEEDS]
        losses = [m["final_train_loss"] for m in at_best]
        metrics = [m["test"]["accuracy"] for m in at_best]
        assert loss_cell == f"{statistics.mean(losses):.4f} ± {statistics.stdev(losses):.4f}"
        assert metric_cell == f"{statistics.mean(metrics):.4f} ± {statistics.stdev(metrics):.4f} (accuracy)"
        assert n_cell == "2"
    assert "lowest final training loss in" in report and "of 2 tasks" in report
    # every run published its per-example test scores, so each task's difference gets the paired error
    assert all(f"{task} " in report and re.search(rf"{task} [+-]\d\.\d+ ± \d\.\d+ \(paired[;)]", report)
               for task in TASKS)
    grid_rows = report.split("## Every grid run")[1].count("\n| SST2 |") + report.split("## Every grid run")[1].count(
        "\n| CB |")
    assert grid_rows == 8 and report.count("(chosen)") == 4  # 2 tasks x 2 methods x 2 LRs, one chosen each
    for task in TASKS:
        assert (results / "plots" / f"loss_{task}.png").stat().st_size > 0
        assert (results / "plots" / f"lr_robustness_{task}.png").stat().st_size > 0
    assert "No runs yet for zoft_base" in report  # ablations: missing, not zero

    # --readme: the project README's marked block gets the report's paper-style table and counts, the rest stays
    readme = results.parent / "PROJECT_README.md"
    outside = "# Project\n\nintro\n"
    readme.write_text(outside + "<!-- campaign-table:begin (generated) -->\nstale table\n<!-- campaign-table:end -->\n"
                      "after\n")
    run_cmd([sys.executable, "scripts/make_report.py", "--readme", str(readme)], env)
    text = readme.read_text()
    block = text.split("<!-- campaign-table:begin (generated) -->\n")[1].split("<!-- campaign-table:end -->")[0]
    paper = report.split("## Paper-style table\n\n")[1].split("\n## ")[0]
    assert text.startswith(outside) and text.endswith("<!-- campaign-table:end -->\nafter\n")
    assert "stale table" not in text and block.startswith(paper.rstrip("\n") + "\n\n")
    assert "lowest final training loss in" in block
    readme.write_text("no markers\n")
    bad = run_cmd([sys.executable, "scripts/make_report.py", "--readme", str(readme)], env, check=False)
    assert bad.returncode != 0 and "campaign-table" in bad.stderr and readme.read_text() == "no markers\n"
    mistyped = run_cmd([sys.executable, "scripts/make_report.py"], {**env, "RESULTS_DIR": str(readme.parent / "x")},
                       check=False)
    assert mistyped.returncode != 0 and "no campaign runs in" in mistyped.stderr
    assert not (readme.parent / "x").exists()


def load(folder: Path) -> Run:
    return Run(task=folder.parts[-4], method=folder.parts[-3], lr=folder.parts[-2], seed=int(folder.parts[-1]),
               folder=folder, metrics=json.loads((folder / "metrics.json").read_text()), campaign={})


def _run(lr: str, dev_loss: float, dev_acc: float) -> Run:
    return Run("SST2", "mezo", lr, 1, Path("."), {"best_dev_loss": dev_loss, "dev": {"accuracy": dev_acc},
                                                  "test": {"accuracy": 0.99 if lr == "1e-05" else 0.0}}, {})


def test_best_lr_uses_dev_never_test_and_breaks_ties_to_the_smaller_lr():
    runs = [_run("1e-05", 0.7, 0.5), _run("1e-06", 0.5, 0.6), _run("1e-07", 0.5, 0.6), _run("3e-06", math.nan, 0.9)]
    assert best_lr(runs) == "1e-07"  # tie on dev loss and dev accuracy; test accuracy is never looked at
    assert best_lr(runs, "dev_metric") == "3e-06"
    assert best_lr([_run("1e-05", math.nan, math.nan)]) is None


def test_a_tie_on_dev_loss_goes_to_the_better_dev_metric_whatever_the_test_metric_says():
    tied = [Run("SST2", "mezo", lr, 1, Path("."), {"best_dev_loss": 0.5, "dev": {"accuracy": dev},
                                                   "test": {"accuracy": test}}, {})
            for lr, dev, test in (("1e-05", 0.7, 0.1), ("1e-06", 0.6, 0.9))]
    assert best_lr(tied) == "1e-05"


def test_only_completed_stopped_or_evaluated_runs_are_final(tmp_path):
    for status in ("completed", "stopped: non-finite loss at step 7", "evaluated without training (eval_only)"):
        assert is_final({"status": status}), status
    for metrics in ({"status": "interrupted"}, {"status": "failed"}, {}, None):
        assert not is_final(metrics), metrics
    env = {"RESULTS_DIR": str(tmp_path), "TASKS": "SST2", "METHODS": "mezo", "SEEDS": "1", "LRS_mezo": "1e-4 3e-5"}
    diverged, interrupted = build_plan(load_settings(env)).pending()
    _publish_fake(diverged, None, "stopped: non-finite loss at step 7")
    _publish_fake(interrupted, None, "interrupted")
    plan = build_plan(load_settings(env))
    assert [(r.lr, r.state) for r in plan.runs] == [(diverged.lr, "done"), (interrupted.lr, "pending")]


def test_a_finished_run_becomes_stale_when_a_setting_in_its_fingerprint_changes(tmp_path):
    env = {"RESULTS_DIR": str(tmp_path), "TASKS": "SST2", "METHODS": "mezo", "SEEDS": "1", "LRS_mezo": "1e-4"}
    (run,) = build_plan(load_settings(env)).pending()
    _publish_fake(run, 0.6)
    assert [r.state for r in build_plan(load_settings(env)).runs] == ["done"]
    for change in ({"STEPS": "7"}, {"EPS": "1e-4"}, {"BS": "8"}, {"EXTRA_ARGS": "--weight_decay 0.1"}):
        assert [r.state for r in build_plan(load_settings({**env, **change})).runs] == ["stale"], change


def test_paper_presets_load_and_command_line_env_wins():
    presets = sorted(p.stem for p in PRESET_DIR.glob("*.env"))
    assert presets == ["llama-3.1-8b", "llama-3.2-1b", "opt-30b", "qwen2.5-14b"]
    s = load_settings({"PRESET": "llama-3.2-1b", "MODEL": "/models/Llama-3.2-1B", "STEPS_SST2": "7"})
    zoft = next(m for m in s.methods if m.name == "zoft_new")
    assert zoft.bank.endswith("llama1B_finetuner.pth") and zoft.grid == ("1e-7",)
    assert (s.caps["SST2"].steps, s.caps["Copa"].steps, s.caps["Copa"].dev, s.caps["SST2"].dev) == (7, 20000, 100, 500)
    assert s.get("DTYPE") == "float16" and s.results_dir.name == "llama-3.2-1b"
    for preset in presets:  # every preset's bank is one of the authors' shipped banks
        bank = next(m for m in load_settings({"PRESET": preset}).methods if m.name == "zoft_new").bank
        assert (REPO_ROOT / bank).is_file(), bank


def test_a_killed_run_resumes_from_its_checkpoint_and_publishes_what_an_unkilled_run_would(campaign_env, tmp_path,
                                                                                           monkeypatch):
    env = {**campaign_env, "RESULTS_DIR": str(tmp_path / "results"), "TASKS": "SST2", "METHODS": "zoft_new",
           "SEEDS": "1", "LRS_zoft_new": "0.001", "STEPS": "6", "EVAL_STEPS": "3", "CHECKPOINT_STEPS": "2"}
    reference_env = {**env, "RESULTS_DIR": str(tmp_path / "reference")}

    def the_run(e):  # the campaign's only run
        (run,) = build_plan(load_settings(e)).runs
        return run

    ok, message = runner.execute(load_settings(reference_env), the_run(reference_env))  # never killed
    assert ok, message

    real_command, kill_after = runner.command, {"loss_calls": 7}  # steps 0-2 are loss calls 1-6 (+ dev, subset)

    def killed_command(settings, run, output_dir, resume=False, threads=None):  # the 1st attempt dies in a step
        cmd = real_command(settings, run, output_dir, resume, threads)
        if not resume:
            kill = ["loss", str(kill_after["loss_calls"])]
            return [cmd[0], str(REPO_ROOT / "tests" / "zo" / "run" / "kill_at.py"), *kill, "run_zo_fine_tuner", *cmd[2:]]
        return cmd

    monkeypatch.setattr(runner, "command", killed_command)
    settings, run = load_settings(env), the_run(env)
    ok, message = runner.execute(settings, run)
    assert not ok and "exit code -9" in message, message
    assert not run.folder.exists()  # nothing published
    scratch, resume = runner.prepare_scratch(settings, run)
    assert resume and list((scratch / "run" / "checkpoints").glob("step-*.json"))

    ok, message = runner.execute(settings, the_run(env))  # the next start resumes it
    assert ok, message
    assert not scratch.exists()  # weights deleted once published
    record = json.loads((run.folder / "campaign.json").read_text())
    assert record["resumed_from_step"] in (2, 4)
    # its cost: the last attempt's, plus the training time the killed attempt kept (its checkpoint carried it)
    carried = json.loads((run.folder / "metrics.json").read_text())["carried_train_cpu_seconds"]
    assert carried > 0
    assert record["cpu_seconds"] == pytest.approx(record["last_attempt_cpu_seconds"] + carried, abs=0.02)
    assert Run(run.task, run.method.name, run.lr, run.seed, run.folder, {}, record).cost_complete
    reference = the_run(reference_env).folder
    drop = {"seconds", "train_seconds", "total_seconds", "resumed_from_step", "model", "bank", "train_cpu_seconds",
            "carried_train_seconds", "carried_train_cpu_seconds"}
    for name in ("metrics.json", "config.json"):
        ours, theirs = (json.loads((f / name).read_text()) for f in (run.folder, reference))
        strip = {"output_dir", "resume", *drop}  # runtime settings
        assert {k: v for k, v in ours.items() if k not in strip} == {k: v for k, v in theirs.items() if k not in strip}
    lines = [[{k: v for k, v in json.loads(line).items() if k not in drop} for line in
              (f / "train_log.jsonl").read_text().splitlines()] for f in (run.folder, reference)]
    assert [r for r in lines[0] if r["kind"] != "event"] == lines[1]


def test_an_attempt_with_other_settings_is_not_resumed(campaign_env, tmp_path):
    env = {**campaign_env, "RESULTS_DIR": str(tmp_path / "results"), "TASKS": "SST2", "METHODS": "mezo",
           "SEEDS": "1", "LRS_mezo": "0.001"}
    settings = load_settings(env)
    run = build_plan(settings).pending()[0]
    scratch, resume = runner.prepare_scratch(settings, run)
    assert not resume and "--resume" not in runner.command(settings, run, scratch / "run")
    (scratch / "run").mkdir()
    (scratch / "run" / "marker").write_text("an attempt's files")
    assert runner.prepare_scratch(settings, run) == (scratch, True)
    assert (scratch / "run" / "marker").exists()
    cmd = runner.command(settings, run, scratch / "run", resume=True)
    assert cmd[cmd.index("--resume") + 1] == "True"

    other = load_settings({**env, "STEPS": "3"})  # same folder name, another fingerprint: start afresh
    scratch_again, resume = runner.prepare_scratch(other, build_plan(other).pending()[0])
    assert scratch_again == scratch and not resume and not (scratch / "run").exists()


def test_every_ablation_method_reads_a_bank_that_train_ablation_banks_writes():
    script = (REPO_ROOT / "scripts" / "train_ablation_banks.sh").read_text()
    variants = re.search(r'VARIANTS=\$\{VARIANTS:-"([^"]+)"\}', script).group(1).split()
    written = {f"learned_finetuner/ablations/smollm2-135m_copa_{v}.safetensors" for v in variants}
    settings = load_settings({"METHODS": " ".join(dict.fromkeys(TABLE2 + TABLE3))})
    banks = {m.name: m.bank for m in settings.methods}
    assert set(banks) == set(TABLE2 + TABLE3)
    assert set(banks.values()) == written  # each variant is used, each bank is trained


def test_a_method_of_your_own_varies_a_built_in(tmp_path):
    settings = load_settings({"RESULTS_DIR": str(tmp_path), "TASKS": "SQuAD", "SEEDS": "42",
                              "METHODS": "mezo zoft_new_frozen_embed mezo_embed",
                              "MODE_zoft_new_frozen_embed": "zoft_new", "MODE_mezo_embed": "mezo",
                              "ARGS_zoft_new_frozen_embed": r"--trainable_blocks ^(?!model\.embed_tokens)",
                              "ARGS_mezo_embed": "--trainable_blocks embed_tokens"})
    methods = {m.name: m for m in settings.methods}
    frozen, zoft, embed = methods["zoft_new_frozen_embed"], _builtin_method("zoft_new"), methods["mezo_embed"]
    assert (frozen.train_mode, frozen.bank, frozen.grid) == (zoft.train_mode, zoft.bank, zoft.grid)
    assert frozen.args == ("--trainable_blocks", r"^(?!model\.embed_tokens)")
    assert embed.train_mode == "mezo" and embed.grid == methods["mezo"].grid
    fingerprints = {r.fingerprint["method"]: r.fingerprint for r in build_plan(settings).runs if float(r.lr) == 1e-4}
    assert fingerprints["mezo_embed"]["method_args"] != fingerprints["mezo"]["method_args"]
    with pytest.raises(ValueError, match="built-in method already"):
        load_settings({"METHODS": "mezo", "MODE_mezo": "hizoo"})


@pytest.mark.parametrize("env, message", [
    ({"TASKS": "SST2 SST-2"}, r"no data folder for 'SST-2' in .* \(did you mean SST2\?\)"),
    ({"TASKS": "sst2"}, r"did you mean SST2\?"),
    ({"LRS_mezo": "1e-4 abc"}, r"LRS_mezo: 'abc' is not a learning rate"),
    ({"LRS_mezo_SST2": "-1e-4"}, r"LRS_mezo_SST2: '-1e-4' is not a learning rate"),
    ({"SEEDS": "42 4x"}, r"SEEDS must be whole numbers"),
])
def test_bad_campaign_settings_fail_once_with_the_variable_named(tmp_path, env, message):
    """Instead of a traceback, or a failure in every run of a misspelled task."""
    data = tmp_path / "data"
    (data / "SST2").mkdir(parents=True)
    with pytest.raises(ValueError, match=message):
        settings = load_settings({"DATA_DIR": str(data), "RESULTS_DIR": str(tmp_path / "results"), "TASKS": "SST2",
                                  "METHODS": "mezo", **env})
        build_plan(settings)  # per-task grids are read by the plan


def _builtin_method(name):
    return next(m for m in load_settings({"METHODS": name}).methods if m.name == name)


def test_the_diagnostics_freeze_exactly_the_embedding_or_all_but_it():
    import re

    from conftest import build_tiny_model
    from zo.blocks import parameter_blocks

    methods = {m.name: m for m in load_settings({"METHODS": "zoft_no_embed mezo_embed_only zoft_new"}).methods}
    no_embed, embed_only = methods["zoft_no_embed"], methods["mezo_embed_only"]
    assert (no_embed.train_mode, no_embed.bank) == ("zo_fine_tuner", methods["zoft_new"].bank)
    assert embed_only.train_mode == "mezo" and no_embed.tasks == embed_only.tasks == DIAGNOSTIC_TASKS
    for family in ("llama", "opt"):
        names = [b.name for b in parameter_blocks(build_tiny_model(family, 400, tie=True))]
        embedding = [n for n in names if "embed_tokens" in n]
        assert len(embedding) == 1
        assert [n for n in names if re.search(no_embed.args[1], n)] == [n for n in names if n not in embedding]
        assert [n for n in names if re.search(embed_only.args[1], n)] == embedding


def test_the_moving_curvature_hizoo_is_hizoo_at_alpha_1e_4_on_sst2_with_its_own_grid(tmp_path):
    settings = load_settings({"RESULTS_DIR": str(tmp_path), "TASKS": "SST2 CB", "METHODS": "hizoo_alpha",
                              "SEEDS": "42"})
    runs = build_plan(settings).runs
    assert {r.task for r in runs} == {"SST2"} and sorted(float(r.lr) for r in runs) == [1e-4, 3e-4, 1e-3]
    cmd = runner.command(settings, runs[0], tmp_path)
    assert cmd[cmd.index("--train_mode") + 1] == "hizoo" and cmd[cmd.index("--hizoo_alpha") + 1] == "1e-4"
    assert "hizoo_alpha" not in {m.name for m in load_settings({}).methods}  # not a row of the main table


def test_a_grid_extended_on_one_task_and_the_edge_rule(tmp_path):
    settings = load_settings({"RESULTS_DIR": str(tmp_path), "TASKS": "SST2 Copa", "METHODS": "mezo", "SEEDS": "1",
                              "LRS_mezo": "1e-5 3e-6", "LRS_mezo_SST2": "1e-4 1e-5 3e-6"})
    lrs = {}
    for run in build_plan(settings).runs:
        lrs.setdefault(run.task, set()).add(float(run.lr))
    assert lrs == {"SST2": {1e-4, 1e-5, 3e-6}, "Copa": {1e-5, 3e-6}}

    grid = [SimpleNamespace(lr=lr) for lr in ("3e-06", "1e-05", "0.0001")]
    assert at_grid_edge("0.0001", grid) and at_grid_edge("3e-06", grid) and not at_grid_edge("1e-05", grid)
    assert not at_grid_edge("1e-05", grid[1:2])  # a grid of one LR has no edge to extend from


def test_zero_shot_is_one_evaluation_per_seed_and_a_reference_row_not_a_competitor(campaign_env, tmp_path):
    env = {**campaign_env, "RESULTS_DIR": str(tmp_path / "results"), "TASKS": "SST2", "METHODS": "mezo zero_shot",
           "LRS_mezo": "0.001", "STEPS": "1"}
    run_cmd([sys.executable, "scripts/reproduce_paper.py"], env, timeout=600)
    runs = sorted((tmp_path / "results" / "runs" / "SST2" / "zero_shot").glob("*/*/metrics.json"))
    assert [p.parent.relative_to(p.parents[2]).as_posix() for p in runs] == ["0/1", "0/2"]  # LR 0, both seeds
    for path in runs:
        metrics, campaign = json.loads(path.read_text()), json.loads((path.parent / "campaign.json").read_text())
        assert metrics["steps"] == 0 and metrics["best_step"] == 0 and math.isfinite(metrics["final_train_loss"])
        assert "--checkpoint_kind" not in campaign["command"] and campaign["fingerprint"]["train_mode"] == "none"
    run_cmd([sys.executable, "scripts/make_report.py"], env)
    report = (tmp_path / "results" / "README.md").read_text()
    paper = report.split("## Paper-style table")[1].split("\n## ")[0]
    [row] = [line for line in paper.splitlines() if line.startswith("| zero_shot |")]
    assert "**" not in row and "(2 seeds)" in row  # a reference is never the task's best
    assert "| SST2 | zero_shot | 0 |" in report
    assert "highest test metric" not in report  # nothing to count: zero shot is not a ZO baseline


def test_length_groups_reach_the_command_and_the_fingerprint_only_where_used(tmp_path):
    settings = load_settings({"RESULTS_DIR": str(tmp_path), "TASKS": "SST2 CB", "METHODS": "mezo", "SEEDS": "1",
                              "LRS_mezo": "1e-5", "LENGTH_GROUPS_SST2": "1"})
    runs = {r.task: r for r in build_plan(settings).runs}
    assert "length_groups" not in runs["SST2"].fingerprint and runs["CB"].fingerprint["length_groups"] == 2
    cmd = runner.command(settings, runs["CB"], tmp_path)
    assert cmd[cmd.index("--length_groups") + 1] == "2"
    assert "--length_groups" not in runner.command(settings, runs["SST2"], tmp_path)
    other = load_settings({**settings.env, "LENGTH_GROUPS_CB": "3"})
    assert {r.task: r for r in build_plan(other).runs}["CB"].fingerprint["length_groups"] == 3


def test_the_report_shows_ablation_runs_in_their_tables_only(campaign_env, tmp_path):
    # the ablations run as a campaign of their own (scripts/campaign_queue.sh); the report of the main campaign,
    # whose METHODS do not name them, still fills Tables 2 and 3 from their runs and keeps them out of the rest
    env = {**campaign_env, "RESULTS_DIR": str(tmp_path / "results"), "TASKS": "SST2", "SEEDS": "1",
           "METHODS": "zoft_reset_norm mezo", "BANK_zoft_reset_norm": campaign_env["BANK_zoft_new"],
           "LRS_zoft_reset_norm": "0.001", "LRS_mezo": "0.001"}
    run_cmd([sys.executable, "scripts/reproduce_paper.py"], env, timeout=600)
    run_cmd([sys.executable, "scripts/make_report.py"], {**env, "METHODS": "mezo"})
    report = (tmp_path / "results" / "README.md").read_text()
    metrics = json.loads((tmp_path / "results" / "runs" / "SST2" / "zoft_reset_norm" / "0.001" / "1" /
                          "metrics.json").read_text())
    # its bank (a tiny one) has no noise record: the last column says so
    row = (f"| zoft_reset_norm | {metrics['final_train_loss']:.4f} / {metrics['test']['accuracy']:.4f} (0.001) | "
           "missing |")
    for table in ("## Table 2", "## Table 3"):
        assert row in report.split(table)[1].split("\n## ")[0].splitlines()
    main = report.split("## Main table")[1].split("\n## ")[0]
    assert "| SST2 | mezo | 0.001 |" in main and "zoft_reset_norm" not in main
    assert report.count("| SST2 | zoft_reset_norm | 0.001 (chosen) |") == 1  # still listed among the grid runs

    run_cmd([sys.executable, "scripts/make_report.py"], {**env, "METHODS": "mezo", "TASKS": "Copa"})
    report = (tmp_path / "results" / "README.md").read_text()  # no ablation run on these tasks: nothing added
    assert "No runs yet for zoft_base, zoft_reset, zoft_norm, zoft_reset_norm." in report
    assert "unavailable" not in report


def test_status_counts_scratch_and_names_attempts_this_plan_will_not_resume(tmp_path):
    from reproduce_paper import status_text

    settings = load_settings({"RESULTS_DIR": str(tmp_path), "TASKS": "SST2", "METHODS": "mezo", "SEEDS": "1",
                              "LRS_mezo": "0.001"})
    plan = build_plan(settings)
    assert "scratch:" not in status_text(settings, plan)
    (run,) = plan.pending()
    mine, other = runner.scratch_dir(settings, run), tmp_path / ".scratch" / "CB-mezo-1e-05-9"
    for folder in (mine, other):
        (folder / "run").mkdir(parents=True)
        with open(folder / "run" / "weights.pt", "wb") as f:
            f.truncate(2**29)  # 512 MiB by its size, sparse: no real disk
    last = status_text(settings, plan).splitlines()[-1]
    assert last.startswith(f"scratch: 2 unfinished attempts, 1.0 GiB in {tmp_path / '.scratch'}")
    assert last.endswith("else delete): CB-mezo-1e-05-9")

    lock = runner.claim(settings, run)  # as a driver running it would
    try:
        last = status_text(settings, plan).splitlines()[-1]
        assert f"; running now (a driver on this machine holds them): {mine.name}; not pending" in last
    finally:
        os.close(lock)
    assert "running now" not in status_text(settings, plan)


def _without_times(folder: Path, resumed: bool = False) -> tuple[dict, list[dict]]:
    """metrics.json and the log's lines, without timings; `resumed`: also without a resume's provenance (its
    metrics keys and event lines), to compare a resumed run with one never stopped."""
    drop = {"seconds", "train_seconds", "total_seconds", "train_cpu_seconds"}
    if resumed:
        drop |= {"resumed_from_step", "carried_train_seconds", "carried_train_cpu_seconds"}
    metrics = {k: v for k, v in json.loads((folder / "metrics.json").read_text()).items() if k not in drop}
    lines = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
    return metrics, [{k: v for k, v in r.items() if k not in drop} for r in lines
                     if not (resumed and r["kind"] == "event")]


def test_two_workers_run_two_runs_at_once_on_their_own_gpus_and_publish_what_one_worker_would(campaign_env, tmp_path):
    env = {**campaign_env, "TASKS": "SST2", "METHODS": "mezo zoft_new", "SEEDS": "1", "LRS_mezo": "0.001",
           "LRS_zoft_new": "0.001", "STEPS": "4", "EVAL_STEPS": "2"}
    one, two = ({**env, "RESULTS_DIR": str(tmp_path / name)} for name in ("one", "two"))
    run_cmd([sys.executable, "scripts/reproduce_paper.py"], one, timeout=600)
    refused = run_cmd([sys.executable, "scripts/reproduce_paper.py", "--workers", "3"], {**two, "GPUS": "7 9"},
                      check=False)
    assert refused.returncode == 2 and "3 workers but GPUS lists 2" in refused.stderr
    # GPUS alone sets the workers, one a GPU; on this CPU-only machine the runs ignore CUDA_VISIBLE_DEVICES
    out = run_cmd([sys.executable, "scripts/reproduce_paper.py"], {**two, "GPUS": "7 9"}, timeout=600).stdout
    assert ", 2 running, GPU 9)" in out and out.count("    done:") == 2, out
    runs = sorted((tmp_path / "one" / "runs").glob("*/*/*/*/campaign.json"))
    assert len(runs) == 2
    gpus = []
    for record_one in runs:
        folder_one = record_one.parent
        folder_two = tmp_path / "two" / folder_one.relative_to(tmp_path / "one")
        assert _without_times(folder_one) == _without_times(folder_two)
        record = json.loads((folder_two / "campaign.json").read_text())
        # each run's own CPU time (os.wait4), not both runs' together: one thread each (EXTRA_ARGS)
        assert 0 < record["cpu_seconds"] <= 1.5 * record["wall_seconds"], record
        gpus.append(record["cuda_visible_devices"])
    assert sorted(gpus) == ["7", "9"]  # at once, so each on its own GPU


def test_a_run_another_driver_holds_is_skipped_and_left_for_later(campaign_env, tmp_path):
    env = {**campaign_env, "RESULTS_DIR": str(tmp_path / "results"), "TASKS": "SST2", "METHODS": "mezo",
           "SEEDS": "1", "LRS_mezo": "0.001"}
    settings = load_settings(env)
    (run,) = build_plan(settings).pending()
    lock = runner.claim(settings, run)
    assert lock is not None and runner.claim(settings, run) is None  # one holder at a time, even in one process
    out = run_cmd([sys.executable, "scripts/reproduce_paper.py"], env).stdout
    assert "skipped SST2 mezo lr 0.001 seed 1: another driver is running it" in out
    assert not run.folder.exists() and "left: 1 runnable now" in out
    os.close(lock)  # the other driver is gone: the run is free again
    again = runner.claim(settings, run)
    assert again is not None
    os.close(again)


def test_a_terminated_driver_stops_its_runs_at_a_checkpoint_and_the_next_start_resumes_them(campaign_env, tmp_path):
    results = tmp_path / "results"
    env = {**campaign_env, "RESULTS_DIR": str(results), "TASKS": "SST2", "METHODS": "mezo zoft_new", "SEEDS": "1",
           "LRS_mezo": "0.001", "LRS_zoft_new": "0.001", "STEPS": "60", "EVAL_STEPS": "30", "CHECKPOINT_STEPS": "2",
           "WORKERS": "2"}
    settings = load_settings(env)
    scratches = [runner.scratch_dir(settings, r) for r in build_plan(settings).pending()]
    driver = subprocess.Popen([sys.executable, "scripts/reproduce_paper.py"], cwd=REPO_ROOT,
                              env={**os.environ, **QUIET_ENV, **env}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and driver.poll() is None and not all(
            list((s / "run" / "checkpoints").glob("step-*.json")) for s in scratches):
        time.sleep(0.05)
    assert driver.poll() is None, "the runs ended before both had a checkpoint: nothing was stopped"
    driver.send_signal(signal.SIGTERM)  # the driver's own pid only: it passes the stop on to its runs
    time.sleep(1)
    driver.send_signal(signal.SIGTERM)  # a second kill (an impatient user, a queue and a script) changes nothing
    output, _ = driver.communicate(timeout=150)
    assert driver.returncode == 130 and "interrupted: start again" in output, output[-3000:]
    assert not processes_mentioning(str(results)), "a run outlived its driver"
    for scratch in scratches:  # each run got one SIGTERM: it finished its step, checkpointed and said so
        assert json.loads((scratch / "run" / "metrics.json").read_text())["status"] == "interrupted"

    run_cmd([sys.executable, "scripts/reproduce_paper.py"], env, timeout=600)
    records = [json.loads(p.read_text()) for p in (results / "runs").glob("*/*/*/*/campaign.json")]
    assert len(records) == 2 and all(r["resumed_from_step"] for r in records), records


def test_workers_split_the_cores_and_threads_wins(monkeypatch, tmp_path):
    from reproduce_paper import worker_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    settings = load_settings({"RESULTS_DIR": str(tmp_path)})
    assert worker_threads(settings, 1) is None  # one run at a time: the run's own default (every core)
    assert worker_threads(settings, 2) == 4 and worker_threads(settings, 3) == 2 and worker_threads(settings, 16) == 1
    assert worker_threads(load_settings({"RESULTS_DIR": str(tmp_path), "THREADS": "3"}), 1) == 3
    run = build_plan(load_settings({"RESULTS_DIR": str(tmp_path), "TASKS": "SST2", "METHODS": "mezo",
                                    "SEEDS": "1", "LRS_mezo": "0.001"})).runs[0]
    cmd = runner.command(settings, run, tmp_path, threads=4)
    assert cmd[cmd.index("--threads") + 1] == "4" and "--threads" not in runner.command(settings, run, tmp_path)


def test_a_resumed_runs_cost_adds_the_time_its_checkpoint_carried_or_says_it_is_partial():
    assert runner.run_cost({"status": "completed"}, 100.0, 120.0) == {"cpu_seconds": 100.0, "wall_seconds": 120.0}
    trained = {"status": "completed", "train_cpu_seconds": 90.0, "train_seconds": 95.0}
    assert runner.run_cost(trained, 100.0, 120.0) == {"cpu_seconds": 100.0, "wall_seconds": 120.0}
    # stopped after its end, before its publication: the next attempt only publishes it, in a few seconds
    published_later = {**trained, "train_cpu_seconds": 384.7, "train_seconds": 387.7}
    assert runner.run_cost(published_later, 5.2, 5.6) == {
        "cpu_seconds": 384.7, "wall_seconds": 387.7, "last_attempt_cpu_seconds": 5.2, "last_attempt_wall_seconds": 5.6,
        "cost_counts": "the run's training time (metrics.json): a later attempt published it"}
    resumed = {"resumed_from_step": 40, "carried_train_cpu_seconds": 250.5, "carried_train_seconds": 300.0}
    assert runner.run_cost(resumed, 100.0, 120.0) == {
        "cpu_seconds": 350.5, "wall_seconds": 420.0, "last_attempt_cpu_seconds": 100.0,
        "last_attempt_wall_seconds": 120.0}
    # a resumed attempt that trained writes train = carried + its own training, which its whole process exceeds
    # (Copa fo_adam: resumed at step 82, 93 CPU-s for 18 steps, loading and evaluation; counted as 329 before)
    resumed_and_trained = {**resumed, "train_cpu_seconds": 329.48, "train_seconds": 451.68,
                           "carried_train_cpu_seconds": 261.48, "carried_train_seconds": 382.98}
    assert runner.run_cost(resumed_and_trained, 92.99, 94.63)["cpu_seconds"] == round(92.99 + 261.48, 2)
    # found finished by a later attempt, the earlier one itself resumed: its own training (600) dwarfs 5 CPU-s
    found_finished = {**resumed, "train_cpu_seconds": 1000.0, "train_seconds": 1100.0,
                      "carried_train_cpu_seconds": 400.0}
    assert runner.run_cost(found_finished, 5.0, 6.0)["cpu_seconds"] == 1000.0
    old_checkpoint = {"resumed_from_step": 40}  # written before checkpoints carried the time
    cost = runner.run_cost(old_checkpoint, 100.0, 120.0)
    assert cost == {"cpu_seconds": 100.0, "wall_seconds": 120.0, "cost_counts": "last attempt only"}
    # published before any of this: resumed_from_step alone
    assert not Run("SST2", "mezo", "1e-4", 42, Path("."), {}, {"resumed_from_step": 40, **cost}).cost_complete
    assert not Run("SST2", "mezo", "1e-4", 42, Path("."), {}, {"resumed_from_step": 40, "cpu_seconds": 1}).cost_complete
    assert Run("SST2", "mezo", "1e-4", 42, Path("."), {}, {"resumed_from_step": None, "cpu_seconds": 1}).cost_complete


def test_the_estimate_prices_a_method_by_its_own_runs_else_by_its_ratio_to_mezo(monkeypatch):
    from reproduce_paper import estimate_text

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})

    def done(task, method, cpu, status="completed", **campaign):
        return Run(task, method, "1e-4", 42, Path("."), {"status": status}, {"cpu_seconds": cpu, **campaign})

    finished = [done("SST2", "mezo", 3600), done("SST2", "mezo", 7200), done("SST2", "fzoo", 5 * 5400),
                done("SST2", "mezo", 60, resumed_from_step=90),  # its last attempt only: would price too low
                done("CB", "mezo", 1800), done("CB", "mezo", 999999, status="stopped: loss is nan"),
                done("CB", "hizoo", 2700), done("WSC", "hizoo", 3000), done("WSC", "hizoo", 4000)]
    pending = [SimpleNamespace(task=t, method=SimpleNamespace(name=m, train_mode=m))
               for t, m in (("SST2", "mezo"), ("CB", "fzoo"), ("CB", "lozo"), ("WSC", "lozo"), ("DROP", "mezo"))]
    text = estimate_text(SimpleNamespace(pending=lambda: pending), finished)
    # SST2 mezo: its median 5400 s; CB fzoo: CB's MeZO 1800 s x fzoo's ratio 5 on SST2; CB lozo: no lozo run
    # anywhere, so CB's MeZO times the step benchmark's ratio; WSC lozo: no MeZO run on WSC either, so WSC's
    # median over all methods (3500 s); the diverged run does not count; DROP: unknown
    hours = (5400 + 5 * 1800 + STEP_COST_VS_MEZO["lozo"] * 1800 + 3500) / 3600
    assert text.startswith(f"estimate for the runnable runs: {hours:.1f} CPU-hours (about {hours / 2:.1f} "
                           f"wall-hours on 2 busy cores) for 4 of them")
    assert "at MeZO's times the step benchmark's ratio, no finished run to measure the method yet: lozo" in text
    assert "at their task's median, no finished run to measure the method yet: lozo" in text
    assert text.endswith("measure DROP)")


def test_a_price_comes_from_runs_on_the_threads_the_next_runs_get_where_there_are_any():
    from campaign.cost import CostModel

    def done(method, cpu, threads=None):
        command = ["python", "run_zo_fine_tuner.py"] + (["--threads", str(threads)] if threads else [])
        return Run("SST2", method, "1e-4", 42, Path("."), {"status": "completed"},
                   {"cpu_seconds": cpu, "command": command})

    finished = [done("mezo", 800), done("mezo", 400, threads=1), done("mezo", 420, threads=1),
                done("hizoo", 1200)]  # hizoo ran on all the cores only
    assert [r.threads for r in finished] == [None, 1, 1, None]
    runs = {m: SimpleNamespace(task="SST2", method=SimpleNamespace(name=m, train_mode=m)) for m in ("mezo", "hizoo")}
    on_one = CostModel(finished, threads=1)
    assert on_one.price(runs["mezo"]).seconds == 410  # the 2-thread run's doubled CPU time left out
    assert on_one.price(runs["hizoo"]).seconds == 1200  # nothing on 1 thread: all its runs
    assert CostModel(finished).price(runs["mezo"]).seconds == 420  # no thread count given: every run
    assert CostModel(finished, threads=2).price(runs["mezo"]).seconds == 420


def test_a_ratio_to_mezo_compares_runs_on_the_same_threads_only():
    from campaign.cost import CostModel

    def done(task, method, cpu, threads=None):
        command = ["python", "run_zo_fine_tuner.py"] + (["--threads", str(threads)] if threads else [])
        return Run(task, method, "1e-4", 42, Path("."), {"status": "completed"},
                   {"cpu_seconds": cpu, "command": command})

    # on SST-2, hizoo ran on all the cores only, as one MeZO run did; MeZO's 1-thread run spends half the CPU time
    finished = [done("SST2", "mezo", 800), done("SST2", "mezo", 400, threads=1), done("SST2", "hizoo", 1200),
                done("CB", "mezo", 500, threads=1)]
    model = CostModel(finished, threads=1)
    assert model.ratio == {"hizoo": 1.5}  # 1200 / 800, not 1200 / 400
    cb_hizoo = SimpleNamespace(task="CB", method=SimpleNamespace(name="hizoo", train_mode="hizoo"))
    assert model.price(cb_hizoo).seconds == 750
    # no thread count in common: no ratio, the step benchmark's instead
    assert CostModel([done("SST2", "mezo", 400, threads=1), done("SST2", "hizoo", 1200)]).ratio == {}


def test_with_two_workers_a_failed_run_is_reported_and_the_other_still_published(campaign_env, tmp_path):
    env = {**campaign_env, "RESULTS_DIR": str(tmp_path / "results"), "TASKS": "SST2", "METHODS": "mezo zoft_new",
           "SEEDS": "1", "LRS_mezo": "0.001", "LRS_zoft_new": "0.001", "ARGS_mezo": "--no_such_flag 1"}
    proc = run_cmd([sys.executable, "scripts/reproduce_paper.py", "--workers", "2"], env, timeout=600, check=False)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "    FAILED: exit code 2" in proc.stdout and "(SST2 mezo lr 0.001 seed 1)" in proc.stdout
    assert "    done: completed" in proc.stdout and "left: 1 runnable now" in proc.stdout
    published = sorted(p.parent.relative_to(tmp_path / "results" / "runs").as_posix()
                       for p in (tmp_path / "results" / "runs").glob("*/*/*/*/campaign.json"))
    assert published == ["SST2/zoft_new/0.001/1"]


def _publish_fake(run, dev_loss: float | None, status: str = "completed") -> None:
    """A run as the campaign publishes it, with this dev loss and status (no training: the plan reads only these)."""
    run.folder.mkdir(parents=True)
    (run.folder / "metrics.json").write_text(json.dumps({"status": status, "best_dev_loss": dev_loss,
                                                          "dev": {"accuracy": 0.5}}))
    (run.folder / "campaign.json").write_text(json.dumps({"fingerprint": run.fingerprint}))


def test_a_best_lr_at_the_grid_edge_extends_the_grid_before_the_seeds_run(tmp_path):
    env = {"RESULTS_DIR": str(tmp_path), "TASKS": "SST2", "METHODS": "mezo", "SEEDS": "1 2",
           "LRS_mezo": "1e-4 3e-5 1e-5"}
    plan = build_plan(load_settings(env))
    for run, dev_loss in zip(plan.pending(), (0.60, 0.65, 0.70)):  # the largest LR is best: at the edge
        _publish_fake(run, dev_loss)
    plan = build_plan(load_settings(env))
    (extension,) = plan.pending()  # one LR further up the 1-3-10 ladder, same seed; the seed run waits for it
    assert (extension.phase, extension.lr, extension.seed) == (1, "0.0003", 1) and plan.blocked == {2: 1}
    assert ("SST2", "mezo") not in plan.best_lr  # no choice while the extended grid is incomplete
    assert plan.provisional_lr == {("SST2", "mezo"): "0.0001"}  # but the report shows the best so far, marked
    cell = collect(load_settings(env), plan)["SST2", "mezo"]
    assert (cell.best_lr, cell.provisional, [r.lr for r in cell.runs]) == ("0.0001", True, ["0.0001"])

    _publish_fake(extension, 0.62)  # worse than 1e-4: the best is inside the grid now, the seed runs there
    plan = build_plan(load_settings(env))
    assert [(r.phase, r.lr, r.seed) for r in plan.pending()] == [(2, "0.0001", 2)]
    assert not plan.at_edge and not plan.blocked and not plan.provisional_lr

    no_extension = build_plan(load_settings({**env, "EXTEND_GRID": "0", "RESULTS_DIR": str(tmp_path / "other")}))
    assert len(no_extension.runs) == 3  # EXTEND_GRID=0: the grid as given (and its seeds blocked until done)


def test_a_grid_extends_downward_and_at_most_extend_grid_times(tmp_path):
    env = {"RESULTS_DIR": str(tmp_path), "TASKS": "SST2", "METHODS": "mezo", "SEEDS": "1",
           "LRS_mezo": "1e-4 3e-5", "EXTEND_GRID": "2"}
    for run, dev_loss in zip(build_plan(load_settings(env)).pending(), (0.9, 0.8)):  # the smallest LR is best
        _publish_fake(run, dev_loss)
    for expected, dev_loss in (("1e-05", 0.7), ("3e-06", 0.6)):  # and each new smallest LR is best again
        (run,) = build_plan(load_settings(env)).pending()
        assert run.lr == expected
        _publish_fake(run, dev_loss)
    plan = build_plan(load_settings(env))
    assert not plan.pending() and len(plan.runs) == 4  # two extensions, no more
    assert plan.best_lr["SST2", "mezo"] == "3e-06" and ("SST2", "mezo") in plan.at_edge  # the report says so


def test_stages_run_in_order_and_a_stage_end_shares_the_cores_with_the_next(campaign_env, tmp_path):
    env = {**campaign_env, "RESULTS_DIR": str(tmp_path / "results"), "TASKS": "SST2", "SEEDS": "1",
           "LRS_mezo": "0.001", "LRS_zoft_new": "0.001"}
    stages = ["--stage", "METHODS=mezo", "--stage", "METHODS=zoft_new;TASKS=SST2"]
    plan = run_cmd([sys.executable, "scripts/reproduce_paper.py", "--status", *stages], env).stdout
    assert plan.count("campaign: model") == 2 and plan.count("left: 1 runnable now") == 2
    bad = run_cmd([sys.executable, "scripts/reproduce_paper.py", "--stage", "METHODS"], env, check=False)
    assert bad.returncode == 2 and "--stage wants NAME=value" in bad.stderr

    out = run_cmd([sys.executable, "scripts/reproduce_paper.py", "--workers", "2", *stages], env, timeout=600).stdout
    starts = [line for line in out.splitlines() if "] phase 1: SST2" in line]
    assert [line.split("phase 1: ")[1].split(" (")[0] for line in starts] == [
        "SST2 mezo lr 0.001 seed 1", "SST2 zoft_new lr 0.001 seed 1"]  # the first stage first
    assert starts[1].endswith(", 2 running)")  # the second stage did not wait for the first one's last run
    assert out.count("    done:") == 2 and out.count("left: 0 runnable now") == 2


def test_the_step_cost_ratios_are_the_mean_of_the_runs_docs_benchmarks_reports_first():
    table = (REPO_ROOT / "docs" / "benchmarks.md").read_text()
    # | method | step / MeZO, run 1 / run 2 | ...: the newest table, at the top
    rows = re.finditer(r"^\| (\w+) \| ([\d.]+) / ([\d.]+) \| [\d.]+ / [\d.]+ \|", table, re.M)
    reported = {m.group(1): (float(m.group(2)) + float(m.group(3))) / 2 for m in rows}
    assert reported.keys() == STEP_COST_VS_MEZO.keys()
    for method, ratio in reported.items():
        assert math.isclose(STEP_COST_VS_MEZO[method], ratio, abs_tol=6e-4), method


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores: one run each, then both for the last")
def test_the_last_run_in_progress_is_resumed_on_every_core_and_computes_the_same(campaign_env, tmp_path):
    # two runs at once on a core each; the short SST-2 run ends first and the long Copa run, alone, gets both cores
    # (Copa's steps take ~3x the CPU time of SST-2's whole run: with 300 steps, a loaded machine once let Copa end
    # first)
    env = {**campaign_env, "TASKS": "SST2 Copa", "METHODS": "mezo", "SEEDS": "1", "LRS_mezo": "0.001",
           "STEPS_SST2": "2", "STEPS_Copa": "1000", "EVAL_STEPS": "500", "CHECKPOINT_STEPS": "20", "EXTRA_ARGS": ""}
    one, two = ({**env, "RESULTS_DIR": str(tmp_path / name), "WORKERS": workers}
                for name, workers in (("one", "1"), ("two", "2")))
    out = run_cmd([sys.executable, "scripts/reproduce_paper.py"], two, timeout=900).stdout
    assert "Copa mezo lr 0.001 seed 1: the last run in progress, resumed from its checkpoint on 2 threads" in out, out
    copa = tmp_path / "two" / "runs" / "Copa" / "mezo" / "0.001" / "1"
    record = json.loads((copa / "campaign.json").read_text())
    assert record["resumed_from_step"] and record["command"][record["command"].index("--threads") + 1] == "2", record
    assert record["cpu_seconds"] > record["last_attempt_cpu_seconds"]  # the 1-thread attempt's steps count too

    run_cmd([sys.executable, "scripts/reproduce_paper.py"], one, timeout=900)  # never stopped, all cores
    reference = tmp_path / "one" / "runs" / "Copa" / "mezo" / "0.001" / "1"
    assert json.loads((reference / "campaign.json").read_text())["resumed_from_step"] is None
    assert _without_times(copa, resumed=True) == _without_times(reference, resumed=True)


def test_a_lone_run_is_moved_to_every_core_only_off_gpu_from_a_share_and_far_from_its_end(monkeypatch, tmp_path):
    from reproduce_paper import REGROW_MIN_STEPS, worth_regrowing

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})

    def attempt(threads=1, gpu=None, left=REGROW_MIN_STEPS, **env):
        return SimpleNamespace(gpu=gpu, threads=threads, steps_left=lambda: left,
                               settings=load_settings({"RESULTS_DIR": str(tmp_path), **env}))

    assert worth_regrowing(attempt())
    assert not worth_regrowing(attempt(left=REGROW_MIN_STEPS - 1))  # the reload would cost more than it gains
    assert not worth_regrowing(attempt(threads=2)) and not worth_regrowing(attempt(threads=None))
    assert not worth_regrowing(attempt(gpu="0")) and not worth_regrowing(attempt(THREADS="1"))


def test_a_deadline_is_read_as_a_clock_time_an_iso_date_or_unix_seconds():
    from campaign.deadline import parse_deadline

    now = time.mktime((2026, 11, 27, 2, 0, 0, 0, 0, -1))  # 02:00 local
    assert parse_deadline("03:30", now) == now + 90 * 60  # later today
    assert parse_deadline("01:30", now) == now + (24 * 60 - 30) * 60  # passed today: tomorrow's
    assert parse_deadline("2026-11-27T03:30", now) == now + 90 * 60
    assert parse_deadline(str(int(now) + 5), now) == now + 5
    for bad in ("3.5h", "25:00", "90", "inf", "nan", "2026-11-27"):  # a date alone: its midnight, likely a slip
        with pytest.raises(ValueError, match="DEADLINE="):
            parse_deadline(bad, now)
    for margin in ("0", "nan", "inf"):
        with pytest.raises(ValueError, match="DEADLINE_MARGIN must be positive"):
            load_settings({"DEADLINE_MARGIN": margin})


def _fake_finished_run(settings, task: str, wall_seconds: float, **fingerprint) -> None:
    """A finished MeZO run with the caps this plan gives its task, at an LR no grid here holds: it only prices."""
    planned = next(r for r in build_plan(settings).runs if r.task == task)
    folder = settings.runs_dir / task / "mezo" / "0.5" / "7"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"status": "completed", "best_dev_loss": 1.0}))
    (folder / "campaign.json").write_text(json.dumps({"cpu_seconds": 1.0, "wall_seconds": wall_seconds,
                                                      "fingerprint": {**planned.fingerprint, **fingerprint}}))


def test_under_a_deadline_only_runs_priced_to_end_before_it_start_even_from_a_later_stage(campaign_env, tmp_path):
    env = {**campaign_env, "RESULTS_DIR": str(tmp_path / "results"), "METHODS": "mezo", "SEEDS": "1",
           "LRS_mezo": "0.001", "LRS_mezo_CB": "0.001 0.002", "TASKS": "SST2 CB Copa"}
    settings = load_settings(env)
    _fake_finished_run(settings, "CB", 10 ** 6)  # CB's runs cannot end in time
    _fake_finished_run(settings, "SST2", 10)  # SST-2's can
    _fake_finished_run(settings, "Copa", 10, steps=1000)  # Copa's with other caps: they price nothing
    stages = ["--stage", "TASKS=CB", "--stage", "TASKS=SST2", "--stage", "TASKS=Copa"]
    out = run_cmd([sys.executable, "scripts/reproduce_paper.py", *stages],
                  {**env, "DEADLINE": str(int(time.time()) + 900)}, timeout=600).stdout
    # CB's two runs share one line: a stage left out whole names each task and method once
    assert re.search(r"not started before DEADLINE [\d-]+ [\d:]+: CB mezo lr 0.001 0.002 seed 1, 2 runs \(priced "
                     r"16667 min x 1.5, \d+ min left\)", out), out
    assert out.count("CB mezo") == 1, out
    assert "Copa mezo lr 0.001 seed 1 (no finished run of its task with these caps prices it yet)" in out, out
    assert "phase 1: SST2 mezo lr 0.001 seed 1" in out and out.count("    done:") == 1
    assert out.rstrip().endswith("3 runnable runs not started: priced to end after it, or not priced yet (named "
                                 "above)")
    assert not (settings.runs_dir / "CB" / "mezo" / "0.001").exists()
    assert not (settings.runs_dir / "Copa" / "mezo" / "0.001").exists()

    # a margin that makes SST-2's price too long leaves it out as well (another results folder: not run yet)
    again = {**env, "RESULTS_DIR": str(tmp_path / "again")}
    _fake_finished_run(load_settings(again), "SST2", 300)
    out = run_cmd([sys.executable, "scripts/reproduce_paper.py", "--stage", "TASKS=SST2"],
                  {**again, "DEADLINE": str(int(time.time()) + 900), "DEADLINE_MARGIN": "4"}, timeout=600).stdout
    assert re.search(r"SST2 mezo lr 0.001 seed 1 \(priced 5 min x 4, \d+ min left\)", out) and "done:" not in out
    bad = run_cmd([sys.executable, "scripts/reproduce_paper.py", "--stage", "TASKS=SST2;DEADLINE=03:30"], again,
                  check=False)
    assert bad.returncode == 2 and "DEADLINE applies to the whole driver" in bad.stderr


def test_under_a_deadline_a_run_with_a_checkpoint_is_priced_at_the_steps_it_has_left(campaign_env, tmp_path):
    from reproduce_paper import RESUMED_MIN_SHARE, DeadlineGate

    env = {**campaign_env, "RESULTS_DIR": str(tmp_path / "results"), "METHODS": "mezo", "SEEDS": "1",
           "LRS_mezo": "0.001", "TASKS": "SST2", "STEPS": "10", "DEADLINE": str(int(time.time()) + 900)}
    settings = load_settings(env)
    _fake_finished_run(settings, "SST2", 1000)
    run = build_plan(settings).pending()[0]
    gate = DeadlineGate(settings)
    gate.refresh()
    assert gate.seconds_left_of(settings, run) == (1000, "")  # nothing to resume: a whole run

    scratch = runner.scratch_dir(settings, run)
    (scratch / "run" / "checkpoints").mkdir(parents=True)
    (scratch / runner.FINGERPRINT_FILE).write_text(json.dumps(run.fingerprint))
    for step in (2, 6):
        (scratch / "run" / "checkpoints" / f"step-{step:08d}.json").write_text("{}")
    assert gate.seconds_left_of(settings, run) == (400, " from its checkpoint at step 6")
    (scratch / "run" / "checkpoints" / "step-00000010.json").write_text("{}")  # all steps done: evaluation left
    assert gate.seconds_left_of(settings, run) == (1000 * RESUMED_MIN_SHARE, " from its checkpoint at step 10")
    (scratch / runner.FINGERPRINT_FILE).write_text(json.dumps({**run.fingerprint, "steps": 20}))
    assert gate.seconds_left_of(settings, run) == (1000, "")  # another run's attempt: not resumed, not counted
