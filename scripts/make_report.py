"""Write <RESULTS_DIR>/README.md and plots/ from the campaign's finished runs (same env / PRESET as the campaign).

    python scripts/make_report.py                      # results/README.md and results/plots/
    python scripts/make_report.py --readme README.md   # also the table between README's campaign-table markers
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from campaign.report import BlockMarkersError, write_report  # noqa: E402
from campaign.settings import load_settings  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", type=Path, help="a file with campaign-table markers: its table is rewritten "
                        "with the report's paper-style table and win counts")
    args = parser.parse_args()
    try:
        settings = load_settings()
    except ValueError as err:
        sys.exit(f"make_report: {err}")
    if not settings.runs_dir.is_dir():  # a mistyped RESULTS_DIR would give an empty report, written as if true
        sys.exit(f"make_report: no campaign runs in {settings.runs_dir} (RESULTS_DIR={settings.results_dir})")
    try:
        print(write_report(settings, args.readme))
    except BlockMarkersError as err:
        sys.exit(f"make_report: {err}")
