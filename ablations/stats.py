"""The statistics of an ablation study: pure functions on numbers and pandas, no MLflow.

Every function works on the study metric of finished runs, one value per seed,
in whatever unit the caller uses (the report passes accuracies in percent
points). Methods and sources:

- arm summaries: mean, sample standard deviation, median and a Student t
  confidence interval for the mean;
- comparisons as *contrasts* of arms (weights summing to zero: +1 treatment,
  -1 baseline; averaged over other factors for main effects; the 2x2
  difference of differences for interactions). When every arm in the contrast
  has run the same seeds (at least two), the contrast is computed per seed and
  tested with a one-sample t test on those values, which for two arms is the
  paired t test (Student 1908); otherwise the arms are independent samples and
  the test is Welch's t test with Welch-Satterthwaite degrees of freedom
  (Welch 1947; Satterthwaite 1946);
- a rank test as a check that does not assume normality: the Wilcoxon
  signed-rank test (Wilcoxon 1945) on the per-seed contrasts, or the
  Mann-Whitney U test (Mann & Whitney 1947) for two independent arms;
- effect sizes: Cohen's d_z (mean of the per-seed contrasts over their
  standard deviation) for paired data, Cohen's d (difference over the pooled
  within-arm standard deviation) otherwise (Cohen 1988; Lakens 2013);
- Holm's step-down correction of the p-values of a family of comparisons
  (Holm 1979), from statsmodels;
- the number of seeds per arm for 80% power of the same two-sided t test,
  from the noncentral t distribution (``scipy.stats.nct``; Cohen 1988,
  ch. 2), checked in the tests against G*Power and statsmodels.

Raises nothing on small samples: quantities that cannot be computed are NaN
and the verdict functions say why.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "MIN_SEEDS",
    "Contrast",
    "Summary",
    "compare",
    "contrast",
    "holm",
    "judge_claim",
    "seeds_needed",
    "summarize",
    "t_test_power",
    "verdict",
]

MIN_SEEDS = 3  # fewer values per arm (or pairs): no verdict, the interval means too little


@dataclass(frozen=True)
class Summary:
    """One arm's values over seeds.

    Attributes:
        n: number of values (finished runs).
        mean, std, median: sample mean, standard deviation (ddof=1; NaN for n < 2) and median.
        ci_low, ci_high: Student t confidence interval of the mean (NaN for n < 2).
        level: confidence level of the interval.
    """

    n: int
    mean: float
    std: float
    median: float
    ci_low: float
    ci_high: float
    level: float


def summarize(values: Sequence[float] | np.ndarray | pd.Series, level: float = 0.95) -> Summary:
    """Mean, standard deviation, median and t confidence interval of the mean.

    The interval is ``mean ± t(1 - (1 - level)/2, n - 1) * s / sqrt(n)`` (Student
    1908), from ``scipy.stats.t.interval``; every value equal gives a zero-width
    interval.

    Args:
        values: one value per seed (same unit as the result).
        level: confidence level, in (0, 1).

    Returns:
        A :class:`Summary`; NaN fields where n is too small (mean and median
        are NaN only for n = 0).
    """
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan, math.nan, level)
    mean, median = float(x.mean()), float(np.median(x))
    if n < 2:
        return Summary(n, mean, math.nan, median, math.nan, math.nan, level)
    sd = float(x.std(ddof=1))
    if sd == 0:
        lo = hi = mean
    else:
        lo, hi = stats.t.interval(level, n - 1, loc=mean, scale=stats.sem(x))
    return Summary(n, mean, sd, median, float(lo), float(hi), level)


@dataclass(frozen=True)
class Contrast:
    """A comparison of arms: estimate, interval, tests and effect size.

    Attributes:
        estimate: sum of weight x arm mean (for two arms: treatment minus baseline), in the values' unit.
        ci_low, ci_high: confidence interval of the estimate (t distribution), NaN when not computable.
        level: its confidence level.
        p: two-sided p-value of the t test (paired t or Welch t), NaN when not computable.
        test: ``"paired t"``, ``"Welch t"`` or ``"-"`` (too few values).
        df: degrees of freedom of the t test.
        n: seeds paired (paired) or the smallest arm's number of values (unpaired).
        p_check: two-sided p-value of the rank test used as a check, NaN when none.
        check: ``"Wilcoxon"`` (signed-rank, paired), ``"Mann-Whitney"`` (two independent arms) or ``"-"``.
        effect_size: Cohen's d_z (paired) or Cohen's d (unpaired); NaN when the spread is 0 or unknown.
        effect_size_kind: ``"d_z"`` or ``"d"``.
        sd: the spread the power computation uses: standard deviation of the per-seed contrasts (paired)
            or the pooled within-arm standard deviation (unpaired).
        weight_ss: sum of squared weights (2 for a two-arm difference); scales the unpaired power.
    """

    estimate: float
    ci_low: float
    ci_high: float
    level: float
    p: float
    test: str
    df: float
    n: int
    p_check: float
    check: str
    effect_size: float
    effect_size_kind: str
    sd: float
    weight_ss: float

    @property
    def paired(self) -> bool:
        """Whether the contrast was computed per seed."""
        return self.test == "paired t"

    def as_dict(self) -> dict:
        """All fields as a plain dict (for tables and JSON)."""
        return asdict(self)


def contrast(
    arms: Mapping[str, pd.Series], weights: Mapping[str, float], level: float = 0.95, min_pairs: int = 2
) -> Contrast:
    """Estimate a contrast ``sum(w_a * mean_a)`` of arms with its interval and tests.

    Paired when all arms with a non-zero weight share at least ``min_pairs``
    seeds: the contrast is computed for each shared seed (the seed fixes
    initialisation, data order and augmentation in every arm, so it is a block)
    and a one-sample t test is run on those values (for two arms, exactly the
    paired t test, ``scipy.stats.ttest_rel``). Seeds not run in every arm are
    left out. Otherwise the arms are independent: for two arms Welch's t test
    (``scipy.stats.ttest_ind(equal_var=False)``); for more, the contrast of
    means with standard error ``sqrt(sum w_a^2 s_a^2 / n_a)`` and
    Welch-Satterthwaite degrees of freedom (Satterthwaite 1946).

    Args:
        arms: arm name -> values indexed by seed.
        weights: arm name -> weight; weights should sum to 0 (a difference).
        level: confidence level of the interval, in (0, 1).
        min_pairs: fewest shared seeds for the paired analysis.

    Returns:
        A :class:`Contrast`.

    Raises:
        KeyError: a weighted arm is missing from ``arms``.
    """
    used = {a: float(w) for a, w in weights.items() if w != 0}
    series = {a: arms[a].astype(float).dropna() for a in used}
    shared = None
    for s in series.values():
        shared = s.index if shared is None else shared.intersection(s.index)
    w_ss = float(sum(w * w for w in used.values()))
    if shared is not None and len(shared) >= min_pairs:
        d = sum(w * series[a].loc[shared].to_numpy() for a, w in used.items())
        return _one_sample(np.asarray(d, dtype=float), level, w_ss)
    return _independent(series, used, level, w_ss)


def compare(treat: pd.Series, base: pd.Series, level: float = 0.95) -> Contrast:
    """Difference ``treat - base`` of two arms (see :func:`contrast`).

    Args:
        treat, base: values indexed by seed.
        level: confidence level of the interval.

    Returns:
        A :class:`Contrast`: paired t when at least two seeds are shared, else Welch t.
    """
    return contrast({"treat": treat, "base": base}, {"treat": 1.0, "base": -1.0}, level)


def _one_sample(d: np.ndarray, level: float, w_ss: float) -> Contrast:
    n = len(d)
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    if sd <= 1e-12 * max(1.0, abs(mean)):  # every seed gave the same contrast (up to rounding): no spread
        p = 0.0 if mean != 0 else 1.0
        lo = hi = mean
        es = math.nan
    else:
        res = stats.ttest_1samp(d, 0.0)
        ci = res.confidence_interval(level)
        p, lo, hi, es = float(res.pvalue), float(ci.low), float(ci.high), mean / sd
    p_check = math.nan
    if np.any(d != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small samples: scipy warns about the normal approximation
            p_check = float(stats.wilcoxon(d).pvalue)
    return Contrast(mean, lo, hi, level, p, "paired t", n - 1, n, p_check, "Wilcoxon", es, "d_z", sd, w_ss)


def _independent(series: dict[str, pd.Series], weights: dict[str, float], level: float, w_ss: float) -> Contrast:
    ns = {a: len(s) for a, s in series.items()}
    estimate = float(sum(w * series[a].mean() for a, w in weights.items())) if all(ns.values()) else math.nan
    n_min = min(ns.values()) if ns else 0
    nan = math.nan
    if n_min < 2:
        return Contrast(estimate, nan, nan, level, nan, "-", nan, n_min, nan, "-", nan, "d", nan, w_ss)
    var = {a: float(s.var(ddof=1)) for a, s in series.items()}
    dof = sum(ns[a] - 1 for a in series)
    pooled = math.sqrt(sum((ns[a] - 1) * var[a] for a in series) / dof)
    es = estimate / pooled if pooled > 0 else nan
    se2_terms = {a: weights[a] ** 2 * var[a] / ns[a] for a in series}
    se = math.sqrt(sum(se2_terms.values()))
    p_check, check = nan, "-"
    if se <= 1e-12 * max(1.0, abs(estimate)):  # no spread in any arm (up to rounding)
        p, lo, hi, df = (0.0 if estimate != 0 else 1.0), estimate, estimate, nan
    elif sorted(weights.values()) == [-1.0, 1.0]:
        treat, base = (series[a] for a in sorted(weights, key=lambda a: -weights[a]))
        res = stats.ttest_ind(treat, base, equal_var=False)
        ci = res.confidence_interval(level)
        p, lo, hi, df = float(res.pvalue), float(ci.low), float(ci.high), float(res.df)
        p_check, check = float(stats.mannwhitneyu(treat, base).pvalue), "Mann-Whitney"
    else:
        df = se**4 / sum(t**2 / (ns[a] - 1) for a, t in se2_terms.items() if t > 0)
        half = float(stats.t.ppf(0.5 + level / 2, df)) * se
        p = float(2 * stats.t.sf(abs(estimate) / se, df))
        lo, hi = estimate - half, estimate + half
    return Contrast(estimate, lo, hi, level, p, "Welch t", df, n_min, p_check, check, es, "d", pooled, w_ss)


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values of one family of comparisons.

    The k-th smallest of m p-values is multiplied by ``m - k + 1`` and the
    results are made monotone; rejecting where the adjusted p-value is below
    alpha controls the family-wise error rate at alpha
    (``statsmodels.stats.multitest.multipletests(method="holm")``). NaN
    p-values (comparisons that could not be tested) are left out of the family
    and stay NaN.

    Args:
        pvalues: raw p-values in [0, 1] or NaN.

    Returns:
        Adjusted p-values, same order and length.
    """
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


