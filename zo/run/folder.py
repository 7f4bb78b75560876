"""The run folder: the one place that writes and reads a run's files.

    config.json            every resolved setting (a resume must match it)
    train_log.jsonl        one JSON object per line, each with a `kind`: "step", "dev" or "event"
    metrics.json           final (or interrupted) metrics with a `status` (L2L: summary.json)
    best_model.safetensors the lowest-dev-loss weights (fine-tuning)
    checkpoints/           step-<n>.pt + step-<n>.json (manifest: sha256, size, base checkpoint)

Every file is written atomically (temporary file + rename), and the log is line-buffered, so a
SIGKILL at any moment leaves whole files and at most one partial log line. A checkpoint records the
log's byte length; resuming truncates the log there, so every step appears exactly once. A
checkpoint counts only once its manifest exists and its checksum matches: a corrupt or truncated one
is reported and the previous one used.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from zo.io import _jsonable, atomic_path, write_json
from zo.run.status import is_finished

log = logging.getLogger(__name__)

LOG_KINDS = ("step", "dev", "event")
CHECKPOINT_FORMAT = "zo-run-checkpoint"
BEST_STATE_FILE = "best_model.safetensors"
PREDICTIONS_FILE = "test_predictions.jsonl"  # the test split's prediction and score per example


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (a finished run, or a resume with another config)."""


def line_kind(record: dict) -> str:
    """A line's kind; logs written before kinds existed are told apart by their keys."""
    if "kind" in record:
        return record["kind"]
    if "event" in record:
        return "event"
    if "dev_loss" in record:
        return "dev"
    return "step"


