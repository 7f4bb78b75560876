"""Applying theta + scale_b * z_b to a model, two ways, both drawing z from the same `NoiseSource`.

`VirtualPerturbation` (default): parameters are never written. While the context is open, every
module that owns a perturbed block computes its forward with theta + scale * z made on the fly:
small tensors as transient copies made a layer's worth at a time (at most GROUP_LIMIT elements),
large ones chunk by chunk (nn.Linear by output rows, nn.Embedding by the rows it looks up). So the
extra memory is bounded, and the restore is exact in every dtype: there is nothing to undo, and no fp16 /
bf16 round-trip drift (a known failure of in-place MeZO, ../shared/docs/peers-and-pitfalls.md §3.1).
It requires that each parameter is only read inside its owning module's forward; a block that no
forward touched is reported as an error rather than silently left unperturbed.

`add_noise_` (in-place sweep): theta_b += scale_b * z_b for every block, on the thread pool. Used
for the update, and for perturbing when a forward runs many times per loss (generation).
"""
from __future__ import annotations

import types
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zo.blocks import Block
from zo.noise import NoiseSource, block_chunks, rows_view

# Perturbed copies of tensors up to this size are materialized (one matmul); larger ones go by rows.
MATERIALIZE_LIMIT = 1 << 22
# Materialized copies are made for consecutive blocks of one layer at once, up to this many elements:
# a single block often has one or two noise chunks, which would leave the other pool threads idle.
GROUP_LIMIT = 1 << 23


def add_noise_(noise: NoiseSource, step_seed: int, blocks: Sequence[Block], scales: Sequence[float],
               decay: Sequence[float] | None = None,
               after_chunk: Callable[[int, int, torch.Tensor], None] | None = None) -> None:
    """In place: theta_b <- theta_b * decay_b + scales_b * z_b, one pass over every chunk.

    `after_chunk(block_index, chunk_index, rows)` sees each chunk right after it is written (used to
    collect block statistics in the same pass, while the chunk is still in cache).
    """
    items = [(b.index, b.param.data) for b in blocks]
    scale_of = {b.index: float(s) for b, s in zip(blocks, scales)}
    decay_of = {b.index: float(d) for b, d in zip(blocks, decay)} if decay is not None else {}

    def apply(block_index: int, chunk, rows: torch.Tensor, z: torch.Tensor) -> None:
        factor = decay_of.get(block_index, 1.0)
        if factor != 1.0:
            rows.mul_(factor)
        scale = scale_of[block_index]
        if scale != 0.0:
            if rows.dtype in (torch.float16, torch.bfloat16):  # same single rounding as the virtual path
                rows.copy_(_perturbed_rows(rows, z, scale))
            else:
                rows.add_(z if z.dtype == rows.dtype else z.to(rows.dtype), alpha=scale)
        if after_chunk is not None:
            after_chunk(block_index, chunk.index, rows)

    noise.for_each_chunk(step_seed, items, apply)


def _perturbed_rows(rows: torch.Tensor, z: torch.Tensor, scale: float) -> torch.Tensor:
    """theta + scale*z with one rounding: half-precision weights are computed in float32."""
    if rows.dtype in (torch.float16, torch.bfloat16):
        return (rows.float() + z * scale).to(rows.dtype)
    return torch.add(rows, z if z.dtype == rows.dtype else z.to(rows.dtype), alpha=scale)


