"""Read the authors' PertNN banks (`learned_finetuner/*.pth`) safely and convert them to safetensors.

The upstream files are pickles of {parameter name: nn.Sequential(Linear(5,64), Tanh(), Linear(64,1))}
(docs/upstream_banks.md). Unpickling can run arbitrary code, so they are read with torch's restricted
`weights_only` unpickler and an allow-list of just the three module classes they contain; everything
else (os.system, exec, any other class) is refused before it can be called.

    python -m zo.convert_bank learned_finetuner/llama1B_finetuner.pth llama1B_bank.safetensors
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zo.pertnn import HIDDEN, NUM_INPUTS, PertNNBank

logger = logging.getLogger(__name__)

# The only classes the authors' pickles need beyond torch's default weights_only set. OrderedDict,
# set and torch._utils._rebuild_parameter are already allowed by torch itself (verified on torch 2.x:
# loading works with exactly these three), so they are not added here.
PERTNN_ALLOWED_GLOBALS: tuple[type, ...] = (nn.Sequential, nn.Linear, nn.Tanh)

_LAYER = re.compile(r"\.layers\.(\d+)\.")

# Block-name layouts of the models the shipped banks were evidently trained on (docs/upstream_banks.md). Names
# alone cannot tell e.g. Llama-2-7B from Llama-3.1-8B, so these are only ever reported as "e.g.".
_KNOWN_LAYOUTS = {
    ("llama", 16, False): "Llama-3.2-1B",
    ("llama", 32, True): "Llama-3.1-8B",
    ("qwen2", 48, True): "Qwen2.5-14B",
    ("opt", 48, False): "OPT-30B",
}


class UnsafeBankError(ValueError):
    """The file holds pickled objects outside the PertNN allow-list; it was refused, nothing ran."""


def read_upstream_bank(path: str | Path) -> PertNNBank:
    """Load an authors' `.pth` PertNN bank without executing pickle code; keeps the PertNN dtype."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"upstream PertNN bank not found: {path}")
    raw = _restricted_load(path)
    states = _validate(raw, path)
    meta = _metadata(path, list(states))
    bank = PertNNBank.from_block_state_dicts(states, meta)
    logger.info("read upstream PertNN bank %s: %d blocks, %s, %s (archive %s)", path.name, len(bank),
                str(bank.w1.dtype).replace("torch.", ""), meta["model_family"], meta["archive_root"] or "-")
    return bank


