"""zo.recipes.rebuild: a finished run's evaluated weights come back from its step log alone, and its test split
is scored again only when the result matches metrics.json."""
import json

import pytest
import torch

from conftest import SHARED_DATA
from run_helpers import assert_same_weights, read_jsonl, requires_shared_data, snapshot, weights_differ
from zo.init_bank import init_bank
from zo.loop import BEST_STATE_FILE, load_weights
from zo.models import load_model
from zo.recipes.finetune import FineTuneConfig, fine_tune
from zo.recipes.rebuild import RebuildError, main, rebuild, rescore_test

pytestmark = requires_shared_data


def _finished_run(tmp_path, model_dir, train_mode, **overrides):
    out = tmp_path / train_mode
    settings = dict(task_name="SST2", model_name=str(model_dir), train_mode=train_mode, data_dir=str(SHARED_DATA),
                    output_dir=str(out), max_steps=6, eval_steps=2, num_train=16, num_dev=4, num_eval=6,
                    per_device_train_batch_size=2, threads=1, progress=False, learning_rate=1e-3)
    return out, fine_tune(FineTuneConfig(**{**settings, **overrides}))


@pytest.mark.parametrize("train_mode", ["mezo", "zo_fine_tuner"])
def test_the_rebuilt_weights_are_the_evaluated_ones_and_the_rescore_matches(tmp_path, tiny_llama_dir, train_mode):
    overrides = {}
    if train_mode == "zo_fine_tuner":
        bank = tmp_path / "bank.safetensors"
        init_bank(str(tiny_llama_dir), bank, seed=3)
        overrides["load_mlp_path"] = str(bank)
    out, metrics = _finished_run(tmp_path, tiny_llama_dir, train_mode, **overrides)
    assert metrics["best_step"] in (2, 4, 6)

    rebuilt = rebuild(out, threads=1)
    assert rebuilt.step == metrics["best_step"]
    best, _ = load_model(str(tiny_llama_dir))
    load_weights(best, out / BEST_STATE_FILE)
    assert_same_weights(rebuilt.model, snapshot(best))  # bit for bit, from the log alone
    pretrained, _ = load_model(str(tiny_llama_dir))
    assert weights_differ(rebuilt.model, snapshot(pretrained))  # the replay did move them

    written = (out / "test_predictions.jsonl").read_text()
    (out / "test_predictions.jsonl").unlink()
    assert rescore_test(out, threads=1) == metrics["test"]
    assert (out / "test_predictions.jsonl").read_text() == written


def test_a_rescore_that_disagrees_with_metrics_json_writes_nothing(tmp_path, tiny_llama_dir):
    out, metrics = _finished_run(tmp_path, tiny_llama_dir, "mezo")
    (out / "test_predictions.jsonl").unlink()
    recorded = json.loads((out / "metrics.json").read_text())
    recorded["test"]["accuracy"] = metrics["test"]["accuracy"] + 1 / 6  # one example more than measured
    (out / "metrics.json").write_text(json.dumps(recorded))
    with pytest.raises(RebuildError, match="not written"):
        rescore_test(out, threads=1)
    assert not (out / "test_predictions.jsonl").exists()
    # the CLI says so and exits 1; a folder without a run is one more clear error, not a crash
    assert main([str(out), str(tmp_path / "nothing"), "--rescore_test", "--threads", "1"]) == 1
    with pytest.raises(RebuildError, match="holds no finished fine-tuning run"):  # not "no test result"
        rescore_test(tmp_path / "nothing")


def test_the_cli_reports_a_device_it_cannot_use_and_goes_on(tmp_path, tiny_llama_dir, caplog):
    out, _ = _finished_run(tmp_path, tiny_llama_dir, "mezo", max_steps=2, eval_steps=0)
    assert main([str(out), "--rescore_test", "--skip_done", "--save_model", str(tmp_path / "m"),
                 "--device", "no-such-device", "--threads", "1"]) == 1
    assert any("no-such-device" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")


def test_a_method_without_replay_is_refused(tmp_path, tiny_llama_dir):
    out, _ = _finished_run(tmp_path, tiny_llama_dir, "mezo_adam", max_steps=2, eval_steps=0)
    with pytest.raises(RebuildError, match="cannot replay"):
        rebuild(out, threads=1)


def test_the_cli_saves_the_weights_of_any_step(tmp_path, tiny_llama_dir):
    out, _ = _finished_run(tmp_path, tiny_llama_dir, "mezo")
    assert main([str(out), "--save_model", str(tmp_path / "at3"), "--step", "3", "--threads", "1"]) == 0
    saved, _ = load_model(str(tmp_path / "at3"))
    assert_same_weights(saved, snapshot(rebuild(out, step=3, threads=1).model))
    steps = [r["step"] for r in read_jsonl(out / "train_log.jsonl") if r.get("kind") == "step"]
    assert steps == list(range(6))
    with pytest.raises(RebuildError, match=r"steps 0..6 exactly once \(the run took 6 steps\)"):  # beyond the run
        rebuild(out, step=7, threads=1)


def test_a_run_whose_noise_was_drawn_elsewhere_is_refused(tmp_path, tiny_llama_dir):
    """config.json records how z was drawn (zo.noise.noise_signature); a run drawn with another GPU's grid, or
    resumed on one part-way (`a -> b`), cannot be replayed here."""
    out, _ = _finished_run(tmp_path, tiny_llama_dir, "mezo", max_steps=2, eval_steps=0)
    config = json.loads((out / "config.json").read_text())
    assert config["noise_signature"].startswith("cpu ")
    for recorded in ("cuda grid 864", f"{config['noise_signature']} -> cuda grid 864"):
        (out / "config.json").write_text(json.dumps({**config, "noise_signature": recorded}))
        with pytest.raises(RebuildError, match="would give other weights"):
            rebuild(out, threads=1)


@pytest.mark.parametrize("train_mode", ["mezo", "zo_fine_tuner"])
def test_trainable_blocks_trains_only_the_matching_tensors_and_rebuilds_them(tmp_path, tiny_llama_dir, train_mode):
    overrides = {"trainable_blocks": r"layers\.1\.mlp\."}
    if train_mode == "zo_fine_tuner":
        bank = tmp_path / "bank.safetensors"
        init_bank(str(tiny_llama_dir), bank, seed=3)
        overrides["load_mlp_path"] = str(bank)
    out, metrics = _finished_run(tmp_path, tiny_llama_dir, train_mode, **overrides)
    best, _ = load_model(str(tiny_llama_dir))
    load_weights(best, out / BEST_STATE_FILE)
    pretrained, _ = load_model(str(tiny_llama_dir))
    before = dict(pretrained.named_parameters())
    moved = {name for name, p in best.named_parameters() if not torch.equal(p, before[name])}
    assert moved and all(".layers.1.mlp." in name for name in moved), moved
    rebuilt = rebuild(out, threads=1)
    assert_same_weights(rebuilt.model, snapshot(best))
