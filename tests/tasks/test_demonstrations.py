"""In-context demonstrations (MeZO's ICL mode): seeded per-example sets, the prompt text, both scoring layouts."""
import numpy as np
import pytest
import torch

from conftest import build_tiny_model
from tasks.encoding import demonstration_text, encode_candidates, example_prompt_length
from tasks.evaluate import classify
from tasks.sampling import demonstration_sets
from task_helpers import requires_data, shared_task
from zo.recipes.finetune import FineTuneConfig


@requires_data
def test_demonstration_set_i_is_the_train_pool_permuted_with_seed_i_and_joined_by_blank_lines():
    task = shared_task("SST2")
    pool = task.load_split("train")
    sets = demonstration_sets(pool, num_examples=3, num_demos=2)
    for i, demos in enumerate(sets):
        assert demos == [pool[j] for j in np.random.RandomState(i).permutation(len(pool))[:2]]
    first, second = sets[1]
    words = {0: "terrible", 1: "great", "terrible": "terrible", "great": "great"}
    expected = (f"{first.data['sentence'].strip()} It was {words[first.correct]}\n\n"
                f"{second.data['sentence'].strip()} It was {words[second.correct]}")
    assert demonstration_text(sets[1], task.template) == expected


@requires_data
def test_demonstrations_come_before_the_prompt_and_options_stay_the_same(tiny_tokenizer):
    task = shared_task("SST2")
    sample = task.load_split("valid")[0]
    demos = demonstration_text(demonstration_sets(task.load_split("train"), 1, 3)[0], task.template)
    plain = encode_candidates(sample, tiny_tokenizer, task.template)
    with_demos = encode_candidates(sample, tiny_tokenizer, task.template, demonstrations=demos)
    prompt = with_demos[0].input_ids[:len(with_demos[0].input_ids) - with_demos[0].option_len]
    assert tiny_tokenizer.decode(prompt) == demos + "\n\n" + task.template.encode(sample)
    assert [o.input_ids[-o.option_len:] for o in with_demos] == [o.input_ids[-o.option_len:] for o in plain]


@requires_data
def test_demonstration_scores_agree_in_the_rows_and_shared_prompt_layouts(tiny_tokenizer):
    task = shared_task("SST2")
    samples = task.load_split("valid")[:4]
    demos = [demonstration_text(d, task.template) for d in demonstration_sets(task.load_split("train"), 4, 2)]
    examples = [encode_candidates(s, tiny_tokenizer, task.template, demonstrations=d) for s, d in zip(samples, demos)]
    # the tiny tokenizer splits the label words, so the shared-prompt layout here is prompt_cache (one prompt row per
    # example, as auto's single-token rows); the SmolLM2 launcher run exercises auto
    assert all(example_prompt_length(e, "prompt_cache") is not None for e in examples)
    model = build_tiny_model("llama", len(tiny_tokenizer))
    with torch.no_grad():
        by_layout = {layout: classify(model, tiny_tokenizer, task, samples, batch_size=3,
                                      option_scoring=layout, demonstrations=demos)
                     for layout in ("rows", "prompt_cache")}
    assert by_layout["rows"] == by_layout["prompt_cache"]


def test_demonstrations_are_refused_with_training_or_a_dev_set():
    with pytest.raises(ValueError, match="evaluation only"):
        FineTuneConfig(train_mode="mezo", num_demos=4, num_dev=0).validate()
    with pytest.raises(ValueError, match="num_dev 0"):
        FineTuneConfig(train_mode="none", num_demos=4, num_dev=10).validate()
