import copy

import pytest
import torch

from conftest import build_tiny_model
from method_helpers import batches, lm_loss, make, one_torch_thread, run  # noqa: F401
from zo.blocks import parameter_blocks
from zo.estimator import ZOConfig


def test_fo_sgd_is_theta_minus_lr_times_the_gradient():
    model = build_tiny_model("llama", 400)
    ref = copy.deepcopy(model)
    ids = batches(1)[0]
    record = run(make(model, "fo_sgd", ZOConfig(lr=1e-2), fo_max_grad_norm=0.0), model, [ids])[0]
    params = [b.param for b in parameter_blocks(ref)]
    loss = lm_loss(ref, ids)
    grads = torch.autograd.grad(loss, params)
    assert record.loss_plus == float(loss.detach()) and record.projected_grad is None
    for p, q, g in zip(parameter_blocks(model), params, grads):  # equal up to fp32 rounding of the sum
        assert torch.allclose(p.param, q - 1e-2 * g, rtol=0, atol=1e-8), p.name
    assert all(p.grad is None for p in model.parameters())  # no gradient kept between steps


def test_fo_adam_first_step_is_lr_times_the_gradient_sign_and_dropout_is_off():
    model = build_tiny_model("opt", 400)  # the tiny OPT has dropout 0.1
    ids = batches(1)[0]
    with torch.no_grad():
        eval_loss = float(lm_loss(model.eval(), ids))
    ref = copy.deepcopy(model)
    grads = torch.autograd.grad(lm_loss(ref, ids), [b.param for b in parameter_blocks(ref)])
    before = [b.param.detach().clone() for b in parameter_blocks(model)]
    record = run(make(model, "fo_adam", ZOConfig(lr=1e-3), fo_max_grad_norm=0.0), model, [ids])[0]
    assert record.loss_plus == eval_loss
    for b, old, g in zip(parameter_blocks(model), before, grads):
        big = g.abs() > 1e-5
        assert torch.allclose((b.param.detach() - old)[big], -1e-3 * g.sign()[big], rtol=1e-3, atol=1e-8), b.name


def test_gradient_clipping_bounds_the_sgd_step():
    model = build_tiny_model("llama", 400)
    before = torch.cat([b.param.detach().reshape(-1).clone() for b in parameter_blocks(model)])
    record = run(make(model, "fo_sgd", ZOConfig(lr=1.0), fo_max_grad_norm=0.5), model, batches(1))[0]
    after = torch.cat([b.param.detach().reshape(-1) for b in parameter_blocks(model)])
    assert record.extra["grad_norm"] > 0.5
    assert float((after - before).norm()) <= 0.5 * (1 + 1e-5)


def test_torchs_adam_on_float16_weights_steps_to_non_finite_weights():
    """Why fo_adam and the L2L Adam trajectory refuse float16 (zo.models.refuse_float16_adam): if torch ever
    keeps float16 moments finite, this fails and the refusal can go."""
    weight = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    weight.grad = torch.tensor([1e-5, 1e-3, 1e-1, 1.0], dtype=torch.float16)
    torch.optim.Adam([weight], lr=1e-3).step()
    assert not torch.isfinite(weight).all()


def test_fo_adam_refuses_float16_weights_and_takes_bfloat16():
    model = build_tiny_model("llama", 400).to(torch.float16)
    with pytest.raises(ValueError, match="float16 they underflow"):
        make(model, "fo_adam")
    make(model.to(torch.bfloat16), "fo_adam")
    make(build_tiny_model("llama", 400).to(torch.float16), "fo_sgd")  # SGD keeps no moments to underflow
