"""Recipe: fine-tune a causal LM on one task with MeZO or ZO Fine-tuner, then evaluate dev and test.

`fine_tune(FineTuneConfig(...))` is the whole job, usable from Python; run_zo_fine_tuner.py only
parses the command line into a FineTuneConfig.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

import tasks
from zo.blocks import EFFECTIVE_DIM_RULES, trainable_blocks
from zo import distributed
from zo.estimator import ZOConfig
from zo.io import sanitize_component
from zo.loop import (AccumulatedBatches, CheckpointPolicy, LoopResult, accumulated_loss,
                     refuse_replay_drawn_elsewhere, train_zo)
from zo.methods import (TRAIN_MODES, MethodContext, MethodOptions, build_method, check_options, method_config,
                        unknown_train_mode)
from zo.models import load_model, resolve_device, resolve_dtype, resolve_model_path
from zo.noise import NoiseSource, blocks_noise_signature
from zo.run.folder import RunDir
from zo.run.progress import Reporter, check_report_to, make_reporter
from zo.run.signals import GracefulStop
from zo.run.status import COMPLETED, EVALUATED, INTERRUPTED
from zo.seeding import seed_everything

log = logging.getLogger(__name__)

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
# Settings that may change between a run and its resume (they do not change what is computed).
RUNTIME_KEYS = ("output_dir", "progress", "threads", "pair_forwards", "report_to", "resume", "overwrite",
                "checkpoint_steps", "checkpoint_minutes", "checkpoint_kind",
                "noise_signature")  # where the run is resumed may differ: its checkpoints check what matters


@dataclass
class FineTuneConfig(MethodOptions):  # each method's options (zo.methods) are fields and CLI flags too
    task_name: str = "SST2"  # a built-in name, or a task spec file (docs/adding_a_task.md)
    task_file: str | None = None  # a task spec file; replaces task_name
    model_name: str | None = None  # None: the embedded SmolLM2 folder
    train_mode: str = "zo_fine_tuner"
    # a regular expression: train only the tensors whose names match it (re.search), freeze the others; None: all
    trainable_blocks: str | None = None
    eval_only: bool = False  # zero-shot dev + test evaluation, no training (same as train_mode none)
    # in-context demonstrations per test example in evaluation-only runs, drawn as MeZO's ICL mode (0: zero-shot)
    num_demos: int = 0
    # one demonstration set, drawn with train_set_seed, for every test example (MeZO with a train-set seed or
    # --num_train_sets, which sets it); False: one set per test example (MeZO without either)
    shared_demonstrations: bool = False
    # MeZO's calibration of classification scores: option log-prob minus its log-prob after a content-free prompt,
    # here one without demonstrations
    sfc: bool = False
    icl_sfc: bool = False  # --sfc with the content-free prompt after the same demonstrations
    load_mlp_path: str | None = None
    need_normalization: bool = True
    effective_dim_rule: str | None = None  # None: the rule the bank records (upstream for the authors' banks)
    load_float16: bool = False
    load_bfloat16: bool = False
    data_dir: str | None = None  # local data root; None: the HF hub
    output_dir: str | None = None
    per_device_train_batch_size: int = 16
    # one ZO update per this many micro-batches: L+ and L- are the means over them at one perturbation seed
    gradient_accumulation_steps: int = 1
    load_int8: bool = False  # refused: int8 weights cannot take ZO updates
    upstream_fp16_semantics: bool = False  # with load_float16: fp16 log-softmax, PertNN and history (docs/gpu.md)
    device: str = "auto"  # auto (CUDA if available, else CPU) | cpu | cuda | cuda:K | mps
    device_map: str | None = None  # "auto": spread the model over the visible GPUs (accelerate)
    learning_rate: float = 1e-6
    zo_eps: float = 1e-3
    weight_decay: float = 0.0
    weight_decay_rule: str = "mezo"  # zo.estimator.WEIGHT_DECAY_RULES: MeZO's name rule, or ndim (1-D exempt)
    warmup_rule: str = "hf"  # zo.estimator.WARMUP_RULES: hf k/W (lr 0 at the first update), or shifted (k+1)/W
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    max_steps: int = 20000
    eval_steps: int = 2000
    save_steps: int | None = None  # upstream's real evaluation period: when set, it replaces eval_steps
    # Dev loss for model selection: per_example = mean of per-example losses (upstream evaluates at batch 1;
    # here eval_batch_size examples share a forward, each with its own loss); batch_mean = mean of the losses of
    # eval_batch_size batches (token-weighted within a batch for LM tasks).
    dev_loss: str = "per_example"
    train_set_seed: int = 43
    # MeZO's --num_train_sets N: N runs, the i-th a whole run with train_set_seed + i (its train, dev and test
    # samples), in <output_dir>/trainset<i>/; <output_dir>/metrics.json holds every set's metrics and their
    # mean and sd. None: one run.
    num_train_sets: int | None = None
    seed: int = 42
    num_train: int = 1000
    num_dev: int | None = 500
    num_eval: int | None = 1000
    upstream_split: bool = False
    # train examples (a seeded subset of the train split) whose loss at the unperturbed weights is logged
    # with the dev loss: (L+ + L-)/2 is inflated by the noise, by an amount that differs between methods
    train_loss_subset: int = 64
    train_as_classification: bool | None = None  # None: the task's upstream default
    non_diff: bool = False
    only_train_option: bool = True  # False: LM loss on the whole sequence, prompt + option (MeZO's flag)
    perturbation: str = "virtual"
    # virtual: the + and - forwards as one forward of the doubled batch (each z drawn once for both; same losses;
    # off by default: slower than two forwards on the 2-core CPU, docs/benchmarks.md)
    pair_forwards: bool = False
    max_length: int = 2048
    eval_batch_size: int = 8
    option_scoring: str = "auto"  # tasks.encoding.OPTION_SCORINGS: batch layout of the options, same losses
    # > 1: each training batch as up to this many micro-batches of similar length, padded each to its own longest
    # (tasks.LengthGroups); the same examples and loss up to rounding, less padding to compute on
    length_groups: int = 1
    max_new_tokens: int = 50
    # Generation (SQuAD, DROP, generation task files): upstream's flags, greedy by default.
    sampling: bool = False
    temperature: float = 1.0
    num_beams: int = 1
    top_k: int | None = None
    top_p: float = 0.95
    eos_token: str = "\n"
    cut_at_newline: bool = True  # False: upstream's strip-only answers (docs/differences.md)
    native_opt_bos: bool = False  # OPT: keep the tokenizer's BOS (id 2) instead of upstream's id 0
    threads: int | None = None
    progress: bool = True
    report_to: str = "none"  # "wandb": every step and the final metrics (WANDB_MODE=offline works offline)
    resume: bool = False  # continue the run in output_dir from its last checkpoint
    overwrite: bool = False  # replace a run already in output_dir (otherwise: refused)
    checkpoint_steps: int = 0  # checkpoint every this many steps (0: not by steps)
    checkpoint_minutes: float = 30.0  # ... and every this many minutes (0: not by time)
    checkpoint_kind: str = "full"  # "replay": full weights only every 1000 steps, (seed, g) records between

    @property
    def task_ref(self) -> str:
        """What tasks.get_task receives: the spec file when one is given, else the task name."""
        return self.task_file or self.task_name

    @property
    def trains(self) -> bool:
        return not self.eval_only and self.train_mode != "none"

    @property
    def eval_period(self) -> int:
        return self.save_steps if self.save_steps is not None else self.eval_steps

    def generation_options(self) -> tasks.GenerationOptions:
        return tasks.GenerationOptions(sampling=self.sampling, temperature=self.temperature, num_beams=self.num_beams,
                                       top_k=self.top_k, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                                       eos_token=self.eos_token, cut_at_newline=self.cut_at_newline)

    def validate(self) -> None:
        if self.train_mode not in TRAIN_MODES and self.train_mode != "none":  # none: MeZO's --trainer none
            raise unknown_train_mode(self.train_mode, also=", or none (evaluation only)")
        if self.train_mode != "none":
            check_options(self.train_mode, asdict(self))  # another method's option
            method_config(self.train_mode, asdict(self))  # the method's own checks (rank, interval >= 1, ...)
        if self.trainable_blocks is not None:
            try:
                re.compile(self.trainable_blocks)
            except re.error as err:
                raise ValueError(f"--trainable_blocks {self.trainable_blocks!r} is not a regular expression: {err}")
        if self.task_file is not None and not tasks.is_task_file(self.task_file):
            raise ValueError(f"--task_file must be a .yaml, .yml or .json task spec, got {self.task_file!r}")
        if self.trains and self.train_mode == "zo_fine_tuner" and not self.load_mlp_path:
            raise ValueError("train_mode zo_fine_tuner needs a PertNN bank: set LOAD_MLP_PATH / --load_mlp_path "
                             "(python -m zo.init_bank writes an untrained one)")
        if self.trains and self.load_mlp_path and self.train_mode != "zo_fine_tuner":
            raise ValueError(f"--load_mlp_path (LOAD_MLP_PATH) is ZO Fine-tuner's PertNN bank; train_mode "
                             f"{self.train_mode} does not read one: drop it, or use train_mode zo_fine_tuner")
        if self.load_mlp_path and not Path(self.load_mlp_path).exists():
            raise FileNotFoundError(f"PertNN bank not found: {self.load_mlp_path}")
        if tasks.is_task_file(self.task_ref):
            if not Path(self.task_ref).is_file():
                raise FileNotFoundError(f"task spec not found: {self.task_ref}")
        elif self.task_name.lower() not in {t.lower() for t in tasks.TASK_NAMES}:
            raise ValueError(f"unknown task {self.task_name!r}: choose one of {', '.join(tasks.TASK_NAMES)}, "
                             "or give a task spec file (--task_file, docs/adding_a_task.md)")
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise FileNotFoundError(f"data folder does not exist: {self.data_dir}")
        if self.gradient_accumulation_steps < 1:
            raise ValueError("gradient_accumulation_steps must be >= 1")
        if self.per_device_train_batch_size < 1 or self.max_steps < 0 or self.eval_steps < 0:
            raise ValueError("batch size must be >= 1 and steps / eval_steps >= 0")
        ZOConfig(weight_decay_rule=self.weight_decay_rule, warmup_rule=self.warmup_rule)  # validates both rules
        if self.num_demos < 0:
            raise ValueError("num_demos must be >= 0 (0: zero-shot)")
        if self.num_demos and self.trains:
            raise ValueError("--num_demos is for evaluation only (--train_mode none), as MeZO: no in-context "
                             "demonstrations once the model is trained")
        if self.sfc and self.icl_sfc:
            raise ValueError("--sfc and --icl_sfc exclude each other (icl_sfc: the content-free prompt keeps the "
                             "demonstrations)")
        if self.shared_demonstrations and not self.num_demos:
            raise ValueError("--shared_demonstrations needs --num_demos K (the demonstrations per test example)")
        if self.num_train_sets is not None and self.num_train_sets < 1:
            raise ValueError(f"--num_train_sets must be >= 1 (None: one run), got {self.num_train_sets}")
        if self.num_demos and self.num_dev:
            raise ValueError("--num_demos draws demonstrations from the whole train pool, which holds the dev set: "
                             "set --num_dev 0 (DEV=0), as MeZO's in-context mode")
        if self.train_loss_subset < 0:
            raise ValueError("train_loss_subset must be >= 0 (0: off)")
        if self.dev_loss not in ("per_example", "batch_mean"):
            raise ValueError(f"dev_loss must be 'per_example' (upstream) or 'batch_mean', got {self.dev_loss!r}")
        if self.save_steps is not None and self.save_steps < 0:
            raise ValueError("save_steps (the evaluation period, as upstream) must be >= 0")
        if self.non_diff and not tasks.is_task_file(self.task_ref) and not tasks.is_generation_task(self.task_name):
            raise ValueError("--non_diff (-F1 objective) is for the generation tasks SQuAD and DROP")
        self.generation_options().validate()
        if self.effective_dim_rule not in (None, *EFFECTIVE_DIM_RULES):
            raise ValueError(f"effective_dim_rule must be one of {EFFECTIVE_DIM_RULES}, got {self.effective_dim_rule!r}")
        if self.load_int8:
            raise ValueError("--load_int8 is not supported: int8 weights cannot take ZO updates (see docs/gpu.md); "
                             "use --load_float16 / --load_bfloat16, with --device_map auto for large models")
        if self.upstream_fp16_semantics and not self.load_float16:
            raise ValueError("--upstream_fp16_semantics reproduces the authors' fp16 runs: it needs --load_float16 True")
        if self.device_map is not None and self.device_map not in DEVICE_MAPS:
            raise ValueError(f"device_map must be one of {DEVICE_MAPS}, got {self.device_map!r}")
        tasks.encoding.check_option_scoring(self.option_scoring)
        if self.length_groups < 1:
            raise ValueError(f"length_groups must be >= 1, got {self.length_groups}")
        if self.length_groups > 1 and self.non_diff:
            raise ValueError("--length_groups applies to the loss of encoded batches; --non_diff generates from "
                             "the prompts instead")
        check_report_to(self.report_to)
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        CheckpointPolicy(self.checkpoint_steps, self.checkpoint_minutes, self.checkpoint_kind)  # validates

    def default_output_dir(self) -> str:
        model = sanitize_component(Path(resolve_model_path(self.model_name)).name)
        bank = sanitize_component(self.load_mlp_path) if self.load_mlp_path else "nobank"
        task = Path(self.task_ref).stem if tasks.is_task_file(self.task_ref) else self.task_name
        mode = self.train_mode if self.trains else "eval"
        tag = (f"{mode}-{task}-{self.max_steps}-{self.per_device_train_batch_size}-"
               f"{self.learning_rate}-{self.zo_eps}-{self.train_set_seed}-{bank}")
        if self.num_train_sets is not None:
            tag += f"-sets{self.num_train_sets}"
        return str(Path("result") / f"{sanitize_component(task)}-{model}-{sanitize_component(tag, 160)}")


def _mean_loss(model, loss_fn, batches) -> float:
    total, count = 0.0, 0
    with torch.inference_mode():
        for batch in batches:
            total += float(loss_fn(batch))
            count += 1
    return total / max(count, 1)


def _mean_example_loss(model, batches, loss_kwargs: dict) -> float:
    """Mean over examples of each one's own loss (upstream's batch-1 dev loss, computed in batches)."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for batch in batches:
            losses = tasks.example_losses(model, batch, **loss_kwargs)
            total += float(losses.double().sum())
            count += losses.numel()
    return total / max(count, 1)


