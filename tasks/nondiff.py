"""Non-differentiable objective (the authors' `--non_diff`): -mean F1 of generated answers, usable as a ZO loss.

Fix against upstream: generation gets the attention mask of the left-padded batch (upstream attends to pads).
"""
from __future__ import annotations

import torch

from .base import Sample, Task
from .evaluate import eval_mode
from .generation import GREEDY, GenerationOptions, generate_answers, prompt_ids
from .metrics import squad_f1


def negative_f1_objective(model, tokenizer, batch_samples: list[Sample], task: Task, max_length: int = 2048,
                          max_new_tokens: int | None = None, options: GenerationOptions = GREEDY) -> torch.Tensor:
    """Scalar float32 CPU tensor: -(mean SQuAD F1) of the answers to the samples' prompts (no gold in the
    prompt), generated with `options` (greedy by default). For the generation tasks (SQuAD, DROP)."""
    if not task.is_generation:
        raise ValueError(f"{task.name}: the -F1 objective needs a generation task (SQuAD or DROP)")
    if not batch_samples:
        raise ValueError("empty batch")
    if max_new_tokens is not None and max_new_tokens != options.max_new_tokens:
        from dataclasses import replace
        options = replace(options, max_new_tokens=max_new_tokens)
    prompts = prompt_ids(batch_samples, tokenizer, task.template, max_length, options.max_new_tokens)
    with eval_mode(model):
        answers = generate_answers(model, tokenizer, prompts, max_length, options)
    f1 = sum(squad_f1(a, s.correct) for a, s in zip(answers, batch_samples)) / len(batch_samples)
    return torch.tensor(-f1, dtype=torch.float32)