class VirtualPerturbation:
    """Context manager: forwards inside see theta + scales_b * z_b(step_seed); theta is untouched."""

    def __init__(self, model: nn.Module, blocks: Sequence[Block], noise: NoiseSource, step_seed: int,
                 scales: Sequence[float]):
        self.model = model
        self.noise = noise
        self.step_seed = int(step_seed)
        self.scale_of = {id(b.param): (b.index, float(s)) for b, s in zip(blocks, scales) if float(s) != 0.0}
        self.names = {b.index: b.name for b in blocks}
        self.applied: dict[int, int] = {}
        self._undo: list[Callable[[], None]] = []
        self._group_of = self._prefetch_groups([b for b in blocks if id(b.param) in self.scale_of])
        self._ready: dict[int, torch.Tensor] = {}  # id(param) -> its perturbed copy, made with its group

    @staticmethod
    def _prefetch_groups(blocks: Sequence[Block]) -> dict[int, list[torch.Tensor]]:
        """id(param) -> the params materialized together with it: runs of consecutive small blocks of
        one layer (a layer's modules run one after another), at most GROUP_LIMIT elements in all."""
        group_of: dict[int, list[torch.Tensor]] = {}
        group: list[torch.Tensor] = []
        size, layer = 0, None
        for block in blocks:
            numel = block.param.numel()
            if numel > MATERIALIZE_LIMIT:
                continue
            if group and (block.layer is None or block.layer != layer or size + numel > GROUP_LIMIT):
                group, size = [], 0
            group.append(block.param)
            size += numel
            layer = block.layer
            group_of[id(block.param)] = group
        return group_of

    # -- per-module strategies ----------------------------------------------------------------
    def _scale(self, param: torch.Tensor) -> tuple[int, float]:
        index, scale = self.scale_of[id(param)]
        self.applied[index] = self.applied.get(index, 0) + 1
        return index, scale

    def _perturbed_full(self, param: torch.Tensor) -> torch.Tensor:
        """theta + scale*z materialized (with the rest of its prefetch group if not made yet)."""
        self._scale(param)
        ready = self._ready.pop(id(param), None)
        if ready is None:
            self._materialize(self._group_of.get(id(param), [param]))
            ready = self._ready.pop(id(param))
        return ready

    def _materialize(self, params: Sequence[torch.Tensor]) -> None:
        """Perturbed copies of `params` into self._ready, every chunk of them on the noise thread pool."""
        targets: dict[int, tuple[torch.Tensor, float]] = {}
        items = []
        for param in params:
            index, scale = self.scale_of[id(param)]
            out = torch.empty_like(param)
            self._ready[id(param)] = out
            targets[index] = (rows_view(out), scale)
            items.append((index, param.detach()))

        def fill(index: int, chunk, rows: torch.Tensor, z: torch.Tensor) -> None:
            out_rows, scale = targets[index]
            target = out_rows[chunk.row_start:chunk.row_stop]
            if rows.dtype == torch.float32:  # straight into the output: no per-chunk temporary
                torch.add(rows, z, alpha=scale, out=target)
            else:
                target.copy_(_perturbed_rows(rows, z, scale))

        self.noise.for_each_chunk(self.step_seed, items, fill)

    def _maybe_param(self, param: torch.Tensor | None) -> torch.Tensor | None:
        if param is None or id(param) not in self.scale_of:
            return param
        return self._perturbed_full(param)

    def _linear_forward(self, module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        weight = module._parameters["weight"]
        bias = self._maybe_param(module._parameters.get("bias"))
        if id(weight) not in self.scale_of:
            return F.linear(x, weight, bias)
        if weight.numel() <= MATERIALIZE_LIMIT:  # one matmul on a transient perturbed copy
            return F.linear(x, self._perturbed_full(weight), bias)
        # Large (e.g. a tied vocabulary head): by output rows, never the whole perturbed matrix.
        index, scale = self._scale(weight)
        pieces: dict[int, torch.Tensor] = {}

        def piece(_index: int, chunk, rows: torch.Tensor, z: torch.Tensor) -> None:
            b = None if bias is None else bias[chunk.row_start:chunk.row_stop]
            pieces[chunk.index] = F.linear(x, _perturbed_rows(rows, z, scale), b)

        self.noise.for_each_chunk(self.step_seed, [(index, weight.detach())], piece)
        return torch.cat([pieces[k] for k in sorted(pieces)], dim=-1)

    def _embedding_forward(self, module: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        weight = module._parameters["weight"]
        if id(weight) in self.scale_of and module.max_norm is not None:
            raise NotImplementedError("virtual perturbation of nn.Embedding with max_norm; use --perturbation inplace")
        if id(weight) not in self.scale_of:
            return F.embedding(ids, weight, module.padding_idx, module.max_norm, module.norm_type,
                               module.scale_grad_by_freq, module.sparse)
        index, scale = self._scale(weight)
        # Only the chunks holding looked-up rows are drawn (about half of a vocabulary for a batch of
        # short prompts), and each distinct row is perturbed once. The distinct ids cross to the host
        # once per forward (torch.unique syncs anyway); everything after is indexing without masks, so
        # an accelerator is not synchronized per chunk.
        unique_ids, inverse = torch.unique(ids.reshape(-1), return_inverse=True)
        rows_per_chunk = block_chunks(weight.shape)[0].row_stop
        by_chunk: dict[int, list[tuple[int, int]]] = {}
        for position, row in enumerate(unique_ids.tolist()):
            by_chunk.setdefault(row // rows_per_chunk, []).append((position, row % rows_per_chunk))
        table = torch.empty((unique_ids.numel(), weight.shape[1]), dtype=weight.dtype, device=weight.device)
        targets = {k: (torch.tensor([p for p, _ in pairs], device=weight.device),
                       torch.tensor([r for _, r in pairs], device=weight.device)) for k, pairs in by_chunk.items()}

        def lookup(_index: int, chunk, rows: torch.Tensor, z: torch.Tensor) -> None:
            positions, local = targets[chunk.index]  # same arithmetic as _perturbed_rows, rounded once
            table[positions] = _perturbed_rows(rows[local], z[local], scale)

        self.noise.for_each_chunk(self.step_seed, [(index, weight.detach())], lookup, only_chunks=by_chunk.keys())
        return table[inverse].reshape(*ids.shape, weight.shape[1])

    # -- installing and removing --------------------------------------------------------------
    def _install(self, module: nn.Module) -> None:
        owned = [(name, p) for name, p in module._parameters.items() if p is not None and id(p) in self.scale_of]
        if not owned:
            return
        has_instance_forward = "forward" in module.__dict__
        if type(module) is nn.Linear and not has_instance_forward:
            module.forward = types.MethodType(lambda m, x: self._linear_forward(m, x), module)
            self._undo.append(lambda m=module: m.__dict__.pop("forward", None))
            return
        if type(module) is nn.Embedding and not has_instance_forward:
            module.forward = types.MethodType(lambda m, ids: self._embedding_forward(m, ids), module)
            self._undo.append(lambda m=module: m.__dict__.pop("forward", None))
            return

        # Any other module: swap in materialized theta + scale*z for the duration of its forward.
        def pre_hook(mod: nn.Module, _args) -> None:
            for name, p in owned:
                mod._parameters[name] = self._perturbed_full(p)

        def post_hook(mod: nn.Module, _args, _out) -> None:
            for name, p in owned:
                mod._parameters[name] = p

        handles = [module.register_forward_pre_hook(pre_hook), module.register_forward_hook(post_hook)]

        def undo(mod: nn.Module = module) -> None:
            for handle in handles:
                handle.remove()
            for name, p in owned:
                mod._parameters[name] = p

        self._undo.append(undo)

    def __enter__(self) -> "VirtualPerturbation":
        self.applied.clear()
        for module in self.model.modules():
            self._install(module)
        return self

    def __exit__(self, *exc) -> None:
        self._ready.clear()
        while self._undo:
            self._undo.pop()()

    def check_all_applied(self) -> None:
        """Raise if a perturbed block was never used by its module's forward (it would be silently skipped)."""
        missing = sorted(idx for idx, _ in self.scale_of.values() if idx not in self.applied)
        if missing:
            names = ", ".join(self.names[i] for i in missing[:8])
            raise RuntimeError(
                f"virtual perturbation did not reach {len(missing)} block(s) ({names}): the model reads them "
                "outside their module's forward. Use --perturbation inplace for this architecture.")
