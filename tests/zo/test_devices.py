"""The key invariants on every device this machine has (cpu always; each CUDA device and MPS marked `gpu`,
run by scripts/gpu_check.sh), device selection, and model placement with accelerate (hooks, device maps,
the paper's real configs on the meta device)."""
from __future__ import annotations

import pytest
import torch

from conftest import build_tiny_model
from zo.blocks import parameter_blocks
from zo.estimator import ZOConfig, ZOOptimizer
from zo.models import check_trainable_placement, input_device, resolve_device
from zo.noise import NoiseSource
from zo.perturb import VirtualPerturbation
from zo.pertnn import PertNNBank
from zo.sigma import ConstantSigma, LearnedSigma
from zo.stats import block_stats


def _accelerators() -> list:
    found = [f"cuda:{k}" for k in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        found.append("mps")
    if not found:  # listed anyway, so that a GPU-less run reports what it skipped
        return [pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skip(reason="no accelerator")])]
    return [pytest.param(d, marks=pytest.mark.gpu) for d in found]


DEVICES = ["cpu", *_accelerators()]


def _tiny(device: str, dtype=torch.float32):
    return build_tiny_model("llama", 400, dtype=dtype).to(device)


def _batches(n: int, device: str):
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(3, 400, (3, 10), generator=gen).to(device) for _ in range(n)]


def _loss(model, ids):
    return model(input_ids=ids, labels=ids).loss


def _run(model, sigma, config, batches, seed=5):
    opt = ZOOptimizer(model, sigma, config, seed=seed, noise=NoiseSource(threads=2))
    return opt, [opt.step(lambda ids=ids: _loss(model, ids)) for ids in batches]


def _constant_bank(model) -> PertNNBank:
    bank = PertNNBank([b.name for b in parameter_blocks(model)])
    with torch.no_grad():
        bank.w2.zero_()
        bank.b2.fill_(1.0)
    return bank


@pytest.mark.parametrize("device", DEVICES)
def test_mezo_matches_a_plain_reference_on_the_device(device):
    config = ZOConfig(lr=1e-3, eps=1e-3)
    model, ref = _tiny(device), _tiny(device)
    batches = _batches(3, device)
    _, records = _run(model, ConstantSigma(parameter_blocks(model)), config, batches)
    noise = NoiseSource(threads=1)
    blocks = parameter_blocks(ref)
    for rec, ids in zip(records, batches):
        zs = [noise.block_noise(rec.seed, b.index, b.param.shape, device) for b in blocks]
        saved = [b.param.detach().clone() for b in blocks]
        with torch.no_grad():
            for b, z in zip(blocks, zs):
                b.param.add_(z, alpha=config.eps)
            lp = _loss(ref, ids).item()
            for b, z, s in zip(blocks, zs, saved):
                b.param.copy_(s).add_(z, alpha=-config.eps)
            lm = _loss(ref, ids).item()
            for b, z, s in zip(blocks, zs, saved):
                b.param.copy_(s).add_(z, alpha=-config.lr * (lp - lm) / (2 * config.eps))
        assert (rec.loss_plus, rec.loss_minus) == (lp, lm)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("perturbation", ["virtual", "inplace"])
