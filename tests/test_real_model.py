"""Real-model runs on the embedded SmolLM2-135M (prepared by scripts/setup.sh).

Marked `slow`. Under CI (CI=true) they run in a short form (a few steps, few examples); locally they
run longer. They fail, never skip, when the model is missing: the set-up step is part of the contract.
"""
import os

import pytest

from zo.recipes.finetune import FineTuneConfig, fine_tune
from zo.models import DEFAULT_MODEL

from conftest import SHARED_DATA

SHORT = os.environ.get("CI", "").lower() in ("1", "true", "yes")

pytestmark = pytest.mark.slow


def _require_model():
    assert (DEFAULT_MODEL / "config.json").exists(), f"run `bash scripts/setup.sh` first ({DEFAULT_MODEL} missing)"


@pytest.mark.parametrize("train_mode", ["mezo", "zo_fine_tuner"])
def test_smollm2_sst2_fine_tuning_reports_test_accuracy(tmp_path, train_mode):
    _require_model()
    bank = None
    if train_mode == "zo_fine_tuner":
        from zo.init_bank import init_bank

        bank = tmp_path / "bank.safetensors"
        init_bank(None, bank, seed=0)
    steps = 2 if SHORT else 10
    config = FineTuneConfig(task_name="SST2", data_dir=str(SHARED_DATA), train_mode=train_mode,
                            load_mlp_path=str(bank) if bank else None, max_steps=steps, eval_steps=steps,
                            num_train=32, num_dev=8, num_eval=16 if SHORT else 64, per_device_train_batch_size=4,
                            learning_rate=1e-6, output_dir=str(tmp_path / "run"), progress=False)
    metrics = fine_tune(config)
    assert metrics["steps"] == steps and metrics["status"] == "completed"
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert metrics["test"]["num_examples"] == config.num_eval
    for name in ("config.json", "train_log.jsonl", "metrics.json", "best_model.safetensors"):
        assert (tmp_path / "run" / name).exists(), name
