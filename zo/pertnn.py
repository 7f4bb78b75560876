"""PertNN: the tiny per-block MLP that maps block statistics to a noise scale sigma, and the bank of them.

Each block b has its own PertNN_b: Linear(5, 64) -> tanh -> Linear(64, 1) -> abs. Its input is
[mean(theta_b), unbiased var(theta_b), L+_{t-1}, L-_{t-1}, sigma_b,{t-1}] (the authors' `trainer_zo_fine_tuner.py`).

The bank stores the weights of all blocks stacked (w1: [B, 64, 5], ...) so that it is one small
module to optimize and save, and evaluates each block with `F.linear` on its own slice, the same
kernel sequence as upstream's `nn.Sequential`, so that converted upstream banks give the same sigma.

File format: safetensors with upstream-style keys `<block>.0.weight`, `<block>.0.bias`,
`<block>.2.weight`, `<block>.2.bias` and string metadata (see `BANK_FORMAT`).

Granularity (metadata key `granularity`, missing = "block"): a layer-wise bank (the Table 3 ablation)
has one PertNN per group of `zo.blocks.layer_groups` ('layer.N', 'non_layer') instead of one per tensor;
its "block names" are the group names. `SigmaGrouping` maps between groups and blocks.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from zo.blocks import GRANULARITIES, Block, sigma_groups

BANK_FORMAT = "zo-pertnn-bank"
BANK_FORMAT_VERSION = "1"
INPUT_LAYOUT = ("mean", "var_unbiased", "loss_plus_prev", "loss_minus_prev", "sigma_prev")
NUM_INPUTS = len(INPUT_LAYOUT)
HIDDEN = 64


def bank_effective_dim_rule(metadata: Mapping[str, str]) -> str:
    """The effective-dimension rule a bank was meta-trained with. Banks that do not record one (the
    authors' .pth banks, and this project's banks before the rule was recorded) used upstream's."""
    return metadata.get("effective_dim_rule", "upstream")


def check_bank_folder(path: str | Path) -> None:
    """A bank can be saved at `path`: its folder exists (checked before long work, and again by save)."""
    if not Path(path).parent.is_dir():
        raise FileNotFoundError(f"cannot save the bank: folder {Path(path).parent} does not exist")


class BankMismatchError(ValueError):
    """The bank's block names do not match the model's parameter blocks."""


def bank_granularity(metadata: Mapping[str, str]) -> str:
    """'block' (one PertNN per parameter tensor; every bank before the layer-wise ablation) or 'layer'."""
    return metadata.get("granularity", "block")


def check_bank_granularity(bank: "PertNNBank", wanted: str) -> None:
    """A layer-wise bank used block-wise, or the reverse, is a clear error (not a list of missing names)."""
    have = bank_granularity(bank.metadata)
    if have != wanted:
        raise BankMismatchError(
            f"the PertNN bank is {have}-wise (granularity={have}: one PertNN per "
            f"{'transformer layer' if have == 'layer' else 'parameter tensor'}) but this run needs a {wanted}-wise "
            f"bank. Use a bank made with `python -m zo.init_bank --granularity {wanted}` or meta-trained with "
            f"`--bank_granularity {wanted}` (scripts/l2l.sh: GRANULARITY={wanted})")


