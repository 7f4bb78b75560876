"""Recipe: meta-train a PertNN bank for one base LLM (L2L), on one task or round-robin over several.

`meta_train(L2LConfig(...))` is the whole job; run_l2l.py only parses the command line into it.
Fixes against upstream's `trainer_l2l_multi_dataset.py` (docs/differences.md): per-task collators and
state, an epoch is the longest task's loader (shorter ones cycle), the lr horizon counts the first-order steps
really taken, no debugger stops, the bank is checkpointed atomically during training, ties come from the
model's structure.
"""
from __future__ import annotations

import logging
import random
import signal
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import tasks
from zo.blocks import DEFAULT_EFFECTIVE_DIM_RULE, GRANULARITIES, block_type, parameter_blocks
from zo.io import sanitize_component
from zo.l2l import MetaConfig, MetaLearner, MicroBatches, TrajectoryOptimizer
from zo.loop import CheckpointPolicy, load_weights, save_weights
from zo.models import load_model, resolve_device, resolve_dtype, resolve_model_path
from zo.noise import NoiseSource
from zo.pertnn import check_bank_folder, check_bank_granularity, fresh_bank, load_bank
from zo.run.folder import RunDir
from zo.run.l2l_state import learner_state, load_learner_state
from zo.run.progress import check_report_to, make_reporter, progress_bar
from zo.run.rng import global_rng_state, set_global_rng_state
from zo.run.signals import GracefulStop
from zo.run.status import COMPLETED, INTERRUPTED, STOPPED
from zo.seeding import seed_everything

log = logging.getLogger(__name__)


class _MaxStepsReached(Exception):
    pass


class _Interrupted(Exception):
    pass


# Settings that may change between a run and its resume (they do not change what is computed).
RUNTIME_KEYS = ("output_dir", "progress", "threads", "pair_forwards", "report_to", "resume", "overwrite",
                "checkpoint_steps", "checkpoint_minutes", "save_every_steps")


L2L_ACCUMULATIONS = ("batch", "upstream")


