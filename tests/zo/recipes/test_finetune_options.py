"""Run options of the fine-tuning recipe: a task from a spec file, eval-only mode, --save_steps as the
evaluation period, generation options, and upstream flags accepted, ignored or refused by name."""
import json
import math
import os

import pytest

import run_zo_fine_tuner
import tasks
from conftest import SHARED_DATA
from run_helpers import read_json, read_jsonl, requires_shared_data, run_script
from custom_task_helpers import ROWS, SENTIMENT_SPEC, write_task
from zo.cli import UpstreamFlagError
from zo.recipes.finetune import FineTuneConfig, fine_tune

SMALL = dict(train_mode="mezo", max_steps=2, eval_steps=0, num_train=6, num_dev=2, num_eval=2,
             per_device_train_batch_size=2, threads=1, progress=False)


def test_task_from_a_jsonl_file_fine_tunes_end_to_end(tmp_path, tiny_llama_dir):
    spec = write_task(tmp_path / "data", SENTIMENT_SPEC, ROWS)
    out = tmp_path / "run"
    metrics = fine_tune(FineTuneConfig(task_file=str(spec), model_name=str(tiny_llama_dir), output_dir=str(out),
                                       **SMALL))
    assert metrics["task"] == "Reviews" and metrics["steps"] == 2 and metrics["status"] == "completed"
    assert metrics["test"]["num_examples"] == 2 and 0 <= metrics["test"]["accuracy"] <= 1
    assert read_json(out / "config.json")["task_name"] == "Reviews"
    assert len([r for r in read_jsonl(out / "train_log.jsonl") if "loss_plus" in r]) == 2


@requires_shared_data
def test_task_from_a_jsonl_file_runs_through_the_launcher(tmp_path, tiny_llama_dir):
    spec = write_task(tmp_path / "data", SENTIMENT_SPEC, ROWS)
    out = tmp_path / "run"
    run_script("zo_fine_tuner.sh", {"MODEL": str(tiny_llama_dir), "TASK": "custom", "CUSTOM_TASK": str(spec),
                                    "TRAIN_MODE": "mezo", "STEPS": "1", "EVAL_STEPS": "1", "TRAIN": "6", "DEV": "2",
                                    "EVAL": "2", "BS": "2", "OUTPUT_DIR": str(out), "EXTRA_ARGS": "--threads 1"})
    metrics = read_json(out / "metrics.json")
    assert metrics["task"] == "Reviews" and metrics["steps"] == 1 and "accuracy" in metrics["test"]
    # without TASK=custom the file would be ignored (and SST-2 run): refused instead
    proc = run_script("zo_fine_tuner.sh", {"MODEL": str(tiny_llama_dir), "CUSTOM_TASK": str(spec),
                                           "OUTPUT_DIR": str(tmp_path / "other")}, check=False)
    assert proc.returncode == 2 and "CUSTOM_TASK is read with TASK=custom only (TASK=SST2)" in proc.stderr
    assert not (tmp_path / "other").exists()


@requires_shared_data
@pytest.mark.parametrize("how", ["train_mode none", "eval_only", "--trainer none"])
def test_eval_only_evaluates_dev_and_test_and_writes_no_weights(tmp_path, tiny_llama_dir, how):
    out = tmp_path / "run"
    args = ["--model_name", str(tiny_llama_dir), "--task_name", "SST2", "--data_dir", str(SHARED_DATA),
            "--num_train", "4", "--num_dev", "3", "--num_eval", "5", "--threads", "1", "--progress", "False",
            "--output_dir", str(out)]
    args += {"train_mode none": ["--train_mode", "none"], "eval_only": ["--eval_only"],
             "--trainer none": ["--trainer", "none"]}[how]
    metrics = run_zo_fine_tuner.main(args)  # zo_fine_tuner (the default mode) needs no bank when not training
    assert metrics["steps"] == 0 and metrics["train_mode"] == "none" and "without training" in metrics["status"]
    assert metrics["dev"]["num_examples"] == 3 and metrics["test"]["num_examples"] == 5
    # no weights; the test split per example; the losses of the weights as loaded, logged as step 0
    assert sorted(os.listdir(out)) == ["config.json", "metrics.json", "test_predictions.jsonl", "train_log.jsonl"]
    assert metrics["best_step"] == 0 and metrics["dev"]["loss"] == metrics["best_dev_loss"]
    assert math.isfinite(metrics["final_train_loss"])


