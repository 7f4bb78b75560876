"""Write <RESULTS_DIR>/README.md and plots/ from the campaign's finished runs (same env / PRESET as the campaign).

    python scripts/make_report.py
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from campaign.report import write_report  # noqa: E402
from campaign.settings import load_settings  # noqa: E402

if __name__ == "__main__":
    print(write_report(load_settings()))