@dataclass
class L2LConfig:
    task_name: str = "Copa"
    model_name: str | None = None  # None: the embedded SmolLM2 folder
    multi_task_training: bool = False
    multi_task_name: list[str] = field(default_factory=lambda: ["SST2", "Copa", "WSC"])
    shuffle: bool = False
    skip_copa_every_4th: bool = False  # upstream quirk (`trainer_l2l_multi_dataset.py`), off by default
    # Multi-task, as upstream: every epoch resets each task's loss history to (0, 0) and restarts its loader.
    # True: history persists and each task's batches run on across epochs.
    persistent_task_state: bool = False
    num_train_epochs: int = 20
    max_steps: int = 0  # > 0: stop after this many meta steps (for smoke runs)
    per_device_train_batch_size: int = 8
    # K micro-batches of per_device_train_batch_size per step (upstream l2l.sh: MultiRC, ReCoRD, DROP)
    gradient_accumulation_steps: int = 1
    # How K > 1 micro-batches combine (docs/differences.md, item 6). "batch": as one batch of K x micro-batch
    # (one sigma, one seed, one bank update and one first-order step per K micro-batches, every loss weighted
    # by its share of the examples or tokens). "upstream": the authors' code: a meta step and a bank update per
    # micro-batch, the first-order step every K-th micro-batch on that micro-batch's gradient alone (/K), the
    # lr horizon counted in micro-batches.
    l2l_accumulation: str = "batch"
    lr_llm: float = 1e-5
    lr_mlp: float = 1e-3
    lr_update: float = 1e-6
    epochs_per_restart: int = 4
    reset: bool = True  # False (Table 2 ablation): no resets, one trajectory and one lr horizon over the whole run
    bank_granularity: str = "block"  # "layer" (Table 3 ablation): one PertNN and one sigma per transformer layer
    zo_eps: float = 1e-3
    pair_forwards: bool = False  # the probe's + and - forwards as one doubled forward (same losses; docs/benchmarks.md)
    need_normalization: bool = True
    effective_dim_rule: str = DEFAULT_EFFECTIVE_DIM_RULE  # tied_full (fair to a tied embedding) | upstream
    grad_through_c: bool = False
    # "adam" (the design we follow) or "sgd" (upstream, momentum 0.8). Upstream's LR_LLM values (1e-2, 5e-2,
    # 1e-1) are for SGD; under Adam they step ~10^3x too far (warned at start).
    trajectory_optimizer: str = "adam"
    momentum: float = 0.8
    max_grad_norm: float = 1.0
    dropout: bool = True  # first-order steps in train mode, as upstream
    mlp_optimizer: str = "sgd"
    load_float16: bool = False
    load_bfloat16: bool = False
    device: str = "auto"  # auto (CUDA if available, else CPU) | cpu | cuda | cuda:K | mps
    train_set_seed: int = 0
    seed: int = 42
    num_train: int = 1000
    num_dev: int | None = 50
    num_eval: int | None = 1000
    data_dir: str | None = None
    output_dir: str | None = None
    save_mlp_path: str | None = None  # default: <output_dir>/bank.safetensors
    init_mlp_path: str | None = None  # start from an existing bank instead of a fresh one
    save_every_steps: int = 50
    log_every_steps: int = 10
    max_length: int = 2048
    threads: int | None = None
    progress: bool = True
    report_to: str = "none"  # "wandb": every meta step (WANDB_MODE=offline works offline)
    resume: bool = False  # continue the run in output_dir from its last checkpoint
    overwrite: bool = False  # replace a run already in output_dir (otherwise: refused)
    checkpoint_steps: int = 0  # full checkpoint (theta, bank, optimizers, RNGs) every this many meta steps
    checkpoint_minutes: float = 30.0  # ... and every this many minutes (0: not by time)

    @property
    def grouped(self) -> bool:
        """A step takes K micro-batches together (the default accumulation with K > 1)."""
        return self.gradient_accumulation_steps > 1 and self.l2l_accumulation == "batch"

    @property
    def upstream_accumulation(self) -> bool:
        return self.gradient_accumulation_steps > 1 and self.l2l_accumulation == "upstream"

    def task_list(self) -> list[str]:
        names = self.multi_task_name if self.multi_task_training else [self.task_name]
        if isinstance(names, str):
            names = names.split()
        return list(names)

    def validate(self) -> None:
        known = {t.lower(): t for t in tasks.TASK_NAMES}
        unknown = [t for t in self.task_list() if t.lower() not in known and not tasks.is_task_file(t)]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}: choose from {', '.join(tasks.TASK_NAMES)}")
        if not self.task_list():
            raise ValueError("no task to meta-train on")
        canonical = [known.get(t.lower(), t) for t in self.task_list()]
        if len(set(canonical)) != len(canonical):
            raise ValueError(f"a task is listed twice in {self.task_list()}: each task has one state and one loader")
        if self.epochs_per_restart <= 0:
            raise ValueError(f"EPOCHS_PER_RESTART must be >= 1, got {self.epochs_per_restart}")
        if self.num_train_epochs <= 0:
            raise ValueError(f"EPOCH must be >= 1, got {self.num_train_epochs}")
        if self.per_device_train_batch_size < 1:
            raise ValueError(f"BS (--per_device_train_batch_size) must be >= 1, got {self.per_device_train_batch_size}")
        if self.gradient_accumulation_steps < 1:
            raise ValueError(f"--gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}")
        if self.l2l_accumulation not in L2L_ACCUMULATIONS:
            raise ValueError(f"--l2l_accumulation must be one of {L2L_ACCUMULATIONS}, got {self.l2l_accumulation!r}")
        if self.save_mlp_path:
            check_bank_folder(self.save_mlp_path)
        if self.init_mlp_path and not Path(self.init_mlp_path).exists():
            raise FileNotFoundError(f"initial bank not found: {self.init_mlp_path}")
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise FileNotFoundError(f"data folder does not exist: {self.data_dir}")
        if self.bank_granularity not in GRANULARITIES:
            raise ValueError(f"bank_granularity must be one of {GRANULARITIES}, got {self.bank_granularity!r}")
        if self.trajectory_optimizer not in ("adam", "sgd"):
            raise ValueError("trajectory_optimizer must be 'adam' or 'sgd'")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        check_report_to(self.report_to)
        CheckpointPolicy(self.checkpoint_steps, self.checkpoint_minutes)  # validates

    def default_output_dir(self) -> str:
        model = sanitize_component(Path(resolve_model_path(self.model_name)).name)
        tasks = "+".join(self.task_list())
        tag = f"l2l-{tasks}-{self.num_train_epochs}-{self.per_device_train_batch_size}-{self.lr_llm}-{self.train_set_seed}"
        if self.gradient_accumulation_steps > 1:
            tag += f"-ga{self.gradient_accumulation_steps}{'u' if self.upstream_accumulation else ''}"
        return str(Path("result") / f"{sanitize_component(tasks)}-{model}-{sanitize_component(tag, 160)}")