class SigmaGrouping:
    """Which blocks share one PertNN and one sigma.

    "block": each block is its own group (features and sigma pass through unchanged, bit for bit).
    "layer": a group's features are the exact pooled mean and unbiased variance of all its elements,
    computed from the per-block statistics weighted by numel (not a mean of variances), and every
    block of the group gets the group's sigma.
    """

    def __init__(self, blocks: list[Block], granularity: str):
        if granularity not in GRANULARITIES:
            raise ValueError(f"bank granularity must be one of {GRANULARITIES}, got {granularity!r}")
        groups = sigma_groups(list(blocks), granularity)
        self.granularity = granularity
        self.names = list(groups)
        self.members = list(groups.values())
        self.group_of = torch.empty(len(blocks), dtype=torch.long)
        for group, positions in enumerate(self.members):
            self.group_of[positions] = group
        self.numel = torch.tensor([b.param.numel() for b in blocks], dtype=torch.float64)

    def __len__(self) -> int:
        return len(self.names)

    def pool(self, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-block (mean, unbiased var) -> per-group, float32 as the block statistics."""
        if self.granularity == "block":
            return mean, var
        n, m, v = self.numel, mean.double().cpu(), var.double().cpu()
        count = torch.zeros(len(self), dtype=torch.float64).index_add_(0, self.group_of, n)
        pooled_mean = torch.zeros_like(count).index_add_(0, self.group_of, n * m) / count
        # Sum of squared deviations: within blocks ((n-1) var) plus between blocks (n (m - M)^2).
        within = torch.where(n > 1, (n - 1) * v, torch.zeros_like(v))
        between = n * (m - pooled_mean[self.group_of]) ** 2
        m2 = torch.zeros_like(count).index_add_(0, self.group_of, within + between)
        pooled_var = torch.where(count > 1, m2 / (count - 1).clamp_min(1), torch.zeros_like(m2))
        return pooled_mean.float(), pooled_var.float()

    def per_block(self, sigma: torch.Tensor) -> torch.Tensor:
        """Per-group sigma -> per-block sigma (differentiable: a gather)."""
        if self.granularity == "block":
            return sigma
        return sigma[self.group_of.to(sigma.device)]


def fresh_bank(blocks: list[Block], granularity: str = "block", generator: torch.Generator | None = None,
               metadata: Mapping[str, str] | None = None) -> "PertNNBank":
    """An untrained bank for `blocks` at the given granularity (recorded in its metadata)."""
    names = SigmaGrouping(blocks, granularity).names
    return PertNNBank(names, metadata={**(metadata or {}), "granularity": granularity}, generator=generator)


class PertNNBank(nn.Module):
    def __init__(self, block_names: Iterable[str], hidden: int = HIDDEN,
                 metadata: Mapping[str, str] | None = None, generator: torch.Generator | None = None):
        super().__init__()
        self.block_names: list[str] = list(block_names)
        if len(set(self.block_names)) != len(self.block_names):
            raise ValueError("duplicate block names in a PertNN bank")
        n = len(self.block_names)
        self.hidden = hidden
        self.w1 = nn.Parameter(torch.empty(n, hidden, NUM_INPUTS))
        self.b1 = nn.Parameter(torch.empty(n, hidden))
        self.w2 = nn.Parameter(torch.empty(n, 1, hidden))
        self.b2 = nn.Parameter(torch.empty(n, 1))
        self.metadata: dict[str, str] = dict(metadata or {})
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """PyTorch's default Linear init, U(+-1/sqrt(fan_in)), as upstream's fresh banks."""
        for tensor, fan_in in ((self.w1, NUM_INPUTS), (self.b1, NUM_INPUTS),
                               (self.w2, self.hidden), (self.b2, self.hidden)):
            bound = 1.0 / math.sqrt(fan_in)
            tensor.uniform_(-bound, bound, generator=generator)

    def __len__(self) -> int:
        return len(self.block_names)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """sigma for every block: features [B, 5] -> sigma [B] (differentiable w.r.t. the bank)."""
        if features.shape != (len(self), NUM_INPUTS):
            raise ValueError(f"expected features of shape ({len(self)}, {NUM_INPUTS}), got {tuple(features.shape)}")
        x = features.to(self.w1.dtype)
        outs = []
        for b in range(len(self)):
            h = torch.tanh(F.linear(x[b:b + 1], self.w1[b], self.b1[b]))
            outs.append(F.linear(h, self.w2[b], self.b2[b]))
        return torch.cat(outs).reshape(-1).abs()

    # ---- block-name checks -------------------------------------------------------------------
    def check_blocks(self, names: Iterable[str]) -> None:
        """Raise BankMismatchError listing missing and extra names unless the bank covers exactly `names`."""
        wanted = list(names)
        have = set(self.block_names)
        missing = [n for n in wanted if n not in have]
        extra = [n for n in self.block_names if n not in set(wanted)]
        if missing or extra:
            raise BankMismatchError(_mismatch_message(missing, extra, self.metadata.get("base_model")))

    def restricted_to(self, names: list[str]) -> "PertNNBank":
        """The bank's PertNNs for `names` only, in that order (the trained blocks of a model whose other tensors
        are frozen, after `check_blocks` on all of them)."""
        missing = [n for n in names if n not in set(self.block_names)]
        if missing:
            raise BankMismatchError(_mismatch_message(missing, [], self.metadata.get("base_model")))
        index = torch.tensor([self.block_names.index(n) for n in names])
        out = PertNNBank(list(names), self.hidden, self.metadata)
        with torch.no_grad():
            for name in ("w1", "b1", "w2", "b2"):
                getattr(out, name).copy_(getattr(self, name)[index])
        return out.to(self.w1.dtype)

    def ordered_for(self, names: list[str]) -> "PertNNBank":
        """The bank with its blocks reordered to `names` (after `check_blocks`)."""
        if names == self.block_names:
            return self
        self.check_blocks(names)
        return self.restricted_to(names)

    # ---- (de)serialization -------------------------------------------------------------------
    def block_state_dict(self) -> dict[str, torch.Tensor]:
        """Upstream-style keys: '<block>.0.weight' [64,5], '.0.bias' [64], '.2.weight' [1,64], '.2.bias' [1]."""
        out: dict[str, torch.Tensor] = {}
        for b, name in enumerate(self.block_names):
            out[f"{name}.0.weight"] = self.w1[b].detach().clone()
            out[f"{name}.0.bias"] = self.b1[b].detach().clone()
            out[f"{name}.2.weight"] = self.w2[b].detach().clone()
            out[f"{name}.2.bias"] = self.b2[b].detach().clone()
        return out

    @classmethod
    def from_block_state_dicts(cls, states: Mapping[str, Mapping[str, torch.Tensor]],
                               metadata: Mapping[str, str] | None = None) -> "PertNNBank":
        """Build from {block name: {'0.weight', '0.bias', '2.weight', '2.bias'}} (upstream module state dicts).

        The bank keeps the tensors' dtype (float16 upstream banks stay float16).
        """
        names = list(states)
        if not names:
            raise ValueError("a PertNN bank needs at least one block")
        first = states[names[0]]
        hidden = first["0.weight"].shape[0]
        dtype = first["0.weight"].dtype
        bank = cls(names, hidden, metadata)
        expected = {"0.weight": (hidden, NUM_INPUTS), "0.bias": (hidden,), "2.weight": (1, hidden), "2.bias": (1,)}
        with torch.no_grad():
            bank.to(dtype)
            for b, name in enumerate(names):
                state = states[name]
                for key, shape in expected.items():
                    if key not in state:
                        raise ValueError(f"block {name!r}: missing PertNN tensor {key!r}")
                    if tuple(state[key].shape) != shape:
                        raise ValueError(f"block {name!r}: {key} has shape {tuple(state[key].shape)}, expected {shape}")
                bank.w1[b].copy_(state["0.weight"])
                bank.b1[b].copy_(state["0.bias"])
                bank.w2[b].copy_(state["2.weight"])
                bank.b2[b].copy_(state["2.bias"])
        return bank

    def save(self, path: str | Path, extra_metadata: Mapping[str, object] | None = None) -> Path:
        """Write the bank as safetensors (atomically: a crash never leaves a half-written bank)."""
        from safetensors.torch import save_file

        from zo.io import atomic_path

        path = Path(path)
        check_bank_folder(path)
        meta = dict(self.metadata)
        for key, value in (extra_metadata or {}).items():
            meta[key] = value if isinstance(value, str) else json.dumps(value)
        meta.update({
            "format": BANK_FORMAT,
            "format_version": BANK_FORMAT_VERSION,
            "block_names": json.dumps(self.block_names),
            "num_blocks": str(len(self)),
            "hidden": str(self.hidden),
            "dtype": str(self.w1.dtype).replace("torch.", ""),
            "input_layout": ",".join(INPUT_LAYOUT),
        })
        tensors = {k: v.contiguous() for k, v in self.block_state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        self.metadata = meta
        return path


def _mismatch_message(missing: list[str], extra: list[str], base_model: str | None) -> str:
    def show(names: list[str]) -> str:
        # Names outside the repeated layers (embeddings, final norm, lm_head) say most: list them first.
        names = sorted(names, key=lambda n: ".layers." in n or ".h." in n or ".layer." in n)
        head = ", ".join(names[:12])
        return head + (f", ... ({len(names) - 12} more)" if len(names) > 12 else "")

    lines = ["the PertNN bank does not match the model's parameter blocks"
             + (f" (bank trained for {base_model})" if base_model else "") + ":"]
    if missing:
        lines.append(f"  {len(missing)} model blocks missing from the bank: {show(missing)}")
    if extra:
        lines.append(f"  {len(extra)} bank blocks not in the model: {show(extra)}")
    lines.append("A bank is tied to one architecture and naming scheme; create one with "
                 "`python -m zo.init_bank --model <model>` or meta-train one with run_l2l.py.")
    return "\n".join(lines)


def load_bank(path: str | Path) -> PertNNBank:
    """Load a bank from this project's safetensors format, or an authors' .pth through the safe converter."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"PertNN bank not found: {path}")
    if path.suffix in (".pth", ".pt", ".bin"):
        from zo.convert_bank import read_upstream_bank

        return read_upstream_bank(path)
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != BANK_FORMAT:
                raise ValueError(f"{path} is not a PertNN bank (metadata format={meta.get('format')!r})")
            if meta.get("input_layout") != ",".join(INPUT_LAYOUT):
                raise ValueError(f"{path}: unsupported PertNN input layout {meta.get('input_layout')!r}")
            names = json.loads(meta["block_names"])
            states = {name: {k: handle.get_tensor(f"{name}.{k}") for k in ("0.weight", "0.bias", "2.weight", "2.bias")}
                      for name in names}
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as err:  # a truncated or corrupt file
        raise ValueError(f"cannot read the PertNN bank {path} (truncated or corrupt?): {err}") from err
    return PertNNBank.from_block_state_dicts(states, meta)