def test_constant_sigma_bank_reproduces_mezo_on_the_device(device, perturbation):
    config = ZOConfig(lr=1e-3, eps=1e-3, perturbation=perturbation)
    mezo_model, ft_model = _tiny(device), _tiny(device)
    _, mezo = _run(mezo_model, ConstantSigma(parameter_blocks(mezo_model)), config, _batches(3, device))
    sigma = LearnedSigma(_constant_bank(ft_model), parameter_blocks(ft_model), batch_size=3, normalize=True)
    _, learned = _run(ft_model, sigma, config, _batches(3, device))
    assert [r.to_dict() for r in mezo] == [r.to_dict() for r in learned]
    for p, q in zip(mezo_model.parameters(), ft_model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_virtual_perturbation_restores_exactly_on_the_device(device, dtype):
    model = _tiny(device, dtype)
    before = [p.detach().clone() for p in model.parameters()]
    blocks = parameter_blocks(model)
    ids = _batches(1, device)[0]
    with torch.inference_mode():
        clean = _loss(model, ids).float()
        ctx = VirtualPerturbation(model, blocks, NoiseSource(threads=2), 7, [1e-2] * len(blocks))
        with ctx:
            perturbed = _loss(model, ids).float()
        ctx.check_all_applied()
    assert not torch.equal(clean, perturbed)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


@pytest.mark.parametrize("device", DEVICES)
def test_replay_rebuilds_the_weights_on_the_device(device):
    config = ZOConfig(lr=1e-3, eps=1e-3)
    model, replayed = _tiny(device), _tiny(device)
    bank = PertNNBank([b.name for b in parameter_blocks(model)], generator=torch.Generator().manual_seed(2))
    _, records = _run(model, LearnedSigma(bank, parameter_blocks(model), 3), config, _batches(3, device))
    opt = ZOOptimizer(replayed, LearnedSigma(bank, parameter_blocks(replayed), 3), config, seed=5,
                      noise=NoiseSource(threads=1))
    for record in records:
        opt.replay(record)
    for p, q in zip(model.parameters(), replayed.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("device", DEVICES)
def test_statistics_on_the_device_match_the_cpu(device):
    model = _tiny(device)
    mean, var = block_stats(parameter_blocks(model))
    assert mean.device.type == var.device.type == "cpu"
    cpu_mean, cpu_var = block_stats(parameter_blocks(model.to("cpu")))
    torch.testing.assert_close(mean, cpu_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(var, cpu_var, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["mezo_adam", "hizoo", "lozo"])
def test_method_state_is_checkpointed_in_host_memory_and_resumes_on_the_device(device, mode):
    """P-sized state (moments, curvature, momenta) is copied to the host for a checkpoint, not cloned on the GPU,
    and a resume copies it back into the device's tensors."""
    from zo.methods import MethodContext, build_method
    options = {"hizoo": {"hizoo_alpha": 1e-2}, "lozo": {"lozo_beta": 0.9, "lozo_interval": 2}}.get(mode, {})

    def method_on(model):
        ctx = MethodContext(model, parameter_blocks(model), ZOConfig(lr=1e-3, eps=1e-3), seed=5,
                            noise=NoiseSource(threads=1), batch_size=3)
        return build_method(mode, ctx, dict(options))

    def tensors(state):
        return [t for v in state.values() for t in (v.values() if isinstance(v, dict) else v if isinstance(v, list)
                                                    else [v]) if isinstance(t, torch.Tensor)]

    model = _tiny(device)
    method = method_on(model)
    for ids in _batches(3, device):
        method.step(lambda ids=ids: _loss(model, ids))
    state = method.state_dict()
    assert tensors(state) and all(t.device.type == "cpu" for t in tensors(state))
    resumed_model = _tiny(device)
    resumed = method_on(resumed_model)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(tensors(resumed.state_dict()), tensors(state)))
    ids = _batches(1, device)[0]
    resumed.step(lambda: _loss(resumed_model, ids))  # the state went back to the device: a step runs there


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_noise_and_steps_do_not_depend_on_which_cuda_device_holds_a_block():
    noise = NoiseSource(threads=1)
    shape = torch.Size([1000, 700])  # several chunks
    assert torch.equal(noise.block_noise(3, 1, shape, "cuda:0").cpu(), noise.block_noise(3, 1, shape, "cuda:1").cpu())
    config = ZOConfig(lr=1e-3, eps=1e-3)
    whole = _tiny("cuda:0")
    split = _tiny("cuda:0")
    split.model.layers[1].to("cuda:1")  # blocks on two devices; inputs follow via a pre-hook
    split.model.layers[1].register_forward_pre_hook(
        lambda m, args, kwargs: (tuple(a.to("cuda:1") if torch.is_tensor(a) else a for a in args),
                                 {k: v.to("cuda:1") if torch.is_tensor(v) else v for k, v in kwargs.items()}),
        with_kwargs=True)
    split.model.layers[1].register_forward_hook(lambda m, a, out: tuple(
        o.to("cuda:0") if torch.is_tensor(o) else o for o in out) if isinstance(out, tuple) else out.to("cuda:0"))
    _, a = _run(whole, ConstantSigma(parameter_blocks(whole)), config, _batches(2, "cuda:0"))
    _, b = _run(split, ConstantSigma(parameter_blocks(split)), config, _batches(2, "cuda:0"))
    assert [r.seed for r in a] == [r.seed for r in b]
    for p, q in zip(whole.parameters(), split.parameters()):
        torch.testing.assert_close(p.cpu(), q.cpu(), rtol=0, atol=1e-6)


# ---- device selection and placement -------------------------------------------------------------
def test_device_selection():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == resolve_device(None).type == expected
    with pytest.raises(ValueError, match="unknown device|unsupported device"):
        resolve_device("tpu7")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:1")


def test_offloaded_weights_and_int8_are_refused(tiny_llama_dir):
    from accelerate.utils import set_module_tensor_to_device

    from zo.models import load_model

    model = build_tiny_model("llama", 400)
    check_trainable_placement(model)
    set_module_tensor_to_device(model, "model.layers.1.mlp.up_proj.weight", "meta")
    with pytest.raises(ValueError, match="offloaded"):
        check_trainable_placement(model)
    with pytest.raises(ValueError, match="load_int8"):
        load_model(tiny_llama_dir, load_int8=True)


def test_zo_steps_through_accelerate_hooks_equal_plain_steps():
    """accelerate's big-model hooks (AlignDevicesHook wraps every module's forward) must not change a step:
    the virtual perturbation then goes through its generic pre/post-hook path, bit for bit the same."""
    from accelerate import dispatch_model

    config = ZOConfig(lr=1e-3, eps=1e-3)
    plain, hooked = _tiny("cpu"), _tiny("cpu")
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
                  "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    hooked = dispatch_model(hooked, device_map, main_device="cpu", force_hooks=True)
    assert hasattr(hooked.model.layers[0].self_attn.q_proj, "_hf_hook")
    for sigma_of in (lambda m: ConstantSigma(parameter_blocks(m)),
                     lambda m: LearnedSigma(PertNNBank([b.name for b in parameter_blocks(m)],
                                                       generator=torch.Generator().manual_seed(4)),
                                            parameter_blocks(m), 3)):
        _, a = _run(plain, sigma_of(plain), config, _batches(2, "cpu"))
        _, b = _run(hooked, sigma_of(hooked), config, _batches(2, "cpu"))
        assert [r.to_dict() for r in a] == [r.to_dict() for r in b]
    for p, q in zip(plain.parameters(), hooked.parameters()):
        assert torch.equal(p, q)
    assert input_device(hooked) == torch.device("cpu")


REAL_PLACEMENTS = {  # model: (GPUs, GiB each) that hold it in fp16 with room for activations
    "Llama-3.2-1B": (2, 2), "Llama-3.1-8B": (2, 12), "Qwen2.5-14B": (4, 10), "OPT-30B": (4, 20)}


@pytest.mark.parametrize("name", list(REAL_PLACEMENTS))
def test_real_configs_are_placed_whole_on_gpus_with_every_block_resident(name):
    """accelerate's device_map="auto" placement of the paper's models, computed on the meta device: every ZO
    block lands on a GPU (no offload), each decoder layer on one device, tied weights together."""
    from accelerate import infer_auto_device_map
    from transformers import AutoConfig, AutoModelForCausalLM

    from test_convert_bank import MODELS

    cfg = AutoConfig.for_model(**MODELS[name])
    with torch.device("meta"):
        net = AutoModelForCausalLM.from_config(cfg, dtype=torch.float16)
    gpus, gib = REAL_PLACEMENTS[name]
    device_map = infer_auto_device_map(net, max_memory={k: f"{gib}GiB" for k in range(gpus)},
                                       no_split_module_classes=net._no_split_modules, dtype=torch.float16)

    def device_of(param_name: str):
        owner = max((m for m in device_map if m == "" or param_name == m or param_name.startswith(m + ".")),
                    key=len)
        return device_map[owner]

    blocks = parameter_blocks(net)
    placed = {b.name: device_of(b.name) for b in blocks}
    assert all(isinstance(d, int) for d in placed.values()), {n: d for n, d in placed.items() if not isinstance(d, int)}
    assert len(set(placed.values())) > 1  # really spread over several devices
    layers: dict[str, set] = {}
    for block_name, device in placed.items():
        parts = block_name.split(".layers.")
        if len(parts) == 2:
            layers.setdefault(parts[1].split(".")[0], set()).add(device)
    assert all(len(devices) == 1 for devices in layers.values())
    if cfg.tie_word_embeddings:
        assert device_of("lm_head.weight") == placed[blocks[0].name] or "lm_head" not in device_map
