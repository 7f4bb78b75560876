"""evaluate() and the -F1 objective on tiny random models (values are meaningless, shapes and plumbing are not)."""

import pytest
import torch

import tasks
from tasks.encoding import EncodedExample
from tasks.generation import first_line, stop_token_ids
from task_helpers import requires_data, shared_task

pytestmark = requires_data


def test_sst2_accuracy_and_batching_invariance(tiny_llama, tiny_tokenizer):
    task = shared_task("SST2")
    samples = task.load_split("valid")[:6]
    tiny_llama.train()
    result = tasks.evaluate(tiny_llama, tiny_tokenizer, task, samples, batch_size=5, progress=False)
    assert tiny_llama.training  # the caller's mode is restored
    assert set(result) == {"accuracy", "num_examples"} and result["num_examples"] == 6
    assert 0.0 <= result["accuracy"] <= 1.0
    # Reference: each sample alone, argmax of its options' mean log-probs.
    tiny_llama.eval()
    hits = 0
    for s in samples:
        rows = tasks.encode_candidates(s, tiny_tokenizer, task.template)
        with torch.no_grad():
            scores = tasks.option_scores(tiny_llama, tasks.collate_options([EncodedExample([r]) for r in rows],
                                                                           tiny_tokenizer))
        hits += s.candidates[int(scores.argmax())] == s.correct
    assert result["accuracy"] == pytest.approx(hits / len(samples))
    one_by_one = tasks.evaluate(tiny_llama, tiny_tokenizer, task, samples, batch_size=1, progress=False,
                                per_example=True)
    assert one_by_one["accuracy"] == result["accuracy"]
    # per example: each prediction is an option of its sample, scored 1 exactly when it is the gold
    assert len(one_by_one["predictions"]) == len(one_by_one["scores"]) == 6
    assert [float(p == s.correct) for p, s in zip(one_by_one["predictions"], samples)] == one_by_one["scores"]
    assert all(p in s.candidates for p, s in zip(one_by_one["predictions"], samples))
    assert sum(one_by_one["scores"]) / 6 == pytest.approx(hits / len(samples))


def test_record_accuracy_uses_membership(tiny_llama, tiny_tokenizer):
    task = shared_task("ReCoRD")
    result = tasks.evaluate(tiny_llama, tiny_tokenizer, task, task.load_split("valid")[:2], batch_size=8,
                            max_length=256, progress=False)
    assert 0.0 <= result["accuracy"] <= 1.0 and result["num_examples"] == 2


def test_squad_f1_with_generation(tiny_llama, tiny_tokenizer):
    task = shared_task("SQuAD")
    samples = task.load_split("valid")[:3]
    result = tasks.evaluate(tiny_llama, tiny_tokenizer, task, samples, batch_size=2, max_length=192,
                            max_new_tokens=4, progress=False)
    assert set(result) == {"f1", "num_examples"} and 0.0 <= result["f1"] <= 1.0
    assert tasks.evaluate(tiny_llama, tiny_tokenizer, task, [], progress=False) == {"f1": 0.0, "num_examples": 0}
    detailed = tasks.evaluate(tiny_llama, tiny_tokenizer, task, samples, batch_size=2, max_length=192,
                              max_new_tokens=4, progress=False, per_example=True)
    assert detailed["scores"] == [tasks.squad_f1(p, s.correct) for p, s in zip(detailed["predictions"], samples)]
    assert sum(detailed["scores"]) / 3 == pytest.approx(result["f1"])


def test_batched_generation_matches_single(tiny_llama, tiny_tokenizer):
    task = shared_task("DROP")
    samples = task.load_split("valid")[:3]
    prompts = [tasks.encode_candidates(s, tiny_tokenizer, task.template, 160, max_new_tokens=6)[0].input_ids[-40 - 10 * i:]
               for i, s in enumerate(samples)]
    together = tasks.greedy_answers(tiny_llama, tiny_tokenizer, prompts, max_length=160, max_new_tokens=6)
    alone = [tasks.greedy_answers(tiny_llama, tiny_tokenizer, [p], max_length=160, max_new_tokens=6)[0]
             for p in prompts]
    assert together == alone  # the attention mask hides the left padding


def test_negative_f1_objective(tiny_llama, tiny_tokenizer):
    task = shared_task("SQuAD")
    batch = task.load_split("train")[:2]
    value = tasks.negative_f1_objective(tiny_llama, tiny_tokenizer, batch, task, max_length=192, max_new_tokens=3)
    assert value.dtype == torch.float32 and value.dim() == 0 and -1.0 <= value.item() <= 0.0
    with pytest.raises(ValueError, match="generation task"):
        tasks.negative_f1_objective(tiny_llama, tiny_tokenizer, batch, shared_task("Copa"))


def test_stop_tokens_and_newline_cut(tiny_tokenizer):
    assert tiny_tokenizer.eos_token_id in stop_token_ids(tiny_tokenizer)
    assert tiny_tokenizer.encode("\n", add_special_tokens=False)[-1] in stop_token_ids(tiny_tokenizer)
    assert first_line(" Paris.\nQuestion: next") == "Paris."
    assert first_line("\nParis") == ""


class ScriptedGenerator(torch.nn.Module):
    """A stand-in whose generate() appends fixed text, to check decoding and the newline cut."""

    def __init__(self, tokenizer, continuation):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.new = tokenizer.encode(continuation, add_special_tokens=False)

    def generate(self, input_ids, attention_mask, generation_config):
        assert attention_mask.shape == input_ids.shape and generation_config.do_sample is False
        extra = torch.tensor([self.new] * input_ids.shape[0])
        return torch.cat([input_ids, extra], dim=1)


def test_answers_are_cut_at_newline_and_scored(tiny_tokenizer):
    task = shared_task("SQuAD")
    sample = task.load_split("train")[0]  # gold: Saint Bernadette Soubirous
    model = ScriptedGenerator(tiny_tokenizer, " Saint Bernadette Soubirous.\nQuestion: who")
    value = tasks.negative_f1_objective(model, tiny_tokenizer, [sample], task, max_length=256)
    assert value.item() == pytest.approx(-1.0)
    assert tasks.evaluate(model, tiny_tokenizer, task, [sample], max_length=256, progress=False)["f1"] == 1.0
