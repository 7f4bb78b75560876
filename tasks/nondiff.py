"""Non-differentiable objective (spec §2.9): -mean F1 of greedy answers, usable as a ZO loss.

Fix against upstream: generation gets the attention mask of the left-padded batch (upstream attends to pads).
"""
from __future__ import annotations

import torch

from .base import Sample, Task
from .encoding import encode_candidates
from .evaluate import eval_mode
from .generation import greedy_answers
from .metrics import squad_f1


def negative_f1_objective(model, tokenizer, batch_samples: list[Sample], task: Task, max_length: int = 2048,
                          max_new_tokens: int = 50) -> torch.Tensor:
    """Scalar float32 CPU tensor: -(mean SQuAD F1) of the greedy answers to the samples' prompts (no gold in
    the prompt). For the generation tasks (SQuAD, DROP); the batch is a list of Samples."""
    if not task.is_generation:
        raise ValueError(f"{task.name}: the -F1 objective needs a generation task (SQuAD or DROP)")
    if not batch_samples:
        raise ValueError("empty batch")
    prompts = [encode_candidates(s, tokenizer, task.template, max_length, max_new_tokens=max_new_tokens)[0].input_ids
               for s in batch_samples]
    with eval_mode(model):
        answers = greedy_answers(model, tokenizer, prompts, max_length, max_new_tokens)
    f1 = sum(squad_f1(a, s.correct) for a, s in zip(answers, batch_samples)) / len(batch_samples)
    return torch.tensor(-f1, dtype=torch.float32)