class RunLog:
    """Append-only writer of train_log.jsonl; `offset()` is the byte length a checkpoint records."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = path.open("a", buffering=1)

    def _write(self, kind: str, record: dict) -> None:
        self._handle.write(json.dumps(_jsonable({"kind": kind, **record})) + "\n")

    def step(self, record: dict) -> None:
        self._write("step", record)

    def dev(self, record: dict) -> None:
        self._write("dev", record)

    def event(self, event: str, **fields: Any) -> None:
        self._write("event", {"event": event, **fields})

    def offset(self) -> int:
        self._handle.flush()
        return self._handle.tell()

    def close(self) -> None:
        self._handle.close()


@dataclass
class Start:
    """What `RunDir.start` found: a finished run's metrics, or the checkpoint to resume from (or neither)."""
    finished: dict | None = None
    checkpoint: dict | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class RunDir:
    def __init__(self, path: str | Path, metrics_name: str = "metrics.json", keep_checkpoints: int = 2):
        self.path = Path(path)
        self.config_path = self.path / "config.json"
        self.log_path = self.path / "train_log.jsonl"
        self.metrics_path = self.path / metrics_name
        self.predictions_path = self.path / PREDICTIONS_FILE
        self.best_weights_path = self.path / BEST_STATE_FILE
        self.checkpoint_dir = self.path / "checkpoints"
        self.keep_checkpoints = keep_checkpoints
        self._invalid: list[dict] = []  # checkpoints skipped by load_checkpoint, reported in the log later

    # -- starting a run ---------------------------------------------------------------------------
    def _run_files(self) -> list[Path]:
        candidates = (self.config_path, self.log_path, self.metrics_path, self.predictions_path,
                      self.best_weights_path, self.checkpoint_dir)
        return [p for p in candidates if p.exists()]

    def start(self, config: dict, resume: bool = False, overwrite: bool = False,
              ignore_keys: Iterable[str] = (), checkpoints: bool = True, defaults: dict | None = None) -> Start:
        """Check the folder against the request, before anything in it is written.

        New folder: nothing to do. A folder holding a run: refuse, unless `overwrite` (its run files are
        deleted) or `resume` (the config must match, except `ignore_keys`; a finished run's metrics are
        returned as they are; otherwise the latest valid checkpoint, if any). `checkpoints=False`: a folder
        that keeps none (the summary of several runs), so none is looked for. `defaults`: a setting the saved
        config lacks (the run was started by an older version of this code) matches if it is at its default,
        because new settings default to the old behaviour.
        """
        existing = self._run_files()
        if existing and overwrite:
            log.warning("overwriting the run in %s", self.path)
            for path in existing:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            existing = []
        if not existing:
            if resume:  # a mistyped folder would otherwise start a new run without a word
                log.info("%s holds no run to resume: starting a new one", self.path)
            self.path.mkdir(parents=True, exist_ok=True)
            self._clean_temporaries()
            return Start()
        if not resume:
            status = self.read_metrics().get("status") if self.metrics_path.exists() else None
            if is_finished(status):
                what, resume_does = f"a finished run (status {status!r})", "return its metrics"
            else:
                what, resume_does = f"an unfinished run{f' (status {status!r})' if status else ''}", "continue it"
            raise RunFolderError(f"{self.path} holds {what}: pass --resume (RESUME=1) to {resume_does}, "
                                 f"--overwrite (OVERWRITE=1) to replace it, or choose another output folder")
        if self.config_path.exists():
            self._check_same_config(config, set(ignore_keys), defaults or {})
        self._clean_temporaries()
        if self.metrics_path.exists():
            metrics = self.read_metrics()
            if is_finished(metrics.get("status")):
                log.info("%s already holds a finished run (status %r): nothing to resume", self.path,
                         metrics.get("status"))
                return Start(finished=metrics)
        if not checkpoints:
            return Start()
        checkpoint = self.load_checkpoint()
        if checkpoint is None:
            log.warning("%s has no usable checkpoint: starting from step 0", self.path)
        return Start(checkpoint=checkpoint)

    def _check_same_config(self, config: dict, ignore: set[str], defaults: dict) -> None:
        saved = self.read_config()
        now = json.loads(json.dumps(_jsonable(config)))
        defaults = json.loads(json.dumps(_jsonable(defaults)))
        # a setting newer than the saved run, at its default: what the older code did
        ignore = ignore | {k for k in set(now) - set(saved) if k in defaults and now[k] == defaults[k]}
        keys = sorted((set(saved) | set(now)) - ignore)
        missing = object()
        diffs = [f"{k}: {saved.get(k, missing)!r} -> {now.get(k, missing)!r}".replace(repr(missing), "<unset>")
                 for k in keys if saved.get(k, missing) != now.get(k, missing)]
        if diffs:
            raise RunFolderError(f"cannot resume {self.path} with another config (saved -> now): " + "; ".join(diffs))

    def _clean_temporaries(self) -> None:
        """Temporary files of atomic writes that a kill interrupted (never read)."""
        for folder in (self.path, self.checkpoint_dir):
            if folder.is_dir():
                for tmp in folder.glob(".*.tmp-*"):
                    tmp.unlink(missing_ok=True)

    # -- config, log, metrics ---------------------------------------------------------------------
    def write_config(self, config: dict) -> None:
        write_json(self.config_path, config)

    def read_config(self) -> dict:
        return json.loads(self.config_path.read_text())

    def open_log(self, truncate_to: int | None = None) -> RunLog:
        """The log writer; `truncate_to` (a checkpoint's offset) drops what was written after the checkpoint."""
        if truncate_to is None:
            self.log_path.unlink(missing_ok=True)
        elif self.log_path.exists():
            with self.log_path.open("r+b") as handle:
                handle.truncate(truncate_to)
        return RunLog(self.log_path)

    def read_log(self, kind: str | None = None) -> list[dict]:
        """Every whole line (a partial last line from a kill is skipped), optionally of one kind."""
        if not self.log_path.exists():
            return []
        records = []
        for line in self.log_path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if kind is None or line_kind(record) == kind:
                records.append(record)
        return records

    def write_metrics(self, metrics: dict) -> None:
        write_json(self.metrics_path, metrics)

    def read_metrics(self) -> dict:
        return json.loads(self.metrics_path.read_text())

    def write_predictions(self, rows: list[dict]) -> None:
        """One line per test example, written atomically: what a paired comparison of two runs reads."""
        with atomic_path(self.predictions_path) as tmp:
            tmp.write_text("".join(json.dumps(_jsonable(row)) + "\n" for row in rows))

    # -- checkpoints ------------------------------------------------------------------------------
    def save_checkpoint(self, state: dict, step: int, base: str | None = None) -> str:
        """Write `state` (a dict of tensors and plain values) as checkpoint `step`; returns its name.

        `base` names an earlier full checkpoint this one depends on (cheap checkpoints without weights).
        Data first, then the manifest: a kill in between leaves an orphan that is never used.
        """
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        name = f"step-{step:08d}"
        data = self.checkpoint_dir / f"{name}.pt"
        with atomic_path(data) as tmp:
            config = self.read_config() if self.config_path.exists() else None  # self-contained, as nanoGPT's
            torch.save({"format": CHECKPOINT_FORMAT, "step": step, "base": base, "config": config, **state}, tmp)
        manifest = {"format": CHECKPOINT_FORMAT, "step": step, "file": data.name, "bytes": data.stat().st_size,
                    "sha256": _sha256(data), "base": base, "time": time.time()}
        write_json(self.checkpoint_dir / f"{name}.json", manifest)
        self._prune()
        return name

    def _manifests(self) -> list[Path]:
        return sorted(self.checkpoint_dir.glob("step-*.json")) if self.checkpoint_dir.is_dir() else []

    def _prune(self) -> None:
        manifests = self._manifests()
        keep = {m.stem for m in manifests[-self.keep_checkpoints:]}
        for m in manifests[-self.keep_checkpoints:]:
            base = json.loads(m.read_text()).get("base")
            if base:
                keep.add(base)
        for m in manifests:
            if m.stem not in keep:
                m.unlink(missing_ok=True)
                (self.checkpoint_dir / f"{m.stem}.pt").unlink(missing_ok=True)

    def _verified(self, name: str) -> dict:
        """The checkpoint `name`, after checking its manifest, size and checksum; ValueError if any fails."""
        manifest_path = self.checkpoint_dir / f"{name}.json"
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"unreadable manifest {manifest_path.name}: {err}") from err
        data = self.checkpoint_dir / manifest["file"]
        if not data.exists():
            raise ValueError(f"{data.name} is missing")
        if data.stat().st_size != manifest["bytes"]:
            raise ValueError(f"{data.name} is truncated ({data.stat().st_size} of {manifest['bytes']} bytes)")
        if _sha256(data) != manifest["sha256"]:
            raise ValueError(f"{data.name} fails its checksum")
        return torch.load(data, map_location="cpu", weights_only=False)

    def load_checkpoint(self) -> dict | None:
        """The newest valid checkpoint (with `base_state` loaded when it depends on a full one), or None.

        An invalid one is reported (log and a `checkpoint_invalid` event line) and the previous one used.
        """
        for manifest in reversed(self._manifests()):
            try:
                state = self._verified(manifest.stem)
                if state.get("base"):
                    state["base_state"] = self._verified(state["base"])
            except (ValueError, RuntimeError, EOFError) as err:
                log.warning("checkpoint %s is not usable (%s): falling back to the previous one", manifest.stem, err)
                self._invalid.append({"checkpoint": manifest.stem, "reason": str(err)})
                continue
            log.info("resuming from checkpoint %s (step %d)", manifest.stem, state["step"])
            return state
        return None

    def report_invalid_checkpoints(self, run_log: RunLog) -> None:
        """Say in the log which checkpoints were skipped as corrupt (called once the log is open)."""
        for item in self._invalid:
            run_log.event("checkpoint_invalid", **item)
        self._invalid.clear()

    def remove_checkpoints(self) -> None:
        """A finished run keeps its results, not its (large) checkpoints."""
        if self.checkpoint_dir.is_dir():
            shutil.rmtree(self.checkpoint_dir)
