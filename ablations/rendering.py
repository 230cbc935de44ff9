"""Rendering of a study report: terminal table, CSV, Markdown, LaTeX, HTML, JSON, and the figures.

:mod:`ablations.report` computes the numbers (:class:`ablations.report.Report`); this module only
turns them into text and pictures: :func:`render` (``table`` at most 100 columns wide, ``csv``,
``markdown``, ``latex`` with booktabs tables, ``html`` as one self-contained page with the figures
embedded, ``json`` with every number unrounded), :func:`write_report` (one file, or one file per
table for CSV) and :func:`write_plots` (the PNG figures of :mod:`ablations.plots`, also logged to
the study's parent run).
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from ablations.report import (
    CURVE_METRICS,
    POWER,
    Report,
    _du,
    _scale,
    effect_by_epoch,
    epoch_metric,
    load_histories,
)
from ablations.stats import PLAN_RESERVE
from ablations.tracking import Tracker

__all__ = ["FORMATS", "WIDTH", "figures_of", "render", "to_json", "write_plots", "write_report"]

FORMATS = ("table", "csv", "markdown", "latex", "html", "json")
WIDTH = 100  # the terminal table fits this many columns

# --------------------------------------------------------------------------------------------- rendering


def _f(x, digits: int = 2, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _p(p) -> str:
    if p is None or p != p:
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _iv(lo, hi, sign: bool = False) -> str:
    return "-" if lo is None or lo != lo else f"[{_f(lo, 2, sign)}, {_f(hi, 2, sign)}]"


def _need(row) -> str:
    n = row.get("seeds_needed")
    if n is None or n != n:
        return "-"
    return f"{int(n)} for {row['target']:.2f}{row.get('_du', '')} ({row['target_from']})"


_DECIDED = ("better", "worse", "positive interaction", "negative interaction")


def _code(s: str, md: bool) -> str:
    return f"`{s}`" if md and s else s


def _display(r: Report, md: bool = False, term: bool = False) -> dict[str, pd.DataFrame]:
    """The three tables as strings, the way a person reads them."""
    unit = f" ({r.unit})" if r.unit else ""
    du = f" ({r.diff_unit})" if r.diff_unit else ""
    a = r.arms
    arms = pd.DataFrame(
        {
            **{f: a[f] for f in r.runs.factors},
            "runs": a["n"],
            "failed": a["failed"],
            **({"diverged": a["diverged"]} if "diverged" in a and a["diverged"].sum() else {}),
            f"{r.runs.metric}{unit}": [
                f"{m:.2f} ± {s:.2f}" if s == s else _f(m) for m, s in zip(a["mean"], a["std"], strict=True)
            ],
            "95% CI (t)": [_iv(lo, hi) for lo, hi in zip(a["ci_low"], a["ci_high"], strict=True)],
            "median": [_f(x) for x in a["median"]],
        }
    )
    e = r.effects
    sep = "\n" if term else " "
    effects = pd.DataFrame(
        {
            "effect": [_code(x, md) for x in e["effect"]],
            "kind": e["kind"],
            "n": [str(int(n)) if n == n else "-" for n in e["n"]],
            f"difference{du}{sep}[95% CI]": [
                f"{_f(x, 2, True)} {_iv(lo, hi, True)}" if x == x else "-"
                for x, lo, hi in zip(e["estimate"], e["ci_low"], e["ci_high"], strict=True)
            ],
            "test": e["test"].fillna("-"),
            "p": [_p(x) for x in e["p"]],
            "p Holm": [_p(x) for x in e["p_holm"]],
            "rank p": [_p(x) for x in e["p_check"]],
            "effect size": [
                f"{k} {x:+.2f}" if x == x else "-" for k, x in zip(e["effect_size_kind"], e["effect_size"], strict=True)
            ],
        }
    )
    rows = e.assign(_du=f" {r.diff_unit}" if r.diff_unit else "").to_dict("records")
    verdicts = pd.DataFrame(
        {
            "effect": [_code(x, md) for x in e["effect"]],
            f"verdict at alpha {r.alpha:g}": e["verdict"],
            f"seeds per arm for {POWER:.0%} power": [_need(x) if x["verdict"] not in _DECIDED else "-" for x in rows],
        }
    )
    c = r.claims
    tests = c["tests"] if "tests" in c else pd.Series([None] * len(c), dtype=object)
    claims = pd.DataFrame(
        {
            "claim": [
                f"{text}{sep}(this study tests: {t})" if isinstance(t, str) and t else text
                for text, t in zip(c["claim"], tests, strict=True)
            ],
            "source": c["source"],
            "claimed": [
                f"{_code(t, md)}{sep}vs {_code(k, md)}{sep if term else ': '}"
                + (f"{_code(met, md)} " if met != r.runs.metric else "")  # a claim about another metric names it
                + d
                + (f" >= {m:g}{_du(_scale(met))}" if m is not None and m == m else "")
                for t, k, d, m, met in zip(
                    c["treatment"], c["control"], c["direction"], c["min_effect"], c["metric"], strict=True
                )
            ],
            f"measured{du}{sep}[{1 - r.alpha:.0%} CI]": [
                f"{_f(x, 2, True)}{sep}{_iv(lo, hi, True)}" if x == x else "-"
                for x, lo, hi in zip(c["estimate"], c["ci_low"], c["ci_high"], strict=True)
            ],
            "verdict": c["statement"] if "statement" in c else c["verdict"],
        }
    )
    return {"arms": arms, "effects": effects, "verdicts": verdicts, "claims": claims}


def _claim_lines(r: Report) -> list[str]:
    """Per claim, under the terminal's claims table: what the study tests, and for a claim that names its
    budget the verdict with the budget it was measured at and the claim's (``statement``)."""
    c = r.claims
    out = []
    for i, row in enumerate(c.to_dict("records"), 1):
        if isinstance(row.get("tests"), str) and row["tests"]:
            out.append(f"claim {i}: this study tests {row['tests']}")
        if row.get("statement") and isinstance(row.get("claimed_budget"), dict):  # the claim names its budget
            out.append(f"claim {i}: {row['statement']}")
    return out