def bank_features(mean: torch.Tensor, var: torch.Tensor, loss_plus: float, loss_minus: float,
                  sigma_prev: torch.Tensor) -> torch.Tensor:
    """Stack the PertNN inputs in INPUT_LAYOUT order: [B, 5] float32."""
    n = mean.shape[0]
    losses = torch.tensor([loss_plus, loss_minus], dtype=torch.float32).expand(n, 2)
    return torch.cat([mean.reshape(n, 1).float(), var.reshape(n, 1).float(), losses,
                      sigma_prev.reshape(n, 1).float()], dim=1)


@dataclass
class PertNNMemory:
    """What a bank sees of the past, its last three inputs: the previous step's (L+, L-), starting at 0, and
    sigma_{t-1}, one per PertNN, starting at 1. Fine-tuning (zo.sigma) keeps one; L2L one per task."""
    sigma_prev: torch.Tensor
    history: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def fresh(cls, size: int) -> PertNNMemory:
        return cls(torch.ones(size))

    def features(self, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        return bank_features(mean, var, self.history[0], self.history[1], self.sigma_prev)

    def state_dict(self) -> dict:
        return {"sigma_prev": self.sigma_prev.clone(), "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.sigma_prev = state["sigma_prev"].clone().float()
        self.history = tuple(float(x) for x in state["history"])
