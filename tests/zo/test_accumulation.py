"""Gradient accumulation for ZO fine-tuning: L+ and L- averaged over N micro-batches at one perturbation seed."""
import torch

import run_zo_fine_tuner
from conftest import build_tiny_model
from zo.blocks import parameter_blocks
from zo.estimator import ZOConfig, ZOOptimizer
from zo.loop import AccumulatedBatches, accumulated_loss
from zo.noise import NoiseSource
from zo.sigma import ConstantSigma


class ListBatches:
    """The smallest TrainBatches-like source: a fixed cycle of batches."""

    def __init__(self, batches):
        self.batches, self.position = batches, 0

    def forever(self):
        while True:
            self.position += 1  # counted when handed out, as TrainBatches
            yield self.batches[(self.position - 1) % len(self.batches)]

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def lm_loss(model):
    return lambda ids: model(input_ids=ids, labels=ids).loss


def test_mezo_with_accumulation_equals_one_step_on_the_concatenated_batch():
    gen = torch.Generator().manual_seed(3)
    micro = [torch.randint(3, 400, (2, 8), generator=gen) for _ in range(6)]  # equal sizes: equal weights
    config = ZOConfig(lr=1e-2, eps=1e-2)  # a larger eps: g = (L+ - L-) / 2 eps amplifies fp32 round-off less
    accumulated_model, whole_model = build_tiny_model("llama", 400), build_tiny_model("llama", 400)
    accumulated = ZOOptimizer(accumulated_model, ConstantSigma(parameter_blocks(accumulated_model)), config, seed=7,
                              noise=NoiseSource(threads=1))
    whole = ZOOptimizer(whole_model, ConstantSigma(parameter_blocks(whole_model)), config, seed=7,
                        noise=NoiseSource(threads=1))
    groups = AccumulatedBatches(ListBatches(micro), steps=3).forever()
    loss = accumulated_loss(lm_loss(accumulated_model))
    for step in range(2):
        group = next(groups)
        assert all(torch.equal(a, b) for a, b in zip(group, micro[3 * step:3 * step + 3]))
        a = accumulated.step(lambda: loss(group))
        b = whole.step(lambda: lm_loss(whole_model)(torch.cat(group)))
        assert a.seed == b.seed
        assert abs(a.loss_plus - b.loss_plus) < 1e-5 and abs(a.loss_minus - b.loss_minus) < 1e-5
        assert abs(a.projected_grad - b.projected_grad) < 1e-3 * max(1.0, abs(b.projected_grad))
    for p, q in zip(accumulated_model.parameters(), whole_model.parameters()):  # fp32 round-off of g, times lr * z
        assert torch.allclose(p, q, rtol=0, atol=1e-5)
    assert not torch.equal(next(accumulated_model.parameters()), next(build_tiny_model("llama", 400).parameters()))


def test_accumulated_batches_resume_through_the_wrapped_state():
    source = ListBatches([torch.tensor([i]) for i in range(10)])
    groups = AccumulatedBatches(source, steps=2)
    stream = groups.forever()
    next(stream)
    state = groups.state_dict()
    resumed = AccumulatedBatches(ListBatches(source.batches), steps=2)
    resumed.load_state_dict(state)
    assert [int(t) for t in next(resumed.forever())] == [int(t) for t in next(stream)]


def test_fine_tuning_accepts_gradient_accumulation_steps(monkeypatch):
    seen = {}
    monkeypatch.setattr(run_zo_fine_tuner, "fine_tune", lambda config: seen.setdefault("config", config))
    run_zo_fine_tuner.main(["--task_name", "SST2", "--gradient_accumulation_steps", "4"])
    assert seen["config"].gradient_accumulation_steps == 4
