"""End to end: scripts/zo_fine_tuner.sh and run_zo_fine_tuner.py on a tiny saved Llama (no hub, seconds each)."""
import json
import sys

import pytest

import run_zo_fine_tuner
from conftest import REPO_ROOT, SHARED_DATA
from run_helpers import read_json, read_jsonl, requires_shared_data, run_cmd, run_script, temp_leftovers

pytestmark = requires_shared_data

STEP_KEYS = {"step", "loss_plus", "loss_minus", "projected_grad", "lr", "seconds"}


def _check_run_folder(out, steps: int, eval_steps: int, metric: str, train_mode: str, task: str, model) -> dict:
    config = read_json(out / "config.json")
    # every resolved argument, including the derived ones
    for key in ("task_name", "train_mode", "max_steps", "eval_steps", "per_device_train_batch_size",
                "learning_rate", "zo_eps", "seed", "train_set_seed", "num_train", "num_dev", "num_eval",
                "data_dir", "load_mlp_path", "perturbation", "output_dir", "dtype", "num_blocks", "split_sizes"):
        assert key in config, key
    assert config["model_name"] == str(model) and config["train_mode"] == train_mode
    assert config["max_steps"] == steps and config["output_dir"] == str(out)

    log = read_jsonl(out / "train_log.jsonl")
    step_lines = [r for r in log if "loss_plus" in r]
    dev_lines = [r for r in log if "dev_loss" in r]
    assert len(step_lines) == steps
    for record in step_lines:
        assert STEP_KEYS <= set(record), record
    assert [r["step"] for r in dev_lines] == sorted({*range(eval_steps, steps, eval_steps), steps})

    metrics = read_json(out / "metrics.json")
    assert metrics["task"] == task and metrics["model"] == str(model) and metrics["train_mode"] == train_mode
    assert metrics["steps"] == steps and metrics["status"] == "completed"
    for split in ("dev", "test"):
        assert 0.0 <= metrics[split][metric] <= (100.0 if metric == "f1" else 1.0), metrics[split]
    assert not temp_leftovers(out)
    return metrics


@pytest.mark.parametrize("train_mode", ["mezo", "zo_fine_tuner"])
def test_launcher_sst2_end_to_end(tmp_path, tiny_llama_dir, tiny_llama_bank, train_mode):
    out = tmp_path / "run"
    env = {"MODEL": str(tiny_llama_dir), "TASK": "SST2", "TRAIN_MODE": train_mode, "STEPS": "3", "EVAL_STEPS": "2",
           "TRAIN": "8", "DEV": "4", "EVAL": "4", "BS": "2", "OUTPUT_DIR": str(out), "EXTRA_ARGS": "--threads 1"}
    if train_mode == "zo_fine_tuner":
        env["LOAD_MLP_PATH"] = str(tiny_llama_bank[0])
    run_script("zo_fine_tuner.sh", env)
    metrics = _check_run_folder(out, 3, 2, "accuracy", train_mode, "SST2", tiny_llama_dir)
    assert metrics["dev"]["num_examples"] == 4 and metrics["test"]["num_examples"] == 4
    config = read_json(out / "config.json")
    if train_mode == "zo_fine_tuner":
        assert config["load_mlp_path"] == str(tiny_llama_bank[0])
        assert config["bank_base_model"] == tiny_llama_dir.name
        assert all({"sigma_mean", "c"} <= set(r) for r in read_jsonl(out / "train_log.jsonl") if "loss_plus" in r)
    else:
        assert config["load_mlp_path"] is None


def test_launcher_generation_task_reports_f1(tmp_path, tiny_llama_dir):
    out = tmp_path / "squad"
    run_script("zo_fine_tuner.sh", {
        "MODEL": str(tiny_llama_dir), "TASK": "SQuAD", "TRAIN_MODE": "mezo", "STEPS": "2", "EVAL_STEPS": "2",
        "TRAIN": "4", "DEV": "2", "EVAL": "2", "BS": "2", "OUTPUT_DIR": str(out),
        "EXTRA_ARGS": "--threads 1 --max_new_tokens 4 --max_length 512"})
    _check_run_folder(out, 2, 2, "f1", "mezo", "SQuAD", tiny_llama_dir)
    assert read_json(out / "config.json")["train_as_classification"] is False


