"""The fine-tuning recipe from Python: files, best-state selection, run names, bad input, NaN stops."""
import json
import math
import os
from pathlib import Path

import pytest
import torch

import tasks
import zo.recipes.finetune
from conftest import SHARED_DATA
from run_helpers import (assert_same_weights, read_json, read_jsonl, requires_shared_data, snapshot, temp_leftovers,
                         weights_differ)
from zo.blocks import parameter_blocks
from zo.estimator import ZOConfig, ZOOptimizer
from zo.recipes.finetune import FineTuneConfig, example_digest, fine_tune
from zo.init_bank import init_bank
from zo.loop import BEST_STATE_FILE, load_weights
from zo.models import load_model
from zo.noise import NoiseSource
from zo.pertnn import BankMismatchError
from zo.sigma import ConstantSigma

pytestmark = requires_shared_data


def _config(model_dir, out, **overrides) -> FineTuneConfig:
    base = dict(task_name="SST2", model_name=str(model_dir), train_mode="mezo", data_dir=str(SHARED_DATA),
                output_dir=str(out) if out is not None else None, max_steps=2, eval_steps=0, num_train=8,
                num_dev=2, num_eval=2, per_device_train_batch_size=2, threads=1, progress=False)
    base.update(overrides)
    return FineTuneConfig(**base)


@pytest.fixture
def captured_model(monkeypatch):
    """The model fine_tune loads, kept for inspection after the run."""
    seen = {}

    def capture(*args, **kwargs):
        model, tokenizer = load_model(*args, **kwargs)
        seen["model"] = model
        return model, tokenizer

    monkeypatch.setattr(zo.recipes.finetune, "load_model", capture)
    return seen


def test_fine_tune_from_python_with_nested_bank_path(tmp_path, tiny_llama_dir, monkeypatch):
    # the bank lives in a nested folder, as learned_finetuner/x.safetensors; no output_dir: the default run name
    bank = tmp_path / "learned_finetuner" / "sub" / "x.safetensors"
    bank.parent.mkdir(parents=True)
    init_bank(str(tiny_llama_dir), bank, seed=1)
    monkeypatch.chdir(tmp_path)
    config = _config(tiny_llama_dir, None, train_mode="zo_fine_tuner", load_mlp_path="learned_finetuner/sub/x.safetensors",
                     max_steps=2, eval_steps=1)
    metrics = fine_tune(config)

    runs = [p for p in (tmp_path / "result").iterdir()]
    assert len(runs) == 1 and runs[0].is_dir()  # one folder directly under result/: no stray separators
    out = runs[0]
    assert Path(config.default_output_dir()) == Path("result") / out.name
    assert "/" not in out.name and "\\" not in out.name and "x" in out.name
    assert read_json(out / "metrics.json") == json.loads(json.dumps(metrics))
    assert metrics["task"] == "SST2" and metrics["train_mode"] == "zo_fine_tuner" and metrics["steps"] == 2
    assert 0.0 <= metrics["dev"]["accuracy"] <= 1.0 and 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert read_json(out / "config.json")["output_dir"] == str(Path("result") / out.name)
    assert len([r for r in read_jsonl(out / "train_log.jsonl") if "loss_plus" in r]) == 2
    # the test split's per-example file: one row per example, in order, its scores averaging to the metric,
    # and none of its lists left in metrics.json
    rows = read_jsonl(out / "test_predictions.jsonl")
    assert [r["index"] for r in rows] == list(range(metrics["test"]["num_examples"]))
    test = tasks.sample_splits(tasks.get_task("SST2", str(SHARED_DATA)), 8, 2, 2, config.train_set_seed).test
    assert all(r["score"] == float(r["prediction"] == s.correct) and "gold" not in r for r, s in zip(rows, test))
    # each example's digest (not its text), so that two runs can check they scored the same examples
    assert [r["example"] for r in rows] == [example_digest(s) for s in test] and len({r["example"] for r in rows}) == 2
    assert sum(r["score"] for r in rows) / len(rows) == pytest.approx(metrics["test"]["accuracy"])
    assert set(metrics["test"]) == {"accuracy", "num_examples"}


@pytest.mark.parametrize("bank", ["learned_finetuner/opt-13b_copa.pth", "/abs/dir/learned_finetuner/a b/x.y.safetensors",
                                  "..\\win\\bank.safetensors", "bank.safetensors"])
