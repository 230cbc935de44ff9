"""Sequential comparisons: the anytime-valid confidence sequence, the repeated confidence interval of planned
looks, and by simulation that stopping at the first decided look keeps the error rate with either (and that the
naive fixed-n rule does not), that a plan extended after its last look keeps it too, and that planning the looks
decides with fewer seeds.

The simulated studies run through the same functions the report and the runner use for every comparison of a
sequential study (``stats.sequential_contrast`` and ``stats.sequential_verdict``), with the looks of the default
``sequential`` block: 3 seeds per arm, then 2 more per round up to 20.
"""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from ablations import stats

LOOKS = [3, 5, 7, 9, 11, 13, 15, 17, 19, 20]  # seeds per arm at each look: seeds [0, 1, 2], step 2, max_seeds 20
PLAN = stats.LookPlan(tuple(LOOKS))  # what the study's first sequential run records
ALPHA = 0.05
N_SIM = 4000  # Monte Carlo error of a rate near 0.05: sqrt(0.05 * 0.95 / 4000) = 0.0034


def mc_error(rate: float, n: int = N_SIM) -> float:
    """Standard error of a simulated rate (binomial)."""
    return math.sqrt(max(rate * (1 - rate), 1e-12) / n)


def run_sequential(
    diffs: np.ndarray,
    alpha: float = ALPHA,
    margin: float | None = None,
    maximize: bool = True,
    plan: stats.LookPlan | None = None,
    looks: list[int] = LOOKS,
):
    """One simulated study with a single comparison: the verdict and interval at the first decided look.

    ``diffs`` (max_seeds,) are the per-seed treatment-minus-baseline values in seed order; ``plan`` the
    recorded look plan (None: anytime-valid only), ``looks`` the looks actually taken.
    """
    for n in looks:
        c = stats.sequential_from_values(diffs[:n], alpha, plan=plan)
        v = stats.sequential_verdict(c, maximize, margin)
        if v != "no detectable difference":
            return v, c, n
    return v, c, n


def naive(diffs: np.ndarray, alpha: float = ALPHA):
    """The rule this replaces: stop at the first look whose fixed-n paired t interval excludes 0."""
    for n in LOOKS:
        d = diffs[:n]
        half = sps.t.ppf(1 - alpha / 2, n - 1) * d.std(ddof=1) / math.sqrt(n)
        if abs(d.mean()) > half:
            return "decided", n
    return "no detectable difference", LOOKS[-1]


def test_the_interval_is_the_set_where_the_martingale_stays_below_one_over_alpha():
    d = np.random.default_rng(0).normal(0.3, 1.0, 9)
    lo, hi = stats.t_cs(d, ALPHA)
    assert stats.t_cs_martingale(d, lo)[-1] == pytest.approx(1 / ALPHA)
    assert stats.t_cs_martingale(d, hi)[-1] == pytest.approx(1 / ALPHA)
    assert stats.t_cs_martingale(d, (lo + hi) / 2)[-1] < 1 / ALPHA
    assert stats.t_cs_martingale(d, hi + 0.01)[-1] > 1 / ALPHA
    assert stats.t_cs_martingale(d, 0.0)[0] == pytest.approx(1.0)  # one value says nothing about the mean


def test_the_interval_is_wider_than_the_fixed_n_t_interval_and_narrows_with_n():
    rng = np.random.default_rng(1)
    d = rng.normal(0.0, 1.0, 40)
    widths = []
    for n in (5, 10, 20, 40):
        lo, hi = stats.t_cs(d[:n], ALPHA)
        t_lo, t_hi = sps.t.interval(1 - ALPHA, n - 1, loc=d[:n].mean(), scale=sps.sem(d[:n]))
        assert lo < t_lo and hi > t_hi
        widths.append((hi - lo) / d[:n].std(ddof=1))  # in units of the observed spread
    assert widths == sorted(widths, reverse=True)


