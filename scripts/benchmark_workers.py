"""Campaign throughput: one run on all the cores against WORKERS runs at once on a share each, side by side.

    python scripts/benchmark_workers.py --data_dir ../shared/data                      # SST-2, MeZO, 16 steps
    python scripts/benchmark_workers.py --data_dir ../shared/data --task BoolQ --steps 8   # its campaign caps

The same short run (same data, seed and steps) is timed alone with every core, then `--workers` copies of it
at once with cores / workers threads each. Throughput ratio = workers x (time alone) / (time of the copies
together), from the whole runs (loading and evaluation included) and from their training steps only. The
losses of all the runs are compared too: the thread count must not change what a run computes.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
from campaign.settings import DEFAULT_CAPS, TaskCaps, available_cores  # noqa: E402


def launch(args: argparse.Namespace, out: Path, threads: int) -> subprocess.Popen:
    cmd = [sys.executable, str(REPO_ROOT / "run_zo_fine_tuner.py"), "--task_name", args.task,
           "--train_mode", args.method, "--learning_rate", "1e-5", "--zo_eps", "1e-3",
           "--per_device_train_batch_size", "16",
           "--max_steps", str(args.steps), "--eval_steps", "100000", "--num_train", "200", "--num_dev", "16",
           "--num_eval", "16", "--max_length", str(args.max_length), "--length_groups", str(args.length_groups),
           "--train_loss_subset", "0", "--output_dir", str(out), "--overwrite", "True", "--progress", "False",
           "--threads", str(threads)]
    if args.data_dir:
        cmd += ["--data_dir", args.data_dir]
    if args.model:
        cmd += ["--model_name", args.model]
    if args.method == "zo_fine_tuner":
        cmd += ["--load_mlp_path", args.bank]
    with open(out.with_suffix(".log"), "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)


def wait_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"a run failed (exit {proc.returncode}); see the .log next to its output folder")


def step_seconds(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [r["seconds"] for r in rows if r.get("kind") == "step"]


def losses(out: Path) -> list[tuple[float, float]]:
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [(r["loss_plus"], r["loss_minus"]) for r in rows if r.get("kind") == "step"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=str(REPO_ROOT.parent / "shared" / "data"))
    parser.add_argument("--model", default="")
    parser.add_argument("--task", default="SST2")
    parser.add_argument("--method", default="mezo")
    parser.add_argument("--bank", default=str(REPO_ROOT / "learned_finetuner" / "smollm2-135m_copa.safetensors"),
                        help="the PertNN bank of --method zo_fine_tuner")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=None, help="default: the campaign's cap of the task")
    parser.add_argument("--length_groups", type=int, default=None, help="default: the campaign's, for the task")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    caps = DEFAULT_CAPS.get(args.task, TaskCaps())
    args.max_length = args.max_length or caps.max_length
    args.length_groups = args.length_groups or caps.length_groups
    cores = available_cores()
    share = max(1, cores // args.workers)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.time()
        wait_all([launch(args, root / "alone", cores)])
        alone = time.time() - start
        start = time.time()
        outs = [root / f"copy{i}" for i in range(args.workers)]
        wait_all([launch(args, out, share) for out in outs])
        together = time.time() - start
        alone_steps = sum(step_seconds(root / "alone"))
        together_steps = max(sum(step_seconds(out)) for out in outs)
        same = all(losses(out) == losses(root / "alone") for out in outs)

    print(f"{args.task} {args.method}, {args.steps} steps, {cores} cores: 1 run x {cores} threads against "
          f"{args.workers} runs at once x {share} thread{'s' * (share != 1)}")
    print("| measure | 1 run alone | runs at once | throughput ratio |")
    print("|---|---|---|---|")
    print(f"| whole run (wall) | {alone:.1f} s | {together:.1f} s | {args.workers * alone / together:.2f} |")
    print(f"| training steps | {alone_steps:.1f} s | {together_steps:.1f} s (slowest) | "
          f"{args.workers * alone_steps / together_steps:.2f} |")
    print(f"| mean step | {alone_steps / args.steps:.2f} s | {together_steps / args.steps:.2f} s (slowest) | |")
    print(f"losses of every step identical in all {args.workers + 1} runs: {same}")


if __name__ == "__main__":
    main()