def t_test_power(d: float, n: int, alpha: float = 0.05, paired: bool = True) -> float:
    """Power of the two-sided t test with ``n`` seeds per arm for a standardised effect ``d``.

    Paired (one-sample on per-seed contrasts): ``df = n - 1``, noncentrality
    ``d * sqrt(n)``; unpaired (two arms of ``n``): ``df = 2n - 2``, noncentrality
    ``d * sqrt(n / 2)``. Power is the noncentral t probability of landing
    beyond either critical value (Cohen 1988, ch. 2), from ``scipy.stats.nct``;
    it equals ``statsmodels.stats.power.TTestPower().power`` where that is
    finite (both return NaN for some large effects at 2 seeds, where the
    negligible lower tail underflows; it is taken as 0 here).

    Args:
        d: standardised effect (mean contrast / its standard deviation).
        n: seeds per arm, at least 2.
        alpha: two-sided significance level.
        paired: one-sample (per-seed) or two-sample design.

    Returns:
        The probability of a significant result, in [0, 1].

    Raises:
        ValueError: ``n`` < 2.
    """
    if n < 2:
        raise ValueError(f"a t test needs at least 2 seeds per arm, got {n}")
    df, ncp = (n - 1, d * math.sqrt(n)) if paired else (2 * n - 2, d * math.sqrt(n / 2))
    crit = stats.t.ppf(1 - alpha / 2, df)
    ncp = abs(ncp)
    upper, lower = float(stats.nct.sf(crit, df, ncp)), float(stats.nct.cdf(-crit, df, ncp))
    # scipy's nct gives NaN for the far lower tail at large noncentrality (df = 1): it is ~0 there
    return min(1.0, upper + (lower if math.isfinite(lower) else 0.0))


