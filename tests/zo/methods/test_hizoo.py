import pytest
import torch

from conftest import build_tiny_model, central_losses
from method_helpers import batches, lm_loss, make, one_torch_thread, run  # noqa: F401
from zo.blocks import parameter_blocks
from zo.estimator import ZOConfig
from zo.noise import NoiseSource


def reference_hizoo(model, seeds, lr, eps, alpha):
    """HiZOO written out on whole tensors: L0, probe at theta +- eps z / sqrt(D), D update, step with D_new."""
    blocks = parameter_blocks(model)
    noise = NoiseSource(threads=1)
    curvature = [torch.ones_like(b.param) for b in blocks]
    out = []
    for seed, ids in zip(seeds, batches(len(seeds))):
        zs = [noise.block_noise(seed, b.index, b.param.shape) for b in blocks]
        with torch.no_grad():
            l0 = lm_loss(model, ids).item()
        lp, lm, saved = central_losses(model, blocks, [z / d.sqrt() for z, d in zip(zs, curvature)], ids, eps)
        with torch.no_grad():
            g = (lp - lm) / (2 * eps)
            rate = alpha * abs(lp + lm - 2 * l0) / (2 * eps ** 2)
            for b, z, d, s in zip(blocks, zs, curvature, saved):
                if alpha:
                    d.mul_(z.square() * rate + (1 - alpha))
                b.param.copy_(s).add_(z / d.sqrt(), alpha=-lr * g)
        out.append((l0, lp, lm))
    return out, curvature


def test_hizoo_matches_a_plain_reference():
    model, ref = build_tiny_model("llama", 400), build_tiny_model("llama", 400)
    method = make(model, "hizoo", ZOConfig(lr=1e-3, eps=1e-3), hizoo_alpha=1e-3)
    records = run(method, model, batches(4))
    ref_losses, ref_curvature = reference_hizoo(ref, [r.seed for r in records], 1e-3, 1e-3, 1e-3)
    assert [(r.extra["loss0"], r.loss_plus, r.loss_minus) for r in records] == ref_losses
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), name
    for b, d in zip(parameter_blocks(model), ref_curvature):
        assert torch.equal(method.curvature[b.index], d), b.name
    assert any((d != 1).any() for d in ref_curvature)  # the curvature estimate really moved
    mean = sum(float(d.double().sum()) for d in ref_curvature) / sum(d.numel() for d in ref_curvature)
    assert method.log_extra()["curvature_mean"] == pytest.approx(mean, rel=1e-12)


def test_hizoo_with_alpha_zero_is_mezo_bit_for_bit():
    config = ZOConfig(lr=1e-3, eps=1e-3)
    hizoo_model, mezo_model = build_tiny_model("llama", 400), build_tiny_model("llama", 400)
    hizoo = run(make(hizoo_model, "hizoo", config, hizoo_alpha=0.0), hizoo_model, batches(4))
    mezo = run(make(mezo_model, "mezo", config), mezo_model, batches(4))
    for h, m in zip(hizoo, mezo):
        assert (h.seed, h.loss_plus, h.loss_minus, h.projected_grad) == (m.seed, m.loss_plus, m.loss_minus,
                                                                        m.projected_grad)
    for p, q in zip(hizoo_model.parameters(), mezo_model.parameters()):
        assert torch.equal(p, q)


def test_curvature_stays_positive_and_shrinks_at_most_by_one_minus_alpha():
    model = build_tiny_model("llama", 400)
    alpha = 0.5
    method = make(model, "hizoo", ZOConfig(lr=1e-4, eps=1e-3), hizoo_alpha=alpha)
    for ids in batches(3):
        before = {i: d.clone() for i, d in method.curvature.items()}
        method.step(lambda ids=ids: lm_loss(model, ids))
        for i, d in method.curvature.items():
            assert (d > 0).all() and (d >= (1 - alpha) * before[i] * (1 - 1e-6)).all()


def test_hizoo_weight_decay_with_alpha_zero_is_mezos_bit_for_bit():
    """The decay factor, its sign and which tensors it skips (MeZO's name rule) are MeZO's; MeZO's own decay is
    checked against a plain reference in tests/zo/test_estimator.py."""
    config = ZOConfig(lr=1e-2, eps=1e-3, weight_decay=0.5)
    hizoo_model, mezo_model = build_tiny_model("llama", 400), build_tiny_model("llama", 400)
    run(make(hizoo_model, "hizoo", config, hizoo_alpha=0.0), hizoo_model, batches(3))
    run(make(mezo_model, "mezo", config), mezo_model, batches(3))
    undecayed = build_tiny_model("llama", 400)
    run(make(undecayed, "hizoo", ZOConfig(lr=1e-2, eps=1e-3), hizoo_alpha=0.0), undecayed, batches(3))
    moved = 0
    for (name, p), q, r in zip(hizoo_model.named_parameters(), mezo_model.parameters(), undecayed.parameters()):
        assert torch.equal(p, q), name
        moved += not torch.equal(p, r)
    assert moved  # the decay really acted
