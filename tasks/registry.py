"""Task names -> Task objects (template, metric, record conversion and data source)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import records, templates
from .custom import is_task_file, load_custom_task
from .base import Sample, Task
from .hub import HubSource
from .local import local_source

TASK_NAMES: tuple[str, ...] = ("SST2", "Copa", "BoolQ", "MultiRC", "CB", "WIC", "WSC", "ReCoRD", "RTE", "SQuAD",
                               "DROP")


@dataclass(frozen=True)
class TaskSpec:
    template: type[templates.Template]
    is_generation: bool = False
    # zo_fine_tuner.sh passes --train_as_classification except for Copa, ReCoRD, DROP and SQuAD.
    train_as_classification: bool = True

    @property
    def metric_name(self) -> str:
        return "f1" if self.is_generation else "accuracy"


SPECS: dict[str, TaskSpec] = {
    "SST2": TaskSpec(templates.SST2Template),
    "Copa": TaskSpec(templates.CopaTemplate, train_as_classification=False),
    "BoolQ": TaskSpec(templates.BoolQTemplate),
    "MultiRC": TaskSpec(templates.MultiRCTemplate),
    "CB": TaskSpec(templates.CBTemplate),
    "WIC": TaskSpec(templates.WICTemplate),
    "WSC": TaskSpec(templates.WSCTemplate),
    "ReCoRD": TaskSpec(templates.ReCoRDTemplate, train_as_classification=False),
    "RTE": TaskSpec(templates.RTETemplate),
    "SQuAD": TaskSpec(templates.SQuADTemplate, is_generation=True, train_as_classification=False),
    "DROP": TaskSpec(templates.DROPTemplate, is_generation=True, train_as_classification=False),
}


def canonical_name(name: str) -> str:
    """Exact names first; otherwise a case-insensitive match ('sst2' -> 'SST2')."""
    if name in SPECS:
        return name
    folded = {n.lower(): n for n in TASK_NAMES}
    if isinstance(name, str) and name.lower() in folded:
        return folded[name.lower()]
    raise ValueError(f"unknown task {name!r}; valid names: {', '.join(TASK_NAMES)}, or a task spec file "
                     "(.yaml/.yml/.json, docs/adding_a_task.md)")


def is_generation_task(name: str) -> bool:
    """Whether the built-in task `name` (any case) is answered by generation and scored by F1 (SQuAD, DROP)."""
    return SPECS[canonical_name(name)].is_generation


def _converter(name: str, template: templates.Template) -> Callable[[dict, int], Sample | None]:
    if name == "Copa":
        return records.copa_sample
    if name == "BoolQ":
        return records.boolq_sample
    if name == "ReCoRD":
        return records.record_sample
    if name in ("SQuAD", "DROP"):
        return records.qa_sample
    return records.labelled_sample(template)


def get_task(name: str, data_dir: str | Path | None = None) -> Task:
    """The task `name`, read from `<data_dir>/<name>/` when data_dir is given, else from the HF hub.

    Local folders are checked now (FileNotFoundError naming the expected files); data is read on first use.
    A path to a task spec (.yaml / .yml / .json, see tasks/custom.py) gives a task from a data file instead;
    its files are named by the spec, so data_dir is not used.
    """
    if is_task_file(name):
        return load_custom_task(name)
    name = canonical_name(name)
    spec = SPECS[name]
    template = spec.template()
    source = local_source(name, data_dir) if data_dir is not None else HubSource(name)
    return Task(name=name, template=template, is_generation=spec.is_generation, metric_name=spec.metric_name,
                train_as_classification=spec.train_as_classification, records=source.records,
                to_sample=_converter(name, template), carve_eval=source.carve,
                data_dir=Path(data_dir) if data_dir is not None else None)
