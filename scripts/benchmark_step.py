"""Side-by-side step-time and memory benchmark on the embedded SmolLM2 (or --model), one SST2 batch.

Prints, measured in this one run: forward time, MeZO step, ZO Fine-tuner step, ZO-FT/MeZO,
MeZO/(2 x forward), the same forward and MeZO step with the old one-row-per-option scoring ("rows") beside the
default ("auto": one row per SST2 example), with --copa the Copa classification forward in the rows and
prompt_cache layouts, and peak RSS of a ZO step relative to inference (each memory figure from a fresh
subprocess, so one measurement's high-water mark cannot leak into another).

    python scripts/benchmark_step.py --data_dir ../shared/data [--batch_size 16 --repeats 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class PeakRSS:
    """Polls this process's resident set size in a thread; `peak` is the maximum seen (bytes)."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.peak = self._rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def scoring_batch(task, tokenizer, batch_size: int, option_scoring: str) -> dict:
    import tasks

    splits = tasks.sample_splits(task, batch_size, 0, 0, 43)
    return next(tasks.TrainBatches(splits.train, task, tokenizer, batch_size, seed=0, as_classification=True,
                                   option_scoring=option_scoring).forever())


def forward_of(model, batch):
    import torch

    import tasks

    def forward():
        with torch.inference_mode():
            return float(tasks.batch_loss(model, batch))
    return forward


def build(args):
    import torch

    import tasks
    from zo.blocks import parameter_blocks
    from zo.estimator import ZOConfig, ZOOptimizer
    from zo.models import load_model
    from zo.noise import NoiseSource
    from zo.pertnn import PertNNBank
    from zo.sigma import ConstantSigma, LearnedSigma

    torch.manual_seed(0)
    model, tokenizer = load_model(args.model)
    task = tasks.get_task("SST2", args.data_dir)
    batch = scoring_batch(task, tokenizer, args.batch_size, "auto")
    blocks = parameter_blocks(model)
    config = ZOConfig(lr=1e-7, eps=1e-3, perturbation=args.perturbation)
    noise = NoiseSource(args.threads)
    mezo = ZOOptimizer(model, ConstantSigma(blocks), config, seed=0, noise=noise, blocks=blocks)
    bank = PertNNBank([b.name for b in blocks], generator=torch.Generator().manual_seed(0))
    zoft = ZOOptimizer(model, LearnedSigma(bank, blocks, args.batch_size), config, seed=0, noise=noise, blocks=blocks)

    return model, tokenizer, batch, forward_of(model, batch), mezo, zoft


def timed_round_robin(fns: list, repeats: int) -> list[float]:
    """Median time of each fn, measured in interleaved rounds so that drift (allocator warm-up,
    frequency, other load) hits every measure alike."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def memory_child(args) -> None:
    import gc

    model, _tokenizer, batch, forward, mezo, zoft = build(args)
    op = {"inference": forward, "mezo": lambda: mezo.step(forward),
          "zo_fine_tuner": lambda: zoft.step(forward)}[args.child]
    gc.collect()
    with PeakRSS() as peak:
        for _ in range(2):
            op()
    print(json.dumps({"peak_rss": peak.peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--perturbation", default="virtual", choices=["virtual", "inplace"])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--skip_memory", action="store_true")
    parser.add_argument("--copa", action="store_true", help="also time a Copa batch: rows vs prompt_cache")
    args = parser.parse_args()
    if args.child:
        memory_child(args)
        return

    import torch

    import tasks

    model, tokenizer, batch, forward, mezo, zoft = build(args)
    seq = tuple(batch["input_ids"].shape)
    old_batch = scoring_batch(tasks.get_task("SST2", args.data_dir), tokenizer, args.batch_size, "rows")
    old_forward = forward_of(model, old_batch)
    measures = [forward, lambda: mezo.step(forward), lambda: zoft.step(forward), old_forward,
                lambda: mezo.step(old_forward)]
    if args.copa:
        copa = tasks.get_task("Copa", args.data_dir)
        copa_batches = [scoring_batch(copa, tokenizer, args.batch_size, s) for s in ("rows", "prompt_cache")]
        measures += [forward_of(model, b) for b in copa_batches]
    times = timed_round_robin(measures, args.repeats)
    t_fwd, t_mezo, t_zoft, t_old_fwd, t_old_mezo = times[:5]
    rows = [
        ("forward (one batch)", f"{t_fwd:.3f} s"),
        ("MeZO step", f"{t_mezo:.3f} s"),
        ("ZO Fine-tuner step", f"{t_zoft:.3f} s"),
        ("ZO-FT / MeZO", f"{t_zoft / t_mezo:.3f}"),
        ("MeZO / (2 x forward)", f"{t_mezo / (2 * t_fwd):.3f}"),
        (f"forward, rows scoring {tuple(old_batch['input_ids'].shape)} / auto {seq}",
         f"{t_old_fwd:.3f} s / {t_fwd:.3f} s"),
        ("MeZO step, rows scoring / auto", f"{t_old_mezo:.3f} s / {t_mezo:.3f} s"),
        ("MeZO step speed-up, rows / auto", f"{t_old_mezo / t_mezo:.3f}"),
    ]
    if args.copa:
        t_copa_rows, t_copa_cache = times[5:]
        shapes = " / ".join(str(tuple(b["input_ids"].shape)) for b in copa_batches)
        rows += [(f"Copa forward, rows / prompt_cache {shapes}", f"{t_copa_rows:.3f} s / {t_copa_cache:.3f} s"),
                 ("Copa forward speed-up, rows / prompt_cache", f"{t_copa_rows / t_copa_cache:.3f}")]
    if not args.skip_memory:
        base = [sys.executable, __file__, "--data_dir", args.data_dir, "--batch_size", str(args.batch_size),
                "--perturbation", args.perturbation] + (["--model", args.model] if args.model else [])
        peaks = {}
        for child in ("inference", "mezo", "zo_fine_tuner"):
            out = subprocess.run(base + ["--child", child], capture_output=True, text=True, check=True)
            peaks[child] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss"]
        rows += [
            ("peak RSS, inference", f"{peaks['inference'] / 2**20:.0f} MiB"),
            ("peak RSS, MeZO step / inference", f"{peaks['mezo'] / peaks['inference']:.3f}"),
            ("peak RSS, ZO-FT step / inference", f"{peaks['zo_fine_tuner'] / peaks['inference']:.3f}"),
        ]
    print(f"\nSmolLM2 benchmark: batch {args.batch_size} SST2 examples -> input {seq}, "
          f"torch threads {torch.get_num_threads()}, perturbation {args.perturbation}, median of {args.repeats} interleaved rounds")
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