def _by_epoch_display(r: Report) -> pd.DataFrame:
    """The effect-by-epoch rows as strings: comparison (named on its first row), epoch, n, difference [CI]."""
    b = r.by_epoch
    du = f" ({b['unit']})" if b.get("unit") else ""
    rows = b["rows"]
    shown = []
    last = None
    for row in rows.itertuples():
        shown.append(
            {
                "comparison": row.comparison if row.comparison != last else "",
                "epoch": str(int(row.epoch)),
                "n": str(int(row.n)) if row.n == row.n else "-",
                f"{b['metric']} difference{du} [{b['level']:.0%} CI, pointwise]": (
                    f"{_f(row.estimate, 2, True)} {_iv(row.ci_low, row.ci_high, True)}"
                    if row.estimate == row.estimate
                    else "-"
                ),
            }
        )
        last = row.comparison
    return pd.DataFrame(shown)


def _by_epoch_lines(r: Report) -> list[str]:
    """The effect-by-epoch heading sentence and its notes (pointwise, descriptive, the schedule)."""
    b = r.by_epoch
    return [
        f"effect by epoch: each comparison's difference in {b['metric']} after every epoch "
        f"(the final {b['final_metric']} decides the verdicts)",
        *(f"note: {n}" for n in b["notes"]),
    ]


def _head(r: Report) -> list[str]:
    sr = r.runs
    better = "higher" if sr.direction == "maximize" else "lower"
    unit = f" in {r.unit}" if r.unit else ""
    pp = "; differences in percent points (pp)" if r.diff_unit else ""
    fails = _failure_text(r)
    recorded = " (the analysis plan recorded by its first sequential run)" if _recorded(r) else ""
    lines = [
        f"study {sr.study} (parent run {sr.parent_run_id}): {sr.metric}{unit}, {better} is better{pp}{fails}",
        f"budget: {r.budget}",
        f"baseline arm: {r.baseline}; alpha {r.alpha:g}{recorded}",
    ]
    if r.sequential is not None:
        lines.append(_sequential_line(r))
    return lines + _exploratory_lines(r)


def _recorded(r: Report) -> bool:
    """Whether a sequential study's verdicts follow an analysis plan recorded on its parent run."""
    return r.sequential is not None and bool(r.sequential.get("analysis")) and r.sequential.get("plan") is not None


