"""Shared-prompt scoring on the real SmolLM2-135M: the same values as one row per option (slow; short under CI)."""
import os

import pytest
import torch

import tasks
from tasks.evaluate import classify
from zo.models import DEFAULT_MODEL, load_model
from task_helpers import requires_data, shared_task

SHORT = os.environ.get("CI", "").lower() in ("1", "true", "yes")
COUNT = 4 if SHORT else 16

pytestmark = [pytest.mark.slow, requires_data]


@pytest.fixture(scope="module")
def smollm2():
    assert (DEFAULT_MODEL / "config.json").exists(), f"run `bash scripts/setup.sh` first ({DEFAULT_MODEL} missing)"
    return load_model(DEFAULT_MODEL)


@pytest.mark.parametrize("name, scoring", [("SST2", "auto"), ("Copa", "prompt_cache")])
def test_smollm2_shared_prompts_match_rows(smollm2, name, scoring):
    model, tokenizer = smollm2
    task = shared_task(name)
    samples = task.load_split("train")[:COUNT]
    examples = [tasks.encode_train_example(s, task.template, tokenizer, True) for s in samples]
    shared = tasks.collate_examples(examples, tokenizer, scoring)
    rows = tasks.collate_examples(examples, tokenizer, "rows")
    assert shared["input_ids"].shape[0] == COUNT and rows["input_ids"].shape[0] == 2 * COUNT
    with torch.inference_mode():
        torch.testing.assert_close(tasks.option_scores(model, shared), tasks.option_scores(model, rows),
                                   atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(tasks.batch_loss(model, shared), tasks.batch_loss(model, rows),
                                   atol=2e-5, rtol=1e-5)
    evaluated = task.load_split("valid")[:COUNT]
    assert (classify(model, tokenizer, task, evaluated, option_scoring=scoring)
            == classify(model, tokenizer, task, evaluated, option_scoring="rows"))
