"""DEADLINE: the time by which a campaign should have nothing left running, for a machine that is only yours for a
while (a SLURM allocation, a cloud instance, a working session). The driver then starts only the runs it expects to
end before it, each priced by campaign.cost times DEADLINE_MARGIN, so no run is cut short and lost with the job.

    DEADLINE=03:30                  # a clock time (local): today's, or tomorrow's once it has passed
    DEADLINE=2026-11-27T03:30       # ISO 8601 (local unless it names its zone)
    DEADLINE=1795750200             # Unix seconds

Standalone (no torch, no package import), so the shell launchers can use it too:
    python scripts/campaign/deadline.py 03:30           # the Unix seconds it means
    python scripts/campaign/deadline.py --left 03:30    # seconds left until it (negative once past)
"""
from __future__ import annotations

import datetime as dt
import sys
import time

# A run priced at its CPU seconds may take longer on the wall: a shared machine, a slower attempt than the median.
DEFAULT_MARGIN = 1.2


def parse_deadline(text: str, now: float | None = None) -> float:
    """Unix seconds of a DEADLINE value; ValueError with the accepted forms when it is none of them."""
    text = text.strip()
    now = time.time() if now is None else now
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None:
        if value < 1e9:  # a small number is a typo for something else, not a date in 1970-2001
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
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"DEADLINE={text!r}: give a clock time (HH:MM), an ISO 8601 date and time "
                         f"(2026-11-27T03:30) or Unix seconds") from None


def clock(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def main(argv: list[str]) -> int:
    left = argv[:1] == ["--left"]
    args = argv[1:] if left else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        when = parse_deadline(args[0])
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    print(int(when - time.time()) if left else int(when))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
