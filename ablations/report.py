"""The study report, read from MLflow alone: arms, effects with intervals, verdicts, claims; plots and exports.

:func:`load_runs` reads one parent run (its tags ``ablate.factors``,
``ablate.metric``, ``ablate.direction`` and its ``config.yaml``: alpha,
baseline, claims, budget) and its child runs. :func:`build_report` computes
three tables with :mod:`ablations.stats`:

- arms: per arm, runs finished and failed, mean, standard deviation, 95% t
  interval, median, and the difference to the baseline arm;
- effects: every arm against the baseline arm and, with two or more factors,
  each factor's main effect and each pair's interaction, with a 95% t
  interval, p-value (paired t when the seeds match, Welch t otherwise), Holm's
  correction over all of them, a rank test as a check, an effect size, a
  verdict at the study's alpha and the seeds per arm for 80% power;
- claims: each claim of the study file against its measured effect.

This module only computes; :mod:`ablations.rendering` writes the tables as a
terminal table (100 columns), CSV, Markdown, LaTeX, HTML or JSON and draws the
figures of :mod:`ablations.plots`. Accuracies are shown in percent, so
differences are in percent points (pp).

A hyperparameter search (a study with a ``search:`` block, run by
``ablations.hpsearch``) has no arms to compare with error bars:
:func:`ablations.search_report.load_search` reads its parent run(s) (one per arm)
and trial runs, and :func:`ablations.search_report.render_search` lists the trials sorted by value with their sampled
values, the counts of complete, pruned and failed trials, and the best config.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ablations import claim_budget, stats
from ablations.factors import level_label
from ablations.stats import MIN_SEEDS, Contrast
from ablations.tracking import PRECISION_TAG, TAG, StoreNotFoundError, Tracker

__all__ = [
    "Report",
    "ReportError",
    "StudyRuns",
    "arm_table",
    "build_report",
    "effect_by_epoch",
    "epoch_metric",
    "load_histories",
    "load_runs",
    "metric_key",
    "summary_metrics",
]

POWER = 0.8
PLAN_TAG = f"{TAG}sequential_plan"  # on the parent run: the looks planned by the study's first sequential run
OUTCOME_TAG = f"{TAG}outcome"  # on a failed child run: diverged (an outcome of its arm)
CURVE_METRICS = ("train_loss", "val_loss", "train_acc", "val_acc")


class ReportError(LookupError):
    """No such study or no finished runs in the tracking store."""


@dataclass
class StudyRuns:
    """Finished runs of one study (one parent run), as read from MLflow.

    Attributes:
        study, profile, parent_run_id: which study and which of its parent runs.
        factors: factor name -> level labels in file order.
        metric, direction: the study metric and ``maximize``/``minimize``.
        runs: one row per finished cell: ``arm``, ``seed``, ``run_id``, one
            column per factor (level label), and every final metric.
        failed: number of child runs that failed or were killed.
        claims: the study's claims (dicts with the keys of ``ablations.study.Claim``).
        baseline: factor -> level label of the baseline arm; factors missing take their first level.
        alpha: significance level of the verdicts.
        failures: one row per failed or killed child run: ``arm``, ``seed``, ``status`` and ``kind``:
            ``diverged`` (training diverged: an outcome of its arm, counted at the study's worst value) or
            ``infrastructure`` (killed, out of memory, a lost worker: retried, not counted).
        budget: the settings that fix the budget (``train.epochs``, ``data.train_subset``, ...) if known.
        tracking_uri: where the runs were read (for learning curves and logging plots).
        sequential: a sequential study's design (``max_seeds``, ``step``, ``equivalence_margin``,
            ``timeout``, ``looks``: the seeds per arm of each look) and ``stopped`` (the parent run's
            tag ``ablate.sequential_stop`` when the runner stopped it: ``decided``, ``max_seeds`` or
            ``timeout``) and ``plan`` (the parent run's tag ``ablate.sequential_plan``, written by the
            study's first sequential run: ``looks``, the planned seeds per arm of each look, or None when
            the study looked at its data before a plan was recorded, and ``reserve``); ``None`` for a
            study with fixed seeds.
        precisions: one row per finished cell: ``arm``, ``seed``, ``run_id`` and ``precision``, the
            precision it trained in (the run's tag ``ablate.precision``: ``bf16``, ``fp32`` or
            ``fp16``; ``None`` for a run made before ablate recorded it).
        config_hashes: ``(arm, seed)`` -> the run's config hash (tag ``ablate.config_hash``): two arms with
            equal hashes at every seed are one configuration under two labels.
        budget_values: the budget settings the runs trained at, defaults filled in
            (``ablations.claim_budget.resolve`` of the parent run's overrides); empty when unknown.
        schedules: arm -> the learning-rate schedules its runs used (``schedule.name``, with
            ``+warmup`` when ``schedule.warmup_epochs`` > 0), from the child runs' params.
    """

    study: str
    profile: str
    parent_run_id: str
    factors: dict[str, list[str]]
    metric: str
    direction: str
    runs: pd.DataFrame
    failed: int
    claims: list[dict] = field(default_factory=list)
    baseline: dict[str, str] = field(default_factory=dict)
    alpha: float = 0.05
    failures: pd.DataFrame = field(default_factory=pd.DataFrame)
    budget: dict[str, object] = field(default_factory=dict)
    tracking_uri: str | None = None
    sequential: dict | None = None
    precisions: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PRECISION_COLUMNS))
    config_hashes: dict = field(default_factory=dict)
    budget_values: dict = field(default_factory=dict)
    schedules: dict = field(default_factory=dict)

    def restricted(self, seeds: list[int]) -> StudyRuns:
        """The same study with only the runs (and failures) of ``seeds``: what one look saw."""
        keep = list(seeds)
        runs = self.runs[np.isin(self.runs["seed"].to_numpy(), keep)] if not self.runs.empty else self.runs
        failures = self.failures
        fails = failures[np.isin(failures["seed"].to_numpy(), keep)] if not failures.empty else failures
        return dataclasses.replace(self, runs=runs.reset_index(drop=True), failures=fails, failed=len(fails))


_BUDGET_KEYS = ("train.epochs", "data.train_subset", "data.test_subset")
FAILURE_COLUMNS = ["arm", "seed", "status", "kind"]
PRECISION_COLUMNS = ["arm", "seed", "run_id", "precision"]
UNRECORDED = "not recorded"  # a run made before ablate tagged the precision it trained in


def _reader(tracking_uri: str | None) -> Tracker:
    """A :class:`Tracker` on an existing store (a report never creates one); :class:`ReportError` if missing."""
    try:
        return Tracker(tracking_uri, create=False)
    except StoreNotFoundError as exc:
        raise ReportError(str(exc)) from None


def load_runs(
    study: str, tracking_uri: str | None = None, profile: str | None = None, parent_run_id: str | None = None
) -> StudyRuns:
    """Read the newest parent run of ``study`` (optionally of one profile) and its children.

    Args:
        study: the study's name (its MLflow experiment).
        tracking_uri: MLflow tracking URI (default: ``$MLFLOW_TRACKING_URI`` or the project store).
        profile: read this profile's parent run instead of the newest.
        parent_run_id: read exactly this parent run (the runner, between the looks of a sequential study).

    Returns:
        The :class:`StudyRuns`; alpha, baseline and claims come from the parent
        run's ``config.yaml`` (defaults when it predates them).

    Raises:
        ReportError: the store, the experiment or the parent run is missing.
    """
    tracker = _reader(tracking_uri)
    parents = [p for p in tracker.parents(study) if profile is None or p.data.tags.get(f"{TAG}profile") == profile]
    if parent_run_id is not None:
        parents = [p for p in parents if p.info.run_id == parent_run_id]
    if not parents:
        raise ReportError(
            f"no study '{study}'{f' with profile {profile}' if profile else ''} in {tracker.uri}; "
            "run `ablate run studies/<study>.yaml` first, or pass --tracking-uri"
        )
    parent = parents[0]
    pid = parent.info.run_id
    ptags = parent.data.tags
    factors = json.loads(ptags[f"{TAG}factors"])
    rows, precisions, hashes, schedules = [], [], {}, {}
    for run in tracker.children(pid):
        tags = run.data.tags
        schedules.setdefault(tags[f"{TAG}arm"], set()).add(_schedule_of(run.data.params))
        row = {"arm": tags[f"{TAG}arm"], "seed": int(tags[f"{TAG}seed"]), "run_id": run.info.run_id}
        precisions.append({**row, "precision": tags.get(PRECISION_TAG)})
        hashes[(row["arm"], row["seed"])] = tags.get(f"{TAG}config_hash")
        row.update({f: run.data.params.get(f"factor.{f}") for f in factors})
        row.update(run.data.metrics)
        rows.append(row)
    failures = [
        {
            "arm": r.data.tags.get(f"{TAG}arm"),
            "seed": int(r.data.tags.get(f"{TAG}seed", -1)),
            "status": status,
            "kind": failure_kind(r.data.tags),
        }
        for status in ("FAILED", "KILLED")
        for r in tracker.children(pid, status)
    ]
    config = _parent_config(tracker, pid)
    overrides = config.get("overrides") or {}
    sequential = config.get("sequential")
    plan = json.loads(ptags[PLAN_TAG]) if ptags.get(PLAN_TAG) else None
    if sequential is not None or plan:
        # the analysis the first sequential run froze; a study that predates it: what its runs were logged with
        analysis = (plan or {}).get("analysis") or analysis_plan(
            float(config.get("alpha", 0.05)),
            ptags[f"{TAG}metric"],
            ptags[f"{TAG}direction"],
            config.get("baseline") or {},
            list(config.get("claims") or []),
            sequential,
        )
        sequential = {
            **(sequential or {}),
            "stopped": ptags.get(f"{TAG}sequential_stop"),
            "plan": {k: v for k, v in plan.items() if k != "analysis"} if plan else None,
            "analysis": analysis,
        }
    return StudyRuns(
        study,
        ptags.get(f"{TAG}profile", "?"),
        pid,
        factors,
        ptags[f"{TAG}metric"],
        ptags[f"{TAG}direction"],
        pd.DataFrame(rows),
        len(failures),
        claims=list(config.get("claims") or []),
        baseline={f: level_label(v) for f, v in (config.get("baseline") or {}).items()},
        alpha=float(config.get("alpha", 0.05)),
        failures=pd.DataFrame(failures, columns=FAILURE_COLUMNS),
        budget={k: overrides[k] for k in _BUDGET_KEYS if k in overrides},
        tracking_uri=tracker.uri,
        sequential=sequential,
        precisions=pd.DataFrame(precisions, columns=PRECISION_COLUMNS),
        config_hashes=hashes,
        budget_values=claim_budget.resolve(overrides) if config else {},
        schedules={arm: sorted(x for x in s if x is not None) for arm, s in schedules.items()},
    )


def _schedule_of(params: dict[str, str]) -> str | None:
    """A run's learning-rate schedule from its params: ``none``, ``step``, ``cosine+warmup``, ... (None: not logged)."""
    name = params.get("schedule.name")
    if name is None:  # not logged (runs made by hand, or before the schedule was a config key)
        return None
    warm = params.get("schedule.warmup_epochs", "0")
    return f"{name}+warmup" if warm not in ("0", "0.0", "") else name


DIVERGED = "diverged"  # a run whose training diverged: an outcome of its arm
INFRASTRUCTURE = "infrastructure"  # a run that failed for reasons outside training: killed, out of memory, lost worker


def failure_kind(tags: dict[str, str]) -> str:
    """Whether a failed child run diverged (tag ``ablate.outcome`` = ``diverged``, or a reason that says so) or
    failed for reasons outside training (``infrastructure``: killed, out of memory, a lost worker, an error)."""
    if tags.get(OUTCOME_TAG) == DIVERGED or "training diverged" in tags.get(f"{TAG}failure", ""):
        return DIVERGED
    return INFRASTRUCTURE


def _parent_config(tracker: Tracker, run_id: str) -> dict:
    from mlflow.exceptions import MlflowException

    key, before = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ[key] = "false"  # no progress bar on the terminal for one small file
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = tracker.client.download_artifacts(run_id, "config.yaml", tmp)
            return yaml.safe_load(Path(path).read_text()) or {}
    except (MlflowException, OSError, yaml.YAMLError):
        return {}
    finally:
        if before is None:
            os.environ.pop(key)
        else:
            os.environ[key] = before


def load_histories(sr: StudyRuns, keys: tuple[str, ...] = CURVE_METRICS) -> pd.DataFrame:
    """Per-epoch metric histories of every finished run (MLflow ``get_metric_history``).

    Args:
        sr: the study's runs (with ``tracking_uri``).
        keys: metric names to read.

    Returns:
        Long table with columns ``arm``, ``seed``, ``epoch`` (the MLflow step),
        ``metric`` and ``value`` (as logged: accuracies as fractions).
    """
    tracker = Tracker(sr.tracking_uri)
    rows = [
        {"arm": run.arm, "seed": run.seed, "epoch": m.step, "metric": key, "value": m.value}
        for run in sr.runs.itertuples()
        for key in keys
        for m in tracker.client.get_metric_history(run.run_id, key)
    ]
    return pd.DataFrame(rows, columns=["arm", "seed", "epoch", "metric", "value"])


# --------------------------------------------------------------------------------------------- by epoch

BY_EPOCH_COLUMNS = ["kind", "comparison", "vs", "epoch", "n", "estimate", "ci_low", "ci_high", "test"]


def epoch_metric(metric: str) -> str:
    """The per-epoch form of a study metric, as every run logs it after each epoch (MLflow step = epoch).

    ``val_acc``, ``val_loss``, ``train_acc`` and ``train_loss`` are their own; a test metric's form is the
    validation one (``test_acc`` -> ``val_acc``, ``test_loss`` -> ``val_loss``); any other accuracy
    (``test_top3``, ``train_test_acc_gap``) takes ``val_acc``, anything else ``val_loss``.
    """
    if metric in CURVE_METRICS:
        return metric
    if metric.startswith("test_") and f"val_{metric.removeprefix('test_')}" in CURVE_METRICS:
        return f"val_{metric.removeprefix('test_')}"
    return "val_acc" if _is_accuracy(metric) else "val_loss"


def effect_by_epoch(r: Report, history: pd.DataFrame | None = None, level: float = 0.95) -> dict:
    """Each comparison's paired difference of the per-epoch metric after every epoch, with its interval.

    For every comparison of the report (each arm against the baseline, main effects and interactions,
    and each claim on the study metric, weights as in :func:`build_report`) and every epoch ``e``, the
    contrast of the runs' :func:`epoch_metric` logged after epoch ``e`` (``val_acc`` for ``test_acc``),
    paired by seed where the arms share two or more seeds at that epoch (``stats.contrast``: the
    one-sample t interval of the per-seed contrasts, ``scipy.stats.ttest_1samp``; Welch t otherwise).
    The runs are the report's (for a sequential study, those of the look its tables come from); runs
    that diverged have no finished history and are left out.

    The intervals are pointwise: each holds for its epoch alone, with no correction for the number of
    epochs or comparisons and no sequential guarantee, so they describe how the effect developed and
    decide nothing; the verdicts stay those of the final study metric. With a constant learning rate
    the value after epoch ``e`` is what a run of ``e`` epochs with the same seed reaches at its last
    epoch; with a schedule (or warmup) it is not, since the schedule is laid out over the whole run.

    Args:
        r: the report (:func:`build_report`); its runs need ``tracking_uri`` unless ``history`` is given.
        history: the per-epoch history (:func:`load_histories` columns); default: read from MLflow.
        level: confidence level of the pointwise intervals, in (0, 1).

    Returns:
        A JSON-ready dict (but ``rows``): ``metric`` (the per-epoch metric), ``final_metric``,
        ``level``, ``unit`` (of the differences: ``pp`` for accuracies), ``pointwise`` and
        ``descriptive`` (True), ``constant_lr`` (True, False, or None when the runs did not record their
        schedule), ``schedules`` (arm -> schedules), ``notes`` (the sentences every format prints) and
        ``rows``: a DataFrame with :data:`BY_EPOCH_COLUMNS` (``estimate``, ``ci_low``, ``ci_high`` in the
        report's difference unit; ``n`` seeds paired, or the smaller arm's count when unpaired).

    Raises:
        ValueError: ``level`` outside (0, 1).
    """
    import warnings

    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    sr = r.runs
    metric = epoch_metric(sr.metric)
    scale = _scale(metric)
    if history is None:
        history = load_histories(sr, (metric,)) if sr.tracking_uri and not sr.runs.empty else pd.DataFrame()
    h = history[history["metric"] == metric] if not history.empty else history
    arms = _arms(sr.factors)
    base_levels = {f: sr.baseline.get(f, levels[0]) for f, levels in sr.factors.items()}
    base_arm = " ".join(f"{f}={lv}" for f, lv in base_levels.items())
    specs = [(k, label, vs, w) for k, label, vs, w in _comparisons(sr, arms, base_levels, base_arm)]
    for i, c in enumerate(sr.claims, 1):
        if (c.get("metric") or sr.metric) == sr.metric:
            treat, control = _labels(c["treatment"]), _labels(c["control"])
            label = f"claim {i}: {_arm_label(treat)} vs {_arm_label(control)}"
            specs.append(("claim", label, _arm_label(control), _weights(arms, treat, control)))
    rows = []
    epochs: list[int] = []
    if not h.empty:
        table = h.assign(value=h["value"].astype(float) * scale).drop_duplicates(["arm", "seed", "epoch"], keep="last")
        epochs = sorted(int(e) for e in table["epoch"].unique())
        per_epoch = {
            int(e): {
                arm: pd.Series(ga["value"].to_numpy(), index=pd.Index(ga["seed"].to_numpy(), name="seed"))
                for arm, ga in g.groupby("arm")
            }
            for e, g in table.groupby("epoch")
        }
        for kind, label, vs, w in specs:  # one comparison after another, each epoch by epoch
            for e in epochs:
                series = per_epoch[e]
                if not w or not all(a in series for a in w):
                    continue
                with warnings.catch_warnings(), np.errstate(all="ignore"):
                    warnings.simplefilter("ignore")  # two seeds, no spread: scipy warns, the row says "-"
                    c = stats.contrast(series, w, level)
                rows.append(
                    {
                        "kind": kind,
                        "comparison": label,
                        "vs": vs,
                        "epoch": e,
                        "n": c.n,
                        "estimate": c.estimate,
                        "ci_low": c.ci_low,
                        "ci_high": c.ci_high,
                        "test": c.test,
                    }
                )
    df = pd.DataFrame(rows, columns=BY_EPOCH_COLUMNS)
    schedules = {arm: list(v) for arm, v in sr.schedules.items() if arm in set(sr.runs.get("arm", []))}
    kinds = sorted({x for v in schedules.values() for x in v})
    constant = None if not kinds else kinds == ["none"]
    return {
        "metric": metric,
        "final_metric": sr.metric,
        "level": level,
        "unit": "pp" if scale == 100.0 else "",
        "pointwise": True,
        "descriptive": True,
        "constant_lr": constant,
        "schedules": schedules,
        "notes": _by_epoch_notes(sr, metric, level, df, epochs, constant, kinds),
        "rows": df,
    }


def _by_epoch_notes(
    sr: StudyRuns, metric: str, level: float, df: pd.DataFrame, epochs: list[int], constant, kinds: list[str]
) -> list[str]:
    """What the by-epoch numbers are and are not, in sentences every format prints."""
    if df.empty:
        return [
            f"no effect by epoch: the runs logged no per-epoch {metric} (MLflow metric history), or no "
            "comparison has runs in both arms"
        ]
    comparisons = df["comparison"].nunique()
    notes = [
        f"pointwise {level:.0%} t intervals of the paired difference (by seed) in {metric} after each epoch, "
        f"each valid for its epoch alone: not corrected for the {len(epochs)} epoch(s) or {comparisons} "
        f"comparison(s) and not sequential, so they are descriptive; the verdicts are those of the final "
        f"{sr.metric}, not of any epoch here",
    ]
    if metric != sr.metric:
        notes.append(
            f"{metric} is measured after every epoch on the validation split held out of training; "
            f"{sr.metric} once, on the test set, with the weights each run kept"
        )
    if constant:
        notes.append(
            f"constant learning rate (schedule.name none): the {metric} after epoch e is what a run of e epochs "
            "with the same seed reaches at its last epoch (such a run may keep an earlier epoch's weights)"
        )
    elif constant is False:
        notes.append(
            f"learning-rate schedule ({', '.join(kinds)}): the {metric} after epoch e is not what a run of e "
            "epochs gives, because the schedule is laid out over the whole run (a shorter run decays its rate "
            "sooner)"
        )
    else:
        notes.append(
            "the runs did not record their learning-rate schedule: with a schedule, the value after epoch e "
            "is not what a run of e epochs gives"
        )
    per_epoch = df.groupby("epoch")["n"].max()
    if len(per_epoch) > 1 and per_epoch.iloc[-1] < per_epoch.iloc[0]:
        fewer = int(per_epoch[per_epoch < per_epoch.iloc[0]].index.min())
        notes.append(
            f"fewer seeds from epoch {fewer} on: runs that stopped early (train.early_stopping) or trained "
            "fewer epochs have no value there"
        )
    if not sr.failures.empty and (sr.failures["kind"] == DIVERGED).any():
        notes.append("runs whose training diverged are left out here (the final verdicts count them)")
    return notes


# --------------------------------------------------------------------------------------------- parent run


def metric_key(name: str) -> str:
    """``name`` as an MLflow metric name: MLflow allows only letters, digits, ``_ - . : /`` and spaces, so an
    arm's ``=`` becomes ``:`` (``batchnorm=false`` -> ``batchnorm:false``) and any other character ``_``."""
    out = name.replace("=", ":")
    return "".join(ch if ch.isalnum() or ch in "_-.:/ " else "_" for ch in out)


def summary_metrics(r: Report) -> dict[str, float]:
    """The answer of a report as MLflow metrics for the study's parent run, in the report's units.

    Names (arm labels through :func:`metric_key`): ``arm.<arm>.<metric>_mean``, ``_low`` and ``_high``
    (each arm's mean and 95% t interval of the study metric); ``effect.<comparison>.estimate``, ``.low``
    and ``.high`` (each comparison of the effects table: arms against the baseline, main effects,
    interactions, with the report's interval: the fixed-n t interval, or a sequential study's sequential
    one); ``claim.<i>.estimate``, ``.low``, ``.high`` (claims numbered from 1); ``seeds_per_arm`` (the
    fewest seeds of an arm). Accuracies in percent, differences in percent points.

    Args:
        r: the report.

    Returns:
        Metric name -> value; comparisons without a value (too few runs) are left out.
    """
    m = r.runs.metric
    out: dict[str, float] = {}
    for row in r.arms.to_dict("records"):
        for suffix, col in (("mean", "mean"), ("low", "ci_low"), ("high", "ci_high")):
            out[metric_key(f"arm.{row['arm']}.{m}_{suffix}")] = row[col]
    for row in r.effects.to_dict("records"):
        for suffix, col in (("estimate", "estimate"), ("low", "ci_low"), ("high", "ci_high")):
            out[metric_key(f"effect.{row['effect']}.{suffix}")] = row.get(col, math.nan)
    for i, row in enumerate(r.claims.to_dict("records"), 1):
        for suffix, col in (("estimate", "estimate"), ("low", "ci_low"), ("high", "ci_high")):
            out[f"claim.{i}.{suffix}"] = row.get(col, math.nan)
    if not r.arms.empty:
        out["seeds_per_arm"] = float(r.arms["n"].min())
    return {k: float(v) for k, v in out.items() if v is not None and v == v and abs(float(v)) != math.inf}


# --------------------------------------------------------------------------------------------- the tables


@dataclass
class Report:
    """The report's tables and what they were computed with.

    Attributes:
        runs: the input.
        alpha: significance level of the verdicts (and 1 - level of the claims' intervals).
        effect: the effect size given for the seeds-needed column (report unit), or None.
        scale, unit: metric values are multiplied by ``scale`` (100 for accuracies) and
            shown in ``unit`` (``%``; differences in ``pp``) or as logged (``""``).
        baseline: the baseline arm's name.
        arms: one row per arm (see :func:`build_report`).
        effects: one row per comparison.
        claims: one row per claim.
        sequential: for a sequential study, ``looks`` (one dict per look: ``look``, ``seeds``,
            ``decided``, ``comparisons``), ``stopped`` (``decided``, ``max_seeds``, ``timeout`` or
            ``None`` while it runs), ``at`` (the look the tables come from) and the design; else ``None``.
        outliers: per-seed differences of an arm to the baseline far from that arm's other seeds
            (``stats.outlying``): ``effect``, ``seed``, ``difference``, ``median``, ``z``, in the report unit.
        mixed_precision: the runs of a study that trained in different precisions where the study
            does not vary the precision itself (:func:`precision_mix`): ``precision``, ``arm``, ``seed``,
            ``run_id``; empty when every run that should share a precision does.
        exploratory: for a sequential study reported with an alpha or claims other than its recorded
            analysis plan, the deciding comparisons at the same look with those (``alpha``, ``changed``:
            ``key``, ``recorded``, ``asked``; ``seeds``, ``comparisons``); not error-controlled. Else None.
        by_epoch: the effect of every comparison after each epoch (:func:`effect_by_epoch`), once
            computed (``ablate report --by-epoch``, JSON, HTML, the figures); else None.
    """

    runs: StudyRuns
    alpha: float
    effect: float | None
    scale: float
    unit: str
    baseline: str
    arms: pd.DataFrame
    effects: pd.DataFrame
    claims: pd.DataFrame
    sequential: dict | None = None
    outliers: pd.DataFrame = field(default_factory=pd.DataFrame)
    mixed_precision: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=MIX_COLUMNS))
    exploratory: dict | None = None
    by_epoch: dict | None = None

    @property
    def diff_unit(self) -> str:
        """Unit of differences: ``pp`` (percent points) for accuracies, else none."""
        return "pp" if self.unit == "%" else ""

    @property
    def budget(self) -> str:
        """The budget the numbers came from, e.g. ``profile quick (train.epochs=4), 3 seeds per arm``."""
        b = self.runs.budget
        settings = f" ({', '.join(f'{k}={v}' for k, v in b.items())})" if b else ""
        n = self.arms["n"]
        if n.empty:
            return f"profile {self.runs.profile}{settings}"
        seeds = f"{int(n.min())}" if n.min() == n.max() else f"{int(n.min())}-{int(n.max())}"
        return f"profile {self.runs.profile}{settings}, {seeds} seeds per arm"


