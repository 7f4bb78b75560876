"""Noise fields: other perturbation directions on top of the shared seeded Gaussian chunks.

A field has the one method the perturbation and update sweeps use, `for_each_chunk(step_seed, items,
fn, only_chunks)` (as `zo.noise.NoiseSource`), and hands `fn` the chunk of its own direction instead
of plain z. So `VirtualPerturbation` (exact restore) and `add_noise_` work unchanged for every method:
- `PreconditionedNoise` (HiZOO): z / sqrt(D), D a per-element curvature estimate;
- `RademacherNoise` (FZOO): sign(z), i.e. +-1 with equal probability;
- `LowRankNoise` (LOZO): U V^T for tensors of 2 or more dims (U drawn per step, V per window), z for
  the others.
Every field is a pure function of (seed, block, chunk), like z itself: the probe and the update of a
step see the same direction (LOZO's authors' issue #3 is exactly a violation of this).
"""
from __future__ import annotations

import threading
from typing import Callable, Container, Iterable, Sequence

import torch

from zo.blocks import Block
from zo.noise import Chunk, NoiseSource, chunk_seed, rows_view

ChunkFn = Callable[[int, Chunk, torch.Tensor, torch.Tensor], None]


class PreconditionedNoise:
    """z / sqrt(D_b) elementwise; D is read as it is when the sweep runs."""

    def __init__(self, noise: NoiseSource, curvature: dict[int, torch.Tensor]):
        self.noise = noise
        self.curvature = curvature  # block index -> float32 D, same shape as the parameter

    def for_each_chunk(self, step_seed: int, items: Iterable[tuple[int, torch.Tensor]], fn: ChunkFn,
                       only_chunks: Container[int] | None = None) -> None:
        def scaled(index: int, chunk: Chunk, rows: torch.Tensor, z: torch.Tensor) -> None:
            d_rows = rows_view(self.curvature[index])[chunk.row_start:chunk.row_stop]
            fn(index, chunk, rows, z.div_(d_rows.sqrt()))  # z is a per-thread scratch: dividing in place is safe

        self.noise.for_each_chunk(step_seed, items, scaled, only_chunks)


def rademacher_(z: torch.Tensor) -> torch.Tensor:
    """+-1 from the sign of a Gaussian draw (0 counts as +1), in place."""
    return z.ge_(0).mul_(2).sub_(1)


class RademacherNoise:
    """u = sign(z): independent +-1 entries, as reproducible as z."""

    def __init__(self, noise: NoiseSource):
        self.noise = noise

    def for_each_chunk(self, step_seed: int, items: Iterable[tuple[int, torch.Tensor]], fn: ChunkFn,
                       only_chunks: Container[int] | None = None) -> None:
        self.noise.for_each_chunk(step_seed, items, lambda i, c, rows, z: fn(i, c, rows, rademacher_(z)), only_chunks)


def is_low_rank(param: torch.Tensor) -> bool:
    return param.dim() >= 2


class LowRankNoise:
    """LOZO's direction Z_b = U_b V_b^T (m x r times r x n) for blocks with >= 2 dims, z for the others.

    U's rows for a chunk are drawn from (step seed, block, chunk), like z; V from (window seed, block).
    V is kept for the current window (sum of n*r floats), never U V^T for a whole tensor. The entries of
    U V^T have variance r, as in the authors' code (no 1/r: their learning rates transfer).
    """

    def __init__(self, noise: NoiseSource, blocks: Sequence[Block], rank: int):
        self.noise = noise
        self.rank = rank
        self.low_rank = {b.index for b in blocks if is_low_rank(b.param)}
        self.shapes = {b.index: rows_view(b.param).shape for b in blocks}
        self.devices = {b.index: b.param.device for b in blocks}
        self.window_seed: int | None = None
        self._v: dict[int, torch.Tensor] = {}
        self._local = threading.local()

    # -- seeded draws ----------------------------------------------------------------------------
    def _gen(self, device: torch.device) -> torch.Generator:
        gens = getattr(self._local, "gens", None)
        if gens is None:
            gens = self._local.gens = {}
        if str(device) not in gens:
            gens[str(device)] = torch.Generator(device=device)
        return gens[str(device)]

    def draw_v(self, window_seed: int, index: int) -> torch.Tensor:
        """V_b (n x r) of a window: a pure function of (window seed, block)."""
        n = self.shapes[index][1]
        gen = self._gen(self.devices[index]).manual_seed(chunk_seed(window_seed, index, 1 << 40))
        return torch.randn(n, self.rank, generator=gen, device=self.devices[index])

    def draw_u(self, step_seed: int, index: int, chunk: Chunk) -> torch.Tensor:
        """The rows of U_b (rows x r) under one chunk of the block."""
        device = self.devices[index]
        gen = self._gen(device).manual_seed(chunk_seed(step_seed, index, chunk.index))
        return torch.randn(chunk.row_stop - chunk.row_start, self.rank, generator=gen, device=device)

    def set_window(self, window_seed: int) -> None:
        """Resample V (a new window) unless it is already this window's."""
        if window_seed != self.window_seed:
            self.window_seed = int(window_seed)
            self._v = {i: self.draw_v(self.window_seed, i) for i in sorted(self.low_rank)}

    def v(self, index: int) -> torch.Tensor:
        return self._v[index]

    def window_v(self) -> dict[int, torch.Tensor]:
        """The current window's V of every low-rank block (the tensors, not copies: set_window replaces them)."""
        return dict(self._v)

    # -- the field ---------------------------------------------------------------------------------
    def for_each_chunk(self, step_seed: int, items: Iterable[tuple[int, torch.Tensor]], fn: ChunkFn,
                       only_chunks: Container[int] | None = None) -> None:
        if self.window_seed is None:
            raise RuntimeError("LowRankNoise used before set_window()")

        def direction(index: int, chunk: Chunk, rows: torch.Tensor) -> None:
            if index in self.low_rank:
                z = self.draw_u(step_seed, index, chunk) @ self._v[index].T
            else:
                z = self.noise.draw(step_seed, index, chunk, rows.shape[1], rows.device)
            fn(index, chunk, rows, z)

        self.noise.map_chunks(items, direction, only_chunks)
