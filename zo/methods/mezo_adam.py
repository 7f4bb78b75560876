"""MeZO-Adam (ZO-Bench's zo_adam, Zhang et al. arXiv 2402.11592): Adam over the ZO gradient estimate.

    g = (L(theta + eps z) - L(theta - eps z)) / (2 eps),   grad = g * z
    m <- b1 m + (1 - b1) grad,  v <- b2 v + (1 - b2) grad^2
    theta <- theta * (1 - lr wd) - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + adam_eps)

torch.optim.Adam's arithmetic (single-tensor path), applied chunk by chunk while z is regenerated, so
no parameter-size gradient is ever made. Extra memory: m and v, two float32 parameter-size buffers
(ZO-Bench keeps them in the model dtype, where fp16 underflows: eps 1e-8 rounds to 0). Weight decay is
decoupled and follows --weight_decay_rule (MeZO's name rule by default; ZO-Bench ignores --weight_decay).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from zo.methods.base import MethodContext, MethodRecord, ZOMethod, add_rows_, host_copy, tensor_bytes
from zo.noise import rows_view


@dataclass
class AdamOptions:
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8

    def __post_init__(self) -> None:
        if not (0.0 <= self.adam_beta1 < 1.0 and 0.0 <= self.adam_beta2 < 1.0):
            raise ValueError("adam_beta1 and adam_beta2 must be in [0, 1)")
        if not self.adam_epsilon > 0:
            raise ValueError("adam_epsilon must be > 0")


@dataclass
class MeZOAdamConfig(AdamOptions):
    pass


class MeZOAdam(ZOMethod):
    name = "mezo_adam"

    def __init__(self, ctx: MethodContext, options: MeZOAdamConfig):
        super().__init__(ctx)
        self.options = options
        self.exp_avg = [torch.zeros_like(b.param, dtype=torch.float32) for b in self.blocks]
        self.exp_avg_sq = [torch.zeros_like(b.param, dtype=torch.float32) for b in self.blocks]

    def step(self, loss_fn) -> MethodRecord:
        self.model.eval()
        seed, lr, eps = self.next_seed(), self.current_lr(), self.config.eps
        loss_plus, loss_minus = self.two_point(loss_fn, self.noise, seed, eps)
        grad = (loss_plus - loss_minus) / (2 * eps)
        self._adam_update(seed, grad, lr)
        record = MethodRecord(self.step_count, seed, loss_plus, loss_minus, grad, lr)
        self.step_count += 1
        return record

    def _adam_update(self, seed: int, grad: float, lr: float) -> None:
        o = self.options
        t = self.step_count + 1
        step_size = lr / (1 - o.adam_beta1 ** t)
        bias2_sqrt = (1 - o.adam_beta2 ** t) ** 0.5  # torch.optim.Adam's own expressions
        decay = self.decay_factors(lr)

        def apply(index: int, chunk, rows: torch.Tensor, z: torch.Tensor) -> None:
            m = rows_view(self.exp_avg[index])[chunk.row_start:chunk.row_stop]
            v = rows_view(self.exp_avg_sq[index])[chunk.row_start:chunk.row_stop]
            g = z.mul_(grad)  # the chunk of g*z, in the scratch buffer z came in
            m.lerp_(g, 1 - o.adam_beta1)
            v.mul_(o.adam_beta2).addcmul_(g, g, value=1 - o.adam_beta2)
            denom = (v.sqrt() / bias2_sqrt).add_(o.adam_epsilon)
            if decay[index] != 1.0:
                rows.mul_(decay[index])
            if rows.dtype == torch.float32:
                rows.addcdiv_(m, denom, value=-step_size)
            else:
                add_rows_(rows, m / denom, -step_size)

        with torch.no_grad():
            self.noise.for_each_chunk(seed, [(b.index, b.param.data) for b in self.blocks], apply)

    def state_dict(self) -> dict:
        return {**self.base_state(), "exp_avg": [host_copy(m) for m in self.exp_avg],
                "exp_avg_sq": [host_copy(v) for v in self.exp_avg_sq]}

    def load_state_dict(self, state: dict) -> None:
        self.load_base_state(state)
        for mine, saved in zip(self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"]):
            mine.copy_(saved)

    def extra_state_bytes(self) -> int:
        return tensor_bytes(self.exp_avg + self.exp_avg_sq)


def build(ctx: MethodContext, options: MeZOAdamConfig) -> MeZOAdam:
    return MeZOAdam(ctx, options)
