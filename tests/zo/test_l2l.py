import copy

import pytest
import torch

from conftest import build_tiny_model
from zo.blocks import parameter_blocks
from zo.l2l import FunctionalModel, MetaConfig, MetaLearner, MicroBatches, TrajectoryOptimizer
from zo.noise import NoiseSource
from zo.pertnn import bank_features, fresh_bank
from zo.stats import block_stats


def lm_loss(model, ids):
    # Own cross-entropy: HF's loss casts logits to float32, which would hide float64 differences.
    logits = model(input_ids=ids).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _setup(dtype=torch.float32, family="llama", granularity="block", **cfg):
    model = build_tiny_model(family, 400, dtype=dtype)
    blocks = parameter_blocks(model)
    bank = fresh_bank(blocks, granularity, generator=torch.Generator().manual_seed(1))
    config = MetaConfig(lr_mlp=0.0, lr_update=1e-2, zo_eps=1e-2, **cfg)
    learner = MetaLearner(model, bank, blocks, config, batch_size=2, seed=3, noise=NoiseSource(threads=2),
                          bank_dtype=dtype)
    ids = torch.randint(3, 400, (2, 9), generator=torch.Generator().manual_seed(0))
    return model, blocks, learner, ids


def _meta_loss_by_hand(model, blocks, learner, ids, result, features, bank_params):
    """L(theta') with L+-, c and the noise frozen, as a function of the bank weights."""
    w1, b1, w2, b2 = bank_params
    h = torch.tanh(torch.einsum("bhi,bi->bh", w1, features.to(w1.dtype)) + b1)
    sigma = learner.grouping.per_block(((h * w2[:, 0, :]).sum(-1) + b2[:, 0]).abs())  # group -> block
    k = sigma * result.c
    a = -learner.config.lr_update * (result.loss_plus - result.loss_minus) / (2 * learner.config.zo_eps)
    params = {}
    for b in blocks:
        z = learner.noise.block_noise(result.seed, b.index, b.param.shape).to(b.param.dtype)
        params[b.name] = b.param.detach() + a * k[b.index] * z
    return lm_loss(FunctionalModel(model, params), ids)


@pytest.mark.parametrize("granularity", ["block", "layer"])
@pytest.mark.parametrize("grad_through_c", [False, True])
def test_meta_gradient_matches_central_finite_differences(grad_through_c, granularity):
    # OPT: its LayerNorm stays in float64 (Llama's RMSNorm computes in float32, hiding 1e-12 changes)
    model, blocks, learner, ids = _setup(torch.float64, family="opt", granularity=granularity,
                                         grad_through_c=grad_through_c)
    mean, var = learner.grouping.pool(*block_stats(blocks))  # layer-wise: pooled over each layer group
    features = bank_features(mean, var, 0.0, 0.0, torch.ones(len(learner.grouping)))
    result = learner.meta_step(lm_loss, ids)  # lr_mlp = 0: grads are left in the bank
    bank = learner.bank
    grads = [p.grad.clone() for p in (bank.w1, bank.b1, bank.w2, bank.b2)]
    assert all(g.abs().sum() > 0 for g in grads)
    gen = torch.Generator().manual_seed(5)
    checked = 0
    for which, g in enumerate(grads):
        for _ in range(3):
            idx = tuple(torch.randint(0, n, (1,), generator=gen).item() for n in g.shape)
            h = 1e-6
            values = []
            for sign in (1, -1):
                params = [p.detach().clone() for p in (bank.w1, bank.b1, bank.w2, bank.b2)]
                params[which][idx] += sign * h
                if grad_through_c:  # c moves with sigma: recompute it in the reference too
                    w1, b1, w2, b2 = params
                    hh = torch.tanh(torch.einsum("bhi,bi->bh", w1, features.to(w1.dtype)) + b1)
                    s = learner.grouping.per_block(((hh * w2[:, 0, :]).sum(-1) + b2[:, 0]).abs())
                    d = learner.dims.to(s.dtype)
                    c = float(torch.sqrt(d.sum() / (d * s ** 2).sum()))
                    res = type(result)(result.seed, result.loss_plus, result.loss_minus, 0.0, result.sigma, c)
                else:
                    res = result
                with torch.no_grad():
                    values.append(float(_meta_loss_by_hand(model, blocks, learner, ids, res, features, params)))
            fd = (values[0] - values[1]) / (2 * h)
            assert fd == pytest.approx(float(g[idx]), rel=1e-4, abs=1e-12), (which, idx)
            checked += 1
    assert checked == 12


def test_functional_meta_forward_equals_a_deep_copied_model():
    model, blocks, learner, ids = _setup(torch.float32, family="opt")
    gen = torch.Generator().manual_seed(2)
    params = {b.name: b.param.detach() + 1e-2 * torch.randn(b.param.shape, generator=gen) for b in blocks}
    functional = lm_loss(FunctionalModel(model, params), ids)
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in copied.named_parameters():  # tied names resolve to the same tensor
            p.copy_(params[name])
    assert torch.equal(functional, lm_loss(copied, ids))
    assert copied.lm_head.weight is copied.model.decoder.embed_tokens.weight


def test_meta_step_moves_the_bank_and_keeps_theta():
    model, blocks, learner, ids = _setup(torch.float32)
    learner.bank_optimizer.param_groups[0]["lr"] = 10.0
    before_theta = [b.param.detach().clone() for b in blocks]
    before_bank = learner.bank.w1.detach().clone()
    result = learner.meta_step(lm_loss, ids, task="Copa")
    assert not torch.equal(before_bank, learner.bank.w1)
    assert all(torch.equal(b.param, t) for b, t in zip(blocks, before_theta))
    state = learner.state_for("Copa")
    assert state.history == (result.loss_plus, result.loss_minus)
    assert torch.equal(state.sigma_prev, result.sigma)
    assert learner.state_for("SST2").history == (0.0, 0.0)  # per-task state


