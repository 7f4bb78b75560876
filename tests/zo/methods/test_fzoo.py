import statistics

import pytest
import torch

from conftest import build_tiny_model
from method_helpers import batches, lm_loss, make, one_torch_thread, run  # noqa: F401
from zo.blocks import parameter_blocks
from zo.estimator import ZOConfig
from zo.methods.fzoo import fzoo_coefficients
from zo.noise import NoiseSource


def rademacher(noise, seed, block):
    z = noise.block_noise(seed, block.index, block.param.shape)
    return torch.where(z >= 0, 1.0, -1.0)


def reference_fzoo(model, records, lr, eps):
    blocks = parameter_blocks(model)
    noise = NoiseSource(threads=1)
    out = []
    for rec, ids in zip(records, batches(len(records))):
        seeds = rec.extra["seeds"]
        us = [[rademacher(noise, s, b) for b in blocks] for s in seeds]
        saved = [b.param.detach().clone() for b in blocks]
        losses = []
        with torch.no_grad():
            for u in us:
                for b, ui in zip(blocks, u):
                    b.param.add_(ui, alpha=eps)
                losses.append(lm_loss(model, ids).item())
                for b, s in zip(blocks, saved):
                    b.param.copy_(s)
            l0 = lm_loss(model, ids).item()
            spread = statistics.pstdev(losses)
            for u, li in zip(us, losses):
                for b, ui in zip(blocks, u):
                    b.param.add_(ui, alpha=-lr * (li - l0) / (len(losses) * spread))
        out.append((l0, losses))
    return out


def test_fzoo_matches_a_plain_reference():
    model, ref = build_tiny_model("llama", 400), build_tiny_model("llama", 400)
    records = run(make(model, "fzoo", ZOConfig(lr=1e-3, eps=1e-3), fzoo_n=4), model, batches(3))
    ref_out = reference_fzoo(ref, records, 1e-3, 1e-3)
    assert [(r.loss_plus, r.extra["losses"]) for r in records] == [(l0, ls) for l0, ls in ref_out]
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-9), name


def test_coefficients_are_normalized_and_ignore_the_loss_scale():
    losses, l0 = [2.31, 2.29, 2.35, 2.30], 2.32
    coefs, spread = fzoo_coefficients(losses, l0)
    assert statistics.pstdev([len(losses) * a for a in coefs]) == pytest.approx(1.0, rel=1e-12)
    scaled, _ = fzoo_coefficients([3 * x + 7 for x in losses], 3 * l0 + 7)
    assert scaled == pytest.approx(coefs, rel=1e-9)


def test_one_perturbation_is_a_sign_step_not_a_division_by_zero():
    """The authors divide by the std of one loss (0): inf/NaN. Here N = 1 is theta - lr sign(l1 - l0) u."""
    assert fzoo_coefficients([2.5], 2.0) == ([1.0], 0.5)
    assert fzoo_coefficients([2.0, 2.0], 2.0) == ([0.0, 0.0], 0.0)  # no information: no step
    # equal probes away from l0: the spread falls back to |l - l0|, a sign step along the mean direction
    assert fzoo_coefficients([2.5, 2.5, 2.5], 2.0) == ([pytest.approx(1 / 3)] * 3, 0.5)
    assert fzoo_coefficients([1.5, 1.5], 2.0) == ([-0.5, -0.5], 0.5)
    model = build_tiny_model("llama", 400)
    before = [b.param.detach().clone() for b in parameter_blocks(model)]
    record = run(make(model, "fzoo", ZOConfig(lr=1e-3, eps=1e-3), fzoo_n=1), model, batches(1))[0]
    sign = 1.0 if record.extra["losses"][0] > record.loss_plus else -1.0
    noise = NoiseSource(threads=1)
    for b, old in zip(parameter_blocks(model), before):
        expected = old - 1e-3 * sign * rademacher(noise, record.seed, b)
        assert torch.allclose(b.param.detach(), expected, rtol=0, atol=1e-9), b.name
