"""Option scoring layouts: shared prompts (auto, prompt_cache) give the old one-row-per-option values."""
import pytest
import torch
from tokenizers.processors import TemplateProcessing

import tasks
from conftest import build_tiny_model, build_tiny_tokenizer
from tasks.evaluate import classify
from tasks.encoding import EncodedExample, EncodedOption, example_prompt_length, shared_prompt_length
from zo.l2l import FunctionalModel
from task_helpers import requires_data, shared_task

pytestmark = requires_data

FAMILIES = ["llama", "opt", "qwen2"]
ROUND_OFF = dict(atol=2e-5, rtol=1e-5)


def classification_examples(name: str, tokenizer, count: int = 4, max_length: int = 512) -> list[EncodedExample]:
    task = shared_task(name)
    return [tasks.encode_train_example(s, task.template, tokenizer, True, max_length=max_length)
            for s in task.load_split("train")[:count]]


def scores_and_loss(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return tasks.option_scores(model, batch), tasks.batch_loss(model, batch)


def assert_same_as_rows(model, examples, tokenizer, option_scoring: str) -> dict:
    """The shared-prompt batch of `examples` scores and loses exactly like the rows batch; returns it."""
    shared = tasks.collate_examples(examples, tokenizer, option_scoring)
    assert "continuation_ids" in shared, "these examples should share their prompts"
    rows = tasks.collate_examples(examples, tokenizer, "rows")
    assert "continuation_ids" not in rows
    new_scores, new_loss = scores_and_loss(model, shared)
    old_scores, old_loss = scores_and_loss(model, rows)
    torch.testing.assert_close(new_scores, old_scores, **ROUND_OFF)
    torch.testing.assert_close(new_loss, old_loss, **ROUND_OFF)
    return shared


@pytest.mark.parametrize("family", FAMILIES)
def test_single_token_options_one_row_per_example(family, tiny_tokenizer):
    examples = classification_examples("WSC", tiny_tokenizer)  # " Yes"/" No" are one token each here
    model = build_tiny_model(family, vocab_size=len(tiny_tokenizer))
    batch = assert_same_as_rows(model, examples, tiny_tokenizer, "auto")
    assert batch["input_ids"].shape[0] == len(examples) and batch["continuation_ids"].shape[1] == 1
    assert batch["labels"].tolist() == [e.label for e in examples]


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_cache_matches_rows_for_multi_token_options(family, tiny_tokenizer):
    examples = classification_examples("Copa", tiny_tokenizer)
    model = build_tiny_model(family, vocab_size=len(tiny_tokenizer))
    batch = assert_same_as_rows(model, examples, tiny_tokenizer, "prompt_cache")
    assert batch["input_ids"].shape[0] == len(examples) and batch["continuation_ids"].shape[0] == 2 * len(examples)


def test_prompt_cache_gradients_and_functional_call_match_rows(tiny_tokenizer):
    """Training (autograd) and L2L's functional-call wrapper see the same loss and gradients in both layouts."""
    examples = classification_examples("Copa", tiny_tokenizer)
    model = build_tiny_model("llama", vocab_size=len(tiny_tokenizer), tie=False)
    grads, losses = {}, {}
    for scoring in ("rows", "prompt_cache", "auto"):
        batch = tasks.collate_examples(examples, tiny_tokenizer, scoring)
        params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
        loss = tasks.batch_loss(FunctionalModel(model, params), batch)
        loss.backward()
        losses[scoring], grads[scoring] = loss.detach(), params["lm_head.weight"].grad
    for scoring in ("prompt_cache", "auto"):
        torch.testing.assert_close(losses[scoring], losses["rows"], **ROUND_OFF)
        torch.testing.assert_close(grads[scoring], grads["rows"], atol=1e-5, rtol=1e-4)


def test_multi_token_options_fall_back_to_rows_under_auto(tiny_tokenizer):
    examples = classification_examples("SST2", tiny_tokenizer)  # " terrible" is several tokens here
    assert max(o.option_len for e in examples for o in e.options) > 1
    batch = tasks.collate_examples(examples, tiny_tokenizer, "auto")
    assert "continuation_ids" not in batch and batch["input_ids"].shape[0] == 2 * len(examples)
    # One multi-token example is enough to send its whole batch to the rows layout.
    mixed = classification_examples("WSC", tiny_tokenizer) + examples[:1]
    assert "continuation_ids" not in tasks.collate_examples(mixed, tiny_tokenizer, "auto")


def test_prompts_that_cannot_be_shared():
    joint_merge = [EncodedOption([5, 6, 7], 1, follows_prompt=False), EncodedOption([5, 6, 8], 1)]
    assert shared_prompt_length(joint_merge) is None
    differ_before_option = [EncodedOption([5, 6, 7], 1), EncodedOption([5, 9, 8], 1)]
    assert shared_prompt_length(differ_before_option) is None
    no_prompt = [EncodedOption([7], 1), EncodedOption([8], 1)]
    assert shared_prompt_length(no_prompt) is None
    no_option_token = [EncodedOption([5, 6], 0), EncodedOption([5, 6, 8], 1)]
    assert shared_prompt_length(no_option_token) is None
    single = [EncodedOption([5, 6, 7], 1), EncodedOption([5, 6, 8], 1)]
    assert example_prompt_length(single, "auto") == 2 and example_prompt_length(single, "rows") is None
    multi = [EncodedOption([5, 6, 7, 9], 2), EncodedOption([5, 6, 8], 1)]
    assert example_prompt_length(multi, "auto") is None and example_prompt_length(multi, "prompt_cache") == 2
    with pytest.raises(ValueError, match="option_scoring"):
        example_prompt_length(single, "fast")


def test_lm_style_batches_are_unchanged(tiny_tokenizer):
    for name in ("WSC", "Copa"):
        task = shared_task(name)
        examples = [tasks.encode_train_example(s, task.template, tiny_tokenizer, False)
                    for s in task.load_split("train")[:4]]
        for scoring in ("auto", "prompt_cache"):
            new, old = (tasks.collate_examples(examples, tiny_tokenizer, s) for s in (scoring, "rows"))
            assert new.keys() == old.keys() and all(torch.equal(new[k], old[k]) for k in old)


def test_left_truncation_keeps_bos_and_values():
    tokenizer = build_tiny_tokenizer()
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    examples = classification_examples("WSC", tokenizer, max_length=24)
    assert all(len(o.input_ids) == 24 for e in examples for o in e.options)  # truncated
    model = build_tiny_model("llama", vocab_size=len(tokenizer))
    batch = assert_same_as_rows(model, examples, tokenizer, "auto")
    assert (batch["input_ids"][:, -23] == 1).all()  # each prompt row: BOS + the last 22 prompt tokens


def test_row_count_of_a_batch_of_16(tiny_tokenizer):
    task = shared_task("WSC")
    model = build_tiny_model("llama", vocab_size=len(tiny_tokenizer))
    rows_seen = []
    model.model.embed_tokens.register_forward_hook(lambda m, inp, out: rows_seen.append(out.shape[0]))
    for scoring, expected in (("auto", 16), ("rows", 32)):
        batch = next(tasks.TrainBatches(task.load_split("train")[:16], task, tiny_tokenizer, 16,
                                        option_scoring=scoring).epoch(shuffle=False))
        rows_seen.clear()
        with torch.no_grad():
            tasks.batch_loss(model, batch)
        assert rows_seen == [expected], scoring


@pytest.mark.parametrize("name", ["WSC", "Copa", "SST2"])
def test_evaluate_predictions_match_rows(name, tiny_tokenizer):
    task = shared_task(name)
    samples = task.load_split("valid")[:6]
    model = build_tiny_model("qwen2", vocab_size=len(tiny_tokenizer))
    old = classify(model, tiny_tokenizer, task, samples, batch_size=3, option_scoring="rows")
    for scoring in ("auto", "prompt_cache"):
        assert classify(model, tiny_tokenizer, task, samples, batch_size=3,
                                       option_scoring=scoring) == old
    result = tasks.evaluate(model, tiny_tokenizer, task, samples, batch_size=3, progress=False)
    assert result == tasks.evaluate(model, tiny_tokenizer, task, samples, batch_size=3, progress=False,
                                    option_scoring="rows")


def test_dev_loss_batches_match_rows(tiny_tokenizer):
    """The dev loss is batch_loss over TrainBatches in order: the same mean in every layout."""
    task = shared_task("WSC")
    model = build_tiny_model("opt", vocab_size=len(tiny_tokenizer))
    means = {}
    for scoring in ("rows", "auto"):
        batches = tasks.TrainBatches(task.load_split("valid")[:10], task, tiny_tokenizer, 4, seed=0,
                                     option_scoring=scoring)
        with torch.no_grad():
            means[scoring] = torch.stack([tasks.batch_loss(model, b) for b in batches.epoch(shuffle=False)]).mean()
    torch.testing.assert_close(means["auto"], means["rows"], **ROUND_OFF)
