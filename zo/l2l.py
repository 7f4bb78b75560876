"""L2L meta-training of the PertNN bank (the authors' `trainer_l2l.py`), with its defects fixed (docs/differences.md).

One meta step on a batch, for the model at theta_t:
  1. sigma = |PertNN(features)| with autograd; k_b = c * sigma_b (c: noise normalization, a constant
     unless grad_through_c);
  2. L+ = L(theta + eps*k*z), L- = L(theta - eps*k*z) without grad (virtual perturbation);
  3. look-ahead theta'_b = theta_b - eta * k_b * z_b * (L+ - L-)/(2 eps), theta, z, L+-, c constant;
  4. meta-loss L(theta') on the same batch, evaluated with torch.func.functional_call over a
     parameter dict (no model copy; tied weights follow the model's own ties);
  5. SGD (or Adam) step of the bank on d L(theta') / d omega.
Step 4's gradient w.r.t. k_b is a * <grad_{theta'_b} L, z_b> with a = -eta*g: it is accumulated by a
hook on each theta'_b as soon as that gradient exists, regenerating z_b chunk by chunk, and the
gradient is then dropped. So neither z nor the gradients of theta' are ever held for the whole model.

Then the first-order trajectory step moves theta (Adam by default, or upstream's SGD momentum 0.8),
with gradient clipping and a linear decay to 0 within each restart period (`TrajectoryOptimizer`).

Gradient accumulation: a `MicroBatches` batch (K micro-batches, each loss weighted by its share of the
examples or option tokens) acts as the concatenated batch in both steps. The meta step draws one sigma and
one seed; L+- are the weighted sums of the micro-batch losses, and the meta-loss backward runs once per
micro-batch into the same <grad, z> accumulators. The trajectory step accumulates the weighted gradients and
takes one optimizer step. Only one micro-batch's activations are alive at a time.

A layer-wise bank (metadata granularity=layer, the Table 3 ablation) has one PertNN per layer group:
its features are the group's pooled statistics and each block gets its group's sigma (`SigmaGrouping`);
the meta-gradient flows to the group's PertNN through every block of the group.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from zo.blocks import DEFAULT_EFFECTIVE_DIM_RULE, EFFECTIVE_DIM_RULES, Block, effective_dims
from zo.models import refuse_float16_adam
from zo.noise import NoiseSource
from zo.perturb import TwoPointProbe, add_noise_
from zo.pertnn import PertNNBank, PertNNMemory, SigmaGrouping, bank_granularity
from zo.sigma import normalization
from zo.stats import block_stats

LossFn = Callable[[object, object], torch.Tensor]  # loss_fn(model_like, batch) -> scalar


@dataclass
class MicroBatches:
    """Micro-batches that act as one batch: the loss is sum_j weights[j] * loss(batches[j]). With weights
    proportional to what each micro-batch's loss averages over (tasks.loss_weight), that is the loss of the
    concatenated batch."""
    batches: list
    weights: list[float]

    def __post_init__(self) -> None:
        if not self.batches or len(self.batches) != len(self.weights):
            raise ValueError("MicroBatches needs one weight per micro-batch, and at least one micro-batch")
        if abs(sum(self.weights) - 1.0) > 1e-9:
            raise ValueError(f"micro-batch weights must sum to 1, got {sum(self.weights)}")


def batch_parts(batch) -> list[tuple[object, float]]:
    """(micro-batch, weight) pairs: a plain batch is one part of weight 1."""
    if isinstance(batch, MicroBatches):
        return list(zip(batch.batches, batch.weights))
    return [(batch, 1.0)]


def _weighted(loss: torch.Tensor, weight: float) -> torch.Tensor:
    return loss if weight == 1.0 else loss * weight  # a plain batch keeps exactly the graph it always had


@dataclass
class MetaConfig:
    lr_mlp: float = 1e-3
    lr_update: float = 1e-6  # eta of the look-ahead
    zo_eps: float = 1e-3
    need_normalization: bool = True
    grad_through_c: bool = False
    mlp_optimizer: str = "sgd"  # "sgd" as upstream, or "adam"
    effective_dim_rule: str = DEFAULT_EFFECTIVE_DIM_RULE  # zo.blocks: how the normalization counts embeddings
    pair_forwards: bool = False  # the ZO probe's + and - forwards as one doubled forward (zo.paired_calls)

    def __post_init__(self) -> None:
        if self.effective_dim_rule not in EFFECTIVE_DIM_RULES:
            raise ValueError(f"effective_dim_rule must be one of {EFFECTIVE_DIM_RULES}, got {self.effective_dim_rule!r}")
        if self.mlp_optimizer not in ("sgd", "adam"):
            raise ValueError(f"mlp_optimizer must be 'sgd' or 'adam', got {self.mlp_optimizer!r}")
        if not self.zo_eps > 0:
            raise ValueError("zo_eps must be > 0")


class FunctionalModel:
    """Calls `model` with some parameters replaced (functional_call); other attributes pass through."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor]):
        self._model = model
        self._params = params

    def __call__(self, *args, **kwargs):
        return functional_call(self._model, self._params, args, kwargs, tie_weights=True, strict=False)

    def __getattr__(self, name: str):
        return getattr(self._model, name)


