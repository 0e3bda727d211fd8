"""The sweep's search space: params.yaml's W&B-style ``sweep:`` config translated to Optuna
(distributions, sampler, pruner) and back to a W&B sweep config, and trial values to params.

Lists (``model.filters``, ``model.kernel_sizes``) are Optuna categorical choices encoded as
compact JSON text (``"[32,64,128,256,512]"``): Optuna's storage holds only scalars.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from naturalist.errors import PipelineError
from naturalist.params import Params, SweepParameter, SweepParams, parse_params


def encode_choice(value: Any) -> bool | int | float | str | None:
    """An Optuna categorical choice: lists and mappings become compact JSON text."""
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return value


def optuna_distribution(parameter: SweepParameter) -> BaseDistribution:
    """The Optuna distribution of one W&B parameter form."""
    kind = parameter.kind
    if kind in ("categorical", "constant"):
        return CategoricalDistribution([encode_choice(v) for v in parameter.choices])
    low, high = parameter.min, parameter.max
    assert low is not None and high is not None
    if kind == "int_uniform":
        return IntDistribution(int(low), int(high))
    if kind == "q_uniform":
        if parameter.draws_ints:
            return IntDistribution(int(low), int(high), step=int(parameter.step))
        return FloatDistribution(float(low), float(high), step=float(parameter.step))
    if kind == "log_uniform_values":
        return FloatDistribution(float(low), float(high), log=True)
    if kind == "log_uniform":  # W&B: min and max are exponents of e
        return FloatDistribution(math.exp(low), math.exp(high), log=True)
    return FloatDistribution(float(low), float(high))


def optuna_distributions(sweep: SweepParams) -> dict[str, BaseDistribution]:
    return {name: optuna_distribution(p) for name, p in sweep.parameters.items()}


def grid_search_space(sweep: SweepParams) -> dict[str, list[Any]]:
    """The GridSampler's space: every parameter's (encoded) values."""
    return {name: [encode_choice(v) for v in p.choices] for name, p in sweep.parameters.items()}


def grid_size(sweep: SweepParams) -> int:
    return math.prod(len(p.choices) for p in sweep.parameters.values())


def trial_budget(sweep: SweepParams) -> int:
    """How many trials the sweep runs: run_cap, at most the grid's size for method grid."""
    if sweep.method == "grid":
        size = grid_size(sweep)
        return size if sweep.run_cap is None else min(sweep.run_cap, size)
    assert sweep.run_cap is not None
    return sweep.run_cap


def tpe_startup_trials(sweep: SweepParams) -> int:
    """Random trials before TPE models the results: a third of the budget, 3 to 10."""
    return max(3, min(10, trial_budget(sweep) // 3))


def make_sampler(
    sweep: SweepParams, seed: int, trial_number: int = 0
) -> optuna.samplers.BaseSampler:
    """grid -> GridSampler, random -> RandomSampler, bayes -> TPESampler.

    Random and TPE samplers are seeded with ``seed + trial_number`` before each trial, so trial
    N draws the same values whether or not the sweep was interrupted before it. The grid's seed
    fixes the order of its points, so it stays ``seed`` for the whole study.
    """
    if sweep.method == "grid":
        return optuna.samplers.GridSampler(grid_search_space(sweep), seed=seed)
    if sweep.method == "random":
        return optuna.samplers.RandomSampler(seed=seed + trial_number)
    return optuna.samplers.TPESampler(
        seed=seed + trial_number, n_startup_trials=tpe_startup_trials(sweep)
    )


def make_pruner(sweep: SweepParams, epochs: int) -> optuna.pruners.BasePruner:
    """hyperband -> HyperbandPruner over epochs (min_iter .. train.epochs, eta); else none.

    With min_iter >= train.epochs there is no epoch to cut at, so nothing is pruned.
    """
    early = sweep.early_terminate
    if early is None or early.min_iter >= epochs:
        return optuna.pruners.NopPruner()
    return optuna.pruners.HyperbandPruner(
        min_resource=early.min_iter, max_resource=epochs, reduction_factor=early.eta
    )


def wandb_parameter(parameter: SweepParameter) -> dict[str, Any]:
    kind = parameter.kind
    if kind == "categorical":
        return {"values": list(parameter.choices)}
    if kind == "constant":
        return {"value": parameter.value}
    spec: dict[str, Any] = {"distribution": kind, "min": parameter.min, "max": parameter.max}
    if kind == "q_uniform":
        spec["q"] = parameter.step
    return spec


def wandb_sweep_config(sweep: SweepParams, *, name: str | None = None) -> dict[str, Any]:
    """The W&B sweep config (for ``wandb.sweep``) of the same search."""
    config: dict[str, Any] = {
        "method": sweep.method,
        "metric": {"name": sweep.metric.name, "goal": sweep.metric.goal},
        "parameters": {name: wandb_parameter(p) for name, p in sweep.parameters.items()},
    }
    if name is not None:
        config["name"] = name
    if sweep.run_cap is not None:
        config["run_cap"] = sweep.run_cap
    if sweep.early_terminate is not None:
        early = sweep.early_terminate
        config["early_terminate"] = {
            "type": early.type,
            "min_iter": early.min_iter,
            "eta": early.eta,
        }
    return config


def decode_params(sweep: SweepParams, values: Mapping[str, Any]) -> dict[str, Any]:
    """Params values from an Optuna trial's (encoded) or a W&B run's values of the swept keys."""
    decoded: dict[str, Any] = {}
    for name, parameter in sweep.parameters.items():
        if name not in values:
            raise PipelineError(f"sweep: trial has no value for {name}")
        value = values[name]
        if parameter.kind in ("categorical", "constant"):
            table = {repr(encode_choice(v)): v for v in parameter.choices}
            value = table.get(repr(encode_choice(value)), value)
        elif parameter.draws_ints:
            value = round(value)
        decoded[name] = value
    return decoded


def apply_overrides(params: Params, overrides: Mapping[str, Any]) -> Params:
    """The base params with dotted ``section.key`` values set, validated like params.yaml."""
    raw = params.model_dump(exclude_unset=True)
    for key, value in overrides.items():
        section, field = key.split(".", 1)
        raw.setdefault(section, {})[field] = value
    return parse_params(raw)


def describe(overrides: Mapping[str, Any], sweep: SweepParams) -> str:
    """The values that vary, as short ``key=value`` text for progress lines."""

    def short(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, list):
            return "[" + ",".join(short(v) for v in value) + "]"
        return str(value)

    return " ".join(
        f"{name}={short(value)}"
        for name, value in overrides.items()
        if sweep.parameters[name].kind not in ("categorical", "constant")
        or len(sweep.parameters[name].choices) > 1
    )