def test_no_spread_gives_a_point_and_identical_arms_are_equivalent():
    assert stats.t_cs([0.0, 0.0, 0.0]) == (0.0, 0.0)
    c = stats.sequential_contrast(
        {"a": pd.Series([50.0, 51.0, 49.0]), "b": pd.Series([50.0, 51.0, 49.0])}, {"a": 1.0, "b": -1.0}
    )
    assert (c.ci_low, c.ci_high, c.estimate) == (0.0, 0.0, 0.0)
    assert stats.sequential_verdict(c, True, margin=1.0, identical=True) == "equivalent"
    assert stats.sequential_verdict(c, True, identical=True) == "no detectable difference"  # no margin: not asked
    # The same zero-width interval from arms that are not one config (quantised metrics): no verdict at all.
    assert stats.sequential_verdict(c, True, margin=1.0) == "not possible: no spread in the per-seed differences"
    two = stats.sequential_from_values(np.array([2.0, 2.0]))
    assert stats.sequential_verdict(two, True) == "not possible: < 3 seeds"  # a look cut to 2 seeds by failures
    equal = stats.sequential_from_values(np.array([2.0, 2.0, 2.0]))
    assert (equal.ci_low, equal.ci_high) == (2.0, 2.0) and stats.sequential_verdict(equal, True).startswith(
        "not possible: no spread"
    )


def test_too_few_seeds_give_the_whole_line():
    assert stats.t_cs([1.0, 2.0]) == (-math.inf, math.inf)


@pytest.mark.parametrize("plan", [None, PLAN], ids=["anytime", "planned"])
def test_null_studies_stop_with_a_false_verdict_at_most_alpha_of_the_time_and_the_naive_rule_does_not(plan):
    rng = np.random.default_rng(2023)
    data = rng.normal(0.0, 2.5, (N_SIM, LOOKS[-1]))  # true effect 0, SD 2.5 pp (the batchnorm study's spread)
    false = sum(run_sequential(d, plan=plan)[0] in ("better", "worse") for d in data) / N_SIM
    naive_false = sum(naive(d)[0] == "decided" for d in data) / N_SIM
    # Both sequential rules keep alpha. The anytime-valid one by Ville's inequality, conservative at 10 looks: its
    # rate is below alpha by more than three standard errors. The planned one spends 0.9 alpha at the planned
    # looks by design, so 4,000 studies can only show it is not above alpha (its calibration is checked sharply,
    # on 200,000 null studies, in test_the_planned_boundary_rejects_a_true_null_at_its_share_of_alpha).
    if plan is None:
        assert false + 3 * mc_error(false) <= ALPHA, f"false positives {false:.4f} ± {mc_error(false):.4f}"
    else:
        assert false - 3 * mc_error(false) <= ALPHA, f"false positives {false:.4f} ± {mc_error(false):.4f}"
    # ...the rule it replaces, stopping when the fixed-n t interval excludes 0, does not: about 0.2 at 10 looks.
    assert naive_false - 3 * mc_error(naive_false) > 2 * ALPHA, f"naive {naive_false:.4f}"


