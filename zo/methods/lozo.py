"""LOZO and LOZO-M (Chen et al., arXiv 2410.07698; optsuite/LOZO): low-rank ZO perturbations.

For a tensor with >= 2 dims (as rows m x n), the direction is Z = U V^T with U ~ N(0,1)^{m x r} drawn
every step and V ~ N(0,1)^{n x r} drawn every `lozo_interval` (nu) steps and kept in between; other
tensors use MeZO's z.

    g = (L(theta + eps Z) - L(theta - eps Z)) / (2 eps)
    LOZO:    theta <- theta (1 - lr wd) - lr g U V^T
    LOZO-M (lozo_beta > 0): N <- beta N + (1 - beta) g U (N = g U at step 0; at a new window
             N <- beta N V_old^T V_new / n + (1 - beta) g U), theta <- theta (1 - lr wd) - lr N V^T;
             1-D tensors: m <- beta m + (1 - beta) g z (m = g z at step 0), theta <- ... - lr m

U and V are pure functions of seeds (`zo.methods.fields.LowRankNoise`), so the probe and the update
use the same U V^T by construction: the authors' code draws V in the probe but not in the update on
window steps, shifting every later draw (their issue #3). Stored: V for the current window (sum n r),
plus for LOZO-M the momenta N (sum m r) and m (1-D sizes). No 1/r factor, as in the authors' code.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from zo.methods.base import MethodContext, MethodRecord, ZOMethod, add_rows_, host_copy, tensor_bytes
from zo.methods.fields import LowRankNoise
from zo.noise import rows_view
from zo.perturb import add_noise_


@dataclass
class LOZOConfig:
    lozo_rank: int = 2  # r (authors' run_lozo.py default; grid {1, 2})
    lozo_interval: int = 50  # nu: V is resampled every this many steps (grid {50, 100})
    lozo_beta: float = 0.0  # LOZO-M momentum; 0 = plain LOZO (authors' medium models: 0.9)

    def __post_init__(self) -> None:
        if self.lozo_rank <= 0:
            raise ValueError(f"lozo_rank must be >= 1, got {self.lozo_rank}")
        if self.lozo_interval <= 0:
            raise ValueError(f"lozo_interval must be >= 1, got {self.lozo_interval}")
        if not 0.0 <= self.lozo_beta < 1.0:
            raise ValueError(f"lozo_beta must be in [0, 1), got {self.lozo_beta}")


class LOZO(ZOMethod):
    name = "lozo"

    def __init__(self, ctx: MethodContext, options: LOZOConfig):
        super().__init__(ctx)
        self.options = options
        self.field = LowRankNoise(self.noise, self.blocks, options.lozo_rank)
        self.window_seed: int | None = None
        self.momentum: dict[int, torch.Tensor] = {}  # LOZO-M: N (m x r) or m (1-D), float32
        if options.lozo_beta > 0:
            for b in self.blocks:
                shape = (rows_view(b.param).shape[0], options.lozo_rank) if b.index in self.field.low_rank else b.param.shape
                self.momentum[b.index] = torch.zeros(shape, dtype=torch.float32, device=b.param.device)

    def step(self, loss_fn) -> MethodRecord:
        self.model.eval()
        seed, lr, eps = self.next_seed(), self.current_lr(), self.config.eps
        new_window = self.step_count % self.options.lozo_interval == 0
        old_v = self.field.window_v() if new_window and self.momentum and self.step_count else None
        if new_window:
            self.window_seed = seed  # V of this window comes from its first step's seed
        self.field.set_window(self.window_seed)
        loss_plus, loss_minus = self.two_point(loss_fn, self.field, seed, eps)
        grad = (loss_plus - loss_minus) / (2 * eps)
        if self.momentum:
            self._momentum_update(seed, grad, lr, old_v)
        else:
            with torch.no_grad():
                decay = self.decay_factors(lr)
                add_noise_(self.field, seed, self.blocks, [-lr * grad] * len(self.blocks),
                           decay if self.config.weight_decay else None)
        record = MethodRecord(self.step_count, seed, loss_plus, loss_minus, grad, lr,
                              {"window_seed": self.window_seed})
        self.step_count += 1
        return record

    def _momentum_update(self, seed: int, grad: float, lr: float, old_v: dict | None) -> None:
        beta = self.options.lozo_beta
        first = self.step_count == 0
        decay = self.decay_factors(lr)
        # Re-project the momentum onto the new window's subspace: N V_old^T V_new / n (r x r, cheap).
        project = ({i: old_v[i].T @ self.field.v(i) / self.field.v(i).shape[0] for i in old_v}
                   if old_v is not None else {})

        def apply(index: int, chunk, rows: torch.Tensor) -> None:
            mom = rows_view(self.momentum[index])[chunk.row_start:chunk.row_stop]
            if index in self.field.low_rank:
                fresh = self.field.draw_u(seed, index, chunk).mul_(grad)
                if index in project:
                    mom.copy_(mom @ project[index])
            else:
                fresh = self.noise.draw(seed, index, chunk, rows.shape[1], rows.device).mul(grad)
            if first:
                mom.copy_(fresh)
            else:
                mom.mul_(beta).add_(fresh, alpha=1 - beta)
            if decay[index] != 1.0:
                rows.mul_(decay[index])
            step = mom @ self.field.v(index).T if index in self.field.low_rank else mom
            add_rows_(rows, step, -lr)

        with torch.no_grad():
            self.noise.map_chunks([(b.index, b.param.data) for b in self.blocks], apply)

    def state_dict(self) -> dict:
        return {**self.base_state(), "window_seed": self.window_seed,
                "momentum": {i: host_copy(m) for i, m in self.momentum.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.load_base_state(state)
        self.window_seed = state["window_seed"]
        if self.window_seed is not None:
            self.field.set_window(self.window_seed)
        for i, saved in state["momentum"].items():
            self.momentum[int(i)].copy_(saved)

    def extra_state_bytes(self) -> int:
        v_bytes = sum(self.field.shapes[i][1] * self.options.lozo_rank * 4 for i in self.field.low_rank)
        return v_bytes + tensor_bytes(self.momentum.values())


def build(ctx: MethodContext, options: LOZOConfig) -> LOZO:
    return LOZO(ctx, options)
