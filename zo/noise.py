"""Seeded Gaussian noise z, regenerated on demand so it never has to be stored.

z for a block is defined chunk by chunk: the block is viewed as rows (dim 0 by the rest; a 1-D
tensor is rows of one element) and cut into row ranges of about CHUNK_ELEMENTS elements. Chunk k of
block b at step seed s is drawn from a dedicated `torch.Generator` seeded with mix(s, b, k). So:

- every sweep (perturb, update, replay) sees exactly the same numbers, because the draw shapes and
  order are fixed by the block's shape, never by how a caller iterates;
- z does not depend on the number of threads or on which thread draws a chunk, so CPU sweeps run
  on a small thread pool (torch's CPU `normal_` is single-threaded; two threads halve a sweep);
- the global RNG is never touched, so dropout and data shuffling are independent of the noise;
- noise is always drawn in float32, so z is the same whatever dtype the model is loaded in.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Container, Iterable, Iterator

import torch

CHUNK_ELEMENTS = 1 << 18
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def chunk_seed(step_seed: int, block_index: int, chunk_index: int) -> int:
    """A well-mixed 63-bit seed for one chunk; distinct (step, block, chunk) give unrelated streams."""
    x = _splitmix64(int(step_seed) & _MASK64)
    x = _splitmix64(x ^ (int(block_index) & _MASK64))
    x = _splitmix64(x ^ (int(chunk_index) & _MASK64))
    return x & ((1 << 63) - 1)


@dataclass(frozen=True)
class Chunk:
    index: int
    row_start: int
    row_stop: int


def rows_view(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor as a 2-D (rows, row_len) view: dim 0 by the rest; 1-D tensors as a column."""
    if tensor.dim() == 0:
        return tensor.reshape(1, 1)
    if tensor.dim() == 1:
        return tensor.reshape(-1, 1)
    return tensor.reshape(tensor.shape[0], -1)


