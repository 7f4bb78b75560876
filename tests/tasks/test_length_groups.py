"""Length-grouped batches: the split is the least padding, the micro-batches hold the batch's examples, and
their weighted loss is the padded batch's loss up to rounding (classification in every layout, and LM)."""
import itertools
import random
from types import SimpleNamespace

import pytest
import torch

import tasks
from conftest import build_tiny_model
from task_helpers import requires_data, shared_task


def _padded_tokens(lengths, groups):
    return sum(len(g) * max(lengths[i] for i in g) for g in groups)


def test_split_is_the_least_padding_over_every_contiguous_cut():
    rng = random.Random(0)
    for _ in range(200):
        lengths = [rng.choice([3, 5, 8, 20, 21, 60, 200]) for _ in range(rng.randint(1, 9))]
        k = rng.randint(1, 4)
        groups = tasks.split_by_length(lengths, k)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))  # each example once
        assert 1 <= len(groups) <= k and all(groups)
        flat = [lengths[i] for g in groups for i in g]
        assert flat == sorted(flat)  # shortest first
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        best = min(_padded_tokens(lengths, [order[a:b] for a, b in zip((0,) + cuts, cuts + (len(order),))])
                   for m in range(min(k, len(lengths)))
                   for cuts in itertools.combinations(range(1, len(order)), m))
        assert _padded_tokens(lengths, groups) == best
    assert tasks.split_by_length([7, 7, 7, 7], 3) == [[0, 1, 2, 3]]  # no cut where it saves nothing
    assert tasks.split_by_length([9, 1, 1, 1], 2) == [[1, 2, 3], [0]]


@requires_data
@pytest.mark.parametrize("name, as_classification, scoring", [("CB", True, "auto"), ("Copa", True, "rows"),
                                                                ("Copa", False, "auto"), ("SST2", True, "rows")])
def test_grouped_batches_hold_the_same_examples_and_loss(tiny_tokenizer, name, as_classification, scoring):
    task = shared_task(name)
    samples = task.load_split("train")[:12]
    model = build_tiny_model("llama", vocab_size=len(tiny_tokenizer))

    def batches(groups):
        return tasks.TrainBatches(samples, task, tiny_tokenizer, 6, seed=3, as_classification=as_classification,
                                  max_length=160, option_scoring=scoring, length_groups=groups).epoch()

    split = 0
    for plain, grouped in zip(batches(1), batches(3)):
        assert isinstance(grouped, tasks.LengthGroups) and 1 <= len(grouped) <= 3
        split += len(grouped) > 1
        widths = [micro["input_ids"].shape[1] for micro in grouped]
        assert max(widths) == plain["input_ids"].shape[1] and sum(m["input_ids"].shape[0] for m in grouped) == \
            plain["input_ids"].shape[0]
        assert tasks.loss_weight(grouped) == tasks.loss_weight(plain)
        with torch.no_grad():
            torch.testing.assert_close(tasks.batch_loss(model, grouped), tasks.batch_loss(model, plain),
                                       rtol=1e-6, atol=1e-6)
            per_example = tasks.example_losses(model, grouped)
            torch.testing.assert_close(per_example.sort().values, tasks.example_losses(model, plain).sort().values,
                                       rtol=1e-5, atol=1e-6)
    assert split  # some batch was really cut


def test_bad_group_count_is_refused():
    stub = SimpleNamespace(name="stub", train_as_classification=True, template=None)
    with pytest.raises(ValueError, match="length_groups"):
        tasks.TrainBatches([1], stub, None, 1, for_generation_objective=True, length_groups=0)


@requires_data
@pytest.mark.parametrize("name, as_classification", [("CB", True), ("Copa", False)])
def test_an_unshuffled_pass_by_length_has_the_same_per_example_losses_with_less_padding(tiny_tokenizer, name,
                                                                                        as_classification):
    task = shared_task(name)
    samples = task.load_split("train")[:13]  # a last batch that is not full
    model = build_tiny_model("llama", vocab_size=len(tiny_tokenizer))
    stream = tasks.TrainBatches(samples, task, tiny_tokenizer, 4, as_classification=as_classification,
                                max_length=512)
    plain, by_length = list(stream.epoch(shuffle=False)), list(stream.epoch(shuffle=False, by_length=True))
    widths = [b["input_ids"].shape[1] for b in by_length]
    assert widths == sorted(widths, reverse=True) and sum(widths) <= sum(b["input_ids"].shape[1] for b in plain)
    with torch.no_grad():
        losses = [torch.cat([tasks.example_losses(model, b) for b in batches]) for batches in (plain, by_length)]
    assert len(losses[1]) == 13  # every example once
    torch.testing.assert_close(losses[1].sort().values, losses[0].sort().values, rtol=1e-5, atol=1e-6)
    assert stream.epochs_started == 0  # an unshuffled pass leaves the shuffled stream where it was
