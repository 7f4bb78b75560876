"""MeZO's --num_train_sets: N whole runs, set i sampled with train_set_seed + i, each in trainset<i>/, and the
per-set metrics with their mean and sd in metrics.json; resume set by set; bad values refused."""
import math
import random
import signal
import statistics
import sys

import pytest

import run_zo_fine_tuner
import tasks
import zo.recipes.finetune
from conftest import REPO_ROOT, SHARED_DATA
from run_helpers import read_json, requires_shared_data, run_cmd, run_script, temp_leftovers
from zo import distributed
from zo.recipes.finetune import FineTuneConfig, fine_tune, summarize_sets
from zo.run.folder import RunFolderError

TIMING = {"train_seconds", "total_seconds", "seconds", "train_cpu_seconds", "carried_train_seconds",
          "carried_train_cpu_seconds"}
KILL_AT = REPO_ROOT / "tests" / "zo" / "run" / "kill_at.py"


def _config(model_dir, out, **overrides) -> FineTuneConfig:
    base = dict(task_name="SST2", model_name=str(model_dir), train_mode="mezo", data_dir=str(SHARED_DATA),
                output_dir=str(out), max_steps=2, eval_steps=0, num_train=8, num_dev=2, num_eval=4,
                per_device_train_batch_size=2, learning_rate=1e-2, zo_eps=1e-2, threads=1, progress=False)
    base.update(overrides)
    return FineTuneConfig(**base)


def _untimed(value):
    """Without timings and provenance (a resumed set says from which step): what the run computed."""
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if k not in TIMING | {"resumed_from_step"}}
    if isinstance(value, list):
        return [_untimed(v) for v in value]
    return value


def _weights(path):
    from safetensors.torch import load_file

    return {k: v.numpy().tobytes() for k, v in load_file(path).items()}


@requires_shared_data
def test_each_train_set_is_a_whole_run_with_its_own_seed(tmp_path, tiny_llama_dir):
    out = tmp_path / "sets"
    metrics = fine_tune(_config(tiny_llama_dir, out, num_train_sets=3, train_set_seed=5))
    assert read_json(out / "metrics.json") == metrics
    assert metrics["status"] == "completed" and metrics["num_train_sets"] == 3
    assert metrics["train_set_seeds"] == [5, 6, 7] and read_json(out / "config.json")["train_set_seeds"] == [5, 6, 7]
    for i, entry in enumerate(metrics["sets"]):
        folder = out / f"trainset{i}"
        assert entry["train_set"] == i and entry["train_set_seed"] == 5 + i and entry["output_dir"] == folder.name
        sub_config, sub_metrics = read_json(folder / "config.json"), read_json(folder / "metrics.json")
        assert sub_config["train_set_seed"] == 5 + i and sub_config["num_train_sets"] is None
        assert {**entry, "task": "SST2"} == {"train_set": i, "train_set_seed": 5 + i, "output_dir": folder.name,
                                              **{k: v for k, v in sub_metrics.items() if k not in ("model",
                                                                                                   "train_mode")}}
        assert (folder / "best_model.safetensors").is_file()
    # the summary: mean and sample sd over the sets of every dev / test metric and of the losses
    summary = metrics["summary"]
    for split, name in (("test", "accuracy"), ("dev", "accuracy"), ("dev", "loss")):
        values = [s[split][name] for s in metrics["sets"]]
        assert summary[split][name] == {"mean": pytest.approx(statistics.mean(values)),
                                        "sd": pytest.approx(statistics.stdev(values)), "values": values}
    assert "num_examples" not in summary["test"]
    assert summary["best_dev_loss"]["values"] == [s["best_dev_loss"] for s in metrics["sets"]]
    assert len(set(summary["best_dev_loss"]["values"])) == 3  # three different train / dev samples

    # set 1 is exactly the run with --train_set_seed 6 alone: a fresh model, not the one trained on set 0
    alone = tmp_path / "alone"
    single = fine_tune(_config(tiny_llama_dir, alone, train_set_seed=6))
    assert _untimed(single) == _untimed(read_json(out / "trainset1" / "metrics.json"))
    assert _weights(alone / "best_model.safetensors") == _weights(out / "trainset1" / "best_model.safetensors")

    # a finished multi-set run is kept: refused without --resume, returned as it is with it
    with pytest.raises(RunFolderError, match="--resume"):
        fine_tune(_config(tiny_llama_dir, out, num_train_sets=3, train_set_seed=5))
    assert fine_tune(_config(tiny_llama_dir, out, num_train_sets=3, train_set_seed=5, resume=True)) == metrics
    with pytest.raises(RunFolderError, match="num_train_sets"):  # another N is another run
        fine_tune(_config(tiny_llama_dir, out, num_train_sets=2, train_set_seed=5, resume=True))


