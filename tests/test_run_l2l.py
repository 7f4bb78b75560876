"""End to end: scripts/l2l.sh meta-trains a bank on the tiny Llama, then scripts/zo_fine_tuner.sh uses it on another task."""
import json

from run_helpers import read_json, read_jsonl, requires_shared_data, run_script, temp_leftovers
from zo.pertnn import load_bank

pytestmark = requires_shared_data


def test_l2l_script_then_fine_tune_another_task_with_the_bank(tmp_path, tiny_llama_dir):
    bank_path = tmp_path / "bank.safetensors"
    out = tmp_path / "l2l"
    proc = run_script("l2l.sh", {"MODEL": str(tiny_llama_dir), "TASK": "Copa", "EPOCH": "2", "EPOCHS_PER_RESTART": "1",
                                 "TRAIN": "8", "BS": "4", "SAVE_MLP_PATH": str(bank_path), "OUTPUT_DIR": str(out),
                                 "EXTRA_ARGS": "--threads 1 --progress False"})
    assert "Traceback" not in proc.stderr
    summary = read_json(out / "summary.json")
    assert summary == {**summary, "bank": str(bank_path), "tasks": ["Copa"], "steps": 4, "resets": 1,
                       "status": "completed"}
    config = read_json(out / "config.json")
    assert config["num_train_epochs"] == 2 and config["epochs_per_restart"] == 1 and config["num_train"] == 8
    assert config["num_dev"] == 100  # upstream's Copa case, DEV not set
    assert config["per_device_train_batch_size"] == 4 and config["model_name"] == str(tiny_llama_dir)
    log = read_jsonl(out / "train_log.jsonl")
    assert [r["step"] for r in log if "task" in r] == [1, 2, 3, 4]
    assert any(r.get("event") == "reset" for r in log)
    bank = load_bank(bank_path)
    assert bank.metadata["trained"] == "true" and json.loads(bank.metadata["tasks"]) == ["Copa"]
    assert bank.metadata["base_model"] == tiny_llama_dir.name
    assert not temp_leftovers(out) and not temp_leftovers(tmp_path)

    run = tmp_path / "sst2"
    run_script("zo_fine_tuner.sh", {"MODEL": str(tiny_llama_dir), "TASK": "SST2", "TRAIN_MODE": "zo_fine_tuner",
                                    "LOAD_MLP_PATH": str(bank_path), "STEPS": "2", "EVAL_STEPS": "2", "TRAIN": "8",
                                    "DEV": "4", "EVAL": "4", "BS": "2", "OUTPUT_DIR": str(run),
                                    "EXTRA_ARGS": "--threads 1"})
    metrics = read_json(run / "metrics.json")
    assert metrics["task"] == "SST2" and metrics["steps"] == 2 and metrics["status"] == "completed"
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert read_json(run / "config.json")["bank_base_model"] == tiny_llama_dir.name


def test_l2l_script_applies_upstreams_accumulation_case_for_multirc(tmp_path, tiny_llama_dir):
    # upstream's l2l.sh: MultiRC runs micro-batches of 2, BS/2 of them per step; GA set by hand wins
    common = {"MODEL": str(tiny_llama_dir), "TASK": "MultiRC", "EPOCH": "1", "TRAIN": "8", "DEV": "2", "EVAL": "2",
              "BS": "4", "MAX_STEPS": "1", "EXTRA_ARGS": "--threads 1 --progress False --max_length 200"}
    for name, env, micro, ga in (("case", {}, 2, 2), ("own", {"GA": "1"}, 4, 1),
                                 ("upstream", {"L2L_ACCUMULATION": "upstream"}, 2, 2)):
        out = tmp_path / name
        proc = run_script("l2l.sh", {**common, **env, "OUTPUT_DIR": str(out),
                                     "SAVE_MLP_PATH": str(tmp_path / f"{name}.safetensors")})
        config = read_json(out / "config.json")
        assert (config["per_device_train_batch_size"], config["gradient_accumulation_steps"]) == (micro, ga), name
        assert config["l2l_accumulation"] == env.get("L2L_ACCUMULATION", "batch")
        assert config["step_batch_size"] == (2 if name == "upstream" else 4)
        assert read_json(out / "summary.json")["steps"] == 1
        assert ("Gradient accumulation: 2 micro-batches of 2" in proc.stdout) == (ga == 2)
