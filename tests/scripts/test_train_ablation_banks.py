"""scripts/train_ablation_banks.sh on a tiny model: a finished bank is skipped, a killed one resumes from its
checkpoint and ends as the uninterrupted bank, bit for bit."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from conftest import REPO_ROOT, SHARED_DATA
from run_helpers import QUIET_ENV, requires_shared_data, run_script

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from campaign.noise_grid import measured_trace_ratio, noise_record, noise_record_path  # noqa: E402

pytestmark = requires_shared_data


def _env(model, root, **extra):
    return {"MODEL": str(model), "DATA_DIR": str(SHARED_DATA), "VARIANTS": "base", "BANK_DIR": str(root / "banks"),
            "RUN_DIR": str(root / "runs"), "MAX_STEPS": "6", "CHECKPOINT_STEPS": "1",
            "EXTRA_ARGS": "--num_train 8 --num_dev 2 --num_eval 2 --threads 1 --progress False", **extra}


def _bank_tensors(root):
    from safetensors.torch import load_file

    return {k: v.numpy().tobytes() for k, v in load_file(root / "banks" / "smollm2-135m_copa_base.safetensors").items()}


def test_killed_bank_resumes_and_a_complete_bank_is_skipped(tmp_path, tiny_llama_dir):
    reference = tmp_path / "reference"
    run_script("train_ablation_banks.sh", _env(tiny_llama_dir, reference))
    again = run_script("train_ablation_banks.sh", _env(tiny_llama_dir, reference))
    assert "is complete, skipped" in again.stdout
    # its noise is recorded beside it, for the campaign's grid of a bank used without normalization
    bank = reference / "banks" / "smollm2-135m_copa_base.safetensors"
    assert measured_trace_ratio(bank) > 0 and json.loads(noise_record_path(bank).read_text())["need_normalization"] \
        is False
    assert "skipped (--if_missing)" in again.stdout  # measured once, not on every start

    # a complete bank trained with other switches is not taken for this variant's: it is trained again
    other = tmp_path / "other"
    (other / "banks").mkdir(parents=True)
    shutil.copy(bank, other / "banks" / "smollm2-135m_copa_norm.safetensors")
    norm = run_script("train_ablation_banks.sh", _env(tiny_llama_dir, other, VARIANTS="norm"))
    assert "is complete, skipped" not in norm.stdout and "NEED_NORMALIZATION=True" in norm.stdout
    # a normalized bank's noise is recorded too (for the report's noise split), but sizes no grid
    record = noise_record(other / "banks" / "smollm2-135m_copa_norm.safetensors")
    assert record["need_normalization"] is True and 0 < record["embedding_share"] < 1
    assert measured_trace_ratio(other / "banks" / "smollm2-135m_copa_norm.safetensors") is None

    # kill the whole launcher once a checkpoint exists, then start it again
    killed = tmp_path / "killed"
    proc = subprocess.Popen(["bash", str(REPO_ROOT / "scripts" / "train_ablation_banks.sh")], cwd=REPO_ROOT,
                            env={**os.environ, **QUIET_ENV, **_env(tiny_llama_dir, killed)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = killed / "runs" / "base" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(checkpoints.glob("step-*.json")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list(checkpoints.glob("step-*.json")), "no checkpoint before the run ended: nothing was tested"
    resumed = run_script("train_ablation_banks.sh", _env(tiny_llama_dir, killed))
    assert "resuming" in resumed.stdout
    assert _bank_tensors(killed) == _bank_tensors(reference)

    # another MAX_STEPS: the finished run is replaced, not resumed (it has no checkpoints), and trained anew
    longer = run_script("train_ablation_banks.sh", _env(tiny_llama_dir, killed, MAX_STEPS="7"))
    assert "resuming" not in longer.stdout and "is complete, skipped" not in longer.stdout


def test_a_bank_that_would_not_end_before_the_deadline_is_not_started(tmp_path, tiny_llama_dir):
    soon = str(int(time.time()) + 600)  # ten minutes away: less than BANK_SECONDS
    out = run_script("train_ablation_banks.sh", _env(tiny_llama_dir, tmp_path, DEADLINE=soon, BANK_SECONDS="900"))
    assert re.search(r"== base: not started, DEADLINE is (9|10) min away and a bank takes about 15 min", out.stdout)
    assert not (tmp_path / "runs" / "base").exists() and not list((tmp_path / "banks").glob("*"))