@requires_shared_data
def test_killed_multi_set_run_resumes_set_by_set_bit_exactly(tmp_path, tiny_llama_dir):
    def args(out, *extra):
        return ["--model_name", str(tiny_llama_dir), "--task_name", "SST2", "--train_mode", "mezo", "--data_dir",
                str(SHARED_DATA), "--output_dir", str(out), "--max_steps", "4", "--eval_steps", "2", "--num_train",
                "8", "--num_dev", "2", "--num_eval", "2", "--per_device_train_batch_size", "2", "--learning_rate",
                "1e-2", "--zo_eps", "1e-2", "--threads", "1", "--progress", "False", "--checkpoint_steps", "1",
                "--train_loss_subset", "0", "--num_train_sets", "3", *extra]

    reference = tmp_path / "reference"
    run_zo_fine_tuner.main(args(reference))
    # per set: 4 steps x 2 batch_loss calls (the dev loss goes through example_losses); kill inside set 1's steps
    kill_at = 8 + random.Random().randint(1, 8)
    out = tmp_path / "killed"
    proc = run_cmd([sys.executable, str(KILL_AT), "loss", str(kill_at), "run_zo_fine_tuner", *args(out)], check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert read_json(out / "trainset0" / "metrics.json")["status"] == "completed"
    assert not (out / "trainset1" / "metrics.json").exists() and not (out / "metrics.json").exists()
    with pytest.raises(RunFolderError, match="--resume"):
        run_zo_fine_tuner.main(args(out))
    run_zo_fine_tuner.main(args(out, "--resume"))
    assert _untimed(read_json(out / "metrics.json")) == _untimed(read_json(reference / "metrics.json")), kill_at
    for i in range(3):
        folder = f"trainset{i}"
        assert _weights(out / folder / "best_model.safetensors") == _weights(reference / folder / "best_model.safetensors")
        assert not (out / folder / "checkpoints").exists()
    assert not temp_leftovers(out)


@requires_shared_data
def test_evaluation_only_sets_share_one_demonstration_set_each(tmp_path, tiny_llama_dir, monkeypatch):
    seen = []
    real = tasks.evaluate

    def spy(*args, **kwargs):
        seen.append(kwargs.get("demonstrations"))
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks, "evaluate", spy)
    out = tmp_path / "icl"
    metrics = fine_tune(_config(tiny_llama_dir, out, train_mode="none", num_dev=0, num_eval=3, num_demos=2,
                                num_train_sets=2, train_set_seed=0))
    assert metrics["status"] == "completed" and [s["test"]["num_demos"] for s in metrics["sets"]] == [2, 2]
    assert [read_json(out / f"trainset{i}" / "config.json")["shared_demonstrations"] for i in (0, 1)] == [True, True]
    assert len(seen) == 2 and all(len(texts) == 3 and len(set(texts)) == 1 for texts in seen)
    pool = tasks.get_task("SST2", str(SHARED_DATA)).load_split("train")
    template = tasks.get_task("SST2", str(SHARED_DATA)).template
    for seed, texts in enumerate(seen):  # MeZO: set i's demonstrations are the first K of the pool permuted with i
        demos = tasks.sampling.seeded_subset(pool, seed, 2)
        assert texts[0] == tasks.encoding.demonstration_text(demos, template)
    assert seen[0][0] != seen[1][0]


