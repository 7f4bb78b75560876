"""Tokenization, truncation, left-padded collation and the deterministic training batches."""
import pytest
import torch
from tokenizers.processors import TemplateProcessing

import tasks
from conftest import build_tiny_tokenizer
from tasks.encoding import EncodedExample, EncodedOption, left_truncate
from task_helpers import SHARED_TASKS, glue_fixture_dir, requires_data, shared_task


@pytest.fixture(scope="module")
def bos_tokenizer():
    tok = build_tiny_tokenizer()
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def all_tasks(tmp_path_factory):
    root = glue_fixture_dir(tmp_path_factory.mktemp("glue"))
    return [shared_task(n) for n in SHARED_TASKS] + [tasks.get_task("RTE", root), tasks.get_task("WIC", root)]


@requires_data
def test_every_task_encodes_and_collates(tiny_tokenizer, tmp_path_factory):
    for task in all_tasks(tmp_path_factory):
        samples = task.load_split("train")[:2]
        modes = [False] if task.is_generation else [True, False]
        for as_cls in modes:
            examples = [tasks.encode_train_example(s, task.template, tiny_tokenizer, as_cls, max_length=512)
                        for s in samples]
            batch = tasks.collate_options(examples, tiny_tokenizer)
            rows = sum(len(e.options) for e in examples)
            assert batch["input_ids"].shape[0] == rows and batch["input_ids"].shape[1] % 8 == 0
            assert batch["attention_mask"].dtype == torch.long and batch["option_len"].dtype == torch.long
            assert (batch["option_len"] > 0).all(), task.name
            # Left padding: every row's real tokens end at the last column.
            assert (batch["attention_mask"][:, -1] == 1).all()
            assert (batch["attention_mask"].diff(dim=1) >= 0).all()
            if as_cls:
                assert batch["num_options"].tolist() == [len(s.candidates) for s in samples]
                assert batch["labels"].tolist() == [s.candidates.index(s.correct) if isinstance(s.correct, str)
                                                    else s.candidates.index(s.correct[0]) for s in samples]
            else:
                assert "num_options" not in batch and "labels" not in batch


@requires_data
def test_option_tokens_are_the_verbalized_option(tiny_tokenizer):
    sst2 = shared_task("SST2")
    sample = sst2.load_split("train")[0]
    options = tasks.encode_candidates(sample, tiny_tokenizer, sst2.template)
    assert [tiny_tokenizer.decode(o.input_ids[-o.option_len:]) for o in options] == [" terrible", " great"]
    prompt = tiny_tokenizer(sst2.template.encode(sample))["input_ids"]
    assert options[0].input_ids[:len(prompt) - 1] == prompt[:-1]
    copa = shared_task("Copa")
    example = tasks.encode_train_example(copa.load_split("train")[0], copa.template, tiny_tokenizer, False)
    (option,) = example.options
    # The prompt's trailing space is stripped, so the option carries it (upstream's .strip(' ')).
    assert tiny_tokenizer.decode(option.input_ids[-option.option_len:]) == " the sun was rising."


@requires_data
def test_generation_prompt_only_and_budget(tiny_tokenizer):
    squad = shared_task("SQuAD")
    sample = squad.load_split("train")[0]
    (prompt,) = tasks.encode_candidates(sample, tiny_tokenizer, squad.template, max_length=2048)
    assert prompt.option_len == 0
    assert prompt.input_ids == tiny_tokenizer(squad.template.encode(sample))["input_ids"]
    (short,) = tasks.encode_candidates(sample, tiny_tokenizer, squad.template, max_length=200, max_new_tokens=50)
    assert short.input_ids == prompt.input_ids[-150:]  # no BOS: plain left truncation
    (gold,) = tasks.encode_candidates(sample, tiny_tokenizer, squad.template, max_length=200, with_gold=True)
    assert len(gold.input_ids) == 150
    assert tiny_tokenizer.decode(gold.input_ids[-gold.option_len:]) == " Saint Bernadette Soubirous\n"


