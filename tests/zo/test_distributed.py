"""Data-parallel ZO (zo/distributed.py): the sharding arithmetic, and a real 2-process gloo run on CPU that
must match one process on the same global batch to fp32 round-off, with identical weights on both ranks."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO_ROOT, SHARED_DATA
from zo.distributed import ProcessGroup, shard, weighted_mean_loss


def test_shards_are_balanced_contiguous_and_cover_the_global_batch():
    items = list(range(7))
    shares = [shard(items, rank, 3) for rank in range(3)]
    assert [s for s, _ in shares] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [c for _, c in shares] == [3, 2, 2]


def test_a_rank_without_examples_runs_a_forward_that_counts_for_nothing():
    assert shard([9], 1, 2) == ([9], 0)
    assert weighted_mean_loss(lambda: 1 / 0, 0, ProcessGroup(), torch.device("cpu")) == 0.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(args, env_extra=None, timeout=600):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT),
           **(env_extra or {})}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()
            if "loss_plus" in json.loads(line)]


@pytest.mark.skipif(not (SHARED_DATA / "SST2").is_dir(), reason="needs ../shared/data/SST2")
def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path, tiny_llama_dir, tiny_llama_bank):
    bank, _ = tiny_llama_bank
    driver = str(Path(__file__).with_name("dp_driver.py"))
    common = [str(tiny_llama_dir), str(bank), str(SHARED_DATA)]
    single, dp = tmp_path / "single", tmp_path / "dp"
    single.mkdir(), dp.mkdir()
    _run([sys.executable, driver, *common, str(single), "4"])  # one process, 4 examples per step
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
          "--master_port", str(_free_port()), driver, *common, str(dp), "2"])  # 2 x 2 examples per step
    assert json.loads((dp / "done-rank1.json").read_text()) == {"rank": 1, "world_size": 2}

    for mode in ("mezo", "zo_fine_tuner"):
        assert not list((dp / mode).glob("*rank1*")), "only rank 0 writes the run folder"
        config = json.loads((dp / mode / "config.json").read_text())
        assert (config["world_size"], config["global_batch_size"]) == (2, 4)
        one, two = _log(single / mode), _log(dp / mode)
        assert [r["seed"] for r in one] == [r["seed"] for r in two]
        for a, b in zip(one, two):
            for key in ("loss_plus", "loss_minus"):
                assert b[key] == pytest.approx(a[key], rel=1e-6), (mode, key)
            # g = (L+ - L-)/2eps turns a 1e-7 round-off of L into ~1e-4 of g
            assert b["projected_grad"] == pytest.approx(a["projected_grad"], abs=1e-3), mode
        if mode == "zo_fine_tuner":  # the effective dimension counted the global batch: same c
            assert [r["c"] for r in two] == pytest.approx([r["c"] for r in one], rel=1e-5)
        rank0, rank1 = load_file(str(dp / f"{mode}-rank0.safetensors")), load_file(str(dp / f"{mode}-rank1.safetensors"))
        reference = load_file(str(single / f"{mode}-rank0.safetensors"))
        for name, value in rank0.items():
            assert torch.equal(value, rank1[name]), f"{mode}: ranks diverged at {name}"
            # lr * sum_t |dg_t| * |k z| ~ 1e-3 * 3e-4 * 5: round-off of L, amplified by 1/2eps, then by lr
            torch.testing.assert_close(value, reference[name], rtol=0, atol=1e-5)


def test_resume_is_refused_for_a_data_parallel_run(tmp_path, monkeypatch):
    # Only rank 0 writes checkpoints, so the other ranks could not restore their state: refuse, before any work.
    from zo import distributed
    from zo.recipes.finetune import FineTuneConfig, fine_tune

    monkeypatch.setattr(distributed, "launched_world_size", lambda: 2)
    config = FineTuneConfig(task_name="SST2", train_mode="mezo", data_dir=str(SHARED_DATA), device="cpu",
                            output_dir=str(tmp_path / "run"), resume=True)
    with pytest.raises(ValueError, match="--resume is not supported for data-parallel runs"):
        fine_tune(config)
    assert not (tmp_path / "run").exists()
