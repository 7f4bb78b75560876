"""The ZO training loop: steps, periodic dev loss, best-state selection, checkpoints, resume, signals.

It knows nothing about tasks or the command line: it gets an optimizer (state_dict / load_state_dict,
step(loss_fn) -> record, .model), the training batches (a TrainBatches-like object with forever() and
state_dict(), or a plain iterator), a loss function and an optional dev-loss function. Every file goes
through the run folder (zo.run.folder): step and dev lines, the best state, checkpoints.

A checkpoint holds everything the rest of the run depends on: weights, the optimizer's state (method
state, sigma history, seed stream), the data position, the best dev loss so far and the dev history,
the global RNGs, and the log's length. So a resumed run makes the same steps, bit for bit, as one
that was never stopped. A cheap checkpoint ("replay") holds no weights: the last full checkpoint plus
the (seed, projected grad) records since, re-applied with the optimizer's `replay`.
"""
from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from zo.estimator import NonFiniteLossError
from zo.io import atomic_path
from zo.noise import blocks_noise_signature
from zo.run.folder import BEST_STATE_FILE, RunDir, RunFolderError, RunLog
from zo.run.progress import Reporter, progress_bar
from zo.run.rng import global_rng_state, set_global_rng_state
from zo.run.signals import GracefulStop
from zo.run.status import COMPLETED, INTERRUPTED, STOPPED

log = logging.getLogger(__name__)

__all__ = ["BEST_STATE_FILE", "CheckpointPolicy", "LoopResult", "load_weights", "save_weights", "train_zo"]
CHECKPOINT_KINDS = ("full", "replay")
TRAIN_LOSS_WINDOW = 10


@dataclass
class CheckpointPolicy:
    steps: int = 0  # every this many steps (0: not by steps)
    minutes: float = 0.0  # and every this many minutes (0: not by time)
    kind: str = "full"  # "full" weights each time, or "replay": weights every `replay_limit` steps, records between
    replay_limit: int = 1000

    def __post_init__(self) -> None:
        if self.kind not in CHECKPOINT_KINDS:
            raise ValueError(f"checkpoint kind must be one of {CHECKPOINT_KINDS}, got {self.kind!r}")
        if self.steps < 0 or self.minutes < 0 or self.replay_limit < 1:
            raise ValueError("checkpoint_steps and checkpoint_minutes must be >= 0, replay_limit >= 1")

    def due(self, steps_done: int, last_time: float) -> bool:
        """Time for a checkpoint after `steps_done` steps, the last one written at monotonic `last_time`?"""
        by_steps = self.steps and steps_done % self.steps == 0
        by_time = self.minutes and time.monotonic() - last_time >= 60 * self.minutes
        return bool(by_steps or by_time)


@dataclass
class LoopResult:
    steps_done: int
    status: str  # "completed", "stopped: ..." or "interrupted"
    best_step: int | None = None
    best_dev_loss: float | None = None
    dev_losses: list[tuple[int, float]] = field(default_factory=list)
    # loss on a fixed train subset at the unperturbed weights, evaluated with the dev loss
    train_eval_losses: list[tuple[int, float]] = field(default_factory=list)
    best_train_eval_loss: float | None = None  # at best_step (the state evaluated on test)
    mean_perturbed_loss_last10: float | None = None  # mean L+ of the last 10 steps (inflated by the noise)
    # wall and CPU seconds of the training (steps and dev evaluations) over every attempt: a resumed run adds its
    # own to what its checkpoint carried (work done after that checkpoint and lost to the kill is not counted)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    # the earlier attempts' share, from the checkpoint resumed (None: a checkpoint of an older version, unknown)
    carried_seconds: float | None = None
    carried_cpu_seconds: float | None = None
    resumed_from: int | None = None
    window: list[float] = field(default_factory=list)  # the last L+ values behind mean_perturbed_loss_last10


def save_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    with atomic_path(path) as tmp:
        save_model(model, str(tmp))  # handles tied tensors


def load_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_model

    load_model(model, str(path))


