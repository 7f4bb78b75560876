"""Running the + and - perturbed forwards of a ZO step as one forward of a doubled batch.

A loss function calls the model once (or once per micro-batch) and reduces its logits to a loss. To evaluate
L(theta + eps z) and L(theta - eps z) with one pass over the layers (so each layer's z is drawn once, not twice),
the model's top-level forward is wrapped while a paired `VirtualPerturbation` is open:

- the first loss call *records*: each model call runs on its inputs stacked twice along the batch dimension;
  the perturbed modules give the first copy theta + eps z and the second theta - eps z; the first copy's logits
  are returned, the second copy's are kept;
- the second loss call *replays*: each model call must have the same inputs as the recorded call at the same
  position, and gets the kept logits without running anything.

Only calls whose result is per-example logits can be split that way: no cache, no loss computed inside the
model, no other batch-shaped output. Anything else raises `PairingUnsupported` before any work is done (or at
the first mismatching call), and the caller falls back to two separate forwards (same numbers, more noise
draws).
"""
from __future__ import annotations

from typing import Any, Callable

import torch


class PairingUnsupported(RuntimeError):
    """This loss function's model calls cannot be served by one doubled forward."""


def _same_input(a: Any, b: Any) -> bool:
    if torch.is_tensor(a) or torch.is_tensor(b):
        return (torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and a.dtype == b.dtype
                and (a is b or torch.equal(a, b)))
    return a == b


class PairedCalls:
    """The top-level forward wrapper's state: recorded calls and the outputs kept for the later branches."""

    def __init__(self, branches: int):
        self.branches = branches
        self.recording = True
        self.calls: list[tuple[dict, list]] = []  # (inputs, outputs of branches 1..n-1 still to serve)
        self.position = 0
        self.half_batch: int | None = None  # the batch size of the call running now (per branch)

    def next_loss_call(self) -> None:
        """Called between the loss calls: from now on, model calls are served from the record."""
        self.recording = False
        self.position = 0

    def call(self, forward: Callable, args: tuple, kwargs: dict):
        if args:
            raise PairingUnsupported("positional model inputs (a paired forward needs keyword inputs)")
        return self._record(forward, kwargs) if self.recording else self._replay(kwargs)

    def _record(self, forward: Callable, kwargs: dict):
        if kwargs.get("use_cache") is not False:
            raise PairingUnsupported("the model is called with a cache (use_cache is not False)")
        if kwargs.get("labels") is not None:
            raise PairingUnsupported("the loss is computed inside the model (labels given)")
        tensors = {k: v for k, v in kwargs.items() if torch.is_tensor(v)}
        main = tensors.get("input_ids", tensors.get("inputs_embeds"))
        if main is None or main.dim() == 0:
            raise PairingUnsupported("no input_ids / inputs_embeds to double")
        batch = main.shape[0]
        if any(v.dim() == 0 or v.shape[0] != batch for v in tensors.values()):
            raise PairingUnsupported("a tensor input without the batch dimension first")
        doubled = {k: torch.cat([v] * self.branches) for k, v in tensors.items()}
        self.half_batch = batch
        try:
            out = forward(**{**kwargs, **doubled})
        finally:
            self.half_batch = None
        if not hasattr(out, "items"):
            raise PairingUnsupported(f"the model returns {type(out).__name__}, not a ModelOutput with logits")
        extra = [k for k, v in out.items() if k != "logits" and v is not None]
        if extra or getattr(out, "logits", None) is None:
            raise PairingUnsupported(f"the model returns batch outputs other than logits ({extra})")
        parts = out.logits.chunk(self.branches)
        self.calls.append((dict(kwargs), [type(out)(logits=p) for p in parts[1:]]))
        return type(out)(logits=parts[0])

    def _replay(self, kwargs: dict):
        if self.position >= len(self.calls):
            raise PairingUnsupported("the second loss call makes more model calls than the first")
        recorded, outputs = self.calls[self.position]
        if recorded.keys() != kwargs.keys() or not all(_same_input(recorded[k], kwargs[k]) for k in kwargs):
            raise PairingUnsupported("the second loss call gives the model other inputs than the first")
        self.position += 1
        return outputs.pop(0)

    def check_consumed(self) -> None:
        if self.recording or self.position != len(self.calls) or any(outs for _, outs in self.calls):
            raise PairingUnsupported("the loss calls did not use every recorded forward once")
