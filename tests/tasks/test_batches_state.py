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
