"""Fine-tune a causal LM with MeZO or ZO Fine-tuner (a frozen PertNN bank); see README.

Example: python run_zo_fine_tuner.py --task_name SST2 --train_mode mezo --data_dir ../shared/data --max_steps 20
"""
from __future__ import annotations

import argparse
import sys

from zo.cli import add_dataclass_arguments, run_main, setup_logging, strip_ignored
from zo.recipes.finetune import FineTuneConfig, fine_tune

HELP = {
    "model_name": "local model folder or hub id; unset: the embedded SmolLM2-135M",
    "train_mode": "mezo | zo_fine_tuner",
    "load_mlp_path": "PertNN bank (.safetensors, or an authors' .pth converted safely)",
    "data_dir": "local data root (layouts of shared/data/README.md); unset: the HF hub",
    "train_set_seed": "data sampling seed (upstream SEED)",
    "seed": "process seed: ZO noise seeds and batch order",
    "perturbation": "virtual (exact restore, default) | inplace",
    "non_diff": "SQuAD/DROP: optimize -F1 of greedy generations",
    "option_scoring": "auto: one row per example when every option is one token | rows: one row per option "
                      "(the old layout) | prompt_cache: also multi-token options from the prompt's cached keys",
    "upstream_split": "keep upstream's train/dev arithmetic even when it leaves tiny train sets",
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataclass_arguments(parser, FineTuneConfig, HELP)
    args = parser.parse_args(strip_ignored(sys.argv[1:] if argv is None else argv))
    return fine_tune(FineTuneConfig(**vars(args)))


if __name__ == "__main__":
    setup_logging()
    run_main(main)
