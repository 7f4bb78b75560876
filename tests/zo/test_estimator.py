import math

import pytest
import torch

from conftest import build_tiny_model, causal_lm_loss, central_losses
from zo.blocks import parameter_blocks
from zo.estimator import NonFiniteLossError, ZOConfig, ZOOptimizer, lr_at
from zo.noise import NoiseSource
from zo.pertnn import PertNNBank
from zo.sigma import ConstantSigma, LearnedSigma


def _batches(n, vocab=400):
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(3, vocab, (3, 10), generator=gen) for _ in range(n)]


def _run(model, sigma, config, batches, seed=5):
    opt = ZOOptimizer(model, sigma, config, seed=seed, noise=NoiseSource(threads=2))
    records = [opt.step(lambda ids=ids: causal_lm_loss(model, ids)) for ids in batches]
    return opt, records


def _constant_bank(model, value=1.0):
    bank = PertNNBank([b.name for b in parameter_blocks(model)])
    with torch.no_grad():
        bank.w2.zero_()
        bank.b2.fill_(value)
    return bank


def reference_mezo(model, records, lr, eps, noise):
    """Plain MeZO written out: perturb, restore by copy, update with z regenerated from the seed."""
    blocks = parameter_blocks(model)
    losses = []
    for rec, ids in zip(records, _batches(len(records))):
        zs = [noise.block_noise(rec.seed, b.index, b.param.shape) for b in blocks]
        lp, lm, _ = central_losses(model, blocks, zs, ids, eps)
        g = (lp - lm) / (2 * eps)
        with torch.no_grad():
            for b, z in zip(blocks, zs):
                b.param.add_(z, alpha=-lr * g)
        losses.append((lp, lm))
    return losses


@pytest.mark.parametrize("pair_forwards", [False, True])
def test_mezo_matches_a_plain_reference_bit_for_bit(pair_forwards):
    config = ZOConfig(lr=1e-3, eps=1e-3, pair_forwards=pair_forwards)
    model = build_tiny_model("llama", 400)
    ref = build_tiny_model("llama", 400)
    opt, records = _run(model, ConstantSigma(parameter_blocks(model)), config, _batches(4))
    assert opt.probe.paired is pair_forwards  # paired: the + and - forwards ran as one forward (no fallback)
    ref_losses = reference_mezo(ref, records, config.lr, config.eps, NoiseSource(threads=1))
    assert [(r.loss_plus, r.loss_minus) for r in records] == ref_losses
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q), n
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), build_tiny_model("llama", 400).parameters()))


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("perturbation", ["virtual", "inplace"])
def test_constant_sigma_bank_reproduces_mezo_exactly(normalize, perturbation):
    config = ZOConfig(lr=1e-3, eps=1e-3, perturbation=perturbation)
    mezo_model = build_tiny_model("llama", 400)
    _, mezo = _run(mezo_model, ConstantSigma(parameter_blocks(mezo_model)), config, _batches(4))
    ft_model = build_tiny_model("llama", 400)
    blocks = parameter_blocks(ft_model)
    sigma = LearnedSigma(_constant_bank(ft_model), blocks, batch_size=3, normalize=normalize)
    _, learned = _run(ft_model, sigma, config, _batches(4))
    assert [r.to_dict() for r in mezo] == [r.to_dict() for r in learned]
    for p, q in zip(mezo_model.parameters(), ft_model.parameters()):
        assert torch.equal(p, q)


def test_normalization_makes_noise_trace_equal_effective_dimension():
    model = build_tiny_model("llama", 400)
    blocks = parameter_blocks(model)
    bank = PertNNBank([b.name for b in blocks], generator=torch.Generator().manual_seed(3))
    sigma = LearnedSigma(bank, blocks, batch_size=4, normalize=True)
    from zo.stats import block_stats
    coefs = torch.tensor(sigma.coefficients(block_stats(blocks)), dtype=torch.float64)
    assert math.isclose(float((sigma.dims * coefs ** 2).sum()), float(sigma.dims.sum()), rel_tol=1e-12)
    assert coefs.std() > 0  # the bank really gives different scales to different blocks


