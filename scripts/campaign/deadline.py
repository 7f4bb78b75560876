"""DEADLINE: the time by which a campaign should have nothing left running, for a machine that is only yours for a
while (a SLURM allocation, a cloud instance, a working session). The driver then starts only the runs it expects to
end before it, each priced by campaign.cost (the wall time of the finished runs like it) times DEADLINE_MARGIN,
so that a run is not cut short and lost with the job.

    DEADLINE=03:30                  # a clock time (local): today's, or tomorrow's once it has passed
    DEADLINE=2026-11-27T03:30       # ISO 8601 (local unless it names its zone)
    DEADLINE=1795750200             # Unix seconds

Standalone (no torch, no package import), so the shell launchers can use it too:
    python scripts/campaign/deadline.py 03:30    # the Unix seconds it means, or exit code 2 and why not
"""
from __future__ import annotations

import datetime as dt
import math
import sys
import time

# A run priced at the median wall time of runs like it may take longer: here one run's wall time ranged up to ~3x
# another's of the same task and method, when other work shared the cores.
DEFAULT_MARGIN = 1.5


def parse_deadline(text: str, now: float | None = None) -> float:
    """Unix seconds of a DEADLINE value; ValueError with the accepted forms when it is none of them."""
    text = text.strip()
    now = time.time() if now is None else now
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None:
        if not math.isfinite(value) or value < 1e9:  # a small number is a typo, not a date in 1970-2001
            raise ValueError(f"DEADLINE={text!r} is not Unix seconds of this century")
        return value
    try:
        clock = dt.datetime.strptime(text, "%H:%M").time()
    except ValueError:
        clock = None
    if clock is not None:
        today = dt.datetime.fromtimestamp(now).replace(hour=clock.hour, minute=clock.minute, second=0, microsecond=0)
        moment = today if today.timestamp() > now else today + dt.timedelta(days=1)
        return moment.timestamp()
    try:
        if len(text) <= 10:  # a date alone would mean its midnight: more likely a slip than meant
            raise ValueError
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"DEADLINE={text!r}: give a clock time (HH:MM), an ISO 8601 date and time "
                         f"(2026-11-27T03:30) or Unix seconds") from None


def clock(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print(int(parse_deadline(argv[0])))
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
