"""MeZO (Malladi et al., arXiv 2305.17333): theta <- theta - lr * (L+ - L-)/(2 eps) * z.

The shared `ZOOptimizer` with a constant sigma of 1; no options of its own.
"""
from __future__ import annotations

from dataclasses import dataclass

from zo.estimator import ZOOptimizer
from zo.methods.base import MethodContext
from zo.sigma import ConstantSigma


@dataclass
class MeZOConfig:
    pass


def build(ctx: MethodContext, options: MeZOConfig) -> ZOOptimizer:
    return ZOOptimizer(ctx.model, ConstantSigma(ctx.blocks), ctx.zo, seed=ctx.seed, noise=ctx.noise,
                       blocks=ctx.blocks)