def _is_accuracy(metric: str) -> bool:
    """Accuracies and differences of accuracies: fractions, shown in percent (points)."""
    return metric.endswith(("acc", "top3", "acc_gap"))


def _arms(factors: dict[str, list[str]]) -> list[tuple[str, dict[str, str]]]:
    names = list(factors)
    out = []
    for combo in itertools.product(*(factors[n] for n in names)):
        levels = dict(zip(names, combo, strict=True))
        out.append((" ".join(f"{n}={lv}" for n, lv in levels.items()), levels))
    return out


def _series(sr: StudyRuns, metric: str, scale: float) -> dict[str, pd.Series]:
    """Each arm's values of ``metric`` by seed (times ``scale``); for the study metric, a diverged run counts.

    A run whose training diverged is an outcome of its arm, not a missing value: dropping it would
    favour the unstable arm (it is missing because of its arm, not at random). It takes what its weights
    score (:func:`diverged_value`): a network with NaN weights outputs NaN, and its prediction is one
    constant class, so its accuracy is chance; a loss takes the worst value any finished run of the study
    scored at this look (worst-rank imputation, Lachin 1999, "Worst-rank score analysis with informatively
    missing observations in clinical trials", Controlled Clinical Trials 20). Claims about another metric
    leave diverged runs out.
    """
    if metric not in sr.runs:
        return {}
    arm_of = sr.runs["arm"].to_numpy(dtype=object)
    seed_of = sr.runs["seed"].to_numpy()
    value_of = pd.to_numeric(sr.runs[metric], errors="coerce").to_numpy(dtype=float)
    out = {}
    for arm in sorted(set(arm_of)):  # numpy masks: the replay of a sequential study does this at every look
        keep = (arm_of == arm) & ~np.isnan(value_of)
        if keep.any():
            out[arm] = pd.Series(value_of[keep] * scale, index=pd.Index(seed_of[keep], name="seed"), name=metric)
    cells = _diverged_cells(sr) if metric == sr.metric else set()
    values = sr.runs[metric].astype(float).dropna()
    if cells and not values.empty:
        worst = diverged_value(metric, values) * scale
        for arm in sorted({a for a, _ in cells}):
            extra = pd.Series(worst, index=sorted(s for a, s in cells if a == arm), dtype=float)
            out[arm] = pd.concat([out[arm], extra]).sort_index() if arm in out else extra
            out[arm].index.name = "seed"
    return out


