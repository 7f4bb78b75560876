"""Side-by-side step-time and memory benchmark on the embedded SmolLM2 (or --model), one SST2 batch.

Prints, measured in this one run: forward time, MeZO step, ZO Fine-tuner step, ZO-FT/MeZO,
MeZO/(2 x forward), and peak RSS of a ZO step relative to inference (each memory figure from a fresh
subprocess, so one measurement's high-water mark cannot leak into another). Then one row per method of
the registry (zo.methods, default options): step time / MeZO step, peak RSS / inference, and the extra
state the method reports (describe()["extra_state_bytes"]). `--methods` limits the rows.
Also the forward and the MeZO step with the old one-row-per-option scoring ("rows") beside the default
("auto": one row per SST2 example), and with --copa the Copa classification forward in the rows and
prompt_cache layouts.

    python scripts/benchmark_step.py --data_dir ../shared/data [--batch_size 16 --repeats 5] [--device cuda]
    python scripts/benchmark_step.py --data_parallel 2   # MeZO step time with 1 and 2 processes (torchrun)

On an accelerator the memory figures are torch.cuda.max_memory_allocated instead of RSS.
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

from zo.methods import TRAIN_MODES  # noqa: E402


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
    from zo.methods import MethodContext, build_method
    from zo.models import load_model
    from zo.noise import NoiseSource
    from zo.pertnn import PertNNBank
    from zo.sigma import ConstantSigma, LearnedSigma

    torch.manual_seed(0)
    from zo.models import resolve_device

    model, tokenizer = load_model(args.model, device=resolve_device(args.device))
    task = tasks.get_task("SST2", args.data_dir)
    batch = scoring_batch(task, tokenizer, args.batch_size, "auto")
    blocks = parameter_blocks(model)
    config = ZOConfig(lr=1e-7, eps=1e-3, perturbation=args.perturbation, pair_forwards=args.pair_forwards)
    noise = NoiseSource(args.threads)
    mezo = ZOOptimizer(model, ConstantSigma(blocks), config, seed=0, noise=noise, blocks=blocks)
    bank = PertNNBank([b.name for b in blocks], generator=torch.Generator().manual_seed(0))
    zoft = ZOOptimizer(model, LearnedSigma(bank, blocks, args.batch_size), config, seed=0, noise=noise, blocks=blocks)
    # The registry's other methods, with their default options (zo_fine_tuner: the random bank above).
    others = {}
    for name in args.methods:
        if name in ("mezo", "zo_fine_tuner"):
            continue
        ctx = MethodContext(model, blocks, config, seed=0, noise=noise, batch_size=args.batch_size)
        others[name] = build_method(name, ctx, {})
    methods = {"mezo": mezo, "zo_fine_tuner": zoft, **others}

    forward = forward_of(model, batch)

    def loss():  # what the training loop hands a method: the ZO methods add inference_mode themselves
        return tasks.batch_loss(model, batch)

    return model, tokenizer, batch, forward, loss, methods


def update_sweep(optimizer, with_stats: bool) -> None:
    """One update sweep over every block (a step's third noise pass), with or without the block statistics that
    ZO Fine-tuner gathers in it. The step, 1e-30 z, writes every element as an update does (a zero step would skip
    the write) and moves only weights within about 1e-22 of zero, far below any other weight's rounding."""
    import torch

    from zo.perturb import add_noise_
    from zo.stats import BlockStatsCollector

    collector = BlockStatsCollector(optimizer.blocks) if with_stats else None
    with torch.no_grad():
        add_noise_(optimizer.noise, 1, optimizer.blocks, [1e-30] * len(optimizer.blocks),
                   after_chunk=collector.add_chunk if collector else None)
    if collector:
        collector.result()
    _wait_for_device()


def _wait_for_device() -> None:
    """A CUDA step returns before its last kernels (MeZO's update sweep) finish: without waiting, that work
    would be charged to whatever is timed next."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_round_robin(fns: list, repeats: int) -> list[float]:
    """Median time of each fn, measured in interleaved rounds so that drift (allocator warm-up,
    frequency, other load) hits every measure alike."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            _wait_for_device()
            start = time.perf_counter()
            fn()
            _wait_for_device()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def memory_child(args) -> None:
    import gc

    model, _tokenizer, batch, forward, loss, methods = build(args)
    op = forward if args.child == "inference" else (lambda: methods[args.child].step(loss))
    gc.collect()
    device = next(model.parameters()).device
    if device.type == "cuda":
        import torch

        op()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        op()
        torch.cuda.synchronize(device)
        print(json.dumps({"peak_rss": torch.cuda.max_memory_allocated(device)}))
        return
    with PeakRSS() as peak:
        for _ in range(2):
            op()
    print(json.dumps({"peak_rss": peak.peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--perturbation", default="virtual", choices=["virtual", "inplace"])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--pair_forwards", type=lambda v: v.lower() in ("1", "true", "yes"), default=False,
                        help="virtual: the + and - forwards as one paired forward (default False); the other "
                             "setting is always timed too, as a comparison row")
    parser.add_argument("--skip_memory", action="store_true")
    parser.add_argument("--methods", nargs="+", default=list(TRAIN_MODES), choices=list(TRAIN_MODES),
                        help="registry methods to give a row (default: all)")
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:K | mps")
    parser.add_argument("--data_parallel", type=int, default=0,
                        help="N > 1: time a MeZO step at the same global batch with 1 and N processes instead")
    parser.add_argument("--dp_child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--copa", action="store_true", help="also time a Copa batch: rows vs prompt_cache")
    args = parser.parse_args()
    if args.child:  # a memory child builds only what it measures
        args.methods = [m for m in args.methods if m == args.child]
    if args.dp_child:
        data_parallel_child(args)
        return
    if args.data_parallel > 1:
        data_parallel_benchmark(args)
        return
    if args.child:
        memory_child(args)
        return

    import torch

    import tasks

    model, tokenizer, batch, forward, loss, methods = build(args)
    seq = tuple(batch["input_ids"].shape)
    names = list(methods)
    old_batch = scoring_batch(tasks.get_task("SST2", args.data_dir), tokenizer, args.batch_size, "rows")
    old_forward = forward_of(model, old_batch)

    def old_loss():
        return tasks.batch_loss(model, old_batch)

    measures = [forward] + [lambda m=methods[n]: m.step(loss) for n in names]
    measures += [old_forward, lambda: methods["mezo"].step(old_loss)]
    # the other pairing setting (zo.paired_calls), same model, batch and noise
    from dataclasses import replace

    from zo.estimator import ZOOptimizer
    from zo.sigma import ConstantSigma

    mezo = methods["mezo"]
    other_pairing = ZOOptimizer(model, ConstantSigma(mezo.blocks), replace(mezo.config, pair_forwards=not args.pair_forwards),
                                seed=0, noise=mezo.noise, blocks=mezo.blocks)
    virtual = args.perturbation == "virtual"  # in place, pairing does not exist: nothing to compare
    measures += [lambda: other_pairing.step(loss)] if virtual else [lambda: None]
    measures += [lambda: update_sweep(mezo, with_stats=False), lambda: update_sweep(mezo, with_stats=True)]
    if args.copa:
        copa = tasks.get_task("Copa", args.data_dir)
        copa_batches = [scoring_batch(copa, tokenizer, args.batch_size, s) for s in ("rows", "prompt_cache")]
        measures += [forward_of(model, b) for b in copa_batches]
    times = timed_round_robin(measures, args.repeats)
    t_fwd, step_time = times[0], dict(zip(names, times[1:1 + len(names)]))
    t_old_fwd, t_old_mezo, t_other_pairing, t_sweep, t_sweep_stats = times[1 + len(names):6 + len(names)]
    t_mezo, t_zoft = step_time["mezo"], step_time["zo_fine_tuner"]
    rows = [
        ("forward (one batch)", f"{t_fwd:.3f} s"),
        ("MeZO step", f"{t_mezo:.3f} s"),
        ("ZO Fine-tuner step", f"{t_zoft:.3f} s"),
        ("ZO-FT / MeZO", f"{t_zoft / t_mezo:.3f}"),
        ("MeZO / (2 x forward)", f"{t_mezo / (2 * t_fwd):.3f}"),
        # ZO-FT's only extra work in a step: the PertNN bank, and the block statistics gathered in the update sweep
        ("update sweep, with / without block statistics", f"{t_sweep_stats:.3f} s / {t_sweep:.3f} s"),
        ("block statistics / (ZO-FT step - MeZO step)",
         f"{(t_sweep_stats - t_sweep) / (t_zoft - t_mezo):.2f}" if t_zoft > t_mezo else "ZO-FT not slower"),
        (f"forward, rows scoring {tuple(old_batch['input_ids'].shape)} / auto {seq}",
         f"{t_old_fwd:.3f} s / {t_fwd:.3f} s"),
        ("MeZO step, rows scoring / auto", f"{t_old_mezo:.3f} s / {t_mezo:.3f} s"),
        ("MeZO step speed-up, rows / auto", f"{t_old_mezo / t_mezo:.3f}"),
        ("MeZO / (2 x forward), rows scoring", f"{t_old_mezo / (2 * t_old_fwd):.3f}"),
    ]
    if virtual:
        t_paired, t_separate = (t_mezo, t_other_pairing) if args.pair_forwards else (t_other_pairing, t_mezo)
        rows += [("MeZO step, paired forward / two forwards", f"{t_paired:.3f} s / {t_separate:.3f} s"),
                 ("MeZO / (2 x forward), two forwards", f"{t_separate / (2 * t_fwd):.3f}"),
                 ("MeZO / (2 x forward), paired", f"{t_paired / (2 * t_fwd):.3f}")]
    if args.copa:
        t_copa_rows, t_copa_cache = times[6 + len(names):]
        shapes = " / ".join(str(tuple(b["input_ids"].shape)) for b in copa_batches)
        rows += [(f"Copa forward, rows / prompt_cache {shapes}", f"{t_copa_rows:.3f} s / {t_copa_cache:.3f} s"),
                 ("Copa forward speed-up, rows / prompt_cache", f"{t_copa_rows / t_copa_cache:.3f}")]
    if not args.skip_memory:
        base = [sys.executable, __file__, "--data_dir", args.data_dir, "--batch_size", str(args.batch_size),
                "--perturbation", args.perturbation, "--pair_forwards", str(args.pair_forwards)] + (["--model", args.model] if args.model else [])
        peaks = {}
        for child in ["inference"] + names:
            out = subprocess.run(base + ["--device", args.device, "--child", child], capture_output=True, text=True,
                                 check=True)
            peaks[child] = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss"]
        what = "peak RSS" if args.device == "cpu" else "peak memory allocated"
        rows += [
            (f"{what}, inference", f"{peaks['inference'] / 2**20:.0f} MiB"),
            (f"{what}, MeZO step / inference", f"{peaks['mezo'] / peaks['inference']:.3f}"),
            (f"{what}, ZO-FT step / inference", f"{peaks['zo_fine_tuner'] / peaks['inference']:.3f}"),
        ]
    print(f"\nSmolLM2 benchmark: batch {args.batch_size} SST2 examples -> input {seq}, "
          f"torch threads {torch.get_num_threads()}, perturbation {args.perturbation}, paired forwards {args.pair_forwards}, median of {args.repeats} interleaved rounds")
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print("\n| method | step | step / MeZO | peak RSS / inference | extra state |\n|---|---|---|---|---|")
    for name in names:
        memory = "" if args.skip_memory else f"{peaks[name] / peaks['inference']:.3f}"
        extra = methods[name].describe().get("extra_state_bytes", 0) / 2**20
        print(f"| {name} | {step_time[name]:.3f} s | {step_time[name] / t_mezo:.3f} | {memory} | {extra:.0f} MiB |")


def data_parallel_child(args) -> None:
    """Under torchrun: a MeZO step on this rank's share of one global batch, losses all-reduced."""
    import torch

    import tasks
    from zo import distributed
    from zo.blocks import parameter_blocks
    from zo.estimator import ZOConfig, ZOOptimizer
    from zo.models import load_model, resolve_device
    from zo.noise import NoiseSource
    from zo.sigma import ConstantSigma

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    group = distributed.init_process_group(device)
    model, tokenizer = load_model(args.model, device=device)
    task = tasks.get_task("SST2", args.data_dir)
    samples = tasks.sample_splits(task, args.batch_size, 0, 0, 43).train
    mine, counted = distributed.shard(samples, group.rank, group.world_size)
    batch = next(tasks.TrainBatches(mine, task, tokenizer, len(mine), seed=0, as_classification=True).epoch(False))
    blocks = parameter_blocks(model)
    opt = ZOOptimizer(model, ConstantSigma(blocks), ZOConfig(lr=1e-7, eps=1e-3), seed=0,
                      noise=NoiseSource(args.threads), blocks=blocks)

    def loss():
        return distributed.weighted_mean_loss(lambda: tasks.batch_loss(model, batch), counted, group, device)

    (step_time,) = timed_round_robin([lambda: opt.step(loss)], args.repeats)
    if group.is_main:
        print(json.dumps({"processes": group.world_size, "mezo_step": step_time}))
    distributed.destroy(group)


def data_parallel_benchmark(args) -> None:
    """MeZO step time at the same global batch with 1 and N processes (each with threads = cores / N)."""
    cores = os.cpu_count() or 1
    rows = []
    for processes in (1, args.data_parallel):
        threads = args.threads or max(1, cores // processes)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(29400 + processes), __file__, "--dp_child", "--data_dir", args.data_dir,
               "--batch_size", str(args.batch_size), "--repeats", str(args.repeats), "--threads", str(threads),
               "--device", args.device] + (["--model", args.model] if args.model else [])
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"\nData-parallel MeZO, global batch {args.batch_size} SST2 examples, median of {args.repeats}, {cores} cores")
    print("| processes | MeZO step |\n|---|---|")
    for row in rows:
        print(f"| {row['processes']} | {row['mezo_step']:.3f} s |")


if __name__ == "__main__":
    main()
