"""Applying theta + scale_b * z_b to a model, two ways, both drawing z from the same `NoiseSource`.

`VirtualPerturbation` (default): parameters are never written. While the context is open, every
module that owns a perturbed block computes its forward with theta + scale * z made on the fly:
small tensors as transient copies made a layer's worth at a time (at most GROUP_LIMIT elements),
large ones chunk by chunk (nn.Linear by output rows, nn.Embedding by the rows it looks up). So the
extra memory is bounded, and the restore is exact in every dtype: there is nothing to undo, and no fp16 /
bf16 round-trip drift (a known failure of in-place MeZO, ../shared/docs/peers-and-pitfalls.md §3.1).
It requires that each parameter is only read inside its owning module's forward; a block that no
forward touched is reported as an error rather than silently left unperturbed.

Paired (`signs=(1, -1)`, `TwoPointProbe(pair=True)`): the + and - forwards of a step run as one forward of the
doubled batch, each chunk of z drawn once for both (zo.paired_calls). Bit for bit the same losses; off by default
because on the 2-core development CPU it measured slower than two forwards (docs/benchmarks.md).

`add_noise_` (in-place sweep): theta_b += scale_b * z_b for every block, on the thread pool. Used
for the update, and for perturbing when a forward runs many times per loss (generation).
"""
from __future__ import annotations

import logging
import types
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zo.blocks import Block
from zo.noise import NoiseSource, ThreadScratch, block_chunks, rows_view
from zo.paired_calls import PairedCalls, PairingUnsupported

log = logging.getLogger(__name__)

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


def _perturbed_rows(rows: torch.Tensor, z: torch.Tensor, scale: float, scratch: ThreadScratch | None = None
                    ) -> torch.Tensor:
    """theta + scale*z with one rounding: half-precision weights are computed in float32.

    With `scratch` (float32 rows), the result goes to this thread's reusable buffer: valid until the thread's
    next call. Pool workers then allocate nothing per chunk; glibc keeps each thread's freed memory in its own
    arena, which showed up as +7% peak RSS of a step."""
    if rows.dtype in (torch.float16, torch.bfloat16):
        return (rows.float() + z * scale).to(rows.dtype)
    if scratch is not None and rows.dtype == torch.float32 and z.dtype == torch.float32:
        out = scratch.get(rows.numel(), rows.device).view(rows.shape)
        return torch.add(rows, z, alpha=scale, out=out)
    return torch.add(rows, z if z.dtype == rows.dtype else z.to(rows.dtype), alpha=scale)


def _gather_rows(tensor: torch.Tensor, index: torch.Tensor, scratch: ThreadScratch) -> torch.Tensor:
    """tensor[index] (rows), float32 into this thread's reusable buffer."""
    if tensor.dtype != torch.float32:
        return tensor[index]
    out = scratch.get(index.numel() * tensor.shape[1], tensor.device).view(index.numel(), tensor.shape[1])
    return torch.index_select(tensor, 0, index, out=out)


# Per-thread buffers of the chunk-wise paths (vocabulary head by rows, embedding lookup).
_PERTURBED, _GATHERED_ROWS, _GATHERED_Z = ThreadScratch(), ThreadScratch(), ThreadScratch()


