"""HiZOO (Zhao et al., arXiv 2402.15173; the authors' current `trainer.py`): MeZO preconditioned by a
diagonal curvature estimate D (one float32 entry per parameter, initialised to 1).

    L0 = L(theta),  L+- = L(theta +- eps z / sqrt(D)),  g = (L+ - L-) / (2 eps)
    D  <- (1 - alpha) D + alpha |L+ + L- - 2 L0| D z^2 / (2 eps^2)
    theta <- theta * (1 - lr wd) - lr * g * z / sqrt(D_new)

The probe uses D_t, the step D_{t+1}, as the authors' code. 3 forwards per step (their logging-only
fourth forward at the new theta is dropped). The scalar alpha * |...| / (2 eps^2) is formed in double
precision and D kept and updated in float32 (in fp16 the authors' D barely moves at alpha = 1e-8 and
never at 1e-10, or overflows in the older version). In float32, 1 - alpha rounds to 1 below alpha ~6e-8
(as in the authors' fp32 runs) and each factor of D is rounded to float32's spacing near 1 (~1.2e-7).
With alpha = 0, D stays exactly 1 and HiZOO is MeZO plus one forward.
Weight decay follows --weight_decay_rule, MeZO's name rule by default (the authors decay every tensor).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from zo.methods.base import (MethodContext, MethodRecord, ZOMethod, add_rows_, check_finite, host_copy,
                             tensor_bytes)
from zo.methods.fields import PreconditionedNoise
from zo.noise import rows_view


@dataclass
class HiZOOConfig:
    hizoo_alpha: float = 1e-8  # smoothing rate of D (the authors' README: 1e-8; their script: 0 = MeZO)

    def __post_init__(self) -> None:
        if not 0.0 <= self.hizoo_alpha <= 1.0:
            raise ValueError(f"hizoo_alpha must be in [0, 1], got {self.hizoo_alpha}")


class HiZOO(ZOMethod):
    name = "hizoo"

    def __init__(self, ctx: MethodContext, options: HiZOOConfig):
        super().__init__(ctx)
        self.alpha = options.hizoo_alpha
        self.curvature = {b.index: torch.ones_like(b.param, dtype=torch.float32) for b in self.blocks}
        self.field = PreconditionedNoise(self.noise, self.curvature)

    def step(self, loss_fn) -> MethodRecord:
        self.model.eval()
        seed, lr, eps = self.next_seed(), self.current_lr(), self.config.eps
        with torch.inference_mode():
            loss0 = float(loss_fn())
        check_finite(self.step_count, loss0)
        loss_plus, loss_minus = self.two_point(loss_fn, self.field, seed, eps)
        grad = (loss_plus - loss_minus) / (2 * eps)
        self._update(seed, grad, lr, abs(loss_plus + loss_minus - 2 * loss0))
        record = MethodRecord(self.step_count, seed, loss_plus, loss_minus, grad, lr, {"loss0": loss0})
        self.step_count += 1
        return record

    def _update(self, seed: int, grad: float, lr: float, curvature_probe: float) -> None:
        """D <- D * ((1 - alpha) + rate z^2), then theta -= lr g z / sqrt(D), chunk by chunk."""
        rate = self.alpha * curvature_probe / (2 * self.config.eps ** 2)
        keep = 1.0 - self.alpha
        decay = self.decay_factors(lr)

        def apply(index: int, chunk, rows: torch.Tensor, z: torch.Tensor) -> None:
            d = rows_view(self.curvature[index])[chunk.row_start:chunk.row_stop]
            if self.alpha:
                d.mul_(z.square().mul_(rate).add_(keep))
            if decay[index] != 1.0:
                rows.mul_(decay[index])
            add_rows_(rows, z.div_(d.sqrt()), -lr * grad)

        with torch.no_grad():
            self.noise.for_each_chunk(seed, [(b.index, b.param.data) for b in self.blocks], apply)

    def state_dict(self) -> dict:
        return {**self.base_state(), "curvature": [host_copy(self.curvature[b.index]) for b in self.blocks]}

    def load_state_dict(self, state: dict) -> None:
        self.load_base_state(state)
        for b, saved in zip(self.blocks, state["curvature"]):
            self.curvature[b.index].copy_(saved)

    def log_extra(self) -> dict:
        """Logged every step, so: no float64 copy of D (sum in float64 directly) and one host sync per device."""
        sums: dict[torch.device, list[torch.Tensor]] = {}
        for d in self.curvature.values():
            sums.setdefault(d.device, []).append(d.sum(dtype=torch.float64))
        total = sum(float(torch.stack(parts).sum()) for parts in sums.values())
        return {"curvature_mean": total / sum(d.numel() for d in self.curvature.values())}

    def extra_state_bytes(self) -> int:
        return tensor_bytes(self.curvature.values())


def build(ctx: MethodContext, options: HiZOOConfig) -> HiZOO:
    return HiZOO(ctx, options)
