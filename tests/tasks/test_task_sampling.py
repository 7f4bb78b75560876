"""Upstream split arithmetic, its determinism, and the small-pool dev cap."""
import logging

import numpy as np

from tasks import sample_splits
from tasks.sampling import seeded_subset
from task_helpers import requires_data, shared_task

pytestmark = requires_data


def ids(samples):
    return [s.id for s in samples]


def test_copa_upstream_sizes_and_determinism():
    task = shared_task("Copa")
    a = sample_splits(task, 1000, 100, 1000, seed=43)
    assert (len(a.train), len(a.dev), len(a.test)) == (300, 100, 100)
    assert not set(ids(a.train)) & set(ids(a.dev))
    b = sample_splits(task, 1000, 100, 1000, seed=43)
    assert (ids(a.train), ids(a.dev), ids(a.test)) == (ids(b.train), ids(b.dev), ids(b.test))
    c = sample_splits(task, 1000, 100, 1000, seed=0)
    assert ids(c.train) != ids(a.train) and ids(c.test) != ids(a.test)
    assert sample_splits(task, 1000, 100, 1000, seed=43, upstream_split=True).train == a.train


def test_matches_upstream_global_seed_permutation():
    task = shared_task("Copa")
    pool, valid = task.load_split("train"), task.load_split("valid")
    state = np.random.get_state()
    try:
        np.random.seed(43)
        upstream_train = np.random.permutation(len(pool)).tolist()[:1100]
        np.random.seed(43)
        upstream_test = np.random.permutation(len(valid)).tolist()[:1000]
    finally:
        np.random.set_state(state)
    splits = sample_splits(task, 1000, 100, 1000, seed=43)
    chosen = [pool[i] for i in upstream_train]
    assert splits.dev == chosen[-100:] and splits.train == chosen[:-100]
    assert splits.test == [valid[i] for i in upstream_test]


def test_global_numpy_state_untouched():
    before = np.random.get_state()[1].copy()
    seeded_subset(list(range(50)), 7, 10)
    sample_splits(shared_task("CB"), 1000, 100, 1000, seed=43)
    assert (np.random.get_state()[1] == before).all()


def test_wsc_dev_capped_with_warning(caplog):
    task = shared_task("WSC")
    with caplog.at_level(logging.WARNING, logger="tasks.sampling"):
        fixed = sample_splits(task, 1000, 500, 1000, seed=43)
    assert (len(fixed.train), len(fixed.dev), len(fixed.test)) == (499, 55, 104)
    assert any("dev capped at 55" in n for n in fixed.notes)
    assert any("dev capped" in r.getMessage() for r in caplog.records)
    upstream = sample_splits(task, 1000, 500, 1000, seed=43, upstream_split=True)
    assert (len(upstream.train), len(upstream.dev)) == (54, 500)
    assert not any("capped" in n for n in upstream.notes)
    # Same permutation: the capped split only moves the dev/train boundary.
    assert fixed.train + fixed.dev == upstream.train + upstream.dev


def test_cb_and_sst2_follow_upstream():
    cb = sample_splits(shared_task("CB"), 1000, 100, 1000, seed=43)
    assert (len(cb.train), len(cb.dev), len(cb.test)) == (150, 100, 56)
    sst2 = sample_splits(shared_task("SST2"), 1000, 500, 1000, seed=43)
    assert (len(sst2.train), len(sst2.dev), len(sst2.test)) == (1000, 500, 872) and sst2.notes == []


def test_no_dev_and_whole_eval_pool():
    task = shared_task("Copa")
    splits = sample_splits(task, 16, None, None, seed=1)
    assert len(splits.train) == 16 and splits.dev == [] and splits.test == task.load_split("valid")
    assert sample_splits(task, 16, 0, 0, seed=1).test == []
    assert ids(sample_splits(task, 16, 0, 5, seed=1).train) == ids(splits.train)
