"""Samples -> token ids (MeZO's `utils.py`, zero-shot: no demonstrations) and left-padded batches.

Deliberate fixes against upstream: token 0 survives left-truncation only if the tokenizer really prepends a
special token (upstream hard-codes it), and there are no tokenizer hacks keyed on the model name.
"""
from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .base import Sample
from .templates import Template

log = logging.getLogger(__name__)

_BOS_CACHE: "weakref.WeakKeyDictionary[Any, bool]" = weakref.WeakKeyDictionary()


OPTION_SCORINGS = ("auto", "rows", "prompt_cache")
"""How a classification example's options are scored (all give the same values to fp32 round-off):
rows          one row per option (upstream's way);
auto          one row per example when every option is a single token after a shared prompt (the options are
              read from the last position's logits), else one row per option;
prompt_cache  as auto, and multi-token options continue from the shared prompt's cached keys/values."""


@dataclass
class EncodedOption:
    """One scored sequence; its last `option_len` tokens are the option (0 for a bare generation prompt).
    `follows_prompt`: the sequence, tokenized as a whole, starts with the prompt's own tokens (a merge across
    the prompt/option boundary makes it False)."""

    input_ids: list[int]
    option_len: int
    follows_prompt: bool = True


@dataclass
class EncodedExample:
    """The rows of one training/eval example. `label` is the correct row for classification, else None."""

    options: list[EncodedOption]
    label: int | None = None


def prepends_special_token(tokenizer) -> bool:
    """Whether `tokenizer(text)` starts with an added special token (e.g. Llama's BOS; not Qwen2)."""
    try:
        return _BOS_CACHE[tokenizer]
    except (KeyError, TypeError):
        pass
    with_special = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    result = len(with_special) > len(plain) and (not plain or with_special[0] != plain[0])
    try:
        _BOS_CACHE[tokenizer] = result
    except TypeError:
        pass
    return result


def left_truncate(ids: list[int], max_length: int, keep_first: bool) -> list[int]:
    """Keep the end of the sequence (the option sits there); keep the BOS too when there is one."""
    if len(ids) <= max_length:
        return ids
    if keep_first:
        return ids[:1] + ids[len(ids) - (max_length - 1):]
    return ids[len(ids) - max_length:]


DEMONSTRATION_SEPARATOR = "\n\n"  # MeZO's task.train_sep


def _clean(text: str) -> str:
    # Upstream's "(demos + sep + x).lstrip().strip(' ')" with no demonstrations.
    return text.lstrip().strip(" ")


def _encode(tokenizer, prompt: str, full: str, max_length: int) -> EncodedOption:
    prompt_ids = list(tokenizer(_clean(prompt))["input_ids"])
    ids = list(tokenizer(_clean(full))["input_ids"])
    option_len = len(ids) - len(prompt_ids)
    follows_prompt = ids[:len(prompt_ids)] == prompt_ids  # before truncation cuts the prompt
    if option_len <= 0:
        log.warning("option adds no token after the prompt (%r...); it will score 0", full[-40:])
    keep_first = prepends_special_token(tokenizer)
    if len(ids) > max_length:
        log.debug("sequence of %d tokens left-truncated to %d", len(ids), max_length)
        ids = left_truncate(ids, max_length, keep_first)
    option_len = max(0, min(option_len, len(ids) - int(keep_first)))
    return EncodedOption(list(ids), option_len, follows_prompt)


def correct_index(sample: Sample) -> int:
    """Position of the correct candidate (the first gold answer found among them for list golds)."""
    assert sample.candidates is not None
    golds = sample.correct if isinstance(sample.correct, list) else [sample.correct]
    for gold in golds:
        if gold in sample.candidates:
            return sample.candidates.index(gold)
    raise ValueError(f"sample {sample.id}: no gold answer {golds!r} among the candidates")


def gold_target(sample: Sample) -> Any:
    """The single option used for LM-style training: the correct candidate, or the first gold answer."""
    if sample.candidates is not None:
        return sample.candidates[correct_index(sample)]
    return sample.correct


def demonstration_text(demonstrations: Sequence[Sample], template: Template) -> str:
    """MeZO's in-context demonstrations: each example verbalized with its gold answer, stripped, joined by
    the task separator (a blank line)."""
    return DEMONSTRATION_SEPARATOR.join(template.verbalize(s, gold_target(s)).strip()
                                        for s in demonstrations).strip()


