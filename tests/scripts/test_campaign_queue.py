"""scripts/campaign_queue.sh: a kill stops the stage in progress with every process it started, the next start
carries on from the stage's checkpoint, and a typo in STAGES is refused before any work."""
from __future__ import annotations

import os
import signal
import subprocess
import time

from conftest import REPO_ROOT, SHARED_DATA
from run_helpers import QUIET_ENV, processes_mentioning, requires_shared_data, run_cmd, run_script

QUEUE = "campaign_queue.sh"


def _env(model, root):
    # the ablation-banks stage on a tiny model: one bank, six meta steps, a checkpoint after each
    return {"MODEL": str(model), "DATA_DIR": str(SHARED_DATA), "STAGES": "ablation_banks", "VARIANTS": "base",
            "BANK_DIR": str(root / "banks"), "RUN_DIR": str(root / "runs"), "MAX_STEPS": "6",
            "CHECKPOINT_STEPS": "1",
            "EXTRA_ARGS": "--num_train 8 --num_dev 2 --num_eval 2 --threads 1 --progress False"}


def test_unknown_stage_is_refused_before_any_work(tmp_path, tiny_llama_dir):
    proc = run_script(QUEUE, {**_env(tiny_llama_dir, tmp_path), "STAGES": "ablation_banks ablatoins"}, check=False)
    assert proc.returncode == 2 and "unknown stage 'ablatoins'" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_deadline_that_is_no_time_is_refused_before_any_work(tmp_path, tiny_llama_dir):
    proc = run_script(QUEUE, {**_env(tiny_llama_dir, tmp_path), "DEADLINE": "half past three"}, check=False)
    assert proc.returncode == 2 and "DEADLINE='half past three': give a clock time (HH:MM)" in proc.stderr
    assert not (tmp_path / "runs").exists()


@requires_shared_data
def test_a_killed_queue_stops_its_stage_and_the_next_start_resumes_it(tmp_path, tiny_llama_dir):
    env = _env(tiny_llama_dir, tmp_path)
    queue = subprocess.Popen(["bash", str(REPO_ROOT / "scripts" / QUEUE)], cwd=REPO_ROOT,
                             env={**os.environ, **QUIET_ENV, **env}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    checkpoints = tmp_path / "runs" / "base" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and queue.poll() is None and not list(checkpoints.glob("step-*.json")):
        time.sleep(0.05)
    assert queue.poll() is None, "the stage ended before a checkpoint: nothing was killed"
    queue.send_signal(signal.SIGTERM)  # the queue's own pid only, as `kill <pid>` does
    output, _ = queue.communicate(timeout=60)
    assert queue.returncode == 130 and "queue stopped" in output
    assert not processes_mentioning(str(tmp_path / "runs")), "the stage's processes outlived the queue"

    assert "ablation bank base: resumable from step-" in _status(env)

    again = run_script(QUEUE, env)
    assert "resuming" in again.stdout and "queue done" in again.stdout
    assert "ablation bank base: complete" in _status(env)


def _status(env) -> str:
    return run_cmd(["bash", REPO_ROOT / "scripts" / QUEUE, "--status"], env, timeout=120).stdout


def test_consecutive_run_stages_go_to_one_driver_and_the_banks_stage_splits_them(tmp_path, tiny_llama_dir):
    env = {**_env(tiny_llama_dir, tmp_path), "RESULTS_DIR": str(tmp_path / "results"),
           "STAGES": "core long ablation_banks core_seeds"}
    steps = [line for line in _status(env).splitlines() if line.startswith("== ")]
    assert [line.split(":")[0] for line in steps] == ["== core long", "== ablation_banks", "== core_seeds"]
    assert steps[0].count("--stage") == 2 and "TASKS=BoolQ SQuAD DROP;METHODS=mezo zoft_new" in steps[0]
    assert steps[2].count("--stage") == 1