@dataclass
class MetaStepResult:
    seed: int
    loss_plus: float
    loss_minus: float
    meta_loss: float
    sigma: torch.Tensor  # [B], one per block (a layer-wise bank: the block's group sigma), detached
    c: float


class MetaLearner:
    def __init__(self, model: nn.Module, bank: PertNNBank, blocks: Sequence[Block], config: MetaConfig,
                 batch_size: int, seed: int = 0, noise: NoiseSource | None = None,
                 bank_dtype: torch.dtype = torch.float32):
        self.model = model
        self.blocks = list(blocks)
        self.grouping = SigmaGrouping(self.blocks, bank_granularity(bank.metadata))
        bank.check_blocks(self.grouping.names)
        self.bank = bank.ordered_for(self.grouping.names).to(bank_dtype).train().requires_grad_(True)
        self.config = config
        self.dims = effective_dims(self.blocks, batch_size, rule=config.effective_dim_rule)
        self.noise = noise or NoiseSource()
        self.seed_rng = np.random.Generator(np.random.PCG64(seed))
        self.probe = TwoPointProbe(config.pair_forwards)
        params = list(self.bank.parameters())
        self.bank_optimizer = (torch.optim.SGD(params, lr=config.lr_mlp) if config.mlp_optimizer == "sgd"
                               else torch.optim.Adam(params, lr=config.lr_mlp))
        self.states: dict[str, PertNNMemory] = {}  # per task: one per bank entry (block or layer group)

    def state_for(self, task: str) -> PertNNMemory:
        if task not in self.states:
            self.states[task] = PertNNMemory.fresh(len(self.grouping))
        return self.states[task]

    def _coefficients(self, sigma: torch.Tensor) -> tuple[torch.Tensor, float]:
        """k = c * sigma, with c constant (default) or differentiable (grad_through_c)."""
        if not self.config.need_normalization:
            return sigma, 1.0
        if self.config.grad_through_c:
            dims = self.dims.to(sigma.dtype)
            c = torch.sqrt(dims.sum() / (dims * sigma ** 2).sum())
            return c * sigma, float(c.detach())
        c = normalization(sigma, self.dims)
        return c * sigma, c

    def meta_step(self, loss_fn: LossFn, batch, task: str = "default") -> MetaStepResult:
        state = self.state_for(task)
        self.model.eval()  # ZO forwards and the meta forward without dropout (upstream: eval mode)
        mean, var = self.grouping.pool(*block_stats(self.blocks, self.noise))
        group_sigma = self.bank(state.features(mean, var))
        sigma = self.grouping.per_block(group_sigma)
        k, c = self._coefficients(sigma)
        k_values = k.detach().double().tolist()
        seed = int(self.seed_rng.integers(0, 2**62))
        eps = self.config.zo_eps

        parts = batch_parts(batch)
        with torch.inference_mode():
            loss_plus, loss_minus = self.probe.losses(
                self.model, self.blocks, self.noise, seed, [eps * v for v in k_values],
                lambda: sum(w * float(loss_fn(self.model, part)) for part, w in parts))  # pairs call by call
        if not (math.isfinite(loss_plus) and math.isfinite(loss_minus)):
            raise FloatingPointError(f"non-finite perturbed loss in meta step: L+={loss_plus}, L-={loss_minus}")
        a = -self.config.lr_update * (loss_plus - loss_minus) / (2 * eps)

        theta_prime: dict[str, torch.Tensor] = {}
        dots = torch.zeros(len(self.blocks), dtype=torch.float64)
        device_dots: dict[int, torch.Tensor] = {}  # <grad, z> per block, on the block's device until the end
        hooks = []
        with torch.no_grad():
            for block in self.blocks:
                tp = block.param.detach().clone()
                add_noise_(self.noise, seed, [Block(block.index, block.name, tp)], [a * k_values[block.index]])
                theta_prime[block.name] = tp.requires_grad_(True)
        for block in self.blocks:
            hooks.append(theta_prime[block.name].register_post_accumulate_grad_hook(
                self._dot_with_noise_hook(seed, block.index, device_dots)))
        meta_loss = 0.0
        try:
            for part, w in parts:  # the hooks add each micro-batch's <grad, z> to the same accumulators
                part_loss = _weighted(loss_fn(FunctionalModel(self.model, theta_prime), part), w)
                part_loss.backward()
                meta_loss += float(part_loss.detach())
        finally:
            for hook in hooks:
                hook.remove()
        del theta_prime
        for index, value in device_dots.items():  # after the backward: no host sync inside it
            dots[index] += value.cpu()

        self.bank_optimizer.zero_grad(set_to_none=True)
        k.backward((a * dots).to(k.dtype))
        self.bank_optimizer.step()

        state.sigma_prev = group_sigma.detach()
        state.history = (loss_plus, loss_minus)
        return MetaStepResult(seed, loss_plus, loss_minus, meta_loss, sigma.detach(), c)

    def _dot_with_noise_hook(self, seed: int, index: int, dots: dict[int, torch.Tensor]):
        def hook(leaf: torch.Tensor) -> None:
            total = torch.zeros((), dtype=torch.float64, device=leaf.device)  # on the block's device (GPU too)
            for _chunk, rows, z in self.noise.iter_chunks(seed, index, leaf.grad):
                total += (rows.double() * z.double()).sum()
            dots[index] = dots[index] + total if index in dots else total
            leaf.grad = None  # drop it now: only the dot product is needed
        return hook


