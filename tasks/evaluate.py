"""Zero-shot scoring of samples: candidate log-likelihood (classification) or greedy generation + F1."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from tqdm.auto import tqdm

from .base import Sample, Task
from .encoding import (EncodedExample, EncodedOption, collate_options, collate_shared_prompts, encode_candidates,
                       example_prompt_length, is_single_token)
from .generation import greedy_answers
from .metrics import score_predictions
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


def _row_scores(model, tokenizer, rows: list[EncodedOption], batch_size: int, desc: str, progress: bool,
                reduce: str = "mean") -> torch.Tensor:
    """Mean (or summed) option log-prob of each row, one row per option; rows are length-sorted to limit padding."""
    order = sorted(range(len(rows)), key=lambda r: len(rows[r].input_ids))
    scores = torch.empty(len(rows))
    for chunk in tqdm(_chunks(order, batch_size), desc=desc, disable=not progress or not rows):
        batch = collate_options([EncodedExample([rows[r]]) for r in chunk], tokenizer)
        with torch.inference_mode():
            scores[chunk] = option_scores(model, batch, reduce=reduce).float().cpu()
    return scores


def _cost_chunks(order: list[int], costs: list[int], budget: int) -> list[list[int]]:
    """Consecutive runs of `order` whose costs add up to at most `budget` (a costlier item goes alone)."""
    chunks: list[list[int]] = []
    used = budget
    for i in order:
        if used + costs[i] > budget:
            chunks.append([])
            used = 0
        chunks[-1].append(i)
        used += costs[i]
    return chunks


def _shared_prompt_scores(model, tokenizer, examples: list[EncodedExample], lengths: list[int], batch_size: int,
                          desc: str, progress: bool, reduce: str = "mean") -> list[torch.Tensor]:
    """Per example, its options' mean (or summed) log-probs from shared-prompt batches. A forward costs one row per
    single-token example and one per option otherwise, at most `batch_size` rows per batch."""
    costs = [1 if is_single_token(e.options, n) else len(e.options) for e, n in zip(examples, lengths)]
    order = sorted(range(len(examples)), key=lambda i: lengths[i])
    scores: list[torch.Tensor] = [torch.empty(0)] * len(examples)
    for chunk in tqdm(_cost_chunks(order, costs, batch_size), desc=desc, disable=not progress or not examples):
        batch = collate_shared_prompts([examples[i] for i in chunk], [lengths[i] for i in chunk], tokenizer)
        with torch.inference_mode():
            flat = option_scores(model, batch, reduce=reduce).float().cpu()
        for i, group in zip(chunk, torch.split(flat, batch["num_options"].tolist())):
            scores[i] = group
    return scores


CALIBRATIONS = ("sfc", "icl_sfc")


def candidate_scores(model, tokenizer, task: Task, samples: list[Sample], batch_size: int = 8,
                     max_length: int = 2048, progress: bool = False, option_scoring: str = "auto",
                     demonstrations: list[str] | None = None, reduce: str = "mean",
                     content_free: bool = False) -> list[torch.Tensor]:
    """Per sample, its candidates' mean (or summed) option log-probs. `batch_size` counts rows (sequences) per
    forward pass. Samples whose options can share their prompt (see tasks.encoding.example_prompt_length) are
    scored in that layout, the others one row per option; the scores are the same either way. A content-free
    prompt (empty for the label-word tasks) has no shared prompt row and is scored one row per option."""
    demos = demonstrations or [""] * len(samples)  # one in-context demonstration text per sample
    examples = [EncodedExample(encode_candidates(s, tokenizer, task.template, max_length, demonstrations=d,
                                                 content_free=content_free)) for s, d in zip(samples, demos)]
    lengths = [example_prompt_length(e.options, option_scoring) for e in examples]
    shared = [i for i, n in enumerate(lengths) if n is not None]
    per_row = [i for i, n in enumerate(lengths) if n is None]
    scores: list[torch.Tensor] = [torch.empty(0)] * len(samples)
    shared_scores = _shared_prompt_scores(model, tokenizer, [examples[i] for i in shared],
                                          [lengths[i] for i in shared], batch_size, f"{task.name} scoring", progress,
                                          reduce)
    for i, group in zip(shared, shared_scores):
        scores[i] = group
    rows = [o for i in per_row for o in examples[i].options]
    flat = _row_scores(model, tokenizer, rows, batch_size, f"{task.name} scoring", progress, reduce)
    for i, group in zip(per_row, torch.split(flat, [len(examples[i].options) for i in per_row])):
        scores[i] = group
    return scores


def calibrated_scores(model, tokenizer, task: Task, samples: list[Sample], calibration: str, batch_size: int = 8,
                      max_length: int = 2048, progress: bool = False, option_scoring: str = "auto",
                      demonstrations: list[str] | None = None) -> list[torch.Tensor]:
    """MeZO's sfc / icl_sfc: summed option log-prob minus the summed log-prob of the same option after the
    template's content-free prompt (sfc: without demonstrations; icl_sfc: after the same demonstrations)."""
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
    common = dict(batch_size=batch_size, max_length=max_length, progress=progress, option_scoring=option_scoring,
                  reduce="sum")
    raw = candidate_scores(model, tokenizer, task, samples, demonstrations=demonstrations, **common)
    free_demos = demonstrations if calibration == "icl_sfc" else None
    free = candidate_scores(model, tokenizer, task, samples, demonstrations=free_demos, content_free=True, **common)
    return [r - f for r, f in zip(raw, free)]