def task_and_splits(config: FineTuneConfig) -> tuple[tasks.Task, tasks.Splits]:
    """The task and the train / dev / test sample of `config.train_set_seed`: what a run trains and is scored on."""
    task = tasks.get_task(config.task_ref, config.data_dir)
    return task, tasks.sample_splits(task, config.num_train, config.num_dev, config.num_eval, config.train_set_seed,
                                     upstream_split=config.upstream_split)


def build_optimizer(config: FineTuneConfig, model, blocks, global_batch_size: int):
    """The method of `config.train_mode` from the registry (zo.methods), its state built and checked (the bank)."""
    zo_config = ZOConfig(lr=config.learning_rate, eps=config.zo_eps, weight_decay=config.weight_decay,
                         perturbation="inplace" if config.non_diff else config.perturbation,
                         lr_schedule=config.lr_scheduler_type, warmup_steps=config.warmup_steps,
                         total_steps=config.max_steps, weight_decay_rule=config.weight_decay_rule,
                         warmup_rule=config.warmup_rule, pair_forwards=config.pair_forwards)
    return build_method(config.train_mode, MethodContext(
        model, blocks, zo_config, seed=config.seed, noise=NoiseSource(config.threads), batch_size=global_batch_size,
        load_mlp_path=config.load_mlp_path, need_normalization=config.need_normalization,
        effective_dim_rule=config.effective_dim_rule,
        sigma_dtype=torch.float16 if config.upstream_fp16_semantics else torch.float32), asdict(config))