def _failure_text(r: Report) -> str:
    """The failed runs, by kind: diverged (outcomes of their arm) and lost outside training (retried)."""
    a = r.arms
    diverged = int(a["diverged"].sum()) if "diverged" in a else 0
    lost = int(a["failed"].sum()) if "failed" in a else 0
    whole = (r.sequential or {}).get("failures")  # a sequential study: its runs, not only the look's
    if whole:
        diverged, lost = max(diverged, int(whole.get("diverged", 0))), int(whole.get("infrastructure", 0))
    out = ""
    if diverged:
        out += (
            f"; {diverged} run(s) diverged, counted as outcomes of their arm at what their weights score (not dropped)"
        )
    if lost:
        out += (
            f"; {lost} run(s) failed outside training (killed, out of memory, a lost worker, an error), not "
            "counted: the next `ablate run` trains them again"
        )
    return out


def _exploratory_lines(r: Report) -> list[str]:
    """A sequential study reported with settings other than its recorded plan: the other verdicts, marked."""
    x = r.exploratory
    if not x:
        return []
    du = f" {r.diff_unit}" if r.diff_unit else ""
    asked = "; ".join(
        f"{c['key']} {json.dumps(c['asked'])} instead of the recorded {json.dumps(c['recorded'])}" for c in x["changed"]
    )
    said = "; ".join(
        f"{c['effect']}: {c['verdict']} ({_f(c['estimate'], 2, True)}{du} {_iv(c['ci_low'], c['ci_high'], True)})"
        for c in x["comparisons"]
    )
    at = f" at the same look ({x['seeds']} seeds per arm)" if x.get("seeds") else ""
    return [
        f"exploratory, not error-controlled: with {asked}{at}: {said or 'no complete look'}; the verdicts above "
        "follow the recorded plan, these do not (a rule chosen after the data can always find a decision)"
    ]


_STOPS = {
    "decided": "stopped: decided",
    "max_seeds": "stopped: the cap was reached before every comparison was decided",
    "timeout": "stopped: the timeout passed before every comparison was decided",
    None: "not stopped yet (run the same command to go on)",
}


def _sequential_line(r: Report) -> str:
    """How a sequential study was run and why it stopped."""
    q = r.sequential
    margin = q.get("equivalence_margin")
    design = f"sequential: {q.get('step')} more seeds per arm per round, up to {q.get('max_seeds')}"
    if margin is not None:
        design += f", equivalence margin ±{margin:g}{' ' + r.diff_unit if r.diff_unit else ''}"
    looks = q.get("looks") or []
    if not looks:
        return design + "; the first look is not complete yet"
    last = looks[-1]
    return f"{design}; {len(looks)} look(s), the last at {last['seeds']} seeds per arm; {_STOPS[q.get('stopped')]}"


BEYOND = "*"  # marks a look whose seeds per arm the plan did not name


def _beyond_plan(r: Report) -> bool:
    """Whether a planned sequential study has looks beyond its plan (judged by the anytime-valid interval alone)."""
    plan = (r.sequential or {}).get("plan") or {}
    planned = plan.get("looks") if plan.get("boundary") != "anytime" else None
    looks = (r.sequential or {}).get("looks") or []
    return bool(planned) and any(look["seeds"] not in planned for look in looks)


def _looks_table(r: Report) -> pd.DataFrame:
    """One row per look and deciding comparison: seeds per arm, difference with its sequential interval, verdict."""
    du = f" {r.diff_unit}" if r.diff_unit else ""
    planned = (r.sequential.get("plan") or {}).get("looks") or []
    mark = BEYOND if _beyond_plan(r) else ""
    rows = []
    for look in r.sequential.get("looks") or []:
        for c in look["comparisons"]:
            interval = _iv(c["ci_low"], c["ci_high"], True)
            rows.append(
                {
                    "look": str(look["look"]),
                    "seeds": f"{look['seeds']}{mark if look['seeds'] not in planned else ''}",
                    "comparison": c["effect"],
                    f"difference{du} [sequential CI]": f"{_f(c['estimate'], 2, True)} {interval}",
                    "verdict": c["verdict"],
                }
            )
    return pd.DataFrame(rows)


