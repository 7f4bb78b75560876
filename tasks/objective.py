"""The training loss on option tokens (spec §4.5), computed from the last positions' logits only.

Rows are left-padded, so every option sits at the end of its row: the model only has to produce logits for
the last max(option_len) + 1 positions (`logits_to_keep`), which saves the (batch, seq, vocab) tensor.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F


def _device(model) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def _accepts_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token, as `generate` does for left padding."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def option_token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          option_len: torch.Tensor, logits_dtype: torch.dtype = torch.float32
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs, mask), both (rows, max_option_len): the log-probability (in `logits_dtype`: float32, or
    float16 as the authors' fp16 runs) of each of the last max_option_len tokens given its prefix, and
    which of them belong to the row's option."""
    device = _device(model)
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    option_len = option_len.to(device)
    width = max(int(option_len.max()), 1)
    keep = min(width + 1, input_ids.shape[1])
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask,
                  position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    if _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = keep
    logits = model(**kwargs).logits[:, -keep:, :]
    targets = input_ids[:, input_ids.shape[1] - keep + 1:]
    # Fused CE in float32 = -log_softmax gathered at the target, without a second vocab-sized tensor.
    logprobs = -F.cross_entropy(logits[:, :-1].to(logits_dtype).transpose(1, 2), targets, reduction="none")
    steps = torch.arange(keep - 1, device=device)
    mask = steps.unsqueeze(0) >= (keep - 1 - option_len).unsqueeze(1)
    return logprobs, mask


def option_scores(model, batch: dict, logits_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-row mean log-probability of the option tokens (rows with no option token score 0)."""
    logprobs, mask = option_token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["option_len"],
                                           logits_dtype)
    counts = mask.sum(-1).clamp(min=1)
    return (logprobs * mask).sum(-1) / counts


def batch_loss(model, batch: dict, logits_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Scalar loss of a collated batch (float32; `logits_dtype=torch.float16`: upstream's fp16 loss).

    With `num_options`: per example, cross-entropy of its options' mean log-probs against `labels`,
    averaged over examples (option counts may differ). Otherwise: token-level cross-entropy averaged over
    every option token of the batch (teacher forcing on the answer only).
    """
    if "num_options" in batch:
        scores = option_scores(model, batch, logits_dtype)
        labels = batch["labels"].to(scores.device)
        losses = [-torch.log_softmax(group, dim=0)[labels[i]]
                  for i, group in enumerate(torch.split(scores, batch["num_options"].tolist()))]
        return torch.stack(losses).mean()
    logprobs, mask = option_token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["option_len"],
                                           logits_dtype)
    return -(logprobs * mask).sum() / mask.sum().clamp(min=1)