def test_default_output_dir_is_one_component_under_result(tiny_llama_dir, bank):
    config = FineTuneConfig(model_name=str(tiny_llama_dir), load_mlp_path=bank)
    out = Path(config.default_output_dir())
    assert out.parent == Path("result")
    assert os.sep not in out.name and "/" not in out.name and "\\" not in out.name and ".." not in out.name
    assert tiny_llama_dir.name in out.name


def test_best_state_is_kept_and_restored(tmp_path, tiny_llama_dir, captured_model, monkeypatch):
    # dev loss every step; scripted so that the best one (step 2) is neither the first nor the last, and ties
    # with a later one (step 3): the first state reaching it is kept (a strict <, as HF's best-model logic)
    scripted = iter([3.0, 1.0, 1.0, 4.0])
    real_dev_loss = zo.recipes.finetune._mean_example_loss  # the dev loss (per example, as upstream)
    monkeypatch.setattr(zo.recipes.finetune, "_mean_example_loss", lambda *a: (real_dev_loss(*a), next(scripted))[1])
    out = tmp_path / "run"
    lr, eps = 1e-2, 1e-2
    metrics = fine_tune(_config(tiny_llama_dir, out, max_steps=4, eval_steps=1, learning_rate=lr, zo_eps=eps,
                                train_loss_subset=0))

    log = read_jsonl(out / "train_log.jsonl")
    dev = [(r["step"], r["dev_loss"]) for r in log if "dev_loss" in r]
    assert [s for s, _ in dev] == [1, 2, 3, 4]
    best_step, best_loss = min(dev, key=lambda x: x[1])
    assert (metrics["best_step"], metrics["best_dev_loss"], metrics["dev"]["loss"]) == (best_step, best_loss, best_loss)
    assert best_step == 2

    model = captured_model["model"]
    saved = snapshot(model)
    load_weights(model, out / BEST_STATE_FILE)
    assert_same_weights(model, saved)  # the weights after the run are the saved best state

    # ... and that state is exactly theta after 2 steps: replay the logged steps 0 and 1 from theta_0
    fresh, _ = load_model(tiny_llama_dir)
    theta0 = snapshot(fresh)
    blocks = parameter_blocks(fresh)
    replayer = ZOOptimizer(fresh, ConstantSigma(blocks), ZOConfig(lr=lr, eps=eps, total_steps=4), blocks=blocks,
                           noise=NoiseSource(1))
    for record in [r for r in log if "loss_plus" in r][:best_step]:
        replayer.replay(record)
    assert_same_weights(fresh, saved)
    assert weights_differ(saved, theta0)


@pytest.mark.parametrize("perturbation", ["virtual", "inplace"])
def test_nan_loss_stops_and_keeps_last_good_state(tmp_path, tiny_llama_dir, captured_model, monkeypatch, perturbation):
    k = 2  # steps 0 and 1 are good; the first loss of step 2 is NaN
    real_loss = tasks.batch_loss
    calls = {"n": 0}
    before_nan = {}

    def loss(model, batch):
        calls["n"] += 1
        if calls["n"] <= 2 * k:
            return real_loss(model, batch)
        if not before_nan and perturbation == "virtual":  # virtual: theta itself is never written in a forward
            before_nan.update(snapshot(captured_model["model"]))
        return real_loss(model, batch) * float("nan")  # the model still runs: a NaN from the forward

    real_example_losses = tasks.example_losses

    def example_losses(model, batch, **kwargs):  # the dev loss: NaN too once the model has gone
        losses = real_example_losses(model, batch, **kwargs)
        return losses * float("nan") if calls["n"] > 2 * k else losses

    monkeypatch.setattr(tasks, "batch_loss", loss)
    monkeypatch.setattr(tasks, "example_losses", example_losses)
    out = tmp_path / "run"
    metrics = fine_tune(_config(tiny_llama_dir, out, max_steps=5, eval_steps=0, learning_rate=1e-2, zo_eps=1e-2,
                                perturbation=perturbation))
    assert metrics["status"].startswith("stopped") and "non-finite" in metrics["status"]
    assert metrics["steps"] == k
    # the NaN step's two forwards and one final dev batch: a loop that went on would call the loss again
    assert calls["n"] == 2 * (k + 1) + 1
    on_disk = read_json(out / "metrics.json")
    assert on_disk["status"] == metrics["status"] and on_disk["steps"] == k
    log = read_jsonl(out / "train_log.jsonl")  # every line is complete JSON
    assert [r["step"] for r in log if "loss_plus" in r] == list(range(k))
    assert not temp_leftovers(out)
    assert "best_model.safetensors" not in os.listdir(out)  # the NaN dev loss is never "best"

    model = captured_model["model"]
    if perturbation == "virtual":
        assert_same_weights(model, before_nan)
    else:
        # rebuild theta after k steps by replay; the in-place restore after the NaN is the only rounding
        fresh, _ = load_model(tiny_llama_dir)
        blocks = parameter_blocks(fresh)
        replayer = ZOOptimizer(fresh, ConstantSigma(blocks), ZOConfig(lr=1e-2, eps=1e-2, perturbation="inplace"),
                               blocks=blocks, noise=NoiseSource(1))
        for record in [r for r in log if "loss_plus" in r]:
            replayer.replay(record)
        for name, tensor in fresh.state_dict().items():
            torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=1e-6)