CHANCE = {"test_acc": 0.1, "val_acc": 0.1, "train_acc": 0.1, "test_top3": 0.3}  # 10 balanced classes


def diverged_value(metric: str, finished: pd.Series) -> float:
    """The value of ``metric`` a run whose training diverged counts with (as logged: accuracies as fractions).

    What its weights score: NaN outputs make ``argmax`` pick one constant class, right on one class in ten
    of CIFAR-10's balanced test set, so top-1 accuracy is 0.1 and top-3 0.3 (chance). A loss has no such
    value (it is NaN): the worst, the largest, any finished run of the study scored (``finished``; worst-rank
    imputation, Lachin 1999).

    Args:
        metric: the study metric.
        finished: its values over the study's finished runs (at this look).

    Returns:
        The value.
    """
    if metric in CHANCE:
        return CHANCE[metric]
    return float(finished.max())


def _diverged_cells(sr: StudyRuns) -> set[tuple[str, int]]:
    """``(arm, seed)`` of the runs that diverged and have no finished run (each counted once)."""
    if sr.failures.empty or "kind" not in sr.failures:
        return set()
    done = set(zip(sr.runs["arm"], sr.runs["seed"], strict=True)) if not sr.runs.empty else set()
    f = sr.failures[sr.failures["kind"] == DIVERGED]
    return {(a, int(seed)) for a, seed in zip(f["arm"], f["seed"], strict=True) if (a, int(seed)) not in done}


