"""Parameter blocks: the unit that gets one learned noise scale sigma.

One block per trainable parameter tensor, in `named_parameters()` order. Tied weights (the same
Parameter object reachable under two names) appear once, under the first name, exactly as
`named_parameters()` deduplicates them; this matches the block keys of the authors' banks.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

# Upstream counts "embed" tensors as if only ~15 tokens per example touched them (upstream's setup).
UPSTREAM_TOKENS_PER_EXAMPLE = 15

# How the noise normalization counts an embedding (`effective_dim`):
# - "upstream": every tensor named *embed* counts hidden x 15 x batch (the authors' rule; their banks);
# - "tied_full": the same for an input-only embedding, but an embedding tied to the output head counts
#   all its elements, because the head reads every row of it in every forward.
EFFECTIVE_DIM_RULES = ("upstream", "tied_full")
DEFAULT_EFFECTIVE_DIM_RULE = "tied_full"

_LAYER_INDEX = re.compile(r"\.(?:layers|h|layer|blocks)\.(\d+)\.")


@dataclass(frozen=True)
class Block:
    index: int
    name: str
    param: nn.Parameter
    tied: bool = False  # the same tensor is reachable under another name too (e.g. lm_head.weight)

    @property
    def layer(self) -> int | None:
        """Transformer layer index parsed from the name, or None for embeddings / final norm / head."""
        match = _LAYER_INDEX.search(self.name)
        return int(match.group(1)) if match else None


def parameter_blocks(model: nn.Module, trainable_only: bool = True) -> list[Block]:
    """Trainable tensors of `model` as blocks, tied weights once, in `named_parameters()` order (every tensor,
    frozen ones too, with `trainable_only=False`)."""
    names_of: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        names_of[id(param)] = names_of.get(id(param), 0) + 1
    blocks: list[Block] = []
    for name, param in model.named_parameters():  # remove_duplicate=True folds tied weights
        if param.requires_grad or not trainable_only:
            blocks.append(Block(len(blocks), name, param, tied=names_of[id(param)] > 1))
    if not blocks:
        raise ValueError("the model has no trainable parameters: nothing to fine-tune")
    return blocks


def trainable_blocks(model: nn.Module, pattern: str | None = None) -> list[Block]:
    """The blocks to fine-tune: every trainable tensor, or (`pattern`, a regular expression) only those whose block
    name matches it (re.search; a tied weight is one block under its first name, e.g. model.embed_tokens.weight,
    not lm_head.weight), the others frozen (requires_grad off: no method perturbs, updates or keeps state for them)."""
    if pattern is not None:
        regex = re.compile(pattern)
        named = list(model.named_parameters())  # tied weights once, under their first name
        if not any(regex.search(name) for name, _ in named):
            names = [name for name, _ in named]
            raise ValueError(f"--trainable_blocks {pattern!r} matches no parameter; names look like "
                             f"{', '.join(names[:3])}, ..., {names[-1]}")
        for name, param in named:
            if not regex.search(name):
                param.requires_grad_(False)
    return parameter_blocks(model)


def block_aliases(model: nn.Module) -> dict[str, list[str]]:
    """Map each block name to the other names of the same tensor (e.g. a tied `lm_head.weight`)."""
    first_name: dict[int, str] = {}
    aliases: dict[str, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owner = first_name.setdefault(id(param), name)
        if owner != name:
            aliases.setdefault(owner, []).append(name)
    return aliases


def effective_dim(name: str, shape: torch.Size, batch_size: int, world_size: int = 1,
                  tokens_per_example: int = UPSTREAM_TOKENS_PER_EXAMPLE, rule: str = "upstream",
                  tied: bool = False) -> float:
    """The "effective dimension" of one block, used by the noise normalization c (upstream's rule).

    - a name containing 'embed' counts hidden_size x tokens_per_example x global batch: only the rows
      of tokens in the batch get a gradient, so the full vocabulary would swamp the budget;
      with rule "tied_full", an embedding tied to the output head is exempt from this (next item);
    - any other tensor counts its number of elements.
    Upstream's /1e6 scaling cancels in c and is dropped. The rule is by name, as upstream, because the
    released banks were trained with it; OPT's `embed_positions` is therefore caught by it too.
    """
    if rule not in EFFECTIVE_DIM_RULES:
        raise ValueError(f"effective-dimension rule must be one of {EFFECTIVE_DIM_RULES}, got {rule!r}")
    sparse = not (rule == "tied_full" and tied)
    if "embed" in name and len(shape) >= 2 and sparse:
        return float(shape[1] * tokens_per_example * batch_size * world_size)
    numel = 1
    for size in shape:
        numel *= int(size)
    return float(numel)


def effective_dims(blocks: list[Block], batch_size: int, world_size: int = 1,
                   tokens_per_example: int = UPSTREAM_TOKENS_PER_EXAMPLE, rule: str = "upstream") -> torch.Tensor:
    """Effective dimension of every block as a float64 CPU tensor (one entry per block)."""
    return torch.tensor(
        [effective_dim(b.name, b.param.shape, batch_size, world_size, tokens_per_example, rule, b.tied)
         for b in blocks],
        dtype=torch.float64,
    )


# Granularity of sigma sharing (the paper's Table 3 ablation): "block" = one PertNN and one sigma per
# parameter tensor (the method), "layer" = one per transformer layer, all its tensors sharing that sigma.
GRANULARITIES = ("block", "layer")
# The blocks outside the repeated layers (embeddings, final norm, untied head) form one group of their own.
NON_LAYER_GROUP = "non_layer"


def layer_groups(blocks: list[Block]) -> "OrderedDict[str, list[int]]":
    """Block positions grouped by transformer layer ('layer.N'), plus NON_LAYER_GROUP for the rest,
    in order of first appearance (the model's `named_parameters()` order)."""
    groups: OrderedDict[str, list[int]] = OrderedDict()
    for position, block in enumerate(blocks):
        key = f"layer.{block.layer}" if block.layer is not None else NON_LAYER_GROUP
        groups.setdefault(key, []).append(position)
    return groups


def sigma_groups(blocks: list[Block], granularity: str) -> "OrderedDict[str, list[int]]":
    """The groups of blocks that share one PertNN and one sigma: {group name: block positions}."""
    if granularity == "block":
        return OrderedDict((block.name, [position]) for position, block in enumerate(blocks))
    if granularity == "layer":
        return layer_groups(blocks)
    raise ValueError(f"bank granularity must be one of {GRANULARITIES}, got {granularity!r}")


def block_type(name: str) -> str:
    """Short type of a block for logging, e.g. 'q_proj.weight' or 'input_layernorm.weight'."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if len(parts) >= 2 else name
