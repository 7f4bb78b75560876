"""What every method shares: the interface the loop and the recipe use, and the ZO probe.

A method is built once per run and then `step(loss_fn)` is called once per batch; `loss_fn()` gives
the batch loss of the model as it currently is. Interface (duck-typed, see `Method`):
  step(loss_fn) -> record with .to_dict() and .loss_plus / .projected_grad (the loop logs it)
  state_dict() / load_state_dict(state): ALL the method's state (step count, seed stream, buffers)
  log_extra() -> dict merged into each train_log line;  describe() -> dict for config.json
  model (the nn.Module it trains)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from zo.blocks import Block
from zo.estimator import NonFiniteLossError, ZOConfig, is_decayed, lr_at
from zo.noise import NoiseSource
from zo.perturb import TwoPointProbe, VirtualPerturbation, add_noise_

LossFn = Callable[[], torch.Tensor]


class Method(Protocol):
    model: nn.Module

    def step(self, loss_fn: LossFn): ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def log_extra(self) -> dict: ...

    def describe(self) -> dict: ...


@dataclass
class MethodRecord:
    """One step of any method. FO and one-sided methods have no L-: loss_minus = loss_plus = the loss."""
    step: int
    seed: int | None
    loss_plus: float
    loss_minus: float
    projected_grad: float | None
    lr: float
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(out.pop("extra"))
        return out


@dataclass
class MethodContext:
    """What the recipe hands a method's builder besides its own options."""
    model: nn.Module
    blocks: Sequence[Block]
    zo: ZOConfig  # lr, eps, weight decay, schedule, perturbation mode: shared by every method
    seed: int = 0
    noise: NoiseSource | None = None
    batch_size: int = 16
    load_mlp_path: str | None = None
    need_normalization: bool = True
    effective_dim_rule: str | None = None
    sigma_dtype: torch.dtype = torch.float32  # float16: the authors' fp16 PertNN (--upstream_fp16_semantics)


def tensor_bytes(tensors) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


def host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A checkpoint's copy of method state: in host memory, so saving P-sized state (moments, curvature) never
    needs that much free memory again on the GPU; loading copies it back into the live tensors."""
    return tensor.detach().to("cpu", copy=True)


def add_rows_(rows: torch.Tensor, delta: torch.Tensor, alpha: float) -> None:
    """rows += alpha * delta with one rounding (half-precision weights computed in float32)."""
    if rows.dtype in (torch.float16, torch.bfloat16):
        rows.copy_((rows.float() + delta.float() * alpha).to(rows.dtype))
    else:
        rows.add_(delta if delta.dtype == rows.dtype else delta.to(rows.dtype), alpha=alpha)


class ZOMethod:
    """Base of the zeroth-order methods: seed stream, lr schedule, perturbed losses, weight decay."""

    name = "zo"

    def __init__(self, ctx: MethodContext):
        self.model = ctx.model
        self.blocks = list(ctx.blocks)
        self.config = ctx.zo
        self.noise = ctx.noise or NoiseSource()
        self.seed_rng = np.random.Generator(np.random.PCG64(ctx.seed))
        self.step_count = 0
        self.decayed = [is_decayed(b.name, b.param, self.config.weight_decay_rule) for b in self.blocks]
        self.probe = TwoPointProbe(self.config.pair_forwards)

    def next_seed(self) -> int:
        return int(self.seed_rng.integers(0, 2**62))

    def current_lr(self) -> float:
        return lr_at(self.config, self.step_count)

    def decay_factors(self, lr: float) -> list[float]:
        wd = self.config.weight_decay
        return [1.0 - lr * wd if (wd and d) else 1.0 for d in self.decayed]

    def perturbed_loss(self, loss_fn: LossFn, field, seed: int, scale: float) -> float:
        """L(theta + scale * direction) with theta untouched afterwards (virtual), or written in place
        (inplace: the caller undoes it with `shift`)."""
        if self.config.perturbation == "virtual":
            ctx = VirtualPerturbation(self.model, self.blocks, field, seed, [scale] * len(self.blocks))
            with ctx:
                loss = float(loss_fn())
            ctx.check_all_applied()
            return loss
        self.shift(field, seed, scale)
        return float(loss_fn())

    def shift(self, field, seed: int, scale: float) -> None:
        """theta += scale * direction, in place."""
        with torch.no_grad():
            add_noise_(field, seed, self.blocks, [scale] * len(self.blocks))

    def two_point(self, loss_fn: LossFn, field, seed: int, eps: float) -> tuple[float, float]:
        """(L(theta + eps d), L(theta - eps d)), theta as before on return (in place: up to round-off).
        Virtual: one paired forward where the loss function allows it (zo.paired_calls)."""
        with torch.inference_mode():
            if self.config.perturbation == "inplace":
                plus = self.perturbed_loss(loss_fn, field, seed, eps)
                minus = self.perturbed_loss(loss_fn, field, seed, -2 * eps)
                self.shift(field, seed, eps)
            else:
                plus, minus = self.probe.losses(self.model, self.blocks, field, seed, [eps] * len(self.blocks), loss_fn)
        check_finite(self.step_count, plus, minus)
        return plus, minus

    def base_state(self) -> dict:
        return {"step_count": self.step_count, "seed_rng": self.seed_rng.bit_generator.state}

    def load_base_state(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.seed_rng.bit_generator.state = state["seed_rng"]

    def log_extra(self) -> dict:
        return {}

    def extra_state_bytes(self) -> int:
        return 0

    def describe(self) -> dict:
        return {"method": self.name, "extra_state_bytes": self.extra_state_bytes()}


def check_finite(step: int, *losses: float) -> None:
    if not all(math.isfinite(x) for x in losses):
        raise NonFiniteLossError(f"non-finite loss at step {step}: {list(losses)}")