def _identical(sr: StudyRuns, w: dict) -> bool:
    """Whether the two arms of a difference are one configuration under two labels (equal config hashes at
    every seed both ran), so that a zero difference at every seed is exact, not a coincidence of rounding."""
    if len(w) != 2 or not sr.config_hashes or sr.runs.empty:
        return False
    a, b = list(w)
    seeds = set(sr.runs.loc[sr.runs["arm"] == a, "seed"]) & set(sr.runs.loc[sr.runs["arm"] == b, "seed"])
    hashes = sr.config_hashes
    return bool(seeds) and all(
        hashes.get((a, s)) is not None and hashes.get((a, s)) == hashes.get((b, s)) for s in seeds
    )


def _weights(arms: list[tuple[str, dict[str, str]]], treat: dict[str, str], control: dict[str, str]) -> dict:
    """+1/|T| for the arms matching ``treat``, -1/|C| for those matching ``control`` (others averaged over)."""
    t = [a for a, lv in arms if all(lv[f] == v for f, v in treat.items())]
    c = [a for a, lv in arms if all(lv[f] == v for f, v in control.items())]
    w = dict.fromkeys(t + c, 0.0)
    for a in t:
        w[a] += 1 / len(t)
    for a in c:
        w[a] -= 1 / len(c)
    return {a: v for a, v in w.items() if v != 0}


def _interaction_weights(arms, f: str, lf: str, bf: str, g: str, lg: str, bg: str) -> dict:
    """(F=lf,G=lg) - (F=lf,G=bg) - (F=bf,G=lg) + (F=bf,G=bg), averaged over the other factors."""
    cells = {(lf, lg): 1.0, (lf, bg): -1.0, (bf, lg): -1.0, (bf, bg): 1.0}
    chosen = [(a, cells[(lv[f], lv[g])]) for a, lv in arms if (lv[f], lv[g]) in cells]
    k = len(chosen) / 4
    return {a: w / k for a, w in chosen}


def _same_contrast(a: dict, b: dict) -> int:
    """1 if the weights are equal, -1 if opposite, 0 otherwise."""
    if set(a) != set(b):
        return 0
    for sign in (1, -1):
        if all(math.isclose(a[k], sign * b[k]) for k in a):
            return sign
    return 0


