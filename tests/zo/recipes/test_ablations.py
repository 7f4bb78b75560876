"""The ablation switches end to end: L2L without resets (Table 2), a layer-wise bank in L2L and in
fine-tuning (Table 3), and the bank metadata the ablation tables read."""
import json
import os

import pytest

import zo.recipes.meta_train
from conftest import SHARED_DATA
from run_helpers import read_json, read_jsonl, requires_shared_data
from zo.pertnn import BankMismatchError, load_bank
from zo.recipes.finetune import FineTuneConfig, fine_tune
from zo.recipes.meta_train import L2LConfig, meta_train

pytestmark = requires_shared_data


def _l2l_config(model_dir, out, **overrides) -> L2LConfig:
    base = dict(task_name="Copa", model_name=str(model_dir), data_dir=str(SHARED_DATA), output_dir=str(out),
                num_train_epochs=3, epochs_per_restart=1, num_train=8, num_dev=4, num_eval=4,
                per_device_train_batch_size=4, lr_llm=1e-2, lr_mlp=1e-2, lr_update=1e-3, threads=1, progress=False)
    base.update(overrides)
    return L2LConfig(**base)


def test_without_reset_theta_is_never_reloaded_and_the_lr_decays_over_the_whole_run(tmp_path, tiny_llama_dir,
                                                                                   monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("reset=False must never reload theta_0")

    monkeypatch.setattr(zo.recipes.meta_train, "load_weights", never)
    out = tmp_path / "noreset"
    # epochs_per_restart=1 would reset twice in 3 epochs: reset=False overrides it
    summary = meta_train(_l2l_config(tiny_llama_dir, out, reset=False, need_normalization=False))
    assert summary["steps"] == 6 and summary["resets"] == 0 and summary["status"] == "completed"
    log = read_jsonl(out / "train_log.jsonl")
    assert not [r for r in log if "event" in r]
    lrs = [r["lr_llm"] for r in log]
    assert lrs == pytest.approx([1e-2 * (1 - k / 6) for k in range(6)])  # one linear horizon of 6 steps
    assert read_json(out / "config.json")["restart_period_steps"] == 6
    meta = load_bank(summary["bank"]).metadata
    assert (meta["reset"], meta["need_normalization"], meta["granularity"]) == ("false", "false", "block")


def test_layerwise_bank_meta_trains_fine_tunes_and_refuses_block_wise_use(tmp_path, tiny_llama_dir):
    out = tmp_path / "layer"
    summary = meta_train(_l2l_config(tiny_llama_dir, out, num_train_epochs=2, bank_granularity="layer"))
    assert summary["steps"] == 4 and summary["resets"] == 1
    bank = load_bank(summary["bank"])
    assert bank.block_names == ["non_layer", "layer.0", "layer.1"]
    meta = bank.metadata
    assert (meta["granularity"], meta["reset"], meta["need_normalization"]) == ("layer", "true", "true")
    assert json.loads(meta["hyperparameters"])["bank_granularity"] == "layer"

    # a layer-wise bank as the start of a block-wise run: a clear error before the run folder is touched
    again = tmp_path / "again"
    again.mkdir()
    (again / "train_log.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(BankMismatchError, match="layer-wise .*--bank_granularity block"):
        meta_train(_l2l_config(tiny_llama_dir, again, init_mlp_path=summary["bank"]))
    assert sorted(os.listdir(again)) == ["train_log.jsonl"]

    # fine-tuning reads the granularity from the bank: no flag
    ft = tmp_path / "ft"
    metrics = fine_tune(FineTuneConfig(task_name="SST2", model_name=str(tiny_llama_dir), train_mode="zo_fine_tuner",
                                       load_mlp_path=summary["bank"], data_dir=str(SHARED_DATA), output_dir=str(ft),
                                       max_steps=2, eval_steps=0, num_train=8, num_dev=2, num_eval=2,
                                       per_device_train_batch_size=2, threads=1, progress=False))
    assert metrics["steps"] == 2 and read_json(ft / "config.json")["bank_granularity"] == "layer"