def with_demonstrations(demonstrations: str, text: str) -> str:
    """`text` after the demonstrations (upstream strips the example's own spaces before joining)."""
    return demonstrations + DEMONSTRATION_SEPARATOR + text.strip(" ") if demonstrations else text


def encode_candidates(sample: Sample, tokenizer, template: Template, max_length: int = 2048,
                      with_gold: bool = False, max_new_tokens: int = 50,
                      demonstrations: str = "", content_free: bool = False) -> list[EncodedOption]:
    """Classification: one row per candidate. Generation (no candidates): the gold verbalization when
    `with_gold` (training), else the bare prompt with option_len 0; the budget is max_length - max_new_tokens.
    `demonstrations` (demonstration_text) go before the example, as in-context examples. `content_free`: the
    template's content-free prompt (sfc calibration) instead of the example's."""
    def put_after_demos(text: str) -> str:
        return with_demonstrations(demonstrations, text)

    if content_free:
        if sample.candidates is None:
            raise ValueError("sfc / icl_sfc calibration is for classification tasks (MeZO: no SFC for generation)")
        prompt = put_after_demos(template.encode_sfc(sample))
        return [_encode(tokenizer, prompt, put_after_demos(template.verbalize_sfc(sample, c)), max_length)
                for c in sample.candidates]
    prompt = put_after_demos(template.encode(sample))
    if sample.candidates is not None:
        return [_encode(tokenizer, prompt, put_after_demos(template.verbalize(sample, c)), max_length)
                for c in sample.candidates]
    budget = max_length - max_new_tokens
    if with_gold:
        return [_encode(tokenizer, prompt, put_after_demos(template.verbalize(sample, sample.correct)), budget)]
    ids = tokenizer(_clean(prompt))["input_ids"]
    return [EncodedOption(left_truncate(list(ids), budget, prepends_special_token(tokenizer)), 0)]


def whole_sequence(option: EncodedOption) -> EncodedOption:
    """The row with every token after the first counted as the option: LM cross-entropy over prompt and option
    (MeZO's only_train_option False: the model's own loss with labels = input_ids)."""
    return EncodedOption(option.input_ids, max(len(option.input_ids) - 1, 0), option.follows_prompt)


def encode_train_example(sample: Sample, template: Template, tokenizer, as_classification: bool,
                         max_length: int = 2048, max_new_tokens: int = 50,
                         only_train_option: bool = True) -> EncodedExample:
    """Classification: every candidate plus the correct index. Otherwise only the correct option's row
    (the loss is then LM cross-entropy on its tokens, or on the whole sequence without `only_train_option`)."""
    if as_classification and not only_train_option:
        raise ValueError("only_train_option False is LM training on the whole sequence: it needs "
                         "train_as_classification False (as MeZO, whose classification loss needs option_len)")
    if sample.candidates is None:
        if as_classification:
            raise ValueError("generation tasks have no candidates: train them with as_classification=False")
        option = encode_candidates(sample, tokenizer, template, max_length, with_gold=True,
                                   max_new_tokens=max_new_tokens)[0]
    elif as_classification:
        return EncodedExample(encode_candidates(sample, tokenizer, template, max_length), correct_index(sample))
    else:
        option = _encode(tokenizer, template.encode(sample), template.verbalize(sample, gold_target(sample)),
                         max_length)
    return EncodedExample([option if only_train_option else whole_sequence(option)])


def pad_id(tokenizer) -> int:
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0


