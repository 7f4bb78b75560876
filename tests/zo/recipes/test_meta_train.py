"""The L2L recipe (zo.recipes.meta_train) on tiny models: resets, multi-task schedule, bank files, bad input, interrupts."""
import json
import os

import pytest
import torch

import zo.recipes.meta_train
from zo.blocks import effective_dims
from conftest import SHARED_DATA, build_tiny_model
from run_helpers import (assert_same_weights, read_json, read_jsonl, requires_shared_data, snapshot, temp_leftovers,
                         weights_differ)
from zo.blocks import parameter_blocks
from zo.estimator import ZOConfig, ZOOptimizer
from zo.l2l import MetaConfig, MetaLearner, MetaStepResult, TrajectoryOptimizer
from zo.loop import load_weights, save_weights
from zo.recipes.meta_train import L2LConfig, meta_train, visit_plan
from zo.models import load_model
from zo.noise import NoiseSource
from zo.pertnn import PertNNBank, load_bank
from zo.sigma import ConstantSigma, LearnedSigma


def lm_loss(model, ids):
    logits = model(input_ids=ids).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _ids(vocab=400, seed=0):
    return torch.randint(3, vocab, (2, 9), generator=torch.Generator().manual_seed(seed))


def _bank_state(bank: PertNNBank) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in bank.state_dict().items()}


# ---- reset at the MetaLearner / TrajectoryOptimizer level --------------------------------------------------

def test_reset_restores_theta_exactly_and_keeps_bank_and_task_state(tmp_path):
    model = build_tiny_model("llama", 400)
    blocks = parameter_blocks(model)
    bank = PertNNBank([b.name for b in blocks], generator=torch.Generator().manual_seed(0))
    learner = MetaLearner(model, bank, blocks, MetaConfig(lr_mlp=1e-2, lr_update=1e-2, zo_eps=1e-2), batch_size=2,
                          seed=0, noise=NoiseSource(1))
    trajectory = TrajectoryOptimizer(model, lr=1e-2, period_steps=4)
    theta0 = snapshot(model)
    pretrained = tmp_path / "pretrained.safetensors"
    save_weights(model, pretrained)
    bank0 = _bank_state(learner.bank)
    ids = _ids()
    for _ in range(2):
        result = learner.meta_step(lm_loss, ids, "Copa")
        trajectory.step(lm_loss, ids)
    assert weights_differ(model, theta0)
    assert any(not torch.equal(v, bank0[k]) for k, v in _bank_state(learner.bank).items())  # the bank learned
    bank_before, state = _bank_state(learner.bank), learner.states["Copa"]
    sigma_prev, history = state.sigma_prev.clone(), state.history
    assert history == (result.loss_plus, result.loss_minus)

    load_weights(model, pretrained)  # what meta_train does at a restart
    trajectory.reset()

    assert_same_weights(model, theta0)
    assert all(torch.equal(v, bank_before[k]) for k, v in _bank_state(learner.bank).items())
    assert learner.states["Copa"] is state and torch.equal(state.sigma_prev, sigma_prev) and state.history == history
    assert trajectory.current_lr() == 1e-2 and not trajectory.optimizer.state

    # the first-order trajectory restarts: the next step equals a fresh optimizer's first step from theta_0
    trajectory.step(lm_loss, ids)
    fresh = build_tiny_model("llama", 400)
    assert_same_weights(fresh, theta0)
    TrajectoryOptimizer(fresh, lr=1e-2, period_steps=4).step(lm_loss, ids)
    assert_same_weights(model, snapshot(fresh))


# ---- the recipe ---------------------------------------------------------------------------------------------

def _l2l_config(model_dir, out, **overrides) -> L2LConfig:
    base = dict(task_name="Copa", model_name=str(model_dir), data_dir=str(SHARED_DATA), output_dir=str(out),
                num_train_epochs=2, epochs_per_restart=1, num_train=8, num_dev=4, num_eval=4,
                per_device_train_batch_size=4, lr_mlp=1e-2, lr_update=1e-3, threads=1, progress=False)
    base.update(overrides)
    return L2LConfig(**base)


@pytest.fixture
def spy(monkeypatch):
    """Records, at every meta step, the learner, the task, theta and the bank (before the step)."""
    calls = []
    real = MetaLearner.meta_step

    def meta_step(self, loss_fn, batch, task="default"):
        calls.append({"learner": self, "task": task, "theta": snapshot(self.model), "bank": _bank_state(self.bank)})
        return real(self, loss_fn, batch, task)

    monkeypatch.setattr(MetaLearner, "meta_step", meta_step)
    return calls


