"""Recipes: whole jobs that read top to bottom (set-up, train, evaluate, clean up).

Nothing else in `zo/` imports from here; the CLIs (run_*.py) and users' Python code do.
"""
