"""Zero-shot scoring of samples: candidate log-likelihood (classification) or greedy generation + F1."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from tqdm.auto import tqdm

from .base import Sample, Task
from .encoding import EncodedOption, collate_options, EncodedExample, encode_candidates
from .generation import greedy_answers
from .metrics import accuracy, mean_f1
from .objective import option_scores


@contextmanager
def eval_mode(model) -> Iterator[None]:
    """model.eval() for the block, then back to the caller's mode (a training loop may call this)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _chunks(order: list[int], size: int) -> list[list[int]]:
    return [order[i:i + size] for i in range(0, len(order), size)]


def classify(model, tokenizer, task: Task, samples: list[Sample], batch_size: int = 8, max_length: int = 2048,
             progress: bool = False) -> list[str]:
    """The argmax candidate of each sample by mean option log-prob. Rows of several samples share a forward
    pass; rows are length-sorted to limit padding. `batch_size` counts rows (sequences)."""
    rows: list[tuple[int, EncodedOption]] = []
    for i, s in enumerate(samples):
        rows.extend((i, option) for option in encode_candidates(s, tokenizer, task.template, max_length))
    order = sorted(range(len(rows)), key=lambda r: len(rows[r][1].input_ids))
    scores = torch.empty(len(rows))
    for chunk in tqdm(_chunks(order, batch_size), desc=f"{task.name} scoring", disable=not progress):
        batch = collate_options([EncodedExample([rows[r][1]]) for r in chunk], tokenizer)
        with torch.inference_mode():
            scores[chunk] = option_scores(model, batch).float().cpu()
    preds, start = [], 0
    for s in samples:
        n = len(s.candidates)
        preds.append(s.candidates[int(torch.argmax(scores[start:start + n]))])
        start += n
    return preds


def generate(model, tokenizer, task: Task, samples: list[Sample], batch_size: int = 8, max_length: int = 2048,
             max_new_tokens: int = 50, progress: bool = False) -> list[str]:
    """Greedy answers for generation samples, in sample order."""
    prompts = [encode_candidates(s, tokenizer, task.template, max_length, max_new_tokens=max_new_tokens)[0].input_ids
               for s in samples]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(samples)
    for chunk in tqdm(_chunks(order, batch_size), desc=f"{task.name} generation", disable=not progress):
        for i, text in zip(chunk, greedy_answers(model, tokenizer, [prompts[i] for i in chunk], max_length,
                                                 max_new_tokens)):
            answers[i] = text
    return answers


def evaluate(model, tokenizer, task: Task, samples: list[Sample], batch_size: int = 8, max_length: int = 2048,
             max_new_tokens: int = 50, progress: bool = True) -> dict:
    """{"accuracy": x} or {"f1": x}, plus "num_examples". `batch_size` = sequences per forward pass."""
    if not samples:
        return {task.metric_name: 0.0, "num_examples": 0}
    with eval_mode(model):
        if task.is_generation:
            preds = generate(model, tokenizer, task, samples, batch_size, max_length, max_new_tokens, progress)
            value = mean_f1(preds, [s.correct for s in samples])
        else:
            preds = classify(model, tokenizer, task, samples, batch_size, max_length, progress)
            value = accuracy(preds, [s.correct for s in samples])
    return {task.metric_name: value, "num_examples": len(samples)}
