"""Prompt strings exactly as MeZO's `templates.py` (they are data: any drift changes the experiment)."""
import pytest

from tasks import get_task
from tasks.base import Sample
from tasks.registry import SPECS


def template(name):
    return SPECS[name].template()


def s(**data):
    return Sample(id=0, data=data, candidates=None, correct="")


def test_sst2():
    t, x = template("SST2"), s(sentence="a gripping film ")
    assert t.encode(x) == "a gripping film It was"
    assert t.verbalize(x, "great") == "a gripping film It was great"
    assert t.verbalize(x, 0) == "a gripping film It was terrible"


def test_copa_cause_effect_and_lowercasing():
    t = template("Copa")
    cause = s(premise="My body cast a shadow over the grass.", question="cause")
    assert t.encode(cause) == "My body cast a shadow over the grass because "
    assert t.verbalize(cause, "The sun was rising.") == "My body cast a shadow over the grass because the sun was rising."
    effect = s(premise="The man broke his toe. ", question="effect")
    assert t.encode(effect) == "The man broke his toe so "
    assert t.verbalize(effect, "I dropped a hammer.") == "The man broke his toe so I dropped a hammer."
    assert t.verbalize(effect, "He Dropped a hammer") == "The man broke his toe so he Dropped a hammer"
    with pytest.raises(ValueError):
        t.encode(s(premise="x.", question="why"))
    # calibration (sfc / icl_sfc): the connective alone, then the choice
    assert (t.encode_sfc(cause), t.encode_sfc(effect)) == ("because", "so")
    assert t.verbalize_sfc(cause, "The sun was rising.") == "because the sun was rising."
    assert t.verbalize_sfc(effect, "I dropped a hammer.") == "so I dropped a hammer."


def test_boolq_v3():
    t = template("BoolQ")
    x = s(passage="Persian is spoken in Iran.", question="do iran and afghanistan speak the same language")
    assert t.encode(x) == "Persian is spoken in Iran. Do iran and afghanistan speak the same language?\n"
    assert t.verbalize(x, "Yes") == "Persian is spoken in Iran. Do iran and afghanistan speak the same language?\nYes"
    assert t.encode(s(passage="P", question="is it?")) == "P Is it?\n"


def test_multirc():
    x = s(paragraph="Para.", question="Who?", answer="Bob")
    assert template("MultiRC").verbalize(x, "Yes") == \
        'Para.\nQuestion: Who?\nI found this answer "Bob". Is that correct? Yes or No?\nYes'


def test_cb():
    t, x = template("CB"), s(premise="It was peeled down.", hypothesis="the language was peeled down")
    assert t.encode(x) == 'Suppose It was peeled down. Can we infer that "the language was peeled down"? Yes, No, or Maybe?\n'
    assert t.verbalize(x, "Maybe") == t.encode(x) + "Maybe"
    assert [t.verbalizer[i] for i in range(3)] == ["Yes", "No", "Maybe"]


def test_wic():
    x = s(word="bank", sentence1="S1.", sentence2="S2.")
    assert template("WIC").verbalize(x, "No") == \
        'Does the word "bank" have the same meaning in these two sentences? Yes, No?\nS1.\nS2.\nNo'


def test_wsc_lowercases_pronoun():
    x = s(text="Mark lied. He should know.", span1_text="Mark", span2_text="He")
    assert template("WSC").encode(x) == \
        'Mark lied. He should know.\nIn the previous sentence, does the pronoun "he" refer to Mark? Yes or No?\n'


def test_record_gpt3_style():
    t = template("ReCoRD")
    x = s(passage="Chelsea won.\n@highlight\nCosta scored\n@highlight\nZouma too",
          query="@placeholder made it difficult.")
    assert t.encode(x) == "Chelsea won.\n- Costa scored\n- Zouma too\n-"
    assert t.verbalize(x, "Olimpija") == "Chelsea won.\n- Costa scored\n- Zouma too\n- Olimpija made it difficult."
    assert t.verbalize(x, ["A", "B"]) == "Chelsea won.\n- Costa scored\n- Zouma too\n- A made it difficult."


def test_rte():
    x = s(premise="P.", hypothesis="H")
    assert template("RTE").verbalize(x, "No") == 'P.\nDoes this mean that "H" is true? Yes or No?\nNo'


def test_squad_and_drop_use_first_answer():
    q = s(title="T", context="C.", question=" Who? ", answers=["Bob", "Robert"])
    assert template("SQuAD").encode(q) == "Title: T\nContext: C.\nQuestion: Who?\nAnswer:"
    assert template("SQuAD").verbalize(q, "ignored") == "Title: T\nContext: C.\nQuestion: Who?\nAnswer: Bob\n"
    d = s(context="C.", question="How many?", answers=["3", "three"])
    assert template("DROP").encode(d) == "Passage: C.\nQuestion: How many?\nAnswer:"
    assert template("DROP").verbalize(d, None) == "Passage: C.\nQuestion: How many?\nAnswer: 3\n"


def test_get_task_attaches_template(tmp_path):
    from task_helpers import glue_fixture_dir

    task = get_task("RTE", glue_fixture_dir(tmp_path))
    assert type(task.template).__name__ == "RTETemplate"
