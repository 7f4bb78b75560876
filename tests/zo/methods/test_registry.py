import copy

import pytest
import torch

from conftest import build_tiny_model
from method_helpers import batches, lm_loss, make, one_torch_thread, run, weights  # noqa: F401
from zo.blocks import parameter_blocks
from zo.estimator import ZOConfig, ZOOptimizer
from zo.methods import TRAIN_MODES, check_options, get_method, has_replay, method_config
from zo.noise import NoiseSource
from zo.pertnn import PertNNBank
from zo.sigma import ConstantSigma

EXPECTED_MODES = ("mezo", "zo_fine_tuner", "mezo_adam", "hizoo", "lozo", "fzoo", "fo_sgd", "fo_adam")
# Small option values so that every stateful path is used within four steps.
OPTIONS = {"hizoo": {"hizoo_alpha": 1e-2}, "lozo": {"lozo_rank": 2, "lozo_interval": 2, "lozo_beta": 0.9},
           "fzoo": {"fzoo_n": 3}, "fo_sgd": {"fo_momentum": 0.9}}


def test_registry_lists_the_issue_methods():
    assert TRAIN_MODES == EXPECTED_MODES


def test_unknown_mode_lists_the_registry():
    with pytest.raises(ValueError) as err:
        get_method("adam")
    assert all(mode in str(err.value) for mode in EXPECTED_MODES)


@pytest.mark.parametrize("mode, values, given, owner", [
    ("mezo", {"lozo_rank": 4}, (), "lozo"),
    ("mezo", {}, ("lozo_rank",), "lozo"),  # named on the command line, even at its default value
    ("hizoo", {"adam_beta1": 0.8}, (), "mezo_adam / fo_adam"),
    ("fo_adam", {"fo_momentum": 0.5}, (), "fo_sgd"),
    ("lozo", {"hizoo_alpha": 0.0}, (), "hizoo"),
])
def test_another_methods_option_is_refused_naming_its_method(mode, values, given, owner):
    with pytest.raises(ValueError, match=f"is an option of {owner}, not of train_mode {mode}"):
        check_options(mode, values, given)


def test_own_and_shared_options_are_accepted():
    check_options("fo_adam", {"adam_beta1": 0.8, "fo_max_grad_norm": 0.0}, ("adam_beta1",))
    check_options("lozo", {"lozo_rank": 1, "lozo_interval": 100})


@pytest.mark.parametrize("mode, values, message", [
    ("lozo", {"lozo_rank": 0}, "lozo_rank must be >= 1"),
    ("lozo", {"lozo_interval": -1}, "lozo_interval must be >= 1"),
    ("fzoo", {"fzoo_n": 0}, "fzoo_n must be >= 1"),
    ("hizoo", {"hizoo_alpha": -1.0}, "hizoo_alpha must be in"),
])
def test_bad_option_values_are_refused(mode, values, message):
    with pytest.raises(ValueError, match=message):
        method_config(mode, values)


def test_mezo_from_the_registry_is_the_shared_estimator_bit_for_bit():
    direct_model, registry_model = build_tiny_model("llama", 400), build_tiny_model("llama", 400)
    config = ZOConfig(lr=1e-3, eps=1e-3, weight_decay=0.1)
    direct = ZOOptimizer(direct_model, ConstantSigma(parameter_blocks(direct_model)), config, seed=5,
                         noise=NoiseSource(threads=1))
    records = run(direct, direct_model, batches(3))
    method = make(registry_model, "mezo", config)
    assert [r.to_dict() for r in run(method, registry_model, batches(3))] == [r.to_dict() for r in records]
    assert all(torch.equal(p, q) for p, q in zip(direct_model.parameters(), registry_model.parameters()))


@pytest.fixture
def bank_path(tmp_path):
    model = build_tiny_model("llama", 400)
    path = tmp_path / "bank.safetensors"
    PertNNBank([b.name for b in parameter_blocks(model)], generator=torch.Generator().manual_seed(0)).save(path)
    return str(path)


