"""Data layer of MeZO's `large_models` tasks. Knows nothing about the ZO optimizer or the command line.

registry.py  names -> Task (template, metric, source)      base.py      Sample, Task, eval-pool carving
local.py     local files -> canonical records             hub.py       HF parquet datasets -> canonical records
records.py   canonical record -> Sample (both sources)     templates.py prompt strings (MeZO's)
sampling.py  train / dev / test selection (MeZO's)         encoding.py  token ids, truncation, collation
batches.py   seeded training batch iterator                objective.py option loss (logits of last positions)
metrics.py   accuracy, SQuAD F1                            evaluate.py  candidate scoring / generation + F1
generation.py greedy answers                               nondiff.py   -F1 objective for ZO
"""
from .base import Sample, Task, carve_eval_pool
from .batches import TrainBatches, make_train_batches, split_by_length
from .encoding import (OPTION_SCORINGS, EncodedExample, EncodedOption, collate_examples, collate_options,
                       encode_candidates, encode_train_example, prepends_special_token)
from .evaluate import evaluate
from .generation import GenerationOptions, evaluate_generation, generate_answers, greedy_answers
from .metrics import accuracy, mean_f1, normalize_answer, squad_f1
from .nondiff import negative_f1_objective
from .objective import LengthGroups, batch_loss, example_losses, loss_weight, option_scores
from .custom import TaskSpecError, is_task_file, load_custom_task
from .registry import TASK_NAMES, get_task, is_generation_task
from .sampling import Splits, sample_splits

__all__ = [
    "TASK_NAMES", "get_task", "is_generation_task", "TaskSpecError", "is_task_file", "load_custom_task", "Sample",
    "Task", "carve_eval_pool", "Splits", "sample_splits",
    "EncodedOption", "EncodedExample", "encode_candidates", "encode_train_example", "collate_options",
    "collate_examples", "OPTION_SCORINGS",
    "prepends_special_token", "TrainBatches", "make_train_batches", "split_by_length", "LengthGroups", "batch_loss", "example_losses", "loss_weight", "option_scores",
    "accuracy", "squad_f1", "mean_f1", "normalize_answer", "evaluate", "greedy_answers", "GenerationOptions", "generate_answers", "evaluate_generation", "negative_f1_objective",
]