class VirtualPerturbation:
    """Context manager: forwards inside see theta + scales_b * z_b(step_seed); theta is untouched.

    With `signs=(1, -1)` the context is *paired*: the model's top-level forward runs on its inputs stacked twice,
    and every perturbed module gives the first copy theta + scale*z and the second theta - scale*z from one draw
    of z (zo.paired_calls: the first loss call returns L+, the second L- from the same forward).
    """

    def __init__(self, model: nn.Module, blocks: Sequence[Block], noise: NoiseSource, step_seed: int,
                 scales: Sequence[float], signs: Sequence[float] = (1.0,)):
        self.model = model
        self.noise = noise
        self.step_seed = int(step_seed)
        self.signs = tuple(float(s) for s in signs)
        if not self.signs:
            raise ValueError("signs must not be empty")
        self.scale_of = {id(b.param): (b.index, float(s)) for b, s in zip(blocks, scales) if float(s) != 0.0}
        self.names = {b.index: b.name for b in blocks}
        self.applied: dict[int, int] = {}
        self._undo: list[Callable[[], None]] = []
        self._group_of = self._prefetch_groups([b for b in blocks if id(b.param) in self.scale_of], len(self.signs))
        self._ready: dict[int, list[torch.Tensor]] = {}  # id(param) -> its perturbed copy per branch
        self.pairs = PairedCalls(len(self.signs)) if self.paired else None

    @property
    def paired(self) -> bool:
        return len(self.signs) > 1

    @staticmethod
    def _prefetch_groups(blocks: Sequence[Block], branches: int = 1) -> dict[int, list[torch.Tensor]]:
        """id(param) -> the params materialized together with it: runs of consecutive small blocks of
        one layer (a layer's modules run one after another), at most GROUP_LIMIT elements in all copies."""
        group_of: dict[int, list[torch.Tensor]] = {}
        group: list[torch.Tensor] = []
        size, layer = 0, None
        for block in blocks:
            numel = block.param.numel() * branches
            if block.param.numel() > MATERIALIZE_LIMIT:
                continue
            if group and (block.layer is None or block.layer != layer or size + numel > GROUP_LIMIT):
                group, size = [], 0
            group.append(block.param)
            size += numel
            layer = block.layer
            group_of[id(block.param)] = group
        return group_of

    # -- branches: the batch halves of a paired forward ------------------------------------------
    def _split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The input of each branch (the whole input when not paired)."""
        if not self.paired:
            return [x]
        half = self.pairs.half_batch if self.pairs is not None else None
        branches = len(self.signs)
        if half is None or x.dim() == 0 or x.shape[0] % (branches * half):
            raise PairingUnsupported("a perturbed module ran outside a paired model call, or on an input whose "
                                     "first dimension is not the doubled batch")
        return list(x.chunk(branches))

    def _join(self, outs: list):
        if len(outs) == 1:
            return outs[0]
        first = outs[0]
        if torch.is_tensor(first):
            return torch.cat(outs)
        if isinstance(first, (tuple, list)):
            return type(first)(self._join(list(parts)) if parts[0] is not None else None for parts in zip(*outs))
        raise PairingUnsupported(f"a perturbed module returned {type(first).__name__}, not tensors")

    # -- per-module strategies ----------------------------------------------------------------
    def _scale(self, param: torch.Tensor) -> tuple[int, float]:
        index, scale = self.scale_of[id(param)]
        self.applied[index] = self.applied.get(index, 0) + 1
        return index, scale

    def _perturbed_full(self, param: torch.Tensor) -> list[torch.Tensor]:
        """theta + sign*scale*z materialized per branch (with the rest of its prefetch group if not made yet)."""
        self._scale(param)
        ready = self._ready.pop(id(param), None)
        if ready is None:
            self._materialize(self._group_of.get(id(param), [param]))
            ready = self._ready.pop(id(param))
        return ready

    def _materialize(self, params: Sequence[torch.Tensor]) -> None:
        """Perturbed copies of `params` into self._ready, every chunk of them on the noise thread pool; each
        chunk of z is drawn once for all branches."""
        targets: dict[int, list[tuple[torch.Tensor, float]]] = {}
        items = []
        for param in params:
            index, scale = self.scale_of[id(param)]
            outs = [torch.empty_like(param) for _ in self.signs]
            self._ready[id(param)] = outs
            targets[index] = [(rows_view(out), sign * scale) for out, sign in zip(outs, self.signs)]
            items.append((index, param.detach()))

        def fill(index: int, chunk, rows: torch.Tensor, z: torch.Tensor) -> None:
            for out_rows, scale in targets[index]:
                target = out_rows[chunk.row_start:chunk.row_stop]
                if rows.dtype == torch.float32:  # straight into the output: no per-chunk temporary
                    torch.add(rows, z, alpha=scale, out=target)
                else:
                    target.copy_(_perturbed_rows(rows, z, scale))

        self.noise.for_each_chunk(self.step_seed, items, fill)

    def _maybe_param(self, param: torch.Tensor | None) -> list[torch.Tensor | None]:
        if param is None or id(param) not in self.scale_of:
            return [param] * len(self.signs)
        return self._perturbed_full(param)

    def _linear_forward(self, module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        weight = module._parameters["weight"]
        biases = self._maybe_param(module._parameters.get("bias"))
        xs = self._split(x)
        if id(weight) not in self.scale_of:
            return self._join([F.linear(xb, weight, b) for xb, b in zip(xs, biases)])
        if weight.numel() <= MATERIALIZE_LIMIT:  # one matmul per branch on a transient perturbed copy
            weights = self._perturbed_full(weight)
            if not self.paired:
                return F.linear(x, weights[0], biases[0])
            return _linear_into_halves(xs, weights, biases)
        # Large (e.g. a tied vocabulary head): by output rows, never the whole perturbed matrix.
        index, scale = self._scale(weight)
        pieces: list[dict[int, torch.Tensor]] = [{} for _ in self.signs]

        def piece(_index: int, chunk, rows: torch.Tensor, z: torch.Tensor) -> None:
            for branch, sign in enumerate(self.signs):
                b = biases[branch]
                b = None if b is None else b[chunk.row_start:chunk.row_stop]
                pieces[branch][chunk.index] = F.linear(xs[branch], _perturbed_rows(rows, z, sign * scale, _PERTURBED), b)

        self.noise.for_each_chunk(self.step_seed, [(index, weight.detach())], piece)
        return self._join([torch.cat([p[k] for k in sorted(p)], dim=-1) for p in pieces])

    def _embedding_forward(self, module: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        weight = module._parameters["weight"]
        if id(weight) in self.scale_of and module.max_norm is not None:
            raise NotImplementedError("virtual perturbation of nn.Embedding with max_norm; use --perturbation inplace")
        if id(weight) not in self.scale_of:
            return F.embedding(ids, weight, module.padding_idx, module.max_norm, module.norm_type,
                               module.scale_grad_by_freq, module.sparse)
        index, scale = self._scale(weight)
        # Only the chunks holding looked-up rows are drawn (about half of a vocabulary for a batch of
        # short prompts), and each distinct row is perturbed once per branch. The distinct ids cross to the
        # host once per forward (torch.unique syncs anyway) and their chunk-local rows go back in one copy;
        # everything after is indexing without masks, so an accelerator is not synchronized per chunk.
        unique_ids, inverse = torch.unique(ids.reshape(-1), return_inverse=True)
        rows_per_chunk = block_chunks(weight.shape)[0].row_stop
        by_chunk: dict[int, list[tuple[int, int]]] = {}
        for position, row in enumerate(unique_ids.tolist()):
            by_chunk.setdefault(row // rows_per_chunk, []).append((position, row % rows_per_chunk))
        tables = [torch.empty((unique_ids.numel(), weight.shape[1]), dtype=weight.dtype, device=weight.device)
                  for _ in self.signs]
        # every chunk's (positions, local rows) in one host-to-device copy, sliced per chunk on the device
        spans, flat = {}, ([], [])
        for k, pairs in by_chunk.items():
            spans[k] = (len(flat[0]), len(flat[0]) + len(pairs))
            flat[0].extend(p for p, _ in pairs)
            flat[1].extend(r for _, r in pairs)
        both = torch.tensor(flat, device=weight.device)
        targets = {k: (both[0, a:b], both[1, a:b]) for k, (a, b) in spans.items()}

        def lookup(_index: int, chunk, rows: torch.Tensor, z: torch.Tensor) -> None:
            positions, local = targets[chunk.index]  # same arithmetic as _perturbed_rows, rounded once
            picked_rows, picked_z = _gather_rows(rows, local, _GATHERED_ROWS), _gather_rows(z, local, _GATHERED_Z)
            for table, sign in zip(tables, self.signs):
                table[positions] = _perturbed_rows(picked_rows, picked_z, sign * scale, _PERTURBED)

        self.noise.for_each_chunk(self.step_seed, [(index, weight.detach())], lookup, only_chunks=by_chunk.keys())
        inverse_parts = self._split(inverse.reshape(ids.shape))  # each branch's ids, as rows of its table
        return self._join([table[inv] for table, inv in zip(tables, inverse_parts)])

    def _branched_forward(self, module: nn.Module, owned: list, forward: Callable, args: tuple, kwargs: dict):
        """Any module in a paired context: its own forward once per branch on that branch's share of every
        batch-shaped input, with that branch's perturbed parameters swapped in."""
        if self.pairs.half_batch is None:
            raise PairingUnsupported("a perturbed module ran outside a paired model call")
        doubled = len(self.signs) * self.pairs.half_batch
        perturbed = {name: self._perturbed_full(p) for name, p in owned}

        def share(value, branch: int):  # batch-shaped inputs are split, anything else is passed whole
            if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] % doubled == 0:
                return self._split(value)[branch]
            return value

        outs = []
        for branch in range(len(self.signs)):
            for name, _ in owned:
                module._parameters[name] = perturbed[name][branch]
            try:
                outs.append(forward(*(share(a, branch) for a in args),
                                    **{k: share(v, branch) for k, v in kwargs.items()}))
            finally:
                for name, p in owned:
                    module._parameters[name] = p
        return self._join(outs)

    # -- installing and removing --------------------------------------------------------------
    def _set_forward(self, module: nn.Module, forward: Callable) -> None:
        """Replace module.forward for the context's lifetime (an existing instance forward, e.g. an
        accelerate hook, is put back afterwards)."""
        previous = module.__dict__.get("forward")
        module.forward = forward

        def undo(m: nn.Module = module) -> None:
            if previous is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = previous
        self._undo.append(undo)

    def _install(self, module: nn.Module) -> None:
        owned = [(name, p) for name, p in module._parameters.items() if p is not None and id(p) in self.scale_of]
        if not owned:
            return
        has_instance_forward = "forward" in module.__dict__
        if type(module) is nn.Linear and not has_instance_forward:
            self._set_forward(module, types.MethodType(lambda m, x: self._linear_forward(m, x), module))
            return
        if type(module) is nn.Embedding and not has_instance_forward:
            self._set_forward(module, types.MethodType(lambda m, ids: self._embedding_forward(m, ids), module))
            return
        if self.paired:
            forward = module.forward
            self._set_forward(module, lambda *args, **kwargs: self._branched_forward(module, owned, forward,
                                                                                      args, kwargs))
            return

        # Any other module: swap in materialized theta + scale*z for the duration of its forward.
        def pre_hook(mod: nn.Module, _args) -> None:
            for name, p in owned:
                mod._parameters[name] = self._perturbed_full(p)[0]

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
        try:
            for module in self.model.modules():
                self._install(module)
            if self.paired:
                forward = self.model.forward
                self._set_forward(self.model, lambda *args, **kwargs: self.pairs.call(forward, args, kwargs))
        except BaseException:
            self.__exit__()
            raise
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


