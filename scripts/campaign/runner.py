"""One campaign run: the fine-tuning command, executed in a scratch folder, its small files published atomically.

The run's weights never leave the scratch folder, which is deleted once the run is published. A killed
run leaves only scratch behind: the run checkpoints every CHECKPOINT_STEPS steps (cheap replay checkpoints
where the method has them), and the next start resumes it from there if its fingerprint is unchanged.
"""
from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .plan import TRAIN_LOSS_SUBSET, PlannedRun, resolve_bank, run_state
from .settings import REPO_ROOT, Settings, put_repo_on_path, split_words
from .store import CAMPAIGN_FILE, SMALL_FILES, is_final, read_json

DTYPE_FLAGS = {"float32": [], "float16": ["--load_float16", "True"], "bfloat16": ["--load_bfloat16", "True"]}


FINGERPRINT_FILE = "fingerprint.json"  # in the scratch folder: which run its checkpoints belong to


def checkpoint_flags(settings: Settings, train_mode: str) -> list[str]:
    """Checkpoints only serve a restart after a kill; they never change what is computed. Replay checkpoints
    (weights once, then a few numbers per step) are free, so they are frequent; full ones (weights and
    optimizer state, ~1.6 GB for SmolLM2 with Adam) are written by time."""
    if train_mode == "none":  # evaluation only: nothing to resume
        return []
    put_repo_on_path()
    from zo.methods import has_replay
    if has_replay(train_mode):
        return ["--checkpoint_kind", "replay", "--checkpoint_steps", settings.get("CHECKPOINT_STEPS", "10"),
                "--checkpoint_minutes", "0"]
    return ["--checkpoint_kind", "full", "--checkpoint_steps", "0",
            "--checkpoint_minutes", settings.get("CHECKPOINT_MINUTES", "5")]


def command(settings: Settings, run: PlannedRun, output_dir: Path, resume: bool = False,
            threads: int | None = None) -> list[str]:
    caps, method = settings.caps[run.task], run.method
    args = [sys.executable, str(REPO_ROOT / "run_zo_fine_tuner.py"), "--task_name", run.task,
            "--train_mode", method.train_mode, "--learning_rate", run.lr, "--zo_eps", settings.get("EPS", "1e-3"),
            "--per_device_train_batch_size", settings.get("BS", "16"), "--max_steps", str(caps.steps),
            "--eval_steps", str(caps.eval_steps), "--num_train", str(caps.train), "--num_dev", str(caps.dev),
            "--num_eval", str(caps.test), "--max_length", str(caps.max_length),
            "--max_new_tokens", str(caps.max_new_tokens),
            # a seed varies the data sample (as MeZO's seeds), the noise and the batch order
            "--train_set_seed", str(run.seed), "--seed", str(run.seed),
            "--train_loss_subset", str(TRAIN_LOSS_SUBSET), "--output_dir", str(output_dir), "--progress", "False",
            *checkpoint_flags(settings, method.train_mode)]
    if caps.length_groups != 1:
        args += ["--length_groups", str(caps.length_groups)]
    if resume:
        args += ["--resume", "True"]
    args += DTYPE_FLAGS[settings.get("DTYPE", "float32")]
    if settings.model:
        args += ["--model_name", settings.model]
    if settings.data_dir:
        args += ["--data_dir", settings.data_dir]
    bank = resolve_bank(settings, method)
    if bank is not None:
        args += ["--load_mlp_path", str(bank)]
    if threads:  # a runtime setting (not in the fingerprint): with 1 or 2 threads a run computes the same bits
        args += ["--threads", str(threads)]
    return args + list(method.args) + list(split_words(settings.get("EXTRA_ARGS")))


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


@contextlib.contextmanager
def stop_signals_held():
    """SIGINT / SIGTERM wait until the block ends (then they are delivered): a run started inside it is in the
    driver's table of runs before the driver's handler can raise, so a stop reaches it and it checkpoints."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _die_with_parent() -> None:
    """The fine-tuning child dies with the driver, even on SIGKILL: no orphan keeps the 2 cores busy. It also
    takes the stop signals again: a child started under stop_signals_held() inherits the held mask."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def ensure_generated_bank(settings: Settings, run: PlannedRun) -> None:
    bank = resolve_bank(settings, run.method)
    if run.method.generated_bank_seed is None or bank.is_file():
        return
    bank.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "zo.init_bank", "--out", str(bank), "--seed", str(run.method.generated_bank_seed)]
    if settings.model:
        cmd += ["--model", settings.model]
    subprocess.run(cmd, cwd=REPO_ROOT, check=True, preexec_fn=_die_with_parent)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
        return out.stdout.strip() or None
    except OSError:
        return None


def scratch_dir(settings: Settings, run: PlannedRun) -> Path:
    return settings.results_dir / ".scratch" / f"{run.task}-{run.method.name}-{run.lr}-{run.seed}"