def visit_plan(task_names: list[str], steps_per_epoch: int, skip_copa: bool) -> list[list[str]]:
    """Tasks visited at each outer step of one epoch (before shuffling)."""
    plan = []
    for outer in range(steps_per_epoch):
        plan.append([t for t in task_names if not (skip_copa and t == "Copa" and outer % 4 == 1)])
    return plan


def sigma_by_type(blocks, sigma: torch.Tensor) -> dict[str, float]:
    groups: dict[str, list[float]] = defaultdict(list)
    for block, value in zip(blocks, sigma.tolist()):
        groups[block_type(block.name)].append(value)
    return {k: sum(v) / len(v) for k, v in groups.items()}


def upstream_update_due(outer: int, steps_per_epoch: int, accumulation: int) -> bool:
    """The authors' loop (HF's condition): the first-order step follows the micro-batch at index `outer` of
    the epoch when (outer + 1) is a multiple of K, or at the epoch's last micro-batch when the epoch has at
    most K of them. An epoch's trailing micro-batches short of a multiple of K get meta steps only."""
    return (outer + 1) % accumulation == 0 or (steps_per_epoch <= accumulation and outer + 1 == steps_per_epoch)


def micro_batches(batches: list) -> MicroBatches:
    """K micro-batches as one batch: each loss weighted by its share of the examples or option tokens."""
    weights = [tasks.loss_weight(b) for b in batches]
    total = sum(weights)
    if total <= 0:
        raise ValueError("a group of micro-batches has no scored example or token")
    return MicroBatches(list(batches), [w / total for w in weights])


def _feed(batcher: tasks.TrainBatches, group: int, restart: bool = False):
    """What the meta steps of one task take, without end: batches, or `MicroBatches` of `group` consecutive
    ones within each epoch. `restart`: from a new shuffled epoch, as a fresh loader."""
    if group == 1:
        return batcher.restart() if restart else batcher.forever()
    groups = batcher.restart(group) if restart else batcher.groups(group)
    return (micro_batches(g) for g in groups)


ADAM_LR_WARNING = 1e-3  # upstream's SGD lr_llm values start here; Adam's per-coordinate step is ~lr itself


def warn_copied_values(config: L2LConfig) -> list[str]:
    """Loud warnings for values copied from the authors' scripts that mean something else here."""
    warnings = []
    if config.trajectory_optimizer == "adam" and config.lr_llm >= ADAM_LR_WARNING:
        warnings.append(
            f"LR_LLM={config.lr_llm:g} with TRAJECTORY_OPTIMIZER=adam: upstream's LR_LLM values (1e-2, 5e-2, 1e-1) are "
            "for SGD with momentum 0.8 and clipping to norm 1; under Adam this value steps ~10^3x too far per "
            "coordinate. Use TRAJECTORY_OPTIMIZER=sgd (--trajectory_optimizer sgd) to copy upstream's LR_LLM, or "
            "keep Adam with an LR_LLM around 1e-5 (the default).")
    for message in warnings:
        log.warning("%s", message)
    log.info("NEED_NORMALIZATION=%s (the default here is True; upstream's l2l.sh default is False, but its README "
             "run and all four released banks used True)", config.need_normalization)
    return warnings


def refuse_to_replace_a_bank(save_path: Path, run: RunDir, config: L2LConfig) -> None:
    """A bank file already there (a shipped bank is one --save_mlp_path away) is replaced only with --overwrite,
    or by the run that writes it (then the run folder's own rules apply: resume it, or it is refused)."""
    if config.overwrite or not save_path.exists():
        return
    if run.config_path.exists():
        try:
            owner = run.read_config().get("save_mlp_path")
        except ValueError:
            owner = None
        if owner is not None and Path(owner).resolve() == save_path.resolve():
            return
    raise FileExistsError(f"the bank {save_path} exists and this run would replace it: pass --overwrite "
                          f"(OVERWRITE=1) to replace it, or save elsewhere with --save_mlp_path (SAVE_MLP_PATH)")


