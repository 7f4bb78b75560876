"""Time of the per-example dev loss with the dev set batched as sampled against longest first, side by side in
one process (interleaved rounds), and the two values, which may differ only by rounding.

    python scripts/benchmark_dev_loss.py --data_dir ../shared/data --tasks CB WSC [--model DIR] [--rounds 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import tasks  # noqa: E402
from campaign.settings import DEFAULT_CAPS, TaskCaps  # noqa: E402
from zo.models import load_model  # noqa: E402
from zo.recipes.finetune import _mean_example_loss  # noqa: E402



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default="../shared/data")
    parser.add_argument("--tasks", nargs="+", default=["CB", "WSC"])
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M")
    parser.add_argument("--dev", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=8, help="the recipe's eval_batch_size")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model)
    for name in args.tasks:
        task = tasks.get_task(name, args.data_dir)
        dev = tasks.sample_splits(task, 1000, args.dev, 0, 42).dev
        stream = tasks.TrainBatches(dev, task, tokenizer, args.batch_size, max_length=DEFAULT_CAPS.get(name, TaskCaps()).max_length)
        seconds, values = {False: [], True: []}, {}
        for _ in range(args.rounds):
            for by_length in (False, True):
                start = time.perf_counter()
                values[by_length] = _mean_example_loss(model, stream.epoch(shuffle=False, by_length=by_length), {})
                seconds[by_length].append(time.perf_counter() - start)
        plain, sorted_ = statistics.median(seconds[False]), statistics.median(seconds[True])
        print(f"{name}: as sampled {plain:.1f} s, longest first {sorted_:.1f} s, speed-up {plain / sorted_:.2f}x; "
              f"dev loss {values[False]:.8f} vs {values[True]:.8f} "
              f"(relative difference {abs(values[True] - values[False]) / abs(values[False]):.1e})", flush=True)


if __name__ == "__main__":
    main()
