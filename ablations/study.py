"""Load and validate a study file; expand it into cells (factor levels x seeds).

A study file (YAML) has ``name``, ``question``, ``base`` (dotted overrides of
the run config), ``factors`` (factor -> levels), ``seeds``, ``metric`` (name,
direction) and ``profiles`` (named budgets that override ``base``). ``imports``
names code that registers the user's own models (files relative to the study
file, or module names; ``core.models.plugins``): it is imported first, its
contents are part of the study key (:attr:`Study.key`), and a model's own
options are dotted keys like any other (``model.options.residual``). Everything
is validated before anything runs: an unknown key, factor or level, a wrong
type or an empty factor raises :class:`StudyError` naming the file, the key
path and the valid choices.

A study may also have a ``search`` block (:class:`SearchSpec`): a
hyperparameter search with Optuna over dotted config keys, run by
``ablations.hpsearch``. Beside ``factors`` every arm gets its own search;
alone, ``factors`` (and ``seeds``) may be left out. Profiles and ``--set`` may
change ``search.n_trials`` and ``search.timeout``. The test set never chooses: a
search's ``metric`` defaults to ``val_acc``, and a ``test_*`` metric for a search
(or a pruner metric, or ``train.select`` / ``train.early_stopping_metric``, which
``core.config`` checks) is a one-line error naming the key and why.

YAML note: this loader reads booleans as in YAML 1.2: only ``true``/``false``.
``on``, ``off``, ``yes``, ``no`` stay strings, and a boolean factor given such
a level is an error that says so (YAML 1.1 would silently turn them into
booleans). Floats such as ``1e-3`` are read as numbers.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ablations.factors import FACTORS, factor_overrides, level_label
from ablations.search_spec import PARAM_TYPES, SearchSpec
from core.config import ConfigError, RunConfig, apply_overrides, config_hash
from core.models import resolve_model_config
from core.models.plugins import CodeFile, PluginError, import_code

__all__ = ["Cell", "Claim", "SearchSpec", "Study", "StudyError", "import_study_code", "load_study"]

METRICS = ("test_acc", "test_top3", "test_loss", "val_acc", "val_loss", "train_acc", "train_loss")
# A claim may also be about overfitting: train top-1 minus test top-1 (``core.train.FitResult.final_metrics``).
CLAIM_METRICS = (*METRICS, "train_test_acc_gap")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
_YAML11_BOOLS = {"on", "off", "yes", "no", "y", "n"}


class StudyError(ValueError):
    """A study file is invalid. The message names the file and the key path."""

    def __init__(self, path: str | Path, key: str, message: str) -> None:
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + message)
        self.path, self.key = str(path), key


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and floats (``1e-3`` is a float)."""


_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:bool"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class MetricSpec(BaseModel):
    """The study's outcome: a run metric and whether larger is better."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Literal[METRICS] = "test_acc"  # type: ignore[valid-type]
    direction: Literal["maximize", "minimize"] = "maximize"


class Claim(BaseModel):
    """A claim from the literature that the study tests: "treatment changes metric in direction".

    ``treatment`` and ``control`` name levels of the same factors of the study
    (factors left out are averaged over); ``min_effect`` is the claimed size in
    the report's unit (percent points for accuracies), e.g. 1.4 for "+1.4%".
    ``budget`` names the budget the source made the claim at: a profile of the study file or a
    mapping of settings applied on top of ``base``; ``tests`` says which part of the source's
    comparison the study tests when the source changed several things at once. Neither enters the
    study key.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str
    text: str
    treatment: dict[str, Any] = Field(min_length=1)
    control: dict[str, Any] = Field(min_length=1)
    metric: Literal[CLAIM_METRICS] | None = None  # type: ignore[valid-type]  # None: the study's metric
    direction: Literal["increase", "decrease"]
    min_effect: float | None = Field(default=None, gt=0)
    # The budget the source made the claim at: a profile of this file (``full``) or settings on top of
    # ``base`` (``{train.epochs: 60}``); the report says when its verdict was measured at another one.
    budget: str | dict[str, Any] | None = None
    # Which part the study tests when the source compared several changes at once (printed by the report).
    tests: str | None = Field(default=None, min_length=1)


