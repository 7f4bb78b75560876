"""Process-wide seeding for the parts of a run that use the global RNGs (dropout, Python/NumPy shuffles).

The ZO noise never uses them (zo.noise draws from dedicated generators).
"""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
