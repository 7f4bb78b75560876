"""Test helper: run an entry point and SIGKILL the process at a chosen moment.

    python tests/zo/run/kill_at.py <loss|save> <n> <run_zo_fine_tuner|run_l2l> [args...]

`loss n`: during the n-th loss evaluation (inside a step, between its forward passes);
`save n`: in the middle of the n-th checkpoint write (half a file on disk). n = 0: never.
"""
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import tasks  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    when, n, entry, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    calls = {"n": 0}

    def due() -> bool:
        calls["n"] += 1
        return calls["n"] == n

    if when == "loss":
        real_loss = tasks.batch_loss

        def batch_loss(*args, **kwargs):
            if due():
                os.kill(os.getpid(), signal.SIGKILL)
            return real_loss(*args, **kwargs)

        tasks.batch_loss = batch_loss
    elif when == "save":
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            if isinstance(obj, dict) and obj.get("format") == "zo-run-checkpoint" and due():
                real_save(obj, f, *args, **kwargs)
                with open(f, "r+b") as handle:  # half of it reached the disk
                    handle.truncate(os.path.getsize(f) // 2)
                os.kill(os.getpid(), signal.SIGKILL)
            return real_save(obj, f, *args, **kwargs)

        torch.save = save
    module = __import__(entry)
    from zo.cli import run_main, setup_logging

    setup_logging()
    run_main(lambda: module.main(argv))


if __name__ == "__main__":
    main()