def meta_train(config: L2LConfig) -> dict:
    """Meta-train and save the bank; returns a summary (also written to <output_dir>/summary.json)."""
    config.validate()
    warn_copied_values(config)
    model_path = resolve_model_path(config.model_name)  # a bad model path fails before any data is read
    output_dir = Path(config.output_dir or config.default_output_dir())
    save_path = Path(config.save_mlp_path or output_dir / "bank.safetensors")
    run = RunDir(output_dir, metrics_name="summary.json")  # nothing on disk is touched until run.start
    refuse_to_replace_a_bank(save_path, run, config)
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)

    # Data first (missing files, malformed records), then the model, then the bank (mismatch).
    names = [t for t in config.task_list()]
    task_objs = {name: tasks.get_task(name, config.data_dir) for name in names}
    task_splits = {name: tasks.sample_splits(task, config.num_train, config.num_dev, config.num_eval,
                                             config.train_set_seed) for name, task in task_objs.items()}
    model, tokenizer = load_model(model_path, resolve_dtype(config.load_float16, config.load_bfloat16),
                                  device=resolve_device(config.device))
    blocks = parameter_blocks(model)
    batchers = {task.name: tasks.TrainBatches(task_splits[name].train, task, tokenizer,
                                              config.per_device_train_batch_size, seed=config.seed,
                                              as_classification=task.train_as_classification,
                                              max_length=config.max_length) for name, task in task_objs.items()}
    task_names = list(batchers)
    group = config.gradient_accumulation_steps if config.grouped else 1
    # A step's batch is K micro-batches under the default accumulation, else one (micro-)batch.
    steps_per_epoch = max(b.groups_per_epoch(group) for b in batchers.values())
    plan = visit_plan(task_names, steps_per_epoch, config.skip_copa_every_4th)
    # Without resets the trajectory is one run long: its lr decays linearly to 0 over all epochs.
    period_epochs = config.epochs_per_restart if config.reset else config.num_train_epochs
    period_steps = period_epochs * sum(len(v) for v in plan)

    if config.init_mlp_path:
        bank = load_bank(config.init_mlp_path)
        check_bank_granularity(bank, config.bank_granularity)
    else:
        bank = fresh_bank(blocks, config.bank_granularity, torch.Generator().manual_seed(config.seed))
    meta_config = MetaConfig(lr_mlp=config.lr_mlp, lr_update=config.lr_update, zo_eps=config.zo_eps,
                             need_normalization=config.need_normalization, grad_through_c=config.grad_through_c,
                             mlp_optimizer=config.mlp_optimizer, effective_dim_rule=config.effective_dim_rule,
                             pair_forwards=config.pair_forwards)
    # The batch of one ZO estimate (the embedding's effective dimension counts its examples): K micro-batches
    # under the default accumulation, one micro-batch in upstream's.
    step_batch_size = config.per_device_train_batch_size * group
    learner = MetaLearner(model, bank, blocks, meta_config, step_batch_size, seed=config.seed,
                          noise=NoiseSource(config.threads))
    trajectory = TrajectoryOptimizer(model, config.lr_llm, period_steps, config.trajectory_optimizer,
                                     config.momentum, config.max_grad_norm, config.dropout)

    model_label = Path(model_path).name if Path(model_path).is_dir() else model_path
    resolved = asdict(config)
    resolved.update({"output_dir": str(output_dir), "save_mlp_path": str(save_path), "model_name": model_path,
                     "tasks": task_names, "steps_per_epoch": steps_per_epoch, "restart_period_steps": period_steps,
                     "num_blocks": len(blocks), "step_batch_size": step_batch_size})
    # Every input is checked: only now touch the run folder (bad input never deletes an earlier log).
    start_state = run.start(resolved, resume=config.resume, overwrite=config.overwrite, ignore_keys=RUNTIME_KEYS,
                            defaults=asdict(L2LConfig()))
    if start_state.finished is not None:
        return start_state.finished
    run.write_config(resolved)
    # theta_0 is re-read from disk at each reset: never a second in-memory copy of the model.
    pretrained_path = output_dir / "pretrained_state.safetensors"
    save_weights(model, pretrained_path)
    log.info("L2L on %s for %s: %d outer steps/epoch, %s; %s-wise bank -> %s", task_names, model_label,
             steps_per_epoch, f"reset every {period_steps} first-order steps" if config.reset
             else f"no reset, one lr horizon of {period_steps} steps", config.bank_granularity, save_path)
    if config.grouped:
        log.info("gradient accumulation: each meta step and first-order step takes %d micro-batches of %d as one "
                 "batch of %d", group, config.per_device_train_batch_size, step_batch_size)
    elif config.upstream_accumulation:
        log.warning("--l2l_accumulation upstream: a meta step per micro-batch of %d, a first-order step every %d "
                    "micro-batches on the last one's gradient only, lr horizon in micro-batches (the authors' "
                    "code; docs/differences.md item 6)", config.per_device_train_batch_size,
                    config.gradient_accumulation_steps)

    order_rng = random.Random(config.seed)
    loss_fn = tasks.batch_loss
    total_visits = config.num_train_epochs * sum(len(v) for v in plan)
    if config.max_steps:
        total_visits = min(total_visits, config.max_steps)
    step, start, resets, window = 0, time.perf_counter(), 0, defaultdict(list)
    # The next visit: epoch, outer step, that outer step's task order (None: not drawn yet), index in it.
    cursor = {"epoch": 0, "outer": 0, "order": None, "next": 0}
    checkpoint = start_state.checkpoint
    if checkpoint is not None:
        load_learner_state(learner, trajectory, checkpoint)
        for name, state in checkpoint["feeds"].items():
            batchers[name].load_state_dict(state)
        order_rng.setstate(checkpoint["order_rng"])
        set_global_rng_state(checkpoint["rng"])
        step, resets, cursor = checkpoint["step"], checkpoint["resets"], checkpoint["cursor"]
        window.update(checkpoint["window"])
    feeds = {name: _feed(b, group) for name, b in batchers.items()}
    train_log = run.open_log(truncate_to=checkpoint["log_offset"] if checkpoint is not None else None)
    run.report_invalid_checkpoints(train_log)
    if checkpoint is not None:
        train_log.event("resumed", step=step)
        log.info("resumed from step %d", step)
    policy, last_checkpoint = CheckpointPolicy(config.checkpoint_steps, config.checkpoint_minutes), time.monotonic()

    def save_checkpoint(position: dict) -> None:
        run.save_checkpoint({"kind": "l2l", **learner_state(learner, trajectory),
                             "feeds": {name: b.state_dict() for name, b in batchers.items()},
                             "order_rng": order_rng.getstate(), "rng": global_rng_state(), "cursor": position,
                             "resets": resets, "window": dict(window), "log_offset": train_log.offset()}, step)

    bar = progress_bar(total_visits, "L2L meta steps", config.progress, initial=step)
    reporter = make_reporter(config.report_to, resolved, name=output_dir.name)

    def save_bank(final: bool) -> None:
        learner.bank.save(save_path, {
            "base_model": model_label, "tasks": task_names, "trained": "true", "steps_done": step,
            "effective_dim_rule": config.effective_dim_rule, "granularity": config.bank_granularity,
            "reset": config.reset, "need_normalization": config.need_normalization,
            "epochs_done": epoch if not final else config.num_train_epochs, "complete": final,
            "hyperparameters": {k: v for k, v in resolved.items() if k not in RUNTIME_KEYS},
        })

    epoch = cursor["epoch"]
    status = COMPLETED
    stop = GracefulStop().install()
    try:
        for epoch in range(cursor["epoch"], config.num_train_epochs):
            inside = epoch == cursor["epoch"] and cursor["order"] is not None  # resumed inside this epoch
            if config.reset and epoch > 0 and epoch % config.epochs_per_restart == 0 and not inside:
                load_weights(model, pretrained_path)  # theta back to the pretrained weights
                trajectory.reset()  # fresh optimizer and schedule; bank, sigma and history persist
                resets += 1
                train_log.event("reset", step=step, epoch=epoch)
            if config.multi_task_training and not config.persistent_task_state and epoch > 0 and not inside:
                for name in task_names:  # upstream: history (0, 0) and a fresh loader per task each epoch
                    learner.state_for(name).history = (0.0, 0.0)
                    feeds[name] = _feed(batchers[name], group, restart=True)
            for outer in range(cursor["outer"] if epoch == cursor["epoch"] else 0, len(plan)):
                if inside and outer == cursor["outer"]:
                    order, first = cursor["order"], cursor["next"]
                else:
                    order, first = list(plan[outer]), 0
                    if config.shuffle:
                        order_rng.shuffle(order)
                for index in range(first, len(order)):
                    task_name = order[index]
                    if config.max_steps and step >= config.max_steps:
                        raise _MaxStepsReached
                    batch = next(feeds[task_name])
                    step_start = time.perf_counter()
                    meta = learner.meta_step(loss_fn, batch, task_name)
                    lr_now = trajectory.current_lr()
                    extra = {}
                    if config.upstream_accumulation:  # the authors' loop: see upstream_update_due
                        extra["fo_update"] = upstream_update_due(outer, steps_per_epoch,
                                                                 config.gradient_accumulation_steps)
                        if extra["fo_update"]:  # HF's training_step divides the loss by K
                            fo_loss = trajectory.step(loss_fn, batch, 1.0 / config.gradient_accumulation_steps)
                        else:  # its gradient would be zeroed before the next micro-batch: never used
                            fo_loss = trajectory.forward_only(loss_fn, batch)
                    else:
                        fo_loss = trajectory.step(loss_fn, batch)
                        if config.grouped:
                            extra["micro_batches"] = len(batch.batches)
                    step += 1
                    record = {"step": step, "epoch": epoch, "task": task_name, "loss_plus": meta.loss_plus,
                              "loss_minus": meta.loss_minus, "meta_loss": meta.meta_loss, "fo_loss": fo_loss,
                              "lr_llm": lr_now, "c": meta.c, "sigma_mean": float(meta.sigma.mean()),
                              **extra, "seconds": round(time.perf_counter() - step_start, 3)}
                    window[task_name].append((meta.loss_plus, meta.meta_loss))
                    if step % config.log_every_steps == 0:
                        record["sigma_by_type"] = sigma_by_type(blocks, meta.sigma)
                        for t, values in window.items():
                            log.info("step %d %s: L+ %.4f meta-loss %.4f (mean of %d)", step, t,
                                     sum(v[0] for v in values) / len(values),
                                     sum(v[1] for v in values) / len(values), len(values))
                        window.clear()
                    train_log.step(record)
                    reporter.log(record, step)
                    bar.update(1)
                    bar.set_postfix(task=task_name, Lp=f"{meta.loss_plus:.3f}", meta=f"{meta.meta_loss:.3f}")
                    if config.save_every_steps and step % config.save_every_steps == 0:
                        save_bank(final=False)
                    position = {"epoch": epoch, "outer": outer, "order": order, "next": index + 1}
                    if stop.requested is not None:
                        train_log.event("interrupted", step=step, signal=signal.Signals(stop.requested).name)
                        save_checkpoint(position)
                        save_bank(final=False)
                        raise _Interrupted
                    if policy.due(step, last_checkpoint):
                        save_checkpoint(position)
                        last_checkpoint = time.monotonic()
    except _Interrupted:
        summary = {"bank": str(save_path), "tasks": task_names, "steps": step, "resets": resets,
                   "status": INTERRUPTED, "signal": stop.requested}
        run.write_metrics(summary)
        log.warning("interrupted after step %d: checkpoint written; resume with --resume", step)
        return summary
    except _MaxStepsReached:
        status = f"{STOPPED} at max_steps={config.max_steps}"
    except KeyboardInterrupt:
        status = f"{INTERRUPTED} at step {step}"
        log.warning("interrupted: saving the bank as of step %d", step)
        save_bank(final=False)
        raise
    finally:
        stop.restore()
        reporter.finish()
        bar.close()
        train_log.close()
        pretrained_path.unlink(missing_ok=True)
    save_bank(final=True)
    summary = {"bank": str(save_path), "tasks": task_names, "steps": step, "resets": resets, "status": status,
               "seconds": round(time.perf_counter() - start, 1)}
    run.write_metrics(summary)
    run.remove_checkpoints()
    log.info("saved the bank to %s after %d meta steps (%d resets)", save_path, step, resets)
    return summary