def test_adam_trajectory_refuses_float16_and_sgd_takes_it():
    model = build_tiny_model("llama", 400).to(torch.float16)
    with pytest.raises(ValueError, match="TRAJECTORY_OPTIMIZER=adam"):
        TrajectoryOptimizer(model, lr=1e-2, period_steps=4, kind="adam")
    TrajectoryOptimizer(model, lr=1e-2, period_steps=4, kind="sgd")


@pytest.mark.parametrize("kind", ["adam", "sgd"])
def test_trajectory_optimizer_decays_linearly_and_resets(kind):
    model = build_tiny_model("llama", 400)
    ids = torch.randint(3, 400, (2, 9))
    traj = TrajectoryOptimizer(model, lr=1e-2, period_steps=4, kind=kind)
    lrs = []
    for _ in range(4):
        lrs.append(traj.current_lr())
        traj.step(lm_loss, ids)
    assert lrs == pytest.approx([1e-2, 7.5e-3, 5e-3, 2.5e-3])
    assert traj.current_lr() == 0.0
    traj.reset()
    assert traj.current_lr() == 1e-2 and not traj.optimizer.state
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


# --- gradient accumulation: K micro-batches act as one batch --------------------------------------------------

def _micro(ids, sizes):
    """`ids` cut into micro-batches of `sizes` rows, weighted by their share of the tokens (equal rows)."""
    parts = list(torch.split(ids, sizes))
    return MicroBatches(parts, [p.shape[0] / ids.shape[0] for p in parts])


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("sizes", [[2, 2], [1, 1, 2]])
def test_trajectory_gradient_of_micro_batches_equals_one_batch(sizes):
    ids = torch.randint(3, 400, (4, 9), generator=torch.Generator().manual_seed(4))
    model = build_tiny_model("llama", 400)
    traj = TrajectoryOptimizer(model, lr=1e-2, period_steps=4, kind="sgd", momentum=0.0)
    whole = traj.accumulate(lm_loss, ids)
    reference = _grads(model)
    traj.optimizer.zero_grad(set_to_none=True)
    accumulated = traj.accumulate(lm_loss, _micro(ids, sizes))
    assert accumulated == pytest.approx(whole, rel=1e-6)
    for got, want in zip(_grads(model), reference):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    if len(set(sizes)) > 1:  # the plain mean of unequal micro-batches' losses is another gradient
        traj.optimizer.zero_grad(set_to_none=True)
        parts = list(torch.split(ids, sizes))
        traj.accumulate(lm_loss, MicroBatches(parts, [1 / len(parts)] * len(parts)))
        assert any(not torch.allclose(g, w, rtol=1e-3, atol=1e-6) for g, w in zip(_grads(model), reference))


def test_trajectory_step_on_micro_batches_is_one_update_of_the_whole_batch():
    ids = torch.randint(3, 400, (4, 9), generator=torch.Generator().manual_seed(4))
    states = []
    for batch in (ids, _micro(ids, [2, 2])):
        model = build_tiny_model("llama", 400)
        traj = TrajectoryOptimizer(model, lr=1e-2, period_steps=4, kind="adam")
        traj.step(lm_loss, batch)
        assert traj.current_lr() == pytest.approx(7.5e-3)  # one schedule step for the K micro-batches
        assert all(p.grad is None for p in model.parameters())
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    for name in states[0]:
        torch.testing.assert_close(states[1][name], states[0][name], rtol=1e-5, atol=1e-6)


def test_meta_step_on_micro_batches_equals_one_batch():
    # float64 (OPT's LayerNorm stays float64): the bank's gradient goes through (L+ - L-), where float32
    # round-off of the losses alone would already move it by ~1e-3 relative
    ids = torch.randint(3, 400, (4, 9), generator=torch.Generator().manual_seed(4))
    results, grads = [], []
    for batch in (ids, _micro(ids, [1, 3])):
        model, blocks, learner, _ = _setup(torch.float64, family="opt")  # same model, bank and seed stream
        results.append(learner.meta_step(lm_loss, batch))  # lr_mlp = 0: the bank's gradient is left in it
        grads.append([p.grad.clone() for p in learner.bank.parameters()])
    whole, micro = results
    assert micro.seed == whole.seed and torch.equal(micro.sigma, whole.sigma) and micro.c == whole.c
    assert micro.loss_plus == pytest.approx(whole.loss_plus, rel=1e-12)
    assert micro.loss_minus == pytest.approx(whole.loss_minus, rel=1e-12)
    assert micro.meta_loss == pytest.approx(whole.meta_loss, rel=1e-12)
    assert all(g.abs().sum() > 0 for g in grads[0])
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-12)  # the largest entries are ~3e-2


def test_micro_batch_weights_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        MicroBatches([1, 2], [0.5, 0.6])
    with pytest.raises(ValueError, match="one weight per micro-batch"):
        MicroBatches([1, 2], [1.0])


def test_forward_only_leaves_no_gradient_and_no_update():
    model = build_tiny_model("llama", 400)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    traj = TrajectoryOptimizer(model, lr=1e-2, period_steps=4)
    ids = torch.randint(3, 400, (2, 9))
    with torch.no_grad():
        expected = float(lm_loss(model, ids))
    assert traj.forward_only(lm_loss, ids) == pytest.approx(expected)
    assert all(p.grad is None for p in model.parameters()) and not model.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()) and traj.current_lr() == 1e-2
