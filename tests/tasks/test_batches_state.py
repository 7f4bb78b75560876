"""TrainBatches.state_dict: resuming the shuffled stream at any point yields the same batches as going on."""
import itertools
from types import SimpleNamespace

import pytest

from tasks.batches import TrainBatches

TASK = SimpleNamespace(name="stub", train_as_classification=True, template=None)


def _batches(seed=5):
    # the generation objective batches the samples themselves: no tokenizer needed
    return TrainBatches(list(range(10)), TASK, None, 3, seed=seed, for_generation_objective=True)


@pytest.mark.parametrize("taken", [0, 1, 3, 4, 5, 9])  # 4 batches per epoch: inside, at and across epoch ends
def test_resumed_stream_continues_exactly(taken):
    reference = list(itertools.islice(_batches().forever(), 14))
    live = _batches()
    stream = live.forever()
    head = [next(stream) for _ in range(taken)]
    state = live.state_dict()
    resumed = _batches(seed=99)  # the seed does not matter: the state carries the generator
    resumed.load_state_dict(state)
    tail = list(itertools.islice(resumed.forever(), 14 - taken))
    assert head + tail == reference


@pytest.mark.parametrize("taken", [2, 4])  # inside an epoch, and at its end
def test_restart_after_a_restored_position_matches_a_live_restart(taken):
    # a loader restarted (a new epoch, as L2L does each epoch) right after a resume draws what a live one draws
    live = _batches()
    stream = live.forever()
    for _ in range(taken):
        next(stream)
    state = live.state_dict()
    expected = list(itertools.islice(live.restart(), 6))
    resumed = _batches(seed=99)
    resumed.load_state_dict(state)
    resumed.forever()  # the resumed run's feed, replaced before it yields anything
    assert list(itertools.islice(resumed.restart(), 6)) == expected


def test_groups_of_k_batches_hold_the_batches_of_k_times_the_size():
    # 10 samples: batches of 3 -> groups of 2 are (3+3, 3+1) per epoch, the examples of batches of 6 (6, 4)
    big = TrainBatches(list(range(10)), TASK, None, 6, seed=5, for_generation_objective=True)
    groups = list(itertools.islice(_batches().groups(2), 6))
    assert [sum(g, []) for g in groups] == list(itertools.islice(big.forever(), 6))
    assert [len(g) for g in groups] == [2, 2, 2, 2, 2, 2] and _batches().groups_per_epoch(2) == len(big) == 2
    assert [len(g) for g in itertools.islice(_batches().groups(3), 4)] == [3, 1, 3, 1]  # cut at the epoch end
    with pytest.raises(ValueError, match="group size"):
        next(_batches().groups(0))


@pytest.mark.parametrize("taken", [1, 2, 3])  # inside an epoch, at its end, across it
def test_resumed_groups_continue_exactly(taken):
    reference = list(itertools.islice(_batches().groups(3), 6))
    live = _batches()
    stream = live.groups(3)
    head = [next(stream) for _ in range(taken)]
    resumed = _batches(seed=99)
    resumed.load_state_dict(live.state_dict())  # a checkpoint between groups
    assert head + list(itertools.islice(resumed.groups(3), 6 - taken)) == reference