@requires_shared_data
def test_launcher_num_train_sets(tmp_path, tiny_llama_dir):
    out = tmp_path / "run"
    proc = run_script("zo_fine_tuner.sh", {"MODEL": str(tiny_llama_dir), "TASK": "SST2", "TRAIN_MODE": "none",
                                           "DEV": "2", "EVAL": "3", "NUM_TRAIN_SETS": "2", "OUTPUT_DIR": str(out),
                                           "EXTRA_ARGS": "--threads 1"})
    assert "TRAIN_SETS=2" in proc.stdout
    metrics = read_json(out / "metrics.json")
    assert metrics["train_set_seeds"] == [43, 44] and len(metrics["sets"]) == 2
    assert set(metrics["summary"]["test"]) == {"accuracy"}


@pytest.mark.parametrize("value", [0, -2])
def test_bad_num_train_sets_is_refused_before_any_work(tmp_path, value):
    with pytest.raises(ValueError, match="--num_train_sets must be >= 1"):
        fine_tune(FineTuneConfig(train_mode="mezo", num_train_sets=value, output_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):  # argparse: not a number
        run_zo_fine_tuner.main(["--num_train_sets", "three"])


def test_cli_parses_num_train_sets(monkeypatch):
    seen = []
    monkeypatch.setattr(run_zo_fine_tuner, "fine_tune", seen.append)
    run_zo_fine_tuner.main(["--task_name", "SST2", "--num_train_sets", "5"])
    run_zo_fine_tuner.main(["--task_name", "SST2", "--num_train_sets", "None"])  # upstream's default
    assert [c.num_train_sets for c in seen] == [5, None]


@requires_shared_data
def test_bad_input_in_the_first_set_leaves_no_folder_behind(tmp_path, tiny_llama_dir):
    data = tmp_path / "data"
    (data / "SST2").mkdir(parents=True)  # no files: set 0 fails while reading its data
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError):
        fine_tune(_config(tiny_llama_dir, out, data_dir=str(data), num_train_sets=2))
    assert not out.exists()
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        fine_tune(_config(tiny_llama_dir, out, device="gpu", num_train_sets=2))
    assert not out.exists()


def test_data_parallel_multi_set_runs_are_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(distributed, "launched_world_size", lambda: 2)
    with pytest.raises(ValueError, match="one data-parallel run per --train_set_seed"):
        fine_tune(FineTuneConfig(train_mode="mezo", num_train_sets=2, output_dir=str(tmp_path / "out")))


def test_shared_demonstrations_need_num_demos():
    with pytest.raises(ValueError, match="--shared_demonstrations needs --num_demos"):
        FineTuneConfig(train_mode="none", shared_demonstrations=True).validate()


def test_summary_of_one_set_a_stopped_set_and_an_interrupted_run(tmp_path):
    folders = [tmp_path / "trainset0", tmp_path / "trainset1"]
    done = {"task": "SST2", "model": "m", "train_mode": "mezo", "status": "completed", "best_dev_loss": 0.5,
            "final_train_loss": 0.6, "test": {"accuracy": 0.75, "num_examples": 4}}
    one = summarize_sets([done], [43], folders[:1])
    assert one["summary"]["test"]["accuracy"] == {"mean": 0.75, "sd": None, "values": [0.75]}
    stopped = {**done, "status": "stopped: non-finite loss", "best_dev_loss": None, "test": {"accuracy": 0.25,
                                                                                          "num_examples": 4}}
    two = summarize_sets([done, stopped], [43, 44], folders)
    assert two["status"] == "completed" and two["sets_not_completed"] == [1]
    assert two["summary"]["test"]["accuracy"]["sd"] == pytest.approx(math.sqrt(0.125))
    assert "best_dev_loss" not in two["summary"] and "final_train_loss" in two["summary"]
    interrupted = summarize_sets([done, {**done, "status": "interrupted", "signal": 15}], [43, 44], folders)
    assert interrupted["status"] == "interrupted" and interrupted["signal"] == 15 and "summary" not in interrupted


def test_default_output_dir_names_the_sets(tiny_llama_dir):
    one = FineTuneConfig(model_name=str(tiny_llama_dir), train_mode="mezo").default_output_dir()
    sets = FineTuneConfig(model_name=str(tiny_llama_dir), train_mode="mezo", num_train_sets=5).default_output_dir()
    assert sets == one + "-sets5"
    assert zo.recipes.finetune.SET_FOLDER.format(2) == "trainset2"