@requires_shared_data
def test_reset_restarts_from_pretrained_and_bank_round_trips(tmp_path, tiny_llama_dir, spy):
    out = tmp_path / "l2l"
    summary = meta_train(_l2l_config(tiny_llama_dir, out))  # Copa: 8 train / bs 4 = 2 steps per epoch
    assert summary["steps"] == 4 and summary["resets"] == 1 and summary["status"] == "completed"
    assert read_json(out / "summary.json") == summary

    log = read_jsonl(out / "train_log.jsonl")
    assert [r for r in log if r["kind"] == "event"] == [{"kind": "event", "step": 2, "event": "reset", "epoch": 1}]
    steps = [r for r in log if "event" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and [r["epoch"] for r in steps] == [0, 0, 1, 1]
    assert steps[2]["lr_llm"] == steps[0]["lr_llm"] > steps[1]["lr_llm"]  # the schedule restarted

    theta0 = snapshot(load_model(tiny_llama_dir)[0])
    assert_same_weights(spy[0]["theta"], theta0)
    assert weights_differ(spy[1]["theta"], theta0)  # the first-order step moved theta ...
    assert_same_weights(spy[2]["theta"], theta0)  # ... and the reset put it back exactly
    assert weights_differ(spy[3]["theta"], theta0)
    # the bank kept learning through the reset (not re-initialized), and the task state persisted
    learner = spy[0]["learner"]
    assert all(not torch.equal(spy[2]["bank"][k], spy[0]["bank"][k]) for k in ("w1", "w2"))
    assert learner.states["Copa"].history == (steps[-1]["loss_plus"], steps[-1]["loss_minus"])

    # round trip of the saved bank: same tensors, same metadata
    bank = load_bank(summary["bank"])
    final = learner.bank.block_state_dict()
    assert bank.block_names == learner.bank.block_names
    assert all(torch.equal(bank.block_state_dict()[k], v) for k, v in final.items())
    meta = bank.metadata
    assert meta["base_model"] == tiny_llama_dir.name and json.loads(meta["tasks"]) == ["Copa"]
    assert meta["trained"] == "true" and json.loads(meta["steps_done"]) == 4 and json.loads(meta["complete"]) is True
    assert meta["effective_dim_rule"] == "tied_full" and learner.dims.tolist() == effective_dims(
        learner.blocks, 4, rule="tied_full").tolist()
    hyper = json.loads(meta["hyperparameters"])
    assert hyper["lr_mlp"] == 1e-2 and hyper["epochs_per_restart"] == 1 and hyper["tasks"] == ["Copa"]
    assert hyper["model_name"] == str(tiny_llama_dir)
    config = read_json(out / "config.json")
    assert config["restart_period_steps"] == 2 and config["save_mlp_path"] == summary["bank"]
    assert not (out / "pretrained_state.safetensors").exists() and not temp_leftovers(out)


@requires_shared_data
def test_multi_task_training_visits_every_task_with_its_own_state(tmp_path, tiny_llama_dir, spy):
    out = tmp_path / "multi"
    summary = meta_train(_l2l_config(tiny_llama_dir, out, multi_task_training=True, multi_task_name=["SST2", "Copa"],
                                     num_train_epochs=1, num_train=4, per_device_train_batch_size=2))
    assert summary["tasks"] == ["SST2", "Copa"] and summary["steps"] == 4
    steps = [r for r in read_jsonl(out / "train_log.jsonl") if "event" not in r]
    assert [r["task"] for r in steps] == ["SST2", "Copa", "SST2", "Copa"]
    learner = spy[0]["learner"]
    assert set(learner.states) == {"SST2", "Copa"}
    for task in ("SST2", "Copa"):  # each task's PertNN history is its own last step's losses
        last = [r for r in steps if r["task"] == task][-1]
        assert learner.states[task].history == (last["loss_plus"], last["loss_minus"])
    assert not torch.equal(learner.states["SST2"].sigma_prev, learner.states["Copa"].sigma_prev)
    assert json.loads(load_bank(summary["bank"]).metadata["tasks"]) == ["SST2", "Copa"]


@pytest.fixture
def no_compute(monkeypatch):
    """Meta and first-order steps stubbed out: only the schedule of the recipe runs."""
    def meta_step(self, loss_fn, batch, task="default"):
        self.state_for(task)
        return MetaStepResult(0, 1.0, 1.0, 1.0, torch.ones(len(self.blocks)), 1.0)

    monkeypatch.setattr(MetaLearner, "meta_step", meta_step)
    monkeypatch.setattr(TrajectoryOptimizer, "step", lambda self, loss_fn, batch: 1.0)


def _task_order(out):
    return [(r["epoch"], r["task"]) for r in read_jsonl(out / "train_log.jsonl") if "task" in r]


@requires_shared_data
def test_shuffle_is_deterministic_per_seed(tmp_path, tiny_llama_dir, no_compute):
    def order(seed, name, shuffle=True):
        out = tmp_path / name
        meta_train(_l2l_config(tiny_llama_dir, out, multi_task_training=True, multi_task_name=["SST2", "Copa", "CB"],
                               num_train_epochs=2, num_train=8, per_device_train_batch_size=2, shuffle=shuffle,
                               seed=seed, epochs_per_restart=2))
        return _task_order(out)

    plain = order(0, "plain", shuffle=False)
    assert [t for _, t in plain] == ["SST2", "Copa", "CB"] * 8
    first, again = order(7, "a"), order(7, "b")
    assert first == again
    for outer in range(8):  # every outer step still visits each task once
        assert sorted(t for _, t in first[3 * outer:3 * outer + 3]) == ["CB", "Copa", "SST2"]
    assert first != plain
    assert any(order(seed, f"s{seed}") != first for seed in (8, 9))


def test_visit_plan_skips_copa_at_index_1_mod_4():
    plan = visit_plan(["SST2", "Copa"], 6, skip_copa=True)
    assert plan == [["SST2", "Copa"], ["SST2"], ["SST2", "Copa"], ["SST2", "Copa"], ["SST2", "Copa"], ["SST2"]]
    assert visit_plan(["SST2", "Copa"], 6, skip_copa=False) == [["SST2", "Copa"]] * 6


@requires_shared_data
def test_skip_copa_every_4th_in_the_recipe(tmp_path, tiny_llama_dir, no_compute):
    out = tmp_path / "skip"
    summary = meta_train(_l2l_config(tiny_llama_dir, out, multi_task_training=True, multi_task_name=["SST2", "Copa"],
                                     num_train_epochs=2, num_train=10, per_device_train_batch_size=2,
                                     skip_copa_every_4th=True, epochs_per_restart=2))
    epoch_order = ["SST2", "Copa", "SST2", "SST2", "Copa", "SST2", "Copa", "SST2", "Copa"]  # 5 outer steps
    assert _task_order(out) == [(0, t) for t in epoch_order] + [(1, t) for t in epoch_order]
    assert summary["steps"] == 18
    assert read_json(out / "config.json")["restart_period_steps"] == 18


# ---- bad input ------------------------------------------------------------------------------------------------

@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the configuration was checked")
    monkeypatch.setattr(zo.recipes.meta_train, "load_model", refuse)


@pytest.mark.parametrize("overrides, error, fragments", [
    (dict(multi_task_training=True, multi_task_name=["SST2", "NotATask", "Copa"]), ValueError,
     ["NotATask", "unknown task", "SST2"]),
    (dict(epochs_per_restart=0), ValueError, ["EPOCHS_PER_RESTART must be >= 1", "0"]),
    (dict(epochs_per_restart=-2), ValueError, ["EPOCHS_PER_RESTART must be >= 1", "-2"]),
    (dict(save_mlp_path="{tmp}/no/such/folder/bank.safetensors"), FileNotFoundError,
     ["cannot save the bank", "no/such/folder"]),
    (dict(init_mlp_path="{tmp}/missing.safetensors"), FileNotFoundError, ["initial bank not found"]),
])
def test_bad_input_fails_before_any_work(tmp_path, tiny_llama_dir, no_model_loading, overrides, error, fragments):
    overrides = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in overrides.items()}
    out = tmp_path / "out"
    with pytest.raises(error) as info:
        meta_train(_l2l_config(tiny_llama_dir, out, **overrides))
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    assert not out.exists()


