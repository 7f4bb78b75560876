"""Every task loads from its local layout into Samples with the right candidates and answers."""
import pytest

import tasks
from task_helpers import SHARED_TASKS, glue_fixture_dir, requires_data, shared_task

pytestmark = requires_data

# (train pool, eval pool) sizes of the copies in shared/data; ReCoRD and DROP eval pools are carved from train.
EXPECTED_SIZES = {"SST2": (67349, 872), "Copa": (400, 100), "BoolQ": (1000, 3270), "MultiRC": (27243, 4848),
                  "CB": (250, 56), "WSC": (554, 104), "ReCoRD": (52, 12), "SQuAD": (3807, 1190),
                  "DROP": (2736, 683)}


@pytest.mark.parametrize("name", SHARED_TASKS)
def test_pools_and_sample_shapes(name):
    task = shared_task(name)
    train, valid = task.load_split("train"), task.load_split("valid")
    assert (len(train), len(valid)) == EXPECTED_SIZES[name]
    for s in train[:200] + valid[:200]:
        if task.is_generation:
            assert s.candidates is None and isinstance(s.correct, list) and s.correct
        elif isinstance(s.correct, list):
            assert any(c in s.candidates for c in s.correct)
        else:
            assert s.correct in s.candidates


def test_task_attributes():
    assert tasks.TASK_NAMES == ("SST2", "Copa", "BoolQ", "MultiRC", "CB", "WIC", "WSC", "ReCoRD", "RTE",
                                "SQuAD", "DROP")
    lm_style = {"Copa", "ReCoRD", "DROP", "SQuAD"}
    for name in SHARED_TASKS:
        task = shared_task(name)
        assert task.train_as_classification == (name not in lm_style)
        assert task.is_generation == (name in ("SQuAD", "DROP"))
        assert task.metric_name == ("f1" if task.is_generation else "accuracy")


def test_sst2_and_copa_records():
    first = shared_task("SST2").load_split("train")[0]
    assert first.id == 0 and first.candidates == ["terrible", "great"] and first.correct == "terrible"
    assert first.data["sentence"].startswith("hide new secretions from the parental units")
    copa = shared_task("Copa").load_split("train")
    assert copa[0].candidates == ["The sun was rising.", "The grass was cut."]
    assert copa[0].correct == "The sun was rising." and copa[2].correct == copa[2].data["choice2"]
    assert sum(s.correct == s.data["choice2"] for s in copa) == 205


def test_cb_label_names_map_to_words():
    train = shared_task("CB").load_split("train")
    assert train[0].candidates == ["Yes", "No", "Maybe"]
    counts = {w: sum(s.correct == w for s in train) for w in ("Yes", "No", "Maybe")}
    assert counts == {"Yes": 115, "No": 119, "Maybe": 16}  # entailment / contradiction / neutral


def test_boolq_both_layouts():
    task = shared_task("BoolQ")
    train, valid = task.load_split("train"), task.load_split("valid")
    assert train[0].id == 0 and train[999].id == 999  # no idx in the HF layout: line index
    assert train[0].candidates == ["Yes", "No"] and train[0].correct == "Yes"
    assert train[0].data["question"] == "do iran and afghanistan speak the same language"
    assert sum(s.correct == "Yes" for s in train) == 624
    # SuperGLUE passages carry "Title -- "; it is split off to match the google/boolq text.
    assert valid[0].data["title"] == "Ethanol fuel" and valid[0].data["passage"].startswith("All biomass")
    assert sum(s.correct == "Yes" for s in valid) == 2033


def test_wsc_target_spans_flattened():
    s = shared_task("WSC").load_split("train")[0]
    assert (s.data["span1_text"], s.data["span2_text"], s.data["span2_index"]) == ("Mark", "He", 13)
    assert s.correct == "No" and s.candidates == ["No", "Yes"]
    assert sum(x.correct == "Yes" for x in shared_task("WSC").load_split("train")) == 259


