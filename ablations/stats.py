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
  ch. 2), checked in the tests against G*Power and statsmodels;
- for sequential studies, which look at the data after every round of seeds
  and stop once the question is decided, an anytime-valid confidence
  sequence for the mean per-seed contrast with unknown variance (the
  scale-invariant Gaussian-mixture t test martingale of Wang & Ramdas 2023,
  after Lai 1976), valid at every look at once, so stopping early keeps its
  error rate; equivalence within a margin read off the same sequence (the
  sequential form of Schuirmann's 1987 two one-sided tests);
- for a sequential study whose looks were planned before its first run,
  repeated confidence intervals for those looks (Jennison & Turnbull 1989,
  "Interim analyses: the repeated confidence interval approach", JRSS B 51)
  with Pocock's (1977) constant nominal level, calibrated for the t
  statistic by simulation, intersected with the anytime-valid sequence at a
  small share of alpha that also covers looks beyond the plan.

Raises nothing on small samples: quantities that cannot be computed are NaN
and the verdict functions say why.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import special, stats

__all__ = [
    "BOUNDARIES",
    "CS_MIXTURE",
    "DIRECTION_ONLY",
    "MIN_SEEDS",
    "PLAN_RESERVE",
    "Contrast",
    "LookPlan",
    "Summary",
    "compare",
    "contrast",
    "holm",
    "intersect",
    "judge_claim",
    "no_spread",
    "outlying",
    "planned_level",
    "planned_levels",
    "repeated_ci",
    "seeds_needed",
    "sequential_contrast",
    "sequential_from_values",
    "sequential_verdict",
    "summarize",
    "t_cs",
    "t_cs_martingale",
    "t_test_power",
    "verdict",
]

MIN_SEEDS = 3  # fewer values per arm (or pairs): no verdict, the interval means too little
DIRECTION_ONLY = "direction confirmed, size not resolved"  # a claim with a size: above 0, the size not tested yet
NO_SPREAD = "no spread in the per-seed differences"


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
    half = float(special.stdtrit(n - 1, 0.5 + level / 2)) * sd / math.sqrt(n)  # scipy.stats.t.interval's, faster
    return Summary(n, mean, sd, median, mean - half, mean + half, level)


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
    used, series, shared, w_ss = _aligned(arms, weights)
    if shared is not None and len(shared) >= min_pairs:
        d = sum(w * series[a].loc[shared].to_numpy() for a, w in used.items())
        return _one_sample(np.asarray(d, dtype=float), level, w_ss)
    return _independent(series, used, level, w_ss)


def _aligned(arms: Mapping[str, pd.Series], weights: Mapping[str, float]):
    """``(weights != 0, their series without NaN, the seeds all of them share or None, sum of squared weights)``.

    Raises:
        KeyError: a weighted arm is missing from ``arms``.
    """
    used = {a: float(w) for a, w in weights.items() if w != 0}
    series = {a: arms[a].astype(float).dropna() for a in used}
    shared = None
    for s in series.values():
        shared = s.index if shared is None else shared.intersection(s.index)
    return used, series, shared, float(sum(w * w for w in used.values()))


def compare(treat: pd.Series, base: pd.Series, level: float = 0.95) -> Contrast:
    """Difference ``treat - base`` of two arms (see :func:`contrast`).

    Args:
        treat: values indexed by seed.
        base: values indexed by seed.
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


def outlying(values: pd.Series, threshold: float = 3.5, min_n: int = 5) -> pd.DataFrame:
    """Values far from the others by the modified z-score, a check on the t tests' normality.

    ``z_i = 0.6745 (x_i - median) / MAD`` with ``MAD = median |x_i - median|``; ``|z_i| > 3.5`` marks a
    likely outlier (Iglewicz & Hoaglin 1993, "How to Detect and Handle Outliers", ASQC Basic References in
    Quality Control 16). Median and MAD are not moved by the outlier itself, unlike the mean and SD. One
    per-seed difference far from the others makes the t interval unreliable at a few seeds (a skewed
    distribution of differences: ``benchmarks/sequential_error.py``, rows f to h).

    Args:
        values: one value per seed (indexed by seed), e.g. the per-seed differences of two arms.
        threshold: the ``|z|`` above which a value is marked.
        min_n: fewest values to judge (with fewer, median and MAD say too little).

    Returns:
        One row per marked value: ``seed``, ``value``, ``median``, ``z``; empty when fewer than
        ``min_n`` values or when the MAD is 0 (half the values or more are equal).
    """
    x = values.dropna()
    out = pd.DataFrame(columns=["seed", "value", "median", "z"])
    if len(x) < min_n:
        return out
    med = float(x.median())
    mad = float((x - med).abs().median())
    if mad <= 0:
        return out
    z = 0.6745 * (x - med) / mad
    far = z[z.abs() > threshold]
    rows = [{"seed": seed, "value": float(x[seed]), "median": med, "z": float(zi)} for seed, zi in far.items()]
    return pd.DataFrame(rows, columns=out.columns) if rows else out


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
        The verdict; ``not possible: < 3 seeds`` when there are too few seeds, ``not possible: no spread
        in the per-seed differences`` when every seed gave the same nonzero contrast (a zero-width interval).
    """
    if c.n < min_seeds:
        return f"not possible: < {min_seeds} seeds"
    if no_spread(c) and c.estimate != 0:
        return f"not possible: {NO_SPREAD}"
    if not p_adjusted < alpha:
        return "no detectable difference"
    return "better" if (c.estimate > 0) == maximize else "worse"


def judge_claim(
    c: Contrast,
    direction: str,
    min_effect: float | None = None,
    min_seeds: int = MIN_SEEDS,
    margin: float | None = None,
    identical: bool = False,
) -> str:
    """Whether a measured contrast supports a claim of the form "treatment changes the metric (by at least E)".

    The interval of ``c`` (computed at level ``1 - alpha``) is turned to the claim's direction and read as
    interval tests: of "no effect" (the direction), of the claimed size ``min_effect`` (a one-sided test of
    ``effect >= E`` against ``effect < E`` at each end of the interval), and, with an equivalence ``margin``,
    of "no difference as large as the margin" (two one-sided tests read off the same interval, Schuirmann
    1987). Every reading of one interval is a test at its level (Jennison & Turnbull 2000, "Group Sequential
    Methods with Applications to Clinical Trials", ch. 9: decisions read off repeated confidence intervals):

    - ``contradicted: opposite effect``: the interval lies wholly on the other side of 0;
    - a claim with a size ``E``:

      - ``supported: as large as claimed (>= E)``: the interval's lower end is at least ``E``;
      - ``contradicted: smaller than claimed (< E)``: its upper end is below ``E`` (the effect may be real,
        but an effect as large as claimed is ruled out);
      - ``direction confirmed, size not resolved``: it lies above 0 and contains ``E`` (not ``supported``:
        the size is not tested yet);

    - a claim without a size: ``supported`` when the interval lies wholly on the claimed side of 0;
    - ``equivalent: within ±M``: the interval contains 0 and lies inside ``(-margin, margin)`` (no
      difference as large as the margin either way), when the size verdicts do not apply;
    - ``inconclusive``: anything else, fewer than ``min_seeds`` seeds, or no spread in the per-seed
      contrasts (a zero-width interval has no uncertainty to judge by) unless the arms are identical by
      construction (``identical``: their configs are equal, so every contrast is exactly 0).

    Args:
        c: treatment minus control, with its interval.
        direction: ``"increase"`` or ``"decrease"`` of the metric.
        min_effect: the claimed size (positive, in the metric's unit), or None.
        min_seeds: fewest seeds for a verdict.
        margin: the equivalence margin (positive, the metric's unit), or None for no equivalence verdict.
        identical: the arms are the same configuration under two labels (a zero-width interval is real).

    Returns:
        The verdict, with a short reason after a colon where useful.

    Raises:
        ValueError: ``direction`` is neither ``increase`` nor ``decrease``.
    """
    if direction not in ("increase", "decrease"):
        raise ValueError(f"direction must be 'increase' or 'decrease', got {direction!r}")
    if c.n < min_seeds or not c.ci_low == c.ci_low:
        return f"inconclusive: < {min_seeds} seeds"
    if no_spread(c) and not identical:
        return f"inconclusive: {NO_SPREAD}"
    sign = 1.0 if direction == "increase" else -1.0
    lo, hi = sorted((sign * c.ci_low, sign * c.ci_high))
    if hi < 0:
        return "contradicted: opposite effect"
    inside = margin is not None and margin > 0 and -margin < lo and hi < margin
    if min_effect is None:
        if lo > 0:
            return "supported"
        return f"equivalent: within ±{margin:g}" if inside else "inconclusive"
    if lo >= min_effect:
        return f"supported: as large as claimed (>= {min_effect:g})"
    if hi < min_effect:
        if inside and lo <= 0:
            return f"equivalent: within ±{margin:g}"
        return f"contradicted: smaller than claimed (< {min_effect:g})"
    if lo > 0:
        return DIRECTION_ONLY
    return "inconclusive"


def no_spread(c: Contrast) -> bool:
    """Whether ``c``'s interval has zero width: every per-seed contrast was the same (quantised metrics, few seeds).

    Such an interval claims no uncertainty at all, so no verdict is read off it (unless the arms are
    identical by construction, where every contrast is exactly 0).
    """
    return c.ci_low == c.ci_low and c.ci_low == c.ci_high


def intersect(previous: tuple[float, float] | None, current: tuple[float, float]) -> tuple[float, float]:
    """The running intersection of a comparison's intervals over the looks of a sequential study.

    When the intervals of every look cover the true value at once with probability at least 1 - alpha
    (repeated confidence intervals, Jennison & Turnbull 1989; a confidence sequence, Howard, Ramdas,
    McAuliffe & Sekhon 2021, "Time-uniform, nonparametric, nonasymptotic confidence sequences", Annals of
    Statistics 49, sect. 3: the running intersection of a confidence sequence is one too), so does their
    intersection up to any look: it can only narrow, so a verdict read off it, once decided, stays. An
    empty intersection can only happen on the alpha-probability event that some interval missed; the
    earlier intersection is kept then.

    Args:
        previous: the intersection up to the last look, or None at the first.
        current: this look's interval.

    Returns:
        ``(low, high)``.
    """
    if previous is None or not previous[0] == previous[0]:
        return current
    if not current[0] == current[0]:
        return previous
    lo, hi = max(previous[0], current[0]), min(previous[1], current[1])
    return previous if lo > hi else (lo, hi)


# ------------------------------------------------------------------------------ sequential (anytime-valid)

CS_MIXTURE = 0.1  # c: prior precision of the standardised effect; narrowest near 5-20 seeds, can decide at 3


def t_cs_martingale(d: Sequence[float] | np.ndarray, mu: float = 0.0, c: float = CS_MIXTURE) -> np.ndarray:
    """The t test martingale for "the mean of ``d`` is ``mu``", after each of its values.

    With ``y_i = d_i - mu``, ``S_n = sum y_i`` and ``V_n = sum y_i^2``, the value after n values is

        M_n = sqrt(c / (n + c)) * (V_n / (V_n - S_n^2 / (n + c)))^(n / 2),

    the ratio of the likelihood of the scale-invariant part of the data under
    ``mean = mu + delta`` with ``delta ~ N(0, sigma^2 / c)`` to that under
    ``mean = mu``, both mixed over sigma with the right Haar measure
    ``d sigma / sigma`` (Wang & Ramdas 2023, "Anytime-valid t-tests and
    confidence sequences for Gaussian means with unknown variance",
    Sequential Analysis, sect. 3: Lai's 1976 construction with a Gaussian
    instead of a flat mixture over the mean). Under ``mean = mu`` (any sigma)
    it is a nonnegative martingale with ``M_1 = 1`` in the filtration of the
    scale-invariant statistics, so by Ville's inequality
    ``P(M_n >= 1/alpha for some n) <= alpha``: a test that rejects the first
    time ``M_n >= 1/alpha`` keeps level alpha however often it looks.

    Args:
        d: values in the order they were observed (per-seed contrasts, seeds in order).
        mu: the null value of the mean.
        c: mixture precision (> 0).

    Returns:
        ``M_1 .. M_n`` as a float array (n,); ``inf`` where every value so far equals ``mu`` is
        impossible (that gives ``M_n`` < 1), and ``inf`` where the values are equal but not ``mu``.
    """
    y = np.asarray(d, dtype=float) - mu
    n = np.arange(1, len(y) + 1, dtype=float)
    s, v = np.cumsum(y), np.cumsum(y * y)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(v > 0, s * s / ((n + c) * v), 0.0)  # in [0, n / (n + c)]
        log_m = 0.5 * np.log(c / (n + c)) - 0.5 * n * np.log1p(-q)
    return np.exp(log_m)


def t_cs(d: Sequence[float] | np.ndarray, alpha: float = 0.05, c: float = CS_MIXTURE) -> tuple[float, float]:
    """The anytime-valid (1 - alpha) confidence sequence for the mean of ``d``, at ``n = len(d)``.

    The set of ``mu`` with ``M_n(mu) < 1/alpha`` (:func:`t_cs_martingale`). In closed form, with
    mean ``m``, ``SS = sum (d_i - m)^2``, ``r = (alpha sqrt(c / (n + c)))^(2/n)`` and
    ``k = (1 - r)(n + c)``: ``m ± sqrt(k SS / (n (n - k)))`` when ``n > k``, else the whole line
    (too few values for any bound at this alpha). It covers the true mean at every n at once with
    probability at least 1 - alpha when the values are independent draws of one normal
    distribution (Wang & Ramdas 2023, see :func:`t_cs_martingale`), so an interval read at a look
    chosen by the data (the first that decides) is still a valid (1 - alpha) interval. At a fixed n it
    is wider than Student's t interval: that is the price of looking as often as one likes.

    Args:
        d: the observed values (n, any order: the interval at n depends only on their mean and spread).
        alpha: error probability over the whole sequence, in (0, 1).
        c: mixture precision (> 0): larger c narrows the sequence at large n and widens it at small n.

    Returns:
        ``(low, high)``; ``(-inf, inf)`` when n is too small; ``(m, m)`` when every value is ``m``.

    Raises:
        ValueError: alpha outside (0, 1) or c <= 0.
    """
    if not 0 < alpha < 1 or c <= 0:
        raise ValueError(f"need 0 < alpha < 1 and c > 0, got alpha={alpha}, c={c}")
    x = np.asarray(d, dtype=float)
    n = len(x)
    if n < 2:
        return -math.inf, math.inf
    m = float(x.mean())
    ss = float(((x - m) ** 2).sum())
    if ss <= 1e-24 * max(1.0, m * m) * n:  # every value equal (two identical arms: all differences 0)
        return m, m
    r = (alpha * math.sqrt(c / (n + c))) ** (2.0 / n)
    k = (1.0 - r) * (n + c)
    if n <= k:
        return -math.inf, math.inf
    half = math.sqrt(k * ss / (n * (n - k)))
    return m - half, m + half


# ------------------------------------------------------------------------------ sequential (planned looks)

PLAN_RESERVE = 0.1  # share of alpha kept for the anytime-valid sequence, which also covers looks beyond the plan
PLAN_SIMULATIONS = 200_000  # null studies calibrating a plan: Monte Carlo SE of its level about 0.0005 at 0.05


BOUNDARIES = ("pocock", "obrien-fleming")


@dataclass(frozen=True)
class LookPlan:
    """The looks of a sequential study as planned before its first run: seeds per arm at each look.

    With a plan, a comparison's interval at a planned look is the intersection of two intervals that
    share alpha: the repeated confidence interval of the planned looks (:func:`repeated_ci`) at
    ``alpha * (1 - reserve)`` and the anytime-valid confidence sequence (:func:`t_cs`) at ``alpha *
    reserve``; at any other look (a plan extended later: ``--max-seeds`` above the planned cap, another
    ``step``) only the second. By the union bound, every interval of the study covers the true mean
    at once with probability at least ``1 - alpha``, however the study is stopped or extended.

    The boundary shape sets how the planned share of alpha is spread over the looks (on the scale of
    the normal quantile ``z`` of each look's t test p-value): ``pocock``, a constant boundary, the same
    nominal level at every look (Pocock 1977); ``obrien-fleming``, a boundary ``C sqrt(n_K / n_k)`` that
    is very strict at the first looks and near the fixed-n level at the last (O'Brien & Fleming 1979, "A
    multiple testing procedure for clinical trials", Biometrics 35; the shape Lan & DeMets' 1983 spending
    function ``2 - 2 Phi(z_{alpha/2} / sqrt(t))`` approximates). Spending little alpha at 3 or 5 seeds
    keeps one unseen bad seed (a skewed distribution of differences) from deciding a study before it is
    drawn (``benchmarks/sequential_error.py``).

    Attributes:
        sizes: seeds per arm at each planned look, increasing (e.g. ``(3, 5, 7, ..., 19, 20)``).
        reserve: share of alpha for the anytime-valid sequence, in (0, 1).
        boundary: ``pocock`` or ``obrien-fleming``.

    Raises:
        ValueError: sizes empty, not increasing, or below 2; reserve outside (0, 1); unknown boundary.
    """

    sizes: tuple[int, ...]
    reserve: float = PLAN_RESERVE
    boundary: str = "pocock"

    def __post_init__(self) -> None:
        sizes = tuple(int(n) for n in self.sizes)
        if not sizes or sizes[0] < 2 or any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)):
            raise ValueError(f"a look plan needs increasing sizes of at least 2 seeds, got {list(self.sizes)}")
        if not 0 < self.reserve < 1:
            raise ValueError(f"reserve must be in (0, 1), got {self.reserve}")
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {', '.join(BOUNDARIES)}, got {self.boundary!r}")
        object.__setattr__(self, "sizes", sizes)

    def shape(self) -> np.ndarray:
        """The boundary's shape ``b_k`` at each look: reject at look k when ``|z_k| > C b_k``."""
        n = np.asarray(self.sizes, dtype=float)
        return np.ones_like(n) if self.boundary == "pocock" else np.sqrt(n[-1] / n)