def block_chunks(shape: torch.Size) -> list[Chunk]:
    """The fixed row ranges a block's noise is drawn in."""
    if len(shape) == 0:
        rows, row_len = 1, 1
    elif len(shape) == 1:
        rows, row_len = int(shape[0]), 1
    else:
        rows = int(shape[0])
        row_len = 1
        for size in shape[1:]:
            row_len *= int(size)
    rows_per_chunk = max(1, CHUNK_ELEMENTS // max(row_len, 1))
    return [Chunk(k, start, min(start + rows_per_chunk, rows))
            for k, start in enumerate(range(0, rows, rows_per_chunk))]


# torch's CUDA distribution kernels (ATen/native/cuda/DistributionTemplates.h) run 256 threads per block on a grid
# of min(ceil(n / 256), multiprocessors x blocks per multiprocessor) blocks, and each thread draws its own Philox
# subsequence: the grid decides which number lands on which element. So z depends on the GPU model once a chunk
# needs more blocks than the device can hold (an A100 holds 864, an H100 SXM 1056, an H100 PCIe 912, a V100 640, a
# T4 160). On the CPU, normal_ computes log / sin / cos with its own vector code on AVX2 and AVX-512 builds (the
# same numbers on both, measured) and with libm otherwise, which differs in the last bits.
CUDA_DISTRIBUTION_THREADS = 256


def _cuda_draw_grid(device: torch.device, largest_chunk: int) -> int:
    props = torch.cuda.get_device_properties(device)
    per_sm = getattr(props, "max_threads_per_multi_processor", 2048) // CUDA_DISTRIBUTION_THREADS
    wanted = -(-largest_chunk // CUDA_DISTRIBUTION_THREADS)
    return min(wanted, props.multi_processor_count * per_sm)


def _cpu_kernel() -> str:
    capability = torch.backends.cpu.get_cpu_capability().lower()
    return "avx2" if capability.startswith(("avx2", "avx512")) else capability


def noise_signature(placements: Iterable[tuple[torch.device | str, torch.Size]]) -> str:
    """What a run's z depends on besides the seeds, for blocks given as (device, shape), e.g. "cpu avx2, torch
    2.13" or "cuda grid 864, torch 2.13": the CPU kernel, or per CUDA device the grid of its largest chunk (every
    chunk's grid is min(its own need, that value)), and torch's version. Equal signatures draw equal z for every
    chunk; replaying a run's steps elsewhere rebuilds its weights only if the signatures are equal."""
    largest: dict[torch.device, int] = {}
    for device, shape in placements:
        device = torch.device(device)
        row_len = rows_view(torch.empty(shape, device="meta")).shape[1]
        chunk = max((c.row_stop - c.row_start) * row_len for c in block_chunks(torch.Size(shape)))
        largest[device] = max(largest.get(device, 0), chunk)
    cuda = sorted((d for d in largest if d.type == "cuda"), key=lambda d: d.index or 0)
    parts = [f"{'cuda' if len(cuda) == 1 else d} grid {_cuda_draw_grid(d, largest[d])}" for d in cuda]
    parts += sorted({f"cpu {_cpu_kernel()}" if d.type == "cpu" else d.type for d in largest if d.type != "cuda"})
    version = ".".join(torch.__version__.split("+")[0].split(".")[:2])
    return f"{' + '.join(parts)}, torch {version}"


def blocks_noise_signature(blocks: Iterable) -> str:
    """`noise_signature` of parameter blocks (zo.blocks.Block: anything with a `.param`) where they are now."""
    return noise_signature((b.param.device, b.param.shape) for b in blocks)


def default_threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class ThreadScratch:
    """One float32 buffer per thread and device, grown on demand and reused: pool workers then
    allocate nothing per chunk, which keeps RSS flat."""

    def __init__(self):
        self._local = threading.local()

    def get(self, numel: int, device: torch.device | str) -> torch.Tensor:
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        key = str(device)
        buf = buffers.get(key)
        if buf is None or buf.numel() < numel:
            # A normal tensor even when first needed under inference_mode, so it can be reused outside.
            with torch.inference_mode(False):
                buf = buffers[key] = torch.empty(max(numel, CHUNK_ELEMENTS), dtype=torch.float32, device=device)
        return buf[:numel]


class NoiseSource:
    """Draws chunks of z and runs per-chunk work on a thread pool for CPU tensors."""

    def __init__(self, threads: int | None = None):
        self.threads = threads or default_threads()
        self._local = threading.local()
        self._z_buffers = ThreadScratch()
        # Workers use one intra-op thread each (set per thread: OpenMP's setting is thread-local), so
        # a chunk's reductions give the same bits whichever worker runs it.
        self._pool = (ThreadPoolExecutor(self.threads, initializer=torch.set_num_threads, initargs=(1,))
                      if self.threads > 1 else None)

    def _generator(self, device: torch.device) -> torch.Generator:
        gens = getattr(self._local, "generators", None)
        if gens is None:
            gens = self._local.generators = {}
        key = str(device)
        if key not in gens:
            gens[key] = torch.Generator(device=device)
        return gens[key]

    def draw(self, step_seed: int, block_index: int, chunk: Chunk, row_len: int,
             device: torch.device, out: torch.Tensor | None = None) -> torch.Tensor:
        """z for one chunk as a float32 (rows, row_len) tensor; reuses a per-thread buffer unless `out`."""
        rows = chunk.row_stop - chunk.row_start
        if out is None:
            out = self._z_buffers.get(rows * row_len, device).view(rows, row_len)
        gen = self._generator(device)
        gen.manual_seed(chunk_seed(step_seed, block_index, chunk.index))
        out.normal_(generator=gen)
        return out

    def block_noise(self, step_seed: int, block_index: int, shape: torch.Size,
                    device: torch.device | str = "cpu") -> torch.Tensor:
        """The whole z of a block, materialized (for tests and small tensors)."""
        z = torch.empty(shape, dtype=torch.float32, device=device)
        view = rows_view(z)
        for chunk in block_chunks(shape):
            self.draw(step_seed, block_index, chunk, view.shape[1], z.device,
                      out=view[chunk.row_start:chunk.row_stop])
        return z

    def map_chunks(self, items: Iterable[tuple[int, torch.Tensor]],
                   fn: Callable[[int, Chunk, torch.Tensor], None],
                   only_chunks: Container[int] | None = None) -> None:
        """Call fn(block_index, chunk, rows_of_tensor) for every chunk, CPU chunks on the thread pool.

        `only_chunks` restricts the work to those chunk indices (the others are not drawn at all).

        Each worker runs with one intra-op thread, so per-chunk reductions give the same bits whether a
        caller is a noise sweep or a plain pass. Each chunk touches only its own rows: no locking.
        """
        jobs: list[tuple[int, Chunk, torch.Tensor]] = []
        for block_index, tensor in items:
            view = rows_view(tensor)
            for chunk in block_chunks(tensor.shape):
                if only_chunks is not None and chunk.index not in only_chunks:
                    continue
                rows = view[chunk.row_start:chunk.row_stop]
                if tensor.device.type == "cpu" and self._pool is not None:
                    jobs.append((block_index, chunk, rows))
                else:
                    fn(block_index, chunk, rows)
        if not jobs:
            return
        # Grad and inference modes are thread-local: carry the caller's into the workers.
        inference = torch.is_inference_mode_enabled()
        grad = torch.is_grad_enabled()

        def run(job: tuple[int, Chunk, torch.Tensor]) -> None:
            with torch.inference_mode(inference), torch.set_grad_enabled(grad):
                fn(*job)

        torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the pool already fills the cores
        try:
            for _ in self._pool.map(run, jobs):
                pass
        finally:
            torch.set_num_threads(torch_threads)

    def for_each_chunk(self, step_seed: int, items: Iterable[tuple[int, torch.Tensor]],
                       fn: Callable[[int, Chunk, torch.Tensor, torch.Tensor], None],
                       only_chunks: Container[int] | None = None) -> None:
        """Call fn(block_index, chunk, rows_of_tensor, z_chunk) for every chunk of every (index, tensor)
        (or only the chunks in `only_chunks`: z is a pure function of (seed, block, chunk), so skipping
        some never changes the others)."""
        def with_noise(block_index: int, chunk: Chunk, rows: torch.Tensor) -> None:
            z = self.draw(step_seed, block_index, chunk, rows.shape[1], rows.device)
            fn(block_index, chunk, rows, z)

        self.map_chunks(items, with_noise, only_chunks)

    def iter_chunks(self, step_seed: int, block_index: int, tensor: torch.Tensor
                    ) -> Iterator[tuple[Chunk, torch.Tensor, torch.Tensor]]:
        """Serial (chunk, rows_of_tensor, z_chunk) pairs of one block, for on-the-fly use in a forward."""
        view = rows_view(tensor)
        for chunk in block_chunks(tensor.shape):
            z = self.draw(step_seed, block_index, chunk, view.shape[1], tensor.device)
            yield chunk, view[chunk.row_start:chunk.row_stop], z

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
