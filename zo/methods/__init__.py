"""The method registry: `--train_mode` names one entry; each entry is one module with its config
dataclass (its options, which are CLI flags of run_zo_fine_tuner.py) and its builder.

    build_method(name, ctx, values) -> the method (see zo.methods.base.Method for the interface)

An option belongs to the methods whose config declares it; `check_options` refuses any other
method's option that is set (to a non-default value, or given on the command line at all).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Callable, Iterable

from zo.methods import first_order, fzoo, hizoo, lozo, mezo, mezo_adam, zo_fine_tuner
from zo.methods.base import Method, MethodContext, MethodRecord


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config: type
    build: Callable
    summary: str


METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in [
    MethodSpec("mezo", mezo.MeZOConfig, mezo.build, "MeZO: two-point Gaussian ZO-SGD"),
    MethodSpec("zo_fine_tuner", zo_fine_tuner.ZOFineTunerConfig, zo_fine_tuner.build,
               "ZO Fine-tuner: MeZO with per-block sigma from a PertNN bank (needs --load_mlp_path)"),
    MethodSpec("mezo_adam", mezo_adam.MeZOAdamConfig, mezo_adam.build, "Adam over the MeZO estimate g*z"),
    MethodSpec("hizoo", hizoo.HiZOOConfig, hizoo.build, "HiZOO: diagonal-curvature preconditioned MeZO"),
    MethodSpec("lozo", lozo.LOZOConfig, lozo.build, "LOZO: low-rank U V^T perturbations (LOZO-M with --lozo_beta)"),
    MethodSpec("fzoo", fzoo.FZOOConfig, fzoo.build, "FZOO: N one-sided Rademacher probes, std-normalized step"),
    MethodSpec("fo_sgd", first_order.FOSGDConfig, first_order.build_sgd, "first-order SGD (backprop)"),
    MethodSpec("fo_adam", first_order.FOAdamConfig, first_order.build_adam, "first-order AdamW (backprop)"),
]}
TRAIN_MODES = tuple(METHODS)


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def option_owners() -> dict[str, list[str]]:
    """option name -> the methods that take it, in registry order."""
    owners: dict[str, list[str]] = {}
    for spec in METHODS.values():
        for name in _fields(spec.config):
            owners.setdefault(name, []).append(spec.name)
    return owners


def _method_options_class() -> type:
    """The union of every method's options as one dataclass (FineTuneConfig inherits it, so each option
    is a field and a CLI flag). Options shared by several methods must agree on type and default."""
    seen: dict[str, tuple] = {}
    for spec in METHODS.values():
        hints = typing.get_type_hints(spec.config)
        for name, f in _fields(spec.config).items():
            entry = (hints[name], f.default)
            if seen.setdefault(name, entry) != entry:
                raise TypeError(f"option {name} is declared differently by two methods")
    return dataclasses.make_dataclass("MethodOptions", [(n, t, dataclasses.field(default=d))
                                                        for n, (t, d) in seen.items()])


MethodOptions = _method_options_class()


def unknown_train_mode(name: str, also: str = "") -> ValueError:
    """The error for a train mode the registry lacks: every method with what it does (`also`: the caller's own
    modes, e.g. the recipe's evaluation-only `none`)."""
    listing = "\n".join(f"  {spec.name}: {spec.summary}" for spec in METHODS.values())
    return ValueError(f"unknown train_mode {name!r}: choose one of {', '.join(TRAIN_MODES)}{also}\n{listing}")


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise unknown_train_mode(name)
    return METHODS[name]


def check_options(train_mode: str, values: dict, given: Iterable[str] = ()) -> None:
    """Refuse another method's option: set to a non-default value in `values`, or named in `given`
    (the flags on the command line). Raises ValueError naming the method(s) it belongs to."""
    get_method(train_mode)
    owners = option_owners()
    defaults = {n: f.default for n, f in _fields(MethodOptions).items()}
    for name in sorted(owners):
        if train_mode in owners[name]:
            continue
        if name in given or (name in values and values[name] != defaults[name]):
            raise ValueError(f"--{name} is an option of {' / '.join(owners[name])}, not of train_mode {train_mode}")


def method_config(train_mode: str, values: dict):
    """The chosen method's config from a flat dict of options (validated by its __post_init__)."""
    spec = get_method(train_mode)
    return spec.config(**{name: values[name] for name in _fields(spec.config) if name in values})


def has_replay(train_mode: str) -> bool:
    """Whether the method's optimizer can re-apply a step from its record alone (seed, projected grad), so a
    checkpoint can hold a few numbers per step instead of the weights (read from the builder's return type)."""
    optimizer_class = typing.get_type_hints(get_method(train_mode).build)["return"]
    return callable(getattr(optimizer_class, "replay", None))


def build_method(train_mode: str, ctx: MethodContext, values: dict) -> Method:
    """The method `train_mode` on `ctx`, with its options from `values` (another method's option, set to a
    non-default value there, is refused: code outside the recipe calls this too)."""
    check_options(train_mode, values)
    spec = get_method(train_mode)
    return spec.build(ctx, method_config(train_mode, values))


__all__ = ["METHODS", "TRAIN_MODES", "MethodContext", "MethodOptions", "MethodRecord", "MethodSpec",
           "build_method", "check_options", "get_method", "has_replay", "method_config", "option_owners",
           "unknown_train_mode"]
