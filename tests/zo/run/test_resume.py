"""Kill a run (SIGKILL inside a step, or in the middle of a checkpoint write), resume it, and end with the
same weights, metrics and log as a run that was never stopped. Also SIGTERM, refusals and a corrupt checkpoint."""
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

import run_l2l
import run_zo_fine_tuner
from conftest import REPO_ROOT, SHARED_DATA
from run_helpers import QUIET_ENV, read_json, read_jsonl, requires_shared_data, run_cmd, temp_leftovers
from zo.run.folder import RunFolderError

pytestmark = requires_shared_data

KILL_AT = REPO_ROOT / "tests" / "zo" / "run" / "kill_at.py"
TIMING = {"seconds", "train_seconds", "total_seconds", "train_cpu_seconds", "carried_train_seconds",
          "carried_train_cpu_seconds"}
PROVENANCE = {"bank", "resumed_from_step"}  # where the run came from, not what it computed
# Kill points are random; the seed is printed with any failure so it can be replayed (KILL_SEED=...).
KILL_SEED = int(os.environ.get("KILL_SEED", time.time_ns() % 10**6))


def _ft_args(model_dir, out, *extra):
    return ["--model_name", str(model_dir), "--task_name", "SST2", "--data_dir", str(SHARED_DATA),
            "--output_dir", str(out), "--max_steps", "8", "--eval_steps", "3", "--num_train", "8", "--num_dev", "2",
            "--num_eval", "2", "--per_device_train_batch_size", "2", "--threads", "1", "--learning_rate", "1e-2",
            "--zo_eps", "1e-2", "--checkpoint_steps", "2", "--progress", "False", *extra]


def _run(entry, args, kill=("loss", 0)):
    return run_cmd([sys.executable, str(KILL_AT), kill[0], str(kill[1]), entry, *args], check=False)


def _tensors(path):
    """Every tensor of a safetensors file, as raw bytes (bit-for-bit comparison)."""
    from safetensors.torch import load_file

    return {k: v.numpy().tobytes() for k, v in load_file(path).items()}


def _outcome(out, weights="best_model.safetensors", metrics="metrics.json"):
    log = read_jsonl(out / "train_log.jsonl")
    return {"weights": _tensors(out / weights),
            "metrics": {k: v for k, v in read_json(out / metrics).items() if k not in TIMING | PROVENANCE},
            "log": [{k: v for k, v in r.items() if k not in TIMING} for r in log if r["kind"] != "event"]}


def _kill_and_resume(entry, args, kills, note):
    """Run with the first kill, resume with each following one (a run may finish first), then to the end."""
    proc = _run(entry, args, kills[0])
    assert proc.returncode == -signal.SIGKILL, (note, proc.stderr[-2000:])
    for kill in [*kills[1:], ("loss", 0)]:
        proc = _run(entry, [*args, "--resume"], kill)
        assert proc.returncode in (0, -signal.SIGKILL), (note, proc.stderr[-2000:])
        if proc.returncode == 0:
            return proc
    raise AssertionError(f"{note}: the last resume did not finish")


def _assert_same(resumed, reference, note):
    assert resumed["log"] == reference["log"], note  # every step and dev line exactly once, same values
    assert resumed["metrics"] == reference["metrics"], note
    assert resumed["weights"] == reference["weights"], note  # bit for bit


@pytest.mark.parametrize("train_mode, kind, extra", [
    ("mezo", "full", ()), ("zo_fine_tuner", "replay", ()),
    ("zo_fine_tuner", "replay", ("--trainable_blocks", r"layers\.1\.")),  # frozen tensors, a restricted bank
])
def test_fine_tuning_killed_anywhere_resumes_bit_exactly(tmp_path, tiny_llama_dir, tiny_llama_bank, train_mode,
                                                         kind, extra):
    mode = ["--train_mode", train_mode, "--checkpoint_kind", kind, *extra]
    if train_mode == "zo_fine_tuner":
        mode += ["--load_mlp_path", str(tiny_llama_bank[0])]
    reference_dir = tmp_path / "reference"
    run_zo_fine_tuner.main(_ft_args(tiny_llama_dir, reference_dir, *mode))  # in-process: same code, faster
    reference = _outcome(reference_dir)

    # 8 steps = 16 loss calls + the dev and train-subset losses; checkpoints at steps 2, 4, 6 (the 3rd write is
    # a replay one). The first kill lands after the step-2 checkpoint (loss calls 1-4 are steps 0 and 1), so
    # the run must say it resumed; a kill before any checkpoint would restart it from scratch, without event.
    rng = random.Random(KILL_SEED)
    kills = [("loss", rng.randint(5, 10)), ("save", rng.randint(1, 2))]
    note = f"KILL_SEED={KILL_SEED} kills={kills}"
    out = tmp_path / "killed"
    _kill_and_resume("run_zo_fine_tuner", _ft_args(tiny_llama_dir, out, *mode), kills, note)
    _assert_same(_outcome(out), reference, note)
    events = [r for r in read_jsonl(out / "train_log.jsonl") if r["kind"] == "event"]
    assert events and all(r["event"] in ("resumed", "checkpoint_invalid") for r in events), events
    assert not (out / "checkpoints").exists() and not temp_leftovers(out)  # a finished run drops its checkpoints


