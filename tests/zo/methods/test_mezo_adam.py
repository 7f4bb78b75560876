import torch

from conftest import build_tiny_model, central_losses
from method_helpers import batches, make, one_torch_thread, run  # noqa: F401
from zo.blocks import parameter_blocks
from zo.estimator import ZOConfig
from zo.noise import NoiseSource


def reference_mezo_adam(model, seeds, lr, eps, betas=(0.9, 0.999)):
    """Plain MeZO probe (perturb, restore by copy), then torch.optim.Adam with .grad = g * z."""
    blocks = parameter_blocks(model)
    noise = NoiseSource(threads=1)
    adam = torch.optim.Adam([b.param for b in blocks], lr=lr, betas=betas, foreach=False)
    losses = []
    for seed, ids in zip(seeds, batches(len(seeds))):
        zs = [noise.block_noise(seed, b.index, b.param.shape) for b in blocks]
        lp, lm, _ = central_losses(model, blocks, zs, ids, eps)
        g = (lp - lm) / (2 * eps)
        for b, z in zip(blocks, zs):
            b.param.grad = g * z
        adam.step()
        adam.zero_grad(set_to_none=True)
        losses.append((lp, lm))
    return losses, adam


def test_mezo_adam_matches_torch_adam_over_g_times_z_bit_for_bit():
    model, ref = build_tiny_model("llama", 400), build_tiny_model("llama", 400)
    method = make(model, "mezo_adam", ZOConfig(lr=1e-3, eps=1e-3))
    records = run(method, model, batches(4))
    ref_losses, adam = reference_mezo_adam(ref, [r.seed for r in records], 1e-3, 1e-3)
    assert [(r.loss_plus, r.loss_minus) for r in records] == ref_losses
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), name
    for b, m in zip(parameter_blocks(ref), method.exp_avg):  # the moments too
        assert torch.equal(adam.state[b.param]["exp_avg"], m)


def test_first_step_moves_each_coordinate_by_lr_times_the_sign_of_g_z():
    model = build_tiny_model("llama", 400)
    before = [b.param.detach().clone() for b in parameter_blocks(model)]
    lr = 1e-3
    method = make(model, "mezo_adam", ZOConfig(lr=lr, eps=1e-3))
    record = run(method, model, batches(1))[0]
    noise = NoiseSource(threads=1)
    for b, old in zip(parameter_blocks(model), before):
        gz = record.projected_grad * noise.block_noise(record.seed, b.index, b.param.shape)
        big = gz.abs() > 1e-4  # |g z| >> adam eps: m_hat / sqrt(v_hat) = +-1
        step = (b.param.detach() - old)[big]
        assert torch.allclose(step, -lr * gz.sign()[big], rtol=1e-4, atol=1e-7), b.name


def test_mezo_adam_weight_decay_is_adamws_with_mezos_exemptions():
    """Decoupled decay theta(1 - lr wd) before the Adam step, as torch's AdamW; names with bias / layernorm are
    exempt (MeZO's rule), so Llama's final `model.norm.weight` is decayed and its layer norms are not."""
    lr, wd = 1e-3, 0.5
    model, ref = build_tiny_model("llama", 400), build_tiny_model("llama", 400)
    records = run(make(model, "mezo_adam", ZOConfig(lr=lr, eps=1e-3, weight_decay=wd)), model, batches(3))
    blocks = parameter_blocks(ref)
    exempt = [b for b in blocks if "layernorm" in b.name or "bias" in b.name]
    assert exempt and any(b.name == "model.norm.weight" for b in blocks)
    decayed = [b for b in blocks if b not in exempt]
    adamw = torch.optim.AdamW([{"params": [b.param for b in decayed], "weight_decay": wd},
                               {"params": [b.param for b in exempt], "weight_decay": 0.0}], lr=lr, foreach=False)
    noise = NoiseSource(threads=1)
    for record in records:
        for b in blocks:
            b.param.grad = record.projected_grad * noise.block_noise(record.seed, b.index, b.param.shape)
        adamw.step()
        adamw.zero_grad(set_to_none=True)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.equal(p, q), name


def test_fp16_weights_keep_float32_moments_and_finite_steps():
    """ZO-Bench keeps the moments in the model dtype: in fp16 Adam's eps (1e-8) is 0 and (1 - beta2)(g z)^2
    underflows for small |g z| while m does not, so m / sqrt(v) is inf there. Here the moments are float32."""
    lr = 1e-3
    model = build_tiny_model("llama", 400, dtype=torch.float16)
    before = [b.param.detach().clone() for b in parameter_blocks(model)]
    method = make(model, "mezo_adam", ZOConfig(lr=lr, eps=1e-2))
    record = run(method, model, batches(1))[0]
    assert all(m.dtype == v.dtype == torch.float32 for m, v in zip(method.exp_avg, method.exp_avg_sq))
    noise = NoiseSource(threads=1)
    small = 0
    for b, old, m, v in zip(parameter_blocks(model), before, method.exp_avg, method.exp_avg_sq):
        assert torch.isfinite(b.param).all(), b.name
        gz = (record.projected_grad * noise.block_noise(record.seed, b.index, b.param.shape)).to(torch.float16)
        m16, v16 = (0.1 * gz), (1e-3 * gz * gz)  # the first step's moments as ZO-Bench keeps them
        small += int(((v16 == 0) & (m16 != 0)).sum())
        # each coordinate moved by lr (m_hat / sqrt(v_hat) = +-1), up to one fp16 spacing of the weight
        expected = old.float() - lr * m.sign()
        spacing = torch.exp2(torch.floor(torch.log2(expected.abs().clamp(min=2.0 ** -14))) - 10)
        assert ((b.param.float() - expected).abs() <= spacing).all(), b.name
    assert small > 0  # fp16 moments would have divided by zero on these coordinates
