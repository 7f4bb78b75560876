"""Markdown table comparing run folders: training loss over the first / last steps, dev loss, test metric.

    python scripts/summarize_runs.py runs/a runs/b ...
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zo.run.folder import RunDir  # noqa: E402  (the one reader of run folders)


def summarize(run: Path, window: int = 20) -> dict:
    folder = RunDir(run)
    train = folder.read_log("step")
    dev = [s["dev_loss"] for s in folder.read_log("dev")]
    metrics = folder.read_metrics()
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
