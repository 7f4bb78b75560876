"""Peak memory of one L2L step relative to one first-order Adam step, on the embedded SmolLM2.

An L2L step = the meta step (sigma with grad, two ZO forwards, functional look-ahead, meta backward,
bank update) + the first-order Adam trajectory step. Each measurement runs in a fresh subprocess and
covers two steps after a warm-up step, so Adam's state exists in both.

    python scripts/benchmark_l2l_memory.py --data_dir ../shared/data [--batch_size 8]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from benchmark_step import PeakRSS  # noqa: E402


def child(args) -> None:
    import gc

    import torch

    import tasks
    from zo.blocks import parameter_blocks
    from zo.l2l import MetaConfig, MetaLearner, TrajectoryOptimizer
    from zo.models import load_model
    from zo.noise import NoiseSource
    from zo.pertnn import PertNNBank

    torch.manual_seed(0)
    model, tokenizer = load_model(args.model)
    task = tasks.get_task("Copa", args.data_dir)
    splits = tasks.sample_splits(task, args.batch_size, 0, 0, 0)
    batch = next(tasks.TrainBatches(splits.train, task, tokenizer, args.batch_size, seed=0,
                                    as_classification=task.train_as_classification).forever())
    blocks = parameter_blocks(model)
    trajectory = TrajectoryOptimizer(model, 1e-5, period_steps=100, kind="adam")
    learner = MetaLearner(model, PertNNBank([b.name for b in blocks]), blocks, MetaConfig(), args.batch_size,
                          noise=NoiseSource(args.threads))
    if args.child == "adam":
        def op():
            trajectory.step(tasks.batch_loss, batch)
    else:
        def op():
            learner.meta_step(tasks.batch_loss, batch, "Copa")
            trajectory.step(tasks.batch_loss, batch)
    op()  # warm-up: Adam's state and the allocator's first-step growth exist before measuring
    gc.collect()
    start = time.perf_counter()
    with PeakRSS() as peak:
        for _ in range(2):
            op()
    print(json.dumps({"peak_rss": peak.peak, "seconds_per_step": (time.perf_counter() - start) / 2}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    base = [sys.executable, __file__, "--data_dir", args.data_dir, "--batch_size", str(args.batch_size)]
    if args.model:
        base += ["--model", args.model]
    results = {}
    for mode in ("adam", "l2l"):
        out = subprocess.run(base + ["--child", mode], capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = results["l2l"]["peak_rss"] / results["adam"]["peak_rss"]
    print(f"\nL2L memory benchmark: SmolLM2, Copa batch {args.batch_size}, fp32")
    print("| measure | value |\n|---|---|")
    print(f"| peak RSS, first-order Adam step | {results['adam']['peak_rss'] / 2**20:.0f} MiB |")
    print(f"| peak RSS, L2L step (meta + Adam trajectory) | {results['l2l']['peak_rss'] / 2**20:.0f} MiB |")
    print(f"| L2L / Adam | {ratio:.3f} |")
    print(f"| seconds per step, Adam / L2L | {results['adam']['seconds_per_step']:.2f} / "
          f"{results['l2l']['seconds_per_step']:.2f} |")


if __name__ == "__main__":
    main()
