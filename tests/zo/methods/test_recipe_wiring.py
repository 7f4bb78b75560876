"""Every method through the fine-tuning recipe and the CLI: runs, logs, and refuses bad options early."""
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, SHARED_DATA
from method_helpers import one_torch_thread  # noqa: F401
from run_helpers import read_json, read_jsonl, requires_shared_data
from zo.recipes.finetune import FineTuneConfig, fine_tune


def _config(model_dir, out, **overrides) -> FineTuneConfig:
    base = dict(task_name="SST2", model_name=str(model_dir), train_mode="mezo", data_dir=str(SHARED_DATA),
                output_dir=str(out), max_steps=2, eval_steps=0, num_train=8, num_dev=2, num_eval=2,
                per_device_train_batch_size=2, threads=1, progress=False)
    base.update(overrides)
    return FineTuneConfig(**base)


@requires_shared_data
@pytest.mark.parametrize("mode, options", [
    ("mezo_adam", {}), ("hizoo", {"hizoo_alpha": 1e-4}), ("lozo", {"lozo_rank": 1, "lozo_interval": 1, "lozo_beta": 0.5}),
    ("fzoo", {"fzoo_n": 2}), ("fo_sgd", {}), ("fo_adam", {}),
])
def test_each_new_method_runs_through_the_recipe(tmp_path, tiny_llama_dir, mode, options):
    metrics = fine_tune(_config(tiny_llama_dir, tmp_path / "run", train_mode=mode, **options))
    assert metrics["train_mode"] == mode and metrics["steps"] == 2 and metrics["status"] == "completed"
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    config = read_json(tmp_path / "run" / "config.json")
    assert config["method"] == mode and config["extra_state_bytes"] >= 0
    assert all(config[k] == v for k, v in options.items())
    steps = [r for r in read_jsonl(tmp_path / "run" / "train_log.jsonl") if "loss_plus" in r]
    assert [r["step"] for r in steps] == [0, 1]


@pytest.mark.parametrize("overrides, message", [
    (dict(train_mode="mezo", lozo_rank=4), "--lozo_rank is an option of lozo, not of train_mode mezo"),
    (dict(train_mode="fo_sgd", adam_beta2=0.99), "--adam_beta2 is an option of mezo_adam / fo_adam"),
    (dict(train_mode="lozo", lozo_interval=0), "lozo_interval must be >= 1"),
    (dict(train_mode="lozo", lozo_rank=-2), "lozo_rank must be >= 1"),
    (dict(train_mode="sgd"), "unknown train_mode 'sgd': choose one of mezo, zo_fine_tuner, mezo_adam.*or none"),
    (dict(train_mode="mezo", load_mlp_path="bank.safetensors"), "train_mode mezo does not read one"),
])
def test_bad_method_options_fail_before_the_run_folder_is_touched(tmp_path, overrides, message):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        fine_tune(_config(tmp_path / "no-model-needed", out, data_dir=None, **overrides))
    assert not out.exists()


def test_cli_refuses_another_methods_flag_even_at_its_default(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "run_zo_fine_tuner.py", "--train_mode", "hizoo", "--lozo_rank", "2",
                           "--output_dir", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "--lozo_rank is an option of lozo, not of train_mode hizoo" in proc.stderr
    assert not out.exists()