def seeds_needed(
    effect: float,
    sd: float,
    alpha: float = 0.05,
    power: float = 0.8,
    paired: bool = True,
    weight_ss: float = 2.0,
    max_seeds: int = 100_000,
) -> int | None:
    """Seeds per arm for a two-sided t test at ``alpha`` to detect ``effect`` with ``power``.

    Paired: the one-sample t test on per-seed contrasts, standardised effect
    ``effect / sd``. Unpaired: the two-sample t test with equal arms, effect
    ``effect / (sd * sqrt(weight_ss / 2))`` (exact for a two-arm difference, a
    normal-theory approximation for larger contrasts). The answer is the
    smallest n whose :func:`t_test_power` reaches ``power`` (a search over whole
    numbers; the same numbers as G*Power and ``statsmodels`` ``solve_power``
    rounded up).

    Args:
        effect: the effect to detect, in the values' unit (sign ignored).
        sd: the spread of :attr:`Contrast.sd` (same unit).
        alpha: two-sided significance level.
        power: wanted probability of a significant result when the effect is real.
        paired: one-sample (per-seed) or two-sample design.
        weight_ss: sum of squared contrast weights (unpaired only).
        max_seeds: larger answers are reported as ``None``.

    Returns:
        The smallest whole number of seeds per arm (at least 2), or ``None``
        when it cannot be computed (no spread, no effect) or exceeds ``max_seeds``.
    """
    if not (effect == effect and sd == sd) or effect == 0 or sd <= 0:
        return None
    d = abs(effect) / sd if paired else abs(effect) / (sd * math.sqrt(weight_ss / 2))

    def enough(n: int) -> bool:
        return t_test_power(d, n, alpha, paired) >= power

    if enough(2):
        return 2
    hi = 4
    while not enough(hi):  # power grows with n: double, then bisect
        if hi >= max_seeds:
            return None
        hi = min(2 * hi, max_seeds)
    lo = hi // 2  # not enough at lo (or lo == 2, checked above)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi


