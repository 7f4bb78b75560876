"""The words a run's `status` (metrics.json; L2L: summary.json) is made of, in a module that imports nothing, so
that the campaign driver, which never imports torch, reads a run's end with the same words that wrote it."""
from __future__ import annotations

COMPLETED = "completed"
INTERRUPTED = "interrupted"  # checkpointed by a signal: `--resume` finishes it
STOPPED = "stopped"  # the prefix of "stopped: <non-finite loss>" (fine-tuning), "stopped at max_steps=N" (L2L)
EVALUATED = "evaluated without training (eval_only)"  # an evaluation-only run (train_mode none)
FINISHED_PREFIXES = (COMPLETED, STOPPED, EVALUATED)


def is_finished(status: str | None) -> bool:
    """A run with this status is over (resuming it would redo nothing); a diverged LR is a result too."""
    return str(status or "").startswith(FINISHED_PREFIXES)


def is_stopped(status: str | None) -> bool:
    """Ended early on a non-finite loss (or L2L's step cap)."""
    return str(status or "").startswith(STOPPED)
