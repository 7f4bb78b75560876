"""How much of a ZO update survives fp16 weights: realized / intended step norm, and the share of weights
that move, for SmolLM2-135M's real weights cast to fp16 (docs/gpu.md).

The update is theta <- theta - lr * g * k * z with z ~ N(0, 1); |g*k| is the size of the projected gradient
times the block's noise coefficient. It is applied with a single rounding (theta + u computed in float32, then
rounded to fp16), the most accurate fp16 update there is (upstream rounds several times).

    python scripts/fp16_update_rounding.py [--lr 1e-7]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=str(REPO / "models" / "SmolLM2-135M" / "model.safetensors"))
    parser.add_argument("--lr", type=float, default=1e-7)
    args = parser.parse_args()
    tensors = load_file(args.weights)
    gen = torch.Generator().manual_seed(0)
    print("| lr | abs(g*k) | tensors | realized / intended step norm | weights that move |")
    print("|---|---|---|---|---|")
    for gk in (1.0, 10.0, 100.0, 1000.0):
        for label, keep in (("matrices", lambda n, t: t.dim() >= 2), ("norm weights", lambda n, t: "norm" in n)):
            realized_sq = intended_sq = moved = total = 0.0
            for name, tensor in tensors.items():
                if not keep(name, tensor):
                    continue
                theta = tensor.to(torch.float16).float()
                step = -args.lr * gk * torch.randn(theta.shape, generator=gen)
                after = (theta + step).to(torch.float16).float()
                realized_sq += float(((after - theta) ** 2).sum())
                intended_sq += float((step ** 2).sum())
                moved += float((after != theta).sum())
                total += theta.numel()
            print(f"| {args.lr:g} | {gk:g} | {label} | {(realized_sq / intended_sq) ** 0.5:.3f} | {moved / total:.2%} |")


if __name__ == "__main__":
    main()
