"""Recipe: fine-tune a causal LM on one task with MeZO or ZO Fine-tuner, then evaluate dev and test.

`fine_tune(FineTuneConfig(...))` is the whole job, usable from Python; run_zo_fine_tuner.py only
parses the command line into a FineTuneConfig.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import tasks
from zo.blocks import EFFECTIVE_DIM_RULES, parameter_blocks
from zo.estimator import ZOConfig, ZOOptimizer
from zo.io import sanitize_component, write_json
from zo.loop import BEST_STATE_FILE, train_zo
from zo.models import load_model, resolve_dtype, resolve_model_path
from zo.noise import NoiseSource
from zo.pertnn import load_bank
from zo.seeding import seed_everything
from zo.sigma import ConstantSigma, LearnedSigma

log = logging.getLogger(__name__)

TRAIN_MODES = ("mezo", "zo_fine_tuner")


@dataclass
class FineTuneConfig:
    task_name: str = "SST2"
    model_name: str | None = None  # None: the embedded SmolLM2 folder
    train_mode: str = "zo_fine_tuner"
    load_mlp_path: str | None = None
    need_normalization: bool = True
    effective_dim_rule: str | None = None  # None: the rule the bank records (upstream for the authors' banks)
    load_float16: bool = False
    load_bfloat16: bool = False
    data_dir: str | None = None  # local data root; None: the HF hub
    output_dir: str | None = None
    per_device_train_batch_size: int = 16
    learning_rate: float = 1e-6
    zo_eps: float = 1e-3
    weight_decay: float = 0.0
    lr_scheduler_type: str = "constant"
    warmup_steps: int = 0
    max_steps: int = 20000
    eval_steps: int = 2000
    train_set_seed: int = 43
    seed: int = 42
    num_train: int = 1000
    num_dev: int | None = 500
    num_eval: int | None = 1000
    upstream_split: bool = False
    train_as_classification: bool | None = None  # None: the task's upstream default
    non_diff: bool = False
    perturbation: str = "virtual"
    max_length: int = 2048
    eval_batch_size: int = 8
    option_scoring: str = "auto"  # tasks.encoding.OPTION_SCORINGS: batch layout of the options, same losses
    max_new_tokens: int = 50
    threads: int | None = None
    progress: bool = True
    report_to: str = "none"

    def validate(self) -> None:
        if self.train_mode not in TRAIN_MODES:
            raise ValueError(f"unknown train_mode {self.train_mode!r}: choose one of {TRAIN_MODES}")
        if self.train_mode == "zo_fine_tuner" and not self.load_mlp_path:
            raise ValueError("train_mode zo_fine_tuner needs a PertNN bank: set LOAD_MLP_PATH / --load_mlp_path "
                             "(python -m zo.init_bank writes an untrained one)")
        if self.load_mlp_path and not Path(self.load_mlp_path).exists():
            raise FileNotFoundError(f"PertNN bank not found: {self.load_mlp_path}")
        if self.task_name.lower() not in {t.lower() for t in tasks.TASK_NAMES}:
            raise ValueError(f"unknown task {self.task_name!r}: choose one of {', '.join(tasks.TASK_NAMES)}")
        if self.data_dir is not None and not Path(self.data_dir).is_dir():
            raise FileNotFoundError(f"data folder does not exist: {self.data_dir}")
        if self.per_device_train_batch_size < 1 or self.max_steps < 0 or self.eval_steps < 0:
            raise ValueError("batch size must be >= 1 and steps / eval_steps >= 0")
        if self.non_diff and self.task_name.lower() not in ("squad", "drop"):  # names are case-insensitive
            raise ValueError("--non_diff (-F1 objective) is for the generation tasks SQuAD and DROP")
        if self.effective_dim_rule not in (None, *EFFECTIVE_DIM_RULES):
            raise ValueError(f"effective_dim_rule must be one of {EFFECTIVE_DIM_RULES}, got {self.effective_dim_rule!r}")
        tasks.encoding.check_option_scoring(self.option_scoring)
        if self.report_to not in ("none", "wandb"):
            raise ValueError("report_to must be 'none' or 'wandb'")

    def default_output_dir(self) -> str:
        model = sanitize_component(Path(resolve_model_path(self.model_name)).name)
        bank = sanitize_component(self.load_mlp_path) if self.load_mlp_path else "nobank"
        tag = (f"{self.train_mode}-{self.task_name}-{self.max_steps}-{self.per_device_train_batch_size}-"
               f"{self.learning_rate}-{self.zo_eps}-{self.train_set_seed}-{bank}")
        return str(Path("result") / f"{self.task_name}-{model}-{sanitize_component(tag, 160)}")


def _mean_loss(model, loss_fn, batches) -> float:
    total, count = 0.0, 0
    with torch.inference_mode():
        for batch in batches:
            total += float(loss_fn(batch))
            count += 1
    return total / max(count, 1)


def fine_tune(config: FineTuneConfig) -> dict:
    """Run the whole job; returns the metrics written to <output_dir>/metrics.json."""
    config.validate()
    model_path = resolve_model_path(config.model_name)  # a bad model path fails before any data is read
    output_dir = Path(config.output_dir or config.default_output_dir())
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)

    task = tasks.get_task(config.task_name, config.data_dir)
    splits = tasks.sample_splits(task, config.num_train, config.num_dev, config.num_eval, config.train_set_seed,
                                 upstream_split=config.upstream_split)
    as_classification = (task.train_as_classification if config.train_as_classification is None
                         else config.train_as_classification)
    dtype = resolve_dtype(config.load_float16, config.load_bfloat16)
    model, tokenizer = load_model(model_path, dtype)
    blocks = parameter_blocks(model)

    if config.train_mode == "mezo":
        sigma = ConstantSigma(blocks)
        bank_note = None
    else:
        bank = load_bank(config.load_mlp_path)
        if Path(config.load_mlp_path).suffix in (".pth", ".pt", ".bin"):
            log.info("converted the authors' pickled bank %s through the safe loader (%d blocks)",
                     config.load_mlp_path, len(bank))
        sigma = LearnedSigma(bank, blocks, config.per_device_train_batch_size, config.need_normalization,
                             config.effective_dim_rule)
        bank_note = bank.metadata.get("base_model")

    # Every input is checked (data, model, bank): only now touch the run folder, so that bad input
    # never deletes an earlier run's results or leaves an empty folder behind.
    output_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.json", "train_log.jsonl", BEST_STATE_FILE):
        (output_dir / stale).unlink(missing_ok=True)

    zo_config = ZOConfig(lr=config.learning_rate, eps=config.zo_eps, weight_decay=config.weight_decay,
                         perturbation="inplace" if config.non_diff else config.perturbation,
                         lr_schedule=config.lr_scheduler_type, warmup_steps=config.warmup_steps,
                         total_steps=config.max_steps)
    optimizer = ZOOptimizer(model, sigma, zo_config, seed=config.seed, noise=NoiseSource(config.threads), blocks=blocks)

    encoder = tasks.TrainBatches(splits.train, task, tokenizer, config.per_device_train_batch_size,
                                 seed=config.seed, as_classification=as_classification,
                                 max_length=config.max_length, for_generation_objective=config.non_diff,
                                 option_scoring=config.option_scoring)
    if config.non_diff:
        def loss_fn(batch):
            return tasks.negative_f1_objective(model, tokenizer, batch, task, max_length=config.max_length,
                                               max_new_tokens=config.max_new_tokens)
    else:
        def loss_fn(batch):
            return tasks.batch_loss(model, batch)

    dev_loss_fn = None
    if splits.dev and not config.non_diff:
        dev_batches = tasks.TrainBatches(splits.dev, task, tokenizer, config.eval_batch_size, seed=0,
                                         as_classification=as_classification, max_length=config.max_length,
                                         option_scoring=config.option_scoring)
        dev_loss_fn = lambda: _mean_loss(model, loss_fn, dev_batches.epoch(shuffle=False))  # noqa: E731

    resolved = asdict(config)
    resolved.update({"output_dir": str(output_dir), "model_name": model_path, "dtype": str(dtype),
                     "train_as_classification": as_classification, "perturbation": zo_config.perturbation,
                     "num_blocks": len(blocks), "split_sizes": {"train": len(splits.train), "dev": len(splits.dev),
                                                                "test": len(splits.test)},
                     "split_notes": splits.notes, "eval_note": task.eval_note, "bank_base_model": bank_note,
                     "effective_dim_rule": getattr(sigma, "effective_dim_rule", None)})
    write_json(output_dir / "config.json", resolved)
    log.info("task %s: %d train / %d dev / %d test; %s on %s; output %s", task.name, len(splits.train),
             len(splits.dev), len(splits.test), config.train_mode, model_path, output_dir)

    wandb_run = _maybe_wandb(config, resolved)

    def log_extra() -> dict:
        if isinstance(sigma, LearnedSigma):
            return {"sigma_mean": float(sigma.last_sigma.mean()), "c": sigma.last_c}
        return {}

    start = time.perf_counter()
    result = train_zo(optimizer, encoder.forever(), loss_fn, config.max_steps, output_dir, config.eval_steps,
                      dev_loss_fn, progress=config.progress, log_extra=log_extra)

    metrics: dict = {"task": task.name, "model": model_path, "train_mode": config.train_mode,
                     "steps": result.steps_done, "status": result.status,
                     "best_step": result.best_step, "best_dev_loss": result.best_dev_loss,
                     "final_train_loss": result.final_train_loss, "train_seconds": round(result.seconds, 2)}
    if task.eval_note:
        metrics["eval_note"] = task.eval_note
    eval_kwargs = dict(batch_size=config.eval_batch_size, max_length=config.max_length,
                       max_new_tokens=config.max_new_tokens, progress=config.progress,
                       option_scoring=config.option_scoring)
    if splits.dev:
        metrics["dev"] = tasks.evaluate(model, tokenizer, task, splits.dev, **eval_kwargs)
        if result.best_dev_loss is not None:
            metrics["dev"]["loss"] = result.best_dev_loss
    if splits.test:
        metrics["test"] = tasks.evaluate(model, tokenizer, task, splits.test, **eval_kwargs)
    metrics["total_seconds"] = round(time.perf_counter() - start, 2)
    write_json(output_dir / "metrics.json", metrics)
    if wandb_run is not None:
        wandb_run.log({f"{split}/{k}": v for split in ("dev", "test") for k, v in metrics.get(split, {}).items()})
        wandb_run.finish()
    log.info("metrics: %s", {k: metrics[k] for k in ("dev", "test") if k in metrics})
    if not math.isfinite(result.final_train_loss or 0.0):
        log.warning("the final training loss is not finite")
    return metrics


def _maybe_wandb(config: FineTuneConfig, resolved: dict):
    if config.report_to != "wandb":
        return None
    try:
        import wandb
    except ImportError as err:
        raise ImportError("--report_to wandb needs `pip install wandb`") from err
    return wandb.init(project="zo-fine-tuner", config=resolved)