COPA_ROW = {"premise": "P.", "choice1": "A.", "choice2": "B.", "question": "cause", "label": 0, "idx": 0}


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _bad_inputs(tmp_path: Path, model_dir: Path, opt_bank: Path):
    only_train = tmp_path / "only_train"
    _write_jsonl(only_train / "Copa" / "train.jsonl", [COPA_ROW] * 4)
    malformed = tmp_path / "malformed"
    _write_jsonl(malformed / "Copa" / "train.jsonl", [COPA_ROW, {k: v for k, v in COPA_ROW.items() if k != "premise"}])
    _write_jsonl(malformed / "Copa" / "val.jsonl", [COPA_ROW])
    return {
        "unknown task": (dict(task_name="SST3"), ValueError, ["unknown task 'SST3'", "SST2"]),
        "unknown train mode": (dict(train_mode="adam"), ValueError, ["unknown train_mode 'adam'", "mezo"]),
        "zo_fine_tuner without bank": (dict(train_mode="zo_fine_tuner"), ValueError, ["needs a PertNN bank",
                                                                                      "LOAD_MLP_PATH"]),
        "missing bank file": (dict(train_mode="zo_fine_tuner", load_mlp_path=str(tmp_path / "nope.safetensors")),
                              FileNotFoundError, ["PertNN bank not found", "nope.safetensors"]),
        "missing data folder": (dict(data_dir=str(tmp_path / "no_data")), FileNotFoundError,
                                ["data folder does not exist", "no_data"]),
        "missing task file": (dict(task_name="Copa", data_dir=str(only_train)), FileNotFoundError,
                              ["val.jsonl", str(only_train / "Copa")]),
        "malformed record": (dict(task_name="Copa", data_dir=str(malformed), num_train=1, num_dev=1), ValueError,
                             ["train.jsonl:2", "'premise'"]),
        "bank for another architecture": (dict(train_mode="zo_fine_tuner", load_mlp_path=str(opt_bank)),
                                          BankMismatchError, ["does not match", "model.embed_tokens.weight",
                                                              "model.decoder.embed_tokens.weight", "tiny-opt"]),
        "bank for another architecture, some tensors frozen": (
            dict(train_mode="zo_fine_tuner", load_mlp_path=str(opt_bank), trainable_blocks="mlp"),
            BankMismatchError, ["does not match", "model.decoder.embed_tokens.weight"]),
        "trainable blocks matching nothing": (dict(trainable_blocks="no_such"), ValueError,
                                              ["matches no parameter", "model.embed_tokens.weight"]),
        "trainable blocks not a regex": (dict(trainable_blocks="mlp("), ValueError, ["not a regular expression"]),
        "missing model folder": (dict(model_name=str(tmp_path / "no_model")), FileNotFoundError,
                                 ["model path does not exist", "no_model"]),
        "model folder without config": (dict(model_name=str(tmp_path)), FileNotFoundError, ["has no config.json"]),
    }


BAD_INPUT_CASES = ["unknown task", "unknown train mode", "zo_fine_tuner without bank", "missing bank file",
                   "missing data folder", "missing task file", "malformed record", "bank for another architecture",
                   "bank for another architecture, some tensors frozen", "trainable blocks matching nothing",
                   "trainable blocks not a regex", "missing model folder", "model folder without config"]