@pytest.mark.parametrize("plan", [None, PLAN], ids=["anytime", "planned"])
def test_a_family_of_comparisons_sharing_alpha_keeps_the_family_wise_rate(plan):
    rng = np.random.default_rng(7)
    m, fam_alpha = 3, ALPHA / 3  # three arms against one baseline, Bonferroni: alpha / 3 each
    errors = 0
    for _ in range(N_SIM // 2):
        base = rng.normal(50.0, 2.0, LOOKS[-1])
        arms = [base + rng.normal(0.0, 2.0, LOOKS[-1]) for _ in range(m)]  # all null, correlated through base
        for n in LOOKS:
            verdicts = [
                stats.sequential_verdict(
                    stats.sequential_from_values(a[:n] - base[:n], fam_alpha, plan=plan), True, margin=0.5
                )
                for a in arms
            ]
            if any(v in ("better", "worse") for v in verdicts):
                errors += 1
                break
            if all(v != "no detectable difference" for v in verdicts):
                break
    rate = errors / (N_SIM // 2)
    band = 3 * mc_error(rate, N_SIM // 2) * (1 if plan is None else -1)  # as above
    assert rate + band <= ALPHA, f"family-wise error {rate:.4f}"


@pytest.mark.parametrize("plan", [None, PLAN], ids=["anytime", "planned"])
@pytest.mark.parametrize("effect", [0.0, 0.7, 3.0])
def test_the_interval_at_the_stop_covers_the_true_effect(effect, plan):
    """Stopping at the first decided look (better, worse or equivalent within 1 pp) keeps 1 - alpha coverage."""
    rng = np.random.default_rng(int(effect * 10) + 11)
    data = rng.normal(effect, 2.5, (N_SIM, LOOKS[-1]))
    covered = 0
    for d in data:
        _, c, _ = run_sequential(d, margin=1.0, plan=plan)
        covered += c.ci_low <= effect <= c.ci_high
    rate = covered / N_SIM
    band = 3 * mc_error(rate) * (1 if plan is None else -1)  # the planned rule covers 1 - alpha, not more: as above
    assert rate - band >= 1 - ALPHA, f"coverage {rate:.4f} ± {mc_error(rate):.4f}"


def test_a_large_effect_stops_at_the_first_look_and_a_null_one_can_end_equivalent():
    rng = np.random.default_rng(5)
    v, c, n = run_sequential(rng.normal(15.0, 1.0, LOOKS[-1]))  # lr 1e-3 vs 1e-5: points apart, little spread
    assert (v, n) == ("better", LOOKS[0])
    v, c, n = run_sequential(rng.normal(-15.0, 1.0, LOOKS[-1]))
    assert (v, n) == ("worse", LOOKS[0])
    ends = [run_sequential(rng.normal(0.0, 0.3, LOOKS[-1]), margin=1.0)[0] for _ in range(50)]
    assert ends.count("equivalent") >= 45


def test_the_contrast_of_two_arms_pairs_them_by_seed():
    rng = np.random.default_rng(4)
    base = pd.Series(rng.normal(50, 2, 8), index=range(8))
    treat = pd.Series(base + rng.normal(1, 1, 8), index=range(8)).drop(5)  # seed 5 failed in the treatment arm
    c = stats.sequential_contrast({"t": treat, "b": base}, {"t": 1.0, "b": -1.0})
    d = (treat - base.drop(5)).to_numpy()
    assert c.n == 7 and c.estimate == pytest.approx(d.mean())
    assert (c.ci_low, c.ci_high) == pytest.approx(stats.t_cs(d))


def test_anytime_p_value_is_below_alpha_exactly_when_the_interval_excludes_zero():
    rng = np.random.default_rng(3)
    for _ in range(200):
        d = rng.normal(0.8, 1.0, 12)
        c = stats.sequential_contrast({"t": pd.Series(d), "b": pd.Series(np.zeros(12))}, {"t": 1.0, "b": -1.0})
        assert (c.p < ALPHA) == (not c.ci_low <= 0 <= c.ci_high)


def test_the_planned_boundary_rejects_a_true_null_at_its_share_of_alpha():
    """The calibration, checked on 200,000 null studies drawn here (other random numbers than the calibration's):
    a t test at Pocock's level at every planned look rejects at some look 0.9 alpha of the time, to three Monte
    Carlo standard errors (0.0014); with the anytime part's 0.1 alpha, at most alpha in all (union bound)."""
    rng = np.random.default_rng(99)
    sims, sizes = 200_000, np.array(LOOKS)
    z = rng.standard_normal((sims, LOOKS[-1]))
    s, v = np.cumsum(z, 1)[:, sizes - 1], np.cumsum(z * z, 1)[:, sizes - 1]
    t = np.abs(s / sizes) / np.sqrt((v - s * s / sizes) / (sizes - 1) / sizes)
    level = stats.planned_level(LOOKS, 0.9 * ALPHA)
    rate = float((t > sps.t.isf(level / 2, sizes - 1)).any(axis=1).mean())
    assert abs(rate - 0.9 * ALPHA) <= 3 * mc_error(0.9 * ALPHA, sims), rate


def test_one_planned_look_is_the_student_t_interval():
    """A plan of one look spends alpha at that look: Pocock's level is alpha and the interval Student's."""
    assert stats.planned_level([10], ALPHA) == pytest.approx(ALPHA, abs=0.002)  # Monte Carlo: SE about 0.0005
    d = np.random.default_rng(8).normal(1.0, 2.0, 10)
    t_lo, t_hi = sps.t.interval(1 - ALPHA, 9, loc=d.mean(), scale=sps.sem(d))
    lo, hi = stats.repeated_ci(d, [10], ALPHA)
    assert (hi - lo) / (t_hi - t_lo) == pytest.approx(1.0, abs=0.01)


def test_pocock_level_of_the_default_plan_and_the_interval_between_student_and_the_anytime_sequence():
    # Pocock's table for 10 equally spaced looks of a normal mean with known variance gives 0.0106 at 0.05
    # (Pocock 1977, table 1: c = 2.555); the t statistic's heavier tails at 3 and 5 seeds take a little more.
    assert 0.008 < stats.planned_level(LOOKS, ALPHA) < 0.0106
    rng = np.random.default_rng(9)
    d = rng.normal(0.0, 1.0, LOOKS[-1])
    for n in LOOKS:
        x = d[:n]
        lo, hi = stats.repeated_ci(x, LOOKS, ALPHA)
        a_lo, a_hi = stats.t_cs(x, ALPHA)
        t_lo, t_hi = sps.t.interval(1 - ALPHA, n - 1, loc=x.mean(), scale=sps.sem(x))
        assert a_lo < lo < t_lo and t_hi < hi < a_hi, n
    c = stats.sequential_from_values(d[:7], ALPHA, plan=PLAN)  # a planned look: the intersection
    assert c.test == "RCI" and (c.ci_low, c.ci_high) == pytest.approx(stats.repeated_ci(d[:7], LOOKS, 0.9 * ALPHA))
    off = stats.sequential_from_values(d[:8], ALPHA, plan=PLAN)  # 8 seeds: not a planned look
    assert off.test == "t-CS" and (off.ci_low, off.ci_high) == pytest.approx(stats.t_cs(d[:8], 0.1 * ALPHA))
    failed = stats.sequential_from_values(d[:6], ALPHA, plan=PLAN, look=7)  # look 7 with a failed seed
    assert failed.test == "RCI" and failed.n == 6


def test_planning_the_looks_decides_with_fewer_seeds_than_the_anytime_sequence():
    """What the plan buys: at a true 3 pp effect (SD 2.5 pp) fewer seeds per arm at the stop, and more decided."""
    rng = np.random.default_rng(12)
    data = rng.normal(3.0, 2.5, (N_SIM // 2, LOOKS[-1]))
    anytime = [run_sequential(d) for d in data]
    planned = [run_sequential(d, plan=PLAN) for d in data]
    seeds_a, seeds_p = np.mean([n for *_, n in anytime]), np.mean([n for *_, n in planned])
    assert seeds_p < seeds_a - 1.5, (seeds_p, seeds_a)  # measured: about 9.3 against 11.6
    assert sum(v == "better" for v, *_ in planned) > sum(v == "better" for v, *_ in anytime)


def test_a_plan_extended_after_its_last_look_keeps_the_error_rate():
    """Undecided at the planned cap of 20, the user asks for 40: the looks beyond the plan are judged by the
    anytime-valid sequence at the reserve alone, so extending adds at most 0.1 alpha of false verdicts to the
    plan's 0.9 alpha (measured on the same null studies, the extension's own share sharply)."""
    rng = np.random.default_rng(13)
    extended = LOOKS + list(range(22, 41, 2))
    data = rng.normal(0.0, 2.5, (N_SIM, extended[-1]))
    ends = [run_sequential(d, plan=PLAN, looks=extended) for d in data]
    false_ext = np.array([v in ("better", "worse") for v, *_ in ends])
    within = np.array([n <= LOOKS[-1] for *_, n in ends])  # stopped at a planned look: the plan alone did the same
    extra, total = float((false_ext & ~within).mean()), float(false_ext.mean())
    assert extra <= PLAN.reserve * ALPHA + 3 * mc_error(PLAN.reserve * ALPHA), extra
    assert total - 3 * mc_error(total) <= ALPHA, total
    assert stats.sequential_from_values(data[0][:30], ALPHA, plan=PLAN).test == "t-CS"


def test_planned_p_value_is_below_alpha_exactly_when_the_interval_excludes_zero():
    rng = np.random.default_rng(14)
    for n in (3, 7, 12, 20):  # 12: beyond the planned sizes' set, the anytime part alone
        for _ in range(50):
            c = stats.sequential_from_values(rng.normal(0.9, 1.0, n), ALPHA, plan=PLAN)
            assert (c.p < ALPHA) == (not c.ci_low <= 0 <= c.ci_high), (n, c)


@pytest.mark.parametrize(("sizes", "reserve"), [((), 0.1), ((5, 3), 0.1), ((1, 3), 0.1), ((3, 5), 0.0)])
def test_a_bad_look_plan_is_an_error(sizes, reserve):
    with pytest.raises(ValueError, match="look plan|reserve"):
        stats.LookPlan(sizes, reserve)
