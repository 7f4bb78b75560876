"""The ZO training loop: steps, periodic dev loss, best-state selection, logging, NaN handling.

It knows nothing about tasks or the command line: it gets an iterator of batches, a loss function
and an optional dev-loss function. Every step is appended to train_log.jsonl as it happens; the best
state (lowest dev loss) is the only weight file kept, written atomically.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm.auto import tqdm

from zo.estimator import NonFiniteLossError, ZOOptimizer
from zo.io import JsonlLog, atomic_path

log = logging.getLogger(__name__)

BEST_STATE_FILE = "best_model.safetensors"


@dataclass
class LoopResult:
    steps_done: int
    status: str  # "completed" or "stopped: ..."
    best_step: int | None = None
    best_dev_loss: float | None = None
    dev_losses: list[tuple[int, float]] = field(default_factory=list)
    # loss on a fixed train subset at the unperturbed weights, evaluated with the dev loss
    train_eval_losses: list[tuple[int, float]] = field(default_factory=list)
    best_train_eval_loss: float | None = None  # at best_step (the state evaluated on test)
    mean_perturbed_loss_last10: float | None = None  # mean L+ of the last 10 steps (inflated by the noise)
    seconds: float = 0.0


def save_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    with atomic_path(path) as tmp:
        save_model(model, str(tmp))  # handles tied tensors


def load_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_model

    load_model(model, str(path))


def train_zo(optimizer: ZOOptimizer, batches: Iterator, loss_fn: Callable[[object], torch.Tensor],
             steps: int, output_dir: Path, eval_steps: int = 0,
             dev_loss_fn: Callable[[], float] | None = None, progress: bool = True,
             log_extra: Callable[[], dict] | None = None,
             train_eval_fn: Callable[[], float] | None = None) -> LoopResult:
    """Run `steps` ZO steps; evaluate the dev loss every `eval_steps` and at the end; keep the best state.

    `train_eval_fn` (the loss on a fixed train subset) is evaluated at the same moments, on the same state.

    On return the model holds the best state by dev loss (or the last good state without a dev set).
    """
    output_dir = Path(output_dir)
    train_log = JsonlLog(output_dir / "train_log.jsonl")
    best_path = output_dir / BEST_STATE_FILE
    result = LoopResult(steps_done=0, status="completed")
    start = time.perf_counter()
    bar = tqdm(total=steps, desc="ZO steps", disable=not progress, dynamic_ncols=True)
    window: list[float] = []

    def evaluate_dev(step: int) -> None:
        line: dict = {"step": step}
        if train_eval_fn is not None:
            line["train_eval_loss"] = float(train_eval_fn())
            result.train_eval_losses.append((step, line["train_eval_loss"]))
            if dev_loss_fn is None:  # no selection: the last state is the one evaluated
                result.best_train_eval_loss = line["train_eval_loss"]
        if dev_loss_fn is None:
            if train_eval_fn is not None:
                train_log.write({**line, "seconds": round(time.perf_counter() - start, 3)})
            return
        loss = float(dev_loss_fn())
        result.dev_losses.append((step, loss))
        train_log.write({**line, "dev_loss": loss, "seconds": round(time.perf_counter() - start, 3)})
        if math.isfinite(loss) and (result.best_dev_loss is None or loss < result.best_dev_loss):
            result.best_dev_loss, result.best_step = loss, step
            result.best_train_eval_loss = line.get("train_eval_loss")
            save_weights(optimizer.model, best_path)
        log.info("step %d: dev loss %.4f (best %.4f at step %s)", step, loss, result.best_dev_loss or float("nan"),
                 result.best_step)

    try:
        for step in range(steps):
            batch = next(batches)
            step_start = time.perf_counter()
            try:
                record = optimizer.step(lambda: loss_fn(batch))
            except NonFiniteLossError as err:
                result.status = f"stopped: {err}"
                log.error("%s; keeping the last good state", err)
                break
            record_dict = record.to_dict()
            record_dict["seconds"] = round(time.perf_counter() - step_start, 4)
            if log_extra is not None:
                record_dict.update(log_extra())
            train_log.write(record_dict)
            window.append(record.loss_plus)
            result.steps_done = step + 1
            result.mean_perturbed_loss_last10 = sum(window[-10:]) / len(window[-10:])
            bar.update(1)
            grad = record.projected_grad  # None for first-order and multi-probe methods
            bar.set_postfix(loss=f"{result.mean_perturbed_loss_last10:.4f}", g="-" if grad is None else f"{grad:+.2e}")
            if eval_steps and (step + 1) % eval_steps == 0 and step + 1 < steps:
                evaluate_dev(step + 1)
        last_eval = (result.dev_losses or result.train_eval_losses or [(None, None)])[-1][0]
        if result.steps_done and last_eval != result.steps_done:
            evaluate_dev(result.steps_done)
    finally:
        bar.close()
        train_log.close()
        result.seconds = time.perf_counter() - start

    if result.best_step is not None and result.best_step != result.steps_done:
        log.info("restoring the best state (step %d, dev loss %.4f)", result.best_step, result.best_dev_loss)
        load_weights(optimizer.model, best_path)
    return result
