"""First-order fine-tuning (fo_sgd, fo_adam): backpropagation through the same batches, loop and logs,
the reference the ZO methods are measured against.

    fo_sgd:  torch.optim.SGD (fo_momentum),  fo_adam: torch.optim.AdamW (adam_beta1/2, adam_epsilon)

Dropout stays off (eval mode) as in the ZO methods, so the methods see the same function. Weight
decay skips 1-D tensors, as MeZO's (AdamW: decoupled; SGD: torch's L2, the same as decoupled without
momentum); the lr follows the shared schedule; gradients
are clipped to `fo_max_grad_norm` (HF Trainer's default 1.0; 0 = off). Extra memory: the gradients
(+P) and the autograd activations, plus SGD momentum (+P) or Adam moments (+2P).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zo.estimator import NonFiniteLossError, is_decayed, lr_at
from zo.methods.base import MethodContext, MethodRecord, tensor_bytes
from zo.methods.mezo_adam import AdamOptions
from zo.models import refuse_float16_adam


@dataclass
class FirstOrderOptions:
    fo_max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if self.fo_max_grad_norm < 0:
            raise ValueError("fo_max_grad_norm must be >= 0")


@dataclass
class FOSGDConfig(FirstOrderOptions):
    fo_momentum: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.fo_momentum < 1.0:
            raise ValueError("fo_momentum must be in [0, 1)")


@dataclass
class FOAdamConfig(FirstOrderOptions, AdamOptions):
    def __post_init__(self) -> None:
        FirstOrderOptions.__post_init__(self)
        AdamOptions.__post_init__(self)


class FirstOrder:
    def __init__(self, ctx: MethodContext, name: str, make_optimizer, max_grad_norm: float):
        self.name = name
        self.model = ctx.model
        self.config = ctx.zo
        self.params = [b.param for b in ctx.blocks]
        rule = ctx.zo.weight_decay_rule
        decayed = [b.param for b in ctx.blocks if is_decayed(b.name, b.param, rule)]
        plain = [b.param for b in ctx.blocks if not is_decayed(b.name, b.param, rule)]
        groups = [{"params": decayed, "weight_decay": ctx.zo.weight_decay}, {"params": plain, "weight_decay": 0.0}]
        self.optimizer = make_optimizer([g for g in groups if g["params"]])
        self.max_grad_norm = max_grad_norm
        self.step_count = 0

    def step(self, loss_fn) -> MethodRecord:
        lr = lr_at(self.config, self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.eval()  # dropout off, as in the ZO forwards
        try:
            with torch.enable_grad():
                loss = loss_fn()
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(f"non-finite loss at step {self.step_count}: {float(loss)}")
                loss.backward()
            grad_norm = None
            if self.max_grad_norm:
                grad_norm = float(nn.utils.clip_grad_norm_(self.params, self.max_grad_norm))
            self.optimizer.step()
        finally:
            self.optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        record = MethodRecord(self.step_count, None, value, value, None, lr, {"grad_norm": grad_norm})
        self.step_count += 1
        return record

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.optimizer.load_state_dict(state["optimizer"])

    def log_extra(self) -> dict:
        return {}

    def extra_state_bytes(self) -> int:
        """Optimizer state plus one gradient per parameter (made during each step)."""
        buffers = [t for s in self.optimizer.state.values() for t in s.values()
                   if isinstance(t, torch.Tensor) and t.dim() > 0]
        if not buffers:  # before the first step: what it will allocate
            per_param = {"fo_sgd": 1 if self.optimizer.defaults.get("momentum") else 0, "fo_adam": 2}[self.name]
            return (1 + per_param) * tensor_bytes(self.params)
        return tensor_bytes(buffers) + tensor_bytes(self.params)

    def describe(self) -> dict:
        return {"method": self.name, "extra_state_bytes": self.extra_state_bytes()}


def build_sgd(ctx: MethodContext, options: FOSGDConfig) -> FirstOrder:
    return FirstOrder(ctx, "fo_sgd", lambda groups: torch.optim.SGD(groups, lr=ctx.zo.lr, momentum=options.fo_momentum),
                      options.fo_max_grad_norm)


def build_adam(ctx: MethodContext, options: FOAdamConfig) -> FirstOrder:
    refuse_float16_adam([b.param for b in ctx.blocks], "fo_adam")
    return FirstOrder(ctx, "fo_adam", lambda groups: torch.optim.AdamW(
        groups, lr=ctx.zo.lr, betas=(options.adam_beta1, options.adam_beta2), eps=options.adam_epsilon),
        options.fo_max_grad_norm)