def _z_of_t(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    """The normal quantile with the same two-sided tail as ``|t|`` on ``df`` degrees of freedom."""
    p_half = special.stdtr(df, -np.abs(t))  # one tail of the two-sided p-value
    with np.errstate(divide="ignore"):
        return -special.ndtri(p_half)


@functools.lru_cache(maxsize=16)
def _null_max_z(sizes: tuple[int, ...], boundary: str = "pocock") -> np.ndarray:
    """``max_k |z_k| / b_k`` over the looks ``sizes`` of null studies, sorted (``z_k``: :func:`_z_of_t` of look k).

    Under normal iid values the vector of t statistics of ``d - mu`` at the looks does not depend on
    ``mu`` or sigma, so standard normal draws give its exact null distribution (to Monte Carlo error).
    Seeded: the same plan gives the same calibration everywhere.
    """
    plan = LookPlan(sizes, boundary=boundary)
    rng = np.random.default_rng(20260)
    sizes_a, shape = np.asarray(sizes), plan.shape()
    out = []
    for start in range(0, PLAN_SIMULATIONS, 50_000):
        z = rng.standard_normal((min(50_000, PLAN_SIMULATIONS - start), sizes[-1]))
        s, v = np.cumsum(z, axis=1)[:, sizes_a - 1], np.cumsum(z * z, axis=1)[:, sizes_a - 1]
        var = (v - s * s / sizes_a) / (sizes_a - 1)
        t = (s / sizes_a) / np.sqrt(var / sizes_a)
        out.append((_z_of_t(t, sizes_a - 1) / shape).max(axis=1))
    return np.sort(np.concatenate(out))


def _boundary_constant(plan: LookPlan, alpha: float) -> float:
    """``C``: the (1 - alpha) quantile of the null ``max_k |z_k| / b_k``."""
    null = _null_max_z(plan.sizes, plan.boundary)
    return float(null[min(math.ceil((1 - alpha) * len(null)), len(null)) - 1])


def planned_levels(plan: LookPlan, alpha: float) -> np.ndarray:
    """The nominal two-sided level of each planned look: reject at look k when its t test p-value is below it.

    The levels ``a_k = 2 (1 - Phi(C b_k))`` with the boundary's shape ``b_k`` (:meth:`LookPlan.shape`) and
    ``C`` such that a one-sample t test at each planned look (``n_k - 1`` degrees of freedom) at its level
    rejects a true null at some look with probability ``alpha``. Pocock's (1977) constant level, or O'Brien
    & Fleming's (1979) boundary, for the t statistic (whose joint null distribution over the looks is free of
    the mean and variance): calibrated on ``PLAN_SIMULATIONS`` seeded null studies where Jennison & Turnbull
    1991 ("Exact calculations for sequential t, chi-square and F tests", Biometrika 78) integrate
    numerically; their 2000 book, sect. 11.4, group sequential t-tests.

    Args:
        plan: the looks and the boundary shape.
        alpha: error probability over all the looks, in (0, 1).

    Returns:
        The nominal levels, one per look, each in (0, alpha].

    Raises:
        ValueError: alpha outside (0, 1).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return 2.0 * special.ndtr(-_boundary_constant(plan, alpha) * plan.shape())


def planned_level(sizes: Sequence[int], alpha: float) -> float:
    """Pocock's constant nominal level for the looks ``sizes``: reject at a look when its p-value is below it.

    :func:`planned_levels` of a Pocock plan (Pocock 1977, "Group sequential methods in the design and
    analysis of clinical trials", Biometrika 64). With one look it is ``alpha``; with the looks at 3, 5,
    ..., 19, 20 seeds and alpha 0.045 about 0.0086 (``benchmarks/sequential_error.py`` prints it).

    Args:
        sizes: seeds per arm at each planned look, increasing, each at least 2.
        alpha: error probability over all the looks, in (0, 1).

    Returns:
        The nominal level, in (0, alpha].

    Raises:
        ValueError: alpha outside (0, 1), or sizes not a valid plan (:class:`LookPlan`).
    """
    return float(planned_levels(LookPlan(tuple(sizes)), alpha)[0])


def _repeated_p(plan: LookPlan, look: int, p_nominal: float) -> float:
    """The overall p-value at planned look ``look``: the share of null studies with a statistic at least this."""
    null = _null_max_z(plan.sizes, plan.boundary)
    with np.errstate(divide="ignore"):
        z = -float(special.ndtri(p_nominal / 2)) / float(plan.shape()[look])
    return float(1.0 - np.searchsorted(null, z, side="left") / len(null))


def repeated_ci(
    d: Sequence[float] | np.ndarray, sizes: Sequence[int] | LookPlan, alpha: float = 0.05, look: int | None = None
) -> tuple[float, float]:
    """The repeated (1 - alpha) confidence interval for the mean of ``d`` at one of the planned looks.

    ``m ± t(1 - a_k/2, n - 1) * s / sqrt(n)`` with ``a_k`` the look's nominal level (:func:`planned_levels`):
    the t interval at the boundary's level. The intervals of all planned looks cover the true mean at once
    with probability 1 - alpha when the values are independent draws of one normal distribution (Jennison
    & Turnbull 1989, "Interim analyses: the repeated confidence interval approach", JRSS B 51), so the
    interval at a look the data chose (the first that decides) keeps its level, as does an equivalence
    verdict read off it. ``n = len(d)`` may be below the look's planned size when seeds failed.

    Args:
        d: the observed values (n,).
        sizes: the planned looks (seeds per arm), increasing (a Pocock plan), or a :class:`LookPlan`.
        alpha: error probability over all the planned looks, in (0, 1).
        look: the index of this look in the plan (default: the one of size ``len(d)``, else the first
            at least that size).

    Returns:
        ``(low, high)``; ``(-inf, inf)`` when n < 2; ``(m, m)`` when every value is ``m``.

    Raises:
        ValueError: alpha outside (0, 1), or sizes not a valid plan.
    """
    plan = sizes if isinstance(sizes, LookPlan) else LookPlan(tuple(sizes))
    x = np.asarray(d, dtype=float)
    n = len(x)
    if look is None:
        look = next((k for k, size in enumerate(plan.sizes) if size >= n), len(plan.sizes) - 1)
    level = float(planned_levels(plan, alpha)[look])
    if n < 2:
        return -math.inf, math.inf
    m, sd = float(x.mean()), float(x.std(ddof=1))
    half = -float(special.stdtrit(n - 1, level / 2)) * sd / math.sqrt(n)  # t(1 - level/2, n - 1) s / sqrt(n)
    return m - half, m + half


def sequential_contrast(
    arms: Mapping[str, pd.Series],
    weights: Mapping[str, float],
    alpha: float = 0.05,
    c: float = CS_MIXTURE,
    plan: LookPlan | None = None,
    look: int | None = None,
) -> Contrast:
    """A contrast of arms with a sequential interval instead of a fixed-n t interval.

    The contrast is computed per seed over the seeds every weighted arm has run (seeds in
    increasing order, the order a sequential study adds them), then judged by
    :func:`sequential_from_values`: without a plan, the anytime-valid confidence sequence
    (:func:`t_cs`) at alpha; with one, its planned looks also get the repeated confidence interval
    (:class:`LookPlan`).

    Args:
        arms: arm name -> values indexed by seed.
        weights: arm name -> weight (summing to 0).
        alpha: error probability of the whole sequence (divide it by the number of comparisons
            first: Bonferroni).
        c: mixture precision of the anytime-valid sequence.
        plan: the looks planned before the study's first run, or None.
        look: the planned seeds per arm of this look (default: the seeds shared); the planned
            interval applies when it is one of ``plan.sizes``.

    Returns:
        A :class:`Contrast` with ``test`` ``"t-CS"`` (anytime-valid only) or ``"RCI"`` (a planned look),
        ``level = 1 - alpha``; NaN interval and ``test = "-"`` when fewer than 2 seeds are shared.

    Raises:
        KeyError: a weighted arm is missing from ``arms``.
    """
    used, series, shared, w_ss = _aligned(arms, weights)
    nan = math.nan
    if shared is None or len(shared) < 2:
        n = 0 if shared is None else len(shared)
        return Contrast(nan, nan, nan, 1 - alpha, nan, "-", nan, n, nan, "-", nan, "d_z", nan, w_ss)
    shared = shared.sort_values()
    d = np.asarray(sum(w * series[a].loc[shared].to_numpy() for a, w in used.items()), dtype=float)
    return sequential_from_values(d, alpha, c, w_ss, plan, look)


def sequential_from_values(
    d: np.ndarray,
    alpha: float = 0.05,
    c: float = CS_MIXTURE,
    w_ss: float = 2.0,
    plan: LookPlan | None = None,
    look: int | None = None,
) -> Contrast:
    """:func:`sequential_contrast` on per-seed contrasts ``d`` (n,) already computed, seeds in order.

    Without a plan: the anytime-valid sequence at alpha, ``p = min(1, 1 / M_n(0))``. With a plan: the
    anytime-valid sequence at ``alpha * plan.reserve`` and, at a planned look (``look``, default n, in
    ``plan.sizes``), intersected with the repeated confidence interval at ``alpha * (1 - plan.reserve)``;
    ``p`` is the smaller of the two tests' p-values, each divided by its share of alpha, so ``p < alpha``
    exactly when the interval excludes 0.

    Raises:
        ValueError: alpha outside (0, 1) or c <= 0.
    """
    d = np.asarray(d, dtype=float)
    n, mean = len(d), float(d.mean())
    share = 1.0 if plan is None else plan.reserve
    lo, hi = t_cs(d, alpha * share, c)
    size = n if look is None else look
    planned = plan is not None and size in plan.sizes
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    if lo == hi:  # no spread
        p = 0.0 if mean != 0 else 1.0
    else:
        p = float(min(1.0, 1.0 / t_cs_martingale(d, 0.0, c)[-1] / share))
        if planned:
            k = plan.sizes.index(size)
            r_lo, r_hi = repeated_ci(d, plan, alpha * (1 - plan.reserve), look=k)
            lo, hi = max(lo, r_lo), min(hi, r_hi)
            p_nominal = 2.0 * float(special.stdtr(n - 1, -abs(mean) / (sd / math.sqrt(n))))
            p = min(p, _repeated_p(plan, k, p_nominal) / (1 - plan.reserve), 1.0)
    es = mean / sd if sd > 0 else math.nan
    test = "RCI" if planned else "t-CS"
    return Contrast(mean, lo, hi, 1 - alpha, p, test, n - 1, n, math.nan, "-", es, "d_z", sd, w_ss)


def sequential_verdict(
    c: Contrast, maximize: bool, margin: float | None = None, min_seeds: int = MIN_SEEDS, identical: bool = False
) -> str:
    """The verdict of a sequential comparison (:func:`sequential_contrast`, or its running intersection).

    - ``better`` / ``worse``: the interval excludes 0 (on the better or worse side of the metric);
    - ``equivalent``: it lies inside ``(-margin, margin)`` and contains 0: no difference as large
      as the margin (the sequential form of two one-sided tests, Schuirmann 1987, read off the same
      (1 - alpha) interval, which is conservative; Jennison & Turnbull 2000, ch. 9);
    - ``no detectable difference``: neither yet;
    - ``not possible: < 3 seeds`` with fewer than ``min_seeds`` seeds, and ``not possible: no spread in the
      per-seed differences`` when the interval has zero width (every seed gave the same difference) unless
      the arms are identical by construction (``identical``), where a zero difference is exact.

    Args:
        c: treatment minus baseline with its sequential interval.
        maximize: whether larger values of the metric are better.
        margin: the equivalence margin (positive, the values' unit), or None for no equivalence.
        min_seeds: fewest seeds (pairs) for a verdict.
        identical: the arms are one configuration under two labels.

    Returns:
        One of the verdicts above.
    """
    lo, hi = c.ci_low, c.ci_high
    if c.n < min_seeds:
        return f"not possible: < {min_seeds} seeds"
    if not (lo == lo and hi == hi):
        return "no detectable difference"
    if no_spread(c) and not identical:
        return f"not possible: {NO_SPREAD}"
    if lo > 0 or hi < 0:
        return "better" if (c.estimate > 0) == maximize else "worse"
    if margin is not None and margin > 0 and -margin < lo and hi < margin:
        return "equivalent"
    return "no detectable difference"
