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
