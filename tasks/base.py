"""Core data types: one `Sample` per scored example and the `Task` that loads them."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

log = logging.getLogger(__name__)

Split = Literal["train", "valid"]


@dataclass
class Sample:
    """One example. `candidates` is None for generation tasks (SQuAD, DROP).

    `correct` is a candidate string, or a list of acceptable answers (ReCoRD entities, QA answer texts).
    `data` holds the task's canonical fields, which the template reads.
    """

    id: Any
    data: dict
    candidates: list[str] | None
    correct: str | list[str]


@dataclass
class Task:
    """A benchmark task: where its records come from, how they become samples, and how they are scored.

    `records(split)` returns canonical record dicts (hub or local files); `to_sample(record, index)` turns one
    into a Sample or None (records without a usable answer are skipped, as HF's DROP builder does).
    With `carve_eval` set, the source has no validation split, so the eval pool is cut from the train pool.
    """

    name: str
    template: Any
    is_generation: bool
    metric_name: str
    train_as_classification: bool
    records: Callable[[str], list[dict]] = field(repr=False)
    to_sample: Callable[[dict, int], Sample | None] = field(repr=False)
    carve_eval: bool = False
    data_dir: Path | None = None
    _cache: dict = field(default_factory=dict, repr=False)
    _eval_note: str | None = field(default=None, repr=False)

    def load_split(self, split: Split) -> list[Sample]:
        """All samples of the train pool or of the eval ("valid") pool, in source order."""
        if split not in ("train", "valid"):
            raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
        if split not in self._cache:
            if self.carve_eval:
                self._load_carved()
            else:
                self._cache[split] = self._convert(self.records(split))
        return self._cache[split]

    @property
    def eval_note(self) -> str | None:
        """Set when the eval pool was carved from train (local ReCoRD/DROP); None otherwise."""
        if self.carve_eval and "valid" not in self._cache:
            self._load_carved()
        return self._eval_note

    def _convert(self, records: list[dict]) -> list[Sample]:
        samples = []
        for i, record in enumerate(records):
            sample = self.to_sample(record, i)
            if sample is not None:
                samples.append(sample)
        skipped = len(records) - len(samples)
        if skipped:
            log.info("%s: skipped %d record(s) without a usable answer", self.name, skipped)
        return samples

    def _load_carved(self) -> None:
        pool = self._convert(self.records("train"))
        train, evaluation, note = carve_eval_pool(pool)
        self._cache["train"], self._cache["valid"], self._eval_note = train, evaluation, f"{self.name}: {note}"
        log.warning("%s", self._eval_note)


def carve_eval_pool(pool: list[Sample], fraction_denominator: int = 5, seed: int = 0
                    ) -> tuple[list[Sample], list[Sample], str]:
    """Split a train pool into (train, eval) with a fixed permutation, independent of the run seed.

    The eval part is 1/5 of the pool (at least 1); both parts keep source order. Seed 0 is fixed so that
    every run, whatever its data seed, evaluates on the same held-out examples.
    """
    n = len(pool)
    if n < 2:
        raise ValueError(f"cannot carve an eval pool from {n} example(s)")
    k = max(1, n // fraction_denominator)
    held_out = set(np.random.RandomState(seed).permutation(n)[:k].tolist())
    train = [s for i, s in enumerate(pool) if i not in held_out]
    evaluation = [s for i, s in enumerate(pool) if i in held_out]
    return train, evaluation, f"eval carved from train: {k} of {n} examples, seed {seed}"
