"""Fine-tune a causal LM with MeZO, ZO Fine-tuner or another method of zo.methods; see docs/methods.md.

Example: python run_zo_fine_tuner.py --task_name SST2 --train_mode mezo --data_dir ../shared/data --max_steps 20
"""
from __future__ import annotations

import argparse
import sys

from zo.cli import (IGNORED_UPSTREAM_FLAGS, REFUSED_UPSTREAM_FLAGS, add_dataclass_arguments, parse_with_config,
                    run_main, setup_logging, strip_ignored)
from zo.methods import TRAIN_MODES, check_options
from zo.recipes.finetune import FineTuneConfig, fine_tune

HELP = {
    "resume": "continue the run in output_dir from its last checkpoint (RESUME=1)",
    "overwrite": "replace a run already in output_dir (OVERWRITE=1); without it such a folder is refused",
    "checkpoint_steps": "checkpoint every this many steps (CHECKPOINT_STEPS; 0: by time only)",
    "checkpoint_minutes": "checkpoint every this many minutes (0: by steps only)",
    "checkpoint_kind": "full | replay (weights every 1000 steps, (seed, projected grad) records between)",
    "report_to": "none | wandb (every step and the final metrics; WANDB_MODE=offline works offline)",
    "model_name": "local model folder or hub id; unset: the embedded SmolLM2-135M",
    "train_mode": " | ".join(TRAIN_MODES) + " | none (evaluation only); docs/methods.md",
    "load_mlp_path": "PertNN bank (.safetensors, or an authors' .pth converted safely)",
    "data_dir": "local data root (layouts of shared/data/README.md); unset: the HF hub",
    "train_set_seed": "data sampling seed (upstream SEED); with --num_train_sets N, set i uses this + i",
    "num_train_sets": "N whole runs, set i sampled with train_set_seed + i, in <output_dir>/trainset<i>/; "
                      "metrics.json: every set and the mean / sd over them (NUM_TRAIN_SETS)",
    "shared_demonstrations": "with --num_demos: one demonstration set (drawn with train_set_seed) for every test "
                             "example; --num_train_sets sets it",
    "seed": "process seed: ZO noise seeds and batch order",
    "perturbation": "virtual (exact restore, default) | inplace",
    "non_diff": "SQuAD/DROP: optimize -F1 of greedy generations",
    "option_scoring": "auto: one row per example when every option is one token | rows: one row per option "
                      "(the old layout) | prompt_cache: also multi-token options from the prompt's cached keys",
    "length_groups": "N > 1: each training batch as up to N micro-batches of similar length, each padded to its own "
                     "longest (less padding; the same loss up to rounding)",
    "upstream_split": "keep upstream's train/dev arithmetic even when it leaves tiny train sets",
    "eval_only": "zero-shot evaluation of dev and test, no training (also --train_mode none / --trainer none)",
    "task_file": "a task spec (.yaml/.json): your own data file as a task, see docs/adding_a_task.md",
    "save_steps": "evaluation period as upstream (which ignores --eval_steps); replaces --eval_steps when set",
    "cut_at_newline": "cut generated answers at the first newline; False: upstream's strip only",
    "native_opt_bos": "OPT: keep the tokenizer's BOS id instead of upstream's id 0",
    "train_loss_subset": "train examples whose unperturbed loss is logged with the dev loss (0: off)",
    "adam_beta1": "mezo_adam, fo_adam: Adam beta1",
    "adam_beta2": "mezo_adam, fo_adam: Adam beta2",
    "adam_epsilon": "mezo_adam, fo_adam: Adam epsilon",
    "hizoo_alpha": "hizoo: smoothing rate of the curvature estimate D (0: D stays 1, i.e. MeZO)",
    "lozo_rank": "lozo: rank r of the perturbation U V^T",
    "lozo_interval": "lozo: V is resampled every this many steps (nu)",
    "lozo_beta": "lozo: momentum of LOZO-M (0: plain LOZO)",
    "fzoo_n": "fzoo: perturbations (one-sided probes) per step",
    "fo_max_grad_norm": "fo_sgd, fo_adam: gradient clipping norm (0: off)",
    "fo_momentum": "fo_sgd: SGD momentum",
    "need_normalization": "ZO-FT: scale the noise by c so that its trace is the effective dimension",
    "load_float16": "load the weights in float16 (upstream's default; slow on CPU)",
    "load_bfloat16": "load the weights in bfloat16",
    "output_dir": "run folder; unset: result/<task>-<model>-<tag>/",
    "per_device_train_batch_size": "training examples per step (BS)",
    "learning_rate": "LR of every method (LR)",
    "zo_eps": "perturbation size epsilon (EPS)",
    "weight_decay": "decoupled weight decay, theta <- theta (1 - lr wd); see --weight_decay_rule",
    "lr_scheduler_type": "constant | linear | cosine",
    "warmup_steps": "linear warm-up steps (--warmup_rule)",
    "max_steps": "training steps (STEPS)",
    "eval_steps": "dev evaluation every this many steps and at the end; the best state is kept (EVAL_STEPS)",
    "num_train": "train examples sampled (TRAIN)",
    "num_dev": "dev examples sampled (DEV; 0: no model selection)",
    "num_eval": "test examples sampled (EVAL)",
    "max_length": "token cap of an example; a longer one keeps its end (left truncation)",
    "eval_batch_size": "examples per evaluation forward",
    "max_new_tokens": "generated tokens at most (SQuAD, DROP)",
    "sampling": "sample generations instead of greedy decoding (--temperature, --top_k, --top_p)",
    "temperature": "with --sampling",
    "num_beams": "beam search width (1: greedy)",
    "top_k": "with --sampling",
    "top_p": "with --sampling",
    "eos_token": "generation also stops at this token (upstream's, a newline)",
    "threads": "torch threads and noise workers (unset: torch's default, at most 4 for the noise)",
    "progress": "progress bar",
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_dataclass_arguments(parser, FineTuneConfig, HELP)
    # Upstream's --trainer: zo trains, none evaluates only (MeZO); --save_steps is the evaluation period here.
    parser.add_argument("--trainer", choices=("zo", "none"), default="zo", help="zo | none (evaluation only)")
    ignored = {k: v for k, v in IGNORED_UPSTREAM_FLAGS.items() if k not in ("--trainer", "--save_steps")}
    argv = strip_ignored(sys.argv[1:] if argv is None else argv, ignored, REFUSED_UPSTREAM_FLAGS)
    args = parse_with_config(parser, FineTuneConfig, argv)
    if args.pop("trainer") == "none":
        args["eval_only"] = True
    if args["train_mode"] != "none":  # another method's flag on the command line is refused, even at its default
        check_options(args["train_mode"], {}, given={a.split("=", 1)[0][2:] for a in argv if a.startswith("--")})
    return fine_tune(FineTuneConfig(**args))


def cli() -> None:
    """The console script's entry (pyproject.toml): logging, then main with its exit codes."""
    setup_logging()
    run_main(main)


if __name__ == "__main__":
    cli()
