"""Command-line helpers shared by the two run_*.py entry points (upstream-style argument syntax)."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import io
import logging
import re
import sys
import textwrap
import tokenize
import typing
from pathlib import Path

from zo.run.status import INTERRUPTED


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


def field_comments(cls) -> dict[str, str]:
    """Each dataclass field's comment in the source (the comment lines just above it, then the one after it on
    its line), for `--help`: the config's own notes are its help text."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # no source (a frozen build): no help from comments
            continue
        comments = {tok.start[0]: tok.string.lstrip("#").strip()
                    for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
        names, above = {f.name for f in dataclasses.fields(klass)}, []
        for number, line in enumerate(source.splitlines(), 1):
            stripped = line.strip()
            if stripped.startswith("#") and number in comments:  # (a docstring line may start with '#' too)
                above.append(comments[number])
                continue
            match = re.match(r"(\w+)\s*:", stripped)
            if match and match.group(1) in names and line.startswith("    ") and not line.startswith("     "):
                text = " ".join(above + ([comments[number]] if number in comments else []))
                if text:
                    found[match.group(1)] = text
            above = []
    return found


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, help_text: dict[str, str] | None = None) -> None:
    """One --field per dataclass field; booleans accept `--flag`, `--flag True` and `--flag False`. Help: the
    field's entry in `help_text`, else its comment in the source."""
    hints = typing.get_type_hints(cls)
    comments = field_comments(cls)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        help_ = ((help_text or {}).get(field.name) or comments.get(field.name, "").replace("%", "%%")) + \
            f" (default: {shown})"
        args = typing.get_args(kind)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), kind) if args else kind
        if typing.get_origin(kind) is list:
            parser.add_argument(f"--{field.name}", nargs="+", type=typing.get_args(kind)[0],
                                default=default, help=help_)
        elif base is bool:
            parser.add_argument(f"--{field.name}", type=str2bool, nargs="?", const=True,
                                default=field.default, help=help_)
        else:
            parser.add_argument(f"--{field.name}", type=none_or(base) if optional else base,
                                default=field.default, help=help_)


def _check_value(key: str, value, kind, where: str):
    """`value` as the field type `kind` (int, float, bool, str, list[str], optional); ValueError naming the key."""
    args = typing.get_args(kind)
    if value is None and type(None) in args:
        return None
    base = next((a for a in args if a is not type(None)), kind) if args and typing.get_origin(kind) is not list else kind
    if typing.get_origin(base) is list:
        item = typing.get_args(base)[0]
        if isinstance(value, str):
            value = value.split()
        if isinstance(value, list) and all(isinstance(v, item) for v in value):
            return value
    elif base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif base is str:
        if isinstance(value, str):
            return value
    name = getattr(base, "__name__", str(base))
    raise ValueError(f"{where}: {key} must be {name}{' or null' if type(None) in args else ''}, got {value!r}")


def load_yaml_config(path: str | Path, cls) -> dict:
    """The settings of a YAML file for dataclass `cls`; one ValueError naming the key for an unknown key or a
    wrong type."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of setting: value, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        if key not in hints:
            close = difflib.get_close_matches(str(key), list(hints), n=1)
            raise ValueError(f"{path}: unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        values[key] = _check_value(key, value, hints[key], str(path))
    return values


def parse_with_config(parser: argparse.ArgumentParser, cls, argv: list[str]) -> dict:
    """Parse `argv` on top of an optional `--config FILE.yaml`: the file sets defaults, flags override them."""
    parser.add_argument("--config", default=None, help="YAML file of settings (configs/); flags override it")
    known, _ = parser.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**load_yaml_config(known.config, cls))
    args = vars(parser.parse_args(argv))
    args.pop("config")
    return args


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
    "--result_file": ("metrics go to <output_dir>/metrics.json; use --output_dir", ()),
    "--no_eval": ("evaluation always runs; use --num_eval 0 and --num_dev 0 to skip it", ("False",)),
    "--fp16": ("HF mixed precision is not used; load the model in half precision with --load_float16 True",
               ("False",)),
    "--bf16": ("HF mixed precision is not used; load the model in bfloat16 with --load_bfloat16 True", ("False",)),
    "--per_device_eval_batch_size": ("use --eval_batch_size (sequences per forward pass; upstream scores one at a "
                                     "time)", ()),
}


# Refused by run_l2l.py only (fine-tuning implements them).
L2L_REFUSED_FLAGS: dict[str, tuple[str, tuple[str, ...]]] = {
    "--num_train_sets": ("L2L meta-trains one bank on one train set (upstream's run_l2l.py stops in the debugger "
                         "after the first); run once per --train_set_seed with its own --save_mlp_path",
                         ("None",)),
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
    """Run an entry point: one clear line for bad input instead of a traceback; an interrupted run
    (SIGINT / SIGTERM, checkpoint written) exits with 128 + the signal number."""
    try:
        result = main()
    # ValueError covers UpstreamFlagError and RunFolderError
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError, ImportError) as err:
        logging.getLogger("zo").error("%s: %s", type(err).__name__, err)
        sys.exit(2)
    if isinstance(result, dict) and result.get("status") == INTERRUPTED:
        sys.exit(128 + int(result.get("signal") or 2))
