"""Run by tests/zo/test_distributed.py, alone or under torchrun: fine-tune a tiny model for a few steps
with MeZO and with ZO Fine-tuner, and save each rank's final weights next to the run folders."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import zo.recipes.finetune as finetune
from zo import distributed


def main(model_dir: str, bank: str, data_dir: str, out: str, per_device: int) -> None:
    group = distributed.init_process_group(torch.device("cpu"))
    real_train_zo = finetune.train_zo

    for mode in ("mezo", "zo_fine_tuner"):
        run_dir = Path(out) / mode

        def train_and_keep_weights(optimizer, *args, **kwargs):
            result = real_train_zo(optimizer, *args, **kwargs)
            weights = {n: p.detach().clone().contiguous() for n, p in optimizer.model.named_parameters()}
            save_file(weights, str(Path(out) / f"{mode}-rank{group.rank}.safetensors"))
            return result

        finetune.train_zo = train_and_keep_weights
        finetune.fine_tune(finetune.FineTuneConfig(
            task_name="SST2", model_name=model_dir, train_mode=mode, load_mlp_path=bank if mode != "mezo" else None,
            data_dir=data_dir, output_dir=str(run_dir), per_device_train_batch_size=per_device, learning_rate=1e-3,
            max_steps=3, eval_steps=0, num_train=12, num_dev=0, num_eval=0, threads=1, progress=False,
            device="cpu"))
    finetune.train_zo = real_train_zo
    json.dump({"rank": group.rank, "world_size": group.world_size},
              open(Path(out) / f"done-rank{group.rank}.json", "w"))
    distributed.destroy(group)


if __name__ == "__main__":
    main(*sys.argv[1:5], int(sys.argv[5]))