class _Clock:
    """Training time so far, this attempt's plus what the resumed checkpoint carried. CPU time is the process's
    (every thread's), so it is the run's own even while other runs share the machine."""

    def __init__(self, result: LoopResult):
        self.result = result
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    def seconds(self) -> float:
        return round((self.result.carried_seconds or 0.0) + time.perf_counter() - self.wall0, 3)

    def cpu_seconds(self) -> float:
        return round((self.result.carried_cpu_seconds or 0.0) + time.process_time() - self.cpu0, 3)

    @property
    def complete(self) -> bool:
        """False once a run was resumed from a checkpoint that carried no time: its earlier attempts are unknown,
        and its own checkpoints must not pretend otherwise."""
        return self.result.resumed_from is None or self.result.carried_cpu_seconds is not None


def refuse_replay_drawn_elsewhere(state: dict, signature: str | None) -> None:
    """A replay checkpoint rebuilds its weights from its steps' seeds: refused where z is drawn otherwise
    (zo.noise.noise_signature), since the replay would give other weights. Full checkpoints pass."""
    saved = state.get("noise_signature")
    if state.get("base") and state.get("replay") and saved not in (None, signature):
        raise RunFolderError(
            f"checkpoint {state['step']} rebuilds its weights by replaying {len(state['replay'])} steps, whose "
            f"noise was drawn with {saved!r}; this placement draws it with {signature!r} (another GPU model, "
            "CPU kernel or torch version: docs/gpu.md), so the replay would give other weights. Resume where "
            "the signature is the same, or from a full checkpoint (--checkpoint_kind full)")


class _Checkpointer:
    """Decides when to checkpoint and writes full or replay checkpoints through the run folder."""

    def __init__(self, run: RunDir, policy: CheckpointPolicy, optimizer, data):
        self.run, self.policy, self.optimizer, self.data = run, policy, optimizer, data
        self.replay = policy.kind == "replay" and callable(getattr(optimizer, "replay", None))
        if policy.kind == "replay" and not self.replay:
            log.warning("%s has no replay: writing full checkpoints", type(optimizer).__name__)
        self.base: str | None = None  # the full checkpoint the replay records start from
        self.since_base: list[dict] = []
        # replayed records rebuild the weights only where z is drawn as it was (zo.noise.noise_signature)
        self.signature = (blocks_noise_signature(optimizer.blocks)
                          if callable(getattr(optimizer, "replay", None)) else None)
        self.last_time = time.monotonic()

    def due(self, steps_done: int) -> bool:
        return self.policy.due(steps_done, self.last_time)

    def record(self, record: dict) -> None:
        if self.replay:
            self.since_base.append(record)

    def save(self, result: LoopResult, run_log: RunLog, clock: _Clock) -> None:
        full = not self.replay or self.base is None or len(self.since_base) >= self.policy.replay_limit
        state = {"kind": "finetune", "optimizer": self.optimizer.state_dict(),
                 "model": self.optimizer.model.state_dict() if full else None,
                 "replay": [] if full else list(self.since_base),
                 "data": self.data.state_dict() if self.data is not None else None,
                 "loop": {"steps_done": result.steps_done, "best_step": result.best_step,
                          "best_dev_loss": result.best_dev_loss, "dev_losses": list(result.dev_losses),
                          "train_eval_losses": list(result.train_eval_losses),
                          "best_train_eval_loss": result.best_train_eval_loss,
                          "window": list(result.window),
                          "seconds": clock.seconds() if clock.complete else None,
                          "cpu_seconds": clock.cpu_seconds() if clock.complete else None},
                 "rng": global_rng_state(), "log_offset": run_log.offset(), "noise_signature": self.signature}
        name = self.run.save_checkpoint(state, result.steps_done, base=None if full else self.base)
        if full:
            self.base, self.since_base = name, []
        self.last_time = time.monotonic()
        log.info("checkpoint %s (%s)", name, "full" if full else f"replay of {len(state['replay'])} steps")

    def restore(self, state: dict, result: LoopResult) -> None:
        """Put the model, optimizer, data and RNGs where the checkpoint left them."""
        refuse_replay_drawn_elsewhere(state, self.signature)
        saved_signature = state.get("noise_signature")
        if saved_signature not in (None, self.signature):
            log.warning("the run drew its noise with %r, this placement with %r: from here on the steps are not "
                        "those of a run that was never stopped (the weights come from a full checkpoint, exact)",
                        saved_signature, self.signature)
        if state.get("base"):
            base = state["base_state"]
            self.optimizer.model.load_state_dict(base["model"])
            self.optimizer.load_state_dict(base["optimizer"])
            for record in state["replay"]:
                self.optimizer.replay(record)
            self.base, self.since_base = state["base"], list(state["replay"])
        else:
            self.optimizer.model.load_state_dict(state["model"])
            self.base, self.since_base = f"step-{state['step']:08d}", []
        self.optimizer.load_state_dict(state["optimizer"])
        if self.data is not None:
            self.data.load_state_dict(state["data"])
        set_global_rng_state(state["rng"])
        loop = state["loop"]
        result.steps_done, result.best_step, result.best_dev_loss = loop["steps_done"], loop["best_step"], loop["best_dev_loss"]
        result.dev_losses = [tuple(x) for x in loop["dev_losses"]]
        result.window = list(loop["window"])
        result.train_eval_losses = [tuple(x) for x in loop.get("train_eval_losses", [])]
        result.best_train_eval_loss = loop.get("best_train_eval_loss")
        result.mean_perturbed_loss_last10 = sum(result.window) / len(result.window) if result.window else None
        result.carried_seconds, result.carried_cpu_seconds = loop.get("seconds"), loop.get("cpu_seconds")
        result.resumed_from = result.steps_done