def _outlier_lines(r: Report) -> list[str]:
    """One line per per-seed difference far from its arm's other seeds (``Report.outliers``)."""
    du = f" {r.diff_unit}" if r.diff_unit else ""
    return [
        f"check: {o.effect} seed {o.seed}: difference {_f(o.difference, 2, True)}{du}, far from the arm's other "
        f"seeds (median {_f(o.median, 2, True)}{du}, modified z {o.z:+.1f}); the intervals assume normal "
        f"per-seed differences: look at that run (ablate runs {r.runs.study})"
        for o in r.outliers.itertuples()
    ]


def _seed_list(seeds: list[int]) -> str:
    """``0, 1, 2`` or ``0-9``: sorted seeds, a run of consecutive ones as a range."""
    seeds = sorted(set(seeds))
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def _precision_lines(r: Report) -> list[str]:
    """A line naming the runs of each precision when runs that should share one do not (``Report.mixed_precision``)."""
    mix = r.mixed_precision
    if mix is None or mix.empty:
        return []
    groups = []
    for precision, runs in mix.groupby("precision", sort=False):
        arms = "; ".join(
            f"{arm or 'the run'} seed{'s' if len(g) > 1 else ''} {_seed_list(g['seed'].tolist())}"
            for arm, g in runs.groupby("arm", sort=False)
        )
        groups.append(f"{precision}: {len(runs)} run{'s' if len(runs) > 1 else ''} ({arms})")
    unrecorded = (
        " (not recorded: trained before ablate tagged the precision; auto was then fp32 on a CPU, bf16 on CUDA)"
        if (mix["precision"] == "not recorded").any()
        else ""
    )
    return [
        f"check: runs trained in different precisions (MLflow tag ablate.precision), so the comparison mixes "
        f"bf16 and fp32 rounding with the factor's effect: {'; '.join(groups)}{unrecorded}; train them in one "
        f"precision (--set train.precision=fp32 or bf16) or compare within one (ablate runs {r.runs.study})"
    ]


def _check_lines(r: Report) -> list[str]:
    """The report's check lines: runs in mixed precisions, then per-seed outliers."""
    return [*_precision_lines(r), *_outlier_lines(r)]


def looks_text(sizes: list[int]) -> str:
    """Seeds per arm of planned looks, short: ``3, 5, 7`` or ``3, 5, ..., 20``."""
    return ", ".join(map(str, sizes)) if len(sizes) <= 6 else f"{sizes[0]}, {sizes[1]}, ..., {sizes[-1]}"


def _sequential_method(r: Report) -> str:
    """How a sequential study's intervals were made, in words (its plan, or the anytime-valid sequence alone)."""
    plan = (r.sequential or {}).get("plan") or {}
    anytime = "the anytime-valid confidence sequence (Gaussian, unknown variance; Wang & Ramdas 2023 after Lai 1976)"
    if not plan.get("looks") or plan.get("boundary") == "anytime":
        return f"{anytime} of the mean paired difference; p: its anytime-valid p-value, Bonferroni-adjusted"
    reserve = float(plan.get("reserve", PLAN_RESERVE))
    looks = plan["looks"]
    sizes = looks_text(looks)
    shape = (
        "O'Brien-Fleming's boundary, strict at the first looks (O'Brien & Fleming 1979)"
        if plan.get("boundary") == "obrien-fleming"
        else "Pocock's constant nominal level"
    )
    return (
        f"at the {len(looks)} look{'s' if len(looks) > 1 else ''} the study's first sequential run planned "
        f"({sizes} seeds per arm), the repeated confidence interval ({shape} for the t "
        f"statistic, calibrated by simulation; Jennison & Turnbull 1989) at {1 - reserve:.0%} of alpha, "
        f"intersected with {anytime} at the other {reserve:.0%}, which alone judges looks beyond the plan; p: the "
        "smaller of the two tests' p-values, each over its share of alpha, Bonferroni-adjusted"
    )


