"""Helpers for the end-to-end run tests: subprocesses of the launchers, run-folder readers, weight snapshots."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, SHARED_DATA

# Offline, and one intra-op thread: the machine has 2 cores and other jobs; oversubscribed OpenMP
# threads make tiny models 50x slower.
QUIET_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
             "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run_cmd(args: list[str], env: dict[str, str] | None = None, timeout: float = 300,
            check: bool = True) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **QUIET_ENV, **(env or {})}
    proc = subprocess.run([str(a) for a in args], cwd=REPO_ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited with {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                             f"stderr:\n{proc.stderr[-5000:]}")
    return proc


def run_script(name: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    """bash scripts/<name> with the given env vars (DATA_DIR defaults to the shared data)."""
    return run_cmd(["bash", str(REPO_ROOT / "scripts" / name)], {"DATA_DIR": str(SHARED_DATA), **env}, check=check)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of the running processes that contain `text` (a run's folder: did anything outlive it?)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # the process ended while we looked
            continue
        if text in args:
            found.append(args)
    return found


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def temp_leftovers(folder: Path) -> list[str]:
    """Names of temporary files (atomic writes use '.<name>.tmp-<pid>') anywhere under `folder`."""
    return [str(p) for p in Path(folder).rglob("*") if ".tmp" in p.name or p.name.endswith("~")]


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(model_or_state, other: dict[str, torch.Tensor]) -> None:
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    assert set(state) == set(other)
    different = [k for k in other if not torch.equal(state[k], other[k])]
    assert not different, f"tensors differ: {different[:5]}"


def weights_differ(model_or_state, other: dict[str, torch.Tensor]) -> bool:
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    return any(not torch.equal(state[k], other[k]) for k in other)


# A missing optional resource (the benchmark files) is the only reason to skip.
requires_shared_data = pytest.mark.skipif(not (SHARED_DATA / "SST2").is_dir(),
                                          reason=f"benchmark data not found under {SHARED_DATA} (set DATA_DIR)")
