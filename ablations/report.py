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

from ablations import stats
from ablations.factors import level_label
from ablations.stats import MIN_SEEDS, Contrast
from ablations.tracking import PRECISION_TAG, TAG, StoreNotFoundError, Tracker

__all__ = [
    "Report",
    "ReportError",
    "StudyRuns",
    "arm_table",
    "build_report",
    "load_histories",
    "load_runs",
]

POWER = 0.8
PLAN_TAG = f"{TAG}sequential_plan"  # on the parent run: the looks planned by the study's first sequential run
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
        failures: one row per failed or killed child run: ``arm``, ``seed``, ``status``.
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

    def restricted(self, seeds: list[int]) -> StudyRuns:
        """The same study with only the runs (and failures) of ``seeds``: what one look saw."""
        keep = set(seeds)
        runs = self.runs[self.runs["seed"].isin(keep)] if not self.runs.empty else self.runs
        fails = self.failures[self.failures["seed"].isin(keep)] if not self.failures.empty else self.failures
        return dataclasses.replace(self, runs=runs.reset_index(drop=True), failures=fails, failed=len(fails))


_BUDGET_KEYS = ("train.epochs", "data.train_subset", "data.test_subset")
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
    rows, precisions = [], []
    for run in tracker.children(pid):
        tags = run.data.tags
        row = {"arm": tags[f"{TAG}arm"], "seed": int(tags[f"{TAG}seed"]), "run_id": run.info.run_id}
        precisions.append({**row, "precision": tags.get(PRECISION_TAG)})
        row.update({f: run.data.params.get(f"factor.{f}") for f in factors})
        row.update(run.data.metrics)
        rows.append(row)
    failures = [
        {"arm": r.data.tags.get(f"{TAG}arm"), "seed": int(r.data.tags.get(f"{TAG}seed", -1)), "status": status}
        for status in ("FAILED", "KILLED")
        for r in tracker.children(pid, status)
    ]
    config = _parent_config(tracker, pid)
    overrides = config.get("overrides") or {}
    sequential = config.get("sequential")
    if sequential is not None:
        plan = ptags.get(PLAN_TAG)
        sequential = {
            **sequential,
            "stopped": ptags.get(f"{TAG}sequential_stop"),
            "plan": json.loads(plan) if plan else None,
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
        failures=pd.DataFrame(failures, columns=["arm", "seed", "status"]),
        budget={k: overrides[k] for k in _BUDGET_KEYS if k in overrides},
        tracking_uri=tracker.uri,
        sequential=sequential,
        precisions=pd.DataFrame(precisions, columns=PRECISION_COLUMNS),
    )


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
    if metric not in sr.runs:
        return {}
    return {
        arm: g.set_index("seed")[metric].astype(float).dropna() * scale
        for arm, g in sr.runs.groupby("arm")
        if g[metric].notna().any()
    }


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
    comparisons of its family) instead of the fixed-n t interval, and the tables are those of the look
    it stopped at (or of the last complete look while it runs).

    Args:
        sr: the study's runs.
        alpha: significance level of the verdicts; ``None`` takes the study's (default 0.05).
        effect: effect size (report unit: percent points for accuracies) for the
            seeds-needed column; ``None`` uses the claimed size of a claim on the
            same comparison, else the observed difference.

    Returns:
        A :class:`Report`. ``arms`` columns: ``arm``, one per factor, ``n``, ``mean``, ``std``,
        ``ci_low``, ``ci_high`` (95% t), then the difference to the baseline arm (``diff``,
        ``diff_low``, ``diff_high``, ``test``, ``p``, ``p_holm``, ``p_check``, ``effect_size``,
        ``seeds_needed``, ``verdict``), ``median``, ``failed``. ``effects`` columns: ``kind``
        (``arm``, ``main``, ``interaction``), ``effect``, ``vs``, ``n``, ``estimate``, ``ci_low``,
        ``ci_high``, ``test``, ``p``, ``p_holm``, ``check``, ``p_check``, ``effect_size_kind``,
        ``effect_size``, ``sd``, ``target``, ``target_from``, ``power_alpha``, ``seeds_needed``,
        ``verdict``. ``claims`` columns: ``claim``, ``source``, ``metric``, ``treatment``,
        ``control``, ``direction``, ``min_effect``, ``n``, ``estimate``, ``ci_low``, ``ci_high``,
        ``level``, ``test``, ``p``, ``target``, ``seeds_needed``, ``verdict``.

    Raises:
        ReportError: there are no finished runs.
    """
    if sr.runs.empty:
        raise ReportError(f"study '{sr.study}' has no finished runs yet")
    alpha = sr.alpha if alpha is None else alpha
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if sr.sequential is None:
        return _build(sr, alpha, effect)
    looks, stopped = sequential_looks(sr, alpha, effect)
    if not looks:  # the first look is not complete yet: the tables of what there is, not a planned look
        r = _build(sr, alpha, effect, sequential=True, plan=look_plan(sr), look=0)
        at = None
    else:
        r = looks[-1].pop("_report")
        at = len(looks) - 1
        for look in looks:
            look.pop("_report", None)
    design = {k: v for k, v in sr.sequential.items() if k != "stopped"}
    r.sequential = {**design, "looks": looks, "stopped": stopped, "at": at}
    return r


def _decided(verdict: str) -> bool:
    return verdict.startswith(("better", "worse", "equivalent", "supported", "contradicted")) or verdict.endswith(
        "e interaction"
    )


def sequential_looks(sr: StudyRuns, alpha: float | None = None, effect: float | None = None) -> tuple[list, str | None]:
    """Replay a sequential study's looks from its runs, stopping at the first decided one.

    A look is complete when every arm has a finished (or failed) run of each of its seeds. At each
    complete look the deciding comparisons (the claims on the study when it has any, else every arm
    against the baseline) are judged with sequential intervals (:func:`look_plan`); the study is decided
    when every one of them is (``better``, ``worse``, ``equivalent``; for claims ``supported`` or
    ``contradicted``). Because the intervals hold at every look at once (``stats.repeated_ci`` over the
    planned looks, ``stats.t_cs`` over all), stopping at the first decided look keeps the stated error
    rate.

    Args:
        sr: the runs, with ``sr.sequential`` (its ``looks``: seeds per arm of each look).
        alpha: error rate of each family (default: the study's).
        effect: as in :func:`build_report`.

    Returns:
        ``(looks, stopped)``: one dict per complete look up to the stop (``look`` from 1, ``seeds``
        per arm, ``decided``, ``comparisons``: ``effect``, ``estimate``, ``ci_low``, ``ci_high``,
        ``verdict`` of each deciding comparison, and ``_report``, that look's :class:`Report`), and
        ``decided``, ``max_seeds`` (every look done, not decided), ``timeout`` (the runner's tag) or
        ``None`` (still running).

    Raises:
        ValueError: alpha outside (0, 1), or the study is not sequential.
    """
    if sr.sequential is None:
        raise ValueError(f"study '{sr.study}' is not sequential")
    alpha = sr.alpha if alpha is None else alpha
    done = set(zip(sr.runs["arm"], sr.runs["seed"], strict=True)) if not sr.runs.empty else set()
    if not sr.failures.empty:
        done |= set(zip(sr.failures["arm"], sr.failures["seed"], strict=True))
    arms = [a for a, _ in _arms(sr.factors)]
    plan = sr.sequential.get("looks") or []
    planned = look_plan(sr)
    out: list[dict] = []
    for k, seeds in enumerate(plan):
        if not all((a, s) in done for a in arms for s in seeds):
            break
        sub = sr.restricted(seeds)
        if sub.runs.empty:
            break
        r = _build(sub, alpha, effect, sequential=True, plan=planned, look=len(seeds))
        deciding = _deciding(r)
        comparisons = [
            {k2: row.get(k2) for k2 in ("effect", "estimate", "ci_low", "ci_high", "test", "verdict")}
            for row in deciding.to_dict("records")
        ]
        decided = bool(comparisons) and all(_decided(str(c["verdict"])) for c in comparisons)
        out.append({"look": k + 1, "seeds": len(seeds), "decided": decided, "comparisons": comparisons, "_report": r})
        if decided:
            return out, "decided"
    if plan and len(out) == len(plan):
        return out, "max_seeds"
    return out, ("timeout" if sr.sequential.get("stopped") == "timeout" else None)


def look_plan(sr: StudyRuns) -> stats.LookPlan | None:
    """The looks a sequential study planned before its first run (``sr.sequential["plan"]``), or None.

    None when no plan was recorded (a study that looked at its data with an earlier version, or one
    replayed from its file alone): its intervals are then the anytime-valid sequence at the whole alpha.
    """
    plan = (sr.sequential or {}).get("plan") or {}
    if not plan.get("looks"):
        return None
    return stats.LookPlan(tuple(plan["looks"]), float(plan.get("reserve", stats.PLAN_RESERVE)))


def _deciding(r: Report) -> pd.DataFrame:
    """The comparisons that decide a sequential study: its claims, else every arm against the baseline."""
    if not r.claims.empty:
        labels = [
            f"claim {i}: {t} vs {c}"
            for i, (t, c) in enumerate(zip(r.claims["treatment"], r.claims["control"], strict=True), 1)
        ]
        return r.claims.assign(effect=labels)
    return r.effects[r.effects["kind"] == "arm"]


def _build(
    sr: StudyRuns,
    alpha: float,
    effect: float | None,
    sequential: bool = False,
    plan: stats.LookPlan | None = None,
    look: int | None = None,
) -> Report:
    """The tables of :func:`build_report`.

    ``sequential``: sequential intervals (``stats.sequential_contrast`` with ``plan`` at this ``look``, the
    planned seeds per arm), Bonferroni, sequential verdicts.
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

    # every comparison of the family: arms vs baseline, main effects, interactions
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

    contrasts: list[Contrast | None] = []
    testable = [all(a in series for a in w) for _, _, _, w in specs]
    m_all = max(sum(testable), 1)
    for (_, _, _, w), ok in zip(specs, testable, strict=True):
        if not ok:
            contrasts.append(None)
        elif sequential:
            contrasts.append(stats.sequential_contrast(series, w, alpha / m_all, plan=plan, look=look))
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
        need = stats.seeds_needed(target, c.sd, power_alpha, POWER, c.paired, c.weight_ss)
        if sequential:
            need = None  # a sequential study adds seeds until it decides
            v = stats.sequential_verdict(c, maximize, _margin(sr, w, claim_weights))
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

    failed = _failed_cells(sr)
    arm_rows = []
    by_arm = effects[effects["kind"] == "arm"].set_index("effect")
    for arm, levels in arms:
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
        elif arm in by_arm.index:
            e = by_arm.loc[arm]
            row.update({k: e[src] for k, src in _ARM_EFFECT.items()}, test=e["test"], verdict=e["verdict"])
        row.update(median=s.median, failed=failed.get(arm, 0))
        arm_rows.append(row)
    cols = ["arm", *sr.factors, "n", "mean", "std", "ci_low", "ci_high", *_ARM_EFFECT, "test", "verdict"]
    arm_df = pd.DataFrame(arm_rows).reindex(columns=[*cols, "median", "failed"])
    arm_df = arm_df[arm_df["n"].gt(0) | arm_df["failed"].gt(0)].reset_index(drop=True)
    arm_df["test"] = arm_df["test"].fillna("")
    claims = _claims_table(sr, arms, alpha, effect, sequential, plan, look)
    outliers = _outliers(series, base_arm, [label for kind, label, _, _ in specs if kind == "arm"])
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
        mixed_precision=precision_mix(sr),
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


def _margin(sr: StudyRuns, w: dict, claim_weights: list) -> float | None:
    """The equivalence margin of a comparison: the study's ``equivalence_margin``, else a claim's ``min_effect``."""
    margin = (sr.sequential or {}).get("equivalence_margin")
    if margin is not None:
        return float(margin)
    for cw, size in claim_weights:
        if size is not None and _same_contrast(w, cw):
            return float(size)
    return None


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


def _failed_cells(sr: StudyRuns) -> dict[str, int]:
    """Per arm, the seeds whose runs failed or were killed and that have no finished run."""
    if sr.failures.empty:
        return {}
    done = set(zip(sr.runs["arm"], sr.runs["seed"], strict=True))
    lost = {(a, s) for a, s in zip(sr.failures["arm"], sr.failures["seed"], strict=True) if (a, s) not in done}
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
) -> pd.DataFrame:
    rows = []
    level = 1 - alpha
    if sequential:  # the claims decide a sequential study: they share alpha (Bonferroni)
        level = 1 - alpha / max(len(sr.claims), 1)
    for claim in sr.claims:
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
        }
        if not w or not all(a in series for a in w):
            rows.append({**row, "verdict": "inconclusive: no runs of the treatment or control arms"})
            continue
        if sequential:
            c = stats.sequential_contrast(series, w, 1 - level, plan=plan, look=look)
        else:
            c = stats.contrast(series, w, level)
        target = claim.get("min_effect") or (abs(effect) if effect is not None else abs(c.estimate))
        need = None if sequential else stats.seeds_needed(target, c.sd, alpha, POWER, c.paired, c.weight_ss)
        need = max(need, MIN_SEEDS) if need is not None else None
        v = stats.judge_claim(c, claim["direction"], claim.get("min_effect"), min_seeds=2 if sequential else MIN_SEEDS)
        if sequential and v.startswith("inconclusive"):
            n = [len(series[a]) for a in w]
            v = f"inconclusive at {min(n)} seeds per arm (profile {sr.profile})"
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
            }
        )
    cols = ["claim", "source", "metric", "treatment", "control", "direction", "min_effect", "n", "estimate"]
    cols += ["ci_low", "ci_high", "level", "test", "p", "target", "seeds_needed", "verdict"]
    return pd.DataFrame(rows, columns=cols)


def _arm_label(levels: dict[str, str]) -> str:
    return " ".join(f"{f}={v}" for f, v in levels.items())


def _scale(metric: str) -> float:
    return 100.0 if _is_accuracy(metric) else 1.0


def _du(scale: float) -> str:
    return " pp" if scale == 100.0 else ""
