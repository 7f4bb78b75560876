"""Accuracy and SQuAD-style token F1 (MeZO's `metrics.py`). DROP also uses SQuAD F1, as upstream."""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Any, Sequence

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _token_f1(pred: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(pred).split(), normalize_answer(gold).split()
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_f1(pred: str, golds: str | Sequence[str]) -> float:
    """Max token F1 over the gold answers; exact match when the first gold says there is no answer."""
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not golds:
        raise ValueError("no gold answer")
    if golds[0] in ("CANNOTANSWER", "no answer"):
        return float(normalize_answer(golds[0]) == normalize_answer(pred))
    return max(_token_f1(pred, g) for g in golds)


def example_hits(preds: Sequence[Any], golds: Sequence[Any]) -> list[float]:
    """1.0 per prediction equal to its gold, or contained in it when the gold is a list (ReCoRD), else 0.0."""
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} golds")
    return [float((p in g) if isinstance(g, (list, tuple)) else (p == g)) for p, g in zip(preds, golds)]


def example_f1s(preds: Sequence[str], golds: Sequence[str | Sequence[str]]) -> list[float]:
    if len(preds) != len(golds):
        raise ValueError(f"{len(preds)} predictions for {len(golds)} golds")
    return [squad_f1(p, g) for p, g in zip(preds, golds)]


def accuracy(preds: Sequence[Any], golds: Sequence[Any]) -> float:
    """Share of predictions equal to the gold, or contained in it when the gold is a list (ReCoRD)."""
    hits = example_hits(preds, golds)
    return sum(hits) / len(hits) if hits else 0.0


def mean_f1(preds: Sequence[str], golds: Sequence[str | Sequence[str]]) -> float:
    f1s = example_f1s(preds, golds)
    return sum(f1s) / len(f1s) if f1s else 0.0


def score_predictions(metric_name: str, preds: Sequence[Any], golds: Sequence[Any], per_example: bool = False) -> dict:
    """{metric_name: mean, "num_examples": n}; with `per_example`, each prediction and its score too
    ("predictions", "scores": 1/0 or F1), which paired comparisons of two runs on the same examples need."""
    scores = example_f1s(preds, golds) if metric_name == "f1" else example_hits(preds, golds)
    result = {metric_name: sum(scores) / len(scores) if scores else 0.0, "num_examples": len(scores)}
    if per_example:
        result.update(predictions=list(preds), scores=scores)
    return result
