"""A small task spec + data file written by the tests (tasks/custom.py)."""
import json
from pathlib import Path

ROWS = [{"text": f"review number {i} was {'good' if i % 2 else 'bad'}.", "label": "pos" if i % 2 else "neg"}
        for i in range(10)]
SENTIMENT_SPEC = {"name": "Reviews", "train_file": "reviews.jsonl", "template": "{text} It was",
                  "label_field": "label", "label_words": {"neg": "terrible", "pos": "great"}}


def write_task(folder: Path, spec: dict, rows=ROWS, data_name="reviews.jsonl", spec_name="reviews.yaml") -> Path:
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    data = folder / data_name
    if data_name.endswith(".jsonl"):
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import csv
        with open(data, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["text"])
            writer.writeheader()
            writer.writerows(rows)
    path = folder / spec_name
    path.write_text(json.dumps(spec) if spec_name.endswith(".json") else yaml.safe_dump(spec))
    return path
