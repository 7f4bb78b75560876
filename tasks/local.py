"""Local files -> canonical records, in the layouts of shared/data/README.md.

Each task folder `<data_dir>/<Task>/` is resolved once (missing folder or file -> FileNotFoundError naming what
was expected); files are parsed lazily. Every parse error names the file, the line (or JSON path) and the field.
"""
from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)

# split -> alternatives, tried in order; each alternative is a list of names (or globs) that must all exist.
LAYOUTS: dict[str, dict[str, list[list[str]]]] = {
    "SST2": {"train": [["train.tsv"]], "valid": [["dev.tsv"]]},
    "Copa": {"train": [["train.jsonl"]], "valid": [["val.jsonl"]]},
    "BoolQ": {"train": [["train.jsonl"], ["train_first1000_hf_google_boolq.jsonl"]], "valid": [["val.jsonl"]]},
    "MultiRC": {"train": [["train.jsonl"]], "valid": [["val.jsonl"]]},
    "CB": {"train": [["train.jsonl"]], "valid": [["val.jsonl"]]},
    "WIC": {"train": [["train.jsonl"]], "valid": [["val.jsonl"]]},
    "WSC": {"train": [["train.jsonl"]], "valid": [["val.jsonl"]]},
    # FewGLUE's two files both come from the official train split, so together they are the train pool.
    "ReCoRD": {"train": [["train.jsonl"], ["fewglue_train32.jsonl", "fewglue_dev32.jsonl"]],
               "valid": [["val.jsonl"]]},
    "RTE": {"train": [["train.jsonl"]], "valid": [["val.jsonl"]]},
    "SQuAD": {"train": [["train-v1.1.json"], ["train-v1.1*.json"]],
              "valid": [["dev-v1.1.json"], ["dev-v1.1*.json"]]},
    "DROP": {"train": [["drop_dataset_train.json"], ["drop_dataset_train*.json"]],
             "valid": [["drop_dataset_dev.json"], ["drop_dataset_dev*.json"]]},
}
# Tasks whose validation file may be absent: their eval pool is then carved from train.
CARVE_IF_NO_VALID = {"ReCoRD", "DROP"}


def _describe(alternatives: list[list[str]]) -> str:
    return " or ".join(" + ".join(names) for names in alternatives)


def _resolve(folder: Path, alternatives: list[list[str]]) -> list[Path] | None:
    for names in alternatives:
        paths = []
        for name in names:
            matches = sorted(folder.glob(name)) if "*" in name else [folder / name]
            if not matches or not matches[0].is_file():
                break
            paths.append(matches[0])
        else:
            return paths
    return None


@dataclass
class LocalSource:
    task: str
    folder: Path
    files: dict[str, list[Path]]
    carve: bool
    reader: Callable[[Path], list[dict]] = field(repr=False)

    def records(self, split: str) -> list[dict]:
        out: list[dict] = []
        for path in self.files[split]:
            out.extend(self.reader(path))
        return out


def local_source(task: str, data_dir: str | Path) -> LocalSource:
    """Resolve `<data_dir>/<task>/` now, so a wrong path fails at get_task() rather than mid-run."""
    layout = LAYOUTS[task]
    folder = Path(data_dir) / task
    expected = "; ".join(f"{split}: {_describe(alts)}" for split, alts in layout.items())
    if not folder.is_dir():
        raise FileNotFoundError(f"{task}: no data folder {folder} (expected files - {expected})")
    files: dict[str, list[Path]] = {}
    carve = False
    for split, alternatives in layout.items():
        paths = _resolve(folder, alternatives)
        if paths is None and split == "valid" and task in CARVE_IF_NO_VALID:
            carve = True
            continue
        if paths is None:
            raise FileNotFoundError(f"{task}: missing {split} file(s) in {folder}: expected {_describe(alternatives)}")
        files[split] = paths
    return LocalSource(task, folder, files, carve, READERS[task])


# ---------------------------------------------------------------------------------------------- helpers

def need(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ValueError(f"{where}: missing field {key!r}")
    return obj[key]


def to_label(value: Any, names: dict[str, int], n_classes: int, where: str) -> int:
    """A class index from an int, a bool or one of the label names."""
    if isinstance(value, str) and value in names:
        return names[value]
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int) and 0 <= value < n_classes:
        return value
    raise ValueError(f"{where}: invalid label {value!r} (expected one of {sorted(names) or list(range(n_classes))})")


