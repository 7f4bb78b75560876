"""Wrong names, missing folders/files and malformed records fail with messages that name the problem."""
import json

import pytest

import tasks
from task_helpers import write_jsonl

COPA_ROW = {"premise": "P.", "choice1": "A.", "choice2": "B.", "question": "cause", "label": 0, "idx": 0}


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError) as e:
        tasks.get_task("SST-3", "/nonexistent")
    assert "SST-3" in str(e.value) and all(n in str(e.value) for n in tasks.TASK_NAMES)


def test_case_insensitive_name(tmp_path):
    write_jsonl(tmp_path / "Copa" / "train.jsonl", [COPA_ROW])
    write_jsonl(tmp_path / "Copa" / "val.jsonl", [COPA_ROW])
    assert tasks.get_task("COPA", tmp_path).name == "Copa"


def test_missing_folder_names_path_and_files(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        tasks.get_task("SST2", tmp_path)
    assert str(tmp_path / "SST2") in str(e.value)
    assert "train.tsv" in str(e.value) and "dev.tsv" in str(e.value)


def test_missing_file_names_expected_file(tmp_path):
    write_jsonl(tmp_path / "Copa" / "train.jsonl", [COPA_ROW])
    with pytest.raises(FileNotFoundError) as e:
        tasks.get_task("Copa", tmp_path)
    assert "val.jsonl" in str(e.value) and str(tmp_path / "Copa") in str(e.value)


def test_missing_boolq_train_lists_both_layouts(tmp_path):
    write_jsonl(tmp_path / "BoolQ" / "val.jsonl", [])
    with pytest.raises(FileNotFoundError, match="train_first1000_hf_google_boolq.jsonl"):
        tasks.get_task("BoolQ", tmp_path)


def test_malformed_jsonl_record_names_file_line_field(tmp_path):
    bad = dict(COPA_ROW)
    del bad["premise"]
    path = write_jsonl(tmp_path / "Copa" / "train.jsonl", [COPA_ROW, bad])
    write_jsonl(tmp_path / "Copa" / "val.jsonl", [COPA_ROW])
    task = tasks.get_task("Copa", tmp_path)
    with pytest.raises(ValueError) as e:
        task.load_split("train")
    assert f"{path}:2" in str(e.value) and "'premise'" in str(e.value)


def test_invalid_json_and_bad_label(tmp_path):
    (tmp_path / "CB").mkdir()
    (tmp_path / "CB" / "train.jsonl").write_text('{"premise": "p", "hypothesis": "h", "label": "entailment"}\n{oops\n')
    write_jsonl(tmp_path / "CB" / "val.jsonl", [{"premise": "p", "hypothesis": "h", "label": "unsure"}])
    task = tasks.get_task("CB", tmp_path)
    with pytest.raises(ValueError, match=r"train\.jsonl:2: invalid JSON"):
        task.load_split("train")
    with pytest.raises(ValueError, match=r"val\.jsonl:1: invalid label 'unsure'"):
        task.load_split("valid")


def test_sst2_tsv_missing_label(tmp_path):
    (tmp_path / "SST2").mkdir()
    (tmp_path / "SST2" / "train.tsv").write_text("sentence\tlabel\ngood film \t1\nno label here\n")
    (tmp_path / "SST2" / "dev.tsv").write_text("sentence\tlabel\n")
    with pytest.raises(ValueError, match=r"train\.tsv:3: missing field 'label'"):
        tasks.get_task("SST2", tmp_path).load_split("train")


def test_squad_missing_question_names_json_path(tmp_path):
    data = {"data": [{"title": "T", "paragraphs": [{"context": "C", "qas": [{"id": "x", "answers": []}]}]}]}
    (tmp_path / "SQuAD").mkdir()
    (tmp_path / "SQuAD" / "train-v1.1.json").write_text(json.dumps(data))
    (tmp_path / "SQuAD" / "dev-v1.1.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[0\]: missing field 'question'"):
        tasks.get_task("SQuAD", tmp_path).load_split("train")


def test_multirc_nested_missing_field(tmp_path):
    row = {"idx": 0, "passage": {"text": "T", "questions": [{"question": "Q", "idx": 0,
                                                             "answers": [{"text": "A", "idx": 0}]}]}}
    write_jsonl(tmp_path / "MultiRC" / "train.jsonl", [row])
    write_jsonl(tmp_path / "MultiRC" / "val.jsonl", [row])
    with pytest.raises(ValueError, match=r"train\.jsonl:1 passage\.questions\[0\]\.answers\[0\]: missing field 'label'"):
        tasks.get_task("MultiRC", tmp_path).load_split("train")


def test_bad_split_name(tmp_path):
    write_jsonl(tmp_path / "Copa" / "train.jsonl", [COPA_ROW])
    write_jsonl(tmp_path / "Copa" / "val.jsonl", [COPA_ROW])
    with pytest.raises(ValueError, match="split"):
        tasks.get_task("Copa", tmp_path).load_split("test")


def test_hub_source_is_lazy():
    # data_dir=None selects the hub; nothing is fetched until a split is loaded (no network in tests).
    task = tasks.get_task("SQuAD")
    assert task.data_dir is None and task.is_generation