@pytest.mark.parametrize("overrides", [dict(multi_task_training=True, multi_task_name=["Copa", "SST2", "COPA"]),
                                       dict(task_name="Copa", multi_task_training=False, num_train_epochs=0)])
def test_duplicate_tasks_and_zero_epochs_are_rejected(tmp_path, tiny_llama_dir, no_model_loading, overrides):
    with pytest.raises(ValueError, match="listed twice|EPOCH must be >= 1"):
        meta_train(_l2l_config(tiny_llama_dir, tmp_path / "out", **overrides))


def test_an_existing_bank_is_replaced_only_with_overwrite_or_by_the_run_that_writes_it(tmp_path, tiny_llama_dir,
                                                                                      no_model_loading):
    bank = tmp_path / "shipped.safetensors"
    bank.write_bytes(b"a bank")
    out = tmp_path / "out"
    with pytest.raises(FileExistsError, match="--overwrite"):  # a fresh run, before any work
        meta_train(_l2l_config(tiny_llama_dir, out, save_mlp_path=str(bank)))
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"save_mlp_path": str(tmp_path / "other.safetensors")}))
    with pytest.raises(FileExistsError):  # a run that saves elsewhere does not own this bank
        meta_train(_l2l_config(tiny_llama_dir, out, save_mlp_path=str(bank), resume=True))
    assert bank.read_bytes() == b"a bank"
    # past the check (the model loading it reaches is refused by the fixture): --overwrite, or the owner's resume
    with pytest.raises(AssertionError, match="model was loaded"):
        meta_train(_l2l_config(tiny_llama_dir, out, save_mlp_path=str(bank), overwrite=True))
    (out / "config.json").write_text(json.dumps({"save_mlp_path": str(bank)}))
    with pytest.raises(AssertionError, match="model was loaded"):
        meta_train(_l2l_config(tiny_llama_dir, out, save_mlp_path=str(bank), resume=True))