def verdict(c: Contrast, p_adjusted: float, alpha: float, maximize: bool, min_seeds: int = MIN_SEEDS) -> str:
    """``better``, ``worse`` or ``no detectable difference`` for a comparison at ``alpha``.

    Args:
        c: the comparison (treatment minus baseline).
        p_adjusted: its p-value after the family's correction (Holm).
        alpha: significance level.
        maximize: whether larger values of the metric are better.
        min_seeds: fewest seeds (pairs, or values per arm) for any verdict.

    Returns:
        The verdict; ``not possible: < 3 seeds`` when there are too few seeds.
    """
    if c.n < min_seeds:
        return f"not possible: < {min_seeds} seeds"
    if not p_adjusted < alpha:
        return "no detectable difference"
    return "better" if (c.estimate > 0) == maximize else "worse"


def judge_claim(c: Contrast, direction: str, min_effect: float | None = None, min_seeds: int = MIN_SEEDS) -> str:
    """Whether a measured contrast supports a claim of the form "treatment changes the metric".

    The interval of ``c`` (computed at level ``1 - alpha``) is turned to the
    claim's direction and read as a two-sided test of "no effect" plus a check
    of the claimed size:

    - ``supported``: the interval lies wholly on the claimed side of 0 and
      reaches ``min_effect`` (when given): the effect is detected and the
      claimed size is compatible with the data;
    - ``contradicted``: the interval lies wholly on the other side of 0
      (opposite effect), or it ends below ``min_effect`` (an effect as large
      as claimed is ruled out);
    - ``inconclusive``: anything else, or fewer than ``min_seeds`` seeds.

    Args:
        c: treatment minus control, with its interval.
        direction: ``"increase"`` or ``"decrease"`` of the metric.
        min_effect: the claimed size (positive, in the metric's unit), or None.
        min_seeds: fewest seeds for a verdict.

    Returns:
        ``supported``, ``contradicted`` or ``inconclusive``, with a short reason after a colon where useful.

    Raises:
        ValueError: ``direction`` is neither ``increase`` nor ``decrease``.
    """
    if direction not in ("increase", "decrease"):
        raise ValueError(f"direction must be 'increase' or 'decrease', got {direction!r}")
    if c.n < min_seeds or not c.ci_low == c.ci_low:
        return f"inconclusive: < {min_seeds} seeds"
    sign = 1.0 if direction == "increase" else -1.0
    lo, hi = sorted((sign * c.ci_low, sign * c.ci_high))
    if hi < 0:
        return "contradicted: opposite effect"
    if min_effect is not None and hi < min_effect:
        return f"contradicted: effect < {min_effect:g}"
    if lo > 0:
        return "supported"
    return "inconclusive"
