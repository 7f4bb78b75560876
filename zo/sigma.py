"""Per-block noise scales: the only thing that differs between MeZO and ZO Fine-tuner.

A sigma policy returns, once per step, the coefficient k_b by which block b's unit Gaussian z_b is
multiplied (the perturbation is eps * k_b * z_b and the update lr * g * k_b * z_b), then observes the
step's two perturbed losses. MeZO: k_b = 1. ZO Fine-tuner: k_b = c * sigma_b with sigma from the
PertNN bank and c the noise-budget normalization (upstream's `--need_normalization`).
"""
from __future__ import annotations

import math
from typing import Protocol, Sequence

import torch

from zo.blocks import Block, effective_dims
from zo.pertnn import (PertNNBank, PertNNMemory, SigmaGrouping, bank_effective_dim_rule, bank_granularity,
                       check_bank_granularity)


class SigmaPolicy(Protocol):
    needs_block_stats: bool

    def coefficients(self, stats: tuple[torch.Tensor, torch.Tensor] | None) -> list[float]: ...

    def observe(self, loss_plus: float, loss_minus: float) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class ConstantSigma:
    """MeZO: the same scale for every block (1 by default), no normalization."""

    needs_block_stats = False

    def __init__(self, blocks: Sequence[Block], value: float = 1.0):
        self.values = [float(value)] * len(blocks)

    def coefficients(self, stats=None) -> list[float]:
        return self.values

    def observe(self, loss_plus: float, loss_minus: float) -> None:
        pass

    def log_extra(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def normalization(sigma: torch.Tensor, dims: torch.Tensor) -> float:
    """c = sqrt(sum_b d_b) / sqrt(sum_b d_b sigma_b^2): the noise trace equals the effective dimension.

    One host transfer of the whole sigma vector, computed in float64 (upstream: one .item() per block).
    """
    weighted = float((dims * sigma.detach().double().cpu() ** 2).sum())
    if not math.isfinite(weighted) or weighted <= 0.0:
        raise FloatingPointError(
            f"cannot normalize the noise: sum_b d_b*sigma_b^2 = {weighted} (the PertNN output is all zero or non-finite)")
    return math.sqrt(float(dims.sum()) / weighted)


class LearnedSigma:
    """ZO Fine-tuner: sigma_b = |PertNN_b([mean, var, L+_prev, L-_prev, sigma_prev])|, frozen bank.

    State (sigma_prev starts at 1, the loss history at 0) is kept in float32 whatever the model dtype;
    `dtype=torch.float16` reproduces upstream's fp16 runs (PertNN, inputs and history rounded to fp16).
    The bank stays on the host: its inputs (2 x B statistics) arrive there once per step, and the
    coefficients must be host floats for the sweeps anyway.
    """

    needs_block_stats = True
    granularity = "block"

    def __init__(self, bank: PertNNBank, blocks: Sequence[Block], batch_size: int, normalize: bool = True,
                 effective_dim_rule: str | None = None, dtype: torch.dtype = torch.float32):
        blocks = list(blocks)
        check_bank_granularity(bank, self.granularity)
        names = self._bank_names(blocks)
        bank.check_blocks(names)
        self.dtype = dtype
        self.bank = bank.ordered_for(names).to(dtype).eval().requires_grad_(False)
        # A bank is used with the rule it was meta-trained with unless told otherwise.
        self.effective_dim_rule = effective_dim_rule or bank_effective_dim_rule(bank.metadata)
        self.bank_base_model = bank.metadata.get("base_model")
        self.dims = effective_dims(blocks, batch_size, rule=self.effective_dim_rule)
        self.normalize = normalize
        self.memory = PertNNMemory.fresh(len(names))  # sigma_prev: one per PertNN of the bank
        self.last_sigma = torch.ones(len(blocks))  # one per block
        self.last_c = 1.0

    def _bank_names(self, blocks: list[Block]) -> list[str]:
        """The names of the bank's PertNNs, in the order sigma is computed: one per block here."""
        return [b.name for b in blocks]

    def coefficients(self, stats: tuple[torch.Tensor, torch.Tensor] | None) -> list[float]:
        if stats is None:
            raise ValueError("LearnedSigma needs block statistics")
        mean, var = stats
        with torch.no_grad():
            sigma = self.bank(self.memory.features(mean.cpu(), var.cpu()).to(self.dtype)).float()
        self.memory.sigma_prev = sigma
        self.last_sigma = sigma
        self.last_c = normalization(sigma, self.dims) if self.normalize else 1.0
        return (sigma.double() * self.last_c).tolist()

    def observe(self, loss_plus: float, loss_minus: float) -> None:
        if self.dtype != torch.float32:  # upstream stores the history in the model dtype
            loss_plus, loss_minus = torch.tensor([loss_plus, loss_minus]).to(self.dtype).tolist()
        self.memory.history = (float(loss_plus), float(loss_minus))

    def log_extra(self) -> dict:
        return {"sigma_mean": float(self.last_sigma.mean()), "c": self.last_c}

    def describe(self) -> dict:
        return {"effective_dim_rule": self.effective_dim_rule, "bank_granularity": self.granularity,
                "bank_base_model": getattr(self, "bank_base_model", None)}

    def state_dict(self) -> dict:
        return self.memory.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.memory.load_state_dict(state)


class LayerwiseLearnedSigma(LearnedSigma):
    """The Table 3 ablation: one PertNN per transformer layer (and one for the non-layer blocks), and
    every block of a group shares the group's sigma.

    The PertNN of a group sees the pooled mean and unbiased variance of all the group's elements, the
    loss history, and the group's previous sigma. coefficients() still returns one k_b per block, and the
    normalization c runs over blocks (each with its group's sigma), so the estimator is unchanged.
    memory.sigma_prev holds one value per group; last_sigma one per block (for the logs).
    """

    granularity = "layer"

    def __init__(self, bank: PertNNBank, blocks: Sequence[Block], batch_size: int, normalize: bool = True,
                 effective_dim_rule: str | None = None):
        # the authors' fp16 PertNN semantics exist for block-wise banks only
        super().__init__(bank, blocks, batch_size, normalize, effective_dim_rule, dtype=torch.float32)

    def _bank_names(self, blocks: list[Block]) -> list[str]:
        self.grouping = SigmaGrouping(blocks, self.granularity)  # one PertNN per layer group
        return self.grouping.names

    def coefficients(self, stats: tuple[torch.Tensor, torch.Tensor] | None) -> list[float]:
        if stats is None:
            raise ValueError("LayerwiseLearnedSigma needs block statistics")
        mean, var = self.grouping.pool(stats[0].cpu(), stats[1].cpu())  # the bank lives on the host
        with torch.no_grad():
            group_sigma = self.bank(self.memory.features(mean, var))
        self.memory.sigma_prev = group_sigma
        sigma = self.grouping.per_block(group_sigma)
        self.last_sigma = sigma
        self.last_c = normalization(sigma, self.dims) if self.normalize else 1.0
        return (sigma.double() * self.last_c).tolist()


def learned_sigma_for(bank: PertNNBank, blocks: Sequence[Block], batch_size: int, normalize: bool = True,
                      effective_dim_rule: str | None = None, dtype: torch.dtype = torch.float32) -> LearnedSigma:
    """The ZO Fine-tuner sigma policy for a bank, at the granularity the bank records (block or layer).

    `dtype` float16 reproduces the authors' fp16 runs (PertNN and history in fp16); block-wise banks only,
    as the authors' banks are."""
    if bank_granularity(bank.metadata) == "layer":
        if dtype != torch.float32:
            raise ValueError("the upstream fp16 semantics (PertNN in fp16) apply to block-wise banks only")
        return LayerwiseLearnedSigma(bank, blocks, batch_size, normalize, effective_dim_rule)
    return LearnedSigma(bank, blocks, batch_size, normalize, effective_dim_rule, dtype=dtype)
