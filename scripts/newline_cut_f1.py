"""Zero-shot F1 of a model on a SQuAD/DROP slice, with answers cut at the first newline (this codebase's
default) and only stripped (upstream): one generation run, both post-processings.

python scripts/newline_cut_f1.py --data_dir ../shared/data --task SQuAD --num_eval 50
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import tasks  # noqa: E402
from tasks.generation import GenerationOptions, answer_samples, finish_answer  # noqa: E402
from tasks.metrics import squad_f1  # noqa: E402
from zo.models import load_model, resolve_model_path  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--task", default="SQuAD")
    parser.add_argument("--num_eval", type=int, default=50)
    parser.add_argument("--seed", type=int, default=43, help="test-set sampling seed (upstream SEED)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    task = tasks.get_task(args.task, args.data_dir)
    samples = tasks.sample_splits(task, 0, 0, args.num_eval, args.seed).test
    model, tokenizer = load_model(resolve_model_path(args.model))
    start = time.perf_counter()
    raw = answer_samples(model, tokenizer, task, samples, args.batch_size, options=GenerationOptions())
    golds = [s.correct for s in samples]
    result = {"task": task.name, "model": resolve_model_path(args.model), "num_examples": len(samples),
              "seed": args.seed, "seconds": round(time.perf_counter() - start, 1)}
    for name, cut in (("f1_cut_at_newline", True), ("f1_strip_only_upstream", False)):
        result[name] = sum(squad_f1(finish_answer(r, cut), g) for r, g in zip(raw, golds)) / len(samples)
    result["answers_with_a_newline"] = sum("\n" in r.strip() for r in raw)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