@pytest.mark.parametrize("mode", EXPECTED_MODES)
def test_state_dict_resumes_every_method_bit_for_bit(mode, bank_path):
    """4 steps in one go == 2 steps, checkpoint (weights + state_dict), a fresh method, 2 more steps."""
    extra = dict(OPTIONS.get(mode, {}))
    if mode == "zo_fine_tuner":
        extra["ctx"] = {"load_mlp_path": bank_path}
    data = batches(4)
    whole_model = build_tiny_model("llama", 400)
    whole = make(whole_model, mode, **copy.deepcopy(extra))
    whole_records = [r.to_dict() for r in run(whole, whole_model, data)]

    first_model = build_tiny_model("llama", 400)
    first = make(first_model, mode, **copy.deepcopy(extra))
    run(first, first_model, data[:2])
    saved_state = copy.deepcopy(first.state_dict())
    saved_weights = weights(first_model)
    run(first, first_model, data[2:3])  # the running method moves on: the checkpoint must not alias it

    resumed_model = build_tiny_model("llama", 400, seed=9)
    with torch.no_grad():
        for p, w in zip(resumed_model.parameters(), saved_weights):
            p.copy_(w)
    resumed = make(resumed_model, mode, seed=123, **copy.deepcopy(extra))  # a different seed: the state wins
    resumed.load_state_dict(saved_state)
    resumed_records = [r.to_dict() for r in run(resumed, resumed_model, data[2:])]
    for mine, ref in zip(resumed_records, whole_records[2:]):
        mine.pop("seconds", None), ref.pop("seconds", None)
        assert mine == ref
    for (name, p), q in zip(whole_model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(p, q), name
    assert any(not torch.equal(p, q) for p, q in zip(whole_model.parameters(), build_tiny_model("llama", 400).parameters()))


@pytest.mark.parametrize("mode", EXPECTED_MODES)
def test_every_method_records_what_the_loop_logs(mode, bank_path):
    extra = dict(OPTIONS.get(mode, {}))
    if mode == "zo_fine_tuner":
        extra["ctx"] = {"load_mlp_path": bank_path}
    model = build_tiny_model("llama", 400)
    method = make(model, mode, **extra)
    assert method.model is model
    record = method.step(lambda: lm_loss(model, batches(1)[0])).to_dict()
    assert {"step", "seed", "loss_plus", "loss_minus", "projected_grad", "lr"} <= set(record)
    assert record["step"] == 0 and record["lr"] == 1e-3
    assert isinstance(method.log_extra(), dict)
    describe = method.describe()
    assert describe["extra_state_bytes"] >= 0
    n_params = sum(b.param.numel() for b in parameter_blocks(model))
    if mode in ("mezo_adam", "fo_adam"):
        assert describe["extra_state_bytes"] >= 2 * 4 * n_params  # the two moments are reported
    if mode == "hizoo":
        assert describe["extra_state_bytes"] == 4 * n_params


@pytest.mark.parametrize("mode", EXPECTED_MODES)
def test_has_replay_says_what_the_built_method_can_do(mode, bank_path):
    # read from the builder's return annotation; a built method is the ground truth, so the two cannot drift
    extra = dict(OPTIONS.get(mode, {}))
    if mode == "zo_fine_tuner":
        extra["ctx"] = {"load_mlp_path": bank_path}
    method = make(build_tiny_model("llama", 400), mode, **extra)
    assert has_replay(mode) == callable(getattr(method, "replay", None))
    assert has_replay(mode) == (mode in ("mezo", "zo_fine_tuner"))  # the two ZOOptimizer methods


# MeZO and ZO-FT: tests/zo/test_estimator.py. LOZO twice: plain (beta 0) and LOZO-M update by different sweeps.
ZO_BASELINES = [("mezo_adam", {}), ("hizoo", OPTIONS["hizoo"]), ("lozo", {**OPTIONS["lozo"], "lozo_beta": 0.0}),
                ("lozo", OPTIONS["lozo"]), ("fzoo", OPTIONS["fzoo"])]


@pytest.mark.parametrize("mode, options", ZO_BASELINES)
def test_weight_decay_is_decoupled_and_follows_mezos_exemptions(mode, options):
    """One step from the same weights with and without decay: same probes, so the weights differ by exactly
    -lr * wd * theta_0 on decayed tensors (MeZO's name rule: Llama's final norm is decayed, its layer norms and
    biases are not) and not at all elsewhere."""
    lr, wd = 1e-2, 0.5
    plain_model, decayed_model = build_tiny_model("llama", 400), build_tiny_model("llama", 400)
    start = weights(plain_model)
    plain = run(make(plain_model, mode, ZOConfig(lr=lr, eps=1e-3), **options), plain_model, batches(1))
    decayed = run(make(decayed_model, mode, ZOConfig(lr=lr, eps=1e-3, weight_decay=wd), **options),
                  decayed_model, batches(1))
    assert plain[0].loss_plus == decayed[0].loss_plus and plain[0].projected_grad == decayed[0].projected_grad
    names = [name for name, _ in plain_model.named_parameters()]
    assert "model.norm.weight" in names
    for name, p, q, w in zip(names, plain_model.parameters(), decayed_model.parameters(), start):
        exempt = "layernorm" in name or "bias" in name
        expected = torch.zeros_like(w) if exempt else -lr * wd * w
        assert torch.allclose(q - p, expected, rtol=1e-4, atol=1e-7), name


@pytest.mark.parametrize("mode, options", ZO_BASELINES)
def test_inplace_perturbation_matches_virtual(mode, options):
    """The in-place probes (perturb, evaluate, undo) end where the virtual ones, which never write theta, do: the
    same losses and weights up to fp32 rounding of the undo."""
    # HiZOO's D update reads L+ + L- - 2 L0, a difference of nearly equal losses that the in-place rounding
    # changes by a few per cent here (2e-5 +- 1e-6): a small alpha keeps that out of the weights, so the
    # probes and their undo are what is compared
    options = {**options, **({"hizoo_alpha": 1e-6} if mode == "hizoo" else {})}
    models = {kind: build_tiny_model("llama", 400) for kind in ("virtual", "inplace")}
    start = weights(models["virtual"])
    records = {kind: run(make(model, mode, ZOConfig(lr=1e-2, eps=1e-3, perturbation=kind), **options),
                         model, batches(3))
               for kind, model in models.items()}
    for v, i in zip(records["virtual"], records["inplace"]):
        assert v.loss_plus == pytest.approx(i.loss_plus, rel=1e-5) and v.seed == i.seed
    moved = max(float((p.detach() - w).abs().max()) for p, w in zip(models["virtual"].parameters(), start))
    assert moved > 1e-4
    for (name, p), q in zip(models["virtual"].named_parameters(), models["inplace"].parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-3 * moved), name


@pytest.mark.parametrize("recorded, used, warned", [("false", True, True), ("false", False, False),
                                                    ("true", False, True), (None, True, False)])
def test_a_bank_used_with_another_normalization_than_it_was_trained_with_is_warned(tmp_path, tiny_llama_dir,
                                                                                   caplog, recorded, used, warned):
    from transformers import AutoModelForCausalLM

    from zo.init_bank import init_bank
    from zo.methods import MethodContext, build_method

    bank = init_bank(str(tiny_llama_dir), tmp_path / "b.safetensors")
    if recorded is not None:
        bank.save(tmp_path / "b.safetensors", {**bank.metadata, "need_normalization": recorded})
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    ctx = MethodContext(model, parameter_blocks(model), ZOConfig(), load_mlp_path=str(tmp_path / "b.safetensors"),
                        need_normalization=used)
    build_method("zo_fine_tuner", ctx, {})
    assert any("meta-trained with need_normalization" in m for m in caplog.messages) == warned