@requires_shared_data
def test_eval_only_losses_are_those_a_run_that_does_not_move_sees(tmp_path, tiny_llama_dir):
    """MeZO at LR 0 leaves the weights bit for bit as loaded (the virtual perturbation is never written): its
    evaluation after a step must give the zero-shot run's dev and train-subset losses exactly."""
    common = ["--model_name", str(tiny_llama_dir), "--task_name", "SST2", "--data_dir", str(SHARED_DATA),
              "--num_train", "8", "--num_dev", "3", "--num_eval", "2", "--threads", "1", "--progress", "False",
              "--train_loss_subset", "4"]
    zero_shot = run_zo_fine_tuner.main(common + ["--train_mode", "none", "--output_dir", str(tmp_path / "none")])
    still = run_zo_fine_tuner.main(common + ["--train_mode", "mezo", "--learning_rate", "0", "--max_steps", "1",
                                             "--eval_steps", "1", "--per_device_train_batch_size", "2",
                                             "--output_dir", str(tmp_path / "lr0")])
    assert zero_shot["best_dev_loss"] == still["best_dev_loss"]
    assert zero_shot["final_train_loss"] == still["final_train_loss"]
    [line] = [json.loads(row) for row in (tmp_path / "none" / "train_log.jsonl").read_text().splitlines()]
    assert line["step"] == 0 and line["dev_loss"] == zero_shot["best_dev_loss"]
    assert line["train_eval_loss"] == zero_shot["final_train_loss"]
    # a finished evaluation is not redone on resume: the same metrics come back and the log keeps its one line
    again = run_zo_fine_tuner.main(common + ["--train_mode", "none", "--output_dir", str(tmp_path / "none"),
                                             "--resume", "True"])
    assert again == zero_shot
    assert len((tmp_path / "none" / "train_log.jsonl").read_text().splitlines()) == 1


@requires_shared_data
def test_eval_only_from_the_launcher(tmp_path, tiny_llama_dir):
    out = tmp_path / "run"
    run_script("zo_fine_tuner.sh", {"MODEL": str(tiny_llama_dir), "TASK": "SST2", "TRAIN_MODE": "none", "DEV": "2",
                                    "EVAL": "3", "OUTPUT_DIR": str(out), "EXTRA_ARGS": "--threads 1"})
    metrics = read_json(out / "metrics.json")
    assert metrics["steps"] == 0 and metrics["test"]["num_examples"] == 3
    assert not (out / "best_model.safetensors").exists()


@requires_shared_data
def test_save_steps_is_the_evaluation_period_as_upstream(tmp_path, tiny_llama_dir):
    out = tmp_path / "run"
    run_zo_fine_tuner.main(["--model_name", str(tiny_llama_dir), "--task_name", "SST2", "--train_mode", "mezo",
                            "--data_dir", str(SHARED_DATA), "--max_steps", "4", "--eval_steps", "3",
                            "--save_steps", "2", "--num_train", "6", "--num_dev", "2", "--num_eval", "2",
                            "--per_device_train_batch_size", "2", "--threads", "1", "--progress", "False",
                            "--output_dir", str(out)])
    assert [r["step"] for r in read_jsonl(out / "train_log.jsonl") if "dev_loss" in r] == [2, 4]
    assert read_json(out / "config.json")["eval_period"] == 2


@pytest.mark.parametrize("argv, fragment", [
    (["--lora"], "--lora True: LoRA is not implemented"),
    (["--load_int8", "True"], "use --load_float16 True"),
    (["--result_file", "x.json"], "use --output_dir"),
    (["--fp16"], "with --load_float16 True"),
])
def test_unimplemented_upstream_flags_are_refused_by_name(argv, fragment):
    with pytest.raises(UpstreamFlagError, match=fragment.replace("-", r"\-").replace(".", r"\.")):
        run_zo_fine_tuner.main(["--task_name", "SST2", *argv])


def test_upstream_defaults_and_bookkeeping_flags_are_accepted(monkeypatch):
    seen = {}
    monkeypatch.setattr(run_zo_fine_tuner, "fine_tune", lambda config: seen.setdefault("config", config))
    run_zo_fine_tuner.main(["--task_name", "SST2", "--trainer", "zo", "--lora", "False", "--only_train_option",
                            "True", "--gradient_accumulation_steps", "1", "--save_strategy", "steps",
                            "--logging_steps", "10", "--load_best_model_at_end", "--overwrite_output_dir",
                            "--sampling", "--temperature", "0.5", "--num_beams", "2", "--top_k", "3", "--top_p",
                            "0.8", "--eos_token", ".", "--cut_at_newline", "False"])
    config = seen["config"]
    assert not config.eval_only and config.save_steps is None
    assert config.generation_options() == tasks.GenerationOptions(
        sampling=True, temperature=0.5, num_beams=2, top_k=3, top_p=0.8, eos_token=".", cut_at_newline=False)


