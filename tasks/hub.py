"""Hugging Face hub rows -> canonical records (see records.py). Needs the network or a warm HF cache.

Only parquet repositories are used: `datasets` >= 4 no longer runs loading scripts, so upstream's
`load_dataset('super_glue', ...)`, `('glue', 'sst2')`, `('boolq')`, `('squad')`, `('drop')` ids are replaced
by their script-free mirrors below (same rows and field names).
"""
from __future__ import annotations

from typing import Any, Callable

# task -> (repo id, config name or None)
HUB_IDS: dict[str, tuple[str, str | None]] = {
    "SST2": ("nyu-mll/glue", "sst2"),
    "Copa": ("aps/super_glue", "copa"),
    "BoolQ": ("google/boolq", None),
    "MultiRC": ("aps/super_glue", "multirc"),
    "CB": ("aps/super_glue", "cb"),
    "WIC": ("aps/super_glue", "wic"),
    "WSC": ("aps/super_glue", "wsc.fixed"),
    "ReCoRD": ("aps/super_glue", "record"),
    "RTE": ("aps/super_glue", "rte"),
    "SQuAD": ("rajpurkar/squad", "plain_text"),
    "DROP": ("ucinlp/drop", None),
}

HUB_SPLITS = {"train": "train", "valid": "validation"}


def _same(row: dict) -> dict:
    return dict(row)


def _boolq(row: dict) -> dict:
    return {"question": row["question"], "passage": row["passage"], "title": "", "label": int(row["answer"])}


def _record(row: dict) -> dict:
    return {"passage": row["passage"], "query": row["query"], "entities": list(row["entities"]),
            "answers": list(row["answers"]), "idx": row["idx"]}


def _squad(row: dict) -> dict:
    return {"id": row["id"], "title": row["title"], "context": row["context"], "question": row["question"],
            "answers": list(row["answers"]["text"])}


def _drop(row: dict) -> dict:
    return {"section_id": row["section_id"], "query_id": row["query_id"], "context": row["passage"],
            "question": row["question"], "answers": list(row["answers_spans"]["spans"])}


ADAPTERS: dict[str, Callable[[dict], dict]] = {"BoolQ": _boolq, "ReCoRD": _record, "SQuAD": _squad, "DROP": _drop}


class HubSource:
    """Loads one split on demand with `datasets.load_dataset` and adapts each row."""

    carve = False

    def __init__(self, task: str):
        self.task = task
        self.repo, self.config = HUB_IDS[task]

    def records(self, split: str) -> list[dict]:
        from datasets import load_dataset

        args: list[Any] = [self.repo] + ([self.config] if self.config else [])
        try:
            rows = load_dataset(*args, split=HUB_SPLITS[split])
        except OSError as err:  # no network or no hub (ConnectionError, HTTP errors, dataset not found)
            first_line = (str(err).splitlines() or [""])[0]
            raise FileNotFoundError(
                f"{self.task}: cannot load {self.repo} from the Hugging Face hub ({type(err).__name__}: "
                f"{first_line}); pass --data_dir (DATA_DIR) with local files, e.g. ../shared/data") from err
        adapt = ADAPTERS.get(self.task, _same)
        return [adapt(row) for row in rows]
