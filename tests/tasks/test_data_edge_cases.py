"""Audit item 9, data edge cases: which are matched and which are declared (docs/differences.md)."""
import json

import tasks
from tasks.templates import ReCoRDTemplate
from tasks.local import record


def _record_line(answers, entities=("Abe", "Zed")):
    text = "Abe met Zed. @highlight\nThey talked"
    spans = [{"start": text.index(e), "end": text.index(e) + len(e) - 1} for e in entities]
    return {"idx": 0, "passage": {"text": text, "entities": spans},
            "qas": [{"idx": 7, "query": "@placeholder spoke first.", "answers": [{"text": a} for a in answers]}]}


def test_record_answers_are_hfs_sorted_set_so_the_lm_target_matches():
    # matched: HF's builder stores sorted(set(answers)); upstream's LM target is answers[0]
    (rec,) = record(_record_line(["Zed", "Abe", "Zed"]), "x:1")
    assert rec["answers"] == ["Abe", "Zed"]
    sample = tasks.records.record_sample(rec, 0)
    assert ReCoRDTemplate().verbalize(sample, sample.correct).endswith("- Abe spoke first.")


def test_record_without_answer_is_dropped_and_missing_gold_is_appended():
    # declared: an answerless query is skipped (shifts the seeded permutation); a gold answer that is not among
    # the entities is appended to the candidates (upstream would crash)
    (no_answer,) = record(_record_line([]), "x:1")
    assert tasks.records.record_sample(no_answer, 0) is None
    (misaligned,) = record(_record_line(["Bob"]), "x:1")
    sample = tasks.records.record_sample(misaligned, 0)
    assert sample.candidates == ["Abe", "Zed", "Bob"] and sample.correct == ["Bob"]


def test_local_record_and_drop_test_sets_are_carved_from_train_and_say_so(tmp_path):
    # declared: without a validation file the eval pool is 1/5 of train (seed 0), noted in metrics.json
    folder = tmp_path / "ReCoRD"
    folder.mkdir()
    lines = [dict(_record_line(["Abe"]), idx=i) for i in range(10)]
    (folder / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    task = tasks.get_task("ReCoRD", tmp_path)
    assert len(task.load_split("valid")) == 2 and "eval carved from train: 2 of 10" in task.eval_note