class SequentialSpec(BaseModel):
    """A study's ``sequential:`` block: add seeds in rounds until the question is decided.

    After the study's ``seeds`` (the first look), every round adds ``step`` new seeds to every arm
    (the next unused whole numbers) until each deciding comparison is decided (see
    :func:`ablations.report.build_report`), ``max_seeds`` per arm is reached or ``timeout`` passes.

    Attributes:
        max_seeds: the cap, seeds per arm.
        step: seeds added to every arm per round.
        equivalence_margin: a difference smaller than this (the metric's report unit: percent points
            for accuracies) counts as no difference: an interval inside +-margin is ``equivalent``, for
            the arms and main effects and for the claims.
        interaction_margin: the same for interaction contrasts (a difference of differences, on their own
            scale); None: interactions get no ``equivalent`` verdict.
        boundary: how the looks share alpha: ``anytime`` (the default: the anytime-valid confidence
            sequence at the whole alpha, which keeps its error rate when one seed in ten is far off,
            ``benchmarks/sequential_error.py``), or, for more power when the per-seed differences are
            normal, repeated confidence intervals at the planned looks with ``obrien-fleming`` (strict at
            the first looks) or ``pocock`` (the same level at every look) boundaries (``ablations.stats.LookPlan``).
        stop_on_direction: stop once a claim with a size has its direction confirmed, without its size
            resolved (by default the study goes on to the cap to test the size).
        timeout: seconds of wall time for one ``ablate run`` of the study; no new round starts after it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_seeds: int = Field(default=20, ge=2)
    step: int = Field(default=2, ge=1)
    equivalence_margin: float | None = Field(default=None, gt=0)
    interaction_margin: float | None = Field(default=None, gt=0)
    boundary: Literal["anytime", "obrien-fleming", "pocock"] = "anytime"
    stop_on_direction: bool = False
    timeout: float | None = Field(default=None, gt=0)


# the keys of the search block that profiles and --set may change (the budget)
_SEARCH_SETS = ("search.n_trials", "search.timeout")


class _StudyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=_NAME)
    question: str
    imports: list[str] = []  # code that registers models: files relative to the study file, or module names
    base: dict[str, Any] = {}
    # optional when the study has a search block: then it is a pure search
    factors: Annotated[dict[str, list[Any] | dict[str, dict[str, Any]]], Field(min_length=1)] | None = None
    seeds: Annotated[list[int], Field(min_length=1)] | None = None  # a pure search defaults to [0]
    metric: MetricSpec = MetricSpec()
    profiles: dict[str, dict[str, Any]] = {}
    claims: list[Claim] = []
    baseline: dict[str, Any] = {}  # factor -> level; factors not named keep their first level
    alpha: float = Field(default=0.05, gt=0, lt=1)
    search: SearchSpec | None = None
    sequential: SequentialSpec | None = None


@dataclass(frozen=True)
class Cell:
    """One grid point: a level of every factor and a seed.

    Attributes:
        levels: factor name -> level (a label for mapping-style factors).
        seed: the run's ``train.seed``.
        overrides: the dotted config overrides the levels and seed imply.
    """

    levels: dict[str, Any]
    seed: int
    overrides: dict[str, Any]

    @property
    def arm(self) -> str:
        """The arm (levels without the seed), e.g. ``batchnorm=false``."""
        return " ".join(f"{k}={level_label(v)}" for k, v in self.levels.items())

    @property
    def key(self) -> str:
        """The cell's name, e.g. ``batchnorm=false seed=1`` (``seed=0`` without factors)."""
        return f"{self.arm} seed={self.seed}".strip()


