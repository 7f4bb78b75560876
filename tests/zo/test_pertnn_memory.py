"""PertNNMemory: the past a bank sees, shared by fine-tuning (zo.sigma) and L2L (one per task)."""
import torch

from zo.pertnn import INPUT_LAYOUT, PertNNMemory


def test_a_fresh_memory_feeds_sigma_one_and_zero_losses_in_the_input_layout():
    memory = PertNNMemory.fresh(3)
    features = memory.features(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1.0, 2.0, 3.0]))
    assert INPUT_LAYOUT == ("mean", "var_unbiased", "loss_plus_prev", "loss_minus_prev", "sigma_prev")
    assert torch.equal(features, torch.tensor([[0.1, 1.0, 0.0, 0.0, 1.0], [0.2, 2.0, 0.0, 0.0, 1.0],
                                               [0.3, 3.0, 0.0, 0.0, 1.0]]))


def test_the_memory_round_trips_through_its_state_dict_as_a_copy():
    memory = PertNNMemory(torch.tensor([0.5, 2.0], dtype=torch.float16), (1.25, 0.75))
    state = memory.state_dict()
    assert state == {**state, "history": [1.25, 0.75]}
    memory.sigma_prev[0] = 9.0  # the saved state is a copy
    again = PertNNMemory.fresh(2)
    again.load_state_dict(state)
    assert torch.equal(again.sigma_prev, torch.tensor([0.5, 2.0])) and again.sigma_prev.dtype == torch.float32
    assert again.history == (1.25, 0.75)
    features = again.features(torch.zeros(2), torch.zeros(2))
    assert torch.equal(features[:, 2:], torch.tensor([[1.25, 0.75, 0.5], [1.25, 0.75, 2.0]]))
