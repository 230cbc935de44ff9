"""The decisions of a sequential study on constructed runs (no training): what stops it, with how many arms, what
claims decide, a claim's size and margin, the running intersection, failed runs, the recorded analysis plan and
the timeout. Every study here goes through ``ablations.report.build_report`` / ``sequential_looks``, the code
``ablate report`` and the runner use."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ablations import stats
from ablations.rendering import render
from ablations.report import StudyRuns, analysis_plan, build_report, sequential_looks

LOOKS = [3, 5, 7, 9, 11, 13, 15, 17, 19, 20]  # the default block: seeds [0, 1, 2], step 2, max_seeds 20


def seq_runs(
    arms: dict[str, np.ndarray],
    looks: list[int] = LOOKS,
    claims: list[dict] | None = None,
    margin: float | None = None,
    boundary: str = "anytime",
    failures: list[tuple[str, int, str]] = (),
    record: bool = True,
    **sequential,
) -> StudyRuns:
    """A one-factor sequential study (factor ``v``) with levels ``arms`` (values in percent, one per seed in seed
    order, the first level the baseline), its looks at ``looks`` seeds per arm and, with ``record``, the plan and
    analysis its first sequential run would have recorded. ``failures``: ``(level, seed, kind)`` of runs that
    failed (``diverged`` or ``infrastructure``) and have no value."""
    lost = {(f"v={lv}", s) for lv, s, _ in failures}
    rows = [
        {"arm": f"v={lv}", "seed": s, "v": lv, "test_acc": x / 100, "run_id": f"{lv}-{s}"}
        for lv, values in arms.items()
        for s, x in enumerate(values[: looks[-1]])
        if (f"v={lv}", s) not in lost
    ]
    fails = pd.DataFrame(
        [{"arm": f"v={lv}", "seed": s, "status": "FAILED", "kind": kind} for lv, s, kind in failures],
        columns=["arm", "seed", "status", "kind"],
    )
    claims = claims or []
    block = {"max_seeds": looks[-1], "step": 2, "equivalence_margin": margin, **sequential}
    seq = {**block, "looks": [list(range(n)) for n in looks], "stopped": None, "plan": None}
    if record:
        seq["plan"] = {"looks": list(looks), "reserve": stats.PLAN_RESERVE, "boundary": boundary}
        seq["analysis"] = analysis_plan(0.05, "test_acc", "maximize", {"v": list(arms)[0]}, claims, block)
    return StudyRuns(
        "s",
        "quick",
        "parent",
        {"v": list(arms)},
        "test_acc",
        "maximize",
        pd.DataFrame(rows),
        len(failures),
        claims=claims,
        baseline={"v": list(arms)[0]},
        failures=fails,
        sequential=seq,
    )


def claim(treat: str, control: str = "base", min_effect: float | None = None, direction: str = "increase") -> dict:
    return {
        "source": "s",
        "text": f"{treat} helps",
        "treatment": {"v": treat},
        "control": {"v": control},
        "metric": None,
        "direction": direction,
        "min_effect": min_effect,
    }


def normal(rng, mean: float, sd: float, n: int = LOOKS[-1]) -> np.ndarray:
    return rng.normal(mean, sd, n)


def test_a_large_effect_stops_when_decided_and_says_so():
    rng = np.random.default_rng(1)
    base = 80 + normal(rng, 0, 1.0)
    arms = {"base": base, "worse": base - 12 + normal(rng, 0, 0.5)}
    r = build_report(seq_runs(arms))
    assert r.sequential["stopped"] == "decided"
    assert r.effects.iloc[0]["verdict"] == "worse"
    assert len(r.sequential["looks"]) == 1  # 12 points with little spread: decided at 3 seeds per arm
    # O'Brien-Fleming's boundary spends almost nothing at 3 seeds: the same runs wait for a later look
    obf = build_report(seq_runs(arms, boundary="obrien-fleming"))
    assert obf.sequential["stopped"] == "decided" and len(obf.sequential["looks"]) > 1
    assert all(not look["decided"] for look in obf.sequential["looks"][:-1])


def test_no_effect_and_no_margin_runs_to_the_cap_and_says_max_seeds():
    rng = np.random.default_rng(2)
    base = 80 + normal(rng, 0, 2.0)
    r = build_report(seq_runs({"base": base, "same": base + normal(rng, 0, 2.5)}))
    assert r.sequential["stopped"] == "max_seeds" and len(r.sequential["looks"]) == len(LOOKS)
    assert r.effects.iloc[0]["verdict"] == "no detectable difference"


def test_more_than_two_arms_share_alpha_by_bonferroni_and_all_must_be_decided():
    """Three arms against one baseline: each interval at alpha / 3 (wider than one comparison's), and the study
    goes on while one arm is undecided."""
    rng = np.random.default_rng(3)
    base = 80 + normal(rng, 0, 1.0)
    arms = {"base": base, "a": base - 10 + normal(rng, 0, 0.5), "b": base + 10 + normal(rng, 0, 0.5)}
    arms["c"] = base + normal(rng, 0, 3.0)  # no effect, no margin: never decided
    sr = seq_runs(arms)
    r = build_report(sr)
    assert r.sequential["stopped"] == "max_seeds"
    verdicts = dict(zip(r.effects["effect"], r.effects["verdict"], strict=True))
    assert verdicts == {"v=a": "worse", "v=b": "better", "v=c": "no detectable difference"}
    assert (r.effects["p_holm"] >= r.effects["p"]).all()  # Bonferroni: p times 3
    # the interval of one comparison alone (alpha) is narrower than in the family of three (alpha / 3)
    alone = build_report(seq_runs({"base": base, "c": arms["c"]}))
    fam = r.effects.set_index("effect").loc["v=c"]
    one = alone.effects.iloc[0]
    assert fam["ci_high"] - fam["ci_low"] > one["ci_high"] - one["ci_low"]
    # the three-arm study, with the undecided arm removed, would have stopped
    two = build_report(seq_runs({k: v for k, v in arms.items() if k != "c"}))
    assert two.sequential["stopped"] == "decided"


def test_claims_decide_the_study_not_the_arms():
    rng = np.random.default_rng(4)
    base = 80 + normal(rng, 0, 1.0)
    arms = {"base": base, "a": base + 8 + normal(rng, 0, 0.5), "b": base + normal(rng, 0, 3.0)}
    r = build_report(seq_runs(arms, claims=[claim("a")]))  # arm b is undecided, but no claim is about it
    assert r.sequential["stopped"] == "decided"
    assert r.claims.iloc[0]["verdict"] == "supported"
    assert [c["effect"] for c in r.sequential["looks"][-1]["comparisons"]] == ["claim 1: v=a vs v=base"]


def test_a_study_with_claims_and_no_effect_ends_equivalent_before_the_cap():
    """The margin ends a study with claims, too (before, only a claim's min_effect could, and a claim without one
    could only end inconclusive at the cap)."""
    rng = np.random.default_rng(5)
    base = 80 + normal(rng, 0, 2.0)
    sr = seq_runs({"base": base, "a": base + normal(rng, 0, 0.4)}, claims=[claim("a")], margin=1.0)
    r = build_report(sr)
    assert r.sequential["stopped"] == "decided" and len(r.sequential["looks"]) < len(LOOKS)
    assert r.claims.iloc[0]["verdict"] == "equivalent: within ±1"
    assert "equivalent: within ±1" in render(r, "table") and "equivalent: within ±1" in render(r, "markdown")


def test_a_claims_margin_is_the_studys_equivalence_margin_not_its_min_effect():
    rng = np.random.default_rng(6)
    base = 80 + normal(rng, 0, 2.0)
    a = base + normal(rng, 0, 0.4)
    with_size = build_report(seq_runs({"base": base, "a": a}, claims=[claim("a", min_effect=3.0)]))
    # no margin: the claim's size is tested as a size, and a null effect is "smaller than claimed"
    assert with_size.claims.iloc[0]["verdict"] == "contradicted: smaller than claimed (< 3)"
    assert with_size.effects.iloc[0]["verdict"] == "no detectable difference"  # min_effect is no margin for arms


def test_a_claim_far_below_its_size_does_not_end_supported():
    """True effect 0.4 pp, claimed 1.4 pp, per-seed SD 1 (the issue's case: 12% of such studies used to end
    `supported`, e.g. [0.04, 1.65] at 7 seeds, and stopped there)."""
    ends = []
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        base = 80 + normal(rng, 0, 2.0)
        sr = seq_runs({"base": base, "a": base + normal(rng, 0.4, 1.0)}, claims=[claim("a", min_effect=1.4)])
        r = build_report(sr)
        ends.append((r.claims.iloc[0]["verdict"], r.sequential["stopped"]))
    assert not any(v.startswith("supported") for v, _ in ends), ends
    # a direction confirmed without the size resolved does not stop the study before the cap
    for v, stopped in ends:
        if v == stats.DIRECTION_ONLY:
            assert stopped == "max_seeds"
    assert any(v.startswith("contradicted: smaller than claimed") for v, _ in ends)


def test_stop_on_direction_stops_once_the_direction_is_confirmed():
    rng = np.random.default_rng(7)
    base = 80 + normal(rng, 0, 2.0)
    a = base + normal(rng, 2.0, 0.8)  # clearly above 0, and 1.4 is well inside the interval for a while
    c = [claim("a", min_effect=2.0)]
    plain = build_report(seq_runs({"base": base, "a": a}, claims=c))
    early = build_report(seq_runs({"base": base, "a": a}, claims=c, stop_on_direction=True))
    first = [look["comparisons"][0]["verdict"] for look in plain.sequential["looks"]]
    assert stats.DIRECTION_ONLY in first
    k = first.index(stats.DIRECTION_ONLY)
    assert len(early.sequential["looks"]) == k + 1 and early.sequential["stopped"] == "decided"
    assert len(plain.sequential["looks"]) > k + 1


def test_the_running_intersection_keeps_a_decided_verdict():
    """Effect 2.0, SD 2.5, alpha 0.025 (the issue's case: 20% of paths showed "better" at a look and lost it at a
    later one). Each look's interval is intersected with the earlier ones, so it only narrows."""
    flips = 0
    for seed in range(60):
        rng = np.random.default_rng(200 + seed)
        base = 80 + normal(rng, 0, 2.0)
        sr = seq_runs({"base": base, "a": base + normal(rng, 2.0, 2.5)}, boundary="pocock")
        looks, _ = sequential_looks(sr)
        lows = [look["comparisons"][0]["ci_low"] for look in looks]
        highs = [look["comparisons"][0]["ci_high"] for look in looks]
        assert lows == sorted(lows) and highs == sorted(highs, reverse=True)
        verdicts = [look["comparisons"][0]["verdict"] for look in looks]
        flips += any(a == "better" and b != "better" for a, b in zip(verdicts, verdicts[1:], strict=False))
    assert flips == 0


def test_no_verdict_from_two_seeds_or_a_zero_width_interval():
    base = np.full(20, 80.0) + np.arange(20)
    quantised = base + 2.0  # every seed exactly 2 points better: a zero-width interval
    r = build_report(seq_runs({"base": base, "a": quantised}, margin=5.0))
    assert r.sequential["stopped"] == "max_seeds"
    assert r.effects.iloc[0]["verdict"] == "not possible: no spread in the per-seed differences"
    short = build_report(seq_runs({"base": base, "a": quantised + np.r_[0.1, -0.1, np.zeros(18)]}, looks=[2, 4]))
    assert short.sequential["looks"][0]["comparisons"][0]["verdict"] == "not possible: < 3 seeds"


def test_a_diverging_arm_is_judged_worse_not_dropped():
    """The unstable arm is as good as the baseline when it trains and diverges on some seeds (at chance, 10%,
    what a network with NaN weights scores). Dropping those seeds (as if missing at random) would call it
    equivalent; counted as outcomes of the arm they make it worse."""
    rng = np.random.default_rng(8)
    base = 80 + normal(rng, 0, 1.0)
    unstable = base + normal(rng, 0, 0.3)
    half = [("unstable", s, "diverged") for s in range(1, 20, 2)]  # every other seed diverges
    r = build_report(seq_runs({"base": base, "unstable": unstable}, margin=1.0, failures=half))
    assert r.effects.iloc[0]["verdict"] == "worse" and r.sequential["stopped"] == "decided"
    arms = r.arms.set_index("arm")
    assert arms.loc["v=unstable", "diverged"] >= 1 and arms.loc["v=unstable", "failed"] == 0
    text = " ".join(render(r, "table").split())
    assert "diverged, counted as outcomes of their arm" in text and "a NaN network predicts one class" in text
    dropped = seq_runs({"base": base, "unstable": unstable}, margin=1.0, failures=half)
    gone = {s for _, s, _ in half}
    dropped.failures = dropped.failures.assign(kind="infrastructure")  # what dropping them would have done
    dropped.sequential["looks"] = [[s for s in lst if s not in gone] for lst in dropped.sequential["looks"]]
    assert build_report(dropped).effects.iloc[0]["verdict"] == "equivalent"
    # a fixed-seed report counts them too: 5 of 20 seeds diverged is worse by the paired t test
    fixed = seq_runs(
        {"base": base, "unstable": unstable}, failures=[("unstable", s, "diverged") for s in (1, 5, 9, 13, 17)]
    )
    fixed.sequential = None
    assert build_report(fixed).effects.iloc[0]["verdict"] == "worse"


def test_a_run_lost_outside_training_leaves_its_look_incomplete_and_is_named():
    rng = np.random.default_rng(9)
    base = 80 + normal(rng, 0, 2.0)
    sr = seq_runs({"base": base, "a": base + normal(rng, 0, 2.5)}, failures=[("a", 6, "infrastructure")])
    r = build_report(sr)
    # seed 6 belongs to the look at 7 seeds: the study waits there for the run to be trained again
    assert [look["seeds"] for look in r.sequential["looks"]] == [3, 5] and r.sequential["stopped"] is None
    assert "failed outside training" in " ".join(render(r, "table").split())


def test_the_timeout_stops_an_undecided_study_and_says_so():
    rng = np.random.default_rng(10)
    base = 80 + normal(rng, 0, 2.0)
    sr = seq_runs({"base": base, "a": base + normal(rng, 0, 2.5)}, looks=LOOKS)
    sr.runs = sr.runs[sr.runs["seed"] < 7].reset_index(drop=True)  # the runner stopped after the look at 7
    sr.sequential["stopped"] = "timeout"
    r = build_report(sr)
    assert r.sequential["stopped"] == "timeout" and len(r.sequential["looks"]) == 3
    assert "the timeout passed before every comparison was decided" in render(r, "table")


def test_report_alpha_keeps_the_recorded_verdict_and_adds_a_marked_exploratory_one():
    rng = np.random.default_rng(11)
    base = 80 + normal(rng, 0, 2.0)
    sr = seq_runs({"base": base, "a": base + normal(rng, 1.2, 2.5)})
    official = build_report(sr)
    loose = build_report(sr, alpha=0.3)
    assert loose.alpha == 0.05 and list(loose.effects["verdict"]) == list(official.effects["verdict"])
    assert loose.sequential["looks"] == official.sequential["looks"]
    assert loose.exploratory["alpha"] == 0.3 and loose.exploratory["changed"][0]["key"] == "alpha"
    assert loose.exploratory["seeds"] == official.sequential["looks"][-1]["seeds"]
    for fmt in ("table", "markdown", "html", "latex"):
        assert "exploratory, not error-controlled" in " ".join(render(loose, fmt).split()), fmt
    assert json.loads(render(loose, "json"))["exploratory"]["alpha"] == 0.3
    assert official.exploratory is None
    # a claim edited in the study file (the report given the file): the recorded claim decides
    edited = seq_runs({"base": base, "a": base + normal(rng, 1.2, 2.5)}, claims=[claim("a", min_effect=3.0)])
    edited.claims = [claim("a", min_effect=0.1)]
    r = build_report(edited)
    assert r.claims.iloc[0]["min_effect"] == 3.0 and r.exploratory["changed"][0]["key"] == "claims"


def test_identical_arms_by_construction_are_equivalent_at_once():
    base = 80 + np.random.default_rng(12).normal(0, 2.0, 20)
    sr = seq_runs({"base": base, "same": base.copy()}, margin=1.0)
    sr.config_hashes = {(a, s): f"h{s}" for a in ("v=base", "v=same") for s in range(20)}
    r = build_report(sr)
    assert r.effects.iloc[0]["verdict"] == "equivalent" and len(r.sequential["looks"]) == 1
    sr.config_hashes = {}  # the same numbers from two configs: no verdict from a zero-width interval
    assert build_report(sr).effects.iloc[0]["verdict"].startswith("not possible: no spread")


@pytest.mark.parametrize("boundary", ["pocock", "obrien-fleming"])
def test_both_boundaries_cover_the_looks_the_plan_names(boundary):
    plan = stats.LookPlan(tuple(LOOKS), boundary=boundary)
    levels = stats.planned_levels(plan, 0.045)
    assert (levels > 0).all() and (levels <= 0.045).all()
    if boundary == "pocock":
        assert np.allclose(levels, levels[0])
    else:
        assert (np.diff(levels) > 0).all() and levels[0] < 1e-6  # strict first, near-fixed last