def fine_tune(config: FineTuneConfig) -> dict:
    """Run the whole job; returns the metrics written to <output_dir>/metrics.json.

    Under `accelerate launch` / `torchrun` with N processes it runs data-parallel ZO (zo/distributed.py):
    the global batch is N x per_device_train_batch_size, and only rank 0 writes the run folder.
    With `num_train_sets`, one such run per train set (`fine_tune_sets`).
    """
    config.validate()
    if config.num_train_sets is not None:
        return fine_tune_sets(config)
    device = resolve_device(config.device)
    if distributed.launched_world_size() > 1:
        if config.device_map is not None or config.non_diff or not config.trains:
            raise ValueError("data-parallel runs support neither --device_map, --non_diff nor evaluation only")
        if config.resume:  # only rank 0 keeps checkpoints: the other ranks could not restore their state
            raise ValueError("--resume is not supported for data-parallel runs yet; rerun it from the start")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    group = distributed.init_process_group(device)
    model_path = resolve_model_path(config.model_name)  # a bad model path fails before any data is read
    output_dir = Path(config.output_dir or config.default_output_dir())
    if not group.is_main:  # only rank 0 writes the run folder
        scratch = tempfile.TemporaryDirectory(prefix=f"zo-rank{group.rank}-")
        output_dir = Path(scratch.name)
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)

    task, splits = task_and_splits(config)
    as_classification = (task.train_as_classification if config.train_as_classification is None
                         else config.train_as_classification)
    if not config.only_train_option and as_classification:
        raise ValueError("--only_train_option False trains on the whole sequence with the LM loss: add "
                         "--train_as_classification False (as MeZO, whose classification loss needs the option)")
    if (config.sfc or config.icl_sfc) and task.is_generation:
        raise ValueError(f"--sfc / --icl_sfc calibrate classification scores; {task.name} is a generation task")
    if config.non_diff and not task.is_generation:
        raise ValueError(f"--non_diff (-F1 objective) needs a generation task; {task.name} is classification")
    dtype = resolve_dtype(config.load_float16, config.load_bfloat16)
    if config.device_map and config.device != "auto":
        log.warning("--device %s is not used: --device_map %s places the model", config.device, config.device_map)
    model, tokenizer = load_model(model_path, dtype, device=None if config.device_map else device,
                                  native_opt_bos=config.native_opt_bos, device_map=config.device_map)
    blocks = trainable_blocks(model, config.trainable_blocks)

    optimizer = None
    if config.trains:  # the global batch (data parallel) sizes ZO Fine-tuner's noise budget
        optimizer = build_optimizer(config, model, blocks, config.per_device_train_batch_size * group.world_size)
    if config.trains and config.save_steps is not None and config.save_steps != config.eval_steps:
        log.warning("--save_steps %d is the evaluation period, as upstream (which ignores --eval_steps %d)",
                    config.save_steps, config.eval_steps)
    if config.trains and not splits.dev:
        log.warning("no dev set (DEV=0): the final state is evaluated; upstream would select on the test set")

    generation = config.generation_options()
    resolved = asdict(config)
    resolved.update({"output_dir": str(output_dir), "model_name": model_path, "dtype": str(dtype),
                     "task_name": task.name, "train_as_classification": as_classification,
                     "perturbation": "inplace" if config.non_diff else config.perturbation,
                     "eval_period": config.eval_period, "num_blocks": len(blocks),
                     "split_sizes": {"train": len(splits.train), "dev": len(splits.dev), "test": len(splits.test)},
                     "split_notes": splits.notes, "eval_note": task.eval_note, "bank_base_model": None,
                     "effective_dim_rule": None, "bank_granularity": None,
                     "device": str(device) if config.device_map is None else getattr(model, "hf_device_map", None),
                     "noise_signature": blocks_noise_signature(blocks),
                     "world_size": group.world_size,
                     "global_batch_size": config.per_device_train_batch_size * group.world_size,
                     **(optimizer.describe() if optimizer is not None else {})})
    # Every input is checked (data, model, bank): only now touch the run folder, so that bad input
    # never deletes an earlier run's results or leaves an empty folder behind; a finished run is kept.
    run = RunDir(output_dir)
    start_state = run.start(resolved, resume=config.resume, overwrite=config.overwrite, ignore_keys=RUNTIME_KEYS,
                            defaults=asdict(FineTuneConfig()))
    if start_state.finished is not None:
        return start_state.finished
    if start_state.checkpoint is not None:
        # before any write; only a replay checkpoint (base + replay records) can be refused
        refuse_replay_drawn_elsewhere(start_state.checkpoint, resolved["noise_signature"])
        before = run.read_config().get("noise_signature")
        if before and before.split(" -> ")[-1] != resolved["noise_signature"]:
            # resumed elsewhere from a full checkpoint: the log's steps drew z on both placements
            resolved["noise_signature"] = f"{before} -> {resolved['noise_signature']}"
    run.write_config(resolved)
    extra_state = resolved.get("extra_state_bytes", 0)
    log.info("task %s: %d train / %d dev / %d test; %s on %s%s; output %s", task.name, len(splits.train),
             len(splits.dev), len(splits.test), config.train_mode if config.trains else "evaluation only",
             model_path, f" (extra optimizer state {extra_state / 2**20:.1f} MiB)" if extra_state else "", output_dir)

    reporter = make_reporter(config.report_to, resolved, name=output_dir.name) if group.is_main else Reporter()
    start = time.perf_counter()
    if config.trains:
        with GracefulStop() as stop:
            result = _train(config, task, splits, model, tokenizer, optimizer, as_classification, generation,
                            run, start_state.checkpoint, stop, reporter, group, device)
        if not group.is_main:  # rank 0 evaluates; the others only had to take the steps with it
            scratch.cleanup()
            distributed.destroy(group)
            return {"rank": group.rank, "steps": result.steps_done, "status": result.status}
    else:
        result = _untrained_losses(config, task, splits, model, tokenizer, as_classification, run)

    metrics: dict = {"task": task.name, "model": model_path,
                     "train_mode": config.train_mode if config.trains else "none",
                     "steps": result.steps_done, "status": result.status,
                     "best_step": result.best_step, "best_dev_loss": result.best_dev_loss,
                     # unperturbed loss on the train subset at the state evaluated on test / at the last step
                     "final_train_loss": result.best_train_eval_loss,
                     "last_step_train_loss": (result.train_eval_losses[-1][1] if result.train_eval_losses else None),
                     "mean_perturbed_loss_last10": result.mean_perturbed_loss_last10,
                     # the training's wall / CPU time over all attempts (the work each attempt kept)
                     "train_seconds": round(result.seconds, 2), "train_cpu_seconds": round(result.cpu_seconds, 2)}
    if result.resumed_from is not None:  # provenance: this attempt continued a checkpoint of that step
        metrics["resumed_from_step"] = result.resumed_from
        if result.carried_cpu_seconds is not None:  # the earlier attempts' share of the two above
            metrics["carried_train_seconds"] = round(result.carried_seconds, 2)
            metrics["carried_train_cpu_seconds"] = round(result.carried_cpu_seconds, 2)
    if task.eval_note:
        metrics["eval_note"] = task.eval_note
    if result.status == INTERRUPTED:  # the checkpoint is written; evaluation waits for the resumed run
        metrics["signal"] = stop.requested
        run.write_metrics(metrics)
        reporter.finish()
        return metrics
    if splits.dev:
        metrics["dev"] = _evaluate(config, model, tokenizer, task, splits.dev, generation)
        if result.best_dev_loss is not None:
            metrics["dev"]["loss"] = result.best_dev_loss
    if splits.test:
        metrics["test"], rows = evaluate_test(config, model, tokenizer, task, splits.test)
        run.write_predictions(rows)
    metrics["total_seconds"] = round(time.perf_counter() - start, 2)
    run.write_metrics(metrics)
    run.remove_checkpoints()
    reporter.log({split: metrics[split] for split in ("dev", "test") if split in metrics}, result.steps_done)
    reporter.finish()
    log.info("metrics: %s", {k: metrics[k] for k in ("dev", "test") if k in metrics})
    if not math.isfinite(result.mean_perturbed_loss_last10 or 0.0):
        log.warning("the final training loss is not finite")
    distributed.destroy(group)
    return metrics


