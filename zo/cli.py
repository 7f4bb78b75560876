"""Command-line helpers shared by the two run_*.py entry points (upstream-style argument syntax)."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing


def str2bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "y"):
        return True
    if lowered in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def none_or(kind):
    def parse(text: str):
        return None if text.strip().lower() in ("", "none", "n", "null") else kind(text)
    return parse


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, help_text: dict[str, str] | None = None) -> None:
    """One --field per dataclass field; booleans accept `--flag`, `--flag True` and `--flag False`."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        help_ = (help_text or {}).get(field.name, "") + f" (default: {field.default})"
        args = typing.get_args(kind)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), kind) if args else kind
        if typing.get_origin(kind) is list:
            parser.add_argument(f"--{field.name}", nargs="+", type=typing.get_args(kind)[0],
                                default=field.default_factory(), help=help_.replace(str(field.default), "list"))
        elif base is bool:
            parser.add_argument(f"--{field.name}", type=str2bool, nargs="?", const=True,
                                default=field.default, help=help_)
        else:
            parser.add_argument(f"--{field.name}", type=none_or(base) if optional else base,
                                default=field.default, help=help_)


# Upstream flags that cannot change a result here (HF Trainer bookkeeping, logging, caching, device placement):
# accepted and ignored; listed in docs/differences.md. `--save_steps` is a real option of fine-tuning (the
# evaluation period, as upstream), so run_zo_fine_tuner.py removes it from this table.
IGNORED_UPSTREAM_FLAGS = {
    "--trainer": 1, "--evaluation_strategy": 1, "--eval_strategy": 1, "--save_strategy": 1,
    "--save_total_limit": 1, "--logging_steps": 1, "--load_best_model_at_end": 0, "--save_steps": 1,
    "--cache_dir": 1, "--overwrite_output_dir": 0, "--tag": 1, "--save_model": 0, "--no_auto_device": 0,
    "--verbose": 0, "--save_on_interrupt": 0, "--logging_dir": 1, "--dataloader_num_workers": 1,
    "--disable_tqdm": 0,
}

# Upstream flags this codebase does not implement: refused by name, with what to use instead. A value in
# `allowed` is upstream's default (no effect) and is accepted; any other value is refused.
REFUSED_UPSTREAM_FLAGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "--lora": ("LoRA is not implemented (upstream's lora.py is missing too); full fine-tuning only", ("False",)),
    "--lora_alpha": ("LoRA is not implemented; full fine-tuning only", ()),
    "--lora_r": ("LoRA is not implemented; full fine-tuning only", ()),
    "--prefix_tuning": ("prefix tuning is not implemented (upstream's prefix.py is missing); full fine-tuning only",
                        ("False",)),
    "--num_prefix": ("prefix tuning is not implemented; full fine-tuning only", ()),
    "--no_reparam": ("prefix tuning is not implemented; full fine-tuning only", ()),
    "--prefix_init_by_real_act": ("prefix tuning is not implemented; full fine-tuning only", ()),
    "--head_tuning": ("head tuning is not implemented (upstream's ht_opt is missing); full fine-tuning only",
                      ("False",)),
    "--linear_probing": ("linear probing is not implemented; use --train_mode mezo or zo_fine_tuner", ("False",)),
    "--lp_early_stopping": ("linear probing is not implemented", ("False",)),
    "--load_int8": ("int8 loading is not implemented; use --load_float16 True or --load_bfloat16 True", ("False",)),
    "--untie_emb": ("untying the embedding is not implemented (it changes the block list and the bank)",
                    ("False",)),
    "--num_train_sets": ("several train sets in one run are not implemented yet; run once per --train_set_seed",
                         ("None",)),
    "--sfc": ("sfc calibration is not implemented yet; evaluation scores by mean option log-prob", ("False",)),
    "--icl_sfc": ("icl_sfc calibration is not implemented yet", ("False",)),
    "--only_train_option": ("only the option tokens are trained here (upstream's default True); loss on the whole "
                            "sequence is not implemented yet", ("True",)),
    "--gradient_accumulation_steps": ("gradient accumulation is not implemented; use a larger "
                                      "--per_device_train_batch_size (upstream updated once per micro-batch)", ("1",)),
    "--result_file": ("metrics go to <output_dir>/metrics.json; use --output_dir", ()),
    "--no_eval": ("evaluation always runs; use --num_eval 0 and --num_dev 0 to skip it", ("False",)),
    "--fp16": ("HF mixed precision is not used; load the model in half precision with --load_float16 True",
               ("False",)),
    "--bf16": ("HF mixed precision is not used; load the model in bfloat16 with --load_bfloat16 True", ("False",)),
    "--per_device_eval_batch_size": ("use --eval_batch_size (sequences per forward pass; upstream scores one at a "
                                     "time)", ()),
}


class UpstreamFlagError(ValueError):
    """An upstream flag this codebase does not implement; the message says what to use instead."""


def _flag_value(argv: list[str], i: int) -> tuple[str | None, int]:
    """(value, index after it) of the flag at argv[i]: `--f=v`, `--f v`, or a bare `--f` (value None)."""
    if "=" in argv[i]:
        return argv[i].split("=", 1)[1], i + 1
    if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
        return argv[i + 1], i + 2
    return None, i + 1


def strip_ignored(argv: list[str], ignored: dict[str, int] | None = None,
                  refused: dict[str, tuple[str, tuple[str, ...]]] | None = None) -> list[str]:
    """argv without the ignored upstream flags; a refused upstream flag raises UpstreamFlagError."""
    ignored = IGNORED_UPSTREAM_FLAGS if ignored is None else ignored
    refused = REFUSED_UPSTREAM_FLAGS if refused is None else refused
    out, i = [], 0
    while i < len(argv):
        flag = argv[i].split("=", 1)[0]
        if flag in refused:
            message, allowed = refused[flag]
            value, after = _flag_value(argv, i)
            shown = "True" if value is None else value  # a bare boolean flag means True
            if shown.lower() in {a.lower() for a in allowed}:
                i = after
                continue
            raise UpstreamFlagError(f"{flag} {shown}: {message}")
        if flag in ignored:
            takes = ignored[flag]
            i += 1
            if "=" not in argv[i - 1] and takes and i < len(argv) and not argv[i].startswith("--"):
                i += 1
            elif not takes and i < len(argv) and argv[i] in ("True", "False", "true", "false"):
                i += 1
            continue
        out.append(argv[i])
        i += 1
    return out


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def run_main(main) -> None:
    """Run an entry point: one clear line for bad input instead of a traceback."""
    try:
        main()
    except (ValueError, FileNotFoundError, FloatingPointError, ImportError) as err:  # UpstreamFlagError too
        logging.getLogger("zo").error("%s: %s", type(err).__name__, err)
        sys.exit(2)
