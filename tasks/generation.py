"""Answer generation shared by evaluation and the non-differentiable (-F1) objective.

`GenerationOptions` carries upstream's generation flags (greedy by default: `sampling`, `temperature`,
`num_beams`, `top_k`, `top_p`, `max_new_tokens`, `eos_token`) plus one switch of this codebase,
`cut_at_newline`: the decoded answer is cut at its first newline (default) or, as upstream, only stripped.
The cut matters when the model emits a merged newline token ("\\n\\n", SmolLM2 id 1116) that is not the stop
token of "\\n": upstream keeps generating and F1 counts every extra token (docs/differences.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .encoding import encode_candidates, left_pad, pad_id
from .metrics import score_predictions
from .objective import _device


@dataclass(frozen=True)
class GenerationOptions:
    sampling: bool = False
    temperature: float = 1.0
    num_beams: int = 1
    top_k: int | None = None
    top_p: float = 0.95  # upstream default; read only when sampling
    max_new_tokens: int = 50
    eos_token: str = "\n"  # generation also stops at its last token (and at the tokenizer's EOS)
    cut_at_newline: bool = True  # False: upstream's strip-only answer

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.sampling and self.temperature <= 0:
            raise ValueError(f"sampling needs temperature > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or unset, got {self.top_k}")
        if not self.eos_token:
            raise ValueError("eos_token must be a non-empty string (upstream: '\\n')")


GREEDY = GenerationOptions()


def stop_token_ids(tokenizer, eos_token: str = "\n") -> list[int]:
    """Tokenizer EOS plus the last token of `eos_token` (upstream's eos_token="\\n")."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    tail = tokenizer.encode(eos_token, add_special_tokens=False)
    if tail:
        ids.add(int(tail[-1]))
    return sorted(ids)


def first_line(text: str) -> str:
    # The stop token may not fire when "\n" merges with neighbours (e.g. ".\n"); cut the text instead.
    return text.split("\n", 1)[0].strip()


def finish_answer(text: str, cut_at_newline: bool = True) -> str:
    """The answer compared with the gold: the first line, stripped; or only stripped (upstream)."""
    return first_line(text) if cut_at_newline else text.strip()


def _generation_config(tokenizer, options: GenerationOptions, budget: int, pad: int):
    from transformers import GenerationConfig

    kwargs = dict(max_new_tokens=budget, do_sample=options.sampling, num_beams=options.num_beams,
                  eos_token_id=stop_token_ids(tokenizer, options.eos_token), pad_token_id=pad)
    if options.sampling:  # HF warns about sampling knobs on a greedy config
        kwargs.update(temperature=options.temperature, top_p=options.top_p, top_k=options.top_k or 0)
    return GenerationConfig(**kwargs)


def raw_answers(model, tokenizer, prompts: Sequence[Sequence[int]], max_length: int = 2048,
                options: GenerationOptions = GREEDY) -> list[str]:
    """Decoded continuations (special tokens skipped), before any cut or strip; one left-padded batch with
    its attention mask. The caller chooses the model mode (eval for evaluation)."""
    budget = min(options.max_new_tokens, max_length - max(len(p) for p in prompts))
    if budget <= 0:
        return ["" for _ in prompts]
    pad = pad_id(tokenizer)
    input_ids, attention_mask = left_pad(prompts, pad, pad_to_multiple_of=None)
    device = _device(model)
    with torch.inference_mode():
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
                             generation_config=_generation_config(tokenizer, options, budget, pad))
    return [tokenizer.decode(t, skip_special_tokens=True) for t in out[:, input_ids.shape[1]:].tolist()]


def generate_answers(model, tokenizer, prompts: Sequence[Sequence[int]], max_length: int = 2048,
                     options: GenerationOptions = GREEDY) -> list[str]:
    return [finish_answer(t, options.cut_at_newline) for t in raw_answers(model, tokenizer, prompts, max_length,
                                                                           options)]


def greedy_answers(model, tokenizer, prompts: Sequence[Sequence[int]], max_length: int = 2048,
                   max_new_tokens: int = 50) -> list[str]:
    """Greedy answers cut at the first newline (the default options)."""
    return generate_answers(model, tokenizer, prompts, max_length, GenerationOptions(max_new_tokens=max_new_tokens))


def prompt_ids(samples, tokenizer, template, max_length: int, max_new_tokens: int,
               demonstrations: list[str] | None = None) -> list[list[int]]:
    demos = demonstrations or [""] * len(samples)
    return [encode_candidates(s, tokenizer, template, max_length, max_new_tokens=max_new_tokens,
                              demonstrations=d)[0].input_ids for s, d in zip(samples, demos)]


def answer_samples(model, tokenizer, task, samples, batch_size: int = 8, max_length: int = 2048,
                   options: GenerationOptions = GREEDY, progress: bool = False, raw: bool = False,
                   demonstrations: list[str] | None = None) -> list[str]:
    """Answers to generation samples in sample order (length-sorted batches); `raw`: before cut / strip;
    `demonstrations`: one in-context demonstration text per sample."""
    prompts = prompt_ids(samples, tokenizer, task.template, max_length, options.max_new_tokens, demonstrations)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers = [""] * len(samples)
    produce = raw_answers if raw else generate_answers
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    for chunk in tqdm(chunks, desc=f"{task.name} generation", disable=not progress):
        for i, text in zip(chunk, produce(model, tokenizer, [prompts[i] for i in chunk], max_length, options)):
            answers[i] = text
    return answers


def evaluate_generation(model, tokenizer, task, samples, batch_size: int = 8, max_length: int = 2048,
                        options: GenerationOptions = GREEDY, progress: bool = False,
                        demonstrations: list[str] | None = None, per_example: bool = False) -> dict:
    """{"f1": mean SQuAD F1, "num_examples": n} with the given generation options (model in eval mode);
    `per_example`: also each answer and its F1 ("predictions", "scores")."""
    if not samples:
        return {"f1": 0.0, "num_examples": 0}
    was_training = model.training
    model.eval()
    try:
        preds = answer_samples(model, tokenizer, task, samples, batch_size, max_length, options, progress,
                               demonstrations=demonstrations)
    finally:
        model.train(was_training)
    return score_predictions("f1", preds, [s.correct for s in samples], per_example)