def _test_demonstrations(config: FineTuneConfig, task, samples) -> list[str] | None:
    """With --num_demos: one demonstration text per test example: MeZO's one train set per eval example, or
    with shared_demonstrations its one train set (the first K of the pool permuted with train_set_seed)."""
    if not config.num_demos:
        return None
    pool = task.load_split("train")
    if config.shared_demonstrations:
        demos = tasks.sampling.seeded_subset(pool, config.train_set_seed, config.num_demos)
        return [tasks.encoding.demonstration_text(demos, task.template)] * len(samples)
    sets = tasks.sampling.demonstration_sets(pool, len(samples), config.num_demos)
    return [tasks.encoding.demonstration_text(demos, task.template) for demos in sets]


SET_FOLDER = "trainset{}"  # MeZO's result files end in -trainset<i>
NOT_SUMMARIZED = ("num_examples", "num_demos")  # counts, equal across sets


def fine_tune_sets(config: FineTuneConfig) -> dict:
    """MeZO's --num_train_sets: set i is a whole run (fresh model, train, dev, test) with train_set_seed + i, in
    <output_dir>/trainset<i>/. Returns (and writes to <output_dir>/metrics.json) every set's metrics and the
    mean and sample sd over the sets. Resumes set by set: finished sets are kept, an interrupted one continues.

    MeZO differs in two ways (docs/differences.md): its sets are numbered 0..N-1 whatever --train_set_seed, and
    a given --train_set_seed silently leaves one set; and it never reloads the model, so set i starts from the
    weights trained on sets 0..i-1.
    """
    config.validate()
    if distributed.launched_world_size() > 1:
        raise ValueError("--num_train_sets runs its sets one after the other in one process: launch one "
                         "data-parallel run per --train_set_seed instead")
    model_path = resolve_model_path(config.model_name)  # a bad model path fails before any folder is made
    if config.device_map is None:
        resolve_device(config.device)  # so does a bad device
    output_dir = Path(config.output_dir or config.default_output_dir())
    seeds = [config.train_set_seed + i for i in range(config.num_train_sets)]
    folders = [output_dir / SET_FOLDER.format(i) for i in range(config.num_train_sets)]
    if not config.trains and not config.num_demos and config.num_eval is None:
        log.warning("--num_train_sets without training, demonstrations or --num_eval: every set evaluates the whole "
                    "test pool the same way, so the %d sets are identical", config.num_train_sets)
    resolved = asdict(config)
    resolved.update({"output_dir": str(output_dir), "model_name": model_path, "train_set_seeds": seeds,
                     "set_dirs": [f.name for f in folders]})
    run = RunDir(output_dir)
    existed, had_config = output_dir.exists(), run.config_path.exists()
    start = run.start(resolved, resume=config.resume, overwrite=config.overwrite, ignore_keys=RUNTIME_KEYS,
                      defaults=asdict(FineTuneConfig()), checkpoints=False)  # each set keeps its own
    if start.finished is not None:
        return start.finished
    if config.overwrite:  # sets of the replaced run beyond this one's N would be left over
        for stale in output_dir.glob(SET_FOLDER.format("*")):
            if stale.is_dir() and stale.name[len("trainset"):].isdigit() and stale not in folders:
                shutil.rmtree(stale)
    run.write_config(resolved)

    started = time.perf_counter()
    results: list[dict] = []
    try:
        for index, (seed, folder) in enumerate(zip(seeds, folders)):
            log.info("train set %d of %d: train_set_seed %d -> %s", index + 1, len(seeds), seed, folder)
            # shared demonstrations: with one set per test example, the N sets would share their demonstrations
            one = replace(config, num_train_sets=None, train_set_seed=seed, output_dir=str(folder),
                          shared_demonstrations=config.shared_demonstrations or config.num_demos > 0)
            results.append(fine_tune(one))
            if results[-1].get("status") == INTERRUPTED:
                break
    except BaseException:
        if not had_config and not any(f.exists() for f in folders):  # bad input: leave nothing behind
            run.config_path.unlink(missing_ok=True)
            if not existed:
                output_dir.rmdir()
        raise
    metrics = summarize_sets(results, seeds, folders)
    metrics["total_seconds"] = round(time.perf_counter() - started, 2)
    run.write_metrics(metrics)
    for name, stats in metrics.get("summary", {}).get("test", {}).items():
        log.info("test %s over %d train sets: %.4f +- %s", name, len(results), stats["mean"],
                 "n/a" if stats["sd"] is None else f"{stats['sd']:.4f}")
    return metrics


