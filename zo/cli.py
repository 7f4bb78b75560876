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


# Flags that upstream's scripts pass to HF Trainer; they have no meaning here and are accepted silently.
IGNORED_UPSTREAM_FLAGS = {
    "--trainer": 1, "--evaluation_strategy": 1, "--eval_strategy": 1, "--save_strategy": 1,
    "--save_total_limit": 1, "--logging_steps": 1, "--load_best_model_at_end": 0, "--save_steps": 1,
    "--cache_dir": 1, "--overwrite_output_dir": 0, "--tag": 1, "--result_file": 1, "--save_model": 0,
}


def strip_ignored(argv: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        flag = argv[i].split("=", 1)[0]
        if flag in IGNORED_UPSTREAM_FLAGS:
            takes = IGNORED_UPSTREAM_FLAGS[flag]
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
    """Run an entry point: one clear line for bad input instead of a traceback; an interrupted run
    (SIGINT / SIGTERM, checkpoint written) exits with 128 + the signal number."""
    try:
        result = main()
    except (ValueError, FileNotFoundError, FloatingPointError, ImportError) as err:
        logging.getLogger("zo").error("%s: %s", type(err).__name__, err)
        sys.exit(2)
    if isinstance(result, dict) and result.get("status") == "interrupted":
        sys.exit(128 + int(result.get("signal") or 2))