@dataclass(frozen=True)
class Study:
    """A validated study with one profile and CLI overrides applied.

    Attributes:
        path: the study file.
        name, question, factors, seeds, metric: as in the file.
        profile: the profile in use (``"base"`` when the file has none).
        overrides: base + profile + ``--set`` overrides, merged in that order.
        config: the run config before factor levels and seed are applied.
        claims: claims from the literature the report checks (``claims:``).
        baseline: factor -> level label of the baseline arm (every factor named).
        alpha: significance level of the report's verdicts.
        search: the ``search:`` block with the profile's and ``--set``'s budget applied, or ``None``.
        sequential: the ``sequential:`` block (or ``--until-decided``), or ``None`` for fixed seeds.
        code: the code its models come from, besides the built-in presets: each ``imports:`` entry,
            then the module of every installed package's model (entry point) the cells use.
    """

    path: Path
    name: str
    question: str
    factors: dict[str, list[Any] | dict[str, dict[str, Any]]]
    seeds: list[int]
    metric: MetricSpec
    profile: str
    overrides: dict[str, Any]
    config: RunConfig
    claims: tuple[Claim, ...] = ()
    baseline: dict[str, str] = field(default_factory=dict)
    alpha: float = 0.05
    search: SearchSpec | None = None
    sequential: SequentialSpec | None = None
    code: tuple[CodeFile, ...] = ()
    claim_budgets: tuple[dict[str, Any] | None, ...] = ()

    def claim_records(self) -> list[dict[str, Any]]:
        """The claims as the parent run's ``config.yaml`` records them: each claim's keys and, for a claim
        with ``budget:``, ``claimed_budget``: ``profile`` (its name, or None for settings), ``settings``
        (as written: the profile's overrides or the mapping) and ``values`` (the budget settings they
        resolve to, ``ablations.claim_budget.resolve``). Not part of the study key."""
        budgets = list(self.claim_budgets) + [None] * (len(self.claims) - len(self.claim_budgets))
        return [
            {**c.model_dump(), **({"claimed_budget": b} if b is not None else {})}
            for c, b in zip(self.claims, budgets, strict=False)
        ]

    def looks(self) -> list[list[int]]:
        """The seeds of every arm at each look of a sequential study (one look, ``seeds``, otherwise).

        Look 0 is the study's ``seeds``; each later look adds ``sequential.step`` seeds, the next
        whole numbers not yet used, up to ``sequential.max_seeds`` seeds per arm.
        """
        if self.sequential is None:
            return [list(self.seeds)]
        seq, seeds = self.sequential, list(self.seeds)
        extra = (s for s in itertools.count(max(seeds) + 1) if s not in seeds)
        out = [list(seeds)]
        while len(seeds) < seq.max_seeds:
            seeds = seeds + [next(extra) for _ in range(min(seq.step, seq.max_seeds - len(seeds)))]
            out.append(list(seeds))
        return out

    def with_seeds(self, seeds: list[int]) -> Study:
        """The same study with other seeds (same key: the seeds are not part of a study's identity)."""
        return dataclasses.replace(self, seeds=list(seeds))

    @property
    def key(self) -> str:
        """Identity of this study's settings: ``name:profile:hash``.

        The hash covers every setting except the factor levels and seeds, so
        adding seeds or levels keeps finished cells, and changing the recipe
        starts a new study. For a search it also covers the space, sampler and
        pruner, but not the budget (``n_trials``, ``timeout``): raising
        ``n_trials`` continues the same search. With ``imports`` (or a model of
        an installed package) it covers the code's contents too: editing the
        model starts a new study. A model whose network has changed since studies
        trained it (``core.models.registry.preset_revision`` > 1: ``cnn4``,
        ``cnn_s003``) puts its revision in the hash, so runs of its earlier network
        stay under their old key and are never pooled with new ones. A study with
        none of these hashes as it always has.
        """
        digest = config_hash(self.config)
        parts: dict[str, Any] = {}
        if self.search is not None:
            parts["search"] = self.search.identity()
        if self.code:
            parts["code"] = {c.name: c.sha256 for c in self.code}
        if revised := self._model_revisions():
            parts["models"] = revised
        if parts:
            text = json.dumps({"config": digest, **parts}, sort_keys=True)
            digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        return f"{self.name}:{self.profile}:{digest}"

    def _model_revisions(self) -> dict[str, int]:
        """``{model name: revision}`` of the models its cells train whose revision is above 1."""
        from core.models.registry import preset_revision

        names = {apply_overrides(self.config, c.overrides).model.name for c in self.with_seeds(self.seeds[:1]).cells()}
        return {n: r for n in sorted(names) if (r := preset_revision(n)) > 1}

    def cells(self) -> list[Cell]:
        """All cells, factor levels in file order (first level = baseline), seeds innermost.

        A search study has one cell per arm (one in all without factors), with the
        first seed: the starting point of that arm's search, whose trials set the
        sampled keys on top of it.
        """
        names = list(self.factors)
        out = []
        seeds = self.seeds[:1] if self.search is not None else self.seeds
        for combo in itertools.product(*(list(self.factors[n]) for n in names)):
            levels = dict(zip(names, combo, strict=True))
            for seed in seeds:
                ov: dict[str, Any] = {}
                for n, lv in levels.items():
                    ov.update(factor_overrides(n, self.factors[n], lv))
                ov["train.seed"] = seed
                out.append(Cell(levels, seed, ov))
        return out

    def cell_config(self, cell: Cell) -> RunConfig:
        """The fully resolved run config of ``cell`` (model preset values filled in)."""
        cfg = apply_overrides(self.config, cell.overrides)
        return cfg.model_copy(update={"model": resolve_model_config(cfg.model)})