def iter_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object")
            yield where, obj


def load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def _jsonl_reader(convert: Callable[[dict, str], list[dict]]) -> Callable[[Path], list[dict]]:
    def read(path: Path) -> list[dict]:
        out: list[dict] = []
        for where, obj in iter_jsonl(path):
            out.extend(convert(obj, where))
        return out
    return read


def _idx(obj: dict) -> Any:
    return obj.get("idx")


# ---------------------------------------------------------------------------------------------- tasks

def read_sst2(path: Path) -> list[dict]:
    """GLUE tsv with header `sentence<TAB>label`; no idx column, so idx = data row index."""
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None or "sentence" not in header or "label" not in header:
            raise ValueError(f"{path}:1: header must name the columns 'sentence' and 'label', got {header}")
        s_col, l_col = header.index("sentence"), header.index("label")
        for row_no, row in enumerate(reader):
            where = f"{path}:{row_no + 2}"
            if len(row) <= max(s_col, l_col):
                missing = "label" if len(row) > s_col else "sentence"
                raise ValueError(f"{where}: missing field {missing!r}")
            try:
                label = int(row[l_col])
            except ValueError:
                raise ValueError(f"{where}: invalid label {row[l_col]!r}") from None
            out.append({"sentence": row[s_col], "label": to_label(label, {}, 2, where), "idx": row_no})
    return out


def copa(obj: dict, where: str) -> list[dict]:
    rec = {k: need(obj, k, where) for k in ("premise", "choice1", "choice2", "question")}
    rec["label"] = to_label(need(obj, "label", where), {}, 2, where)
    rec["idx"] = _idx(obj)
    return [rec]


def boolq(obj: dict, where: str) -> list[dict]:
    """SuperGLUE layout (label, idx, passage "Title -- text") or HF google/boolq layout (answer, no title).

    The title prefix is split off so both layouts give upstream's google/boolq passage text.
    """
    question, passage = need(obj, "question", where), need(obj, "passage", where)
    if "label" in obj:
        raw, title = obj["label"], ""
        if " -- " in passage:
            title, passage = passage.split(" -- ", 1)
    else:
        raw, title = need(obj, "answer", where), ""
    return [{"question": question, "passage": passage, "title": title,
             "label": to_label(raw, {}, 2, where), "idx": _idx(obj)}]


def multirc(obj: dict, where: str) -> list[dict]:
    """One paragraph per line -> one record per (question, answer option), as HF super_glue flattens it."""
    passage = need(obj, "passage", where)
    text = need(passage, "text", f"{where} passage")
    out = []
    for qi, q in enumerate(need(passage, "questions", f"{where} passage")):
        q_where = f"{where} passage.questions[{qi}]"
        question = need(q, "question", q_where)
        for ai, a in enumerate(need(q, "answers", q_where)):
            a_where = f"{q_where}.answers[{ai}]"
            out.append({"paragraph": text, "question": question, "answer": need(a, "text", a_where),
                        "label": to_label(need(a, "label", a_where), {}, 2, a_where),
                        "idx": {"paragraph": obj.get("idx"), "question": q.get("idx"), "answer": a.get("idx")}})
    return out


def nli(names: dict[str, int]) -> Callable[[dict, str], list[dict]]:
    """CB (3 classes) and RTE (2 classes): premise / hypothesis / label name."""
    def convert(obj: dict, where: str) -> list[dict]:
        return [{"premise": need(obj, "premise", where), "hypothesis": need(obj, "hypothesis", where),
                 "label": to_label(need(obj, "label", where), names, len(names), where), "idx": _idx(obj)}]
    return convert


def wic(obj: dict, where: str) -> list[dict]:
    rec = {k: need(obj, k, where) for k in ("word", "sentence1", "sentence2")}
    rec.update({k: obj[k] for k in ("start1", "end1", "start2", "end2") if k in obj})
    rec["label"] = to_label(need(obj, "label", where), {}, 2, where)
    rec["idx"] = _idx(obj)
    return [rec]


