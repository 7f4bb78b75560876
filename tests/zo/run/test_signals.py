"""zo.run.signals.GracefulStop: the first SIGTERM / SIGINT asks for a stop, a second one exits at once."""
import signal
import subprocess
import sys

from conftest import REPO_ROOT

SCRIPT = """
import os, signal, sys
sys.path.insert(0, {root!r})
from zo.run.signals import GracefulStop
with GracefulStop() as stop:
    os.kill(os.getpid(), signal.{name})
    assert stop.requested == signal.{name} and stop.exit_code() == 128 + signal.{name}
    print("asked to stop", flush=True)
    os.kill(os.getpid(), signal.{name})
    print("still running", flush=True)
"""


def test_a_second_signal_exits_at_once_with_128_plus_its_number():
    for sig in (signal.SIGTERM, signal.SIGINT):
        proc = subprocess.run([sys.executable, "-c", SCRIPT.format(root=str(REPO_ROOT), name=sig.name)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 128 + sig, proc.stderr
        assert proc.stdout == "asked to stop\n" and f"second {sig.name}: exiting now" in proc.stderr


def test_the_previous_handlers_come_back_after_the_block():
    from zo.run.signals import GracefulStop

    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
