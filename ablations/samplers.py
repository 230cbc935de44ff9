"""Optuna samplers and pruners from a study's ``search`` block, and the grid of the ``grid`` sampler.

Both :mod:`ablations.study` (which checks a search block when it loads the file)
and :mod:`ablations.hpsearch` (which runs the search) need these; they live here
so that neither imports the other. The block's schema is :mod:`ablations.search_spec`,
below this module and :mod:`ablations.study` both.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
from typing import Any

import optuna

from ablations.search_spec import SearchSpec

__all__ = ["PER_TRIAL_SEED", "SearchSpecError", "grid_size", "grid_space", "make_pruner", "make_sampler"]

_SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "grid": "GridSampler",
    "cmaes": "CmaEsSampler",
    "qmc": "QMCSampler",
}
_PRUNERS = {
    "none": "NopPruner",
    "median": "MedianPruner",
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "threshold": "ThresholdPruner",
    "percentile": "PercentilePruner",
}
PER_TRIAL_SEED = ("tpe", "random", "cmaes")  # samplers that draw trial n with seed + n
# arguments a YAML file cannot give (callables, objects) or that ablate sets itself
_NOT_FROM_YAML = {
    "seed",
    "search_space",
    "gamma",
    "weights",
    "constraints_func",
    "independent_sampler",
    "source_trials",
}


class SearchSpecError(ValueError):
    """A sampler, pruner or space setting Optuna does not accept.

    Attributes:
        key: the key path inside the ``search`` block, e.g. ``sampler.n_startup_trials``.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def grid_space(search: SearchSpec) -> dict[str, list]:
    """The grid of the ``grid`` sampler: every choice, every ``int`` step, every ``float`` step.

    Raises:
        SearchSpecError: a ``float`` without ``step``.
    """
    out: dict[str, list] = {}
    for key, p in search.space.items():
        if p.type == "categorical":
            out[key] = list(p.choices)
        elif p.type == "int":
            out[key] = list(range(p.low, p.high + 1, p.step))
        else:
            if p.step is None:
                raise SearchSpecError(
                    f"space.{key}", "the grid sampler needs a step for a float range (or use type: categorical)"
                )
            n = math.floor((p.high - p.low) / p.step + 1e-9) + 1
            out[key] = [round(p.low + i * p.step, 12) for i in range(n)]
    return out


def grid_size(search: SearchSpec) -> int:
    """How many points the grid of :func:`grid_space` has."""
    return math.prod(len(v) for v in grid_space(search).values())


def _build(kind: str, cls: type, options: dict[str, Any], fixed: dict[str, Any]) -> Any:
    allowed = [p for p in inspect.signature(cls).parameters if p not in _NOT_FROM_YAML]
    for key in options:
        if key not in allowed:
            raise SearchSpecError(
                f"{kind}.{key}",
                f"not an argument of optuna.{kind}s.{cls.__name__}; its arguments: {', '.join(allowed) or 'none'}",
            )
    try:
        return cls(**options, **fixed)
    except (TypeError, ValueError) as exc:
        raise SearchSpecError(kind, f"optuna.{kind}s.{cls.__name__}: {exc}") from None


def make_sampler(search: SearchSpec, trial_number: int | None = None) -> optuna.samplers.BaseSampler:
    """The Optuna sampler of ``search.sampler``; its other keys are passed to the class.

    Args:
        search: the search block.
        trial_number: for ``tpe``, ``random`` and ``cmaes`` with a seed: the sampler
            for this trial, seeded ``seed + trial_number``. ``None``: seeded ``seed``.

    Returns:
        ``TPESampler`` (Bergstra et al. 2011), ``RandomSampler``, ``GridSampler`` (over
        :func:`grid_space`), ``CmaEsSampler`` (Hansen 2016) or ``QMCSampler``.

    Raises:
        SearchSpecError: an argument the class does not take or rejects, a grid float
            without step, ``cmaes`` without the ``cmaes`` package.
    """
    spec = search.sampler
    cls = getattr(optuna.samplers, _SAMPLERS[spec.name])
    if spec.name == "cmaes" and importlib.util.find_spec("cmaes") is None:
        raise SearchSpecError("sampler.name", "the cmaes sampler needs the cmaes package: pip install cmaes")
    seed = spec.seed
    if seed is not None and trial_number is not None and spec.name in PER_TRIAL_SEED:
        seed += trial_number
    fixed: dict[str, Any] = {"seed": seed}
    if spec.name == "grid":
        fixed["search_space"] = grid_space(search)
    return _build("sampler", cls, spec.options, fixed)


def make_pruner(search: SearchSpec) -> optuna.pruners.BasePruner:
    """The Optuna pruner of ``search.pruner``; its other keys are passed to the class.

    Returns:
        ``NopPruner`` (``none``), ``MedianPruner`` (the median stopping rule, Golovin et al.
        2017), ``HyperbandPruner`` (Li et al. 2018), ``SuccessiveHalvingPruner`` (ASHA, Li et
        al. 2020), ``ThresholdPruner`` or ``PercentilePruner``.

    Raises:
        SearchSpecError: an argument the class does not take or rejects.
    """
    spec = search.pruner
    return _build("pruner", getattr(optuna.pruners, _PRUNERS[spec.name]), spec.options, {})
