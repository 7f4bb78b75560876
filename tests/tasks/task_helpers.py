"""Shared helpers for the tasks tests: the data root, cached tasks and tiny RTE/WIC fixture folders."""
from __future__ import annotations

import functools
import json
from pathlib import Path


from conftest import SHARED_DATA
from run_helpers import requires_shared_data as requires_data  # noqa: F401  (the one skip rule, under its old name)
import tasks

SHARED_TASKS = ("SST2", "Copa", "BoolQ", "MultiRC", "CB", "WSC", "ReCoRD", "SQuAD", "DROP")


@functools.lru_cache(maxsize=None)
def shared_task(name: str) -> tasks.Task:
    """One loaded Task per name for the whole session (the files are read once)."""
    return tasks.get_task(name, SHARED_DATA)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


RTE_ROWS = [
    {"premise": "The cat sat on the mat.", "hypothesis": "A cat is sitting.", "label": "entailment", "idx": 0},
    {"premise": "Paris is in France.", "hypothesis": "Paris is in Spain.", "label": "not_entailment", "idx": 1},
    {"premise": "It rained all day.", "hypothesis": "The ground is wet.", "label": "entailment", "idx": 2},
]

WIC_ROWS = [
    {"word": "bank", "sentence1": "He sat on the bank of the river.", "sentence2": "She went to the bank to pay.",
     "start1": 14, "end1": 18, "start2": 14, "end2": 18, "idx": 0, "label": False, "version": 1.1},
    {"word": "run", "sentence1": "I run every day.", "sentence2": "They run each morning.",
     "start1": 2, "end1": 5, "start2": 5, "end2": 8, "idx": 1, "label": True, "version": 1.1},
]


def glue_fixture_dir(root: Path) -> Path:
    """A data root holding only tiny RTE/ and WIC/ folders in the SuperGLUE jsonl layout."""
    write_jsonl(root / "RTE" / "train.jsonl", RTE_ROWS)
    write_jsonl(root / "RTE" / "val.jsonl", RTE_ROWS[:2])
    write_jsonl(root / "WIC" / "train.jsonl", WIC_ROWS)
    write_jsonl(root / "WIC" / "val.jsonl", WIC_ROWS[::-1])
    return root
