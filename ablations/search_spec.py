"""The schema of a study's ``search:`` block: the distributions of its space, its sampler and pruner.

Both :mod:`ablations.study` (which validates a study file) and :mod:`ablations.samplers` (which
builds Optuna's sampler and pruner from the block) need these; they live here, below both, so that
neither imports the other.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "PARAM_TYPES",
    "PRUNERS",
    "SAMPLERS",
    "CategoricalParam",
    "FloatParam",
    "IntParam",
    "PrunerSpec",
    "SamplerSpec",
    "SearchParam",
    "SearchSpec",
]


class FloatParam(BaseModel):
    """``{type: float, low, high, log, step}``: Optuna's ``FloatDistribution`` (``trial.suggest_float``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) is greater than high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0, got {self.low:g}")
        if self.log and self.step is not None:
            raise ValueError("step and log: true cannot be combined (Optuna's FloatDistribution)")
        return self

    def values(self) -> list[Any]:
        """The values checked against the run config: the ends of the range."""
        return [self.low, self.high]


class IntParam(BaseModel):
    """``{type: int, low, high, step, log}``: Optuna's ``IntDistribution`` (``trial.suggest_int``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(default=1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) is greater than high ({self.high})")
        if self.log and self.low < 1:
            raise ValueError(f"log: true needs low >= 1, got {self.low}")
        if self.log and self.step != 1:
            raise ValueError("step and log: true cannot be combined (Optuna's IntDistribution)")
        return self

    def values(self) -> list[Any]:
        """The values checked against the run config: the ends of the range."""
        return [self.low, self.high]


class CategoricalParam(BaseModel):
    """``{type: categorical, choices: [...]}``: Optuna's ``CategoricalDistribution``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    type: Literal["categorical"]
    # Optuna stores choices as JSON scalars: null, booleans, numbers and strings.
    choices: list[bool | int | float | str | None] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> CategoricalParam:
        if len({json.dumps(c) for c in self.choices}) != len(self.choices):
            raise ValueError(f"choices must be distinct, got {self.choices}")
        return self

    def values(self) -> list[Any]:
        """The values checked against the run config: every choice."""
        return list(self.choices)


SearchParam = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]
PARAM_TYPES = ("float", "int", "categorical")
SAMPLERS = ("tpe", "random", "grid", "cmaes", "qmc")
PRUNERS = ("none", "median", "hyperband", "successive_halving", "threshold", "percentile")


class SamplerSpec(BaseModel):
    """``{name, seed, ...}``: an Optuna sampler; further keys are arguments of its class (checked)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: Literal[SAMPLERS] = "tpe"  # type: ignore[valid-type]
    seed: int | None = None

    @property
    def options(self) -> dict[str, Any]:
        """The keys besides ``name`` and ``seed``: keyword arguments of the Optuna class."""
        return dict(self.model_extra or {})


class PrunerSpec(BaseModel):
    """``{name, ...}``: an Optuna pruner; further keys are arguments of its class (checked)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: Literal[PRUNERS] = "median"  # type: ignore[valid-type]

    @property
    def options(self) -> dict[str, Any]:
        """The keys besides ``name``: keyword arguments of the Optuna class."""
        return dict(self.model_extra or {})


class SearchSpec(BaseModel):
    """A study's ``search:`` block: what Optuna samples, how, and how many trials.

    Attributes:
        space: dotted config key -> distribution, in Optuna's words (``float``, ``int``, ``categorical``).
        sampler: ``tpe`` (default), ``random``, ``grid``, ``cmaes`` or ``qmc``, with ``seed``.
        pruner: ``median`` (default), ``none``, ``hyperband``, ``successive_halving``,
            ``threshold`` or ``percentile``.
        n_trials: the cap on finished trials of the search (of each arm's search), over all workers.
        timeout: seconds after which a worker starts no new trial (``None``: no limit).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    space: dict[str, SearchParam] = Field(min_length=1)
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    n_trials: int = Field(default=20, ge=1)
    timeout: float | None = Field(default=None, gt=0)

    def identity(self) -> dict[str, Any]:
        """What makes two searches the same search: everything but the budget (``n_trials``, ``timeout``)."""
        return self.model_dump(mode="json", exclude={"n_trials", "timeout"})