def _check_overrides(path: Path, where: str, cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    try:
        return apply_overrides(cfg, overrides)
    except ConfigError as exc:
        raise StudyError(path, where, str(exc)) from None


def _check_factor(path: Path, cfg: RunConfig, name: str, spec: list | dict) -> None:
    where = f"factors.{name}"
    if not spec:
        raise StudyError(path, where, "has no levels; give at least one")
    if isinstance(spec, list):
        if name not in FACTORS and "." not in name:
            raise StudyError(
                path,
                where,
                f"unknown factor '{name}'; registered factors: {', '.join(FACTORS)}, "
                "or a dotted config key such as optim.lr, or a mapping level -> overrides",
            )
        if len({level_label(v) for v in spec}) != len(spec):
            raise StudyError(path, where, f"levels must be distinct, got {spec}")
    for level in spec:
        if isinstance(level, str) and level.lower() in _YAML11_BOOLS:
            key = FACTORS.get(name, name)
            field_type = flat_type(key)
            if field_type is bool:
                raise StudyError(
                    path,
                    f"{where}[{level}]",
                    "write true or false: ablate reads YAML 1.2, where on/off/yes/no are strings, not booleans",
                )
        try:
            apply_overrides(cfg, factor_overrides(name, spec, level))
        except ConfigError as exc:
            raise StudyError(path, f"{where}[{level_label(level)}]", str(exc)) from None


def flat_type(key: str) -> type | None:
    """The Python type of a dotted config key's default (for boolean checks)."""
    section, _, field = key.partition(".")
    sub = RunConfig.model_fields.get(section)
    if sub is None or field not in sub.annotation.model_fields:  # type: ignore[union-attr]
        return None
    ann = str(sub.annotation.model_fields[field].annotation)  # type: ignore[union-attr]
    return bool if ann.startswith("bool") else None


def load_study(
    path: str | Path,
    profile: str | None = None,
    sets: dict[str, Any] | None = None,
    until_decided: bool = False,
    max_seeds: int | None = None,
) -> Study:
    """Read, validate and resolve a study file.

    Args:
        path: the YAML file.
        profile: a name under ``profiles``; ``None`` picks ``full`` if the file
            has it, else no profile (``"base"``).
        sets: extra dotted overrides (the CLI's ``--set``), applied last.
        until_decided: make the study sequential (``ablate run --until-decided``) with the file's
            ``sequential`` block, or its defaults (max 20 seeds per arm, step 2) when it has none.
        max_seeds: override ``sequential.max_seeds`` (``--max-seeds``); implies ``until_decided``.

    Returns:
        The :class:`Study`; every cell's config has been validated.

    Raises:
        StudyError: missing file, bad YAML, unknown key/factor/level/profile,
            wrong type, empty factor, a search space key that is no config key or
            does not take its bounds or choices, a sampler or pruner Optuna does
            not accept, an ``imports`` entry that cannot be imported (its file and
            line), a model option it does not declare or of another type, a plugin
            network that is no ``nn.Module`` or gives another output shape. The
            message names the file and key path.
    """
    path = Path(path)
    if not path.is_file():
        raise StudyError(path, "", "no such study file")
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise StudyError(path, "", f"not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:  # random bytes, an image, an archive: say which file
        raise StudyError(path, "", f"not a text file (byte {exc.start} is not UTF-8): a study file is YAML") from None
    except OSError as exc:
        raise StudyError(path, "", f"cannot read it: {exc.strerror or exc}") from None
    if not isinstance(raw, dict):
        raise StudyError(path, "", "a study file is a mapping with name, question, factors, seeds, ...")
    for key in raw:
        if key not in _StudyFile.model_fields:
            near = difflib.get_close_matches(str(key), list(_StudyFile.model_fields), n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise StudyError(path, str(key), f"unknown key; {hint}valid keys: {', '.join(_StudyFile.model_fields)}")
    try:
        spec = _StudyFile.model_validate(raw)
    except ValidationError as exc:
        key, msg = _error_location(exc.errors()[0])
        raise StudyError(path, key, msg) from None
    if spec.search is None:
        for name in ("factors", "seeds"):
            if getattr(spec, name) is None:
                raise StudyError(path, name, "Field required (or give a search block for a pure search)")
    elif spec.claims:
        raise StudyError(
            path,
            "claims",
            "a search study checks no claims: put them in the ordinary study that re-runs the best config with seeds",
        )
    if spec.search is not None:  # a search chooses: on the validation split, never on the test set
        if "metric" not in raw:
            spec = spec.model_copy(update={"metric": MetricSpec(name="val_acc")})
        elif spec.metric.name.startswith("test_"):
            raise StudyError(
                path,
                "metric",
                f"{spec.metric.name} would let the test set choose the search's hyperparameters; optimise val_acc "
                "or val_loss (the default is val_acc) and measure the best config on the test set in an ordinary study",
            )
    code = _import_code(path, spec.imports)  # before anything is resolved: the models it registers
    factors = dict(spec.factors or {})
    seeds = list(spec.seeds or [0])

    if profile is None:
        profile = "full" if "full" in spec.profiles else "base"
    if profile != "base" and profile not in spec.profiles:
        raise StudyError(
            path, "profiles", f"no profile '{profile}'; this file has: {', '.join(spec.profiles) or 'none'}"
        )
    base, base_search = _split_search(path, "base", spec.search, spec.base)
    cfg = _check_overrides(path, "base", RunConfig(), base)
    profile_cfg: dict[str, Any] = {}
    profile_search: dict[str, Any] = {}
    for pname, pov in spec.profiles.items():
        pov, psearch = _split_search(path, f"profiles.{pname}", spec.search, pov)
        _check_overrides(path, f"profiles.{pname}", cfg, pov)
        if pname == profile:
            profile_cfg, profile_search = pov, psearch
    set_cfg, set_search = _split_search(path, "--set", spec.search, sets or {})
    merged = {**base, **profile_cfg, **set_cfg}
    cfg = _check_overrides(path, "--set" if sets else f"profiles.{profile}", RunConfig(), merged)
    for name, fspec in factors.items():
        _check_factor(path, cfg, name, fspec)
        varied = {k for level in fspec for k in factor_overrides(name, fspec, level)}
        if clash := sorted(varied & set(set_cfg)):  # the factor's levels would silently win over --set
            raise StudyError(
                path, "--set", f"{', '.join(clash)} is set by factor '{name}' in every cell; change its levels instead"
            )
    try:
        resolve_model_config(cfg.model)
    except ConfigError as exc:  # name the layer that set the model key: --set, then the profile, then base
        keys = [k for k in merged if k.startswith("model.")]
        where = next(
            (w for w, ov in (("--set", set_cfg), (f"profiles.{profile}", profile_cfg)) if any(k in ov for k in keys)),
            "base",
        )
        raise StudyError(path, where, str(exc)) from None
    search = None
    if spec.search is not None:
        budget = {**base_search, **profile_search, **set_search}
        where = "--set" if set_search else (f"profiles.{profile}" if profile_search else "base")
        search = _with_budget(path, where, spec.search, budget)
        _check_search(path, cfg, search, factors, spec.metric)
    labels = {f: [level_label(v) for v in fspec] for f, fspec in factors.items()}
    baseline = {f: levels[0] for f, levels in labels.items()}
    baseline.update(_check_levels(path, "baseline", labels, spec.baseline))
    for i, claim in enumerate(spec.claims):
        treat = _check_levels(path, f"claims[{i}].treatment", labels, claim.treatment)
        control = _check_levels(path, f"claims[{i}].control", labels, claim.control)
        if set(treat) != set(control):
            raise StudyError(path, f"claims[{i}]", "treatment and control must name the same factors")
        if treat == control:
            raise StudyError(path, f"claims[{i}]", "treatment and control are the same levels")
    claim_budgets = tuple(_claim_budget(path, i, c, base, spec.profiles) for i, c in enumerate(spec.claims))
    study = Study(
        path,
        spec.name,
        spec.question,
        factors,
        seeds,
        spec.metric,
        profile,
        merged,
        cfg,
        tuple(spec.claims),
        baseline,
        spec.alpha,
        search,
        _sequential(path, spec, seeds, until_decided, max_seeds),
        code,
    )
    models = set()
    for cell in study.cells():  # every cell must build a valid config (e.g. model names)
        try:
            models.add(study.cell_config(cell).model.name)
        except ConfigError as exc:
            raise StudyError(path, f"factors ({cell.arm})", str(exc)) from None
    study = dataclasses.replace(study, claim_budgets=claim_budgets)
    if installed := _installed_code(models, code):
        study = dataclasses.replace(study, code=code + installed)
    if len(set(seeds)) != len(seeds):
        raise StudyError(path, "seeds", f"seeds must be distinct, got {seeds}")
    return study


def _claim_budget(
    path: Path, i: int, claim: Claim, base: dict[str, Any], profiles: dict[str, dict[str, Any]]
) -> dict[str, Any] | None:
    """A claim's ``budget:`` resolved (see :meth:`Study.claim_records`), or None when it names none.

    Raises:
        StudyError: a profile the file does not have, or settings that are no valid config keys.
    """
    from ablations.claim_budget import resolve

    if claim.budget is None:
        return None
    where = f"claims[{i}].budget"
    if isinstance(claim.budget, str):
        if claim.budget not in profiles and claim.budget != "base":
            have = ", ".join(profiles) or "none"
            raise StudyError(path, where, f"no profile '{claim.budget}'; this file has: {have} (or settings)")
        settings = dict(profiles.get(claim.budget, {}))
        profile: str | None = claim.budget
    else:
        settings, profile = dict(claim.budget), None
    merged = {**base, **{k: v for k, v in settings.items() if not k.startswith("search.")}}
    _check_overrides(path, where if profile is None else f"profiles.{profile}", RunConfig(), merged)
    return {"profile": profile, "settings": settings, "values": resolve(merged)}


def _import_code(path: Path, imports: list[str]) -> tuple[CodeFile, ...]:
    """Import each ``imports:`` entry (``core.models.plugins.import_code``), relative to the study file.

    Raises:
        StudyError: an entry cannot be imported (``imports[i]``, then the file and line), or two
            entries would be logged under one name.
    """
    out: list[CodeFile] = []
    names: dict[str, str] = {}
    for i, entry in enumerate(imports):
        try:
            code = import_code(entry, path.parent)
        except PluginError as exc:
            raise StudyError(path, f"imports[{i}]", str(exc)) from None
        if code.name in names:
            raise StudyError(
                path, f"imports[{i}]", f"{entry} and {names[code.name]} would both be logged as code/{code.name}"
            )
        names[code.name] = entry
        out.append(code)
    return tuple(out)


def _installed_code(models: set[str], imported: tuple[CodeFile, ...]) -> tuple[CodeFile, ...]:
    """The code of each model in ``models`` that an installed package's entry point registered."""
    from core.models.plugins import code_of, load_entry_points
    from core.models.registry import preset_info

    entry_points = {c.sha256 for c in load_entry_points()}
    have = {c.sha256 for c in imported}
    out: list[CodeFile] = []
    for name in sorted(models):
        origin = preset_info(name)["origin"]
        code = code_of(origin) if origin else None
        if code is not None and code.sha256 in entry_points and code.sha256 not in have:
            have.add(code.sha256)
            out.append(code)
    return tuple(out)


def import_study_code(path: str | Path) -> tuple[CodeFile, ...]:
    """Import the code a study file's ``imports:`` names, without validating the rest of the file.

    What ``ablate models --study FILE`` uses, so that a study whose other keys are wrong still lists
    its models and their options.

    Raises:
        StudyError: the file cannot be read as YAML, ``imports`` is not a list of strings, or an
            entry cannot be imported.
    """
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise StudyError(path, "", f"cannot read it as a study file: {exc}") from None
    imports = raw.get("imports", []) if isinstance(raw, dict) else []
    if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
        raise StudyError(path, "imports", "a list of files (relative to the study file) or module names")
    return _import_code(path, imports)


def _sequential(
    path: Path, spec: _StudyFile, seeds: list[int], until_decided: bool, max_seeds: int | None
) -> SequentialSpec | None:
    """The study's sequential design: its block, made or changed by ``--until-decided``/``--max-seeds``."""
    seq = spec.sequential
    if seq is None and not (until_decided or max_seeds is not None):
        return None
    if spec.search is not None:
        where = "sequential" if seq is not None else "--until-decided"
        raise StudyError(path, where, "a search is not sequential: its budget is search.n_trials")
    seq = seq or SequentialSpec()
    if max_seeds is not None:
        if max_seeds < 2:
            raise StudyError(path, "--max-seeds", f"must be at least 2, got {max_seeds}")
        seq = seq.model_copy(update={"max_seeds": max_seeds})
    if seq.max_seeds < len(seeds):
        where = "--max-seeds" if max_seeds is not None else "sequential.max_seeds"
        raise StudyError(path, where, f"{seq.max_seeds} is fewer than the study's {len(seeds)} seeds")
    return seq


def _error_location(err: dict) -> tuple[str, str]:
    """A pydantic error as (dotted key path, message), with the search space's ``type`` tag left out."""
    loc = [str(p) for p in err["loc"]]
    if loc[:2] == ["search", "space"] and len(loc) > 3 and loc[3] in PARAM_TYPES:
        del loc[3]  # the discriminated union puts the tag into the path: search.space.<key>.float.low
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "union_tag_not_found":
        msg = f"missing type; give type: {', '.join(PARAM_TYPES)}"
    elif err["type"] == "union_tag_invalid":
        got = err.get("ctx", {}).get("tag", "?")
        msg = f"unknown type '{got}'; valid types: {', '.join(PARAM_TYPES)}"
        loc.append("type")
    return ".".join(loc), msg


def _split_search(
    path: Path, where: str, search: SearchSpec | None, overrides: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``overrides`` -> (run config overrides, ``search.*`` budget overrides such as ``search.n_trials``)."""
    config, budget = {}, {}
    for key, value in overrides.items():
        if not key.startswith("search."):
            config[key] = value
            continue
        if search is None:
            raise StudyError(path, f"{where}.{key}", "this study has no search block")
        if key not in _SEARCH_SETS:
            raise StudyError(
                path,
                f"{where}.{key}",
                f"only {' and '.join(_SEARCH_SETS)} can be set here; change the rest in the search block",
            )
        budget[key.removeprefix("search.")] = value
    return config, budget


def _with_budget(path: Path, where: str, search: SearchSpec, budget: dict[str, Any]) -> SearchSpec:
    if not budget:
        return search
    try:
        return SearchSpec.model_validate({**search.model_dump(), **budget})
    except ValidationError as exc:
        key, msg = _error_location(exc.errors()[0])
        raise StudyError(path, f"{where}.search.{key}", msg) from None


def _check_search(path: Path, cfg: RunConfig, search: SearchSpec, factors: dict[str, Any], metric: MetricSpec) -> None:
    """Every space key is a config key taking its bounds and choices; the sampler and pruner can be built."""
    from ablations.samplers import SearchSpecError, make_pruner, make_sampler  # optuna: loaded only for searches

    by_factor: dict[str, str] = {}
    for name, fspec in factors.items():
        for level in fspec:
            for key in factor_overrides(name, fspec, level):
                by_factor[key] = name
    for key, param in search.space.items():
        where = f"search.space.{key}"
        if key == "train.seed":
            raise StudyError(path, where, "the seed is not searched: every trial trains with the study's first seed")
        if key in by_factor:
            raise StudyError(
                path, where, f"also set by factor '{by_factor[key]}': a key is either searched or a factor"
            )
        for value in param.values():
            try:
                resolve_model_config(apply_overrides(cfg, {key: value}).model)
            except ConfigError as exc:
                raise StudyError(path, where, str(exc)) from None
    if "metric" in search.pruner.options:
        raise StudyError(
            path,
            "search.pruner.metric",
            "the pruner watches val_loss for a loss metric and val_acc otherwise, after every epoch; "
            "it takes no metric, and the test set never stops a trial",
        )
    try:
        make_sampler(search)
        make_pruner(search)
    except SearchSpecError as exc:
        raise StudyError(path, f"search.{exc.key}", str(exc)) from None
    if cfg.data.val_fraction == 0:
        if search.pruner.name != "none":
            raise StudyError(
                path, "search.pruner", "pruning watches the validation set: set data.val_fraction > 0 or pruner none"
            )
        if metric.name.startswith("val_"):
            raise StudyError(path, "metric", f"{metric.name} needs a validation set: set data.val_fraction > 0")


def _check_levels(path: Path, where: str, labels: dict[str, list[str]], levels: dict[str, Any]) -> dict[str, str]:
    """``{factor: level}`` with every factor a study factor and every level one of its levels -> labels."""
    out = {}
    for name, level in levels.items():
        if name not in labels:
            raise StudyError(path, f"{where}.{name}", f"not a factor of this study; factors: {', '.join(labels)}")
        label = level_label(level)
        if label not in labels[name]:
            raise StudyError(
                path, f"{where}.{name}", f"'{label}' is not a level of {name}; levels: {', '.join(labels[name])}"
            )
        out[name] = label
    return out


def parse_sets(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["optim.lr=3e-4", "model.batchnorm=false"]`` -> typed dict (values parsed as YAML 1.2).

    Raises:
        ValueError: an item without ``=``.
    """
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got '{item}'")
        out[key.strip()] = yaml.load(value, Loader=_Loader) if value else None  # noqa: S506
    return out