def _mean_sd(values: list[float]) -> dict:
    """Mean and sample standard deviation (n - 1; None for one value) of `values`, and the values."""
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return {"mean": mean, "sd": sd, "values": values}


def summarize_sets(results: list[dict], seeds: list[int], folders: list[Path]) -> dict:
    """The metrics of a --num_train_sets run: each set's metrics and, once every set is done, the mean and sd
    over the sets of each dev / test metric, the best dev loss and the final train loss."""
    first = results[0]
    sets = [{"train_set": i, "train_set_seed": seed, "output_dir": folder.name,
             **{k: v for k, v in result.items() if k not in ("task", "model", "train_mode")}}
            for i, (result, seed, folder) in enumerate(zip(results, seeds, folders))]
    metrics: dict = {"task": first["task"], "model": first["model"], "train_mode": first["train_mode"],
                     "num_train_sets": len(seeds), "train_set_seeds": seeds}
    if first.get("eval_note"):
        metrics["eval_note"] = first["eval_note"]
    if results[-1].get("status") == INTERRUPTED:  # resume finishes it (finished sets are kept)
        metrics.update({"status": INTERRUPTED, "signal": results[-1].get("signal"), "sets": sets})
        return metrics
    summary: dict = {}
    for split in ("dev", "test"):
        if all(split in r for r in results):
            names = [k for k, v in first[split].items()
                     if k not in NOT_SUMMARIZED and isinstance(v, (int, float)) and not isinstance(v, bool)]
            summary[split] = {name: _mean_sd([float(r[split][name]) for r in results]) for name in names
                              if all(isinstance(r[split].get(name), (int, float)) for r in results)}
    for key in ("best_dev_loss", "final_train_loss"):
        if all(isinstance(r.get(key), (int, float)) for r in results):
            summary[key] = _mean_sd([float(r[key]) for r in results])
    others = [s["train_set"] for s, r in zip(sets, results)
              if not str(r.get("status", "")).startswith((COMPLETED, EVALUATED))]
    metrics.update({"status": COMPLETED, "summary": summary, "sets": sets})
    if others:  # e.g. stopped at a non-finite loss: their last good state was evaluated, and is counted
        metrics["sets_not_completed"] = others
    return metrics


