"""Write an untrained, seeded PertNN bank for a model: `python -m zo.init_bank --model M --out F`.

`--granularity layer` writes a layer-wise bank (one PertNN per transformer layer, the Table 3 ablation).

Only the model's config is read (the model is built on the meta device), so this is instant even for
large models. No --model: the embedded SmolLM2 folder.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from zo.blocks import DEFAULT_EFFECTIVE_DIM_RULE, GRANULARITIES, Block, parameter_blocks
from zo.models import resolve_model_path
from zo.pertnn import PertNNBank, check_bank_folder, fresh_bank


def blocks_for(model_path: str) -> list[Block]:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return parameter_blocks(model)


def block_names_for(model_path: str) -> list[str]:
    return [b.name for b in blocks_for(model_path)]


def init_bank(model: str | None, out: str | Path, seed: int = 0, granularity: str = "block") -> PertNNBank:
    path = resolve_model_path(model)
    bank = fresh_bank(blocks_for(path), granularity, torch.Generator().manual_seed(seed))
    base = Path(path).name if Path(path).is_dir() else path
    bank.save(out, {"base_model": base, "trained": "false", "init_seed": seed,
                    "effective_dim_rule": DEFAULT_EFFECTIVE_DIM_RULE})
    return bank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model folder or hub id (default: embedded SmolLM2)")
    parser.add_argument("--out", required=True, help="output .safetensors path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--granularity", choices=GRANULARITIES, default="block",
                        help="block: one PertNN per parameter tensor; layer: one per transformer layer")
    parser.add_argument("--overwrite", action="store_true", help="replace a file already at --out")
    args = parser.parse_args()
    out = Path(args.out)
    check_bank_folder(out)  # before reading the model
    if out.exists() and not args.overwrite:  # a trained bank is one mistyped path away
        raise FileExistsError(f"{out} exists: pass --overwrite to replace it, or choose another --out")
    bank = init_bank(args.model, args.out, args.seed, args.granularity)
    unit = "blocks" if args.granularity == "block" else "layer groups"
    print(f"wrote an untrained {args.granularity}-wise bank with {len(bank)} {unit} to {args.out}")


if __name__ == "__main__":
    from zo.cli import run_main, setup_logging

    setup_logging()
    run_main(main)