def build_report(sr: StudyRuns, alpha: float | None = None, effect: float | None = None) -> Report:
    """Compute the arm, effect and claim tables of a study (of a sequential study: at its last look).

    A sequential study (``sr.sequential``) is judged look by look (:func:`sequential_looks`): every
    comparison gets a sequential interval (``stats.sequential_contrast``: the repeated confidence
    interval at a planned look, intersected with the anytime-valid sequence; Bonferroni over the
    comparisons of its family), intersected with those of its earlier looks, instead of the fixed-n t
    interval, and the tables are those of the look it stopped at (or of the last complete look while it
    runs). Its verdicts follow the analysis plan its first sequential run recorded (alpha, margins,
    baseline, claims: :func:`analysis_plan`); an ``alpha`` or claims other than those give, beside the
    recorded verdicts, an exploratory view at the same look (``Report.exploratory``), whose error rate
    nothing controls.

    Args:
        sr: the study's runs.
        alpha: significance level of the verdicts; ``None`` takes the study's (default 0.05). For a
            sequential study with a recorded plan, another value gives the exploratory view.
        effect: effect size (report unit: percent points for accuracies) for the
            seeds-needed column; ``None`` uses the claimed size of a claim on the
            same comparison, else the observed difference.

    Returns:
        A :class:`Report`. ``arms`` columns: ``arm``, one per factor, ``n``, ``mean``, ``std``,
        ``ci_low``, ``ci_high`` (95% t), then the difference to the baseline arm (``diff``,
        ``diff_low``, ``diff_high``, ``test``, ``p``, ``p_holm``, ``p_check``, ``effect_size``,
        ``seeds_needed``, ``verdict``), ``median``, ``failed`` (seeds lost outside training, not
        counted), ``diverged`` (seeds whose training diverged, counted at the study's worst value).
        ``effects`` columns: ``kind`` (``arm``, ``main``, ``interaction``), ``effect``, ``vs``, ``n``,
        ``estimate``, ``ci_low``, ``ci_high``, ``test``, ``p``, ``p_holm``, ``check``, ``p_check``,
        ``effect_size_kind``, ``effect_size``, ``sd``, ``target``, ``target_from``, ``power_alpha``,
        ``seeds_needed``, ``verdict``. ``claims`` columns: ``claim``, ``source``, ``metric``,
        ``treatment``, ``control``, ``direction``, ``min_effect``, ``n``, ``estimate``, ``ci_low``,
        ``ci_high``, ``level``, ``test``, ``p``, ``target``, ``seeds_needed``, ``verdict``.

    Raises:
        ReportError: there are no finished runs.
        ValueError: alpha outside (0, 1).
    """
    if sr.runs.empty:
        raise ReportError(f"study '{sr.study}' has no finished runs yet")
    asked = sr.alpha if alpha is None else alpha
    if not 0 < asked < 1:
        raise ValueError(f"alpha must be in (0, 1), got {asked}")
    if sr.sequential is None:
        return _build(sr, asked, effect)
    official, changed = _frozen(sr, alpha)
    looks, stopped = sequential_looks(official, None, effect)
    if not looks:  # the first look is not complete yet: the tables of what there is, not a planned look
        r = _build(official, official.alpha, effect, sequential=True, plan=look_plan(official), look=0)
        at = None
    else:
        r = looks[-1].pop("_report")
        at = len(looks) - 1
        for look in looks:
            look.pop("_report", None)
    design = {k: v for k, v in official.sequential.items() if k != "stopped"}
    lost = {kind: sum(_failed_cells(sr, kind).values()) for kind in (DIVERGED, INFRASTRUCTURE)}
    r.sequential = {**design, "looks": looks, "stopped": stopped, "at": at, "failures": lost}
    if changed:
        r.exploratory = _exploratory(sr, asked, effect, looks[at]["seeds"] if looks else None, changed)
    return r


ANALYSIS_KEYS = (
    "alpha",
    "metric",
    "direction",
    "baseline",
    "claims",
    "equivalence_margin",
    "interaction_margin",
    "stop_on_direction",
)
_CLAIM_TEST = ("treatment", "control", "metric", "direction", "min_effect")


def analysis_plan(
    alpha: float,
    metric: str,
    direction: str,
    baseline: dict,
    claims: list[dict],
    sequential: dict | None,
) -> dict:
    """The analysis a sequential study's first sequential run freezes with its looks (tag ``ablate.sequential_plan``).

    Everything a verdict depends on besides the runs: alpha, the metric and its direction, the
    baseline arm, the claims (what each tests: treatment, control, metric, direction, ``min_effect``;
    their words travel along), the equivalence margins and whether a confirmed direction stops the
    study. Looks chosen before the data keep their error rate only if the decision rule was also
    chosen before (Jennison & Turnbull 2000, "Group Sequential Methods with Applications to Clinical
    Trials", sect. 1.3: the protocol fixes the analysis); a rule loosened after an undecided look would
    make a decision more likely at the next one.

    Args:
        alpha: the study's alpha.
        metric: the study metric.
        direction: ``maximize`` or ``minimize``.
        baseline: factor -> level of the baseline arm.
        claims: the claims (dicts with the keys of ``ablations.study.Claim``).
        sequential: the ``sequential`` block as a dict (its margins and ``stop_on_direction``), or None.

    Returns:
        A JSON-ready dict with the keys of ``ANALYSIS_KEYS``.
    """
    seq = sequential or {}
    return {
        "alpha": float(alpha),
        "metric": metric,
        "direction": direction,
        "baseline": {f: level_label(v) for f, v in (baseline or {}).items()},
        "claims": [
            {
                **{k: c.get(k) for k in ("source", "text")},
                **{k: c[k] for k in ("tests", "budget", "claimed_budget") if c.get(k) is not None},
                "treatment": _labels(c["treatment"]),
                "control": _labels(c["control"]),
                "metric": c.get("metric"),
                "direction": c["direction"],
                "min_effect": c.get("min_effect"),
            }
            for c in claims or []
        ],
        "equivalence_margin": seq.get("equivalence_margin"),
        "interaction_margin": seq.get("interaction_margin"),
        "stop_on_direction": bool(seq.get("stop_on_direction", False)),
    }


def plan_differences(recorded: dict, current: dict) -> list[tuple[str, object, object]]:
    """The keys of an analysis plan (:func:`analysis_plan`) whose current value differs from the recorded one.

    A claim's words (``text``, ``source``) may change; what it tests may not. A key the recorded plan
    lacks (recorded by an older version) is not compared.

    Returns:
        ``(key, recorded value, current value)`` for each key that differs, in ``ANALYSIS_KEYS`` order.
    """

    def tested(claims):
        return [{k: c.get(k) for k in _CLAIM_TEST} for c in claims or []]

    out = []
    for key in ANALYSIS_KEYS:
        if key not in recorded:
            continue
        was, now = recorded[key], current.get(key)
        if key == "claims":
            was, now = tested(was), tested(now)
        elif key == "baseline":  # factors the recorded plan does not name keep their first level
            now = {f: v for f, v in (now or {}).items() if f in (was or {})}
        if was != now and not (isinstance(was, float) and isinstance(now, float) and math.isclose(was, now)):
            out.append((key, recorded[key], current.get(key)))
    return out


def _frozen(sr: StudyRuns, alpha: float | None = None) -> tuple[StudyRuns, list[tuple[str, object, object]]]:
    """A sequential study's runs judged by its recorded analysis plan, and what the caller asked that differs.

    ``sr.sequential["analysis"]`` is the plan (:func:`load_runs` reads it from the parent run); without one
    (runs constructed in memory) the study's own settings are the plan.
    """
    analysis = (sr.sequential or {}).get("analysis")
    if not analysis:
        return (sr if alpha is None else dataclasses.replace(sr, alpha=alpha)), []
    current = analysis_plan(
        sr.alpha if alpha is None else alpha, sr.metric, sr.direction, sr.baseline, sr.claims, sr.sequential
    )
    changed = [d for d in plan_differences(analysis, current) if d[0] != "metric" and d[0] != "direction"]
    claims = sr.claims
    if any(key == "claims" for key, _, _ in changed):
        claims = [dict(c) for c in analysis["claims"]]
    seq = {**sr.sequential, **{k: analysis.get(k) for k in ANALYSIS_KEYS[5:] if k in analysis}}
    official = dataclasses.replace(
        sr,
        alpha=float(analysis.get("alpha", sr.alpha)),
        baseline=dict(analysis.get("baseline", sr.baseline)),
        claims=claims,
        sequential=seq,
    )
    return official, changed


def _exploratory(sr: StudyRuns, alpha: float, effect, seeds: int | None, changed: list) -> dict:
    """The deciding comparisons at the look the recorded plan stopped at, with the settings asked for instead.

    Not error-controlled: the look was chosen by the recorded rule, and a rule picked after seeing it
    (a larger alpha, a claim made smaller) can always find a decision.
    """
    out = {
        "alpha": alpha,
        "changed": [{"key": k, "recorded": was, "asked": now} for k, was, now in changed],
        "seeds": seeds,
        "comparisons": [],
    }
    design = sr.sequential.get("looks") or []
    seed_lists = [lst for lst in design if len(lst) == seeds] if seeds else []
    if not seed_lists:
        return out
    asked = dataclasses.replace(sr, sequential={k: v for k, v in sr.sequential.items() if k != "analysis"})
    sub = asked.restricted(seed_lists[0])
    r = _build(sub, alpha, effect, sequential=True, plan=look_plan(sr), look=seeds)
    out["comparisons"] = [
        {k: row.get(k) for k in ("effect", "estimate", "ci_low", "ci_high", "verdict")}
        for row in _deciding(r).to_dict("records")
    ]
    return out


def _decided(verdict: str, direction_stops: bool = False) -> bool:
    """Whether a deciding comparison's verdict decides it; a claim's confirmed direction with its size not
    resolved does only when the study asks to stop on direction (``sequential.stop_on_direction``)."""
    if verdict.startswith(stats.DIRECTION_ONLY):
        return direction_stops
    return verdict.startswith(("better", "worse", "equivalent", "supported", "contradicted")) or verdict.endswith(
        "e interaction"
    )