@requires_data
def test_bos_kept_only_when_tokenizer_adds_it(tiny_tokenizer, bos_tokenizer):
    assert not tasks.prepends_special_token(tiny_tokenizer)
    assert tasks.prepends_special_token(bos_tokenizer)
    squad = shared_task("SQuAD")
    sample = squad.load_split("train")[0]
    full = bos_tokenizer(squad.template.encode(sample))["input_ids"]
    (prompt,) = tasks.encode_candidates(sample, bos_tokenizer, squad.template, max_length=120, max_new_tokens=20)
    assert prompt.input_ids == [1] + full[-99:]
    assert left_truncate([5, 6, 7, 8], 3, keep_first=False) == [6, 7, 8]
    assert left_truncate([5, 6, 7, 8], 3, keep_first=True) == [5, 7, 8]


def test_collate_pads_left_and_rejects_mixed_batches(tiny_tokenizer):
    a = EncodedExample([EncodedOption([5, 6, 7], 1), EncodedOption([5, 6, 8, 9], 2)], label=1)
    b = EncodedExample([EncodedOption([4], 1)], label=0)
    batch = tasks.collate_options([a, b], tiny_tokenizer, pad_to_multiple_of=None)
    assert batch["input_ids"].tolist() == [[0, 5, 6, 7], [5, 6, 8, 9], [0, 0, 0, 4]]
    assert batch["attention_mask"].tolist() == [[0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]]
    assert batch["num_options"].tolist() == [2, 1] and batch["labels"].tolist() == [1, 0]
    assert tasks.collate_options([a], tiny_tokenizer)["input_ids"].shape == (2, 8)
    with pytest.raises(ValueError, match="mixes"):
        tasks.collate_options([a, EncodedExample([EncodedOption([4], 1)])], tiny_tokenizer)
    with pytest.raises(ValueError, match="exactly one row"):
        tasks.collate_options([EncodedExample(a.options)], tiny_tokenizer)


@requires_data
def test_train_batches_deterministic_and_cover_each_epoch(tiny_tokenizer):
    task = shared_task("CB")
    samples = task.load_split("train")[:10]
    first = tasks.TrainBatches(samples, task, tiny_tokenizer, batch_size=4, seed=3)
    second = tasks.TrainBatches(samples, task, tiny_tokenizer, batch_size=4, seed=3)
    assert len(first) == 3
    a, b = list(first.epoch()), list(second.epoch())
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    assert sum(int(x["labels"].numel()) for x in a) == 10 and a[-1]["labels"].numel() == 2
    assert "num_options" in a[0]  # CB trains as classification by default
    stream = first.forever()
    epochs = [next(stream) for _ in range(6)]
    assert len(epochs) == 6 and first.epochs_started == 3
    in_order = list(tasks.TrainBatches(samples, task, tiny_tokenizer, 4, seed=3).epoch(shuffle=False))
    assert in_order[0]["labels"].tolist() == [samples[i].candidates.index(samples[i].correct) for i in range(4)]
    other_seed = list(tasks.TrainBatches(samples, task, tiny_tokenizer, 4, seed=4).epoch())
    assert not all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, other_seed))


@requires_data
def test_train_batches_modes(tiny_tokenizer):
    copa = shared_task("Copa")
    lm = next(tasks.TrainBatches(copa.load_split("train")[:4], copa, tiny_tokenizer, 4, seed=0).forever())
    assert "num_options" not in lm and lm["input_ids"].shape[0] == 4  # Copa: correct option only
    cls = next(tasks.make_train_batches(copa.load_split("train")[:4], copa, tiny_tokenizer, 4, seed=0,
                                        as_classification=True))
    assert cls["input_ids"].shape[0] == 8 and cls["num_options"].tolist() == [2, 2, 2, 2]
    squad = shared_task("SQuAD")
    raw = next(tasks.TrainBatches(squad.load_split("train")[:3], squad, tiny_tokenizer, 2, seed=0,
                                  for_generation_objective=True).forever())
    assert len(raw) == 2 and all(isinstance(s, tasks.Sample) for s in raw)
    with pytest.raises(ValueError, match="generation"):
        tasks.TrainBatches(squad.load_split("train")[:3], squad, tiny_tokenizer, 2, as_classification=True)
