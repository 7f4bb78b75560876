"""The process-wide random streams (Python, NumPy, torch CPU and accelerator), saved and restored whole.

ZO noise never uses them, but dropout in L2L's first-order steps and any library shuffling do: a
resumed run must continue them where they stood.
"""
from __future__ import annotations

import random

import numpy as np
import torch


def global_rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
