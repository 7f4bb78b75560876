"""One zeroth-order step: sigma -> L(theta + eps*k*z), L(theta - eps*k*z) -> projected grad -> update.

    g = (L+ - L-) / (2 eps)            theta_b <- theta_b - lr * g * k_b * z_b

with k_b = 1 for MeZO and k_b = c * sigma_b for ZO Fine-tuner (zo.sigma). No hidden x10 / x20
constants (upstream's cancel). Three noise sweeps per step: one per perturbed forward and one for the
update (in-place mode: +eps, -2 eps, then the restore fused with the update). With `pair_forwards=True` the + and -
forwards run as one forward of the doubled batch (zo.paired_calls), so z is drawn twice per step, not three times.

Every step is recorded as (seed, L+, L-, g, lr); `replay` rebuilds the weights from those records
alone, bit for bit, which doubles as a compact checkpoint of the whole trajectory.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from zo.blocks import Block, parameter_blocks
from zo.noise import NoiseSource
from zo.perturb import TwoPointProbe, add_noise_
from zo.sigma import SigmaPolicy
from zo.stats import BlockStatsCollector, block_stats

PERTURBATION_MODES = ("virtual", "inplace")
LR_SCHEDULES = ("constant", "linear", "cosine")
# mezo: MeZO's name rule (names with bias / layer_norm / layernorm are not decayed, so Llama's model.norm.weight
# is); ndim: every 1-D tensor is exempt (this codebase's rule before, HF's usual AdamW grouping).
WEIGHT_DECAY_RULES = ("mezo", "ndim")
# hf: HF's warm-up factor k/W (lr 0 at the first update, as MeZO's Trainer); shifted: (k+1)/W.
WARMUP_RULES = ("hf", "shifted")
MEZO_NO_DECAY_NAMES = ("bias", "layer_norm", "layernorm")


def is_decayed(name: str, param: torch.Tensor, rule: str = "mezo") -> bool:
    """Whether weight decay applies to the parameter `name` under `rule` (WEIGHT_DECAY_RULES)."""
    if rule == "mezo":
        return not any(part in name for part in MEZO_NO_DECAY_NAMES)
    if rule == "ndim":
        return param.dim() >= 2
    raise ValueError(f"weight_decay_rule must be one of {WEIGHT_DECAY_RULES}, got {rule!r}")


class NonFiniteLossError(FloatingPointError):
    """A perturbed loss was NaN or inf; the weights are left as they were before the step."""


@dataclass
class ZOConfig:
    lr: float = 1e-6
    eps: float = 1e-3
    weight_decay: float = 0.0
    perturbation: str = "virtual"
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 0
    weight_decay_rule: str = "mezo"
    warmup_rule: str = "hf"
    # virtual: run the + and - forwards as one forward of the doubled batch, drawing each z once for both
    # (same losses; falls back to two forwards by itself where a loss function cannot be paired). Off by
    # default: on the 2-core CPU it measured slower than two forwards (docs/benchmarks.md).
    pair_forwards: bool = False

    def __post_init__(self) -> None:
        if self.weight_decay_rule not in WEIGHT_DECAY_RULES:
            raise ValueError(f"weight_decay_rule must be one of {WEIGHT_DECAY_RULES}, got {self.weight_decay_rule!r}")
        if self.warmup_rule not in WARMUP_RULES:
            raise ValueError(f"warmup_rule must be one of {WARMUP_RULES}, got {self.warmup_rule!r}")
        if self.perturbation not in PERTURBATION_MODES:
            raise ValueError(f"perturbation must be one of {PERTURBATION_MODES}, got {self.perturbation!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.lr < 0:
            raise ValueError(f"lr must be >= 0, got {self.lr}")
        if self.lr_schedule != "constant" and self.total_steps <= 0:
            raise ValueError("a decaying lr schedule needs total_steps > 0")


@dataclass
class StepRecord:
    step: int
    seed: int
    loss_plus: float
    loss_minus: float
    projected_grad: float
    lr: float

    def to_dict(self) -> dict:
        return asdict(self)


def lr_at(config: ZOConfig, step: int) -> float:
    """Learning rate for 0-based `step`: optional linear warm-up, then constant, linear or cosine decay."""
    if config.warmup_steps > 0 and step < config.warmup_steps:
        done = step if config.warmup_rule == "hf" else step + 1
        return config.lr * done / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    span = max(1, config.total_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    if config.lr_schedule == "linear":
        return config.lr * (1.0 - progress)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


class ZOOptimizer:
    """Zeroth-order SGD over the model's parameter blocks with per-block noise scales.

    `seed` drives the per-step noise seeds through a private NumPy generator (the global RNGs are
    never touched). The model is kept in eval mode: dropout must be off in ZO forwards.
    """

    def __init__(self, model: nn.Module, policy: SigmaPolicy, config: ZOConfig, seed: int = 0,
                 noise: NoiseSource | None = None, blocks: Sequence[Block] | None = None):
        self.model = model
        self.policy = policy  # gives each step's k_b (zo.sigma): all that tells MeZO from ZO Fine-tuner
        self.config = config
        self.blocks = list(blocks) if blocks is not None else parameter_blocks(model)
        self.noise = noise or NoiseSource()
        self.seed_rng = np.random.Generator(np.random.PCG64(seed))
        self.step_count = 0
        self.decayed = [is_decayed(b.name, b.param, config.weight_decay_rule) for b in self.blocks]
        self._stats: tuple[torch.Tensor, torch.Tensor] | None = None
        self.probe = TwoPointProbe(config.pair_forwards)

    # -- pieces shared by step and replay -----------------------------------------------------
    def _block_stats(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.policy.needs_block_stats:
            return None
        if self._stats is None:
            self._stats = block_stats(self.blocks, self.noise)
        return self._stats

    def _update(self, seed: int, grad: float, lr: float, coefficients: list[float], restore: float = 0.0) -> None:
        """theta <- (theta + restore*k*z) * decay - lr*g*k*z in one sweep; gathers next step's stats."""
        wd = self.config.weight_decay
        decay = [1.0 - lr * wd if (wd and d) else 1.0 for d in self.decayed]
        scales = [restore * k * f - lr * grad * k for k, f in zip(coefficients, decay)]
        collector = BlockStatsCollector(self.blocks) if self.policy.needs_block_stats else None
        with torch.no_grad():
            add_noise_(self.noise, seed, self.blocks, scales, decay if wd else None,
                       after_chunk=collector.add_chunk if collector else None)
        self._stats = collector.result() if collector else None

    def _perturb_inplace(self, seed: int, coefficients: list[float], factor: float) -> None:
        with torch.no_grad():
            add_noise_(self.noise, seed, self.blocks, [factor * k for k in coefficients])

    def _virtual_losses(self, loss_fn: Callable[[], torch.Tensor], seed: int,
                        coefficients: list[float]) -> tuple[float, float]:
        scales = [self.config.eps * k for k in coefficients]
        return self.probe.losses(self.model, self.blocks, self.noise, seed, scales, loss_fn)

    # -- the step ------------------------------------------------------------------------------
    def step(self, loss_fn: Callable[[], torch.Tensor]) -> StepRecord:
        """One ZO step; `loss_fn()` evaluates the minibatch loss of the model as it currently is."""
        self.model.eval()
        seed = int(self.seed_rng.integers(0, 2**62))
        coefficients = self.policy.coefficients(self._block_stats())
        lr = lr_at(self.config, self.step_count)
        eps = self.config.eps
        with torch.inference_mode():
            if self.config.perturbation == "virtual":
                loss_plus, loss_minus = self._virtual_losses(loss_fn, seed, coefficients)
            else:
                self._perturb_inplace(seed, coefficients, eps)
                loss_plus = float(loss_fn())
                self._perturb_inplace(seed, coefficients, -2 * eps)
                loss_minus = float(loss_fn())
        if not (math.isfinite(loss_plus) and math.isfinite(loss_minus)):
            if self.config.perturbation == "inplace":
                self._perturb_inplace(seed, coefficients, eps)
            raise NonFiniteLossError(
                f"non-finite loss at step {self.step_count}: L+={loss_plus}, L-={loss_minus}")
        grad = (loss_plus - loss_minus) / (2 * eps)
        restore = eps if self.config.perturbation == "inplace" else 0.0
        self._update(seed, grad, lr, coefficients, restore)
        self.policy.observe(loss_plus, loss_minus)
        record = StepRecord(self.step_count, seed, loss_plus, loss_minus, grad, lr)
        self.step_count += 1
        return record

    def replay(self, record: StepRecord | dict) -> None:
        """Re-apply a recorded step without any forward pass (same sigma inputs, same noise, same update)."""
        if isinstance(record, dict):
            record = StepRecord(**{k: record[k] for k in StepRecord.__dataclass_fields__})
        if record.step != self.step_count:
            raise ValueError(f"replay out of order: expected step {self.step_count}, got {record.step}")
        coefficients = self.policy.coefficients(self._block_stats())
        eps = self.config.eps
        restore = 0.0
        if self.config.perturbation == "inplace":  # reproduce the same roundings as the live step
            self._perturb_inplace(record.seed, coefficients, eps)
            self._perturb_inplace(record.seed, coefficients, -2 * eps)
            restore = eps
        self._update(record.seed, record.projected_grad, record.lr, coefficients, restore)
        self.policy.observe(record.loss_plus, record.loss_minus)
        self.step_count += 1

    def log_extra(self) -> dict:
        """Per-step extras for train_log.jsonl (ZO Fine-tuner: sigma mean and c)."""
        extra = getattr(self.policy, "log_extra", None)
        return extra() if extra is not None else {}

    def describe(self) -> dict:
        describe = getattr(self.policy, "describe", None)
        return {"extra_state_bytes": 0, **(describe() if describe is not None else {})}

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "seed_rng": self.seed_rng.bit_generator.state,
                "sigma": self.policy.state_dict()}  # key kept: checkpoints written before the rename resume

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.seed_rng.bit_generator.state = state["seed_rng"]
        self.policy.load_state_dict(state["sigma"])
        self._stats = None