def _evaluate(config: FineTuneConfig, model, tokenizer, task, samples, generation,
              demonstrations: list[str] | None = None, per_example: bool = False) -> dict:
    progress = config.progress and sys.stderr.isatty()  # no carriage-return spam in a log file
    if task.is_generation:  # the generation options (sampling, beams, eos_token, newline cut) apply here
        return tasks.evaluate_generation(model, tokenizer, task, samples, config.eval_batch_size, config.max_length,
                                         generation, progress=progress, demonstrations=demonstrations,
                                         per_example=per_example)
    return tasks.evaluate(model, tokenizer, task, samples, batch_size=config.eval_batch_size,
                          max_length=config.max_length, max_new_tokens=config.max_new_tokens,
                          progress=progress, option_scoring=config.option_scoring,
                          demonstrations=demonstrations, calibration=_calibration(config), per_example=per_example)


def evaluate_test(config: FineTuneConfig, model, tokenizer, task, samples) -> tuple[dict, list[dict]]:
    """The test split scored: metrics.json's "test" entry, and one row per example for test_predictions.jsonl."""
    result = _evaluate(config, model, tokenizer, task, samples, config.generation_options(),
                       _test_demonstrations(config, task, samples), per_example=True)
    predictions, scores = result.pop("predictions", []), result.pop("scores", [])
    if config.num_demos:
        result["num_demos"] = config.num_demos
    # no gold answers: a results folder holds no dataset text (the index finds the example in the seed's sample;
    # the digest of its fields lets two runs check they scored the same examples without holding the text)
    rows = [{"index": i, "example": example_digest(sample), "prediction": p, "score": score}
            for i, (sample, p, score) in enumerate(zip(samples, predictions, scores))]
    return result, rows


