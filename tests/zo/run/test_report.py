"""--report_to wandb: every step line and the final metrics reach the tracker; offline mode works without a
network; without wandb, one clear ImportError. Progress output to a file has no carriage returns."""
import logging
import sys
from types import SimpleNamespace

import pytest

from conftest import SHARED_DATA
from run_helpers import read_jsonl, requires_shared_data
from zo.recipes.finetune import FineTuneConfig, fine_tune
from zo.recipes.meta_train import L2LConfig, meta_train
from zo.run.progress import make_reporter, progress_bar


def _config(model_dir, out, **overrides):
    base = dict(task_name="SST2", model_name=str(model_dir), train_mode="mezo", data_dir=str(SHARED_DATA),
                output_dir=str(out), max_steps=3, eval_steps=2, num_train=8, num_dev=2, num_eval=2,
                per_device_train_batch_size=2, threads=1, progress=False, report_to="wandb")
    base.update(overrides)
    return FineTuneConfig(**base)


@pytest.fixture
def fake_wandb(monkeypatch):
    logged = []

    def init(**kwargs):
        return SimpleNamespace(id="fake", log=lambda data, step: logged.append((step, data)), finish=lambda: None)

    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(init=init))
    return logged


@requires_shared_data
def test_every_step_and_the_final_metrics_are_reported(tmp_path, tiny_llama_dir, fake_wandb):
    metrics = fine_tune(_config(tiny_llama_dir, tmp_path / "run"))
    steps = [r for r in read_jsonl(tmp_path / "run" / "train_log.jsonl") if r["kind"] == "step"]
    reported = [(step, data) for step, data in fake_wandb if "loss_plus" in data]
    assert [s for s, _ in reported] == [r["step"] for r in steps] == [0, 1, 2]
    for (_, data), line in zip(reported, steps):
        assert {k: line[k] for k in ("loss_plus", "loss_minus", "projected_grad", "lr")} == {
            k: data[k] for k in ("loss_plus", "loss_minus", "projected_grad", "lr")}
    assert [d["dev_loss"] for _, d in fake_wandb if "dev_loss" in d] == [
        r["dev_loss"] for r in read_jsonl(tmp_path / "run" / "train_log.jsonl") if r["kind"] == "dev"]
    final = fake_wandb[-1][1]
    assert final["test/accuracy"] == metrics["test"]["accuracy"] and final["dev/accuracy"] == metrics["dev"]["accuracy"]


def test_without_wandb_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(ImportError, match="pip install wandb"):
        make_reporter("wandb", {})


@pytest.mark.parametrize("recipe", ["fine_tune", "meta_train"])
def test_without_wandb_a_run_fails_before_its_folder_is_made(tmp_path, tiny_llama_dir, monkeypatch, recipe):
    """Else a half-made folder (config.json alone) refuses the same command without --report_to."""
    monkeypatch.setitem(sys.modules, "wandb", None)
    out = tmp_path / "run"
    config = (_config(tiny_llama_dir, out) if recipe == "fine_tune" else
              L2LConfig(task_name="Copa", model_name=str(tiny_llama_dir), data_dir=str(SHARED_DATA),
                        output_dir=str(out), report_to="wandb"))
    with pytest.raises(ImportError, match="pip install wandb"):
        (fine_tune if recipe == "fine_tune" else meta_train)(config)
    assert not out.exists()


@requires_shared_data
def test_wandb_offline_mode_needs_no_network(tmp_path, tiny_llama_dir, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    metrics = fine_tune(_config(tiny_llama_dir, tmp_path / "run", max_steps=2, eval_steps=0))
    assert metrics["status"] == "completed"
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


def test_progress_to_a_file_is_periodic_log_lines(monkeypatch, caplog):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    caplog.set_level(logging.INFO)
    bar = progress_bar(5, "ZO steps", enabled=True, interval=3600)
    for _ in range(5):
        bar.update(1)
        bar.set_postfix(loss="0.5")
    bar.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "zo.run.progress"]
    assert len(lines) == 1 and "5/5" in lines[0] and "loss=0.5" in lines[0] and "\r" not in lines[0]
