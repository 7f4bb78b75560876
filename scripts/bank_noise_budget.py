"""Where a PertNN bank puts the noise on a model: k_b = c * sigma_b per block, and each block's share of
the actual noise trace sum_b numel_b * k_b^2 (MeZO: k_b = 1, trace = number of parameters).

sigma is iterated a few steps from its initial state on the model's own block statistics with a fixed
loss history, as at the start of a fine-tuning run. A layer-wise bank (granularity=layer) gives every
block its layer group's sigma; the table then also lists the share of each layer group.

    python scripts/bank_noise_budget.py learned_finetuner/smollm2-135m_copa.safetensors [more banks] \
        [--model M --batch_size 16 --loss 0.8 --top 8]
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("banks", nargs="+")
    parser.add_argument("--model", default=None, help="model folder (default: the embedded SmolLM2-135M)")
    parser.add_argument("--batch_size", type=int, default=16, help="enters the effective dimension of embeddings")
    parser.add_argument("--loss", type=float, default=0.8, help="L+ = L- fed as the previous step's losses")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()

    import torch

    from zo.blocks import block_type, parameter_blocks
    from zo.models import load_model, resolve_model_path
    from zo.noise import NoiseSource
    from zo.pertnn import load_bank
    from zo.sigma import learned_sigma_for
    from zo.stats import block_stats

    model, _ = load_model(resolve_model_path(args.model))
    blocks = parameter_blocks(model)
    stats = block_stats(blocks, NoiseSource())
    numel = torch.tensor([b.param.numel() for b in blocks], dtype=torch.float64)
    for path in args.banks:
        policy = learned_sigma_for(load_bank(path), blocks, args.batch_size)
        for _ in range(args.steps):
            k = torch.tensor(policy.coefficients(stats), dtype=torch.float64)
            policy.observe(args.loss, args.loss)
        trace = numel * k ** 2
        print(f"\n{path} ({policy.granularity}-wise): c = {policy.last_c:.3f}, "
              f"noise trace / MeZO's = {float(trace.sum() / numel.sum()):.3f}")
        print("| block | k = c*sigma | elements | share of the trace |\n|---|---|---|---|")
        for i in k.argsort(descending=True)[:args.top].tolist():
            print(f"| {blocks[i].name} | {float(k[i]):.3f} | {int(numel[i])} | {float(trace[i] / trace.sum()):.4f} |")
        by_type: dict[str, float] = defaultdict(float)
        for block, share in zip(blocks, (trace / trace.sum()).tolist()):
            by_type[block_type(block.name)] += share
        print("share by block type: " + ", ".join(f"{t} {s:.3f}" for t, s in sorted(by_type.items(),
                                                                                 key=lambda kv: -kv[1])))
        if policy.granularity == "layer":
            shares = (trace / trace.sum()).tolist()
            by_group = {name: sum(shares[i] for i in members)
                        for name, members in zip(policy.grouping.names, policy.grouping.members)}
            print("share by layer group: " + ", ".join(f"{g} {s:.3f}" for g, s in sorted(
                by_group.items(), key=lambda kv: -kv[1])[:args.top]))


if __name__ == "__main__":
    main()
