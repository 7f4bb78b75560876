"""zo.sigma.LearnedSigma's step-to-step handover: what the bank sees at step t comes from step t - 1."""
import torch

from conftest import build_tiny_model
from zo.blocks import parameter_blocks
from zo.pertnn import PertNNBank
from zo.sigma import LearnedSigma


def test_the_bank_sees_this_steps_statistics_and_the_previous_steps_losses_and_sigma():
    model = build_tiny_model("llama", 400)
    blocks = parameter_blocks(model)
    torch.manual_seed(3)
    sigma = LearnedSigma(PertNNBank([b.name for b in blocks]), blocks, batch_size=3)
    seen = []
    forward = sigma.bank.forward
    sigma.bank.forward = lambda features: seen.append(features.clone()) or forward(features)

    def stats(step):
        gen = torch.Generator().manual_seed(step)
        return torch.randn(len(blocks), generator=gen), torch.rand(len(blocks), generator=gen)

    sigma.coefficients(stats(1))
    first_sigma = sigma.last_sigma.clone()
    sigma.observe(2.5, 2.25)
    sigma.coefficients(stats(2))
    mean1, var1 = stats(1)
    mean2, var2 = stats(2)
    n = len(blocks)
    assert torch.equal(seen[0], torch.stack([mean1, var1, torch.zeros(n), torch.zeros(n), torch.ones(n)], dim=1))
    assert torch.equal(seen[1], torch.stack([mean2, var2, torch.full((n,), 2.5), torch.full((n,), 2.25),
                                             first_sigma], dim=1))
    assert not torch.equal(first_sigma, torch.ones(n))  # a random bank: sigma_prev really changed
