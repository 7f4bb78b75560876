"""FZOO (Dang et al., ICLR 2026; DKmiyan/FZOO): N one-sided Rademacher probes, a step normalized by
the spread of their losses.

    l_i = L(theta + eps u_i), u_i in {-1, +1}^P (i = 1..N),  l0 = L(theta)
    s = population std of {l_1 .. l_N}
    theta <- theta (1 - lr wd) - lr * sum_i (l_i - l0) / (N s) * u_i

N + 1 forwards per step, no persistent state beyond the seed stream. The step does not depend on
the scale of the loss (L -> c L + b leaves it unchanged). The authors' code divides by s = 0 (N = 1,
or all l_i equal) and yields inf/NaN weights; here s falls back to the root mean square of l_i - l0,
so N = 1 is a sign step, theta - lr * sign(l_1 - l0) * u_1, N equal probe losses step by
-lr * sign(l - l0) * mean_i u_i, and only when every l_i equals l0 is there no step.
The record's loss_plus / loss_minus are both l0 (the loss at theta); the probes are in `losses`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from zo.methods.base import MethodContext, MethodRecord, ZOMethod, check_finite
from zo.methods.fields import RademacherNoise
from zo.perturb import add_noise_


@dataclass
class FZOOConfig:
    fzoo_n: int = 8  # N, perturbations per step (authors' default)

    def __post_init__(self) -> None:
        if self.fzoo_n <= 0:
            raise ValueError(f"fzoo_n must be >= 1, got {self.fzoo_n}")


def fzoo_coefficients(losses: list[float], loss0: float) -> tuple[list[float], float]:
    """a_i = (l_i - l0) / (N s) and the s used (population std, or the RMS fallback when it is 0)."""
    n = len(losses)
    mean = sum(losses) / n
    spread = math.sqrt(sum((x - mean) ** 2 for x in losses) / n)
    if spread == 0.0:
        spread = math.sqrt(sum((x - loss0) ** 2 for x in losses) / n)
    if spread == 0.0:
        return [0.0] * n, 0.0
    return [(x - loss0) / (n * spread) for x in losses], spread


class FZOO(ZOMethod):
    name = "fzoo"

    def __init__(self, ctx: MethodContext, options: FZOOConfig):
        super().__init__(ctx)
        self.n = options.fzoo_n
        self.field = RademacherNoise(self.noise)

    def step(self, loss_fn) -> MethodRecord:
        self.model.eval()
        lr, eps = self.current_lr(), self.config.eps
        seeds = [self.next_seed() for _ in range(self.n)]
        inplace = self.config.perturbation == "inplace"
        losses = []
        with torch.inference_mode():
            for seed in seeds:
                losses.append(self.perturbed_loss(loss_fn, self.field, seed, eps))
                if inplace:
                    self.shift(self.field, seed, -eps)
            loss0 = float(loss_fn())
        check_finite(self.step_count, loss0, *losses)
        coefs, spread = fzoo_coefficients(losses, loss0)
        decay = self.decay_factors(lr)
        with torch.no_grad():
            for i, (seed, a) in enumerate(zip(seeds, coefs)):
                add_noise_(self.field, seed, self.blocks, [-lr * a] * len(self.blocks),
                           decay if (i == 0 and self.config.weight_decay) else None)
        record = MethodRecord(self.step_count, seeds[0], loss0, loss0, None, lr,
                              {"seeds": seeds, "losses": losses, "loss_std": spread})
        self.step_count += 1
        return record

    def state_dict(self) -> dict:
        return self.base_state()

    def load_state_dict(self, state: dict) -> None:
        self.load_base_state(state)


def build(ctx: MethodContext, options: FZOOConfig) -> FZOO:
    return FZOO(ctx, options)