def _restricted_load(path: Path) -> Any:
    with open(path, "rb") as handle:
        head = handle.read(2)
    # torch.save writes a zip archive, or (legacy) a pickle of protocol >= 2: anything else is not a torch file,
    # and the unpickler's error about it would read as a refused object
    if not zipfile.is_zipfile(path) and head[:1] != b"\x80":
        hint = "; a .safetensors bank needs no conversion: load it as it is" if path.suffix == ".safetensors" else ""
        raise ValueError(f"{path} is not a torch file (torch.save writes a zip archive or a pickle; its first "
                         f"bytes are {head!r}){hint}")
    try:
        # map_location: the authors' files tag their storages cuda:0..7; this also works without CUDA.
        with torch.serialization.safe_globals(list(PERTNN_ALLOWED_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # Keep torch's one informative line (which global was blocked), not its advice to retry with
        # weights_only=False, which is exactly what must not be done with an untrusted file.
        raise UnsafeBankError(
            f"{path} contains objects (or pickle opcodes) outside the PertNN allow-list "
            f"({', '.join(c.__name__ for c in PERTNN_ALLOWED_GLOBALS)}, torch tensors, dict/set/OrderedDict); "
            f"it was refused and nothing from it was executed. "
            f"torch's restricted unpickler: {_torch_detail(err)}") from err
    except (RuntimeError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a readable torch archive: {err}") from err


def _torch_detail(err: Exception) -> str:
    """The informative part of torch's weights_only error (the blocked global or opcode)."""
    text = str(err)
    for line in text.splitlines():
        if "GLOBAL" in line:  # without torch's advice to allowlist it: the point is not to
            return line.split(" was not an allowed global")[0].strip() + " (not allowed)"
    tail = text.split("WeightsUnpickler error:", 1)[-1]
    return next((line.strip() for line in tail.splitlines() if line.strip()), text.strip())


def _validate(raw: Any, path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Strictly check {str: Sequential(Linear(5,64), Tanh(), Linear(64,1))}; return per-block tensors."""
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{path}: expected a non-empty dict of parameter name -> PertNN, got {type(raw).__name__}")
    states: dict[str, dict[str, torch.Tensor]] = {}
    dtype: torch.dtype | None = None
    for name, module in raw.items():
        if not isinstance(name, str):
            raise ValueError(f"{path}: bank key {name!r} is not a parameter name (str)")
        state = _block_tensors(name, module, path)
        if dtype is None:
            dtype = state["0.weight"].dtype
        for key, tensor in state.items():
            # from_block_state_dicts would silently cast a stray dtype; a mixed bank is a broken file.
            if tensor.dtype != dtype:
                raise ValueError(f"{path}: block {name!r} {key} is {tensor.dtype}, the bank is {dtype}")
        states[name] = state
    return states


def _block_tensors(name: str, module: Any, path: Path) -> dict[str, torch.Tensor]:
    expected = f"nn.Sequential(Linear({NUM_INPUTS},{HIDDEN}), Tanh(), Linear({HIDDEN},1))"

    def bad(why: str) -> ValueError:
        return ValueError(f"{path}: block {name!r} is not a PertNN {expected}: {why}")

    # Exact types and the raw _modules/_parameters dicts: subclasses or injected attributes are refused.
    if type(module) is not nn.Sequential:
        raise bad(f"got {type(module).__name__}")
    children = getattr(module, "_modules", None)
    if not isinstance(children, dict) or list(children) != ["0", "1", "2"]:
        raise bad(f"children {list(children) if isinstance(children, dict) else children!r}")
    kinds = [type(children[k]) for k in ("0", "1", "2")]
    if kinds != [nn.Linear, nn.Tanh, nn.Linear]:
        raise bad("layers are " + ", ".join(k.__name__ for k in kinds))
    out: dict[str, torch.Tensor] = {}
    for key, shape_w, shape_b in (("0", (HIDDEN, NUM_INPUTS), (HIDDEN,)), ("2", (1, HIDDEN), (1,))):
        params = getattr(children[key], "_parameters", None)
        if not isinstance(params, dict) or set(params) != {"weight", "bias"}:
            raise bad(f"layer {key} parameters {sorted(params) if isinstance(params, dict) else params!r}")
        for pname, shape in (("weight", shape_w), ("bias", shape_b)):
            tensor = params[pname]
            if not isinstance(tensor, torch.Tensor):
                raise bad(f"layer {key} {pname} is missing (needs bias=True)")
            if tuple(tensor.shape) != shape or not tensor.is_floating_point():
                raise bad(f"layer {key} {pname} is {tensor.dtype} {tuple(tensor.shape)}, expected {shape}")
            out[f"{key}.{pname}"] = tensor.detach().to("cpu")
    return out


def describe_layout(names: list[str]) -> tuple[str, str]:
    """(model_family, base_model) inferred from block names only, e.g. 'llama, 16 layers, tied lm_head'."""
    if any(n.startswith("model.decoder.") for n in names):
        family = "opt"
    elif any(n.endswith("q_proj.bias") for n in names):
        family = "qwen2"
    else:
        family = "llama"
    layers = 1 + max((int(m.group(1)) for n in names if (m := _LAYER.search(n))), default=-1)
    has_head = "lm_head.weight" in names
    head = "untied lm_head" if has_head else "tied lm_head"
    known = _KNOWN_LAYOUTS.get((family, layers, has_head))
    base = f"{family}-family {layers}-layer model, {head}" + (
        f" (block layout of e.g. {known}; inferred from block names, not recorded in the file)" if known
        else " (inferred from block names)")
    return f"{family}, {layers} layers, {head}", base


def archive_root(path: Path) -> str:
    """The stem torch.save recorded inside the zip (the authors' run name), or '' for non-zip files."""
    if not zipfile.is_zipfile(path):
        return ""
    with zipfile.ZipFile(path) as archive:
        for member in archive.namelist():
            if member.endswith("/data.pkl"):
                return member[: -len("/data.pkl")]
    return ""


def _metadata(path: Path, names: list[str]) -> dict[str, str]:
    family, base = describe_layout(names)
    return {
        "converted_from": "upstream-pth",
        "source_file": path.name,
        "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "archive_root": archive_root(path),
        "block_count": str(len(names)),
        "model_family": family,
        "base_model": base,
    }


def convert(src: str | Path, dst: str | Path) -> PertNNBank:
    """Read an authors' bank and save it in this project's safetensors format."""
    bank = read_upstream_bank(src)
    bank.save(dst)
    return bank


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zo.convert_bank",
                                     description="Convert an authors' PertNN bank (.pth) to safetensors, safely.")
    parser.add_argument("input", type=Path, help="upstream bank, e.g. learned_finetuner/llama1B_finetuner.pth")
    parser.add_argument("output", type=Path, help="output .safetensors file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.input.is_file():
        parser.error(f"input bank not found: {args.input}")
    if not args.output.parent.is_dir():
        parser.error(f"output folder does not exist: {args.output.parent}")
    try:
        bank = convert(args.input, args.output)
    except ValueError as err:  # UnsafeBankError included: its message says what was refused and why
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"converted {len(bank)} blocks, dtype {str(bank.w1.dtype).replace('torch.', '')}, "
          f"family {bank.metadata['model_family']} -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
