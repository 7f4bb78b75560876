"""The training loss on option tokens (MeZO's `utils.py`), computed from the last positions' logits only.

Two batch layouts (tasks.encoding.collate_examples), same values to fp32 round-off:
- one row per option: rows are left-padded, so every option sits at the end of its row and the model only has
  to produce logits for the last max(option_len) + 1 positions (`logits_to_keep`);
- shared prompts (`continuation_ids` in the batch): one prompt row per example, whose last position's logits
  predict every option's first token. Single-token options need nothing else; longer options continue from
  the prompt's cached keys/values, copied once per option.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F


def _device(model) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def _forward_parameters(model) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _accepts_logits_to_keep(model) -> bool:
    return "logits_to_keep" in _forward_parameters(model)


def _cache_keyword(model) -> str:
    # transformers renamed `past_key_values` to `cache` (the old name is deprecated in 5.x).
    return "cache" if "cache" in _forward_parameters(model) else "past_key_values"


def _returned_cache(output):
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


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
    width = max(int(option_len.max()), 1)  # before the copy to the device: read on the host, no sync
    option_len = option_len.to(device)
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


def _prompt_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: bool):
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask,
                  position_ids=position_ids_from_mask(attention_mask), use_cache=cache)
    if _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = 1
    return model(**kwargs)


def _continuation_logits(model, past, prompt_mask: torch.Tensor, continuation_ids: torch.Tensor,
                         continuation_mask: torch.Tensor) -> torch.Tensor:
    """Logits after each continuation token but the last (no token follows it), given the prompt's cache."""
    inputs, mask = continuation_ids[:, :-1], continuation_mask[:, :-1]
    start = prompt_mask.sum(-1, keepdim=True)
    positions = start + torch.arange(inputs.shape[1], device=inputs.device).unsqueeze(0)
    return model(input_ids=inputs, attention_mask=torch.cat([prompt_mask, mask], dim=1), position_ids=positions,
                 use_cache=True, **{_cache_keyword(model): past}).logits


def shared_prompt_logprobs(model, batch: dict, logits_dtype: torch.dtype = torch.float32
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs, mask), both (options, continuation width), for a shared-prompt batch: the float32
    log-probability of each continuation token given the prompt and the tokens before it, and which of them
    belong to the option."""
    device = _device(model)
    input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    targets, target_mask = batch["continuation_ids"].to(device), batch["continuation_mask"].to(device)
    option_len = batch["option_len"].to(device)
    # the prompt row of each option, kept on the host too: the cache's layers may sit on several GPUs (a device
    # map), and a host index serves each of them, where cuda:0's would be refused by a layer on cuda:1
    host_rows = torch.repeat_interleave(torch.arange(len(input_ids)), batch["num_options"].cpu())
    row_of_option = host_rows.to(device)
    multi_token = targets.shape[1] > 1
    out = _prompt_forward(model, input_ids, attention_mask, cache=multi_token)
    logits = out.logits[:, -1:, :][row_of_option]
    if multi_token:
        past = _returned_cache(out)
        past.batch_select_indices(host_rows)  # one copy of the prompt's keys/values per option
        rest = _continuation_logits(model, past, attention_mask[row_of_option], targets, target_mask)
        logits = torch.cat([logits, rest], dim=1)
    logprobs = -F.cross_entropy(logits.to(logits_dtype).transpose(1, 2), targets, reduction="none")
    lengths = target_mask.sum(-1, keepdim=True)
    steps = torch.arange(targets.shape[1], device=device).unsqueeze(0)
    mask = (steps < lengths) & (steps >= lengths - option_len.unsqueeze(1))
    return logprobs, mask


def option_scores(model, batch: dict, logits_dtype: torch.dtype = torch.float32, reduce: str = "mean"
                  ) -> torch.Tensor:
    """Per-option mean (or, `reduce="sum"`, summed) log-probability of the option tokens (no token: 0)."""
    if "continuation_ids" in batch:
        logprobs, mask = shared_prompt_logprobs(model, batch, logits_dtype)
    else:
        logprobs, mask = option_token_logprobs(model, batch["input_ids"], batch["attention_mask"],
                                               batch["option_len"], logits_dtype)
    total = (logprobs * mask).sum(-1)
    return total if reduce == "sum" else total / mask.sum(-1).clamp(min=1)


class LengthGroups(list):
    """One batch as micro-batches of examples of similar length (tasks.batches.split_by_length): each is padded
    only to its own longest row. Its loss is the batch's loss: the micro-batch losses weighted by what each
    averages over (`loss_weight`), so only the rounding differs from one padded batch."""


def batch_loss(model, batch: dict | LengthGroups, logits_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Scalar loss of a collated batch (float32; `logits_dtype=torch.float16`: upstream's fp16 loss).

    With `num_options`: per example, cross-entropy of its options' mean log-probs against `labels`,
    averaged over examples (option counts may differ). Otherwise: token-level cross-entropy averaged over
    every option token of the batch (teacher forcing on the answer only).
    """
    if isinstance(batch, LengthGroups):
        weights = [loss_weight(micro) for micro in batch]
        total = sum(batch_loss(model, micro, logits_dtype) * w for micro, w in zip(batch, weights))
        return total / max(sum(weights), 1)
    if "num_options" in batch:
        return example_losses(model, batch, logits_dtype).mean()
    logprobs, mask = option_token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["option_len"],
                                           logits_dtype)
    return -(logprobs * mask).sum() / mask.sum().clamp(min=1)


def example_losses(model, batch: dict, logits_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One loss per example of a collated batch: what `batch_loss` gives for that example alone, so that a
    batch of them reproduces upstream's batch-1 dev loss in one forward. With `num_options`: the
    cross-entropy of its options' mean log-probs; otherwise its answer tokens' mean cross-entropy.
    For `LengthGroups`, in the groups' order (shortest examples first)."""
    if isinstance(batch, LengthGroups):
        return torch.cat([example_losses(model, micro, logits_dtype) for micro in batch])
    if "num_options" in batch:
        scores = option_scores(model, batch, logits_dtype)
        labels = batch["labels"].to(scores.device)
        return torch.stack([-torch.log_softmax(group, dim=0)[labels[i]]
                            for i, group in enumerate(torch.split(scores, batch["num_options"].tolist()))])
    logprobs, mask = option_token_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["option_len"],
                                           logits_dtype)
    return -(logprobs * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def loss_weight(batch: dict | LengthGroups) -> int:
    """What `batch_loss` averages over: examples (option scoring) or option tokens (LM loss). Weighting the
    losses of micro-batches by it gives the loss of their concatenation (data parallel, accumulation)."""
    if isinstance(batch, LengthGroups):
        return sum(loss_weight(micro) for micro in batch)
    if "num_options" in batch:
        return len(batch["num_options"])
    seq_len = batch["input_ids"].shape[1]
    width = max(int(batch["option_len"].max()), 1)
    return int(batch["option_len"].clamp(max=min(width, seq_len - 1)).sum())