def sequential_looks(sr: StudyRuns, alpha: float | None = None, effect: float | None = None) -> tuple[list, str | None]:
    """Replay a sequential study's looks from its runs, stopping at the first decided one.

    A look is complete when every arm has a finished run, or one whose training diverged (an outcome of
    its arm), for each of its seeds; a run lost to the infrastructure (killed, out of memory, a lost worker)
    leaves its look incomplete until it is trained again. At each complete look the deciding comparisons
    (the claims on the study when it has any, else every arm against the baseline) are judged with
    sequential intervals (:func:`look_plan`), each intersected with its intervals of the earlier looks
    (``stats.intersect``), so a decided verdict stays decided; the study is decided when every one of them is
    (``better``, ``worse``, ``equivalent``; for claims ``supported``, ``contradicted`` or ``equivalent``,
    and a confirmed direction only with ``stop_on_direction``). The verdicts follow the recorded analysis
    plan (:func:`analysis_plan`). Because the intervals hold at every look at once (``stats.repeated_ci``
    over the planned looks, ``stats.t_cs`` over all), stopping at the first decided look keeps the stated
    error rate.

    Args:
        sr: the runs, with ``sr.sequential`` (its ``looks``: seeds per arm of each look).
        alpha: error rate of each family (default: the study's); a recorded analysis plan's alpha wins.
        effect: as in :func:`build_report`.

    Returns:
        ``(looks, stopped)``: one dict per complete look up to the stop (``look`` from 1, ``seeds``
        per arm, ``decided``, ``comparisons``: ``effect``, ``estimate``, ``ci_low``, ``ci_high``,
        ``verdict`` of each deciding comparison, and ``_report``, that look's :class:`Report`: in full at
        the last look, without check lines before it), and
        ``decided``, ``max_seeds`` (every look done, not decided), ``timeout`` (the runner's tag) or
        ``None`` (still running).

    Raises:
        ValueError: alpha outside (0, 1), or the study is not sequential.
    """
    if sr.sequential is None:
        raise ValueError(f"study '{sr.study}' is not sequential")
    sr, _ = _frozen(sr, None if (sr.sequential or {}).get("analysis") else alpha)
    alpha = sr.alpha
    done = set(zip(sr.runs["arm"], sr.runs["seed"], strict=True)) if not sr.runs.empty else set()
    done |= _diverged_cells(sr)
    arms = [a for a, _ in _arms(sr.factors)]
    plan = sr.sequential.get("looks") or []
    planned = look_plan(sr)
    direction_stops = bool(sr.sequential.get("stop_on_direction"))
    out: list[dict] = []
    prior: dict = {}
    before: dict = {}
    for k, seeds in enumerate(plan):
        if not all((a, s) in done for a in arms for s in seeds):
            break
        sub = sr.restricted(seeds)
        if sub.runs.empty:
            break
        r = _build(sub, alpha, effect, sequential=True, plan=planned, look=len(seeds), prior=prior, light=True)
        before, prior = prior, _intervals(r)
        comparisons = _deciding_records(r)
        decided = bool(comparisons) and all(_decided(str(c["verdict"]), direction_stops) for c in comparisons)
        out.append({"look": k + 1, "seeds": len(seeds), "decided": decided, "comparisons": comparisons, "_report": r})
        if decided:
            break
    if out:  # the look the tables come from, in full
        last = out[-1]
        seeds = plan[last["look"] - 1]
        full = _build(sr.restricted(seeds), alpha, effect, sequential=True, plan=planned, look=len(seeds), prior=before)
        last["_report"] = full
    if out and out[-1]["decided"]:
        return out, "decided"
    if plan and len(out) == len(plan):
        return out, "max_seeds"
    return out, ("timeout" if sr.sequential.get("stopped") == "timeout" else None)


def look_plan(sr: StudyRuns) -> stats.LookPlan | None:
    """The looks a sequential study planned before its first run (``sr.sequential["plan"]``), or None.

    None when no plan was recorded (a study that looked at its data with an earlier version, or one
    replayed from its file alone) or its boundary is ``anytime`` (the default): its intervals are then the
    anytime-valid sequence at the whole alpha. A plan recorded before boundaries were chosen is Pocock's.
    """
    plan = (sr.sequential or {}).get("plan") or {}
    if not plan.get("looks") or plan.get("boundary") == "anytime":
        return None
    return stats.LookPlan(
        tuple(plan["looks"]), float(plan.get("reserve", stats.PLAN_RESERVE)), plan.get("boundary", "pocock")
    )


def _deciding_records(r: Report) -> list[dict]:
    """:func:`_deciding` as one dict per comparison (``effect``, ``estimate``, ``ci_low``, ``ci_high``, ``test``,
    ``verdict``), read off the columns (the replay does this at every look)."""
    keys = ("estimate", "ci_low", "ci_high", "test", "verdict")
    if not r.claims.empty:
        table = r.claims
        pairs = zip(table["treatment"], table["control"], strict=True)
        labels = [f"claim {i}: {t} vs {c}" for i, (t, c) in enumerate(pairs, 1)]
    else:
        arm = (r.effects["kind"] == "arm").to_numpy()
        table = r.effects[arm]
        labels = table["effect"].tolist()
    columns = [table[k].tolist() for k in keys]
    return [
        {"effect": label, **dict(zip(keys, values, strict=True))}
        for label, values in zip(labels, zip(*columns, strict=True), strict=True)
    ]


def _deciding(r: Report) -> pd.DataFrame:
    """The comparisons that decide a sequential study: its claims, else every arm against the baseline."""
    if not r.claims.empty:
        labels = [
            f"claim {i}: {t} vs {c}"
            for i, (t, c) in enumerate(zip(r.claims["treatment"], r.claims["control"], strict=True), 1)
        ]
        return r.claims.assign(effect=labels)
    return r.effects[r.effects["kind"] == "arm"]


def _comparisons(sr: StudyRuns, arms, base_levels: dict[str, str], base_arm: str) -> list[tuple[str, str, str, dict]]:
    """Every comparison of the study's family, as ``(kind, label, vs, weights)``: each arm against the
    baseline arm, and with two or more factors each level's main effect and each pair's interaction."""
    specs: list[tuple[str, str, str, dict[str, float]]] = []
    for arm, _ in arms:
        if arm != base_arm:
            specs.append(("arm", arm, base_arm, _weights(arms, dict(_levels(arms, arm)), base_levels)))
    names = list(sr.factors)
    if len(names) >= 2:
        for f in names:
            for lv in sr.factors[f]:
                if lv != base_levels[f]:
                    specs.append(
                        ("main", f"{f}={lv}", f"{f}={base_levels[f]}", _weights(arms, {f: lv}, {f: base_levels[f]}))
                    )
        for f, g in itertools.combinations(names, 2):
            for lf in (x for x in sr.factors[f] if x != base_levels[f]):
                for lg in (x for x in sr.factors[g] if x != base_levels[g]):
                    w = _interaction_weights(arms, f, lf, base_levels[f], g, lg, base_levels[g])
                    specs.append(("interaction", f"{f}={lf} x {g}={lg}", "additive", w))
    return specs