def example_digest(sample) -> str:
    """12 hex digits that tell test examples apart (sha256 of the sample's fields), not the text itself."""
    fields = json.dumps({"data": sample.data, "correct": sample.correct}, sort_keys=True, default=str)
    return hashlib.sha256(fields.encode()).hexdigest()[:12]


def _calibration(config: FineTuneConfig) -> str | None:
    return "sfc" if config.sfc else "icl_sfc" if config.icl_sfc else None


def _train(config: FineTuneConfig, task, splits, model, tokenizer, optimizer, as_classification, generation,
           run: RunDir, checkpoint: dict | None, stop: GracefulStop, reporter: Reporter,
           group: distributed.ProcessGroup = distributed.ProcessGroup(),
           device: torch.device = torch.device("cpu")) -> LoopResult:

    batches_cls = _rank_share(group) if group.enabled else tasks.TrainBatches
    encoder = batches_cls(splits.train, task, tokenizer, config.per_device_train_batch_size * group.world_size,
                                 seed=config.seed, as_classification=as_classification,
                                 max_length=config.max_length, for_generation_objective=config.non_diff,
                                 option_scoring=config.option_scoring,
                                 only_train_option=config.only_train_option, length_groups=config.length_groups)
    loss_kwargs = _loss_kwargs(config)
    if config.non_diff:
        def loss_fn(batch):
            return tasks.negative_f1_objective(model, tokenizer, batch, task, max_length=config.max_length,
                                               options=generation)
    else:
        def loss_fn(batch):
            return tasks.batch_loss(model, batch, **loss_kwargs)
    if group.enabled:  # the example-weighted loss of the global batch, on every rank
        def train_loss_fn(share):
            batch, counted = share
            weight = tasks.loss_weight(batch) if counted else 0
            return distributed.weighted_mean_loss(lambda: loss_fn(batch), weight, group, device)
    else:
        train_loss_fn = loss_fn

    dev_loss_fn, train_eval_fn = _unperturbed_loss_fns(config, task, splits, model, tokenizer, as_classification,
                                                       with_dev=group.is_main)
    if config.gradient_accumulation_steps > 1:
        encoder = AccumulatedBatches(encoder, config.gradient_accumulation_steps)
        train_loss_fn = accumulated_loss(train_loss_fn)
    checkpoints = CheckpointPolicy(config.checkpoint_steps, config.checkpoint_minutes, config.checkpoint_kind)
    return train_zo(optimizer, encoder, train_loss_fn, config.max_steps, run, config.eval_period, dev_loss_fn,
                    progress=config.progress and group.is_main, log_extra=optimizer.log_extra,
                    checkpoints=checkpoints, resume=checkpoint, stop=stop, reporter=reporter,
                    train_eval_fn=train_eval_fn)


