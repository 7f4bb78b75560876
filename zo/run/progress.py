"""Progress output and per-step reporting.

`progress_bar`: a tqdm bar on a terminal; when stderr is a file (a batch job's log) a plain log line
at most every `interval` seconds instead, so logs hold no carriage-return spam.
`Reporter`: per-step records and final metrics to an experiment tracker (`--report_to wandb`; wandb's
offline mode, WANDB_MODE=offline, needs no network).
"""
from __future__ import annotations

import importlib
import logging
import sys
import time

from tqdm.auto import tqdm

log = logging.getLogger(__name__)
REPORT_TO = ("none", "wandb")


class _LogLines:
    """tqdm's update / set_postfix / close, written as periodic log lines."""

    def __init__(self, total: int, desc: str, initial: int, interval: float):
        self.total, self.desc, self.n, self.interval = total, desc, initial, interval
        self.postfix = ""
        self._start = self._last = time.monotonic()
        self._start_n = initial

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval or self.n == self.total:
            self._last = now
            rate = (self.n - self._start_n) / max(now - self._start, 1e-9)
            eta = (self.total - self.n) / rate if rate > 0 else float("nan")
            log.info("%s: %d/%d (%.0f%%), %.2f s/step, ETA %.0f s %s", self.desc, self.n, self.total,
                     100.0 * self.n / max(self.total, 1), 1 / rate if rate else float("nan"), eta, self.postfix)

    def set_postfix(self, **values) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool = True, initial: int = 0, interval: float = 60.0):
    if enabled and sys.stderr.isatty():
        return tqdm(total=total, desc=desc, initial=initial, dynamic_ncols=True)
    if enabled:
        return _LogLines(total, desc, initial, interval)
    return tqdm(total=total, disable=True)


class Reporter:
    """No-op reporter; `make_reporter` returns a tracker-backed one when asked."""

    def log(self, record: dict, step: int) -> None:
        pass

    def finish(self) -> None:
        pass


WANDB_MISSING = "--report_to wandb needs the wandb package: pip install wandb (WANDB_MODE=offline works offline)"


def check_report_to(report_to: str) -> None:
    """A known tracker, installed: checked with the other settings, before a run folder is touched."""
    if report_to not in REPORT_TO:
        raise ValueError(f"report_to must be one of {REPORT_TO}, got {report_to!r}")
    if report_to == "wandb":
        try:
            importlib.import_module("wandb")
        except ImportError as err:
            raise ImportError(WANDB_MISSING) from err


class WandbReporter(Reporter):
    def __init__(self, config: dict, name: str | None, resume_id: str | None = None):
        try:
            import wandb
        except ImportError as err:
            raise ImportError(WANDB_MISSING) from err
        self._run = wandb.init(project="zo-fine-tuner", config=config, name=name, id=resume_id,
                               resume="allow" if resume_id else None)
        self.id = self._run.id

    def log(self, record: dict, step: int) -> None:
        flat = {}
        for key, value in record.items():
            if isinstance(value, dict):
                flat.update({f"{key}/{k}": v for k, v in value.items() if isinstance(v, (int, float))})
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[key] = value
        self._run.log(flat, step=step)

    def finish(self) -> None:
        self._run.finish()


def make_reporter(report_to: str, config: dict, name: str | None = None) -> Reporter:
    check_report_to(report_to)
    return WandbReporter(config, name) if report_to == "wandb" else Reporter()