class TrajectoryOptimizer:
    """First-order trajectory of theta: Adam (default) or SGD momentum 0.8 (upstream), clipping,
    linear decay to 0 over `period_steps`; `reset()` builds a fresh optimizer and schedule."""

    def __init__(self, model: nn.Module, lr: float, period_steps: int, kind: str = "adam",
                 momentum: float = 0.8, max_grad_norm: float = 1.0, dropout: bool = True):
        if kind not in ("adam", "sgd"):
            raise ValueError(f"trajectory optimizer must be 'adam' or 'sgd', got {kind!r}")
        if period_steps <= 0:
            raise ValueError("a restart period needs at least one step")
        self.model, self.lr, self.period_steps, self.kind = model, lr, period_steps, kind
        self.momentum, self.max_grad_norm, self.dropout = momentum, max_grad_norm, dropout
        self.params = [p for p in model.parameters() if p.requires_grad]
        if kind == "adam":
            refuse_float16_adam(self.params, "the Adam trajectory optimizer (TRAJECTORY_OPTIMIZER=adam)")
        self.reset()

    def reset(self) -> None:
        if self.kind == "adam":
            self.optimizer = torch.optim.Adam(self.params, lr=self.lr)
        else:
            self.optimizer = torch.optim.SGD(self.params, lr=self.lr, momentum=self.momentum)
        period = self.period_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda k: max(0.0, 1.0 - k / period))

    def current_lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def accumulate(self, loss_fn: LossFn, batch, loss_scale: float = 1.0) -> float:
        """Add loss_scale x the gradient of the batch's loss (a `MicroBatches`: of the weighted sum of its
        micro-batch losses, one backward each) to the parameters' .grad; returns the unscaled loss."""
        self.model.train(self.dropout)
        try:
            total = 0.0
            for part, w in batch_parts(batch):
                loss = loss_fn(self.model, part)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite first-order loss {float(loss)}")
                _weighted(loss, w * loss_scale).backward()
                total += w * float(loss.detach())
        finally:
            self.model.eval()
        return total

    def apply(self) -> None:
        """Clip the accumulated gradient, take one optimizer step and one schedule step, clear the gradient."""
        try:
            if self.max_grad_norm:
                nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
        finally:
            self.optimizer.zero_grad(set_to_none=True)

    def step(self, loss_fn: LossFn, batch, loss_scale: float = 1.0) -> float:
        """One first-order step on the batch (or on the concatenation of a `MicroBatches`)."""
        try:
            loss = self.accumulate(loss_fn, batch, loss_scale)
        except BaseException:
            self.optimizer.zero_grad(set_to_none=True)
            raise
        self.apply()
        return loss

    def forward_only(self, loss_fn: LossFn, batch) -> float:
        """The loss in the step's mode (dropout draws included), with no gradient and no update: upstream's
        micro-batches whose gradient the next zero_grad discards."""
        self.model.train(self.dropout)
        try:
            with torch.no_grad():
                return float(loss_fn(self.model, batch))
        finally:
            self.model.eval()