def _methods(r: Report) -> str:
    tested = int(r.effects["p"].notna().sum())
    if r.sequential is not None:
        return (
            f"difference: arm minus baseline, paired by seed; interval at 1 - {r.alpha:g}/{max(tested, 1)} "
            f"(Bonferroni over the {tested} comparison(s)), valid at every look at once: "
            + _sequential_method(r)
            + "; each look's interval intersected with those of the earlier looks, so a decided verdict stays; "
            "better/worse: the interval excludes 0; equivalent: it lies inside the equivalence margin "
            "(interactions: interaction_margin); no verdict from fewer than 3 seeds or a zero-width interval. "
            "Claims with a size: as large as claimed (the interval's lower end reaches it), smaller than claimed "
            "(its upper end is below it) or direction confirmed, size not resolved (above 0, containing it; not "
            "supported)." + _diverged_method(r)
        )
    return (
        "difference: arm minus baseline, paired by seed (paired t test; Welch t when the arms do not share seeds), "
        f"95% CI (t); p Holm-adjusted over the {tested} comparison(s) of the study; rank p: Wilcoxon signed-rank "
        "(Mann-Whitney U when unpaired), as a check; effect size: Cohen's d_z (paired) or d. Seeds per arm: for "
        f"{POWER:.0%} power of the two-sided t test at alpha {r.alpha:g}/{max(tested, 1)}, to detect the claimed "
        "size, the --effect size or else the observed difference." + _diverged_method(r)
    )


def _diverged_method(r: Report) -> str:
    """How diverged runs enter the numbers (the methods line), when the study has any."""
    if "diverged" not in r.arms or not r.arms["diverged"].sum():
        return ""
    return (
        f" A run whose training diverged counts as an outcome of its arm, not a missing value: its "
        f"{r.runs.metric} is what its weights score, chance for an accuracy (a NaN network predicts one class), "
        "for a loss the worst any finished run of the study scored (worst-rank imputation, Lachin 1999)."
    )


def render(r: Report, fmt: str = "table") -> str:
    """The report as text.

    Args:
        r: the report.
        fmt: ``table`` (terminal, at most 100 columns), ``csv`` (the arm, effect
            and claim tables, separated by a blank line), ``markdown``, ``latex``,
            ``html`` or ``json`` (every number of every table, plus the settings).

    Returns:
        The text.

    Raises:
        ValueError: unknown ``fmt``.
    """
    if fmt == "table":
        return _terminal(r)
    if fmt == "csv":
        return "\n".join(t.to_csv(index=False) for t in _raw_tables(r).values() if not t.empty)
    if fmt == "json":
        return json.dumps(to_json(r), indent=2, allow_nan=False) + "\n"
    if fmt == "markdown":
        return _markdown(r)
    if fmt == "latex":
        return _latex(r)
    if fmt == "html":
        return _html(r)
    raise ValueError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")


