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
        """(mean [B], unbiased var [B]) as float32 CPU tensors, in block order.

        The chunk parts are merged on the device that computed them (Chan's formula as segment sums),
        then cross to the host once per device: no host synchronization per block.
        """
        by_device: dict[torch.device, list[int]] = {}
        for position, block in enumerate(self.blocks):
            by_device.setdefault(block.param.device, []).append(position)
        means = torch.empty(len(self.blocks), dtype=torch.float64)
        variances = torch.empty(len(self.blocks), dtype=torch.float64)
        for device, positions in by_device.items():
            counts, chunk_means, chunk_m2, owner = [], [], [], []
            for local, position in enumerate(positions):
                block = self.blocks[position]
                for chunk in block_chunks(block.param.shape):
                    count, mean, m2 = self._parts[(block.index, chunk.index)]
                    counts.append(count)
                    chunk_means.append(mean)
                    chunk_m2.append(m2)
                    owner.append(local)
            count_t = torch.tensor(counts, dtype=torch.float64, device=device)
            owner_t = torch.tensor(owner, device=device)
            mean_t, m2_t = torch.stack(chunk_means), torch.stack(chunk_m2)

            def segment_sum(values: torch.Tensor) -> torch.Tensor:
                return torch.zeros(len(positions), dtype=torch.float64, device=device).index_add_(0, owner_t, values)

            total = segment_sum(count_t)
            mean = segment_sum(count_t * mean_t) / total
            m2 = segment_sum(m2_t + count_t * (mean_t - mean[owner_t]) ** 2)
            # torch.var's Bessel correction; a 1-element block gets 0 instead of NaN.
            var = torch.where(total > 1, m2 / (total - 1).clamp(min=1), torch.zeros_like(m2))
            index = torch.tensor(positions)
            means[index] = mean.cpu()
            variances[index] = var.cpu()
        return means.float(), variances.float()


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