@pytest.mark.parametrize("dev, expected", [(None, 100), ("3", 3)])
def test_launcher_gives_cb_upstreams_dev_100_unless_dev_is_set(tmp_path, tiny_llama_dir, dev, expected):
    out = tmp_path / "cb"
    env = {"MODEL": str(tiny_llama_dir), "TASK": "CB", "TRAIN_MODE": "mezo", "STEPS": "1", "EVAL_STEPS": "0",
           "TRAIN": "4", "EVAL": "2", "BS": "2", "OUTPUT_DIR": str(out), "EXTRA_ARGS": "--threads 1"}
    run_script("zo_fine_tuner.sh", env if dev is None else {**env, "DEV": dev})
    assert read_json(out / "config.json")["num_dev"] == expected
    assert read_json(out / "metrics.json")["dev"]["num_examples"] == expected


def test_non_diff_squad_in_process(tmp_path, tiny_llama_dir):
    out = tmp_path / "nondiff"
    metrics = run_zo_fine_tuner.main([
        "--model_name", str(tiny_llama_dir), "--task_name", "SQuAD", "--train_mode", "mezo", "--non_diff",
        "--data_dir", str(SHARED_DATA), "--max_steps", "2", "--eval_steps", "0", "--num_train", "4",
        "--num_dev", "2", "--num_eval", "2", "--per_device_train_batch_size", "2", "--max_new_tokens", "4",
        "--max_length", "512", "--threads", "1", "--progress", "False", "--output_dir", str(out),
        # upstream Trainer flags are accepted and ignored
        "--trainer", "zo", "--load_best_model_at_end", "--save_total_limit", "1"])
    assert metrics["steps"] == 2 and metrics["status"] == "completed"
    assert "f1" in metrics["test"]
    config = read_json(out / "config.json")
    assert config["non_diff"] is True and config["perturbation"] == "inplace"
    steps = [r for r in read_jsonl(out / "train_log.jsonl") if "loss_plus" in r]
    assert len(steps) == 2
    # the objective is -F1 (in [-100, 0] or [-1, 0]): never positive
    assert all(r["loss_plus"] <= 0 and r["loss_minus"] <= 0 for r in steps)
    assert not any("dev_loss" in r for r in read_jsonl(out / "train_log.jsonl"))  # no dev loss under -F1


def test_cli_bad_input_is_one_error_line_exit_2(tmp_path):
    proc = run_cmd([sys.executable, str(REPO_ROOT / "run_zo_fine_tuner.py"), "--task_name", "NotATask",
                    "--train_mode", "mezo", "--data_dir", str(SHARED_DATA), "--output_dir", str(tmp_path / "out")],
                   check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if "ERROR" in line]
    assert len(error_lines) == 1 and "unknown task 'NotATask'" in error_lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--train_mode", "zo_fine_tuner", "--load_mlp_path", "no/such/bank.safetensors"],
     "FileNotFoundError: PertNN bank not found: no/such/bank.safetensors"),
    (["--train_mode", "mezo", "--model_name", "no/such/model/folder"], "model path does not exist"),
    (["--train_mode", "zo_fine_tuner", "--load_mlp_path", "{opt_bank}"], "BankMismatchError: the PertNN bank"),
    (["--train_mode", "mezo", "--data_dir", "{tmp}/nowhere"], "data folder does not exist"),
])
def test_entry_point_turns_bad_input_into_exit_2(tmp_path, tiny_model_dir, caplog, args, message):
    from zo.cli import run_main
    from zo.init_bank import init_bank

    opt_bank = tmp_path / "opt.safetensors"
    init_bank(str(tiny_model_dir("opt")), opt_bank)
    args = [a.format(tmp=tmp_path, opt_bank=opt_bank) for a in args]
    argv = ["--model_name", str(tiny_model_dir("llama")), "--task_name", "SST2", "--data_dir", str(SHARED_DATA),
            "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--num_train", "2", "--num_dev", "2",
            "--num_eval", "2", "--threads", "1", "--progress", "False", *args]  # later flags win
    with pytest.raises(SystemExit) as info:
        run_main(lambda: run_zo_fine_tuner.main(argv))
    assert info.value.code == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and message in errors[0].getMessage()
    assert not (tmp_path / "out").exists()