def write_report(r: Report, fmt: str, path: Path) -> list[Path]:
    """Write the report to ``path``; CSV writes one file per table.

    For ``csv``, ``path`` gets the arm table and ``<stem>.effects.csv`` and
    ``<stem>.claims.csv`` beside it get the others (when not empty).

    Returns:
        The files written.

    Raises:
        OSError: a file cannot be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt != "csv":
        path.write_text(render(r, fmt))
        return [path]
    out = []
    for name, table in _raw_tables(r).items():
        if table.empty and name != "arms":
            continue
        p = path if name == "arms" else path.with_name(f"{path.stem}.{name}{path.suffix or '.csv'}")
        p.write_text(table.to_csv(index=False))
        out.append(p)
    return out


def _raw_tables(r: Report) -> dict[str, pd.DataFrame]:
    out = {"arms": r.arms, "effects": r.effects, "claims": _flat_claims(r.claims)}
    if r.by_epoch is not None:
        out["by_epoch"] = r.by_epoch["rows"]
    return out


def _flat_claims(claims: pd.DataFrame) -> pd.DataFrame:
    """The claim table for CSV: each budget as its words (``measured_budget``, ``claimed_budget``)."""
    if claims.empty or "measured_budget" not in claims:
        return claims
    keys = ("measured_budget", "claimed_budget")
    words = {k: [b.get("text") if isinstance(b, dict) else b for b in claims[k]] for k in keys}
    return claims.assign(**words)


def _clean(x):
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def to_json(r: Report) -> dict:
    """Every number of the report's tables and the settings they were computed with, JSON-ready (NaN -> null)."""
    sr = r.runs
    return _clean(
        {
            "study": sr.study,
            "profile": sr.profile,
            "parent_run_id": sr.parent_run_id,
            "tracking_uri": sr.tracking_uri,
            "metric": sr.metric,
            "direction": sr.direction,
            "unit": r.unit,
            "difference_unit": r.diff_unit,
            "scale": r.scale,
            "alpha": r.alpha,
            "confidence_level": 0.95,
            "power": POWER,
            "effect_given": r.effect,
            "factors": sr.factors,
            "baseline": r.baseline,
            "budget": sr.budget,
            "failed_runs": sr.failed,
            "methods": {
                "arm_interval": "Student t interval of the mean over seeds",
                "comparison": "paired t test on per-seed contrasts when the arms share >= 2 seeds, else Welch t",
                "rank_check": "Wilcoxon signed-rank (paired) or Mann-Whitney U (two independent arms)",
                "multiplicity": "Holm (1979) over all comparisons in effects",
                "effect_size": "Cohen's d_z (paired) or Cohen's d (pooled SD)",
                "seeds_needed": "two-sided t test, 80% power, alpha / number of comparisons (noncentral t, scipy)",
                "claims": "interval at 1 - alpha, no multiplicity correction",
                "claim_budget": "measured_budget: what the runs trained at; claimed_budget: what the claim is "
                "about (its budget: key); budget_same: whether they agree on train.epochs, data.train_subset and "
                "data.val_fraction; statement: the verdict with both",
                "by_epoch": "pointwise t interval of the paired difference of the per-epoch metric at each epoch "
                "(descriptive; no correction for epochs or comparisons; the verdicts are the final metric's)",
            },
            "runs": sr.runs.reindex(columns=["arm", "seed", "run_id", sr.metric]).to_dict("records"),
            "outliers": r.outliers.to_dict("records"),
            "mixed_precision": r.mixed_precision.to_dict("records"),
            "arms": r.arms.to_dict("records"),
            "effects": r.effects.to_dict("records"),
            "claims": r.claims.to_dict("records"),
            "sequential": r.sequential,
            "exploratory": r.exploratory,
            "by_epoch": _by_epoch_json(r),
        }
    )


def _by_epoch_json(r: Report) -> dict | None:
    """``Report.by_epoch`` with its rows as records, or None when it was not computed."""
    if r.by_epoch is None:
        return None
    return {**{k: v for k, v in r.by_epoch.items() if k != "rows"}, "rows": r.by_epoch["rows"].to_dict("records")}


def _terminal(r: Report) -> str:
    from tabulate import tabulate

    d = _display(r, term=True)
    out = [textwrap.fill(line, WIDTH, subsequent_indent="  ") for line in _head(r)]

    def table(df: pd.DataFrame, fmt: str = "simple", widths=None) -> str:
        align = ["right" if c in _RIGHT or c.startswith(_RIGHT_PREFIX) else "left" for c in df.columns]
        return tabulate(
            df.to_dict("list"),
            headers="keys",
            tablefmt=fmt,
            maxcolwidths=widths,
            disable_numparse=True,
            colalign=align,
        )

    out += ["", "arms", table(d["arms"])]
    if r.sequential is not None and r.sequential.get("looks"):
        out += [
            "",
            "looks: the deciding comparisons after each round",
            table(_looks_table(r), widths=[4, 5, 30, 24, 30]),
        ]
        if _beyond_plan(r):
            out += [f"{BEYOND} beyond the plan of the study's first sequential run: the anytime-valid interval alone"]
    if not r.effects.empty:
        eff = d["effects"]
        if len(set(r.effects["test"].dropna())) <= 1:
            eff = eff.drop(columns=["test"])
        for kind, title in _KINDS.items():
            rows = eff[eff["kind"] == kind].drop(columns=["kind"])
            if not rows.empty:
                out += ["", title, table(rows, widths=[30] + [None] * (rows.shape[1] - 1))]
        out += ["", "verdicts", table(d["verdicts"], widths=[30, 26, 36])]
        checks = [textwrap.fill(line, WIDTH, subsequent_indent="  ") for line in _check_lines(r)]
        out += [""] + checks if checks else []
        out += ["", textwrap.fill(_methods(r), WIDTH)]
    elif _precision_lines(r):  # no comparison, but the arms' numbers mix precisions
        out += [""] + [textwrap.fill(line, WIDTH, subsequent_indent="  ") for line in _precision_lines(r)]
    if not r.claims.empty:
        if r.sequential is not None:
            out += [
                "",
                f"claims (sequential intervals at 1 - {r.alpha:g}/{len(r.claims)}, Bonferroni over the claims)",
            ]
        else:
            out += ["", f"claims (interval at {1 - r.alpha:.0%}, not corrected for multiplicity)"]
        shown = d["claims"].assign(claim=r.claims["claim"], verdict=r.claims["verdict"])  # words: the lines below
        out += [table(shown, "simple_grid", [20, 10, 18, 15, 19])]
        out += [textwrap.fill(line, WIDTH, subsequent_indent="  ") for line in _claim_lines(r)]
    if r.by_epoch is not None:
        out += [""] + [textwrap.fill(line, WIDTH, subsequent_indent="  ") for line in _by_epoch_lines(r)]
        if not r.by_epoch["rows"].empty:
            out += [table(_by_epoch_display(r), widths=[40, None, None, None])]
    return "\n".join(out) + "\n"


