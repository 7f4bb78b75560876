"""Rebuild a finished fine-tuning run's weights from its step log, and score its test split again.

A MeZO or ZO Fine-tuner step is fully described by its record (seed, L+, L-, projected gradient, lr), and
train_log.jsonl holds every record. So the weights of any step, including the best-dev state that was evaluated
on test, come back from the pretrained model with the optimizer's `replay`, without any forward pass (bit for bit
in fp32: tests/zo/recipes/test_rebuild.py). Methods with more state than the log holds are refused. A campaign
can therefore keep only a run's small files and still hand out its weights, or score its test split again,
here to write the per-example file (test_predictions.jsonl) that runs finished before it existed lack. The
rescored metric must equal the one in metrics.json, or nothing is written: that check also proves the rebuild.

    python -m zo.recipes.rebuild RUN_DIR [RUN_DIR ...] --rescore_test       # write test_predictions.jsonl
    python -m zo.recipes.rebuild RUN_DIR --save_model DIR [--step N]        # the weights as an HF model folder
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

import tasks
from zo.blocks import trainable_blocks
from zo.methods import has_replay
from zo.models import load_model, resolve_device, resolve_dtype
from zo.noise import blocks_noise_signature
from zo.recipes.finetune import FineTuneConfig, build_optimizer, evaluate_test, task_and_splits
from zo.run.folder import RunDir

log = logging.getLogger(__name__)


class RebuildError(RuntimeError):
    """The run cannot be rebuilt (unfinished, no replay for its method, log missing steps) or rescored."""


@dataclass
class Rebuilt:
    config: FineTuneConfig
    model: torch.nn.Module
    tokenizer: object
    task: tasks.Task
    splits: tasks.Splits
    step: int  # the number of steps re-applied


def run_config(saved: dict, threads: int | None = None, model_name: str | None = None,
               data_dir: str | None = None) -> FineTuneConfig:
    """The FineTuneConfig of a run's config.json (settings newer than the run keep their defaults);
    `model_name` / `data_dir` replace the saved paths, for a run folder moved to another machine."""
    fields = {f.name for f in dataclasses.fields(FineTuneConfig)}
    values = {k: v for k, v in saved.items() if k in fields}
    values.update(resume=False, overwrite=False, progress=False, report_to="none", threads=threads,
                  num_train_sets=None)
    values.update({k: v for k, v in (("model_name", model_name), ("data_dir", data_dir)) if v is not None})
    return FineTuneConfig(**values)


def evaluated_step(metrics: dict) -> int:
    """The step whose state was evaluated on test: the best dev state, else the last one."""
    best = metrics.get("best_step")
    return int(best) if best is not None else int(metrics.get("steps") or 0)


def finished_run(run_dir: str | Path) -> RunDir:
    run = RunDir(run_dir)
    if not run.config_path.exists() or not run.metrics_path.exists():
        raise RebuildError(f"{run.path} holds no finished fine-tuning run (config.json and metrics.json)")
    return run


def rebuild(run_dir: str | Path, step: int | None = None, threads: int | None = None, model_name: str | None = None,
            data_dir: str | None = None, device: str | None = None) -> Rebuilt:
    """The model of a finished run after `step` steps (default: the state it evaluated on test), on the run's
    device unless `device` says otherwise: the noise is drawn on the device, so another device type draws
    other noise and rebuilds other weights (a rescore then refuses to write)."""
    run = finished_run(run_dir)
    metrics = run.read_metrics()
    saved = run.read_config()
    config = run_config(saved, threads, model_name, data_dir)
    step = evaluated_step(metrics) if step is None else step
    records = [r for r in run.read_log("step") if int(r["step"]) < step]
    replaying = bool(step) and config.trains
    if replaying and not has_replay(config.train_mode):
        raise RebuildError(f"{config.train_mode} cannot replay a step from its record (its state is more than the "
                           f"log holds): its weights cannot be rebuilt")
    if replaying and [int(r["step"]) for r in records] != list(range(step)):
        raise RebuildError(f"{run.path}: the log does not hold steps 0..{step - 1} exactly once (the run took "
                           f"{metrics.get('steps')} steps)")
    if config.threads:
        torch.set_num_threads(config.threads)
    task, splits = task_and_splits(config)
    run_device = saved.get("device") or "cpu"
    if not isinstance(run_device, str):  # hf_device_map: the noise was drawn on several devices
        raise RebuildError(f"{run.path} ran with a device map ({config.device_map}); rebuilding it is not supported")
    target = resolve_device(device or run_device)
    recorded = saved.get("noise_signature")  # runs from before it was recorded: only the device type is known
    if recorded is None and target.type != torch.device(run_device).type:
        log.warning("%s ran on %s; rebuilding on %s draws other noise", run.path, run_device, target)
    model, tokenizer = load_model(config.model_name, resolve_dtype(config.load_float16, config.load_bfloat16),
                                  device=target, native_opt_bos=config.native_opt_bos)
    blocks = trainable_blocks(model, config.trainable_blocks)  # the run's trained tensors, the others frozen
    here = blocks_noise_signature(blocks)
    if replaying and recorded is not None and recorded != here:
        raise RebuildError(f"{run.path} drew its noise with {recorded!r} and {target} draws it with {here!r} "
                           "(docs/gpu.md): replaying its steps here would give other weights")
    if replaying:
        batch = int(saved.get("global_batch_size") or config.per_device_train_batch_size)
        optimizer = build_optimizer(config, model, blocks, batch)
        for record in records:
            optimizer.replay(record)
    log.info("%s: rebuilt the weights after %d steps", run.path, step)
    return Rebuilt(config, model, tokenizer, task, splits, step)


def rescore_test(run_dir: str | Path, threads: int | None = None, model_name: str | None = None,
                 data_dir: str | None = None, device: str | None = None, tolerance: float = 1e-9) -> dict:
    """Scores the test split of the evaluated state again and writes test_predictions.jsonl, but only if the
    metric equals metrics.json's; returns the rescored test entry."""
    run = finished_run(run_dir)
    recorded = run.read_metrics().get("test")
    if not recorded:
        raise RebuildError(f"{run.path}: metrics.json has no test result to check a rescore against")
    rebuilt = rebuild(run_dir, threads=threads, model_name=model_name, data_dir=data_dir, device=device)
    result, rows = evaluate_test(rebuilt.config, rebuilt.model, rebuilt.tokenizer, rebuilt.task, rebuilt.splits.test)
    name = rebuilt.task.metric_name
    if result["num_examples"] != recorded.get("num_examples") or not math.isclose(
            result[name], recorded[name], rel_tol=0, abs_tol=tolerance):
        raise RebuildError(f"{run.path}: rescored test {name} {result[name]} on {result['num_examples']} examples, "
                           f"metrics.json says {recorded[name]} on {recorded.get('num_examples')}: not written")
    run.write_predictions(rows)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--rescore_test", action="store_true", help="write test_predictions.jsonl (checked)")
    parser.add_argument("--save_model", type=Path, help="save the rebuilt weights as an HF model folder")
    parser.add_argument("--step", type=int, help="with --save_model: after this many steps (default: evaluated)")
    parser.add_argument("--skip_done", action="store_true", help="skip runs that have test_predictions.jsonl")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--model_name", help="the base model's folder, when it moved since the run")
    parser.add_argument("--data_dir", help="the data folder, when it moved since the run")
    parser.add_argument("--device", help="default: the run's own (the noise is drawn there)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not args.rescore_test and args.save_model is None:
        parser.error("nothing to do: pass --rescore_test and/or --save_model")
    if args.save_model is not None and len(args.run_dirs) != 1:
        parser.error("--save_model takes one run folder")
    failed = 0
    for run_dir in args.run_dirs:
        try:
            if args.rescore_test and not (args.skip_done and RunDir(run_dir).predictions_path.exists()):
                result = rescore_test(run_dir, args.threads, args.model_name, args.data_dir, args.device)
                log.info("%s: test %s, test_predictions.jsonl written", run_dir, result)
            if args.save_model is not None:
                rebuilt = rebuild(run_dir, args.step, args.threads, args.model_name, args.data_dir, args.device)
                rebuilt.model.save_pretrained(args.save_model)
                rebuilt.tokenizer.save_pretrained(args.save_model)
                log.info("%s: weights after %d steps saved to %s", run_dir, rebuilt.step, args.save_model)
        except (RebuildError, ValueError, FileNotFoundError) as error:  # a run, device or path that cannot serve
            log.error("%s", error)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