def test_lines_logged_after_the_last_checkpoint_are_not_repeated_on_resume(tmp_path, tiny_llama_dir):
    """The kill at loss call 7 (step 3's first forward) comes after the step-2 checkpoint and after step 2's
    step and dev lines: the resumed run must cut the log back to the checkpoint, not log step 2 twice (a random
    kill point of the test above may fall where nothing was logged after the checkpoint)."""
    reference_dir = tmp_path / "reference"
    run_zo_fine_tuner.main(_ft_args(tiny_llama_dir, reference_dir, "--train_mode", "mezo"))
    out = tmp_path / "killed"
    _kill_and_resume("run_zo_fine_tuner", _ft_args(tiny_llama_dir, out, "--train_mode", "mezo"), [("loss", 7)],
                     "kill at loss call 7")
    _assert_same(_outcome(out), _outcome(reference_dir), "kill at loss call 7")


def _interrupt_with_sigterm(tiny_llama_dir, out):
    """Run MeZO with slow steps and SIGTERM it after its 2nd step: it checkpoints and exits."""
    env = {**os.environ, **QUIET_ENV}
    # slow steps (sleep in the loss), so that SIGTERM lands in the middle of the run
    cmd = [sys.executable, "-c", "import sys, time, tasks; real = tasks.batch_loss; "
           "tasks.batch_loss = lambda *a, **k: (time.sleep(0.3), real(*a, **k))[1]; "
           f"sys.argv = ['run_zo_fine_tuner.py'] + {_ft_args(tiny_llama_dir, out, '--train_mode', 'mezo')!r}; "
           "import runpy; runpy.run_path('run_zo_fine_tuner.py', run_name='__main__')"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "train_log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and log.read_text().count('"kind": "step"') >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    return read_json(out / "metrics.json")


def test_sigterm_checkpoints_then_resume_finishes_the_same(tmp_path, tiny_llama_dir):
    reference_dir = tmp_path / "reference"
    run_zo_fine_tuner.main(_ft_args(tiny_llama_dir, reference_dir, "--train_mode", "mezo"))
    out = tmp_path / "run"
    metrics = _interrupt_with_sigterm(tiny_llama_dir, out)
    assert metrics["status"] == "interrupted" and 2 <= metrics["steps"] < 8, metrics
    log = out / "train_log.jsonl"
    lines = read_jsonl(log)
    assert lines[-1] == {**lines[-1], "kind": "event", "event": "interrupted", "signal": "SIGTERM"}
    assert [r["step"] for r in lines if r["kind"] == "step"] == list(range(metrics["steps"]))
    checkpoints = sorted((out / "checkpoints").glob("step-*.json"))
    assert checkpoints[-1].name == f"step-{metrics['steps']:08d}.json"
    assert not temp_leftovers(out)

    # no flag: refused (the folder holds a run); --resume: finishes exactly like the uninterrupted run
    with pytest.raises(RunFolderError, match="interrupted.*--resume"):
        run_zo_fine_tuner.main(_ft_args(tiny_llama_dir, out, "--train_mode", "mezo"))
    proc = _run("run_zo_fine_tuner", _ft_args(tiny_llama_dir, out, "--train_mode", "mezo", "--resume"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resumed from step {metrics['steps']}" in proc.stderr
    assert read_json(out / "metrics.json")["resumed_from_step"] == metrics["steps"]
    assert "resumed_from_step" not in read_json(reference_dir / "metrics.json")
    _assert_same(_outcome(out), _outcome(reference_dir), "sigterm")

    # the time carries over: the first attempt slept 0.3 s per loss call (2 per step), the second did not
    final = read_json(out / "metrics.json")
    assert 0.6 * metrics["steps"] <= final["carried_train_seconds"] <= metrics["train_seconds"], (metrics, final)
    assert final["train_seconds"] > final["carried_train_seconds"]
    assert 0 < final["carried_train_cpu_seconds"] <= metrics["train_cpu_seconds"] < final["train_cpu_seconds"]
    dev_seconds = [r["seconds"] for r in read_jsonl(out / "train_log.jsonl") if r["kind"] == "dev"]
    assert dev_seconds == sorted(dev_seconds) and dev_seconds[-1] <= final["train_seconds"] + 0.01, dev_seconds


def _edit_checkpoint(path, change):
    """Change a checkpoint's state in place (as an older or another machine's run would have written it) and
    keep its manifest valid, so that resume takes it."""
    import torch

    state = torch.load(path, weights_only=False)
    change(state)
    torch.save(state, path)
    manifest_path = path.with_suffix(".json")
    manifest = read_json(manifest_path)
    data = path.read_bytes()
    manifest.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    manifest_path.write_text(json.dumps(manifest))


def test_replay_checkpoint_from_another_noise_signature_is_refused_and_a_full_one_warns(tmp_path, tiny_llama_dir):
    """A replay checkpoint rebuilds the weights from its steps' seeds: on a placement that draws z otherwise
    (another GPU model, zo.noise.noise_signature) that would be other weights, so resume refuses it. From a full
    checkpoint the weights are exact: resume goes on and says the steps from there differ."""
    import torch

    out = tmp_path / "run"
    args = _ft_args(tiny_llama_dir, out, "--train_mode", "mezo", "--checkpoint_kind", "replay")
    assert _run("run_zo_fine_tuner", args, kill=("loss", 14)).returncode == -signal.SIGKILL
    paths = sorted((out / "checkpoints").glob("step-*.pt"))
    states = [torch.load(p, weights_only=False) for p in paths]
    here = states[0]["noise_signature"]
    assert here.startswith("cpu ") and states[0]["replay"] == [] and states[-1]["replay"], \
        [(s["step"], len(s["replay"])) for s in states]
    for path in paths:  # as if the run had started on an A100
        _edit_checkpoint(path, lambda state: state.update(noise_signature="cuda grid 864"))
    config = read_json(out / "config.json")
    (out / "config.json").write_text(json.dumps({**config, "noise_signature": "cuda grid 864"}))
    proc = _run("run_zo_fine_tuner", [*args, "--resume"])
    assert proc.returncode != 0 and "would give other weights" in proc.stderr, proc.stderr[-3000:]
    assert read_json(out / "config.json")["noise_signature"] == "cuda grid 864"  # a refused resume writes nothing

    for path in paths[1:]:  # the full checkpoint is left
        path.unlink(), path.with_suffix(".json").unlink()
    proc = _run("run_zo_fine_tuner", [*args, "--resume"])
    assert proc.returncode == 0 and f"'cuda grid 864', this placement with {here!r}" in proc.stderr, \
        proc.stderr[-3000:]
    assert read_json(out / "metrics.json")["status"] == "completed"
    assert read_json(out / "config.json")["noise_signature"] == f"cuda grid 864 -> {here}"  # its steps drew on both


def test_resume_from_a_checkpoint_without_time_says_its_time_is_partial(tmp_path, tiny_llama_dir):
    """Checkpoints written before runs carried their time: the resumed run still finishes, its metrics count this
    attempt's time only and carry no `carried_*` fields (the campaign marks such a run's cost as partial)."""
    import torch

    out = tmp_path / "run"
    metrics = _interrupt_with_sigterm(tiny_llama_dir, out)
    _edit_checkpoint(out / "checkpoints" / f"step-{metrics['steps']:08d}.pt",
                     lambda state: (state["loop"].pop("seconds"), state["loop"].pop("cpu_seconds")))

    # killed again after a checkpoint of its own: that checkpoint does not pretend to know the first attempt's time
    args = _ft_args(tiny_llama_dir, out, "--train_mode", "mezo", "--resume")
    proc = _run("run_zo_fine_tuner", args, kill=("loss", 9))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    newest = torch.load(sorted((out / "checkpoints").glob("step-*.pt"))[-1], weights_only=False)
    assert newest["step"] > metrics["steps"] and newest["loop"]["seconds"] is None, newest["loop"]
    proc = _run("run_zo_fine_tuner", args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = read_json(out / "metrics.json")
    assert final["resumed_from_step"] == newest["step"] and final["status"] == "completed"
    assert "carried_train_seconds" not in final and "carried_train_cpu_seconds" not in final


def _l2l_args(model_dir, out, *extra):
    # OPT has dropout: the first-order steps draw from the global torch RNG, which must resume too.
    # 2 tasks x 2 outer steps = 4 meta steps per epoch, shuffled task order, a reset at epoch 2.
    return ["--model_name", str(model_dir), "--multi_task_training", "--multi_task_name", "SST2", "Copa",
            "--shuffle", "--data_dir", str(SHARED_DATA), "--output_dir", str(out), "--num_train_epochs", "3",
            "--epochs_per_restart", "2", "--num_train", "4", "--num_dev", "2", "--num_eval", "2",
            "--per_device_train_batch_size", "2", "--lr_mlp", "1e-2", "--lr_update", "1e-3", "--mlp_optimizer", "adam",
            "--threads", "1", "--checkpoint_steps", "3", "--save_every_steps", "2", "--progress", "False",
            "--save_mlp_path", str(out.parent / f"{out.name}.safetensors"), *extra]


def test_l2l_killed_anywhere_resumes_bit_exactly(tmp_path, tiny_model_dir):
    model_dir = tiny_model_dir("opt")
    reference_dir = tmp_path / "reference"
    run_l2l.main(_l2l_args(model_dir, reference_dir))
    reference = _outcome(reference_dir, weights="../reference.safetensors", metrics="summary.json")
    assert len([r for r in reference["log"] if r["kind"] == "step"]) == 12

    # 12 meta steps x 4 loss calls (L+, L-, meta-loss, first-order); checkpoints at steps 3, 6, 9
    rng = random.Random(KILL_SEED)
    kills = [("loss", rng.randint(5, 30)), ("save", 1), ("loss", rng.randint(3, 20))]
    note = f"KILL_SEED={KILL_SEED} kills={kills}"
    out = tmp_path / "killed"
    _kill_and_resume("run_l2l", _l2l_args(model_dir, out), kills, note)
    resumed = _outcome(out, weights="../killed.safetensors", metrics="summary.json")
    _assert_same(resumed, reference, note)
    assert [r["event"] for r in read_jsonl(out / "train_log.jsonl") if r["kind"] == "event"].count("reset") == 1
    assert not (out / "checkpoints").exists() and not temp_leftovers(out)


@pytest.mark.parametrize("mode, extra, steps", [
    # 5 examples in micro-batches of 2, groups of 2: (2+2, 1) per task and epoch; 2 tasks x 2 x 3 epochs
    ("batch", ["--num_train", "5", "--per_device_train_batch_size", "2"], 12),
    # 3 examples in micro-batches of 1: a meta step each, an update after the 2nd, the 3rd forward only
    ("upstream", ["--num_train", "3", "--per_device_train_batch_size", "1"], 18),
])
def test_l2l_with_gradient_accumulation_killed_anywhere_resumes_bit_exactly(tmp_path, tiny_model_dir, mode, extra,
                                                                          steps):
    model_dir = tiny_model_dir("opt")  # dropout: every micro-batch's first-order forward draws from the RNG

    def args(out):  # later flags win: the accumulation settings replace _l2l_args's batch and train size
        return [*_l2l_args(model_dir, out), *extra, "--gradient_accumulation_steps", "2", "--l2l_accumulation", mode]

    reference_dir = tmp_path / "reference"
    run_l2l.main(args(reference_dir))
    reference = _outcome(reference_dir, weights="../reference.safetensors", metrics="summary.json")
    step_lines = [r for r in reference["log"] if r["kind"] == "step"]
    assert len(step_lines) == steps
    assert ("micro_batches" in step_lines[0]) == (mode == "batch") and ("fo_update" in step_lines[0]) == (mode != "batch")

    rng = random.Random(KILL_SEED)
    kills = [("loss", rng.randint(5, 40)), ("save", 1), ("loss", rng.randint(3, 30))]
    note = f"KILL_SEED={KILL_SEED} kills={kills} mode={mode}"
    out = tmp_path / "killed"
    _kill_and_resume("run_l2l", args(out), kills, note)
    _assert_same(_outcome(out, weights="../killed.safetensors", metrics="summary.json"), reference, note)
    assert not (out / "checkpoints").exists() and not temp_leftovers(out)
