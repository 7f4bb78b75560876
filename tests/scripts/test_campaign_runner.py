"""scripts/campaign/runner.py: the stop signals held while the driver starts and registers a run, and given back
to the run itself."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
from campaign.runner import _die_with_parent, stop_signals_held  # noqa: E402


def test_a_stop_signal_waits_for_the_end_of_the_held_block():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda *_: seen.append("TERM"))
    try:
        with stop_signals_held():
            # to this thread: sent to the process, a thread of another test (torch's, say) that does not hold the
            # signal may take it, and its handler then runs at a moment the test cannot wait for
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
            assert seen == []  # held: the driver's handler cannot raise between a run's start and its record
        assert seen == ["TERM"]  # delivered as the block ends
    finally:
        signal.signal(signal.SIGTERM, previous)


def _blocked_signals(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    raise AssertionError("no SigBlk line")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the signal mask from /proc")
def test_a_run_started_in_the_held_block_takes_the_stop_signals_again():
    term = 1 << (signal.SIGTERM - 1)
    with stop_signals_held():
        plain = subprocess.Popen(["sleep", "30"])
        run = subprocess.Popen(["sleep", "30"], preexec_fn=_die_with_parent)
    try:
        assert _blocked_signals(plain.pid) & term  # a child inherits the held mask ...
        assert not _blocked_signals(run.pid) & term  # ... a run gives it back, so a stop reaches it
        run.terminate()
        assert run.wait(timeout=10) == -signal.SIGTERM
    finally:
        for proc in (plain, run):
            proc.kill()
            proc.wait()
