"""The hub path with `datasets.load_dataset` replaced by canned rows in the HF field layouts (no network)."""
import datasets
import pytest

import tasks
from tasks.hub import HUB_IDS

ROWS = {
    "SST2": {"sentence": "a fine film ", "label": 1, "idx": 7},
    "Copa": {"premise": "P.", "choice1": "A.", "choice2": "B.", "question": "effect", "label": 1, "idx": 3},
    "BoolQ": {"question": "is it", "answer": False, "passage": "Text."},
    "MultiRC": {"paragraph": "Para", "question": "Q", "answer": "A", "label": 1,
                "idx": {"paragraph": 0, "question": 0, "answer": 2}},
    "CB": {"premise": "P", "hypothesis": "H", "label": 2, "idx": 0},
    "WIC": {"word": "w", "sentence1": "s1", "sentence2": "s2", "start1": 0, "end1": 1, "start2": 0, "end2": 1,
            "label": 0, "idx": 5},
    "WSC": {"text": "T", "span1_index": 0, "span2_index": 3, "span1_text": "Mark", "span2_text": "He", "label": 1,
            "idx": 1},
    "ReCoRD": {"passage": "X\n@highlight\nY", "query": "@placeholder won", "entities": ["Chelsea", "Costa"],
               "entity_spans": {"text": ["Chelsea", "Costa"], "start": [0, 9], "end": [6, 13]},
               "answers": ["Costa"], "idx": {"passage": 0, "query": 4}},
    "RTE": {"premise": "P", "hypothesis": "H", "label": 1, "idx": 9},
    "SQuAD": {"id": "q1", "title": "T", "context": "C", "question": "Q?",
              "answers": {"text": ["Bob", "Bob"], "answer_start": [0, 0]}},
    "DROP": {"section_id": "nfl_1", "query_id": "q", "passage": "P", "question": "How many?",
             "answers_spans": {"spans": ["3"], "types": ["number"]}},
}

EXPECTED = {"SST2": "great", "Copa": "B.", "BoolQ": "No", "MultiRC": "Yes", "CB": "Maybe", "WIC": "No",
            "WSC": "Yes", "ReCoRD": ["Costa"], "RTE": "No", "SQuAD": ["Bob", "Bob"], "DROP": ["3"]}


@pytest.fixture
def fake_hub(monkeypatch):
    calls = []

    def load_dataset(*args, split=None, **kwargs):
        calls.append((args, split))
        name = next(n for n, (repo, config) in HUB_IDS.items() if (repo,) + ((config,) if config else ()) == args)
        return [dict(ROWS[name])]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


@pytest.mark.parametrize("name", tasks.TASK_NAMES)
def test_hub_rows_become_samples(name, fake_hub, tiny_tokenizer):
    task = tasks.get_task(name)
    (sample,) = task.load_split("valid")
    assert fake_hub[-1][1] == "validation" and task.eval_note is None
    assert sample.correct == EXPECTED[name]
    task.load_split("train")
    assert fake_hub[-1][1] == "train"
    example = tasks.encode_train_example(sample, task.template, tiny_tokenizer, task.train_as_classification)
    assert tasks.collate_options([example], tiny_tokenizer)["option_len"].min() > 0


def test_hub_ids_are_script_free_parquet_repos():
    assert HUB_IDS["SST2"] == ("nyu-mll/glue", "sst2") and HUB_IDS["WSC"] == ("aps/super_glue", "wsc.fixed")
    assert {repo for repo, _ in HUB_IDS.values()} == {"nyu-mll/glue", "aps/super_glue", "google/boolq",
                                                      "rajpurkar/squad", "ucinlp/drop"}


def test_an_unreachable_hub_says_to_pass_a_data_dir(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError, match=r"SST2: cannot load nyu-mll/glue .*ConnectionError.*--data_dir"):
        tasks.get_task("SST2").load_split("train")
