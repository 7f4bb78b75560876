"""Where a PertNN bank puts the noise on a model: k_b = c * sigma_b per block, and each block's share of
the actual noise trace sum_b numel_b * k_b^2 (MeZO: k_b = 1, trace = number of parameters).

sigma is iterated a few steps from its initial state on the model's own block statistics with a fixed
loss history, as at the start of a fine-tuning run. A layer-wise bank (granularity=layer) gives every
block its layer group's sigma; the table then also lists the share of each layer group. A bank meta-trained
without the normalization c (its metadata says need_normalization false: Table 2's base and reset banks) is
measured without it, as it is used: k_b = sigma_b, and the trace is then not MeZO's.

    python scripts/bank_noise_budget.py learned_finetuner/smollm2-135m_copa.safetensors [more banks] \
        [--model M --batch_size 16 --loss 0.8 --top 8] [--write [--if_missing]]

--write also records the trace ratio and the embedding / head's share beside each bank (<bank>.noise.json): the
campaign sizes the LR grid of a bank used without normalization from it (scripts/campaign/noise_grid.py), and
the report shows it next to the ablation tables. --if_missing skips a bank whose record is already valid for its
bytes (scripts/train_ablation_banks.sh runs it after every bank).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from campaign.noise_grid import noise_record  # noqa: E402

# the input embedding (tied: the output head too) and an untied head; not OPT's embed_positions
EMBEDDING = re.compile(r"embed_tokens|lm_head")


def record_is_current(bank: Path, normalize: bool) -> bool:
    """A record of these bank bytes, measured with the normalization the bank is used with, with a finite
    embedding share: --if_missing keeps it."""
    record = noise_record(bank) or {}
    share = record.get("embedding_share")
    return (record.get("need_normalization") is normalize and isinstance(share, float)
            and math.isfinite(share))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("banks", nargs="+")
    parser.add_argument("--model", default=None, help="model folder (default: the embedded SmolLM2-135M)")
    parser.add_argument("--batch_size", type=int, default=16, help="enters the effective dimension of embeddings")
    parser.add_argument("--loss", type=float, default=0.8, help="L+ = L- fed as the previous step's losses")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=8)
    parser.add_argument("--need_normalization", choices=("auto", "True", "False"), default="auto",
                        help="auto: as the bank's metadata says (absent: True, as every upstream run)")
    parser.add_argument("--write", action="store_true", help="record the trace ratio in <bank>.noise.json")
    parser.add_argument("--if_missing", action="store_true",
                        help="with --write: skip a bank whose <bank>.noise.json measured these bytes, "
                             "used as they are")
    args = parser.parse_args()
    if args.if_missing and not args.write:
        parser.error("--if_missing goes with --write")

    import torch

    from zo.blocks import block_type, parameter_blocks
    from zo.models import load_model, resolve_model_path
    from zo.noise import NoiseSource
    from zo.pertnn import load_bank
    from zo.sigma import learned_sigma_for
    from zo.stats import block_stats

    def normalization_of(bank) -> bool:
        if args.need_normalization == "auto":
            return json.loads(bank.metadata.get("need_normalization", "true"))
        return args.need_normalization == "True"

    if args.if_missing:
        recorded = [p for p in args.banks if record_is_current(Path(p), normalization_of(load_bank(p)))]
        for path in recorded:
            print(f"{path}: its noise record is valid, skipped (--if_missing)")
        args.banks = [p for p in args.banks if p not in recorded]
        if not args.banks:
            return

    model_path = resolve_model_path(args.model)
    model, _ = load_model(model_path)
    blocks = parameter_blocks(model)
    # the embedding / head: where meta-training tends to put the noise (the tied embedding)
    embedding = [i for i, b in enumerate(blocks) if EMBEDDING.search(b.name)]
    stats = block_stats(blocks, NoiseSource())
    numel = torch.tensor([b.param.numel() for b in blocks], dtype=torch.float64)
    for path in args.banks:
        bank = load_bank(path)
        normalize = normalization_of(bank)
        policy = learned_sigma_for(bank, blocks, args.batch_size, normalize=normalize)
        for _ in range(args.steps):
            k = torch.tensor(policy.coefficients(stats), dtype=torch.float64)
            policy.observe(args.loss, args.loss)
        trace = numel * k ** 2
        ratio = float(trace.sum() / numel.sum())
        scale = f"c = {policy.last_c:.3f}" if normalize else "no normalization: k = sigma"
        print(f"\n{path} ({policy.granularity}-wise): {scale}, noise trace / MeZO's = {ratio:.4g}")
        if args.write:
            record = {"bank_sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
                      "noise_trace_vs_mezo": ratio, "need_normalization": normalize,
                      "c": float(policy.last_c) if normalize else None,
                      "embedding_share": float(trace[embedding].sum() / trace.sum()) if embedding else 0.0,
                      "embedding_k": max((float(k[i]) for i in embedding), default=None),
                      "model": Path(model_path).name, "batch_size": args.batch_size,
                      "loss": args.loss, "steps": args.steps}
            out = Path(path).with_suffix(".noise.json")
            out.write_text(json.dumps(record, indent=1) + "\n")
            print(f"written: {out}")
        k_name = "k = c*sigma" if normalize else "k = sigma"
        print(f"| block | {k_name} | elements | share of the trace |\n|---|---|---|---|")
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