def _loss_kwargs(config: FineTuneConfig) -> dict:
    """tasks.batch_loss options: upstream's fp16 runs take the log-softmax of fp16 logits."""
    return {"logits_dtype": torch.float16} if config.upstream_fp16_semantics else {}


def _unperturbed_loss_fns(config: FineTuneConfig, task, splits, model, tokenizer, as_classification: bool,
                          with_dev: bool = True) -> tuple[Callable[[], float] | None, Callable[[], float] | None]:
    """The dev loss (model selection; None under --non_diff or without a dev set) and the loss on a fixed train
    subset (the comparable training loss; None with --train_loss_subset 0), both at the weights as they are."""
    loss_kwargs = _loss_kwargs(config)
    dev_loss_fn = None
    if splits.dev and not config.non_diff and with_dev:
        dev_batches = tasks.TrainBatches(splits.dev, task, tokenizer, config.eval_batch_size, seed=0,
                                         as_classification=as_classification, max_length=config.max_length,
                                         option_scoring=config.option_scoring,
                                         only_train_option=config.only_train_option)
        if config.dev_loss == "per_example":
            # each example's own loss: batching by length only saves padding (1.6x faster on CB's dev set)
            dev_loss_fn = lambda: _mean_example_loss(  # noqa: E731
                model, dev_batches.epoch(shuffle=False, by_length=True), loss_kwargs)
        else:
            dev_loss_fn = lambda: _mean_loss(  # noqa: E731
                model, lambda b: tasks.batch_loss(model, b, **loss_kwargs), dev_batches.epoch(shuffle=False))
    train_eval_fn = None
    if config.train_loss_subset and splits.train:
        # always the cross-entropy loss (also under --non_diff), so that methods compare on one scale
        subset = tasks.sampling.seeded_subset(splits.train, config.train_set_seed, config.train_loss_subset)
        subset_batches = tasks.TrainBatches(subset, task, tokenizer, config.eval_batch_size, seed=0,
                                            as_classification=as_classification, max_length=config.max_length,
                                            option_scoring=config.option_scoring,
                                            only_train_option=config.only_train_option)
        train_eval_fn = lambda: _mean_loss(model, lambda b: tasks.batch_loss(model, b),  # noqa: E731
                                           subset_batches.epoch(shuffle=False))
    return dev_loss_fn, train_eval_fn


def _untrained_losses(config: FineTuneConfig, task, splits, model, tokenizer, as_classification: bool,
                      run: RunDir) -> LoopResult:
    """Evaluation only (MeZO's --trainer none): the dev loss and the train-subset loss of the weights as loaded,
    logged as step 0, so that a zero-shot run takes its place in the same tables and plots as the trained ones."""
    result = LoopResult(steps_done=0, status=EVALUATED)
    dev_loss_fn, train_eval_fn = _unperturbed_loss_fns(config, task, splits, model, tokenizer, as_classification)
    line: dict = {"step": 0}
    if train_eval_fn is not None:
        line["train_eval_loss"] = float(train_eval_fn())
        result.train_eval_losses = [(0, line["train_eval_loss"])]
        result.best_train_eval_loss = line["train_eval_loss"]
    if dev_loss_fn is not None:
        line["dev_loss"] = float(dev_loss_fn())
        result.dev_losses = [(0, line["dev_loss"])]
        result.best_dev_loss, result.best_step = line["dev_loss"], 0
    if len(line) > 1:
        train_log = run.open_log()
        try:
            train_log.dev(line)
        finally:
            train_log.close()
    return result


def _rank_share(group: distributed.ProcessGroup) -> type:
    """TrainBatches drawing the global batch order on every rank and collating only this rank's share:
    items are (batch, number of counted examples)."""
    class RankShare(tasks.TrainBatches):
        def _batch(self, indices):
            mine, counted = distributed.shard(indices, group.rank, group.world_size)
            return super()._batch(mine), counted

    return RankShare
