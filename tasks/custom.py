"""A task from a spec file instead of code: a JSONL/CSV file, a prompt template, label words or a target field.

A spec (YAML or JSON) names the data and how a row becomes a prompt and its options (docs/adding_a_task.md):

    name: MyReviews                    # optional; default: the spec file's stem
    train_file: reviews.jsonl          # .jsonl, .csv or .tsv; relative paths are relative to the spec file
    eval_file: reviews_test.jsonl      # optional; without it 1/5 of train is held out (fixed seed 0)
    template: "{text} It was"          # placeholders are column names
    label_field: label                 # classification with fixed label words ...
    label_words: {pos: great, neg: terrible}
    # candidates_field: options        # ... or per-row candidates (a JSON list) + answer_field: the correct one
    # target_field: answer             # ... or generation: the gold answer (a string or a list of strings)
    metric: accuracy                   # accuracy (classification) or f1 (generation); default from the kind

The option follows the prompt after one space, unless the prompt ends with a space or a newline (as the
built-in templates do). Generation targets are " {answer}\\n", as upstream's SQuAD/DROP.
"""
from __future__ import annotations

import csv
import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import Sample, Task
from .local import iter_jsonl
from .templates import Template

SPEC_SUFFIXES = (".yaml", ".yml", ".json")
DATA_SUFFIXES = (".jsonl", ".csv", ".tsv")
SPEC_KEYS = {"name", "train_file", "eval_file", "template", "label_field", "label_words", "candidates_field",
             "answer_field", "target_field", "metric", "train_as_classification"}


class TaskSpecError(ValueError):
    """A task spec or its data file is unusable; the message names the file, and the line or key."""


def is_task_file(name: Any) -> bool:
    return isinstance(name, (str, Path)) and str(name).lower().endswith(SPEC_SUFFIXES)


def placeholders(template: str, where: str) -> list[str]:
    try:
        names = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as err:
        raise TaskSpecError(f"{where}: template {template!r} is not a valid format string ({err})") from None
    if any(not n or not n.isidentifier() for n in names):
        raise TaskSpecError(f"{where}: template {template!r}: placeholders must be column names like {{text}}; "
                            "write {{ and }} for literal braces")
    return names


def _joined(prompt: str, option: str) -> str:
    return prompt + option if prompt.endswith((" ", "\n")) else f"{prompt} {option}"


class SpecTemplate(Template):
    """Fills the spec's template with a row; options are label words, candidates or the gold target."""

    def __init__(self, template: str, generation: bool):
        self.template = template
        self.generation = generation

    def encode(self, sample: Sample) -> str:
        return self.template.format(**sample.data)

    def verbalize(self, sample: Sample, candidate: Any = None) -> str:
        if self.generation:  # upstream's SQuAD/DROP target: the first gold answer and a newline
            return _joined(self.encode(sample), f"{sample.correct[0]}\n")
        return _joined(self.encode(sample), str(candidate))


@dataclass
class TaskFileSpec:
    name: str
    train_file: Path
    eval_file: Path | None
    template: str
    label_field: str | None = None
    label_words: dict[str, str] | None = None
    candidates_field: str | None = None
    answer_field: str | None = None
    target_field: str | None = None
    metric: str | None = None
    train_as_classification: bool | None = None
    source: Path | None = None

    @property
    def is_generation(self) -> bool:
        return self.target_field is not None

    def row_fields(self) -> list[str]:
        """Columns every row must have."""
        extra = [self.label_field, self.candidates_field, self.answer_field, self.target_field]
        return list(dict.fromkeys(placeholders(self.template, str(self.source)) + [f for f in extra if f]))


