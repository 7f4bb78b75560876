"""zo.run.status: the words a run ends with, read by the run folder and by the campaign driver (which never imports
torch, so the module must not either)."""
import subprocess
import sys
from pathlib import Path

import pytest

from zo.run.status import COMPLETED, EVALUATED, INTERRUPTED, STOPPED, is_finished, is_stopped

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("status", [COMPLETED, f"{STOPPED}: non-finite loss at step 3", f"{STOPPED} at max_steps=5",
                                    EVALUATED])
def test_finished_statuses(status):
    assert is_finished(status)


@pytest.mark.parametrize("status", [INTERRUPTED, None, "", "running"])
def test_unfinished_statuses(status):
    assert not is_finished(status)


def test_stopped_is_a_divergence_or_the_step_cap_only():
    assert is_stopped(f"{STOPPED}: non-finite loss") and not is_stopped(COMPLETED) and not is_stopped(None)


def test_the_campaign_reads_statuses_without_torch():
    code = ("import sys; sys.path.insert(0, 'scripts'); from campaign.store import is_final; "
            "assert is_final({'status': 'completed'}) and not is_final({'status': 'interrupted'}); "
            "assert 'torch' not in sys.modules, 'the campaign store imported torch'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
