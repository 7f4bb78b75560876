"""--only_train_option False (MeZO): LM cross-entropy over the whole sequence, prompt and option."""
import pytest
import torch

import tasks
from conftest import build_tiny_model
from tasks.encoding import collate_examples, encode_train_example
from task_helpers import requires_data, shared_task


def full_sequence_ce(model, rows: list[list[int]]) -> torch.Tensor:
    """HF's loss with labels = input_ids over several unpadded rows: every token after the first, token-weighted."""
    total, count = torch.zeros(()), 0
    with torch.no_grad():
        for ids in rows:
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
            total -= sum(logprobs[p - 1, ids[p]] for p in range(1, len(ids)))
            count += len(ids) - 1
    return total / count


@requires_data
def test_whole_sequence_loss_is_the_hand_computed_full_sequence_cross_entropy(tiny_tokenizer):
    task = shared_task("SST2")
    samples = task.load_split("train")[:3]
    model = build_tiny_model("llama", len(tiny_tokenizer))
    whole = [encode_train_example(s, task.template, tiny_tokenizer, as_classification=False, only_train_option=False)
             for s in samples]
    option_only = [encode_train_example(s, task.template, tiny_tokenizer, as_classification=False) for s in samples]
    rows = [e.options[0].input_ids for e in whole]
    assert rows == [e.options[0].input_ids for e in option_only]  # same sequences, only the counted tokens differ
    assert len({len(r) for r in rows}) > 1  # left padding is exercised
    with torch.no_grad():
        loss = tasks.batch_loss(model, collate_examples(whole, tiny_tokenizer))
        option_loss = tasks.batch_loss(model, collate_examples(option_only, tiny_tokenizer))
    assert loss.item() == pytest.approx(full_sequence_ce(model, rows).item(), rel=1e-5)
    assert abs(loss.item() - option_loss.item()) > 1e-3


@requires_data
def test_whole_sequence_loss_refuses_classification_training(tiny_tokenizer):
    task = shared_task("SST2")
    with pytest.raises(ValueError, match="train_as_classification False"):
        encode_train_example(task.load_split("train")[0], task.template, tiny_tokenizer, as_classification=True,
                             only_train_option=False)
