"""Fine-tune a causal LM with MeZO or ZO Fine-tuner (a frozen PertNN bank); see README.

Example: python run_zo_fine_tuner.py --task_name SST2 --train_mode mezo --data_dir ../shared/data --max_steps 20
"""
from __future__ import annotations

import argparse
import sys

from zo.cli import (IGNORED_UPSTREAM_FLAGS, add_dataclass_arguments, parse_with_config, run_main, setup_logging,
                    strip_ignored)
from zo.recipes.finetune import FineTuneConfig, fine_tune

HELP = {
    "resume": "continue the run in output_dir from its last checkpoint (RESUME=1)",
    "overwrite": "replace a run already in output_dir (OVERWRITE=1); without it such a folder is refused",
    "checkpoint_steps": "checkpoint every this many steps (CHECKPOINT_STEPS; 0: by time only)",
    "checkpoint_minutes": "checkpoint every this many minutes (0: by steps only)",
    "checkpoint_kind": "full | replay (weights every 1000 steps, (seed, projected grad) records between)",
    "report_to": "none | wandb (every step and the final metrics; WANDB_MODE=offline works offline)",
    "model_name": "local model folder or hub id; unset: the embedded SmolLM2-135M",
    "train_mode": "mezo | zo_fine_tuner",
    "load_mlp_path": "PertNN bank (.safetensors, or an authors' .pth converted safely)",
    "data_dir": "local data root (layouts of shared/data/README.md); unset: the HF hub",
    "train_set_seed": "data sampling seed (upstream SEED)",
    "seed": "process seed: ZO noise seeds and batch order",
    "perturbation": "virtual (exact restore, default) | inplace",
    "non_diff": "SQuAD/DROP: optimize -F1 of greedy generations",
    "upstream_split": "keep upstream's train/dev arithmetic even when it leaves tiny train sets",
    "eval_only": "zero-shot evaluation of dev and test, no training (also --train_mode none / --trainer none)",
    "task_file": "a task spec (.yaml/.json): your own data file as a task, see docs/adding_a_task.md",
    "save_steps": "evaluation period as upstream (which ignores --eval_steps); replaces --eval_steps when set",
    "cut_at_newline": "cut generated answers at the first newline; False: upstream's strip only",
    "native_opt_bos": "OPT: keep the tokenizer's BOS id instead of upstream's id 0",
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataclass_arguments(parser, FineTuneConfig, HELP)
    # Upstream's --trainer: zo trains, none evaluates only (MeZO); --save_steps is the evaluation period here.
    parser.add_argument("--trainer", choices=("zo", "none"), default="zo", help="zo | none (evaluation only)")
    ignored = {k: v for k, v in IGNORED_UPSTREAM_FLAGS.items() if k not in ("--trainer", "--save_steps")}
    args = parse_with_config(parser, FineTuneConfig, strip_ignored(sys.argv[1:] if argv is None else argv, ignored))
    if args.pop("trainer") == "none":
        args["eval_only"] = True
    return fine_tune(FineTuneConfig(**args))


if __name__ == "__main__":
    setup_logging()
    run_main(main)