def classify(model, tokenizer, task: Task, samples: list[Sample], batch_size: int = 8, max_length: int = 2048,
             progress: bool = False, option_scoring: str = "auto", demonstrations: list[str] | None = None,
             calibration: str | None = None) -> list[str]:
    """The argmax candidate of each sample: by mean option log-prob, or by calibrated sums (`calibration`
    sfc / icl_sfc, see calibrated_scores)."""
    args = (model, tokenizer, task, samples)
    kwargs = dict(batch_size=batch_size, max_length=max_length, progress=progress, option_scoring=option_scoring,
                  demonstrations=demonstrations)
    scores = (calibrated_scores(*args, calibration, **kwargs) if calibration
              else candidate_scores(*args, **kwargs))
    return [s.candidates[int(torch.argmax(group))] for s, group in zip(samples, scores)]


def generate(model, tokenizer, task: Task, samples: list[Sample], batch_size: int = 8, max_length: int = 2048,
             max_new_tokens: int = 50, progress: bool = False, demonstrations: list[str] | None = None
             ) -> list[str]:
    """Greedy answers for generation samples, in sample order."""
    demos = demonstrations or [""] * len(samples)
    prompts = [encode_candidates(s, tokenizer, task.template, max_length, max_new_tokens=max_new_tokens,
                                 demonstrations=d)[0].input_ids for s, d in zip(samples, demos)]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[str] = [""] * len(samples)
    for chunk in tqdm(_chunks(order, batch_size), desc=f"{task.name} generation", disable=not progress):
        for i, text in zip(chunk, greedy_answers(model, tokenizer, [prompts[i] for i in chunk], max_length,
                                                 max_new_tokens)):
            answers[i] = text
    return answers


def evaluate(model, tokenizer, task: Task, samples: list[Sample], batch_size: int = 8, max_length: int = 2048,
             max_new_tokens: int = 50, progress: bool = True, option_scoring: str = "auto",
             demonstrations: list[str] | None = None, calibration: str | None = None,
             per_example: bool = False) -> dict:
    """{"accuracy": x} or {"f1": x}, plus "num_examples". `batch_size` = sequences per forward pass;
    `option_scoring` (tasks.encoding.OPTION_SCORINGS) only changes how candidates are batched, not the scores;
    `demonstrations`: one in-context demonstration text per sample (tasks.encoding.demonstration_text);
    `per_example`: also "predictions" and "scores" (1/0, or F1), one per sample, in the samples' order."""
    if not samples:
        return {task.metric_name: 0.0, "num_examples": 0}
    with eval_mode(model):
        if task.is_generation:
            preds = generate(model, tokenizer, task, samples, batch_size, max_length, max_new_tokens, progress,
                             demonstrations)
        else:
            preds = classify(model, tokenizer, task, samples, batch_size, max_length, progress, option_scoring,
                             demonstrations, calibration)
    return score_predictions(task.metric_name, preds, [s.correct for s in samples], per_example)
