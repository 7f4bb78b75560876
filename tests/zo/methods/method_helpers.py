"""Shared bits of the method tests: tiny batches, a method built on a tiny model, the loss closures."""
from __future__ import annotations

import pytest
import torch

from conftest import causal_lm_loss
from zo.blocks import parameter_blocks
from zo.estimator import ZOConfig
from zo.methods import MethodContext, build_method
from zo.noise import NoiseSource


def batches(n, vocab=400):
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(3, vocab, (3, 10), generator=gen) for _ in range(n)]


def lm_loss(model, ids):
    return causal_lm_loss(model, ids)  # pairs: the methods' + and - forwards run as one doubled forward


def make(model, mode, zo: ZOConfig | None = None, seed=5, threads=1, **options):
    ctx = MethodContext(model, parameter_blocks(model), zo or ZOConfig(lr=1e-3, eps=1e-3), seed=seed,
                        noise=NoiseSource(threads=threads), batch_size=3, **options.pop("ctx", {}))
    return build_method(mode, ctx, options)


def run(method, model, ids_list):
    return [method.step(lambda ids=ids: lm_loss(model, ids)) for ids in ids_list]


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Import into a test module to use. Tiny models gain nothing from intra-op threads, and on a loaded
    machine OpenMP's spinning makes a 2-thread tiny forward ~100x slower; results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