def _build(
    sr: StudyRuns,
    alpha: float,
    effect: float | None,
    sequential: bool = False,
    plan: stats.LookPlan | None = None,
    look: int | None = None,
    prior: dict | None = None,
    light: bool = False,
) -> Report:
    """The tables of :func:`build_report`.

    ``light``: a look the replay passes through (:func:`sequential_looks`): the effects and claims only,
    no per-seed check lines.

    ``sequential``: sequential intervals (``stats.sequential_contrast`` with ``plan`` at this ``look``, the
    planned seeds per arm), Bonferroni, sequential verdicts; ``prior``: the running intersection of each
    comparison's intervals up to the last look (``(kind, label)`` or ``("claim", i)`` -> its
    :class:`~ablations.stats.Contrast`), intersected with this look's (``stats.intersect``).
    """
    scale = 100.0 if _is_accuracy(sr.metric) else 1.0
    unit = "%" if scale == 100.0 else ""
    arms = _arms(sr.factors)
    base_levels = {f: sr.baseline.get(f, levels[0]) for f, levels in sr.factors.items()}
    base_arm = " ".join(f"{f}={lv}" for f, lv in base_levels.items())
    series = _series(sr, sr.metric, scale)
    claim_weights = [
        (_weights(arms, _labels(c["treatment"]), _labels(c["control"])), c.get("min_effect"))
        for c in sr.claims
        if (c.get("metric") or sr.metric) == sr.metric
    ]

    specs = _comparisons(sr, arms, base_levels, base_arm)

    contrasts: list[Contrast | None] = []
    testable = [all(a in series for a in w) for _, _, _, w in specs]
    m_all = max(sum(testable), 1)
    for (kind, label, _, w), ok in zip(specs, testable, strict=True):
        if not ok:
            contrasts.append(None)
        elif sequential:
            c = stats.sequential_contrast(series, w, alpha / m_all, plan=plan, look=look)
            contrasts.append(_running(c, (prior or {}).get((kind, label))))
        else:
            contrasts.append(stats.contrast(series, w))
    p_raw = np.array([c.p if c is not None else math.nan for c in contrasts])
    p_holm = np.minimum(p_raw * m_all, 1.0) if sequential else stats.holm(p_raw)  # sequential: Bonferroni
    m = int(np.sum(~np.isnan(p_raw)))
    power_alpha = alpha / max(m, 1)  # Bonferroni bound on Holm's strictest threshold
    maximize = sr.direction == "maximize"
    rows = []
    for (kind, label, vs, w), c, ph in zip(specs, contrasts, p_holm, strict=True):
        row: dict = {"kind": kind, "effect": label, "vs": vs}
        if c is None:
            missing = ", ".join(a for a in w if a not in series)
            rows.append({**row, "verdict": f"not possible: no runs of {missing}"})
            continue
        target, target_from = _target(effect, w, claim_weights, c)
        # a sequential study adds seeds until it decides: no seeds-needed column
        need = None if sequential else stats.seeds_needed(target, c.sd, power_alpha, POWER, c.paired, c.weight_ss)
        if sequential:
            v = stats.sequential_verdict(c, maximize, _margin(sr, kind), identical=_identical(sr, w))
            if kind == "interaction" and v in ("better", "worse"):
                v = "positive interaction" if c.estimate > 0 else "negative interaction"
        elif kind == "interaction":
            v = _interaction_verdict(c, ph, alpha)
        else:
            v = stats.verdict(c, ph, alpha, maximize)
        rows.append(
            {
                **row,
                "n": c.n,
                "estimate": c.estimate,
                "ci_low": c.ci_low,
                "ci_high": c.ci_high,
                "test": c.test,
                "p": c.p,
                "p_holm": ph,
                "check": c.check,
                "p_check": c.p_check,
                "effect_size_kind": c.effect_size_kind,
                "effect_size": c.effect_size,
                "sd": c.sd,
                "target": target,
                "target_from": target_from,
                "power_alpha": power_alpha,
                "seeds_needed": max(need, MIN_SEEDS) if need is not None else None,
                "verdict": v,
            }
        )
    effects = pd.DataFrame(rows, columns=_EFFECT_COLUMNS)

    failed, diverged = _failed_cells(sr), _failed_cells(sr, DIVERGED)
    arm_rows = []
    by_arm = {row["effect"]: row for row in rows if row["kind"] == "arm" and "estimate" in row}
    for arm, levels in [] if light else arms:  # a look the replay passes through needs no arm table
        s = stats.summarize(series.get(arm, pd.Series(dtype=float)))
        row = {
            "arm": arm,
            **levels,
            "n": s.n,
            "mean": s.mean,
            "std": s.std,
            "ci_low": s.ci_low,
            "ci_high": s.ci_high,
        }
        if arm == base_arm:
            row.update(dict.fromkeys(_ARM_EFFECT, math.nan), test="", verdict="baseline")
        elif arm in by_arm:
            e = by_arm[arm]
            row.update({k: e[src] for k, src in _ARM_EFFECT.items()}, test=e["test"], verdict=e["verdict"])
        row.update(median=s.median, failed=failed.get(arm, 0), diverged=diverged.get(arm, 0))
        arm_rows.append(row)
    cols = ["arm", *sr.factors, "n", "mean", "std", "ci_low", "ci_high", *_ARM_EFFECT, "test", "verdict"]
    if light:
        arm_df = pd.DataFrame(columns=[*cols, "median", "failed", "diverged"])
    else:
        arm_df = pd.DataFrame(arm_rows).reindex(columns=[*cols, "median", "failed", "diverged"])
        arm_df = arm_df[arm_df["n"].gt(0) | arm_df["failed"].gt(0)].reset_index(drop=True)
        arm_df["test"] = arm_df["test"].fillna("")
    claims = _claims_table(sr, arms, alpha, effect, sequential, plan, look, prior)
    outliers = (
        pd.DataFrame()
        if light
        else _outliers(series, base_arm, [label for kind, label, _, _ in specs if kind == "arm"])
    )
    return Report(
        sr,
        alpha,
        effect,
        scale,
        unit,
        base_arm,
        arm_df,
        effects,
        claims,
        outliers=outliers,
        mixed_precision=pd.DataFrame(columns=MIX_COLUMNS) if light else precision_mix(sr),
    )


MIX_COLUMNS = ["precision", "arm", "seed", "run_id"]
_PRECISION_LEVELS = {"auto", "fp32", "bf16", "fp16"}


def _precision_factors(sr: StudyRuns) -> list[str]:
    """The study's factors that set the precision: named ``train.precision`` or ``precision``, or whose
    levels are all precision names (``[fp32, bf16]``)."""
    return [
        f
        for f, levels in sr.factors.items()
        if f in ("train.precision", "precision") or (levels and set(levels) <= _PRECISION_LEVELS)
    ]


def precision_mix(sr: StudyRuns) -> pd.DataFrame:
    """The runs that trained in different precisions where they should share one, grouped by precision.

    A study that does not vary the precision should train every run in one: a resumed study on
    another machine, or workers on hosts with and without native bf16, can mix ``auto``'s bf16 and
    fp32 runs without a word, and the arms' difference then holds the precision's. A study with a
    precision factor (:func:`_precision_factors`) varies it by design; there each arm should train
    in one precision. Runs without the tag (made before ablate recorded it) count as their own group
    ``not recorded`` when other runs have one; a study whose runs all lack it is not checked.

    Args:
        sr: the study's runs (``sr.precisions``).

    Returns:
        ``precision``, ``arm``, ``seed``, ``run_id`` of every run of the mixed study (or of the mixed
        arms, with a precision factor), sorted by precision, arm and seed; empty when nothing mixes.
    """
    p = sr.precisions
    if p is None or p.empty or p["precision"].isna().all():
        return pd.DataFrame(columns=MIX_COLUMNS)
    p = p.assign(precision=p["precision"].fillna(UNRECORDED))
    if _precision_factors(sr):
        mixed_arms = p.groupby("arm")["precision"].nunique()
        p = p[p["arm"].isin(mixed_arms[mixed_arms > 1].index)]
    elif p["precision"].nunique() < 2:
        p = p.iloc[:0]
    return p.sort_values(["precision", "arm", "seed"]).reset_index(drop=True)[MIX_COLUMNS]


def _outliers(series: dict[str, pd.Series], base_arm: str, arms: list[str]) -> pd.DataFrame:
    """Each arm's per-seed differences to the baseline that lie far from its other seeds (``stats.outlying``)."""
    cols = ["effect", "seed", "difference", "median", "z"]
    found = [
        stats.outlying(series[arm] - series[base_arm]).rename(columns={"value": "difference"}).assign(effect=arm)
        for arm in arms
        if arm in series and base_arm in series
    ]
    found = [f for f in found if not f.empty]
    return pd.concat(found, ignore_index=True)[cols] if found else pd.DataFrame(columns=cols)


def _margin(sr: StudyRuns, kind: str = "arm") -> float | None:
    """The equivalence margin of a comparison: the study's ``equivalence_margin`` for arms, main effects and
    claims; ``interaction_margin`` for interaction contrasts (a difference of differences, on its own scale).

    A claim's ``min_effect`` is its claimed size, not a margin: it is tested as such (``stats.judge_claim``).
    """
    key = "interaction_margin" if kind == "interaction" else "equivalence_margin"
    margin = (sr.sequential or {}).get(key)
    return float(margin) if margin is not None else None


_EFFECT_COLUMNS = [
    "kind",
    "effect",
    "vs",
    "n",
    "estimate",
    "ci_low",
    "ci_high",
    "test",
    "p",
    "p_holm",
    "check",
    "p_check",
    "effect_size_kind",
    "effect_size",
    "sd",
    "target",
    "target_from",
    "power_alpha",
    "seeds_needed",
    "verdict",
]
_ARM_EFFECT = {
    "diff": "estimate",
    "diff_low": "ci_low",
    "diff_high": "ci_high",
    "p": "p",
    "p_holm": "p_holm",
    "p_check": "p_check",
    "effect_size": "effect_size",
    "seeds_needed": "seeds_needed",
}


def arm_table(sr: StudyRuns, alpha: float | None = None) -> pd.DataFrame:
    """The arm table of :func:`build_report` (one row per arm, difference to the baseline included).

    Raises:
        ReportError: there are no finished runs.
    """
    return build_report(sr, alpha).arms


def _labels(levels: dict) -> dict[str, str]:
    return {f: level_label(v) for f, v in levels.items()}


def _levels(arms, arm: str) -> dict[str, str]:
    return next(lv for a, lv in arms if a == arm)