class AccumulatedBatches:
    """Gradient accumulation for ZO: each item is `steps` consecutive micro-batches of `batches`, so that one
    update sees them all under one perturbation seed. Resumes through the wrapped batches' state (a checkpoint
    falls between groups)."""

    def __init__(self, batches, steps: int):
        if steps < 1:
            raise ValueError("gradient_accumulation_steps must be >= 1")
        self.batches, self.steps = batches, steps

    def forever(self) -> Iterator:
        micro = self.batches.forever()
        while True:
            yield [next(micro) for _ in range(self.steps)]

    def state_dict(self) -> dict:
        return self.batches.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state)


def accumulated_loss(loss_fn: Callable[[object], torch.Tensor]) -> Callable[[list], torch.Tensor]:
    """The loss of a group of micro-batches: the mean of their losses (L+ and L- each, at one perturbation)."""
    def mean_loss(micro_batches: list) -> torch.Tensor:
        return sum(loss_fn(b) for b in micro_batches) / len(micro_batches)
    return mean_loss


def train_zo(optimizer, batches, loss_fn: Callable[[object], torch.Tensor], steps: int, run: RunDir | Path,
             eval_steps: int = 0, dev_loss_fn: Callable[[], float] | None = None, progress: bool = True,
             log_extra: Callable[[], dict] | None = None, checkpoints: CheckpointPolicy | None = None,
             resume: dict | None = None, stop: GracefulStop | None = None,
             reporter: Reporter | None = None,
             train_eval_fn: Callable[[], float] | None = None) -> LoopResult:
    """Run ZO steps up to `steps` in total; dev loss every `eval_steps` and at the end; keep the best state.

    `resume`: a checkpoint from `RunDir.start` (its log is truncated to it). `stop`: a first SIGINT /
    SIGTERM ends the run after the current step with a checkpoint and status "interrupted".
    `train_eval_fn` (the loss on a fixed train subset) is evaluated with the dev loss, on the same state.
    On return the model holds the best state by dev loss (or the last good state without a dev set).
    """
    run = run if isinstance(run, RunDir) else RunDir(run)
    data = batches if hasattr(batches, "forever") else None
    reporter = reporter or Reporter()
    checkpointer = _Checkpointer(run, checkpoints or CheckpointPolicy(), optimizer, data)
    result = LoopResult(steps_done=0, status=COMPLETED)
    if resume is not None:
        checkpointer.restore(resume, result)
    iterator: Iterator = data.forever() if data is not None else batches
    train_log = run.open_log(truncate_to=resume["log_offset"] if resume is not None else None)
    run.report_invalid_checkpoints(train_log)
    if resume is not None:
        train_log.event("resumed", step=result.steps_done)
        log.info("resumed from step %d", result.steps_done)
    clock = _Clock(result)
    bar = progress_bar(steps, "ZO steps", progress, initial=result.steps_done)

    def evaluate_dev(step: int) -> None:
        line: dict = {"step": step}
        if train_eval_fn is not None:
            line["train_eval_loss"] = float(train_eval_fn())
            result.train_eval_losses.append((step, line["train_eval_loss"]))
            if dev_loss_fn is None:  # no selection: the last state is the one evaluated
                result.best_train_eval_loss = line["train_eval_loss"]
        if dev_loss_fn is None:
            if train_eval_fn is not None:
                train_log.dev({**line, "seconds": clock.seconds()})
            return
        loss = float(dev_loss_fn())
        result.dev_losses.append((step, loss))
        train_log.dev({**line, "dev_loss": loss, "seconds": clock.seconds()})
        reporter.log({"dev_loss": loss, **{k: v for k, v in line.items() if k != "step"}}, step)
        if math.isfinite(loss) and (result.best_dev_loss is None or loss < result.best_dev_loss):
            result.best_dev_loss, result.best_step = loss, step
            result.best_train_eval_loss = line.get("train_eval_loss")
            save_weights(optimizer.model, run.best_weights_path)
        log.info("step %d: dev loss %.4f (best %.4f at step %s)", step, loss, result.best_dev_loss or float("nan"),
                 result.best_step)

    try:
        for step in range(result.steps_done, steps):
            batch = next(iterator)
            step_start = time.perf_counter()
            try:
                record = optimizer.step(lambda: loss_fn(batch))
            except NonFiniteLossError as err:
                result.status = f"{STOPPED}: {err}"
                log.error("%s; keeping the last good state", err)
                break
            record_dict = record.to_dict()
            checkpointer.record(dict(record_dict))
            record_dict["seconds"] = round(time.perf_counter() - step_start, 4)
            if log_extra is not None:
                record_dict.update(log_extra())
            train_log.step(record_dict)
            reporter.log(record_dict, step)
            result.window = (result.window + [record.loss_plus])[-TRAIN_LOSS_WINDOW:]
            result.steps_done = step + 1
            result.mean_perturbed_loss_last10 = sum(result.window) / len(result.window)
            bar.update(1)
            grad = record.projected_grad  # None for first-order and multi-probe methods
            bar.set_postfix(loss=f"{result.mean_perturbed_loss_last10:.4f}", g="-" if grad is None else f"{grad:+.2e}")
            if eval_steps and (step + 1) % eval_steps == 0 and step + 1 < steps:
                evaluate_dev(step + 1)
            if stop is not None and stop.requested is not None:
                result.status = INTERRUPTED
                train_log.event("interrupted", step=result.steps_done, signal=signal.Signals(stop.requested).name)
                checkpointer.save(result, train_log, clock)
                log.warning("interrupted after step %d: checkpoint written; resume with --resume", result.steps_done)
                return result
            if step + 1 < steps and checkpointer.due(step + 1):
                checkpointer.save(result, train_log, clock)
        last_eval = (result.dev_losses or result.train_eval_losses or [(None, None)])[-1][0]
        if result.steps_done and last_eval != result.steps_done:
            evaluate_dev(result.steps_done)
    finally:
        bar.close()
        train_log.close()
        result.seconds, result.cpu_seconds = clock.seconds(), clock.cpu_seconds()

    if result.best_step is not None and result.best_step != result.steps_done:
        log.info("restoring the best state (step %d, dev loss %.4f)", result.best_step, result.best_dev_loss)
        load_weights(optimizer.model, run.best_weights_path)
    return result
