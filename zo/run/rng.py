"""The process-wide random streams (Python, NumPy, torch CPU and accelerator), saved and restored whole.

ZO noise never uses them, but dropout in L2L's first-order steps and any library shuffling do: a
resumed run must continue them where they stood.
"""
from __future__ import annotations

import logging
import random

import numpy as np
import torch

log = logging.getLogger(__name__)


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
        # One state per device visible when saved. A resume may see fewer (e.g. CUDA_VISIBLE_DEVICES=k, as the
        # campaign launches runs) or more: restore the devices both have, by their index in this process.
        saved, visible = state["cuda"], torch.cuda.device_count()
        for index, device_state in enumerate(saved[:visible]):
            torch.cuda.set_rng_state(device_state, index)
        if len(saved) != visible:
            log.warning("the checkpoint has the CUDA random state of %d devices, this process sees %d: %s (only "
                        "dropout and sampling use it)", len(saved), visible,
                        f"devices {len(saved)}.. start from a fresh state" if visible > len(saved)
                        else f"the states of devices {visible}.. are not used")