_KINDS = {
    "arm": "effect vs baseline: each arm minus the baseline arm",
    "main": "main effects: a level minus the baseline level, averaged over the other factors",
    "interaction": "interactions: (a x b) - a - b + baseline, averaged over the other factors (0 = additive)",
}
_RIGHT = {"runs", "failed", "diverged", "median", "n", "p", "p Holm", "rank p", "effect size", "95% CI (t)"}
_RIGHT_PREFIX = ("difference", "test_", "val_", "train_")


def _markdown(r: Report) -> str:
    d = _display(r, md=True)
    parts = ["\n".join(_head(r)).replace("\n", "  \n"), "### Arms", d["arms"].to_markdown(index=False)]
    if not r.effects.empty:
        eff = d["effects"].merge(d["verdicts"], on="effect")
        parts += ["### Effects", eff.to_markdown(index=False), *_check_lines(r), _methods(r)]
    else:
        parts += _precision_lines(r)
    if not r.claims.empty:
        parts += ["### Claims", d["claims"].to_markdown(index=False)]
    if r.by_epoch is not None:
        lines = _by_epoch_lines(r)
        parts += ["### Effect by epoch", *lines]
        if not r.by_epoch["rows"].empty:
            parts.append(_by_epoch_display(r).to_markdown(index=False))
    return "\n\n".join(parts) + "\n"


def _latex(r: Report) -> str:
    d = _display(r)
    parts = ["% " + line for line in _head(r)]
    texts = [*_check_lines(r), _methods(r)] if not r.effects.empty else _precision_lines(r)
    parts += ["% " + line for text in texts for line in textwrap.wrap(text, WIDTH)]
    eff = d["effects"].merge(d["verdicts"], on="effect") if not r.effects.empty else None
    by_epoch = None
    if r.by_epoch is not None:
        parts += ["% " + line for text in _by_epoch_lines(r) for line in textwrap.wrap(text, WIDTH)]
        by_epoch = _by_epoch_display(r) if not r.by_epoch["rows"].empty else None
    for name, df in (
        ("arms", d["arms"]),
        ("effects", eff),
        ("claims", d["claims"] if not r.claims.empty else None),
        ("by_epoch", by_epoch),
    ):
        if df is None:
            continue
        parts.append(df.to_latex(index=False, escape=True, caption=f"{r.runs.study}: {name}", label=f"tab:{name}"))
    return "\n".join(parts)


