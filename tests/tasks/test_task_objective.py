"""batch_loss (last-positions logits only) against references built from full, unpadded logits."""
import math
from types import SimpleNamespace

import pytest
import torch

import tasks
from conftest import build_tiny_model
from tasks.encoding import EncodedExample, EncodedOption
from task_helpers import requires_data, shared_task

FAMILIES = ["llama", "opt", "qwen2"]


def reference_option_logprobs(model, ids: list[int], option_len: int) -> torch.Tensor:
    """Log-probs of the last option_len tokens from a full forward pass on the unpadded row."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    n = len(ids)
    return torch.stack([logprobs[p - 1, ids[p]] for p in range(n - option_len, n)])


def reference_loss(model, examples: list[EncodedExample]) -> torch.Tensor:
    if examples[0].label is not None:
        losses = []
        for e in examples:
            scores = torch.stack([reference_option_logprobs(model, o.input_ids, o.option_len).mean()
                                  for o in e.options])
            losses.append(-torch.log_softmax(scores, 0)[e.label])
        return torch.stack(losses).mean()
    token_lps = torch.cat([reference_option_logprobs(model, e.options[0].input_ids, e.options[0].option_len)
                           for e in examples])
    return -token_lps.mean()


@pytest.fixture(scope="module")
def mixed_examples(tiny_tokenizer):
    """Classification examples with 2 (Copa) and 3 (CB) options, and LM examples (Copa, SQuAD gold)."""
    copa, cb, squad = shared_task("Copa"), shared_task("CB"), shared_task("SQuAD")
    enc = lambda task, s, cls: tasks.encode_train_example(s, task.template, tiny_tokenizer, cls, max_length=160)
    cls = [enc(cb, cb.load_split("train")[1], True), enc(copa, copa.load_split("train")[0], True),
           enc(cb, cb.load_split("train")[2], True)]
    lm = [enc(copa, copa.load_split("train")[3], False), enc(squad, squad.load_split("train")[0], False),
          enc(copa, copa.load_split("train")[5], False)]
    return cls, lm


@requires_data
@pytest.mark.parametrize("family", FAMILIES)
def test_batch_and_example_losses_match_full_logits_references(family, tiny_tokenizer, mixed_examples):
    # example_losses serves the batched dev loss: one forward, each example's loss as if it were alone (batch 1)
    model = build_tiny_model(family, vocab_size=len(tiny_tokenizer))
    for examples in mixed_examples:
        batch = tasks.collate_options(examples, tiny_tokenizer)
        with torch.no_grad():
            loss, losses = tasks.batch_loss(model, batch), tasks.example_losses(model, batch)
            alone = torch.stack([reference_loss(model, [e]) for e in examples])
        assert loss.dtype == torch.float32 and loss.dim() == 0 and losses.shape == (len(examples),)
        torch.testing.assert_close(loss, reference_loss(model, examples), atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(losses, alone, atol=2e-5, rtol=1e-5)
        if examples[0].label is not None:  # the training loss is their mean, bit for bit
            assert torch.equal(loss, losses.mean())
        else:  # LM: the training loss weights tokens, the per-example mean does not (SQuAD's answer is longer)
            assert not torch.allclose(loss, losses.mean(), atol=1e-4)


@requires_data
def test_only_last_positions_get_logits(tiny_tokenizer, mixed_examples):
    model = build_tiny_model("llama", vocab_size=len(tiny_tokenizer))
    seen = []
    handle = model.lm_head.register_forward_hook(lambda m, inp, out: seen.append(out.shape[1]))
    batch = tasks.collate_options(mixed_examples[0], tiny_tokenizer)
    tasks.batch_loss(model, batch)
    handle.remove()
    assert seen == [int(batch["option_len"].max()) + 1] and seen[0] < batch["input_ids"].shape[1]


@requires_data
def test_loss_is_differentiable_and_float32_for_bf16(tiny_tokenizer, mixed_examples):
    model = build_tiny_model("qwen2", vocab_size=len(tiny_tokenizer), tie=False)
    loss = tasks.batch_loss(model, tasks.collate_options(mixed_examples[1], tiny_tokenizer))
    loss.backward()
    assert model.lm_head.weight.grad is not None and torch.isfinite(model.lm_head.weight.grad).all()
    half = build_tiny_model("llama", vocab_size=len(tiny_tokenizer), dtype=torch.bfloat16)
    with torch.no_grad():
        assert tasks.batch_loss(half, tasks.collate_options(mixed_examples[0], tiny_tokenizer)).dtype == torch.float32


class BigramModel(torch.nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: log-probs that can be written down by hand."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table, dtype=torch.float32))

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=None, logits_to_keep=0):
        logits = self.table[input_ids]
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def test_classification_loss_by_hand(tiny_tokenizer):
    table = [[0.0, 1.0, 2.0, 0.5], [1.0, 0.0, 0.0, 3.0], [0.2, 0.1, 0.0, 0.0], [2.0, 2.0, 0.0, 1.0]]
    lsm = [[x - math.log(sum(math.exp(v) for v in row)) for x in row] for row in table]
    model = BigramModel(table)
    # Example 1: prompt [0], options [0,1] (len 1) and [0,2,3] (len 2); gold = option 1.
    # Example 2: prompt [3, 1], options [3,1,3] and [3,1,1] (len 1 each); gold = option 0.
    examples = [EncodedExample([EncodedOption([0, 1], 1), EncodedOption([0, 2, 3], 2)], label=1),
                EncodedExample([EncodedOption([3, 1, 3], 1), EncodedOption([3, 1, 1], 1)], label=0)]
    s1 = [lsm[0][1], (lsm[0][2] + lsm[2][3]) / 2]
    s2 = [lsm[1][3], lsm[1][1]]

    def ce(scores, gold):
        return -(scores[gold] - math.log(sum(math.exp(v) for v in scores)))

    expected = (ce(s1, 1) + ce(s2, 0)) / 2
    loss = tasks.batch_loss(model, tasks.collate_options(examples, tiny_tokenizer))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    lm = [EncodedExample([EncodedOption([0, 2, 3], 2)]), EncodedExample([EncodedOption([3, 1, 3], 1)])]
    lm_loss = tasks.batch_loss(model, tasks.collate_options(lm, tiny_tokenizer))
    assert lm_loss.item() == pytest.approx(-(lsm[0][2] + lsm[2][3] + lsm[1][3]) / 3, abs=1e-6)