def _read_spec_file(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # yaml / json syntax errors: one line naming the file
        raise TaskSpecError(f"{path}: cannot parse the task spec ({err})") from None
    if not isinstance(data, dict):
        raise TaskSpecError(f"{path}: a task spec is a mapping of keys (train_file, template, ...), got {type(data).__name__}")
    return data


def load_task_spec(path: str | Path) -> TaskFileSpec:
    """Parse and check a spec: known keys, one kind of answer, files that exist, a valid template."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task spec not found: {path}")
    data = _read_spec_file(path)
    unknown = sorted(set(data) - SPEC_KEYS)
    if unknown:
        raise TaskSpecError(f"{path}: unknown key(s) {unknown}; known keys: {sorted(SPEC_KEYS)}")
    for key in ("train_file", "template"):
        if not data.get(key):
            raise TaskSpecError(f"{path}: missing key {key!r}")
    if not isinstance(data["template"], str):
        raise TaskSpecError(f"{path}: template must be a string")
    kinds = [k for k in ("label_field", "candidates_field", "target_field") if data.get(k)]
    if len(kinds) != 1:
        raise TaskSpecError(f"{path}: give exactly one of label_field (+ label_words), candidates_field "
                            f"(+ answer_field) or target_field (generation); got {kinds or 'none'}")
    kind = kinds[0]
    if kind == "label_field" and not isinstance(data.get("label_words"), dict):
        raise TaskSpecError(f"{path}: label_field needs label_words, a mapping label value -> word "
                            "(e.g. {0: terrible, 1: great})")
    if kind == "candidates_field" and not data.get("answer_field"):
        raise TaskSpecError(f"{path}: candidates_field needs answer_field, the column with the correct candidate")
    metric = data.get("metric") or ("f1" if kind == "target_field" else "accuracy")
    expected = "f1" if kind == "target_field" else "accuracy"
    if metric not in ("accuracy", "f1"):
        raise TaskSpecError(f"{path}: metric must be 'accuracy' or 'f1', got {metric!r}")
    if metric != expected:
        raise TaskSpecError(f"{path}: metric {metric!r} does not fit this task: classification (label_field, "
                            "candidates_field) is scored by accuracy, generation (target_field) by f1")
    files = {}
    for key in ("train_file", "eval_file"):
        if data.get(key):
            file = (path.parent / str(data[key])).resolve() if not Path(str(data[key])).is_absolute() \
                else Path(str(data[key]))
            if file.suffix.lower() not in DATA_SUFFIXES:
                raise TaskSpecError(f"{path}: {key} {file.name!r} must end in one of {DATA_SUFFIXES}")
            if not file.is_file():
                raise FileNotFoundError(f"{path}: {key} not found: {file}")
            files[key] = file
    words = {str(k): str(v) for k, v in data["label_words"].items()} if kind == "label_field" else None
    spec = TaskFileSpec(name=str(data.get("name") or path.stem), train_file=files["train_file"],
                        eval_file=files.get("eval_file"), template=data["template"],
                        label_field=data.get("label_field"), label_words=words,
                        candidates_field=data.get("candidates_field"), answer_field=data.get("answer_field"),
                        target_field=data.get("target_field"), metric=metric,
                        train_as_classification=data.get("train_as_classification"), source=path)
    placeholders(spec.template, str(path))
    return spec


def read_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) pairs of a JSONL or CSV/TSV file; an empty file is an error."""
    if path.suffix.lower() == ".jsonl":
        rows = list(iter_jsonl(path))
    else:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            rows = [(f"{path}:{i + 2}", dict(row)) for i, row in enumerate(reader)]
    if not rows:
        raise TaskSpecError(f"{path}: no rows (an empty file)")
    return rows


def _as_list(value: Any, where: str, field: str) -> list[str]:
    if isinstance(value, str):
        try:  # a CSV cell may hold a JSON list
            parsed = json.loads(value)
            value = parsed if isinstance(parsed, list) else value
        except json.JSONDecodeError:
            pass
    values = value if isinstance(value, list) else [value]
    values = [str(v) for v in values if v is not None and str(v) != ""]
    if not values:
        raise TaskSpecError(f"{where}: field {field!r} is empty")
    return values


def row_to_sample(spec: TaskFileSpec, row: dict, index: int, where: str) -> Sample:
    columns = ", ".join(sorted(row)) or "none"
    unknown = [f for f in placeholders(spec.template, str(spec.source)) if f not in row]
    if unknown:
        raise TaskSpecError(f"{where}: unknown placeholder(s) {['{' + f + '}' for f in unknown]} in the template: "
                            f"not a column of this row (columns: {columns})")
    missing = [f for f in spec.row_fields() if f not in row]
    if missing:
        raise TaskSpecError(f"{where}: missing field(s) {missing} named by the spec (columns: {columns})")
    if spec.is_generation:
        return Sample(id=index, data=row, candidates=None, correct=_as_list(row[spec.target_field], where,
                                                                             spec.target_field))
    if spec.label_words is not None:
        label = str(row[spec.label_field])
        if label not in spec.label_words:
            raise TaskSpecError(f"{where}: label {label!r} is not in label_words {sorted(spec.label_words)}")
        return Sample(id=index, data=row, candidates=list(spec.label_words.values()), correct=spec.label_words[label])
    candidates = _as_list(row[spec.candidates_field], where, spec.candidates_field)
    answer = str(row[spec.answer_field])
    if answer not in candidates:
        raise TaskSpecError(f"{where}: answer {answer!r} is not among the candidates {candidates}")
    return Sample(id=index, data=row, candidates=candidates, correct=answer)


def load_custom_task(path: str | Path) -> Task:
    """A Task built from a spec file: usable wherever a built-in task is (sampling, training, evaluation)."""
    spec = load_task_spec(path)
    files = {"train": spec.train_file, "valid": spec.eval_file}
    checked: dict[str, list[dict]] = {}

    def records(split: str) -> list[dict]:
        if split not in checked:
            rows = read_rows(files[split])
            # Rows are converted here, so a bad row fails with its file:line rather than mid-run.
            checked[split] = [{"__sample__": row_to_sample(spec, row, i, where)} for i, (where, row) in enumerate(rows)]
        return checked[split]

    records("train")  # fail now on an empty file, a missing field or an unknown label
    if spec.eval_file is not None:
        records("valid")
    as_classification = (spec.train_as_classification if spec.train_as_classification is not None
                         else not spec.is_generation)
    return Task(name=spec.name, template=SpecTemplate(spec.template, spec.is_generation),
                is_generation=spec.is_generation, metric_name=spec.metric,
                train_as_classification=as_classification, records=records,
                to_sample=lambda record, index: record["__sample__"], carve_eval=spec.eval_file is None,
                data_dir=spec.train_file.parent)
