"""The results table, read from MLflow alone: one row per arm, with error bars.

Per arm: finished runs, mean and standard deviation of the study metric, its
95% confidence interval (t distribution), and the difference to the baseline
arm (the first level of every factor) with a 95% interval and a p-value:
paired by seed (paired t test) when the two arms share at least two seeds, a
Welch two-sample t test otherwise. Verdicts need at least 3 runs per arm.
Accuracies are shown in percent, so differences are in percentage points.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from ablations.tracking import TAG, Tracker

__all__ = ["ReportError", "StudyRuns", "arm_table", "format_table", "load_runs"]

MIN_SEEDS = 3  # fewer runs per arm: no verdict (the interval would be meaningless)


class ReportError(LookupError):
    """No such study or no finished runs in the tracking store."""


@dataclass
class StudyRuns:
    """Finished runs of one study (one parent run), as read from MLflow.

    Attributes:
        study, profile, parent_run_id: which study and which of its parent runs.
        factors: factor name -> levels in file order (first = baseline).
        metric, direction: the study metric and ``maximize``/``minimize``.
        runs: one row per finished cell: ``arm``, ``seed``, one column per
            factor (level label), and every final metric.
        failed: number of child runs that failed or were killed.
    """

    study: str
    profile: str
    parent_run_id: str
    factors: dict[str, list[str]]
    metric: str
    direction: str
    runs: pd.DataFrame
    failed: int


def load_runs(study: str, tracking_uri: str | None = None, profile: str | None = None) -> StudyRuns:
    """Read the newest parent run of ``study`` (optionally of one profile) and its children.

    Raises:
        ReportError: the experiment, parent run or finished runs are missing.
    """
    tracker = Tracker(tracking_uri)
    parents = [p for p in tracker.parents(study) if profile is None or p.data.tags.get(f"{TAG}profile") == profile]
    if not parents:
        raise ReportError(
            f"no study '{study}'{f' with profile {profile}' if profile else ''} in {tracker.uri}; "
            "run `ablate run studies/<study>.yaml` first, or pass --tracking-uri"
        )
    parent = parents[0]
    ptags = parent.data.tags
    factors = json.loads(ptags[f"{TAG}factors"])
    rows = []
    for run in tracker.children(parent.info.run_id):
        tags = run.data.tags
        row = {"arm": tags[f"{TAG}arm"], "seed": int(tags[f"{TAG}seed"]), "run_id": run.info.run_id}
        row.update({f: run.data.params.get(f"factor.{f}") for f in factors})
        row.update(run.data.metrics)
        rows.append(row)
    failed = len(tracker.children(parent.info.run_id, "FAILED")) + len(tracker.children(parent.info.run_id, "KILLED"))
    return StudyRuns(
        study,
        parent.data.tags.get(f"{TAG}profile", "?"),
        parent.info.run_id,
        factors,
        ptags[f"{TAG}metric"],
        ptags[f"{TAG}direction"],
        pd.DataFrame(rows),
        failed,
    )


def _ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    if values.std() == 0:  # every seed gave the same value: a zero-width interval
        return float(values[0]), float(values[0])
    lo, hi = stats.t.interval(level, n - 1, loc=values.mean(), scale=stats.sem(values))
    return float(lo), float(hi)


def compare(treat: pd.Series, base: pd.Series, level: float = 0.95) -> dict[str, float | str]:
    """Difference of means ``treat - base`` with its interval and p-value.

    Args:
        treat, base: metric values indexed by seed.
        level: confidence level of the interval.

    Returns:
        ``diff``, ``diff_low``, ``diff_high``, ``p`` and ``test`` (``paired t``
        when at least two seeds are shared, else ``Welch t``); NaNs when either
        arm has fewer than two values.
    """
    shared = treat.index.intersection(base.index)
    if len(shared) >= 2:
        d = (treat[shared] - base[shared]).to_numpy(float)
        lo, hi = _ci(d, level)
        p = stats.ttest_rel(treat[shared], base[shared]).pvalue if d.std() > 0 else (0.0 if d.mean() else 1.0)
        return {"diff": float(d.mean()), "diff_low": lo, "diff_high": hi, "p": float(p), "test": "paired t"}
    if len(treat) < 2 or len(base) < 2:
        return {
            "diff": float(treat.mean() - base.mean()),
            "diff_low": math.nan,
            "diff_high": math.nan,
            "p": math.nan,
            "test": "-",
        }
    res = stats.ttest_ind(treat, base, equal_var=False)
    ci = res.confidence_interval(level)
    return {
        "diff": float(treat.mean() - base.mean()),
        "diff_low": float(ci.low),
        "diff_high": float(ci.high),
        "p": float(res.pvalue),
        "test": "Welch t",
    }


def _verdict(row: dict, n_min: int, alpha: float, maximize: bool) -> str:
    if n_min < MIN_SEEDS:
        return f"not possible: < {MIN_SEEDS} seeds"
    if not row["p"] < alpha:
        return "no detectable difference"
    return "better" if (row["diff"] > 0) == maximize else "worse"


def arm_table(sr: StudyRuns, alpha: float = 0.05) -> pd.DataFrame:
    """One row per arm: levels, n, mean, std, 95% CI, difference to the baseline, p, verdict.

    Accuracy metrics are converted to percent; the baseline arm is the one
    with the first level of every factor.

    Raises:
        ReportError: there are no finished runs.
    """
    if sr.runs.empty:
        raise ReportError(f"study '{sr.study}' has no finished runs yet")
    scale = 100.0 if sr.metric.endswith(("acc", "top3")) else 1.0
    factors = list(sr.factors)
    base_arm = " ".join(f"{f}={sr.factors[f][0]}" for f in factors)
    series = {arm: g.set_index("seed")[sr.metric].astype(float) * scale for arm, g in sr.runs.groupby("arm")}
    order = [a for a in _arm_order(sr.factors) if a in series]
    rows = []
    for arm in order:
        v = series[arm]
        lo, hi = _ci(v.to_numpy())
        row = {
            "arm": arm,
            **dict(zip(factors, [x.split("=", 1)[1] for x in arm.split(" ")], strict=True)),
            "n": len(v),
            "mean": v.mean(),
            "std": v.std(ddof=1) if len(v) > 1 else math.nan,
            "ci_low": lo,
            "ci_high": hi,
        }
        if arm == base_arm or base_arm not in series:
            row.update(
                diff=math.nan,
                diff_low=math.nan,
                diff_high=math.nan,
                p=math.nan,
                test="",
                verdict="baseline" if arm == base_arm else "no baseline runs",
            )
        else:
            row.update(compare(v, series[base_arm]))
            row["verdict"] = _verdict(row, min(len(v), len(series[base_arm])), alpha, sr.direction == "maximize")
        rows.append(row)
    return pd.DataFrame(rows)


def _arm_order(factors: dict[str, list[str]]) -> list[str]:
    import itertools

    names = list(factors)
    return [
        " ".join(f"{n}={lv}" for n, lv in zip(names, combo, strict=True))
        for combo in itertools.product(*(factors[n] for n in names))
    ]


def format_table(sr: StudyRuns, table: pd.DataFrame, fmt: str = "table") -> str:
    """Render the arm table as ``table`` (terminal), ``csv`` or ``markdown``."""
    if fmt == "csv":
        return table.to_csv(index=False)
    unit = " (%)" if sr.metric.endswith(("acc", "top3")) else ""
    show = pd.DataFrame(
        {
            **{f: table[f] for f in sr.factors},
            "n": table["n"],
            f"{sr.metric}{unit}": [
                f"{m:.2f} ± {s:.2f}" if s == s else f"{m:.2f}" for m, s in zip(table["mean"], table["std"], strict=True)
            ],
            "95% CI": [_interval(lo, hi) for lo, hi in zip(table["ci_low"], table["ci_high"], strict=True)],
            "effect vs baseline": [
                f"{d:+.2f} {_interval(lo, hi)}" if d == d else "-"
                for d, lo, hi in zip(table["diff"], table["diff_low"], table["diff_high"], strict=True)
            ],
            "p": [f"{p:.3f}" if p == p else "-" for p in table["p"]],
            "verdict": table["verdict"],
        }
    )
    head = (
        f"study {sr.study} (profile {sr.profile}, parent run {sr.parent_run_id}): {sr.metric}, "
        f"mean ± std over seeds; effect = difference to the baseline arm, 95% CI"
        f"{f'; {sr.failed} failed run(s) not counted' if sr.failed else ''}"
    )
    if fmt == "markdown":
        return head + "\n\n" + show.to_markdown(index=False) + "\n"
    return head + "\n" + show.to_string(index=False) + "\n"


def _interval(lo: float, hi: float) -> str:
    return f"[{lo:.2f}, {hi:.2f}]" if lo == lo else "-"
