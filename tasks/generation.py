"""Greedy answer generation shared by evaluation and the non-differentiable (-F1) objective."""
from __future__ import annotations

from typing import Sequence

import torch

from .encoding import left_pad, pad_id
from .objective import _device


def stop_token_ids(tokenizer) -> list[int]:
    """Tokenizer EOS plus the token that ends "\\n" (upstream's eos_token="\\n")."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    newline = tokenizer.encode("\n", add_special_tokens=False)
    if newline:
        ids.add(int(newline[-1]))
    return sorted(ids)


def first_line(text: str) -> str:
    # The stop token may not fire when "\n" merges with neighbours (e.g. ".\n"); cut the text instead.
    return text.split("\n", 1)[0].strip()


def greedy_answers(model, tokenizer, prompts: Sequence[Sequence[int]], max_length: int = 2048,
                   max_new_tokens: int = 50) -> list[str]:
    """Greedy continuation of each prompt (one left-padded batch, with attention mask), cut at the first
    newline and stripped. The caller chooses the model mode (eval for evaluation)."""
    from transformers import GenerationConfig

    budget = min(max_new_tokens, max_length - max(len(p) for p in prompts))
    if budget <= 0:
        return ["" for _ in prompts]
    pad = pad_id(tokenizer)
    input_ids, attention_mask = left_pad(prompts, pad, pad_to_multiple_of=None)
    device = _device(model)
    config = GenerationConfig(max_new_tokens=budget, do_sample=False, num_beams=1,
                              eos_token_id=stop_token_ids(tokenizer), pad_token_id=pad)
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                             generation_config=config)
    new_tokens = out[:, input_ids.shape[1]:].tolist()
    return [first_line(tokenizer.decode(t, skip_special_tokens=True)) for t in new_tokens]
