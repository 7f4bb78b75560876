"""The process-wide random streams a resumed run continues (zo.run.rng)."""
import random

import numpy as np
import torch

from zo.run import rng


def test_cpu_streams_continue_where_they_stood():
    state = rng.global_rng_state()
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    rng.set_global_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


class FakeCuda:
    """torch.cuda with `visible` devices whose random states are recorded, so a CPU machine can check the restore."""

    def __init__(self, visible):
        self.visible, self.restored = visible, {}

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.visible)
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: self.restored.__setitem__(device, s))


def _state_with_cuda(devices):
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    state["cuda"] = [torch.full((8,), i, dtype=torch.uint8) for i in range(devices)]
    return state


def test_a_checkpoint_of_eight_gpus_resumes_on_one(monkeypatch, caplog):
    fake = FakeCuda(visible=1)
    fake.install(monkeypatch)
    rng.set_global_rng_state(_state_with_cuda(8))  # set_rng_state_all would index device 1..7 and raise
    assert list(fake.restored) == [0] and int(fake.restored[0][0]) == 0
    assert "8 devices, this process sees 1" in caplog.text


def test_every_device_is_restored_when_the_counts_match(monkeypatch, caplog):
    fake = FakeCuda(visible=2)
    fake.install(monkeypatch)
    rng.set_global_rng_state(_state_with_cuda(2))
    assert {d: int(s[0]) for d, s in fake.restored.items()} == {0: 0, 1: 1}
    assert "devices" not in caplog.text
