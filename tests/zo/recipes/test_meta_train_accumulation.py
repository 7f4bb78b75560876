"""L2L with gradient accumulation (audit item 6): by default K micro-batches act as one batch of K x b; with
--l2l_accumulation upstream, the authors' meta step per micro-batch and first-order step on the last
micro-batch's gradient only."""
import pytest
import torch

import run_l2l
import tasks
import zo.recipes.meta_train
from run_helpers import read_json, read_jsonl, requires_shared_data
from test_meta_train import _l2l_config, no_model_loading  # noqa: F401 (fixture)
from zo.cli import UpstreamFlagError
from zo.l2l import TrajectoryOptimizer
from zo.models import load_model
from zo.blocks import parameter_blocks
from zo.pertnn import fresh_bank, load_bank
from zo.recipes.meta_train import meta_train, upstream_update_due


def _steps(out):
    return [r for r in read_jsonl(out / "train_log.jsonl") if r["kind"] == "step"]


def _bank(path):
    return {k: v.clone() for k, v in load_bank(path).block_state_dict().items()}


@requires_shared_data
@pytest.mark.parametrize("task", ["SST2", "Copa"])  # examples weigh the option loss, tokens the LM loss (Copa)
def test_k_micro_batches_meta_train_as_one_batch_of_k_times_b(tmp_path, tiny_llama_dir, task):
    # 7 train examples: batches of 4 are (4, 3); micro-batches of 2 are grouped (2, 2) and (2, 1)
    common = dict(task_name=task, num_train=7, num_train_epochs=2, epochs_per_restart=1, lr_llm=1e-3,
                  lr_mlp=1e-1, lr_update=1e-2, zo_eps=1e-2, save_every_steps=0)
    runs = {}
    for name, bs, k in (("whole", 4, 1), ("micro", 2, 2)):
        out = tmp_path / name
        summary = meta_train(_l2l_config(tiny_llama_dir, out, per_device_train_batch_size=bs,
                                         gradient_accumulation_steps=k, **common))
        runs[name] = (summary, _steps(out), _bank(summary["bank"]), read_json(out / "config.json"))
    (whole, whole_log, whole_bank, whole_cfg), (micro, micro_log, micro_bank, micro_cfg) = runs["whole"], runs["micro"]
    assert whole["steps"] == micro["steps"] == 4 and whole["resets"] == micro["resets"] == 1
    assert micro_cfg["steps_per_epoch"] == whole_cfg["steps_per_epoch"] == 2
    assert micro_cfg["step_batch_size"] == whole_cfg["step_batch_size"] == 4  # the embedding's effective dim
    assert [r["micro_batches"] for r in micro_log] == [2, 2, 2, 2]
    for a, b in zip(micro_log, whole_log):
        assert a["lr_llm"] == b["lr_llm"]  # one schedule step per K micro-batches: decays to 0 over the period
        for key in ("loss_plus", "loss_minus", "meta_loss", "fo_loss", "c"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key
    fresh = fresh_bank(parameter_blocks(load_model(tiny_llama_dir)[0]), "block", torch.Generator().manual_seed(42))
    start = {k: v.detach() for k, v in fresh.block_state_dict().items()}  # the run's initial bank (seed 42)
    moved = max(float((whole_bank[n] - start[n]).abs().max()) for n in whole_bank)
    apart = max(float((whole_bank[n] - micro_bank[n]).abs().max()) for n in whole_bank)
    assert moved > 1e-4 and apart < 1e-3 * moved, (moved, apart)  # float32 round-off only


@pytest.fixture
def trajectory_spy(monkeypatch):
    """What the first-order trajectory did: per call, the kind, theta before, the batch, the loss scale, and at
    each optimizer step the gradient it was given."""
    calls = []
    real_step, real_forward, real_apply = (TrajectoryOptimizer.step, TrajectoryOptimizer.forward_only,
                                           TrajectoryOptimizer.apply)

    def step(self, loss_fn, batch, loss_scale=1.0):
        calls.append({"kind": "step", "theta": {k: v.clone() for k, v in self.model.state_dict().items()},
                      "batch": batch, "scale": loss_scale})
        return real_step(self, loss_fn, batch, loss_scale)

    def forward_only(self, loss_fn, batch):
        calls.append({"kind": "forward", "batch": batch})
        return real_forward(self, loss_fn, batch)

    def apply(self):
        calls[-1]["grads"] = {n: p.grad.clone() for n, p in self.model.named_parameters()}
        return real_apply(self)

    monkeypatch.setattr(TrajectoryOptimizer, "step", step)
    monkeypatch.setattr(TrajectoryOptimizer, "forward_only", forward_only)
    monkeypatch.setattr(TrajectoryOptimizer, "apply", apply)
    return calls


def _gradient(model_dir, theta, batches, scale):
    """scale x the gradient of the summed losses of `batches`, at theta, recomputed from scratch."""
    model = load_model(model_dir)[0]
    model.load_state_dict(theta)
    model.eval()  # --dropout False: what the trajectory runs in
    loss = tasks.batch_loss(model, batches[0])
    for batch in batches[1:]:
        loss = loss + tasks.batch_loss(model, batch)
    (loss * scale).backward()
    return {n: p.grad for n, p in model.named_parameters()}


def _sst2_two_epochs_in_micro_batches_of_2(model_dir, out, **overrides):
    # 6 SST-2 examples, K = 2 micro-batches of 2, plain SGD on the trajectory: every update is easy to recompute
    return meta_train(_l2l_config(model_dir, out, task_name="SST2", num_train=6, num_train_epochs=2, reset=False,
                                  per_device_train_batch_size=2, gradient_accumulation_steps=2,
                                  trajectory_optimizer="sgd", momentum=0.0, max_grad_norm=0.0, dropout=False,
                                  lr_llm=1e-2, save_every_steps=0, **overrides))


@requires_shared_data
def test_upstream_accumulation_steps_on_the_last_micro_batch_gradient_only(tmp_path, tiny_llama_dir,
                                                                           trajectory_spy):
    # 6 examples, micro-batch 2: 3 micro-batches per epoch; K = 2: an update after micro-batch 1 only (the
    # third is a meta step whose gradient is discarded, as HF's loop); 2 epochs, one lr horizon of 6.
    out = tmp_path / "upstream"
    summary = _sst2_two_epochs_in_micro_batches_of_2(tiny_llama_dir, out, l2l_accumulation="upstream")
    log = _steps(out)
    assert summary["steps"] == 6 and len(log) == 6  # a meta step (and a bank update) per micro-batch
    assert [r["fo_update"] for r in log] == [False, True, False, False, True, False]
    assert [r["kind"] for r in trajectory_spy] == ["forward", "step", "forward", "forward", "step", "forward"]
    # the lr horizon counts micro-batches: 2 updates in 6 -> the lr never gets below 4/6 of LR_LLM
    assert [r["lr_llm"] for r in log] == pytest.approx([1e-2, 1e-2, 1e-2 * 5 / 6, 1e-2 * 5 / 6, 1e-2 * 5 / 6,
                                                        1e-2 * 4 / 6])
    config = read_json(out / "config.json")
    assert config["step_batch_size"] == 2 and config["restart_period_steps"] == 6
    for index in (1, 4):
        update, previous = trajectory_spy[index], trajectory_spy[index - 1]
        assert update["scale"] == 0.5  # HF's training_step divides the loss by K
        last_only = _gradient(tiny_llama_dir, update["theta"], [update["batch"]], 0.5)
        for name, grad in update["grads"].items():
            assert torch.equal(grad, last_only[name]), name  # bit for bit: only the last micro-batch's gradient
        both = _gradient(tiny_llama_dir, update["theta"], [previous["batch"], update["batch"]], 0.5)
        assert any(not torch.allclose(update["grads"][n], both[n], rtol=1e-3) for n in both)


@requires_shared_data
def test_default_accumulation_takes_one_step_per_group_with_the_remainder_group(tmp_path, tiny_llama_dir,
                                                                                trajectory_spy):
    out = tmp_path / "batch"
    summary = _sst2_two_epochs_in_micro_batches_of_2(tiny_llama_dir, out)
    log = _steps(out)
    assert summary["steps"] == 4 and [r["micro_batches"] for r in log] == [2, 1, 2, 1]
    assert [r["lr_llm"] for r in log] == pytest.approx([1e-2, 7.5e-3, 5e-3, 2.5e-3])  # decays to 0
    assert all(c["kind"] == "step" and c["scale"] == 1.0 for c in trajectory_spy)
    # each update's gradient is the example-weighted mean over its micro-batches: that of their concatenation
    for call in trajectory_spy:
        parts = call["batch"].batches
        sizes = [len(p["num_options"]) for p in parts]
        assert call["batch"].weights == pytest.approx([s / sum(sizes) for s in sizes])
        model = load_model(tiny_llama_dir)[0]
        model.load_state_dict(call["theta"])
        sum(w * tasks.batch_loss(model, p) for p, w in zip(parts, call["batch"].weights)).backward()
        for name, param in model.named_parameters():
            torch.testing.assert_close(call["grads"][name], param.grad, rtol=1e-5, atol=1e-8)


def test_upstream_update_rule_matches_hfs_condition():
    # K = 4, 10 micro-batches per epoch: after 3 and 7; 8 and 9 are short of a group
    assert [i for i in range(10) if upstream_update_due(i, 10, 4)] == [3, 7]
    # an epoch of at most K micro-batches updates at its last one
    assert [i for i in range(3) if upstream_update_due(i, 3, 4)] == [2]
    assert [i for i in range(5) if upstream_update_due(i, 5, 1)] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("overrides, fragment", [
    (dict(gradient_accumulation_steps=0), "--gradient_accumulation_steps must be >= 1"),
    (dict(l2l_accumulation="sum"), "--l2l_accumulation must be one of"),
    (dict(per_device_train_batch_size=0), "must be >= 1"),
])
def test_bad_accumulation_settings_fail_before_any_work(tmp_path, tiny_llama_dir, no_model_loading, overrides,
                                                        fragment):
    with pytest.raises(ValueError, match=fragment):
        meta_train(_l2l_config(tiny_llama_dir, tmp_path / "out", **overrides))
    assert not (tmp_path / "out").exists()


def test_run_l2l_takes_gradient_accumulation_and_refuses_num_train_sets(monkeypatch):
    seen = {}
    monkeypatch.setattr(run_l2l, "meta_train", lambda config: seen.setdefault("config", config))
    run_l2l.main(["--task_name", "MultiRC", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps",
                  "4", "--l2l_accumulation", "upstream", "--num_train_sets", "None"])
    config = seen["config"]
    assert config.gradient_accumulation_steps == 4 and config.l2l_accumulation == "upstream"
    with pytest.raises(UpstreamFlagError, match="one bank on one train set"):
        run_l2l.main(["--task_name", "Copa", "--num_train_sets", "3"])


def test_default_output_dir_names_the_accumulation(tiny_llama_dir):
    names = {zo.recipes.meta_train.L2LConfig(model_name=str(tiny_llama_dir), gradient_accumulation_steps=k,
                                             l2l_accumulation=mode).default_output_dir()
             for k, mode in ((1, "batch"), (1, "upstream"), (4, "batch"), (4, "upstream"))}
    assert len(names) == 3  # K = 1 is the same run under both rules
