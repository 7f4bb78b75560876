"""Deterministic training batches without the HF Trainer: encode once, reshuffle every epoch."""
from __future__ import annotations

import math
from typing import Iterator

import torch

from .base import Sample, Task
from .encoding import EncodedExample, check_option_scoring, collate_examples, encode_train_example
from .objective import LengthGroups


def split_by_length(lengths: list[int], groups: int) -> list[list[int]]:
    """Positions of `lengths` in at most `groups` groups of similar length, shortest first: sorted, then cut
    where the groups' padded size (each group x its longest) is smallest. Exact by dynamic programming."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    n, k = len(order), max(1, min(groups, len(lengths)))
    sorted_lengths = [lengths[i] for i in order]
    inf = float("inf")
    # best[j][i]: fewest padded tokens for the i shortest examples in j groups; cut[j][i]: where its last group starts
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0
    for j in range(1, k + 1):
        for i in range(1, n + 1):
            for start in range(j - 1, i):
                cost = best[j - 1][start] + (i - start) * sorted_lengths[i - 1]
                if cost < best[j][i]:
                    best[j][i], cut[j][i] = cost, start
    j = min(range(1, k + 1), key=lambda g: (best[g][n], g))  # no more groups than the padding needs
    bounds, end = [], n
    while j:
        start = cut[j][end]
        bounds.append((start, end))
        end, j = start, j - 1
    return [order[a:b] for a, b in reversed(bounds)]


class TrainBatches:
    """Batches of `samples` for `task`, shuffled by a torch.Generator seeded with `seed`.

    Each item is a collated dict (see collate_options); with `for_generation_objective` it is instead the
    list of Samples itself, for the non-differentiable objective that generates from the prompts.
    `as_classification=None` uses the task's default (upstream script setting). A caller-owned
    `generator` replaces the one seeded from `seed`. `option_scoring` picks the batch layout of classification
    examples (tasks.encoding.OPTION_SCORINGS); the loss is the same in every layout. `length_groups` > 1:
    each batch is up to that many micro-batches of similar length (`LengthGroups`), so that short examples are not
    padded to the longest; the same examples and loss, up to rounding, in less compute.
    """

    def __init__(self, samples: list[Sample], task: Task, tokenizer, batch_size: int, seed: int = 0,
                 as_classification: bool | None = None, max_length: int = 2048, max_new_tokens: int = 50,
                 for_generation_objective: bool = False, drop_last: bool = False,
                 pad_to_multiple_of: int | None = 8, generator: torch.Generator | None = None,
                 option_scoring: str = "auto", only_train_option: bool = True, length_groups: int = 1):
        check_option_scoring(option_scoring)
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if length_groups < 1:
            raise ValueError(f"length_groups must be >= 1, got {length_groups}")
        if not samples:
            raise ValueError(f"{task.name}: no samples to batch")
        self.samples = list(samples)
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.drop_last = drop_last and len(self.samples) >= batch_size
        self.pad_to_multiple_of = pad_to_multiple_of
        self.option_scoring = option_scoring
        self.length_groups = length_groups
        self.as_classification = task.train_as_classification if as_classification is None else as_classification
        self.for_generation_objective = for_generation_objective
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        self.epochs_started = 0
        # Where the shuffled stream stands, for state_dict: the generator before this epoch's permutation
        # and the batches handed out since; `_skip` makes the next epoch resume at a saved position.
        self._epoch_generator_state: torch.Tensor | None = None
        self._position = 0
        self._skip = 0
        self._skip_pending = False  # a restored position not reached yet
        self.encoded: list[EncodedExample] | None = None
        if not for_generation_objective:
            self.encoded = [encode_train_example(s, task.template, tokenizer, self.as_classification, max_length,
                                                 max_new_tokens, only_train_option) for s in self.samples]

    def __len__(self) -> int:
        """Batches per epoch."""
        n = len(self.samples) / self.batch_size
        return int(n) if self.drop_last else math.ceil(n)

    def _example_length(self, index: int) -> int:
        """Tokens of the example's longest row (0 unencoded: the generation objective batches raw samples)."""
        if self.encoded is None:
            return 0
        return max(len(o.input_ids) for o in self.encoded[index].options)

    def _batch(self, indices: list[int]):
        if self.for_generation_objective:
            return [self.samples[i] for i in indices]
        assert self.encoded is not None
        examples = [self.encoded[i] for i in indices]
        if self.length_groups == 1:
            return collate_examples(examples, self.tokenizer, self.option_scoring, self.pad_to_multiple_of)
        lengths = [self._example_length(i) for i in indices]
        return LengthGroups(collate_examples([examples[i] for i in group], self.tokenizer, self.option_scoring,
                                             self.pad_to_multiple_of)
                            for group in split_by_length(lengths, self.length_groups))

    def epoch(self, shuffle: bool = True, by_length: bool = False) -> Iterator:
        """One pass over the samples; shuffled with the next permutation of the seeded generator. Unshuffled,
        `by_length` batches the examples longest first, so that each batch pads little (and a short last batch
        holds the shortest): for a loss that does not depend on which examples share a batch (the per-example
        dev loss), the same value in less time."""
        n = len(self.samples)
        if not shuffle:
            order = sorted(range(n), key=self._example_length, reverse=True) if by_length else list(range(n))
            for start in range(0, len(self) * self.batch_size, self.batch_size):
                yield self._batch(order[start:start + self.batch_size])
            return
        self.epochs_started += 1
        self._epoch_generator_state = self.generator.get_state()
        order = torch.randperm(n, generator=self.generator).tolist()
        self._position, self._skip, self._skip_pending = self._skip, 0, False
        for index in range(self._position, len(self)):
            self._position = index + 1  # counted when handed out: a checkpoint after this batch resumes after it
            yield self._batch(order[index * self.batch_size:(index + 1) * self.batch_size])

    def state_dict(self) -> dict:
        """The shuffled stream's position: resuming from it yields the same batches as going on."""
        if self._epoch_generator_state is None:  # no shuffled epoch started yet
            return {"generator": self.generator.get_state(), "epochs_started": self.epochs_started, "position": 0,
                    "in_epoch": False}
        return {"generator": self._epoch_generator_state.clone(), "epochs_started": self.epochs_started,
                "position": self._position, "in_epoch": True}

    def load_state_dict(self, state: dict) -> None:
        """Restore a position; takes effect at the next shuffled epoch (call before iterating)."""
        self.generator.set_state(state["generator"])
        in_epoch = state["in_epoch"]
        self.epochs_started = state["epochs_started"] - (1 if in_epoch else 0)
        self._skip = state["position"] if in_epoch else 0
        self._skip_pending = in_epoch
        self._epoch_generator_state = None

    def restart(self, group: int = 1) -> Iterator:
        """A new shuffled epoch from here, as a fresh loader. A position restored by load_state_dict and not
        reached yet is passed over: its permutation is drawn, so the generator stands where it would.
        `group` > 1: the iterator of `groups(group)` instead of batches."""
        if self._skip_pending:
            torch.randperm(len(self.samples), generator=self.generator)
            self.epochs_started += 1
            self._skip, self._skip_pending = 0, False
        return self.forever() if group == 1 else self.groups(group)

    def forever(self) -> Iterator:
        """Shuffled epochs, one after the other, without end."""
        while True:
            yield from self.epoch(shuffle=True)

    def groups(self, size: int) -> Iterator[list]:
        """Lists of `size` consecutive batches of the shuffled epochs, without end, cut within each epoch (its
        last list holds the remainder): the same examples, in the same order, as batches of size x batch_size.
        A list is handed out right after its last batch, so `state_dict` then stands between lists."""
        if size < 1:
            raise ValueError("group size must be >= 1")
        while True:
            group = []
            for batch in self.epoch(shuffle=True):
                group.append(batch)
                if len(group) == size:
                    yield group
                    group = []
            if group:
                yield group

    def groups_per_epoch(self, size: int) -> int:
        return math.ceil(len(self) / size)


def make_train_batches(samples: list[Sample], task: Task, tokenizer, batch_size: int, seed: int = 0,
                       **kwargs) -> Iterator:
    """Infinite shuffled batch iterator (shortcut for TrainBatches(...).forever())."""
    return TrainBatches(samples, task, tokenizer, batch_size, seed=seed, **kwargs).forever()
