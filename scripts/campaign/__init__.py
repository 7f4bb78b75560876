"""The paper-reproduction campaign: plan (settings, methods, caps, phases), run store, runner, report.

Entry points: scripts/reproduce_paper.py (run / --status) and scripts/make_report.py. Not part of zo/.
"""
