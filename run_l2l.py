"""Meta-train a PertNN bank for a base LLM (learning to learn); see README.

Example: python run_l2l.py --task_name Copa --data_dir ../shared/data --num_train_epochs 2 --save_mlp_path bank.safetensors
"""
from __future__ import annotations

import argparse
import sys

from zo.cli import (L2L_REFUSED_FLAGS, REFUSED_UPSTREAM_FLAGS, add_dataclass_arguments, parse_with_config, run_main,
                    setup_logging, strip_ignored)
from zo.recipes.meta_train import L2LConfig, meta_train

HELP = {
    "resume": "continue the run in output_dir from its last checkpoint (RESUME=1)",
    "overwrite": "replace a run already in output_dir (OVERWRITE=1); without it such a folder is refused",
    "checkpoint_steps": "checkpoint every this many meta steps (CHECKPOINT_STEPS; 0: by time only)",
    "checkpoint_minutes": "checkpoint every this many minutes (0: by steps only)",
    "model_name": "local model folder or hub id; unset: the embedded SmolLM2-135M",
    "multi_task_name": "space-separated task list for --multi_task_training",
    "lr_llm": "lr of the first-order trajectory",
    "lr_mlp": "lr of the PertNN bank optimizer",
    "lr_update": "eta of the look-ahead theta' = theta - eta * g_hat",
    "epochs_per_restart": "reset theta to the pretrained weights every this many epochs",
    "reset": "False: never reset theta (Table 2 ablation); one lr horizon over the whole run",
    "bank_granularity": "block (one PertNN per tensor) | layer (one per transformer layer, Table 3 ablation)",
    "trajectory_optimizer": "adam | sgd (upstream: SGD momentum 0.8)",
    "save_mlp_path": "where the bank is written (.safetensors)",
    "gradient_accumulation_steps": "K micro-batches of per_device_train_batch_size per step (GA)",
    "l2l_accumulation": "batch: K micro-batches act as one batch of K x BS (one meta step, one first-order step) | "
                        "upstream: the authors' meta step per micro-batch, first-order step every K-th on its "
                        "gradient only",
    "task_name": "task of single-task meta-training",
    "multi_task_training": "meta-train on --multi_task_name, one task per meta step",
    "shuffle": "multi-task: shuffle the task order of every outer step",
    "num_train_epochs": "epochs over the training examples (EPOCH)",
    "per_device_train_batch_size": "examples per meta step (BS)",
    "zo_eps": "perturbation size epsilon",
    "need_normalization": "scale the noise by c so that its trace is the effective dimension",
    "grad_through_c": "let the meta-gradient flow through c too (default: c is a constant, as upstream)",
    "momentum": "SGD momentum of the trajectory with --trajectory_optimizer sgd",
    "max_grad_norm": "gradient clipping of the first-order trajectory",
    "mlp_optimizer": "sgd (upstream) | adam: the bank's optimizer",
    "load_float16": "load the weights in float16 (not with --trajectory_optimizer adam)",
    "load_bfloat16": "load the weights in bfloat16",
    "train_set_seed": "data sampling seed",
    "seed": "process seed: noise seeds, dropout, task order",
    "num_train": "train examples sampled per task",
    "num_dev": "dev examples sampled per task",
    "num_eval": "test examples sampled per task",
    "data_dir": "local data root (layouts of shared/data/README.md); unset: the HF hub",
    "output_dir": "run folder (log, summary, checkpoints)",
    "save_every_steps": "write the bank every this many meta steps",
    "log_every_steps": "log a summary every this many meta steps",
    "max_length": "token cap of an example",
    "threads": "torch threads and noise workers",
    "progress": "progress bar",
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataclass_arguments(parser, L2LConfig, HELP)
    # Upstream spellings.
    parser.add_argument("--num_epochs", "--epoch", dest="num_train_epochs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--train_mode", default="l2l", help=argparse.SUPPRESS)
    parser.add_argument("--learning_rate", type=float, default=None, help=argparse.SUPPRESS)
    refused = {**REFUSED_UPSTREAM_FLAGS, **L2L_REFUSED_FLAGS}
    args = parse_with_config(parser, L2LConfig, strip_ignored(sys.argv[1:] if argv is None else argv,
                                                              refused=refused))
    if args.pop("train_mode") != "l2l":
        parser.error("run_l2l.py only does --train_mode l2l")
    learning_rate = args.pop("learning_rate")
    if learning_rate is not None and "--lr_llm" not in (argv or sys.argv):
        args["lr_llm"] = learning_rate
    if isinstance(args["multi_task_name"], str):
        args["multi_task_name"] = args["multi_task_name"].split()
    return meta_train(L2LConfig(**args))


def cli() -> None:
    """The console script's entry (pyproject.toml): logging, then main with its exit codes."""
    setup_logging()
    run_main(main)


if __name__ == "__main__":
    cli()
