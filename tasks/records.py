"""Canonical record -> Sample, shared by the hub and the local loaders.

Both sources first produce the same flat record per task (HF's field names), so this module is the only place
that decides candidates and the correct answer:

| task | record fields | candidates -> correct |
|---|---|---|
| SST2 | sentence, label, idx | label words -> word of label |
| Copa | premise, choice1, choice2, question, label, idx | [choice1, choice2] -> chosen text |
| BoolQ | question, passage, label | ["Yes", "No"] -> "Yes" if label else "No" |
| MultiRC | paragraph, question, answer, label, idx | label words |
| CB | premise, hypothesis, label (0/1/2), idx | label words |
| WIC | word, sentence1, sentence2, label, idx | label words |
| WSC | text, span1_text, span2_text, label, idx | label words |
| ReCoRD | passage, query, entities, answers, idx | entities -> answers (list) |
| RTE | premise, hypothesis, label, idx | label words |
| SQuAD | title, context, question, answers | None -> answers (list) |
| DROP | context, question, answers | None -> answers (list) |
"""
from __future__ import annotations

import logging
from typing import Callable

from .base import Sample
from .templates import Template

log = logging.getLogger(__name__)


def _sample_id(record: dict, index: int):
    # Upstream ids: the dataset's integer idx where there is one, else the position in the split.
    idx = record.get("idx")
    return idx if isinstance(idx, int) and not isinstance(idx, bool) else index


def label_words(template: Template) -> list[str]:
    return [template.verbalizer[k] for k in sorted(template.verbalizer)]


def labelled_sample(template: Template) -> Callable[[dict, int], Sample]:
    """SST2, MultiRC, CB, WIC, WSC, RTE: candidates are the label words in label order."""
    words = label_words(template)

    def convert(record: dict, index: int) -> Sample:
        return Sample(id=_sample_id(record, index), data=record, candidates=list(words),
                      correct=words[int(record["label"])])
    return convert


def copa_sample(record: dict, index: int) -> Sample:
    choices = [record["choice1"], record["choice2"]]
    return Sample(id=_sample_id(record, index), data=record, candidates=choices,
                  correct=choices[int(record["label"])])


def boolq_sample(record: dict, index: int) -> Sample:
    # Upstream order ["Yes", "No"], not label order.
    return Sample(id=_sample_id(record, index), data=record, candidates=["Yes", "No"],
                  correct="Yes" if int(record["label"]) == 1 else "No")


def record_sample(record: dict, index: int) -> Sample | None:
    answers = list(record["answers"])
    if not answers:
        return None
    candidates = list(record["entities"])
    if not any(a in candidates for a in answers):
        # Misaligned entity annotation: keep the example scoreable and trainable as classification.
        log.debug("ReCoRD %s: no gold answer among the entities; adding %r", record.get("idx"), answers[0])
        candidates.append(answers[0])
    return Sample(id=_sample_id(record, index), data=record, candidates=candidates, correct=answers)


def qa_sample(record: dict, index: int) -> Sample | None:
    """SQuAD and DROP: generation; ids are positions in the split, as upstream."""
    answers = [a for a in record["answers"] if a is not None]
    if not answers:
        return None
    return Sample(id=index, data=record, candidates=None, correct=answers)