def _html(r: Report) -> str:
    import html

    d = _display(r)
    body = [f"<h1>ablate report: {html.escape(r.runs.study)}</h1>"]
    body += [f"<p>{html.escape(line)}</p>" for line in _head(r)]
    body += ["<h2>Arms</h2>", d["arms"].to_html(index=False)]
    if not r.effects.empty:
        body += ["<h2>Effects</h2>", d["effects"].merge(d["verdicts"], on="effect").to_html(index=False)]
        body += [f"<p>{html.escape(line)}</p>" for line in [*_check_lines(r), _methods(r)]]
    else:
        body += [f"<p>{html.escape(line)}</p>" for line in _precision_lines(r)]
    if not r.claims.empty:
        body += ["<h2>Claims</h2>", d["claims"].to_html(index=False)]
    if r.sequential is not None and r.sequential.get("looks"):
        body += ["<h2>Looks</h2>", _looks_table(r).to_html(index=False)]
    figures = _embedded_figures(r)  # computes the effect by epoch when the store is there
    if r.by_epoch is not None:
        body += ["<h2>Effect by epoch</h2>", *(f"<p>{html.escape(line)}</p>" for line in _by_epoch_lines(r))]
        if not r.by_epoch["rows"].empty:
            body.append(_by_epoch_display(r).to_html(index=False))
    if figures:
        body += ["<h2>Figures</h2>", *figures]
    style = "body{font-family:sans-serif}table{border-collapse:collapse}td,th{padding:2px 8px;border:1px solid #ccc}"
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(r.runs.study)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _embedded_figures(r: Report) -> list[str]:
    """The figures as ``<img>`` tags with the PNG inline (base64), so the page is one self-contained file."""
    import base64
    import html
    import io

    try:
        figures = figures_of(r)
    except Exception:  # noqa: BLE001 - the store went away: the tables still make a page
        figures = figures_of(r, histories=False)
    out = []
    for name, fig in figures.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        out.append(
            f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(name)}</figcaption></figure>"
        )
    return out


# --------------------------------------------------------------------------------------------- plots


def figures_of(r: Report, histories: bool = True) -> dict:
    """The report's figures by name: ``effects``, ``learning_curves`` (needs the MLflow store),
    ``per_class`` (when the runs log per-class accuracy and more than one arm has runs: it draws
    differences to the baseline), for a sequential study ``looks``, and
    ``effect_by_epoch`` (needs the store; computes ``r.by_epoch`` when it is not yet).

    Args:
        r: the report.
        histories: read the runs' metric histories from MLflow for the learning curves.

    Returns:
        name -> matplotlib ``Figure``.
    """
    from ablations import plots

    label = f"{r.runs.metric}{f' ({r.unit})' if r.unit else ''}"
    title = f"{r.runs.study}: {r.budget}"
    figures = {"effects": plots.effect_plot(r.arms, r.baseline, label, title)}
    hist = load_histories(r.runs) if histories and r.runs.tracking_uri else pd.DataFrame()
    if not hist.empty:
        figures["learning_curves"] = plots.arm_learning_curves(hist, list(r.arms["arm"]), title)
    if plots.per_class_columns(r.runs.runs) and r.runs.runs["arm"].nunique() > 1:
        figures["per_class"] = plots.per_class_difference(r.runs.runs, r.baseline, title, list(r.arms["arm"]))
    if r.sequential is not None and r.sequential.get("looks"):
        margin = r.sequential.get("equivalence_margin")
        figures["looks"] = plots.looks_plot(r.sequential["looks"], r.diff_unit, margin, f"{r.runs.study}: looks")
    if r.by_epoch is None and histories and r.runs.tracking_uri:
        metric = epoch_metric(r.runs.metric)
        r.by_epoch = effect_by_epoch(r, hist if metric in CURVE_METRICS else None)
    if r.by_epoch is not None and not r.by_epoch["rows"].empty:
        figures["effect_by_epoch"] = plots.effect_by_epoch_plot(r.by_epoch, title)
    return figures


def write_plots(r: Report, folder: Path, log: bool = True) -> list[Path]:
    """Draw the report's figures into ``folder`` and log them to the study's parent run.

    Figures: ``effects.png`` (arm means with 95% CIs, differences to the
    baseline), ``learning_curves.png`` (mean over seeds with a band, from the
    runs' metric histories), when the runs log ``test_acc_class_<class>``,
    ``per_class.png``, for a sequential study ``looks.png`` (the interval
    of each deciding comparison narrowing look by look), and
    ``effect_by_epoch.png`` (each comparison's difference in the per-epoch
    metric after every epoch, pointwise intervals). Logged under
    ``report/`` of the parent run.

    Args:
        r: the report.
        folder: where the PNGs go (created).
        log: also log them to the parent run in MLflow.

    Returns:
        The files written.

    Raises:
        OSError: the folder or a file cannot be written.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    figures = figures_of(r)
    tracker = Tracker(r.runs.tracking_uri) if log else None
    out = []
    for name, fig in figures.items():
        path = folder / f"{name}.png"
        fig.savefig(path, dpi=120)
        out.append(path)
        if tracker is not None:
            tracker.log_figure(r.runs.parent_run_id, fig, f"report/{name}.png")
    return out
