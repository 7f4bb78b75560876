"""Train / dev / test selection with upstream's seeded-permutation arithmetic (MeZO's `tasks.py`)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .base import Sample, Task

log = logging.getLogger(__name__)


@dataclass
class Splits:
    train: list[Sample]
    dev: list[Sample]
    test: list[Sample]
    notes: list[str] = field(default_factory=list)


def seeded_subset(pool: list[Sample], seed: int, num: int) -> list[Sample]:
    """The first `num` items of a seeded permutation of the pool.

    A local RandomState gives the same permutation as upstream's `np.random.seed(seed);
    np.random.permutation(n)` without touching NumPy's global state.
    """
    order = np.random.RandomState(seed).permutation(len(pool))[:num]
    return [pool[i] for i in order]


def demonstration_sets(train_pool: list[Sample], num_examples: int, num_demos: int) -> list[list[Sample]]:
    """MeZO's in-context mode (no train-set seed): one demonstration set per evaluated example, the i-th being
    the first `num_demos` of a permutation of the whole train pool seeded with i."""
    return [seeded_subset(train_pool, i, num_demos) for i in range(num_examples)]


def sample_splits(task: Task, num_train: int, num_dev: int | None, num_eval: int | None, seed: int,
                  upstream_split: bool = False) -> Splits:
    """Upstream: draw num_train + num_dev from the train pool, the LAST num_dev being dev; test = the first
    num_eval of a permutation of the eval pool (the whole pool, in order, when num_eval is None).

    Deliberate fix (off with upstream_split=True): when the pool is too small and the train part would end up
    smaller than dev (WSC: 54 train / 500 dev), dev is capped at max(1, pool // 10) and train gets the rest.
    """
    notes: list[str] = []
    num_dev = num_dev or 0
    pool = task.load_split("train")
    wanted = num_train + num_dev
    chosen = seeded_subset(pool, seed, wanted)
    if len(pool) < wanted:
        msg = (f"{task.name}: train pool has {len(pool)} examples, fewer than the {num_train} train + {num_dev} dev "
               f"requested")
        log.warning(msg)
        notes.append(msg)
    n_dev = num_dev
    if not upstream_split and num_dev and len(pool) < wanted and len(chosen) - num_dev < num_dev:
        n_dev = max(1, len(pool) // 10)
        msg = (f"{task.name}: dev capped at {n_dev} (pool // 10) instead of {num_dev}, so that train keeps "
               f"{min(num_train, len(chosen) - n_dev)} examples; pass upstream_split=True for upstream's "
               f"{max(0, len(chosen) - num_dev)} / {min(num_dev, len(chosen))}")
        log.warning(msg)
        notes.append(msg)
    if n_dev:
        dev = chosen[len(chosen) - n_dev:] if n_dev <= len(chosen) else list(chosen)
        train = chosen[:max(0, len(chosen) - n_dev)][:num_train]
    else:
        dev, train = [], chosen

    valid_pool = task.load_split("valid")
    test = list(valid_pool) if num_eval is None else seeded_subset(valid_pool, seed, num_eval)
    return Splits(train=train, dev=dev, test=test, notes=notes)
