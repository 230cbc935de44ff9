"""ablations.stats against cases with a known answer: R's t.test on Student's sleep data, G*Power's sample
sizes, hand-computed Holm and Wilcoxon values, constructed studies whose true effect is known."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from ablations import stats

# Student (1908) / Cushny & Peebles: extra hours of sleep of 10 patients under two drugs (R's `sleep`).
DRUG1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
DRUG2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]


def s(values, seeds=None) -> pd.Series:
    return pd.Series(values, index=seeds if seeds is not None else range(len(values)), dtype=float)


def test_summary_matches_t_interval_by_hand():
    out = stats.summarize([50.0, 60.0, 70.0])
    half = 4.302653 * 10 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert (out.n, out.mean, out.std, out.median) == (3, 60.0, 10.0, 60.0)
    assert out.ci_low == pytest.approx(60 - half, abs=1e-4) and out.ci_high == pytest.approx(60 + half, abs=1e-4)
    assert math.isnan(stats.summarize([1.0]).ci_low) and stats.summarize([1.0]).mean == 1.0
    assert stats.summarize([]).n == 0
    same = stats.summarize([2.0, 2.0, 2.0])
    assert same.ci_low == same.ci_high == 2.0


def test_paired_t_matches_r_on_the_sleep_data():
    # R: t.test(extra ~ group, data = sleep, paired = TRUE)
    # t = -4.0621, df = 9, p-value = 0.002833, 95% CI -2.4598858 -0.7001142, mean difference -1.58
    c = stats.compare(s(DRUG1), s(DRUG2))
    assert c.test == "paired t" and c.paired and c.n == 10 and c.df == 9
    assert c.estimate == pytest.approx(-1.58)
    assert c.ci_low == pytest.approx(-2.4598858, abs=1e-6) and c.ci_high == pytest.approx(-0.7001142, abs=1e-6)
    assert c.p == pytest.approx(0.002833, abs=1e-6)
    # Cohen's d_z = mean difference / sd of differences (sd = 1.229995)
    assert c.effect_size_kind == "d_z" and c.effect_size == pytest.approx(-1.58 / 1.229995, abs=1e-5)
    assert c.sd == pytest.approx(1.229995, abs=1e-6)
    assert c.check == "Wilcoxon" and 0 < c.p_check < 0.05


def test_welch_matches_r_on_the_sleep_data():
    # R: t.test(extra ~ group, data = sleep): t = -1.8608, df = 17.776, p-value = 0.07939,
    # 95% CI -3.3654832 0.2054832
    c = stats.compare(s(DRUG1, range(10)), s(DRUG2, range(10, 20)))
    assert c.test == "Welch t" and not c.paired
    assert c.df == pytest.approx(17.776, abs=1e-3)
    assert c.p == pytest.approx(0.07939, abs=1e-5)
    assert c.ci_low == pytest.approx(-3.3654832, abs=1e-6) and c.ci_high == pytest.approx(0.2054832, abs=1e-6)
    assert c.check == "Mann-Whitney" and c.effect_size_kind == "d"
    pooled = math.sqrt((np.var(DRUG1, ddof=1) + np.var(DRUG2, ddof=1)) / 2)
    assert c.effect_size == pytest.approx(-1.58 / pooled)


def test_general_unpaired_contrast_reduces_to_welch():
    # weights +-2: the Welch-Satterthwaite path; the estimate and interval double, p and df are Welch's
    a, b = s(DRUG1, range(10)), s(DRUG2, range(10, 20))
    c = stats.contrast({"a": a, "b": b}, {"a": 2.0, "b": -2.0})
    welch = sps.ttest_ind(a, b, equal_var=False)
    assert c.estimate == pytest.approx(-3.16)
    assert c.p == pytest.approx(welch.pvalue) and c.df == pytest.approx(welch.df)
    ci = welch.confidence_interval()
    assert c.ci_low == pytest.approx(2 * ci.low) and c.ci_high == pytest.approx(2 * ci.high)


def test_paired_by_shared_seeds_only():
    # seeds 0-2 shared; seed 3 only in one arm is left out of the pairing
    c = stats.compare(s([51.0, 62.0, 73.0, 99.0], [0, 1, 2, 3]), s([50.0, 60.0, 70.0], [0, 1, 2]))
    assert c.test == "paired t" and c.n == 3 and c.estimate == pytest.approx(2.0)
    assert c.p == pytest.approx(0.07418, abs=1e-4)  # t = 2 / (1/sqrt(3)), 2 df
    assert c.p_check == pytest.approx(0.25)  # exact Wilcoxon, 3 positive differences: 2 / 2^3


def test_no_spread_gives_exact_answer_and_too_few_values_give_nan():
    c = stats.compare(s([2.0, 3.0, 4.0]), s([1.0, 2.0, 3.0]))
    assert (c.estimate, c.ci_low, c.ci_high, c.p) == (1.0, 1.0, 1.0, 0.0)
    one = stats.compare(s([1.0], [0]), s([2.0, 3.0], [5, 6]))
    assert one.test == "-" and math.isnan(one.p) and one.estimate == pytest.approx(-1.5)


def test_wilcoxon_exact_value():
    c = stats.compare(s([2.0, 4.0, 6.0, 8.0, 10.0]), s([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert c.p_check == pytest.approx(2 / 32)  # all 5 differences positive: exact two-sided p = 2 / 2^5


def test_holm_matches_hand_computation():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.02, 0.03, 0.06, 0.06
    out = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert out == pytest.approx([0.03, 0.06, 0.06, 0.02])
    with_nan = stats.holm([0.01, math.nan, 0.04])
    assert with_nan[0] == pytest.approx(0.02) and math.isnan(with_nan[1]) and with_nan[2] == pytest.approx(0.04)
    assert stats.holm([0.6, 0.9]).max() == pytest.approx(1.0)


def test_seeds_needed_matches_g_power():
    # G*Power / Cohen (1988): d = 0.5, two-sided alpha 0.05, power 0.8 -> 34 pairs; 64 per group unpaired
    assert stats.seeds_needed(1.0, 2.0, 0.05, 0.8, paired=True) == 34
    assert stats.seeds_needed(1.0, 2.0, 0.05, 0.8, paired=False) == 64
    assert stats.seeds_needed(-1.0, 2.0) == 34  # the sign does not matter
    assert stats.seeds_needed(1.0, 0.0) is None and stats.seeds_needed(0.0, 1.0) is None
    assert stats.seeds_needed(1e-6, 10.0) is None  # beyond max_seeds
    assert stats.seeds_needed(100.0, 1.0) == 2


@pytest.mark.parametrize("d", [0.2, 0.5, 0.8, 1.3, 2.0, 3.0])
@pytest.mark.parametrize("paired", [True, False])
def test_power_and_seeds_agree_with_statsmodels(d, paired):
    from statsmodels.stats.power import TTestIndPower, TTestPower

    solver = TTestPower() if paired else TTestIndPower()
    assert stats.t_test_power(d, 5, 0.05, paired) == pytest.approx(solver.power(d, 5, 0.05), abs=1e-9)
    assert stats.seeds_needed(d, 1.0, 0.05, 0.8, paired) == max(
        2, math.ceil(solver.solve_power(d, alpha=0.05, power=0.8))
    )


def test_power_at_two_seeds_for_large_effects_is_finite():
    # scipy's (and so statsmodels') noncentral t gives NaN for the negligible lower tail here
    assert 0.6 < stats.t_test_power(8.0, 2) < 0.65 and stats.t_test_power(40.0, 2) > 0.99
    assert stats.seeds_needed(8.0, 1.0) == 3 and stats.seeds_needed(0.3, 1e-16) == 2
    with pytest.raises(ValueError, match="at least 2"):
        stats.t_test_power(1.0, 1)


def test_seeds_needed_gives_the_promised_power_by_simulation():
    n = stats.seeds_needed(1.4, 3.0, 0.05, 0.8)  # the batchnorm claim: 1.4 pp, paired sd 3 pp
    rng = np.random.default_rng(1)
    d = rng.normal(1.4, 3.0, size=(4000, n))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    power = np.mean(2 * sps.t.sf(np.abs(t), n - 1) < 0.05)
    assert 0.77 < power < 0.83
    d = rng.normal(1.4, 3.0, size=(4000, n - 3))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n - 3))
    assert np.mean(2 * sps.t.sf(np.abs(t), n - 4) < 0.05) < 0.8  # fewer seeds: less power


def test_constructed_study_interval_covers_the_true_effect_at_the_nominal_rate():
    # 400 studies of 5 seeds, true paired effect +1 point, seed effects shared by both arms
    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(400):
        seed_effect = rng.normal(0, 2, size=5)
        base = 60 + seed_effect + rng.normal(0, 0.7, size=5)
        treat = 61 + seed_effect + rng.normal(0, 0.7, size=5)
        c = stats.compare(s(treat), s(base))
        hits += c.ci_low < 1.0 < c.ci_high
    assert 0.92 <= hits / 400 <= 0.98


def test_interaction_contrast_of_a_2x2_matches_ols():
    """Known interaction +3 in a 2x2 with seeds as blocks; the estimate equals the OLS coefficient."""
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(0)
    rows = []
    for seed in range(8):
        block = rng.normal(0, 2)
        for a in (0, 1):
            for b in (0, 1):
                y = 50 + block + 2 * a - 1 * b + 3 * a * b + rng.normal(0, 0.5)
                rows.append({"seed": seed, "a": a, "b": b, "y": y})
    df = pd.DataFrame(rows)
    arms = {f"{a}{b}": g.set_index("seed")["y"] for (a, b), g in df.groupby(["a", "b"])}
    c = stats.contrast(arms, {"11": 1, "10": -1, "01": -1, "00": 1})
    ols = smf.ols("y ~ C(a) * C(b) + C(seed)", df).fit()
    assert c.estimate == pytest.approx(ols.params["C(a)[T.1]:C(b)[T.1]"])
    assert c.paired and c.ci_low < 3 < c.ci_high and c.p < 0.001
    # main effect of a, averaged over b: true value 2 + 3/2 = 3.5
    main = stats.contrast(arms, {"10": 0.5, "11": 0.5, "00": -0.5, "01": -0.5})
    assert main.ci_low < 3.5 < main.ci_high


def test_verdicts():
    better = stats.compare(s([61.0, 62.1, 63.0, 64.2]), s([60.0, 61.0, 62.0, 63.0]))
    assert stats.verdict(better, better.p, 0.05, maximize=True) == "better"
    assert stats.verdict(better, better.p, 0.05, maximize=False) == "worse"
    assert stats.verdict(better, 0.2, 0.05, maximize=True) == "no detectable difference"
    two = stats.compare(s([61.0, 62.0]), s([60.0, 61.5]))
    assert stats.verdict(two, 0.0, 0.05, True) == "not possible: < 3 seeds"


def _c(est, lo, hi, n=3):
    return stats.Contrast(est, lo, hi, 0.95, 0.5, "paired t", n - 1, n, 0.5, "Wilcoxon", 0.1, "d_z", 1.0, 2.0)


@pytest.mark.parametrize(
    ("interval", "direction", "min_effect", "expected"),
    [
        ((1.0, 0.2, 1.8), "increase", None, "supported"),
        # a claim with a size: the size is tested too, and a detected direction alone is not `supported`
        ((1.0, 0.2, 1.8), "increase", 1.4, "direction confirmed, size not resolved"),
        ((2.0, 1.5, 2.5), "increase", 1.4, "supported: as large as claimed (>= 1.4)"),
        ((1.0, 0.2, 1.2), "increase", 1.4, "contradicted: smaller than claimed (< 1.4)"),  # real but smaller
        ((0.1, -0.5, 0.7), "increase", 1.4, "contradicted: smaller than claimed (< 1.4)"),  # 1.4 ruled out
        ((-1.0, -1.8, -0.2), "increase", None, "contradicted: opposite effect"),
        ((-1.0, -1.8, -0.2), "decrease", 0.2, "supported: as large as claimed (>= 0.2)"),
        ((-1.0, -1.8, -0.2), "decrease", 1.5, "direction confirmed, size not resolved"),
        ((2.6, -7.1, 12.3), "increase", 1.4, "inconclusive"),  # the 5-epoch BatchNorm check
    ],
)
def test_judge_claim(interval, direction, min_effect, expected):
    assert stats.judge_claim(_c(*interval), direction, min_effect) == expected


@pytest.mark.parametrize(
    ("interval", "min_effect", "expected"),
    [
        ((0.1, -0.5, 0.7), None, "equivalent: within ±1"),  # no difference as large as the margin
        ((0.1, -0.5, 0.7), 1.4, "equivalent: within ±1"),  # also below the claimed size: no difference at all
        ((0.1, -0.5, 1.2), 1.4, "contradicted: smaller than claimed (< 1.4)"),  # below 1.4, not within ±1
        ((0.6, 0.3, 0.9), None, "supported"),  # a real increase, smaller than the margin: the direction decides
        ((0.6, 0.3, 0.9), 0.2, "supported: as large as claimed (>= 0.2)"),
        ((0.1, -1.5, 0.7), None, "inconclusive"),
    ],
)
def test_a_claim_can_end_equivalent_within_the_margin(interval, min_effect, expected):
    assert stats.judge_claim(_c(*interval), "increase", min_effect, margin=1.0) == expected


def test_no_verdict_from_a_zero_width_interval_unless_the_arms_are_identical():
    point = _c(2.0, 2.0, 2.0)  # three seeds, every difference exactly 2 (quantised accuracies)
    assert stats.judge_claim(point, "increase", 1.4) == "inconclusive: no spread in the per-seed differences"
    zero = _c(0.0, 0.0, 0.0)
    assert stats.judge_claim(zero, "increase", margin=1.0, identical=True) == "equivalent: within ±1"
    assert stats.verdict(point, 0.0, 0.05, True) == "not possible: no spread in the per-seed differences"


def test_judge_claim_needs_three_seeds_and_a_direction():
    assert stats.judge_claim(_c(1.0, 0.5, 1.5, n=2), "increase") == "inconclusive: < 3 seeds"
    with pytest.raises(ValueError, match="direction"):
        stats.judge_claim(_c(1.0, 0.5, 1.5), "up")


def test_outlying_marks_values_by_the_modified_z_score():
    x = pd.Series([1.0, 2.0, 3.0, 4.0, 5.0, 30.0], index=[10, 11, 12, 13, 14, 15])
    out = stats.outlying(x)  # median 3.5, MAD 1.5: z(30) = 11.9, z(1) = -1.1 (Iglewicz & Hoaglin 1993)
    assert out["seed"].tolist() == [15] and out["z"].iloc[0] == pytest.approx(0.6745 * 26.5 / 1.5)
    assert stats.outlying(x.iloc[:4]).empty  # fewer than 5 values: no judgement
    assert stats.outlying(pd.Series([2.0] * 5 + [9.0])).empty  # MAD 0: no scale to judge by
    assert stats.outlying(pd.Series(np.random.default_rng(0).normal(0, 1, 20))).empty