def test_multirc_one_sample_per_answer_option():
    train = shared_task("MultiRC").load_split("train")
    s = train[0]
    assert s.data["question"] == "What did the high-level effort to persuade Pakistan include?"
    assert s.data["answer"] == "Children, Gerd, or Dorian Popa" and s.correct == "No"
    assert s.data["idx"] == {"paragraph": 0, "question": 0, "answer": 0}
    assert sum(x.correct == "Yes" for x in train) == 12025


def test_record_entities_and_answers():
    task = shared_task("ReCoRD")
    everything = task.load_split("train") + task.load_split("valid")
    s = next(x for x in everything if x.id == 4756)
    assert s.candidates[:5] == ["Hamish Mackay", "Diego Costa", "Kurt Zouma", "Chelsea", "Olimpija Ljubljana"]
    assert len(s.candidates) == len(set(s.candidates))
    assert s.correct == ["Olimpija Ljubljana"]
    assert "@highlight\n" in s.data["passage"] and "@placeholder" in s.data["query"]


def test_squad_one_sample_per_question():
    task = shared_task("SQuAD")
    s = task.load_split("train")[0]
    assert s.id == 0 and s.correct == ["Saint Bernadette Soubirous"]
    assert s.data["title"] == "University_of_Notre_Dame" and s.data["question"].startswith("To whom did")
    assert all(len(x.correct) == 1 for x in task.load_split("valid"))  # XQuAD: one reference each


def test_drop_answers_number_span_date():
    task = shared_task("DROP")
    pool = task.load_split("train") + task.load_split("valid")
    assert len(pool) == 3419  # 3,420 questions, one with an empty answer is skipped (as HF's builder does)
    by_query = {s.data["query_id"]: s for s in pool}
    assert by_query["f16c0ee7-f131-4a8b-a6ac-4d275ea68066"].correct == ["3"]
    assert "506cd005-075c-4b27-a281-58389adb0ac3" not in by_query  # the empty answer
    dates = [s for s in pool if s.correct == ["7 July 1345"]]
    assert dates, "a date answer is rendered 'day month year'"
    assert any(len(s.correct) > 1 for s in pool)  # multi-span answers keep every span


@pytest.mark.parametrize("name", ["ReCoRD", "DROP"])
def test_carved_eval_pool_disjoint_and_deterministic(name):
    task = shared_task(name)
    train_ids = [(s.id, s.data.get("query_id"), s.data.get("query")) for s in task.load_split("train")]
    eval_ids = [(s.id, s.data.get("query_id"), s.data.get("query")) for s in task.load_split("valid")]
    assert not set(train_ids) & set(eval_ids)
    total = len(train_ids) + len(eval_ids)
    assert len(eval_ids) == total // 5
    assert task.eval_note == f"{name}: eval carved from train: {total // 5} of {total} examples, seed 0"
    fresh = tasks.get_task(name, task.data_dir)
    assert [(s.id, s.data.get("query_id"), s.data.get("query")) for s in fresh.load_split("valid")] == eval_ids


def test_uncarved_tasks_have_no_eval_note():
    assert shared_task("Copa").eval_note is None and shared_task("SQuAD").eval_note is None


def test_rte_and_wic_layouts(tmp_path):
    root = glue_fixture_dir(tmp_path)
    rte = tasks.get_task("RTE", root)
    train = rte.load_split("train")
    assert [s.correct for s in train] == ["Yes", "No", "Yes"]  # entailment -> Yes, not_entailment -> No
    assert train[0].candidates == ["Yes", "No"] and len(rte.load_split("valid")) == 2
    wic = tasks.get_task("wic", root)  # case-insensitive name
    assert wic.name == "WIC"
    assert [s.correct for s in wic.load_split("train")] == ["No", "Yes"]
    assert wic.load_split("valid")[0].data["word"] == "run"
