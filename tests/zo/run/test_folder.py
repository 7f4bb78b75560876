"""The run folder through the fine-tuning recipe (in process): a finished run is never overwritten, a resume
with another config is refused with the differences, a corrupt checkpoint is skipped for the previous one."""
import json
import logging

import pytest
import torch

import tasks
from conftest import SHARED_DATA
from run_helpers import read_json, read_jsonl, requires_shared_data, temp_leftovers
from zo.recipes.finetune import FineTuneConfig, fine_tune
from zo.run.folder import RunDir, RunFolderError, line_kind

pytestmark = requires_shared_data


def _config(model_dir, out, **overrides) -> FineTuneConfig:
    base = dict(task_name="SST2", model_name=str(model_dir), train_mode="mezo", data_dir=str(SHARED_DATA),
                output_dir=str(out), max_steps=6, eval_steps=3, num_train=8, num_dev=2, num_eval=2,
                per_device_train_batch_size=2, threads=1, progress=False, learning_rate=1e-2, zo_eps=1e-2,
                checkpoint_steps=2, train_loss_subset=0)  # crash points below count the training-loss calls
    base.update(overrides)
    return FineTuneConfig(**base)


def _crash_at_loss_call(monkeypatch, n):
    """The n-th training loss raises: the run dies as after a kill (log and checkpoints left as they are)."""
    real, calls = tasks.batch_loss, {"n": 0}

    def loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(tasks, "batch_loss", loss)


def test_a_finished_run_is_refused_unless_resume_or_overwrite(tmp_path, tiny_llama_dir, caplog):
    out = tmp_path / "run"
    caplog.set_level(logging.INFO, logger="zo.run.folder")
    first = fine_tune(_config(tiny_llama_dir, out, max_steps=2, eval_steps=0, resume=True))
    assert f"{out} holds no run to resume: starting a new one" in caplog.messages  # a mistyped folder shows
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RunFolderError, match="finished run.*'completed'.*--resume.*to return its metrics.*--overwrite"):
        fine_tune(_config(tiny_llama_dir, out, max_steps=2, eval_steps=0))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files  # untouched
    # --resume of a finished run: nothing to do, its metrics as they are
    assert fine_tune(_config(tiny_llama_dir, out, max_steps=2, eval_steps=0, resume=True)) == read_json(
        out / "metrics.json") == json.loads(json.dumps(first))
    # --overwrite: a new run (here with other settings) replaces it
    second = fine_tune(_config(tiny_llama_dir, out, max_steps=3, eval_steps=0, overwrite=True))
    assert second["steps"] == 3 and [r["step"] for r in read_jsonl(out / "train_log.jsonl")
                                     if r["kind"] == "step"] == [0, 1, 2]