def _linear_into_halves(xs: list[torch.Tensor], weights: list[torch.Tensor],
                        biases: list[torch.Tensor | None]) -> torch.Tensor:
    """Each branch's F.linear written straight into its rows of one output (no concatenation copy): the same
    (add)mm on the flattened input that F.linear runs, so the same bits."""
    rows = xs[0].shape[:-1]
    out = torch.empty((len(xs) * rows[0], *rows[1:], weights[0].shape[0]), dtype=xs[0].dtype, device=xs[0].device)
    for xb, w, b, target in zip(xs, weights, biases, out.chunk(len(xs))):
        flat_x, flat_out = xb.reshape(-1, xb.shape[-1]), target.view(-1, w.shape[0])
        if b is None:
            torch.mm(flat_x, w.t(), out=flat_out)
        else:
            torch.addmm(b, flat_x, w.t(), out=flat_out)
    return out


class TwoPointProbe:
    """(L(theta + scales*z), L(theta - scales*z)) with virtual perturbations, theta never written.

    `pair=True`: one forward of the doubled batch draws each z once for both losses (zo.paired_calls). A loss
    function whose model calls cannot be paired gets two separate forwards instead (the same losses, z drawn
    twice), and pairing is not tried again for this probe: `paired` then reads False.
    """

    def __init__(self, pair: bool = False):
        self.paired = bool(pair)

    def losses(self, model: nn.Module, blocks: Sequence[Block], noise: NoiseSource, step_seed: int,
               scales: Sequence[float], loss_fn: Callable[[], torch.Tensor]) -> tuple[float, float]:
        if self.paired:
            ctx = VirtualPerturbation(model, blocks, noise, step_seed, scales, signs=(1.0, -1.0))
            try:
                with ctx:
                    plus = float(loss_fn())
                    ctx.pairs.next_loss_call()
                    minus = float(loss_fn())
                    ctx.pairs.check_consumed()
                ctx.check_all_applied()
                return plus, minus
            except PairingUnsupported as why:
                log.warning("paired forward not possible for this loss (%s): two forwards per step from now on", why)
                self.paired = False
        losses = []
        for sign in (1.0, -1.0):
            ctx = VirtualPerturbation(model, blocks, noise, step_seed, [sign * s for s in scales])
            with ctx:
                losses.append(float(loss_fn()))
            ctx.check_all_applied()
        return losses[0], losses[1]
