"""Your own task without code: a spec file + a JSONL/CSV file, validated with errors that name the problem,
and usable wherever a built-in task name is (sampling, fine-tuning, the launcher)."""
import json

import pytest

import tasks
from custom_task_helpers import ROWS, SENTIMENT_SPEC, write_task
from tasks.custom import TaskSpecError

def test_label_words_task_from_jsonl(tmp_path):
    task = tasks.get_task(str(write_task(tmp_path, SENTIMENT_SPEC)))
    assert (task.name, task.metric_name, task.is_generation, task.train_as_classification) == \
        ("Reviews", "accuracy", False, True)
    train = task.load_split("train")
    assert task.eval_note and len(train) + len(task.load_split("valid")) == 10  # eval carved from train
    sample = train[0]
    assert sample.candidates == ["terrible", "great"]
    assert sample.correct == ("great" if sample.data["label"] == "pos" else "terrible")
    assert task.template.encode(sample) == sample.data["text"] + " It was"
    assert task.template.verbalize(sample, "great") == sample.data["text"] + " It was great"


def test_candidates_per_row_from_csv_with_an_eval_file(tmp_path):
    rows = [{"premise": f"The man {i} fell.", "options": json.dumps(["he slipped.", "he sang."]),
             "answer": "he slipped."} for i in range(4)]
    spec = {"train_file": "copa.csv", "eval_file": "copa.csv", "template": "{premise} Why?\n",
            "candidates_field": "options", "answer_field": "answer"}
    task = tasks.get_task(str(write_task(tmp_path, spec, rows, "copa.csv", "copa.yaml")))
    assert task.name == "copa" and not task.carve_eval and len(task.load_split("valid")) == 4
    sample = task.load_split("train")[0]
    assert sample.candidates == ["he slipped.", "he sang."] and sample.correct == "he slipped."
    # the prompt ends with a newline: the option follows without a space
    assert task.template.verbalize(sample, "he sang.") == "The man 0 fell. Why?\nhe sang."


def test_generation_task_scores_f1(tmp_path):
    rows = [{"question": "What is six times seven?", "answer": ["forty two", "42"]}] * 5
    spec = {"train_file": "qa.jsonl", "template": "Question: {question}\nAnswer:", "target_field": "answer"}
    task = tasks.get_task(str(write_task(tmp_path, spec, rows, "qa.jsonl", "qa.json")))
    sample = task.load_split("train")[0]
    assert task.is_generation and task.metric_name == "f1" and not task.train_as_classification
    assert sample.candidates is None and sample.correct == ["forty two", "42"]
    assert task.template.verbalize(sample) == "Question: What is six times seven?\nAnswer: forty two\n"


@pytest.mark.parametrize("case, change, rows, fragments", [
    ("missing field in a row", {}, [{"text": "a"}], ["reviews.jsonl:1", "missing field", "'label'"]),
    ("unknown placeholder", {"template": "{sentence} It was"}, None,
     ["reviews.jsonl:1", "unknown placeholder", "{sentence}", "columns: label, text"]),
    ("empty file", {}, [], ["reviews.jsonl", "empty file"]),
    ("missing template key", {"template": None}, None, ["missing key 'template'"]),
    ("label outside label_words", {"label_words": {"pos": "great"}}, None, ["label 'neg'", "label_words"]),
    ("two kinds of answer", {"target_field": "text"}, None, ["exactly one of"]),
    ("metric that does not fit", {"metric": "f1"}, None, ["metric 'f1'", "accuracy"]),
    ("unknown key", {"labels": "x"}, None, ["unknown key(s) ['labels']"]),
    ("bad template", {"template": "{text It was"}, None, ["not a valid format string"]),
])
def test_bad_spec_or_data_is_one_clear_error(tmp_path, case, change, rows, fragments):
    spec = {k: v for k, v in {**SENTIMENT_SPEC, **change}.items() if v is not None}
    path = write_task(tmp_path, spec, ROWS if rows is None else rows)
    with pytest.raises(TaskSpecError) as info:
        tasks.get_task(str(path))
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="task spec not found"):
        tasks.get_task(str(tmp_path / "nope.yaml"))
    path = write_task(tmp_path, {**SENTIMENT_SPEC, "train_file": "other.jsonl"})
    with pytest.raises(FileNotFoundError, match="train_file not found: .*other.jsonl"):
        tasks.get_task(str(path))