def test_resume_with_another_config_lists_the_differences(tmp_path, tiny_llama_dir, monkeypatch):
    out = tmp_path / "run"
    _crash_at_loss_call(monkeypatch, 7)  # inside step 3, after the checkpoint of step 2
    with pytest.raises(RuntimeError, match="simulated crash"):
        fine_tune(_config(tiny_llama_dir, out))
    monkeypatch.undo()
    with pytest.raises(RunFolderError) as info:
        fine_tune(_config(tiny_llama_dir, out, resume=True, learning_rate=1e-3, num_train=6, checkpoint_steps=5))
    message = str(info.value)
    assert "learning_rate: 0.01 -> 0.001" in message and "num_train: 8 -> 6" in message, message
    assert "checkpoint_steps" not in message and "resume:" not in message  # runtime settings may change
    # runtime settings only: accepted
    metrics = fine_tune(_config(tiny_llama_dir, out, resume=True, checkpoint_steps=5, threads=1))
    assert metrics["status"] == "completed" and metrics["steps"] == 6


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path, tiny_llama_dir, monkeypatch):
    reference = fine_tune(_config(tiny_llama_dir, tmp_path / "reference"))
    out = tmp_path / "run"
    _crash_at_loss_call(monkeypatch, 11)  # inside step 5: checkpoints of steps 2 and 4 exist
    with pytest.raises(RuntimeError, match="simulated crash"):
        fine_tune(_config(tiny_llama_dir, out))
    monkeypatch.undo()
    checkpoints = sorted((out / "checkpoints").glob("step-*.pt"))
    assert [p.name for p in checkpoints] == ["step-00000002.pt", "step-00000004.pt"]
    data = bytearray(checkpoints[-1].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: same size, wrong checksum
    checkpoints[-1].write_bytes(bytes(data))

    metrics = fine_tune(_config(tiny_llama_dir, out, resume=True))
    assert metrics["resumed_from_step"] == 2  # the last valid checkpoint
    untimed = ("train_seconds", "total_seconds", "resumed_from_step", "train_cpu_seconds", "carried_train_seconds",
               "carried_train_cpu_seconds")
    assert {k: v for k, v in metrics.items() if k not in untimed} == {
        k: v for k, v in reference.items() if k not in untimed}
    log = read_jsonl(out / "train_log.jsonl")
    events = [r for r in log if r["kind"] == "event"]
    assert events[0]["event"] == "checkpoint_invalid" and events[0]["checkpoint"] == "step-00000004"
    assert "checksum" in events[0]["reason"]
    assert events[1] == {"kind": "event", "event": "resumed", "step": 2}
    assert [r["step"] for r in log if r["kind"] == "step"] == list(range(6))  # each step once
    assert (out / "best_model.safetensors").read_bytes() == (tmp_path / "reference" / "best_model.safetensors").read_bytes()
    assert not temp_leftovers(out)


def test_truncated_checkpoint_and_partial_log_line(tmp_path):
    run = RunDir(tmp_path / "r")
    run.start({"a": 1})
    run.write_config({"a": 1})
    log = run.open_log()
    log.step({"step": 0})
    first = run.save_checkpoint({"log_offset": log.offset(), "x": 1}, 1)
    log.dev({"step": 1, "dev_loss": 0.5})
    run.save_checkpoint({"log_offset": log.offset(), "x": 2}, 2)
    log.close()
    with run.log_path.open("a") as handle:
        handle.write('{"kind": "step", "st')  # a kill in the middle of a line
    assert [line_kind(r) for r in run.read_log()] == ["step", "dev"]
    newest = run.checkpoint_dir / "step-00000002.pt"
    newest.write_bytes(newest.read_bytes()[:-10])
    start = RunDir(tmp_path / "r").start({"a": 1}, resume=True)
    assert start.checkpoint["x"] == 1 and first == "step-00000001"
    # old logs without `kind` are read by their keys
    assert [line_kind(r) for r in ({"loss_plus": 1}, {"dev_loss": 1}, {"event": "reset"})] == ["step", "dev", "event"]


@pytest.mark.parametrize("status, finished", [("completed", True), ("stopped: non-finite loss at step 3", True),
                                              ("interrupted", False)])
def test_resume_returns_a_completed_or_stopped_run_as_it_is_and_continues_an_interrupted_one(tmp_path, status,
                                                                                            finished):
    """A diverged run is a result: resuming it must not train it again (its LR would diverge again)."""
    run = RunDir(tmp_path / "r")
    run.start({"a": 1})
    run.write_config({"a": 1})
    log = run.open_log()
    log.step({"step": 0})
    run.save_checkpoint({"log_offset": log.offset(), "x": 1}, 1)
    log.close()
    run.write_metrics({"status": status, "steps": 1})
    start = RunDir(tmp_path / "r").start({"a": 1}, resume=True)
    if finished:
        assert start.finished == {"status": status, "steps": 1} and start.checkpoint is None
    else:
        assert start.finished is None and start.checkpoint["x"] == 1


def test_pruning_keeps_the_full_checkpoint_the_kept_replay_checkpoints_rest_on(tmp_path):
    run = RunDir(tmp_path / "r", keep_checkpoints=2)
    run.start({"a": 1})
    run.write_config({"a": 1})
    base = run.save_checkpoint({"weights": torch.ones(3)}, 2)
    for step in (4, 6, 8):  # replay checkpoints: no weights, only what to replay on top of the base
        run.save_checkpoint({"replay_to": step}, step, base=base)
    kept = sorted(p.name for p in run.checkpoint_dir.iterdir())
    assert kept == [f"step-{s:08d}.{ext}" for s in (2, 6, 8) for ext in ("json", "pt")]
    state = RunDir(tmp_path / "r").load_checkpoint()
    assert state["replay_to"] == 8 and torch.equal(state["base_state"]["weights"], torch.ones(3))


def test_summarize_runs_reads_through_the_run_folder(tmp_path):
    import importlib.util

    from conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location("summarize_runs", REPO_ROOT / "scripts" / "summarize_runs.py")
    summarize_runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summarize_runs)
    run = tmp_path / "old"  # a log from before line kinds, with a partial last line
    run.mkdir()
    (run / "train_log.jsonl").write_text(
        '{"step": 0, "loss_plus": 1.0, "loss_minus": 3.0, "seconds": 2.0}\n{"step": 1, "dev_loss": 0.5}\n'
        '{"kind": "step", "step": 1, "loss_plus": 2.0, "loss_minus": 2.0, "seconds": 4.0}\n{"kind": "ev')
    (run / "metrics.json").write_text('{"test": {"accuracy": 0.75}}')
    row = summarize_runs.summarize(run)
    assert row == {**row, "steps": 2, "first": 2.0, "dev_loss": 0.5, "test": "accuracy 0.750", "sec_per_step": 3.0}


def test_resume_accepts_settings_newer_than_the_run_at_their_default(tmp_path, tiny_llama_dir, monkeypatch):
    """A run started by an older version of the code lacks the settings added since; at their defaults they
    mean the old behaviour, so --resume goes on; set otherwise, they are a different config."""
    out = tmp_path / "run"
    _crash_at_loss_call(monkeypatch, 7)
    with pytest.raises(RuntimeError, match="simulated crash"):
        fine_tune(_config(tiny_llama_dir, out))
    monkeypatch.undo()
    saved = read_json(out / "config.json")
    for key in ("num_train_sets", "sampling"):  # as if the run predates these settings
        saved.pop(key)
    (out / "config.json").write_text(json.dumps(saved))
    with pytest.raises(RunFolderError, match="sampling: <unset> -> True"):
        fine_tune(_config(tiny_llama_dir, out, resume=True, sampling=True))
    metrics = fine_tune(_config(tiny_llama_dir, out, resume=True))
    assert metrics["status"] == "completed" and metrics["steps"] == 6