def prepare_scratch(settings: Settings, run: PlannedRun) -> tuple[Path, bool]:
    """The run's scratch folder and whether it holds an unfinished attempt of this very run to resume.

    An attempt made with other settings (its fingerprint differs) is deleted, weights included.
    """
    scratch = scratch_dir(settings, run)
    if (scratch / "run").is_dir() and holds_attempt_of(scratch, run):
        return scratch, True
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    (scratch / FINGERPRINT_FILE).write_text(json.dumps(run.fingerprint, indent=2) + "\n")
    return scratch, False


def holds_attempt_of(scratch: Path, run: PlannedRun) -> bool:
    """Whether a scratch folder's attempt is of this very run (its fingerprint, as JSON stores it)."""
    return read_json(scratch / FINGERPRINT_FILE) == json.loads(json.dumps(run.fingerprint))


def resumable_step(settings: Settings, run: PlannedRun) -> int:
    """The step of the last checkpoint an unfinished attempt of this very run left in its scratch folder (0: none),
    read from the checkpoint names (zo.run.folder: checkpoints/step-<n>.json) without importing torch."""
    scratch = scratch_dir(settings, run)
    if not holds_attempt_of(scratch, run):
        return 0
    steps = [int(p.stem.removeprefix("step-")) for p in (scratch / "run" / "checkpoints").glob("step-*.json")
             if p.stem.removeprefix("step-").isdigit()]
    return max(steps, default=0)


@dataclass
class Attempt:
    """A run in progress: its child process and what publishing it needs."""
    settings: Settings
    run: PlannedRun
    scratch: Path
    resume: bool
    cmd: list[str]
    proc: subprocess.Popen
    log: IO
    lock: int
    started: float
    gpu: str | None = None  # the run's CUDA_VISIBLE_DEVICES (GPUS), None: the driver's own
    threads: int | None = None  # --threads given to the run (None: its own default)

    def steps_left(self) -> int:
        """Training steps this run still has to take, from its log (0 once it is evaluating)."""
        log = self.scratch / "run" / "train_log.jsonl"
        # counted as text, not with zo.run.folder's reader: the driver does not import torch
        done = log.read_text().count('"kind": "step"') if log.exists() else 0
        return max(0, int(self.run.fingerprint["steps"]) - done)


def lock_path(settings: Settings, run: PlannedRun) -> Path:
    scratch = scratch_dir(settings, run)
    return scratch.with_name(scratch.name + ".lock")


