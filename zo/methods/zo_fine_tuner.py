"""ZO Fine-tuner (arXiv 2510.00419): MeZO with per-block noise scales k_b = c * sigma_b from a frozen
PertNN bank. Its options (bank path, normalization, effective-dimension rule) are FineTuneConfig fields
since before the registry (`--load_mlp_path`, `--need_normalization`, `--effective_dim_rule`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from zo.estimator import ZOOptimizer
from zo.methods.base import MethodContext
from zo.blocks import parameter_blocks
from zo.pertnn import SigmaGrouping, bank_granularity, load_bank
from zo.sigma import learned_sigma_for

log = logging.getLogger(__name__)


@dataclass
class ZOFineTunerConfig:
    pass


def build(ctx: MethodContext, options: ZOFineTunerConfig) -> ZOOptimizer:
    if not ctx.load_mlp_path:
        raise ValueError("train_mode zo_fine_tuner needs a PertNN bank: set LOAD_MLP_PATH / --load_mlp_path "
                         "(python -m zo.init_bank writes an untrained one)")
    bank = load_bank(ctx.load_mlp_path)
    trained_with = bank.metadata.get("need_normalization")  # recorded by L2L since the ablations; older: absent
    if trained_with in ("true", "false") and (trained_with == "true") != ctx.need_normalization:
        log.warning("the bank %s was meta-trained with need_normalization=%s and this run uses %s: its sigma were "
                    "learned for the other scale (set --need_normalization %s to use it as trained)",
                    ctx.load_mlp_path, trained_with == "true", ctx.need_normalization, trained_with == "true")
    if Path(ctx.load_mlp_path).suffix in (".pth", ".pt", ".bin"):
        log.info("converted the authors' pickled bank %s through the safe loader (%d blocks)", ctx.load_mlp_path,
                 len(bank))
    everything = parameter_blocks(ctx.model, trainable_only=False)
    if len(everything) != len(ctx.blocks):  # --trainable_blocks froze some tensors: they get no PertNN
        granularity = bank_granularity(bank.metadata)
        bank.check_blocks(SigmaGrouping(everything, granularity).names)  # still this model's
        bank = bank.restricted_to(SigmaGrouping(list(ctx.blocks), granularity).names)
    # block-wise or layer-wise sigma, at the granularity the bank records
    sigma = learned_sigma_for(bank, ctx.blocks, ctx.batch_size, ctx.need_normalization, ctx.effective_dim_rule,
                              ctx.sigma_dtype)
    return ZOOptimizer(ctx.model, sigma, ctx.zo, seed=ctx.seed, noise=ctx.noise, blocks=ctx.blocks)