def test_init_bank_cli_with_model(tiny_llama_bank, tiny_llama_dir):
    from zo.blocks import parameter_blocks
    from zo.models import load_model
    from zo.pertnn import load_bank

    path, proc = tiny_llama_bank
    assert f"to {path}" in proc.stdout
    bank = load_bank(path)
    model, _ = load_model(tiny_llama_dir)
    assert bank.block_names == [b.name for b in parameter_blocks(model)]
    assert bank.metadata["base_model"] == tiny_llama_dir.name
    assert bank.metadata["trained"] == "false" and json.loads(bank.metadata["init_seed"]) == 3


def test_init_bank_cli_never_replaces_a_file_without_overwrite(tmp_path, tiny_llama_dir):
    from run_helpers import run_cmd

    bank = tmp_path / "trained.safetensors"
    bank.write_bytes(b"a trained bank")
    cmd = [sys.executable, "-m", "zo.init_bank", "--model", str(tiny_llama_dir), "--out", str(bank)]
    proc = run_cmd(cmd, {}, check=False)
    assert proc.returncode == 2 and "--overwrite" in proc.stderr and bank.read_bytes() == b"a trained bank"
    missing = run_cmd(cmd[:-1] + [str(tmp_path / "no" / "b.safetensors")], {}, check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert run_cmd(cmd + ["--overwrite"], {}).returncode == 0 and bank.read_bytes() != b"a trained bank"


def test_launcher_config_file_env_overrides_and_refusal(tmp_path, tiny_llama_dir):
    config = tmp_path / "run.yaml"
    config.write_text(f"model_name: {tiny_llama_dir}\ntask_name: SST2\ntrain_mode: mezo\nmax_steps: 2\n"
                      "eval_steps: 0\nnum_train: 8\nnum_dev: 2\nnum_eval: 2\nper_device_train_batch_size: 2\n"
                      "threads: 1\nlearning_rate: 1e-3\n")
    out = tmp_path / "run"
    # STEPS is set by the caller: it overrides the file; LR, BS, TRAIN... are not: the file's values hold
    proc = run_script("zo_fine_tuner.sh", {"CONFIG": str(config), "STEPS": "3", "OUTPUT_DIR": str(out)})
    # the start line names what runs: the file and STEPS, not the launcher's unused defaults (LR=1e-6, ...)
    assert f"CONFIG={config} STEPS=3 (every other setting" in proc.stdout and " LR=" not in proc.stdout
    resolved = read_json(out / "config.json")
    assert resolved["max_steps"] == 3 and resolved["learning_rate"] == 1e-3 and resolved["num_train"] == 8
    assert resolved["per_device_train_batch_size"] == 2 and resolved["model_name"] == str(tiny_llama_dir)
    assert resolved["load_mlp_path"] is None  # the launcher's default bank is not added to a config file's run
    assert read_json(out / "metrics.json")["steps"] == 3
    metrics_before = (out / "metrics.json").read_text()
    proc = run_script("zo_fine_tuner.sh", {"CONFIG": str(config), "STEPS": "3", "OUTPUT_DIR": str(out)},
                      check=False)
    assert proc.returncode == 2 and "finished run" in proc.stderr and "OVERWRITE=1" in proc.stderr
    assert (out / "metrics.json").read_text() == metrics_before