def left_pad(rows: Sequence[Sequence[int]], pad: int, pad_to_multiple_of: int | None = 8
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) as LongTensors, padded on the left."""
    width = max(len(r) for r in rows)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            input_ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r):] = 1
    return input_ids, mask


def collate_options(examples: Sequence[EncodedExample], tokenizer, pad_to_multiple_of: int | None = 8
                    ) -> dict[str, torch.Tensor]:
    """Flatten the examples' rows into one left-padded batch.

    Classification examples (label set) add `num_options` and `labels` (one entry per example); LM examples
    must have exactly one row each. Mixing both kinds in one batch is an error.
    """
    if not examples:
        raise ValueError("empty batch")
    classification = examples[0].label is not None
    if any((e.label is not None) != classification for e in examples):
        raise ValueError("a batch mixes classification and LM examples")
    if not classification and any(len(e.options) != 1 for e in examples):
        raise ValueError("LM examples must have exactly one row (the correct option)")
    rows = [o for e in examples for o in e.options]
    input_ids, attention_mask = left_pad([o.input_ids for o in rows], pad_id(tokenizer), pad_to_multiple_of)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask,
             "option_len": torch.tensor([o.option_len for o in rows], dtype=torch.long)}
    if classification:
        batch["num_options"] = torch.tensor([len(e.options) for e in examples], dtype=torch.long)
        batch["labels"] = torch.tensor([e.label for e in examples], dtype=torch.long)
    return batch


def check_option_scoring(option_scoring: str) -> None:
    if option_scoring not in OPTION_SCORINGS:
        raise ValueError(f"option_scoring must be one of {OPTION_SCORINGS}, got {option_scoring!r}")


def shared_prompt_length(options: Sequence[EncodedOption]) -> int | None:
    """How many leading tokens every option's row shares before its first option token, or None when the rows
    cannot share one prompt row: an option adds no token, does not extend the prompt's own tokens, or the rows
    differ before their options (e.g. left-truncated by different amounts); also None for an empty prompt."""
    if not options or any(o.option_len < 1 or not o.follows_prompt for o in options):
        return None
    length = min(len(o.input_ids) - o.option_len for o in options)
    prompt = options[0].input_ids[:length]
    if length < 1 or any(o.input_ids[:length] != prompt for o in options):
        return None
    return length


def is_single_token(options: Sequence[EncodedOption], prompt_length: int | None) -> bool:
    """Every row is the shared prompt plus exactly one token (its option)."""
    return prompt_length is not None and all(len(o.input_ids) == prompt_length + 1 for o in options)


def example_prompt_length(options: Sequence[EncodedOption], option_scoring: str) -> int | None:
    """The shared prompt length of one example's options if `option_scoring` lets them share it, else None:
    under "auto" every option must be a single token; under "prompt_cache" any option length will do."""
    check_option_scoring(option_scoring)
    if option_scoring == "rows":
        return None
    length = shared_prompt_length(options)
    if option_scoring == "auto" and not is_single_token(options, length):
        return None
    return length


def shared_prompt_lengths(examples: Sequence[EncodedExample], option_scoring: str) -> list[int] | None:
    """Per example, its shared prompt length if every example of the batch has one, else None (the batch falls
    back to one row per option). LM examples (no label) keep their single row."""
    check_option_scoring(option_scoring)
    if any(e.label is None for e in examples):
        return None
    lengths = [example_prompt_length(e.options, option_scoring) for e in examples]
    return None if any(n is None for n in lengths) else lengths


def right_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) as LongTensors, padded on the right (continuations follow their prompt directly)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def collate_shared_prompts(examples: Sequence[EncodedExample], prompt_lengths: Sequence[int], tokenizer,
                           pad_to_multiple_of: int | None = 8) -> dict[str, torch.Tensor]:
    """One left-padded prompt row per example (`input_ids`, `attention_mask`) and, per option, its continuation
    after the prompt (`continuation_ids`, `continuation_mask`, right-padded; one column when every option is a
    single token) with `option_len`, `num_options`, and `labels` when every example has one."""
    if not examples:
        raise ValueError("empty batch")
    pad = pad_id(tokenizer)
    prompts = [e.options[0].input_ids[:n] for e, n in zip(examples, prompt_lengths)]
    input_ids, attention_mask = left_pad(prompts, pad, pad_to_multiple_of)
    continuations = [o.input_ids[n:] for e, n in zip(examples, prompt_lengths) for o in e.options]
    continuation_ids, continuation_mask = right_pad(continuations, pad)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "continuation_ids": continuation_ids,
             "continuation_mask": continuation_mask,
             "option_len": torch.tensor([o.option_len for e in examples for o in e.options], dtype=torch.long),
             "num_options": torch.tensor([len(e.options) for e in examples], dtype=torch.long)}
    if all(e.label is not None for e in examples):
        batch["labels"] = torch.tensor([e.label for e in examples], dtype=torch.long)
    return batch


def collate_examples(examples: Sequence[EncodedExample], tokenizer, option_scoring: str = "auto",
                     pad_to_multiple_of: int | None = 8) -> dict[str, torch.Tensor]:
    """The batch of `examples` in the layout `option_scoring` picks: shared prompts where the whole batch allows
    it (see shared_prompt_lengths), else one row per option (collate_options)."""
    lengths = shared_prompt_lengths(examples, option_scoring)
    if lengths is None:
        return collate_options(examples, tokenizer, pad_to_multiple_of)
    return collate_shared_prompts(examples, lengths, tokenizer, pad_to_multiple_of)