def _target(effect: float | None, w: dict, claim_weights: list, c: Contrast) -> tuple[float, str]:
    if effect is not None:
        return abs(effect), "given"
    for cw, size in claim_weights:
        if size is not None and _same_contrast(w, cw):
            return float(size), "claim"
    return abs(c.estimate), "observed"


def _interaction_verdict(c: Contrast, p_adjusted: float, alpha: float) -> str:
    if c.n < MIN_SEEDS:
        return f"not possible: < {MIN_SEEDS} seeds"
    if not p_adjusted < alpha:
        return "no detectable interaction"
    return "positive interaction" if c.estimate > 0 else "negative interaction"


def _failed_cells(sr: StudyRuns, kind: str = INFRASTRUCTURE) -> dict[str, int]:
    """Per arm, the seeds whose runs failed (``infrastructure``: killed, out of memory, an error; or
    ``diverged``) and that have no finished run; a seed that diverged counts as diverged only."""
    if sr.failures.empty:
        return {}
    done = set(zip(sr.runs["arm"], sr.runs["seed"], strict=True)) if not sr.runs.empty else set()
    diverged = _diverged_cells(sr)
    lost = {
        (a, int(s))
        for a, s in zip(sr.failures["arm"], sr.failures["seed"], strict=True)
        if (a, int(s)) not in done and ((a, int(s)) in diverged) == (kind == DIVERGED)
    }
    out: dict[str, int] = {}
    for a, _ in lost:
        out[a] = out.get(a, 0) + 1
    return out


def _claims_table(
    sr: StudyRuns,
    arms,
    alpha: float,
    effect: float | None,
    sequential: bool = False,
    plan: stats.LookPlan | None = None,
    look: int | None = None,
    prior: dict | None = None,
) -> pd.DataFrame:
    rows = []
    level = 1 - alpha
    measured = measured_budget(sr) if sr.claims else {}
    if sequential:  # the claims decide a sequential study: they share alpha (Bonferroni)
        level = 1 - alpha / max(len(sr.claims), 1)
    for i, claim in enumerate(sr.claims):
        metric = claim.get("metric") or sr.metric
        scale = 100.0 if _is_accuracy(metric) else 1.0
        treat, control = _labels(claim["treatment"]), _labels(claim["control"])
        w = _weights(arms, treat, control)
        series = _series(sr, metric, scale)
        row = {
            "claim": claim["text"],
            "source": claim["source"],
            "metric": metric,
            "treatment": _arm_label(treat),
            "control": _arm_label(control),
            "direction": claim["direction"],
            "min_effect": claim.get("min_effect"),
            "tests": claim.get("tests"),
            "measured_budget": measured,
            "claimed_budget": _claimed_budget(claim),
        }
        row["budget_same"] = _budget_same(measured, row["claimed_budget"])
        if not w or not all(a in series for a in w):
            v = "inconclusive: no runs of the treatment or control arms"
            rows.append({**row, "verdict": v, "statement": _statement(v, row)})
            continue
        if sequential:
            c = stats.sequential_contrast(series, w, 1 - level, plan=plan, look=look)
            c = _running(c, (prior or {}).get(("claim", i)))
        else:
            c = stats.contrast(series, w, level)
        target = claim.get("min_effect") or (abs(effect) if effect is not None else abs(c.estimate))
        need = None if sequential else stats.seeds_needed(target, c.sd, alpha, POWER, c.paired, c.weight_ss)
        need = max(need, MIN_SEEDS) if need is not None else None
        v = stats.judge_claim(
            c, claim["direction"], claim.get("min_effect"), margin=_margin(sr), identical=_identical(sr, w)
        )
        if sequential and v.startswith("inconclusive"):
            n = [len(series[a]) for a in w]
            why = f": {stats.NO_SPREAD}" if stats.NO_SPREAD in v else ""
            v = f"inconclusive at {min(n)} seeds per arm (profile {sr.profile}){why}"
        elif v.startswith(f"inconclusive: {stats.NO_SPREAD}"):
            pass
        elif v.startswith("inconclusive"):
            n = [len(series[a]) for a in w]
            seeds = f"{min(n)}" if min(n) == max(n) else f"{min(n)}-{max(n)}"
            few = f"; fewer than {MIN_SEEDS} give no verdict" if c.n < MIN_SEEDS else ""
            v = f"inconclusive at this budget (profile {sr.profile}, {seeds} seeds per arm{few})"
            if need is not None:
                v += f"; {need} seeds per arm would detect {target:.2f}{_du(scale)} with {POWER:.0%} power"
        rows.append(
            {
                **row,
                "n": c.n,
                "estimate": c.estimate,
                "ci_low": c.ci_low,
                "ci_high": c.ci_high,
                "level": level,
                "test": c.test,
                "p": c.p,
                "target": target,
                "seeds_needed": need,
                "verdict": v,
                "statement": _statement(v, row),
            }
        )
    cols = ["claim", "source", "metric", "treatment", "control", "direction", "min_effect", "n", "estimate"]
    cols += ["ci_low", "ci_high", "level", "test", "p", "target", "seeds_needed", "verdict", "tests"]
    cols += ["measured_budget", "claimed_budget", "budget_same", "statement"]
    return pd.DataFrame(rows, columns=cols)


def measured_budget(sr: StudyRuns) -> dict:
    """The budget a study's runs trained at: ``profile``, ``values`` (``claim_budget.resolve``) and ``text``
    (``profile quick (4 epochs, 8,000 images)``)."""
    values = sr.budget_values or claim_budget.resolve(sr.budget)
    profile = sr.profile if sr.profile not in ("base", "?") else None
    return {"profile": profile, "values": values, "text": claim_budget.describe(values, profile)}


def _claimed_budget(claim: dict) -> dict | None:
    """The budget a claim is about (``profile``, ``settings``, ``values`` and ``text``), or None when it names none.

    A claim read from a parent run carries it resolved (``claimed_budget``, ``Study.claim_records``); one
    given in memory with only ``budget:`` is resolved here, settings on top of the run config's defaults
    and a profile name by name alone (its ``values`` unknown).
    """
    got = claim.get("claimed_budget")
    if got is None and claim.get("budget") is not None:
        b = claim["budget"]
        if isinstance(b, dict):
            got = {"profile": None, "settings": dict(b), "values": claim_budget.resolve(b)}
        else:
            got = {"profile": str(b), "settings": {}, "values": None}
    if got is None:
        return None
    values = got.get("values")
    text = (
        claim_budget.describe(values, got.get("profile"), got.get("settings"))
        if values
        else f"profile {got.get('profile')}"
    )
    return {**got, "text": text}


def _budget_same(measured: dict, claimed: dict | None) -> bool | None:
    """Whether the runs trained at the claim's budget (None when the claim names none)."""
    if claimed is None:
        return None
    if not claimed.get("values"):  # a profile known by name only
        return claimed.get("profile") == measured.get("profile")
    return claim_budget.same(measured["values"], claimed["values"])


def _statement(verdict: str, row: dict) -> str:
    """The verdict as printed, with the budget it was measured at and the claim's (``claim_budget.note``)."""
    claimed = row.get("claimed_budget")
    return claim_budget.note(
        verdict, row["measured_budget"]["text"], claimed["text"] if claimed else None, row.get("budget_same")
    )


def _running(c: Contrast, previous: tuple[float, float, float] | None) -> Contrast:
    """``c`` with its interval intersected with the running intersection ``(low, high, p)`` of the earlier
    looks (``stats.intersect``) and its p-value the smallest so far (an intersection of intervals excludes 0
    exactly when one of them did)."""
    if previous is None or not c.ci_low == c.ci_low:
        return c
    lo, hi = stats.intersect(previous[:2], (c.ci_low, c.ci_high))
    p = min(c.p, previous[2]) if previous[2] == previous[2] else c.p
    return dataclasses.replace(c, ci_low=lo, ci_high=hi, p=p)


def _intervals(r: Report) -> dict:
    """The running intersections a look leaves for the next (:func:`_running`): per comparison and claim."""
    e, c = r.effects, r.claims
    cols = ("ci_low", "ci_high", "p")
    out = {
        (kind, label): (lo, hi, p)
        for kind, label, lo, hi, p in zip(e["kind"], e["effect"], *(e[k].to_numpy() for k in cols), strict=True)
        if lo == lo
    }
    for i, (lo, hi, p) in enumerate(zip(*(c[k].to_numpy() for k in cols), strict=True)):
        if lo == lo:
            out[("claim", i)] = (lo, hi, p)
    return out


def _arm_label(levels: dict[str, str]) -> str:
    return " ".join(f"{f}={v}" for f, v in levels.items())


def _scale(metric: str) -> float:
    return 100.0 if _is_accuracy(metric) else 1.0


def _du(scale: float) -> str:
    return " pp" if scale == 100.0 else ""
