"""SIGINT / SIGTERM: the first one asks the loop to stop after the current step (it then checkpoints and
writes metrics with status "interrupted"); a second one exits at once.

Exiting at once is safe for the same reason a SIGKILL is: every file is written atomically and the
log line by line, and a resume truncates the log to the last checkpoint.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading

log = logging.getLogger(__name__)

HANDLED = (signal.SIGINT, signal.SIGTERM)


class GracefulStop:
    """Context manager; `requested` is the first signal received (None until then)."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self) -> "GracefulStop":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()

    def _handle(self, signum: int, frame) -> None:
        if self.requested is not None:
            sys.stderr.write(f"second {signal.Signals(signum).name}: exiting now\n")
            sys.stderr.flush()
            os._exit(128 + signum)
        self.requested = signum
        log.warning("%s received: finishing the current step, then checkpointing (send it again to exit now)",
                    signal.Signals(signum).name)

    def exit_code(self) -> int:
        return 128 + (self.requested or signal.SIGINT)