@requires_shared_data
def test_bad_data_or_bank_leaves_an_earlier_run_folder_alone(tmp_path, tiny_llama_dir, tiny_model_dir):
    from zo.init_bank import init_bank
    from zo.pertnn import BankMismatchError

    out = tmp_path / "out"
    out.mkdir()
    (out / "train_log.jsonl").write_text('{"step": 1}\n')
    only_train = tmp_path / "data"
    (only_train / "Copa").mkdir(parents=True)
    (only_train / "Copa" / "train.jsonl").write_text("")
    with pytest.raises(FileNotFoundError, match="val.jsonl"):
        meta_train(_l2l_config(tiny_llama_dir, out, data_dir=str(only_train)))
    opt_bank = tmp_path / "opt.safetensors"
    init_bank(str(tiny_model_dir("opt")), opt_bank)
    with pytest.raises(BankMismatchError, match="model.embed_tokens.weight"):
        meta_train(_l2l_config(tiny_llama_dir, out, init_mlp_path=str(opt_bank)))
    assert sorted(os.listdir(out)) == ["train_log.jsonl"] and (out / "train_log.jsonl").read_text() == '{"step": 1}\n'


def test_run_l2l_cli_rejects_bad_restart_period(tmp_path, tiny_llama_dir, no_model_loading):
    import run_l2l

    from zo.cli import run_main

    with pytest.raises(ValueError, match="EPOCHS_PER_RESTART"):
        run_l2l.main(["--model_name", str(tiny_llama_dir), "--epoch", "2", "--epochs_per_restart", "0",
                      "--output_dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as info:  # the entry point: exit 2, no traceback
        run_main(lambda: run_l2l.main(["--model_name", str(tiny_llama_dir), "--multi_task_training",
                                       "--multi_task_name", "SST2", "Nope", "--output_dir", str(tmp_path / "o")]))
    assert info.value.code == 2 and not (tmp_path / "o").exists()


# ---- 1-D tensors that are neither "bias" nor "norm" (GPT-2's ln_1 / ln_2 / ln_f) ---------------------------------

def test_gpt2_layer_norm_names_work_in_meta_and_zo_steps():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=400, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()
    blocks = parameter_blocks(model)
    odd = [b.name for b in blocks if b.param.dim() == 1 and "bias" not in b.name and "norm" not in b.name]
    assert "transformer.h.0.ln_1.weight" in odd and "transformer.ln_f.weight" in odd
    ids = _ids()
    theta0 = snapshot(model)

    bank = PertNNBank([b.name for b in blocks], generator=torch.Generator().manual_seed(0))
    learner = MetaLearner(model, bank, blocks, MetaConfig(lr_mlp=1e-2, lr_update=1e-2, zo_eps=1e-2), batch_size=2,
                          noise=NoiseSource(1))
    bank0 = _bank_state(learner.bank)
    result = learner.meta_step(lm_loss, ids)
    assert torch.isfinite(torch.tensor([result.loss_plus, result.loss_minus, result.meta_loss])).all()
    assert torch.isfinite(result.sigma).all() and result.sigma.shape == (len(blocks),)
    assert any(not torch.equal(v, bank0[k]) for k, v in _bank_state(learner.bank).items())
    assert TrajectoryOptimizer(model, lr=1e-3, period_steps=2).step(lm_loss, ids) > 0
    assert weights_differ(model, theta0)

    # ZO Fine-tuner step with weight decay. MeZO's name rule exempts only biases (GPT-2's ln_* names contain no
    # "layer_norm"), the ndim rule every 1-D tensor
    for rule, exempt in (("mezo", [b.name for b in blocks if "bias" in b.name]),
                         ("ndim", [b.name for b in blocks if b.param.dim() == 1])):
        for sigma in (LearnedSigma(learner.bank, blocks, 2), ConstantSigma(blocks)):
            optimizer = ZOOptimizer(model, sigma, ZOConfig(lr=1e-3, eps=1e-3, weight_decay=0.1,
                                                           weight_decay_rule=rule), noise=NoiseSource(1))
            before = snapshot(model)
            record = optimizer.step(lambda: lm_loss(model, ids))
            assert torch.isfinite(torch.tensor([record.loss_plus, record.loss_minus])).all()
            assert weights_differ(model, before)
            assert [b.name for b, d in zip(optimizer.blocks, optimizer.decayed) if not d] == exempt


# ---- interrupts -----------------------------------------------------------------------------------------------------

@requires_shared_data
def test_interrupt_during_a_step_saves_the_bank_as_of_the_last_step(tmp_path, tiny_llama_dir, monkeypatch):
    k = 3
    real = MetaLearner.meta_step
    calls = {"n": 0}

    def meta_step(self, *args, **kwargs):
        if calls["n"] == k:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MetaLearner, "meta_step", meta_step)
    out = tmp_path / "run"
    bank_path = tmp_path / "bank.safetensors"
    with pytest.raises(KeyboardInterrupt):
        meta_train(_l2l_config(tiny_llama_dir, out, num_train_epochs=4, per_device_train_batch_size=2,
                               save_every_steps=2, save_mlp_path=str(bank_path)))
    bank = load_bank(bank_path)
    assert json.loads(bank.metadata["steps_done"]) <= k and json.loads(bank.metadata["complete"]) is False
    assert len([r for r in read_jsonl(out / "train_log.jsonl") if "task" in r]) == k
    assert not (out / "summary.json").exists() and not (out / "pretrained_state.safetensors").exists()
    assert not temp_leftovers(tmp_path)


@requires_shared_data
def test_interrupt_while_checkpointing_keeps_the_previous_bank_intact(tmp_path, tiny_llama_dir, monkeypatch):
    import safetensors.torch

    real_save = safetensors.torch.save_file
    saves = {"n": 0}

    def flaky_save(tensors, filename, metadata=None):
        if "bank.safetensors" not in str(filename):  # e.g. the pretrained-state copy
            return real_save(tensors, filename, metadata=metadata)
        saves["n"] += 1
        if saves["n"] == 1:
            return real_save(tensors, filename, metadata=metadata)
        with open(filename, "wb") as handle:  # half a file, then Ctrl-C (every later save too)
            handle.write(b"\x00" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", flaky_save)
    out = tmp_path / "run"
    bank_path = tmp_path / "bank.safetensors"
    with pytest.raises(KeyboardInterrupt):
        meta_train(_l2l_config(tiny_llama_dir, out, num_train_epochs=4, per_device_train_batch_size=2,
                               save_every_steps=2, save_mlp_path=str(bank_path)))
    assert saves["n"] >= 2
    bank = load_bank(bank_path)  # the checkpoint of step 2, whole
    assert json.loads(bank.metadata["steps_done"]) == 2 and bank.metadata["trained"] == "true"
    assert sorted(os.listdir(tmp_path)) == ["bank.safetensors", "run"]
    assert not temp_leftovers(tmp_path)
