import copy

import pytest
import torch

from conftest import build_tiny_model
from zo.blocks import Block, parameter_blocks
from zo.l2l import FunctionalModel, MetaConfig, MetaLearner, TrajectoryOptimizer
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