@requires_shared_data
def test_generation_options_reach_evaluation(tmp_path, tiny_llama_dir, monkeypatch):
    seen = []
    real = tasks.evaluate_generation

    def spy(*args, **kwargs):
        seen.append(args[6] if len(args) > 6 else kwargs["options"])
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks, "evaluate_generation", spy)
    fine_tune(FineTuneConfig(task_name="SQuAD", model_name=str(tiny_llama_dir), data_dir=str(SHARED_DATA),
                             output_dir=str(tmp_path / "run"), eval_only=True, num_dev=1, num_eval=1,
                             max_new_tokens=3, max_length=512, cut_at_newline=False, num_beams=2, threads=1,
                             progress=False))
    assert len(seen) == 2 and all(o.cut_at_newline is False and o.num_beams == 2 and o.max_new_tokens == 3
                                  for o in seen)


@requires_shared_data
def test_without_a_dev_set_the_final_state_is_evaluated(tmp_path, tiny_llama_dir, caplog):
    # audit item 9, declared: upstream would then select the checkpoint on the test set
    out = tmp_path / "run"
    metrics = fine_tune(FineTuneConfig(task_name="SST2", model_name=str(tiny_llama_dir), data_dir=str(SHARED_DATA),
                                       output_dir=str(out), **{**SMALL, "num_dev": 0, "eval_steps": 1}))
    assert metrics["best_step"] is None and "dev" not in metrics and metrics["steps"] == 2
    assert not (out / "best_model.safetensors").exists()
    assert any("no dev set" in r.getMessage() for r in caplog.records)


@requires_shared_data
def test_non_diff_allows_drop_and_turns_dev_selection_off(tmp_path, tiny_llama_dir):
    # audit item 8, declared: upstream allows SQuAD only and still selects by dev loss
    out = tmp_path / "run"
    metrics = fine_tune(FineTuneConfig(task_name="DROP", model_name=str(tiny_llama_dir), data_dir=str(SHARED_DATA),
                                       output_dir=str(out), non_diff=True, max_new_tokens=2, max_length=512,
                                       **{**SMALL, "eval_steps": 1, "num_train": 2, "num_dev": 1, "num_eval": 1}))
    assert metrics["best_step"] is None and "f1" in metrics["dev"] and "loss" not in metrics["dev"]
    assert not any("dev_loss" in r for r in read_jsonl(out / "train_log.jsonl"))


@requires_shared_data
def test_dev_loss_is_the_mean_of_per_example_losses_as_upstream(tmp_path, tiny_llama_dir):
    # audit item 4: upstream evaluates the dev loss at batch size 1. Here examples share a forward, each keeping
    # its own loss, so the batch size does not change it; Copa's LM loss is token-weighted per batch, so the
    # batch mean differs
    def dev_loss(mode, eval_batch_size):
        metrics = fine_tune(FineTuneConfig(task_name="Copa", model_name=str(tiny_llama_dir), data_dir=str(SHARED_DATA),
                                           output_dir=str(tmp_path / f"{mode}-{eval_batch_size}"), dev_loss=mode,
                                           eval_batch_size=eval_batch_size, **{**SMALL, "max_steps": 1, "num_dev": 4}))
        return metrics["best_dev_loss"]

    per_example = dev_loss("per_example", 4)
    assert per_example == pytest.approx(dev_loss("per_example", 1), rel=1e-6)
    assert per_example == pytest.approx(dev_loss("batch_mean", 1), rel=1e-6)  # batches of 1: both are upstream's
    assert dev_loss("batch_mean", 4) != pytest.approx(per_example, rel=1e-4)


def test_non_diff_is_for_the_generation_tasks_whatever_the_case_of_their_name():
    with pytest.raises(ValueError, match="--non_diff .* is for the generation tasks"):
        FineTuneConfig(task_name="SST2", train_mode="mezo", non_diff=True).validate()
    for name in ("SQuAD", "drop"):
        FineTuneConfig(task_name=name, train_mode="mezo", non_diff=True).validate()
    assert tasks.is_generation_task("squad") and not tasks.is_generation_task("Copa")


@requires_shared_data
def test_device_with_a_device_map_is_warned_unused(tmp_path, tiny_llama_dir, caplog):
    out = tmp_path / "run"
    metrics = fine_tune(FineTuneConfig(task_name="SST2", model_name=str(tiny_llama_dir), data_dir=str(SHARED_DATA),
                                       output_dir=str(out), device="cpu", device_map="auto", **SMALL))
    assert metrics["status"] == "completed"
    assert "--device cpu is not used: --device_map auto places the model" in caplog.messages
