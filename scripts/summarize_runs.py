"""Markdown table comparing run folders: training loss over the first / last steps, dev loss, test metric.

    python scripts/summarize_runs.py runs/a runs/b ...
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def summarize(run: Path, window: int = 20) -> dict:
    steps = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines() if line.strip()]
    train = [s for s in steps if "loss_plus" in s]
    dev = [s["dev_loss"] for s in steps if "dev_loss" in s]
    metrics = json.loads((run / "metrics.json").read_text())
    mid = lambda rows: sum((r["loss_plus"] + r["loss_minus"]) / 2 for r in rows) / max(len(rows), 1)  # noqa: E731
    test = metrics.get("test", {})
    metric = next((k for k in ("accuracy", "f1") if k in test), None)
    return {"run": run.name, "steps": len(train), "first": mid(train[:window]), "last": mid(train[-window:]),
            "dev_loss": dev[-1] if dev else float("nan"),
            "test": f"{metric} {test[metric]:.3f}" if metric else "-",
            "sec_per_step": sum(s["seconds"] for s in train) / max(len(train), 1)}


def main() -> None:
    rows = [summarize(Path(p)) for p in sys.argv[1:]]
    print("| run | steps | train loss, first 20 steps | train loss, last 20 steps | dev loss at end | test | s/step |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['steps']} | {r['first']:.4f} | {r['last']:.4f} | {r['dev_loss']:.4f} | "
              f"{r['test']} | {r['sec_per_step']:.2f} |")


if __name__ == "__main__":
    main()