@pytest.fixture(scope="module")
def opt_bank(tiny_model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("optbank") / "opt.safetensors"
    init_bank(str(tiny_model_dir("opt")), path)
    return path


@pytest.mark.parametrize("case", BAD_INPUT_CASES)
def test_bad_input_is_one_clear_error(tmp_path, tiny_llama_dir, opt_bank, case):
    overrides, error, fragments = _bad_inputs(tmp_path, tiny_llama_dir, opt_bank)[case]
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text('{"from": "an earlier run"}')
    with pytest.raises(error) as info:
        fine_tune(_config(tiny_llama_dir, out, **overrides))
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    # bad input never costs an earlier run its results
    assert read_json(out / "metrics.json") == {"from": "an earlier run"}
    assert sorted(os.listdir(out)) == ["metrics.json"]


@pytest.mark.parametrize("task, ok", [("squad", True), ("DROP", True), ("SQuAD", True), ("SST2", False)])
def test_non_diff_task_check_is_case_insensitive_like_task_names(task, ok):
    config = FineTuneConfig(task_name=task, train_mode="mezo", non_diff=True)
    if ok:
        config.validate()
    else:
        with pytest.raises(ValueError, match="non_diff"):
            config.validate()


def test_train_loss_is_measured_unperturbed_on_a_fixed_subset(tmp_path, tiny_llama_dir, captured_model, monkeypatch):
    # the subset loss comes with every dev line; final_train_loss is the one at the best-by-dev step
    scripted = iter([3.0, 1.0, 2.0])  # dev losses: best at step 2, not the last step (3)
    real_mean_loss, real_dev_loss = zo.recipes.finetune._mean_loss, zo.recipes.finetune._mean_example_loss
    dev_calls = []

    def dev_loss(*args):  # the dev loss (per example, as upstream); the subset loss goes through _mean_loss
        dev_calls.append(real_dev_loss(*args))
        return next(scripted)

    monkeypatch.setattr(zo.recipes.finetune, "_mean_example_loss", dev_loss)
    out = tmp_path / "run"
    metrics = fine_tune(_config(tiny_llama_dir, out, max_steps=3, eval_steps=1, learning_rate=1e-1, zo_eps=1e-2,
                                train_loss_subset=4))
    lines = [r for r in read_jsonl(out / "train_log.jsonl") if "dev_loss" in r]
    assert [r["step"] for r in lines] == [1, 2, 3] and len(dev_calls) == 3
    subset_losses = [r["train_eval_loss"] for r in lines]
    assert len(set(subset_losses)) == 3  # lr 0.1 moves the weights: the subset loss tracks the current state
    assert metrics["final_train_loss"] == subset_losses[1]  # best dev state (step 2), the one tested
    assert metrics["last_step_train_loss"] == subset_losses[2]
    steps = [r for r in read_jsonl(out / "train_log.jsonl") if "loss_plus" in r]
    assert metrics["mean_perturbed_loss_last10"] == pytest.approx(sum(r["loss_plus"] for r in steps) / 3)

    # the subset loss is the unperturbed loss of that state: recompute it on the restored best weights
    model = captured_model["model"]
    task = tasks.get_task("SST2", str(SHARED_DATA))
    splits = tasks.sample_splits(task, 8, 2, 2, 43)
    subset = tasks.sampling.seeded_subset(splits.train, 43, 4)
    from zo.models import load_model as load
    _, tokenizer = load(str(tiny_llama_dir))
    batches = tasks.TrainBatches(subset, task, tokenizer, 8, seed=0, as_classification=True, max_length=2048)
    assert real_mean_loss(model, lambda b: tasks.batch_loss(model, b), batches.epoch(shuffle=False)) == \
        pytest.approx(subset_losses[1], rel=1e-6)


def test_train_loss_subset_without_dev_set_is_the_last_state(tmp_path, tiny_llama_dir):
    metrics = fine_tune(_config(tiny_llama_dir, tmp_path / "run", num_dev=0, max_steps=2, train_loss_subset=3))
    lines = [r for r in read_jsonl(tmp_path / "run" / "train_log.jsonl") if "train_eval_loss" in r]
    assert [r["step"] for r in lines] == [2] and "dev_loss" not in lines[0]
    assert metrics["final_train_loss"] == metrics["last_step_train_loss"] == lines[0]["train_eval_loss"]


def test_only_train_option_false_reaches_the_training_dev_and_train_subset_losses(tmp_path, tiny_llama_dir):
    """--only_train_option False (MeZO's flag) scores the whole sequence everywhere a loss is taken; a loss site
    left on the option-only default would give the same number in both runs."""
    runs = {}
    for only_option in (True, False):
        out = tmp_path / f"only_option_{only_option}"
        metrics = fine_tune(_config(tiny_llama_dir, out, max_steps=1, train_as_classification=False,
                                    only_train_option=only_option))
        (step,) = [r for r in read_jsonl(out / "train_log.jsonl") if "loss_plus" in r]
        runs[only_option] = (step["loss_plus"], metrics["best_dev_loss"], metrics["final_train_loss"])
    for option_only, whole in zip(runs[True], runs[False]):
        assert math.isfinite(option_only) and math.isfinite(whole) and option_only != whole