def test_a_bank_is_normalized_with_the_rule_it_records():
    model = build_tiny_model("llama", 400, tie=True)
    blocks = parameter_blocks(model)
    names = [b.name for b in blocks]
    authors_bank = PertNNBank(names)  # no rule recorded: the authors' banks, trained with upstream's rule
    fair_bank = PertNNBank(names, metadata={"effective_dim_rule": "tied_full"})
    assert LearnedSigma(authors_bank, blocks, 4).effective_dim_rule == "upstream"
    assert LearnedSigma(authors_bank, blocks, 4).dims[0] == 32 * 15 * 4
    assert LearnedSigma(fair_bank, blocks, 4).dims[0] == 400 * 32
    assert LearnedSigma(fair_bank, blocks, 4, effective_dim_rule="upstream").dims[0] == 32 * 15 * 4


@pytest.mark.parametrize("perturbation", ["virtual", "inplace"])
def test_replaying_seeds_and_projected_grads_rebuilds_the_weights(perturbation):
    config = ZOConfig(lr=2e-3, eps=1e-3, perturbation=perturbation, weight_decay=0.1)
    model = build_tiny_model("qwen2", 400)
    bank = PertNNBank([b.name for b in parameter_blocks(model)], generator=torch.Generator().manual_seed(0))
    _, records = _run(model, LearnedSigma(bank, parameter_blocks(model), 3), config, _batches(5))
    fresh = build_tiny_model("qwen2", 400)
    replayer = ZOOptimizer(fresh, LearnedSigma(bank, parameter_blocks(fresh), 3), config, noise=NoiseSource(threads=1))
    for rec in records:
        replayer.replay(rec.to_dict())
    for (n, p), q in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(p, q), n


