"""Per-block mean and unbiased variance, the first two PertNN inputs.

Computed chunk by chunk (the noise chunks of zo.noise, two passes in float32 each) and merged with
Chan's parallel formula in float64, so the same numbers come out whether the statistics are gathered
in a pass of their own or fused into the update sweep (which saves ZO Fine-tuner one full read of the
model per step).
"""
from __future__ import annotations

import threading
from typing import Sequence

import torch

from zo.blocks import Block
from zo.noise import NoiseSource, ThreadScratch, block_chunks


# Deviations from the chunk mean, one buffer per worker thread.
_DEVIATIONS = ThreadScratch()


class BlockStatsCollector:
    """Thread-safe sink for per-chunk (count, mean, M2); `result()` merges them per block."""

    def __init__(self, blocks: Sequence[Block]):
        self.blocks = list(blocks)
        self._parts: dict[tuple[int, int], tuple[int, torch.Tensor, torch.Tensor]] = {}
        self._lock = threading.Lock()

    def add_chunk(self, block_index: int, chunk_index: int, rows: torch.Tensor) -> None:
        # Two passes in float32 (mean, then the sum of squared deviations): no cancellation for blocks
        # near 1, and ~10x faster than torch.var_mean's double-precision Welford loop on CPU. The
        # deviations go to a per-thread buffer, so worker threads allocate nothing per chunk.
        values = rows.reshape(-1).float()
        count = values.numel()
        mean = values.sum() / count
        deviations = torch.sub(values, mean, out=_DEVIATIONS.get(count, values.device))
        m2 = deviations.square_().sum()
        part = (count, mean.double(), m2.double())
        with self._lock:
            self._parts[(block_index, chunk_index)] = part

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean [B], unbiased var [B]) as float32 CPU tensors, in block order."""
        means, variances = [], []
        for block in self.blocks:
            parts = [self._parts[(block.index, c.index)] for c in block_chunks(block.param.shape)]
            counts = torch.tensor([p[0] for p in parts], dtype=torch.float64)
            chunk_means = torch.stack([p[1].cpu() for p in parts])
            chunk_m2 = torch.stack([p[2].cpu() for p in parts])
            total = counts.sum()
            mean = (counts * chunk_means).sum() / total
            m2 = chunk_m2.sum() + (counts * (chunk_means - mean) ** 2).sum()
            # torch.var's Bessel correction; a 1-element block gets 0 instead of NaN.
            var = m2 / (total - 1) if total > 1 else torch.zeros((), dtype=torch.float64)
            means.append(mean)
            variances.append(var)
        return torch.stack(means).float(), torch.stack(variances).float()


def block_stats(blocks: Sequence[Block], pool: NoiseSource | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased variance of every block in a pass of its own (first step, or on demand).

    Runs on the same chunk pool as the update sweep, so it gives the same bits as the fused statistics.
    """
    collector = BlockStatsCollector(blocks)
    pool = pool or NoiseSource()
    with torch.no_grad():
        pool.map_chunks([(b.index, b.param.detach()) for b in blocks],
                        lambda index, chunk, rows: collector.add_chunk(index, chunk.index, rows))
    return collector.result()
