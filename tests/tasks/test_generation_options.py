"""Generation options: greedy by default, upstream's sampling / beams / eos_token flags, and the newline cut
(audit item 1): cut at the first newline by default, upstream's strip-only behind cut_at_newline=False."""
import pytest
import torch

from tasks.generation import (GenerationOptions, finish_answer, generate_answers, greedy_answers, raw_answers,
                              stop_token_ids)


class StubGenerator(torch.nn.Module):
    """generate() appends fixed token ids and records the generation config it was given."""

    def __init__(self, new_ids):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.new_ids = new_ids
        self.configs = []

    def generate(self, input_ids, attention_mask, generation_config):
        self.configs.append(generation_config)
        tail = torch.tensor([self.new_ids] * input_ids.shape[0], dtype=torch.long)
        return torch.cat([input_ids, tail], dim=1)


def _stub_answer(tokenizer, continuation: str, **options):
    model = StubGenerator(tokenizer.encode(continuation, add_special_tokens=False))
    prompt = tokenizer.encode("Question: what? Answer:", add_special_tokens=False)
    return generate_answers(model, tokenizer, [prompt], options=GenerationOptions(**options))[0], model


def test_answer_is_cut_at_the_first_newline_by_default(tiny_tokenizer):
    # a merged "\n\n" token does not fire the "\n" stop id: the decoded text runs on past the answer
    answer, _ = _stub_answer(tiny_tokenizer, " forty two\n\nQuestion: what is the answer")
    assert answer == "forty two"


def test_upstream_strip_only_keeps_the_text_after_the_newline(tiny_tokenizer):
    answer, _ = _stub_answer(tiny_tokenizer, " forty two\n\nQuestion: what is the answer", cut_at_newline=False)
    assert answer == "forty two\n\nQuestion: what is the answer"


@pytest.mark.parametrize("cut, expected", [(True, "a b"), (False, "a b\nc d")])
def test_finish_answer(cut, expected):
    assert finish_answer("  a b\nc d \n", cut) == expected


def test_greedy_by_default_and_sampling_knobs_only_when_sampling(tiny_tokenizer):
    _, model = _stub_answer(tiny_tokenizer, " x")
    greedy = model.configs[0]
    assert greedy.do_sample is False and greedy.num_beams == 1
    _, model = _stub_answer(tiny_tokenizer, " x", sampling=True, temperature=0.7, top_k=5, top_p=0.9, num_beams=2)
    sampled = model.configs[0]
    assert (sampled.do_sample, sampled.temperature, sampled.top_k, sampled.top_p, sampled.num_beams) == \
        (True, 0.7, 5, 0.9, 2)


def test_eos_token_sets_the_stop_ids(tiny_tokenizer):
    period = tiny_tokenizer.encode(".", add_special_tokens=False)[-1]
    newline = tiny_tokenizer.encode("\n", add_special_tokens=False)[-1]
    assert stop_token_ids(tiny_tokenizer) == sorted({tiny_tokenizer.eos_token_id, newline})
    assert stop_token_ids(tiny_tokenizer, ".") == sorted({tiny_tokenizer.eos_token_id, period})
    _, model = _stub_answer(tiny_tokenizer, " x", eos_token=".")
    assert sorted(model.configs[0].eos_token_id) == sorted({tiny_tokenizer.eos_token_id, period})


@pytest.mark.parametrize("bad", [dict(max_new_tokens=0), dict(num_beams=0), dict(sampling=True, temperature=0.0),
                                 dict(top_p=0.0), dict(top_k=0), dict(eos_token="")])
def test_bad_generation_options_are_refused(bad):
    with pytest.raises(ValueError):
        GenerationOptions(**bad).validate()


def test_options_run_on_a_tiny_model(tiny_llama, tiny_tokenizer):
    prompts = [tiny_tokenizer.encode("Question: what is the answer? Answer:"), tiny_tokenizer.encode("It was")]
    greedy = generate_answers(tiny_llama, tiny_tokenizer, prompts, options=GenerationOptions(max_new_tokens=6))
    assert greedy == greedy_answers(tiny_llama, tiny_tokenizer, prompts, max_new_tokens=6)
    raw = raw_answers(tiny_llama, tiny_tokenizer, prompts, options=GenerationOptions(max_new_tokens=6))
    assert [finish_answer(r) for r in raw] == greedy
    beams = generate_answers(tiny_llama, tiny_tokenizer, prompts, options=GenerationOptions(max_new_tokens=6,
                                                                                            num_beams=2))
    torch.manual_seed(0)
    sampled = generate_answers(tiny_llama, tiny_tokenizer, prompts,
                               options=GenerationOptions(max_new_tokens=6, sampling=True, temperature=2.0, top_k=50))
    assert all(isinstance(a, str) for a in beams + sampled) and len(beams) == len(sampled) == 2