def test_tied_embedding_is_updated_once():
    config = ZOConfig(lr=1e-2, eps=1e-3)
    model = build_tiny_model("llama", 400, tie=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    before = model.model.embed_tokens.weight.detach().clone()
    opt, records = _run(model, ConstantSigma(parameter_blocks(model)), config, _batches(1))
    rec = records[0]
    z = opt.noise.block_noise(rec.seed, 0, before.shape)
    expected = before.clone().add_(z, alpha=-config.lr * rec.projected_grad)
    assert torch.equal(model.model.embed_tokens.weight, expected)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_non_finite_loss_raises_and_keeps_weights():
    model = build_tiny_model("llama", 400)
    before = [p.detach().clone() for p in model.parameters()]
    for mode in ("virtual", "inplace"):
        opt = ZOOptimizer(model, ConstantSigma(parameter_blocks(model)), ZOConfig(perturbation=mode))
        with pytest.raises(NonFiniteLossError):
            opt.step(lambda: model(input_ids=torch.tensor([[5, 6, 7]])).logits.sum() * float("nan"))
        if mode == "virtual":  # nothing was ever written
            assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
        else:  # restored up to the in-place round trip's fp32 round-off
            assert all(torch.allclose(p, q, rtol=0, atol=1e-6) for p, q in zip(model.parameters(), before))


def test_learning_rate_schedules():
    assert lr_at(ZOConfig(lr=1.0), 50) == 1.0
    linear = ZOConfig(lr=1.0, lr_schedule="linear", total_steps=10)
    assert lr_at(linear, 0) == 1.0 and lr_at(linear, 5) == 0.5 and lr_at(linear, 10) == 0.0
    assert lr_at(ZOConfig(lr=1.0, lr_schedule="cosine", total_steps=10), 5) == pytest.approx(0.5)
    # HF's warm-up (MeZO's Trainer): k/W, so the first update has lr 0; the shifted rule is (k+1)/W
    hf_warmup = ZOConfig(lr=1.0, warmup_steps=4)
    assert [lr_at(hf_warmup, k) for k in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    shifted = ZOConfig(lr=1.0, warmup_steps=4, warmup_rule="shifted")
    assert [lr_at(shifted, k) for k in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    hf_linear = ZOConfig(lr=1.0, warmup_steps=2, lr_schedule="linear", total_steps=6)
    assert [lr_at(hf_linear, k) for k in range(7)] == [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]
    with pytest.raises(ValueError, match="warmup_rule"):
        ZOConfig(warmup_rule="k+1")
    with pytest.raises(ValueError):
        ZOConfig(perturbation="sideways")


def test_weight_decay_rule_mezo_names_and_ndim_on_llama():
    model = build_tiny_model("llama", 400)
    blocks = parameter_blocks(model)
    names = [b.name for b in blocks]
    exempt = {rule: [b.name for b, d in zip(blocks, ZOOptimizer(model, ConstantSigma(blocks),
                                                              ZOConfig(weight_decay_rule=rule)).decayed) if not d]
              for rule in ("mezo", "ndim")}
    # MeZO exempts names with bias / layer_norm / layernorm: the layer norms, but not the final model.norm
    assert exempt["mezo"] == [n for n in names if "layernorm" in n]
    assert "model.norm.weight" not in exempt["mezo"] and "model.norm.weight" in exempt["ndim"]
    assert exempt["ndim"] == [b.name for b in blocks if b.param.dim() == 1]
    with pytest.raises(ValueError, match="weight_decay_rule"):
        ZOConfig(weight_decay_rule="all")


@pytest.mark.parametrize("rule", ["mezo", "ndim"])
def test_weight_decay_shrinks_model_norm_only_under_the_mezo_rule(rule):
    lr, wd = 1e-2, 0.5
    model = build_tiny_model("llama", 400)
    blocks = parameter_blocks(model)
    norm = next(b for b in blocks if b.name == "model.norm.weight")
    before = norm.param.detach().clone()
    opt, records = _run(model, ConstantSigma(blocks), ZOConfig(lr=lr, eps=1e-3, weight_decay=wd,
                                                               weight_decay_rule=rule), _batches(1))
    rec = records[0]
    z = opt.noise.block_noise(rec.seed, norm.index, before.shape)
    factor = 1.0 - lr * wd if rule == "mezo" else 1.0
    expected = before * factor - lr * rec.projected_grad * z
    assert torch.allclose(norm.param, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(norm.param, before * (1.0 - lr * wd if rule == "ndim" else 1.0)
                              - lr * rec.projected_grad * z, rtol=0, atol=1e-4)


def test_fused_block_stats_match_torch_var_mean():
    from zo.stats import block_stats
    model = build_tiny_model("llama", 400)
    with torch.no_grad():
        model.model.norm.weight.fill_(1.0)  # a constant block: variance exactly 0
    blocks = parameter_blocks(model)
    mean, var = block_stats(blocks)
    for b in blocks:
        ref_var, ref_mean = torch.var_mean(b.param.detach().double())
        assert mean[b.index].item() == pytest.approx(ref_mean.item(), rel=1e-5, abs=1e-7)
        assert var[b.index].item() == pytest.approx(ref_var.item(), rel=1e-4, abs=1e-9)
    assert var[[b.name for b in blocks].index("model.norm.weight")] == 0
    # statistics gathered inside the update sweep equal a separate pass over the updated weights
    opt = ZOOptimizer(model, LearnedSigma(_constant_bank(model), blocks, 3), ZOConfig(lr=1e-2), noise=NoiseSource(2))
    ids = _batches(1)[0]
    opt.step(lambda: causal_lm_loss(model, ids))
    fused_mean, fused_var = opt._stats
    sep_mean, sep_var = block_stats(blocks)
    assert torch.equal(fused_mean, sep_mean) and torch.equal(fused_var, sep_var)
    # ... and are accurate for a block near 1 with a tiny spread (no cancellation)
    norm = [b.name for b in blocks].index("model.norm.weight")
    ref_var = torch.var(model.model.norm.weight.detach().double()).item()
    assert 0 < ref_var < 1e-4 and fused_var[norm].item() == pytest.approx(ref_var, rel=1e-3)
