"""sfc / icl_sfc calibration (MeZO): summed option log-prob minus the same option's after a content-free prompt."""
import pytest
import torch

from conftest import build_tiny_model
from tasks.evaluate import calibrated_scores, candidate_scores
from tasks.encoding import demonstration_text
from tasks.sampling import demonstration_sets
from task_helpers import requires_data, shared_task


def summed_logprob(model, tokenizer, prefix: str, text: str) -> float:
    """Hand-computed: the log-prob of the tokens `prefix + text` adds after `prefix`, on one unpadded row."""
    prefix_ids, ids = tokenizer(prefix)["input_ids"], tokenizer(prefix + text)["input_ids"]
    assert ids[:len(prefix_ids)] == prefix_ids
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    start = max(len(prefix_ids), 1)  # a token with nothing before it has no log-prob
    return float(sum(logprobs[p - 1, ids[p]] for p in range(start, len(ids))))


@requires_data
def test_sst2_sfc_scores_are_raw_sums_minus_the_content_free_it_was_sums(tiny_tokenizer):
    task = shared_task("SST2")
    samples = task.load_split("valid")[:2]
    model = build_tiny_model("llama", len(tiny_tokenizer))
    calibrated = calibrated_scores(model, tiny_tokenizer, task, samples, "sfc", batch_size=4)
    for sample, scores in zip(samples, calibrated):
        prompt = task.template.encode(sample)
        expected = [summed_logprob(model, tiny_tokenizer, prompt, f" {w}")
                    - summed_logprob(model, tiny_tokenizer, "It was", f" {w}") for w in sample.candidates]
        assert scores.tolist() == pytest.approx(expected, abs=1e-4)


@requires_data
@pytest.mark.parametrize("layout", ["rows", "auto"])
def test_cb_icl_sfc_keeps_the_demonstrations_and_sfc_drops_them(tiny_tokenizer, layout):
    task = shared_task("CB")
    samples = task.load_split("valid")[:2]
    demos = [demonstration_text(d, task.template) for d in demonstration_sets(task.load_split("train"), 2, 1)]
    model = build_tiny_model("llama", len(tiny_tokenizer))
    kwargs = dict(batch_size=4, option_scoring=layout, demonstrations=demos)
    raw = candidate_scores(model, tiny_tokenizer, task, samples, reduce="sum", **kwargs)
    free_alone = candidate_scores(model, tiny_tokenizer, task, samples, reduce="sum", content_free=True, batch_size=4)
    free_after_demos = candidate_scores(model, tiny_tokenizer, task, samples, reduce="sum", content_free=True,
                                        **kwargs)
    sfc = calibrated_scores(model, tiny_tokenizer, task, samples, "sfc", **kwargs)
    icl_sfc = calibrated_scores(model, tiny_tokenizer, task, samples, "icl_sfc", **kwargs)
    for i, sample in enumerate(samples):
        assert torch.allclose(sfc[i], raw[i] - free_alone[i], atol=1e-5)
        assert torch.allclose(icl_sfc[i], raw[i] - free_after_demos[i], atol=1e-5)
        # the content-free prompt after the demonstrations is the label word alone
        expected = [summed_logprob(model, tiny_tokenizer, demos[i] + "\n\n", task.template.word(c))
                    for c in sample.candidates]
        assert free_after_demos[i].tolist() == pytest.approx(expected, abs=1e-4)
    assert not torch.allclose(torch.stack(free_alone), torch.stack(free_after_demos))


@requires_data
def test_calibration_is_refused_for_generation_tasks(tiny_tokenizer):
    task = shared_task("SQuAD")
    model = build_tiny_model("llama", len(tiny_tokenizer))
    with pytest.raises(ValueError, match="classification"):
        calibrated_scores(model, tiny_tokenizer, task, task.load_split("valid")[:1], "sfc")