def claim(settings: Settings, run: PlannedRun) -> int | None:
    """An exclusive lock on the run for as long as this process runs it (the open file descriptor), or None if
    another driver holds it: two campaigns started on one results folder (two shells, or two machines sharing it)
    split the runs instead of running one twice. The lock goes away with its process, even on SIGKILL."""
    path = lock_path(settings, run)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def held_now(path: Path) -> bool | None:
    """Whether a process on this machine holds the lock file `path`, read from /proc/locks (Linux) rather than by
    trying the lock, which a driver claiming the run at that moment would find taken; None without /proc/locks."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return False
    try:
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    wanted = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    return any(wanted in line.split() for line in table.splitlines())


def start(settings: Settings, run: PlannedRun, threads: int | None = None, gpu: str | None = None) -> Attempt | None:
    """Start the run (or resume its killed attempt) as a child process; None if another driver is running it or
    has published it since this driver planned it. `gpu`: the run sees only this GPU, as its cuda:0 (so a killed
    run resumes on whichever GPU is free next: its config says cuda:0 either way)."""
    lock = claim(settings, run)
    if lock is None:
        return None
    try:
        if run_state(run) == "done":  # published by another driver between our plan and our lock
            os.close(lock)
            return None
        scratch, resume = prepare_scratch(settings, run)
        ensure_generated_bank(settings, run)
        cmd = command(settings, run, scratch / "run", resume=resume, threads=threads)
        log = open(scratch / "output.log", "a")
        env = None if gpu is None else {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
        # its own session: a Ctrl-C or a signal to the driver's process group reaches the run once, from stop()
        # (a second SIGTERM would make it exit at once, without its checkpoint)
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=_die_with_parent, start_new_session=True)
    except BaseException:
        os.close(lock)
        raise
    return Attempt(settings, run, scratch, resume, cmd, proc, log, lock, time.time(), gpu, threads)


def execute(settings: Settings, run: PlannedRun, threads: int | None = None) -> tuple[bool, str]:
    """Run it to the end (or resume its killed attempt) and publish it: (ok, message)."""
    attempt = start(settings, run, threads)
    if attempt is None:
        return False, "skipped: another driver is running it or has published it"
    try:
        _, status, usage = os.wait4(attempt.proc.pid, 0)
    except BaseException:
        stop([attempt])
        raise
    return finish(attempt, os.waitstatus_to_exitcode(status), usage)


def stop(attempts, timeout: float = 90.0) -> None:
    """SIGTERM the runs in progress (a run checkpoints on SIGTERM before it exits), wait for them, then SIGKILL
    (within the 120 s that scripts/campaign_queue.sh gives a stage to stop)."""
    attempts = list(attempts)
    for attempt in attempts:
        if attempt.proc.poll() is None:
            attempt.proc.terminate()
    deadline = time.time() + timeout
    for attempt in attempts:
        try:
            attempt.proc.wait(max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            attempt.proc.kill()
            attempt.proc.wait()
        attempt.log.close()
        os.close(attempt.lock)


def run_cost(metrics: dict, cpu: float, wall: float) -> dict:
    """The run's CPU and wall seconds: this attempt's (the whole process: loading, training, evaluation) plus the
    training time the earlier attempts kept, which the resumed checkpoint carried. Work redone after a kill is not
    counted. A run resumed from a checkpoint that carried no time (an older version's) counts its last attempt
    only, and says so."""
    cost = {"cpu_seconds": round(cpu, 2), "wall_seconds": round(wall, 2)}
    trained_cpu, trained_wall = metrics.get("train_cpu_seconds"), metrics.get("train_seconds")
    carried_cpu = metrics.get("carried_train_cpu_seconds") or 0.0
    if (isinstance(trained_cpu, (int, float)) and isinstance(trained_wall, (int, float))
            and trained_cpu - carried_cpu > cpu):
        # metrics.json was not written by this attempt, whose whole process took less CPU than the training
        # that wrote it: the attempt found the run finished already (stopped between its end and its
        # publication) and did no work, so the run's own training time is its cost, not these few seconds.
        # (A resumed attempt that trained writes train = carried + its own training, its own <= cpu.)
        return {"cpu_seconds": round(trained_cpu, 2), "wall_seconds": round(max(trained_wall, wall), 2),
                "last_attempt_cpu_seconds": cost["cpu_seconds"], "last_attempt_wall_seconds": cost["wall_seconds"],
                "cost_counts": "the run's training time (metrics.json): a later attempt published it"}
    if metrics.get("resumed_from_step") is None:
        return cost
    if "carried_train_cpu_seconds" not in metrics:
        return {**cost, "cost_counts": "last attempt only"}
    return {"cpu_seconds": round(cpu + metrics["carried_train_cpu_seconds"], 2),
            "wall_seconds": round(wall + metrics["carried_train_seconds"], 2),
            "last_attempt_cpu_seconds": cost["cpu_seconds"], "last_attempt_wall_seconds": cost["wall_seconds"]}


def finish(attempt: Attempt, returncode: int, usage: resource.struct_rusage) -> tuple[bool, str]:
    """Publish a run whose child has exited (reaped by the caller with os.wait4, which gives this child's own CPU
    time even while other runs go on): config/metrics/train_log + campaign.json to run.folder. (ok, message)."""
    attempt.proc.returncode = returncode  # reaped already: Popen must not wait for it again
    attempt.log.close()
    try:
        return _publish(attempt, returncode, usage)
    finally:
        os.close(attempt.lock)


def _publish(attempt: Attempt, returncode: int, usage: resource.struct_rusage) -> tuple[bool, str]:
    run, scratch, resume, cmd = attempt.run, attempt.scratch, attempt.resume, attempt.cmd
    metrics = read_json(scratch / "run" / "metrics.json")
    if returncode != 0 or not is_final(metrics):
        if resume:  # a broken attempt is not resumed twice: the next start begins this run afresh
            (scratch / FINGERPRINT_FILE).unlink(missing_ok=True)
        tail = (scratch / "output.log").read_text()[-1500:]
        return False, f"exit code {returncode}; log {scratch / 'output.log'}:\n{tail}"

    grid = attempt.settings.grid_for(run.method, run.task)
    cpu, wall = usage.ru_utime + usage.ru_stime, time.time() - attempt.started
    record = {"fingerprint": run.fingerprint, "phase": run.phase, "grid": list(grid),
              "resumed_from_step": metrics.get("resumed_from_step"), **run_cost(metrics, cpu, wall),
              "host": platform.node(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(attempt.started)),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git_commit": git_commit(),
              **({"cuda_visible_devices": attempt.gpu} if attempt.gpu is not None else {}),
              "command": [Path(a).name if a == sys.executable else a for a in cmd]}
    staging = run.folder.with_name(f".{run.folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for name in SMALL_FILES:
        if (scratch / "run" / name).exists():
            shutil.copy2(scratch / "run" / name, staging / name)
    (staging / CAMPAIGN_FILE).write_text(json.dumps(record, indent=2) + "\n")
    if run.folder.exists():  # a stale result (other settings) is replaced by the new one
        shutil.rmtree(run.folder)
    os.replace(staging, run.folder)
    shutil.rmtree(scratch, ignore_errors=True)  # weights included
    # while we hold it: a driver that opened it before the unlink finds the run done when it gets the lock
    lock_path(attempt.settings, run).unlink(missing_ok=True)
    return True, f"{metrics.get('status')}, {record['cpu_seconds']:.0f} CPU-s"