def wsc(obj: dict, where: str) -> list[dict]:
    """SuperGLUE keeps the spans in a `target` dict; HF's wsc.fixed has them at top level."""
    flat = "target" not in obj and "span1_text" in obj
    spans = obj if flat else need(obj, "target", where)
    span_where = where if flat else f"{where} target"
    rec = {"text": need(obj, "text", where),
           "span1_text": need(spans, "span1_text", span_where), "span2_text": need(spans, "span2_text", span_where),
           "span1_index": spans.get("span1_index"), "span2_index": spans.get("span2_index"),
           "label": to_label(need(obj, "label", where), {}, 2, where), "idx": _idx(obj)}
    return [rec]


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def record(obj: dict, where: str) -> list[dict]:
    """One passage per line -> one record per query. Entity spans are inclusive [start, end]; entities keep
    passage order (unique), answers are HF's sorted set."""
    passage = need(obj, "passage", where)
    text = need(passage, "text", f"{where} passage")
    spans = need(passage, "entities", f"{where} passage")
    for i, e in enumerate(spans):
        for key in ("start", "end"):
            need(e, key, f"{where} passage.entities[{i}]")
    entities = _unique([text[e["start"]:e["end"] + 1] for e in sorted(spans, key=lambda e: e["start"])])
    out = []
    for qi, qa in enumerate(need(obj, "qas", where)):
        q_where = f"{where} qas[{qi}]"
        # HF's builder keeps sorted(set(answers)); answers[0] is the LM target, so the order matters.
        answers = sorted({need(a, "text", f"{q_where}.answers[{ai}]") for ai, a in enumerate(qa.get("answers", []))})
        out.append({"passage": text, "query": need(qa, "query", q_where), "entities": entities,
                    "answers": answers, "idx": qa.get("idx"), "passage_idx": obj.get("idx")})
    return out


def read_squad(path: Path) -> list[dict]:
    """SQuAD v1.1 json -> one record per question; `answers` = all answer texts, in file order."""
    out = []
    for ai, article in enumerate(need(load_json(path), "data", str(path))):
        a_where = f"{path}: data[{ai}]"
        title = need(article, "title", a_where)
        for pi, para in enumerate(need(article, "paragraphs", a_where)):
            p_where = f"{a_where}.paragraphs[{pi}]"
            context = need(para, "context", p_where)
            for qi, qa in enumerate(need(para, "qas", p_where)):
                q_where = f"{p_where}.qas[{qi}]"
                answers = [need(a, "text", f"{q_where}.answers[{k}]")
                           for k, a in enumerate(need(qa, "answers", q_where))]
                out.append({"id": qa.get("id"), "title": title, "context": context,
                            "question": need(qa, "question", q_where), "answers": answers})
    return out


def drop_answers(answer: dict, where: str) -> list[str]:
    """Spans if any, else the number, else the date as 'day month year' (blank parts left out)."""
    spans = need(answer, "spans", where)
    if spans:
        return list(spans)
    number = need(answer, "number", where)
    if str(number).strip():
        return [str(number).strip()]
    date = need(answer, "date", where)
    parts = [str(date.get(k, "")).strip() for k in ("day", "month", "year")]
    text = " ".join(p for p in parts if p)
    return [text] if text else []


def read_drop(path: Path) -> list[dict]:
    """Official DROP json (passage id -> passage, qa_pairs) -> one record per question; train uses `answer`."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping passage ids to passages")
    out = []
    for section_id, section in data.items():
        s_where = f"{path}: [{section_id!r}]"
        passage = need(section, "passage", s_where)
        for qi, qa in enumerate(need(section, "qa_pairs", s_where)):
            q_where = f"{s_where}.qa_pairs[{qi}]"
            out.append({"section_id": section_id, "query_id": qa.get("query_id"), "context": passage,
                        "question": need(qa, "question", q_where),
                        "answers": drop_answers(need(qa, "answer", q_where), f"{q_where}.answer")})
    return out


READERS: dict[str, Callable[[Path], list[dict]]] = {
    "SST2": read_sst2,
    "Copa": _jsonl_reader(copa),
    "BoolQ": _jsonl_reader(boolq),
    "MultiRC": _jsonl_reader(multirc),
    "CB": _jsonl_reader(nli({"entailment": 0, "contradiction": 1, "neutral": 2})),
    "WIC": _jsonl_reader(wic),
    "WSC": _jsonl_reader(wsc),
    "ReCoRD": _jsonl_reader(record),
    "RTE": _jsonl_reader(nli({"entailment": 0, "not_entailment": 1})),
    "SQuAD": read_squad,
    "DROP": read_drop,
}
