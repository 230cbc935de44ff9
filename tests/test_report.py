"""The report: tables from constructed studies whose true effects are known, claims, formats, and a round trip
through a real (temporary) MLflow store."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ablations.rendering import render, write_plots, write_report
from ablations.report import (
    ReportError,
    StudyRuns,
    arm_table,
    build_report,
    load_histories,
    load_runs,
)

BN_CLAIM = {
    "source": "seed 000 README",
    "text": "BatchNorm improved accuracy by ~1.4%",
    "treatment": {"batchnorm": True},
    "control": {"batchnorm": False},
    "metric": "test_acc",
    "direction": "increase",
    "min_effect": 1.4,
}


def runs(values: dict[str, list[float]], seeds=None, metric="test_acc", **kw) -> StudyRuns:
    """A one-factor (batchnorm) study: level -> metric values (fractions for accuracies), one per seed."""
    rows = []
    for level, vals in values.items():
        for i, v in enumerate(vals):
            seed = (seeds[level] if isinstance(seeds, dict) else seeds or range(len(vals)))[i]
            rows.append({"arm": f"batchnorm={level}", "seed": seed, "batchnorm": level, metric: v})
    return StudyRuns(
        "bn", "smoke", "parent", {"batchnorm": list(values)}, metric, "maximize", pd.DataFrame(rows), 0, **kw
    )


def grid(effects: dict[tuple[str, str], float], seeds: int = 8, noise: float = 0.3, seed: int = 0) -> StudyRuns:
    """A 2x2 study (bn: on/off, drop: none/fc) with known cell means (percent) and shared seed effects."""
    rng = np.random.default_rng(seed)
    block = rng.normal(0, 1.5, size=seeds)
    rows = []
    for (bn, drop), mean in effects.items():
        for s in range(seeds):
            value = (mean + block[s] + rng.normal(0, noise)) / 100
            rows.append({"arm": f"bn={bn} drop={drop}", "seed": s, "bn": bn, "drop": drop, "test_acc": value})
    factors = {"bn": ["on", "off"], "drop": ["none", "fc"]}
    return StudyRuns("g", "quick", "parent", factors, "test_acc", "maximize", pd.DataFrame(rows), 0)


def test_known_true_effect_is_found_and_null_is_not():
    rng = np.random.default_rng(0)
    seeds = list(range(10))
    noise = rng.normal(0, 0.5, size=10)
    base = 80 + rng.normal(0, 1.0, size=10)
    table = arm_table(runs({"true": list(base / 100), "false": list((base + 2.0 + noise) / 100)}, seeds))
    row = table.set_index("batchnorm").loc["false"]
    assert row["diff_low"] < 2.0 < row["diff_high"]  # interval covers the true +2 points
    assert row["verdict"] == "better" and row["test"] == "paired t"
    null = arm_table(runs({"true": list(base / 100), "false": list((base + noise) / 100)}, seeds))
    assert null.set_index("batchnorm").loc["false", "verdict"] == "no detectable difference"


def test_paired_difference_in_percent_points_matches_hand_computation():
    # differences 1, 2, 3 points: mean 2, sd 1, t(0.975, 2) = 4.302653; p = 0.07418
    r = build_report(runs({"true": [0.50, 0.60, 0.70], "false": [0.51, 0.62, 0.73]}))
    e = r.effects.iloc[0]
    half = 4.302653 / math.sqrt(3)
    assert (e["kind"], e["effect"], e["vs"], e["test"]) == ("arm", "batchnorm=false", "batchnorm=true", "paired t")
    assert e["estimate"] == pytest.approx(2.0)
    assert e["ci_low"] == pytest.approx(2 - half, abs=1e-4) and e["ci_high"] == pytest.approx(2 + half, abs=1e-4)
    assert e["p"] == pytest.approx(0.07418, abs=1e-4) and e["p_holm"] == pytest.approx(e["p"])
    assert e["effect_size_kind"] == "d_z" and e["effect_size"] == pytest.approx(2.0)
    assert e["verdict"] == "no detectable difference"
    assert e["target_from"] == "observed" and e["seeds_needed"] >= 3


def test_unpaired_seeds_use_welch():
    r = build_report(
        runs(
            {"true": [0.01, 0.02, 0.03], "false": [0.04, 0.05, 0.06]}, seeds={"true": [0, 1, 2], "false": [10, 11, 12]}
        )
    )
    e = r.effects.iloc[0]
    # equal variances (1) and n: t = 3 / sqrt(2/3) = 3.674, Welch df = 4: p = 0.02131
    assert e["test"] == "Welch t" and e["estimate"] == pytest.approx(3.0) and e["p"] == pytest.approx(0.02131, abs=1e-4)
    assert e["check"] == "Mann-Whitney" and e["effect_size_kind"] == "d"


def test_worse_and_minimize_direction():
    sr = runs({"true": [0.80, 0.81, 0.82, 0.80], "false": [0.70, 0.71, 0.715, 0.705]})
    assert arm_table(sr).set_index("batchnorm").loc["false", "verdict"] == "worse"
    sr.direction = "minimize"
    assert arm_table(sr).set_index("batchnorm").loc["false", "verdict"] == "better"


def test_fewer_than_three_seeds_gives_no_verdict():
    table = arm_table(runs({"true": [0.5, 0.6], "false": [0.1, 0.2]}))
    assert table.set_index("batchnorm").loc["false", "verdict"].startswith("not possible")


def test_arm_table_ci_median_and_percent_scale():
    r = build_report(runs({"true": [0.50, 0.60, 0.70], "false": [0.5, 0.5, 0.5]}))
    base = r.arms.set_index("batchnorm").loc["true"]
    assert base["mean"] == pytest.approx(60.0) and base["std"] == pytest.approx(10.0) and base["median"] == 60.0
    half = 4.302653 * 10 / math.sqrt(3)
    assert base["ci_low"] == pytest.approx(60 - half, abs=1e-4) and base["verdict"] == "baseline"
    assert list(r.arms.columns[:8]) == ["arm", "batchnorm", "n", "mean", "std", "ci_low", "ci_high", "diff"]
    text = render(r)
    assert "60.00 ± 10.00" in text and "baseline" in text and "effect vs baseline" in text


def test_loss_metric_is_not_scaled():
    r = build_report(runs({"true": [1.0, 1.1, 1.2], "false": [1.3, 1.4, 1.5]}, metric="test_loss"))
    assert r.unit == "" and r.arms["mean"].iloc[0] == pytest.approx(1.1)
    assert "(pp)" not in render(r)


def test_empty_study_is_an_error():
    with pytest.raises(ReportError, match="no finished runs"):
        arm_table(StudyRuns("bn", "smoke", "p", {"batchnorm": ["true"]}, "test_acc", "maximize", pd.DataFrame(), 0))


def test_single_arm_has_no_effects():
    r = build_report(runs({"true": [0.5]}))
    assert r.effects.empty and len(r.arms) == 1
    assert render(r, "csv").startswith("arm,")


def test_named_baseline_and_failed_runs_per_arm():
    failures = pd.DataFrame([{"arm": "batchnorm=true", "seed": 3, "status": "FAILED"}])
    sr = runs({"true": [0.5, 0.6, 0.7], "false": [0.4, 0.5, 0.6]}, baseline={"batchnorm": "false"}, failures=failures)
    sr.failed = 1
    r = build_report(sr)
    assert r.baseline == "batchnorm=false"
    assert r.effects.iloc[0]["effect"] == "batchnorm=true" and r.effects.iloc[0]["estimate"] == pytest.approx(10.0)
    arms = r.arms.set_index("batchnorm")
    assert arms.loc["true", "failed"] == 1 and arms.loc["false", "failed"] == 0
    assert "1 run(s) failed outside training (killed, out of memory, a lost worker, an error), not counted" in (
        " ".join(render(r).split())
    )


def test_2x2_study_main_effects_and_interaction_with_known_answers():
    # bn off costs 2 points with no dropout and 5 points with it: main effect of bn=off -3.5, interaction -3
    sr = grid({("on", "none"): 70, ("on", "fc"): 71, ("off", "none"): 68, ("off", "fc"): 66})
    r = build_report(sr)
    e = r.effects.set_index("effect")
    assert list(r.effects["kind"]) == ["arm"] * 3 + ["main"] * 2 + ["interaction"]
    assert e.loc["bn=off", "estimate"] == pytest.approx(-3.5, abs=0.3) and e.loc["bn=off", "verdict"] == "worse"
    assert e.loc["drop=fc", "estimate"] == pytest.approx(-0.5, abs=0.3)
    inter = e.loc["bn=off x drop=fc"]
    assert inter["ci_low"] < -3 < inter["ci_high"] and inter["verdict"] == "negative interaction"
    # Holm over all 6 comparisons: the smallest p is multiplied by 6
    p = r.effects["p"].to_numpy()
    assert r.effects["p_holm"].min() == pytest.approx(min(1.0, 6 * p.min()))
    assert r.effects["power_alpha"].iloc[0] == pytest.approx(0.05 / 6)
    # the interaction contrast from the cell means by hand
    means = r.arms.set_index("arm")["mean"]
    by_hand = means["bn=off drop=fc"] - means["bn=off drop=none"] - means["bn=on drop=fc"] + means["bn=on drop=none"]
    assert inter["estimate"] == pytest.approx(by_hand)
    additive = build_report(grid({("on", "none"): 70, ("on", "fc"): 71, ("off", "none"): 68, ("off", "fc"): 69}))
    assert additive.effects.set_index("effect").loc["bn=off x drop=fc", "verdict"] == "no detectable interaction"


def test_terminal_report_fits_100_columns():
    sr = grid({("on", "none"): 70, ("on", "fc"): 71, ("off", "none"): 68, ("off", "fc"): 66}, seeds=3)
    sr.claims = [
        {
            "source": "a paper with a long name, 2019",
            "text": "BatchNorm helps a lot, especially when there is no dropout in the fully connected layers " * 2,
            "treatment": {"bn": "on"},
            "control": {"bn": "off"},
            "direction": "increase",
            "min_effect": 1.0,
        }
    ]
    text = render(build_report(sr))
    assert max(len(line) for line in text.splitlines()) <= 100, text
    for title in ("arms", "effect vs baseline", "main effects", "interactions", "verdicts", "claims"):
        assert title in text
    bn = render(build_report(runs({"true": [0.55, 0.57, 0.53], "false": [0.51, 0.52, 0.50]}, claims=[BN_CLAIM])))
    assert max(len(line) for line in bn.splitlines()) <= 100, bn


def test_claim_on_a_main_effect_and_its_verdicts():
    sr = grid({("on", "none"): 72, ("on", "fc"): 73, ("off", "none"): 70, ("off", "fc"): 71}, seeds=10)
    claim = {"source": "s", "text": "bn helps", "treatment": {"bn": "on"}, "control": {"bn": "off"}}
    sr.claims = [
        {**claim, "direction": "increase", "min_effect": 1.4},
        {**claim, "direction": "decrease"},
        {**claim, "direction": "increase", "min_effect": 5.0},
    ]
    c = build_report(sr).claims
    assert c["estimate"].iloc[0] == pytest.approx(2.0, abs=0.3)  # averaged over the dropout levels
    assert c["treatment"].iloc[0] == "bn=on" and c["control"].iloc[0] == "bn=off"
    assert list(c["verdict"]) == [
        "supported: as large as claimed (>= 1.4)",  # estimate about 2.0, the interval above 1.4
        "contradicted: opposite effect",
        "contradicted: smaller than claimed (< 5)",
    ]


def test_inconclusive_claim_names_the_budget_and_the_seeds_needed():
    sr = runs({"true": [0.55, 0.60, 0.52], "false": [0.51, 0.55, 0.53]}, claims=[BN_CLAIM])
    r = build_report(sr)
    claim = r.claims.iloc[0]
    assert claim["verdict"].startswith("inconclusive at this budget (profile smoke, 3 seeds per arm); ")
    assert f"{claim['seeds_needed']} seeds per arm would detect 1.40 pp" in claim["verdict"]
    # the effects table computes its seeds for the claimed size, since the claim is about the same comparison
    e = r.effects.iloc[0]
    assert e["target_from"] == "claim" and e["target"] == 1.4 and e["seeds_needed"] == claim["seeds_needed"]
    given = build_report(sr, effect=3.0).effects.iloc[0]
    assert given["target_from"] == "given" and given["seeds_needed"] < e["seeds_needed"]
    assert (
        build_report(runs({"true": [0.5, 0.6], "false": [0.4, 0.5]}, claims=[BN_CLAIM]))
        .claims.iloc[0]["verdict"]
        .startswith("inconclusive")
    )


def test_alpha_from_the_study_and_from_the_caller():
    sr = runs({"true": [0.50, 0.60, 0.70], "false": [0.51, 0.62, 0.73]}, alpha=0.1)
    assert build_report(sr).effects.iloc[0]["verdict"] == "better"  # p = 0.074 < 0.1
    assert build_report(sr, alpha=0.05).effects.iloc[0]["verdict"] == "no detectable difference"
    with pytest.raises(ValueError, match="alpha"):
        build_report(sr, alpha=1.5)


def test_formats_hold_the_same_numbers(tmp_path):
    r = build_report(runs({"true": [0.55, 0.60, 0.52], "false": [0.51, 0.55, 0.53]}, claims=[BN_CLAIM]))
    data = json.loads(render(r, "json"))
    assert data["arms"][0]["mean"] == pytest.approx(r.arms["mean"][0])
    assert data["effects"][0]["p_holm"] == pytest.approx(r.effects["p_holm"][0])
    assert data["claims"][0]["ci_high"] == pytest.approx(r.claims["ci_high"][0])
    assert data["arms"][0]["diff"] is None  # NaN -> null
    assert {"alpha", "budget", "baseline", "methods", "parent_run_id"} <= set(data)
    md = render(r, "markdown")
    assert md.count("| batchnorm") == 1 and "### Claims" in md and "`batchnorm=false`" in md
    assert "\\begin{tabular}" in render(r, "latex") and "test\\_acc" in render(r, "latex")
    html = render(r, "html")
    assert html.startswith("<!DOCTYPE html>") and html.count("<table") == 3
    files = write_report(r, "csv", tmp_path / "t.csv")
    assert [f.name for f in files] == ["t.csv", "t.effects.csv", "t.claims.csv"]
    arms = pd.read_csv(files[0])
    assert len(arms) == 2 and arms["mean"][0] == pytest.approx(r.arms["mean"][0])
    assert pd.read_csv(files[1])["p"][0] == pytest.approx(r.effects["p"][0])
    with pytest.raises(ValueError, match="unknown format"):
        render(r, "xml")


# ----------------------------------------------------------------------------- study files with claims


STUDY = """\
name: bn
question: does it help?
factors:
  batchnorm: [true, false]
seeds: [0, 1, 2]
"""


def test_study_file_claims_baseline_alpha(tmp_path):
    from ablations.study import load_study

    path = tmp_path / "s.yaml"
    path.write_text(
        STUDY
        + "alpha: 0.1\nbaseline: {batchnorm: false}\nclaims:\n"
        + "  - {source: seed 000, text: helps, treatment: {batchnorm: true}, control: {batchnorm: false},"
        + " direction: increase, min_effect: 1.4}\n"
    )
    study = load_study(path)
    assert study.alpha == 0.1 and study.baseline == {"batchnorm": "false"}
    assert study.claims[0].min_effect == 1.4 and study.claims[0].metric is None
    plain = tmp_path / "p.yaml"
    plain.write_text(STUDY)
    assert load_study(plain).baseline == {"batchnorm": "true"} and load_study(plain).claims == ()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("baseline: {dropout: fc}", r"baseline.dropout: not a factor of this study; factors: batchnorm"),
        ("baseline: {batchnorm: maybe}", r"baseline.batchnorm: 'maybe' is not a level of batchnorm; levels: true"),
        ("alpha: 1.5", r"alpha: "),
        (
            "claims: [{source: s, text: t, treatment: {batchnorm: on}, control: {batchnorm: false}, "
            "direction: increase}]",
            r"claims\[0\].treatment.batchnorm: 'on' is not a level",
        ),
        (
            "claims: [{source: s, text: t, treatment: {batchnorm: true}, control: {batchnorm: false}, direction: up}]",
            r"claims.0.direction",
        ),
        (
            "claims: [{source: s, text: t, treatment: {batchnorm: true}, control: {batchnorm: false}, "
            "direction: increase, metric: accuracy}]",
            r"claims.0.metric",
        ),
        (
            "claims: [{source: s, text: t, treatment: {batchnorm: true}, control: {batchnorm: true}, "
            "direction: increase}]",
            r"claims\[0\]: treatment and control are the same levels",
        ),
    ],
)
def test_bad_claims_and_baselines_are_named(tmp_path, extra, message):
    from ablations.study import StudyError, load_study

    path = tmp_path / "s.yaml"
    path.write_text(STUDY + extra + "\n")
    with pytest.raises(StudyError, match=message):
        load_study(path)


def test_batchnorm_study_carries_seed_000s_claim():
    from ablations.study import load_study

    study = load_study(Path(__file__).parents[1] / "studies" / "batchnorm.yaml")
    direction, size = study.claims  # seed 000 changed three things at once: the claim is split
    for claim in (direction, size):
        assert claim.treatment == {"batchnorm": True} and claim.control == {"batchnorm": False}
        assert claim.direction == "increase" and "BatchNorm alone" in claim.tests
        assert "80" in claim.tests and "dropout" in claim.tests  # what the seed compared besides
    assert direction.min_effect is None and direction.budget == "full"
    assert size.min_effect == 1.4 and "1.4%" in size.text and size.budget == {"train.epochs": 50}
    records = study.claim_records()
    assert records[0]["claimed_budget"]["values"]["train.epochs"] == 60
    assert records[1]["claimed_budget"] == {
        "profile": None,
        "settings": {"train.epochs": 50},
        "values": {"train.epochs": 50, "data.train_subset": None, "data.val_fraction": 0.1, "data.root": None},
    }


@pytest.mark.parametrize(
    "study", ["batchnorm", "cnn_vs_resnet", "dropout", "first_pool", "rotation", "scheduler", "tricks"]
)
def test_every_seed_claim_names_the_budget_it_was_made_at(study):
    from ablations.study import load_study

    s = load_study(Path(__file__).parents[1] / "studies" / f"{study}.yaml", "quick")
    assert s.claims and all(c.budget is not None for c in s.claims)
    assert all(r["claimed_budget"]["values"]["train.epochs"] >= 20 for r in s.claim_records())


@pytest.mark.parametrize(
    "study, treatment, control, metric, direction",
    [
        ("rotation", {"rotation": 10}, {"rotation": 0}, None, "decrease"),
        ("first_pool", {"first_pool": True}, {"first_pool": False}, None, "decrease"),
        ("dropout", {"dropout": "conv"}, {"dropout": "fc"}, None, "decrease"),
        ("scheduler", {"scheduler": "step"}, {"scheduler": "none"}, None, "increase"),
        ("cnn_vs_resnet", {"model": "resnet18_tv"}, {"model": "cnn_s002"}, None, "increase"),
        ("cnn_vs_resnet", {"model": "resnet18_tv"}, {"model": "cnn_s002"}, "train_test_acc_gap", "increase"),
    ],
)
def test_factor_studies_carry_the_seeds_claims(study, treatment, control, metric, direction):
    from ablations.study import load_study

    claims = load_study(Path(__file__).parents[1] / "studies" / f"{study}.yaml").claims
    assert any(
        c.treatment == treatment
        and c.control == control
        and c.metric in (metric, metric or "test_acc")
        and c.direction == direction
        for c in claims
    ), claims


def test_overfitting_claim_is_judged_on_the_train_test_gap_in_points():
    gap = {**BN_CLAIM, "metric": "train_test_acc_gap", "min_effect": None, "text": "stronger overfitting"}
    sr = runs({"true": [0.55, 0.60, 0.52, 0.58], "false": [0.51, 0.55, 0.53, 0.50]}, claims=[gap])
    sr.runs["train_test_acc_gap"] = [0.10, 0.12, 0.11, 0.13, 0.02, 0.03, 0.01, 0.04]  # true overfits by ~9 pp
    claim = build_report(sr).claims.iloc[0]
    assert claim["metric"] == "train_test_acc_gap" and claim["verdict"] == "supported"
    assert claim["estimate"] == pytest.approx(9.0) and "pp" in render(build_report(sr))
    assert "`train_test_acc_gap` increase" in render(build_report(sr), "markdown")  # the claim names its metric


# ----------------------------------------------------------------------------- MLflow round trip


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A temporary MLflow store with one study as the runner logs it: parent tags and config.yaml, six finished
    child runs with per-epoch histories and per-class accuracies, and one failed run."""
    from ablations.tracking import TAG, Tracker

    root = tmp_path_factory.mktemp("mlruns")
    uri = f"sqlite:///{root}/mlflow.db"
    t = Tracker(uri)
    exp = t.experiment("bn")
    parent = t.create_parent(exp, "bn:quick:abc", "bn (quick)", {f"{TAG}study": "bn", f"{TAG}profile": "quick"})
    for key, value in {
        "factors": '{"batchnorm": ["true", "false"]}',
        "seeds": "[0, 1, 2]",
        "metric": "test_acc",
    }.items():
        t.client.set_tag(parent, f"{TAG}{key}", value)
    t.client.set_tag(parent, f"{TAG}direction", "maximize")
    t.log_config(
        parent,
        {
            "study": "bn",
            "profile": "quick",
            "overrides": {"train.epochs": 2, "data.train_subset": 800},
            "alpha": 0.05,
            "baseline": {"batchnorm": "true"},
            "claims": [BN_CLAIM],
        },
    )
    for level, acc in (("true", [0.60, 0.62, 0.58]), ("false", [0.57, 0.58, 0.57])):
        for seed in range(3):
            tags = {f"{TAG}arm": f"batchnorm={level}", f"{TAG}seed": str(seed)}
            run = t.start_cell(exp, parent, f"batchnorm={level} seed={seed}", {"factor.batchnorm": level}, tags)
            for epoch in (1, 2):
                t.log_metrics(
                    run,
                    {
                        "train_loss": 2 / epoch,
                        "val_loss": 2.1 / epoch,
                        "train_acc": 0.3 * epoch,
                        "val_acc": 0.28 * epoch,
                    },
                    epoch,
                )
            per_class = {f"test_acc_class_{c}": acc[seed] + d for c, d in (("cat", -0.1), ("ship", 0.05))}
            t.log_metrics(run, {"test_acc": acc[seed], **per_class}, 2)
            t.end(run)
    failed = t.start_cell(
        exp,
        parent,
        "batchnorm=false seed=3",
        {"factor.batchnorm": "false"},
        {
            f"{TAG}arm": "batchnorm=false",
            f"{TAG}seed": "3",
        },
    )
    t.end(failed, "FAILED", "diverged")
    t.end(parent)
    return uri, parent


def test_report_is_rebuilt_from_mlflow_alone(store):
    uri, parent = store
    sr = load_runs("bn", uri)
    assert sr.parent_run_id == parent and sr.profile == "quick" and sr.failed == 1
    assert sr.claims[0]["min_effect"] == 1.4 and sr.alpha == 0.05 and sr.baseline == {"batchnorm": "true"}
    assert sr.budget == {"train.epochs": 2, "data.train_subset": 800}
    r = build_report(sr)
    assert r.arms.set_index("batchnorm").loc["false", "failed"] == 1  # seed 3 never finished
    assert r.effects.iloc[0]["estimate"] == pytest.approx(-2.6667, abs=1e-3)
    assert r.claims.iloc[0]["estimate"] == pytest.approx(2.6667, abs=1e-3)
    assert "profile quick (train.epochs=2, data.train_subset=800), 3 seeds per arm" in render(r)
    hist = load_histories(sr)
    assert len(hist) == 6 * 4 * 2 and set(hist["epoch"]) == {1, 2}
    with pytest.raises(ReportError, match="no study 'nope'"):
        load_runs("nope", uri)
    with pytest.raises(ReportError, match="with profile full"):
        load_runs("bn", uri, "full")


def test_plots_are_written_and_logged_to_the_parent_run(store, tmp_path):
    uri, parent = store
    r = build_report(load_runs("bn", uri))
    files = write_plots(r, tmp_path / "plots")
    names = ["effect_by_epoch.png", "effects.png", "learning_curves.png", "per_class.png"]
    assert sorted(f.name for f in files) == names
    assert all(f.stat().st_size > 1000 for f in files)
    from mlflow import MlflowClient

    logged = {a.path for a in MlflowClient(uri).list_artifacts(parent, "report")}
    assert {f"report/{n}" for n in names} <= logged


def test_a_one_arm_study_draws_no_per_class_differences(store):
    """A reproduction study (one arm, as studies/seeds/) has no difference to the baseline to draw: an
    empty per-class figure and matplotlib's "No artists with labels" warning, before."""
    import warnings

    from ablations.rendering import figures_of

    uri, _ = store
    sr = load_runs("bn", uri)
    one_arm = dataclasses.replace(sr, runs=sr.runs[sr.runs["arm"] == "batchnorm=true"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        figures = figures_of(build_report(one_arm), histories=False)
    assert "per_class" not in figures and "effects" in figures
    assert "per_class" in figures_of(build_report(sr), histories=False)


def test_report_command(store, tmp_path):
    from click.testing import CliRunner

    from ablations.cli import main

    uri, _ = store
    cli = CliRunner()
    out = cli.invoke(main, ["report", "bn", "--tracking-uri", uri])
    assert out.exit_code == 0, out.output
    assert "claims" in out.output and "inconclusive" in out.output
    out = cli.invoke(main, ["report", "bn", "--tracking-uri", uri, "--format", "json", "--alpha", "0.2"])
    assert out.exit_code == 0 and json.loads(out.output)["alpha"] == 0.2
    out = cli.invoke(
        main, ["report", "bn", "--tracking-uri", uri, "--format", "csv", "--output", str(tmp_path / "r.csv")]
    )
    assert out.exit_code == 0 and (tmp_path / "r.effects.csv").exists()
    out = cli.invoke(main, ["report", "bn", "--tracking-uri", uri, "--alpha", "2"])
    assert out.exit_code == 2


def test_runner_logs_claims_so_the_report_needs_only_mlflow(tmp_path, monkeypatch):
    """`ablate run` then `ablate report NAME`: the claims, baseline and alpha travel with the parent run."""
    import ablations.runner as runner
    from ablations.study import load_study
    from tests.conftest import tiny_splits

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(runner, "load_splits", lambda cfg: tiny_splits())
    path = tmp_path / "tiny.yaml"
    path.write_text(
        "name: tiny\nquestion: q\nbase: {train.epochs: 1, train.batch_size: 16, train.device: cpu}\n"
        "factors:\n  batchnorm: [true, false]\nseeds: [0, 1]\nalpha: 0.1\nbaseline: {batchnorm: false}\n"
        "claims:\n  - {source: seed 000, text: helps, treatment: {batchnorm: true}, control: {batchnorm: false},"
        " direction: increase, min_effect: 1.4}\n"
    )
    runner.run_study(load_study(path), progress=False)
    sr = load_runs("tiny")
    assert sr.alpha == 0.1 and sr.baseline == {"batchnorm": "false"}
    assert sr.claims[0]["treatment"] == {"batchnorm": True} and sr.claims[0]["min_effect"] == 1.4
    r = build_report(sr)
    assert r.baseline == "batchnorm=false" and len(r.arms) == 2 and r.arms["n"].tolist() == [2, 2]
    assert r.claims.iloc[0]["verdict"].startswith(  # tiny random data: every run may score the same
        "inconclusive at this budget (profile base, 2 seeds per arm; fewer than 3 give no verdict)"
    )


def test_one_seed_far_from_the_others_is_named_with_a_check_line():
    """A per-seed difference far from the arm's others (modified z > 3.5) is named in every format."""
    base = [0.80, 0.81, 0.79, 0.80, 0.82, 0.80]
    treat = [b + d / 100 for b, d in zip(base, [1.0, 2.0, 3.0, 4.0, 5.0, 30.0], strict=True)]  # seed 5: +30 pp
    r = build_report(runs({"true": base, "false": treat}))
    # differences 1..5, 30: median 3.5, MAD 1.5, z = 0.6745 * 26.5 / 1.5 = 11.9 (Iglewicz & Hoaglin 1993)
    assert r.outliers[["effect", "seed"]].values.tolist() == [["batchnorm=false", 5]]
    assert r.outliers["z"].iloc[0] == pytest.approx(0.6745 * 26.5 / 1.5, rel=1e-6)
    text = " ".join(render(r, "table").split())
    assert "check: batchnorm=false seed 5: difference +30.00 pp, far from the arm's other seeds" in text
    assert json.loads(render(r, "json"))["outliers"][0]["seed"] == 5
    for fmt in ("markdown", "html", "latex"):
        assert "check: batchnorm=false seed 5" in render(r, fmt), fmt
    calm = build_report(runs({"true": base, "false": [b + 0.02 for b in base]}))  # every difference 2 pp: MAD 0
    assert calm.outliers.empty and "check:" not in render(calm, "table")


def _with_precisions(sr: StudyRuns, precisions: list[str | None]) -> StudyRuns:
    """``sr`` with each run's recorded precision (the tag ``ablate.precision``), in the order of ``sr.runs``."""
    p = sr.runs[["arm", "seed"]].assign(run_id=[f"run{i}" for i in range(len(sr.runs))], precision=precisions)
    return dataclasses.replace(sr, precisions=p)


def test_runs_trained_in_different_precisions_are_named_in_every_format():
    """A study resumed on a host where auto is bf16 (or workers on two kinds of host) mixes precisions:
    the check lines say so and name the runs of each, in every format but CSV (JSON: mixed_precision)."""
    base, treat = [0.80, 0.81, 0.79, 0.80], [0.78, 0.79, 0.77, 0.78]
    r = build_report(_with_precisions(runs({"true": base, "false": treat}), ["fp32", "fp32", "bf16", "bf16"] * 2))
    assert r.mixed_precision.groupby("precision").size().to_dict() == {"bf16": 4, "fp32": 4}
    text = " ".join(render(r, "table").split())
    assert "check: runs trained in different precisions (MLflow tag ablate.precision)" in text
    assert "bf16: 4 runs (batchnorm=false seeds 2, 3; batchnorm=true seeds 2, 3)" in text
    assert "fp32: 4 runs (batchnorm=false seeds 0, 1; batchnorm=true seeds 0, 1)" in text
    for fmt in ("markdown", "html", "latex"):
        assert "check: runs trained in different precisions" in render(r, fmt), fmt
    mixed = json.loads(render(r, "json"))["mixed_precision"]
    assert len(mixed) == 8 and {m["precision"] for m in mixed} == {"bf16", "fp32"}
    assert "run2" in {m["run_id"] for m in mixed}


@pytest.mark.parametrize(
    "precisions, named",
    [
        (["bf16"] * 8, False),  # one precision: nothing to say
        ([None] * 8, False),  # runs made before ablate recorded it: not checked
        ([None, None, None, "bf16"] * 2, True),  # a study resumed with auto = bf16 after untagged runs
    ],
    ids=["one-precision", "untagged", "untagged-and-bf16"],
)
def test_the_precision_check_needs_two_recorded_kinds(precisions, named):
    r = build_report(_with_precisions(runs({"true": [0.8, 0.81, 0.79, 0.8], "false": [0.78] * 4}), precisions))
    assert (not r.mixed_precision.empty) == named
    text = " ".join(render(r, "table").split())
    assert ("runs trained in different precisions" in text) == named
    if named:
        assert "not recorded: 6 runs (batchnorm=false seeds 0-2; batchnorm=true seeds 0-2)" in text
        assert "bf16: 2 runs (batchnorm=false seed 3; batchnorm=true seed 3)" in text


def test_a_precision_factor_differs_by_design_but_an_arm_may_not_mix():
    """studies/precision.yaml compares fp32 with bf16: its arms differ in precision on purpose; only an arm
    whose own runs mix precisions is named."""
    rows = [
        {"arm": f"train.precision={p}", "seed": s, "train.precision": p, "test_acc": 0.8 + 0.001 * s}
        for p in ("fp32", "bf16")
        for s in range(4)
    ]
    sr = StudyRuns(
        "prec", "quick", "parent", {"train.precision": ["fp32", "bf16"]}, "test_acc", "maximize", pd.DataFrame(rows), 0
    )
    by_design = build_report(_with_precisions(sr, ["fp32"] * 4 + ["bf16"] * 4))
    assert by_design.mixed_precision.empty and "different precisions" not in render(by_design, "table")
    auto = build_report(_with_precisions(sr, ["fp32"] * 4 + ["bf16", "bf16", "fp32", "fp32"]))
    assert auto.mixed_precision["arm"].unique().tolist() == ["train.precision=bf16"]
    assert "fp32: 2 runs (train.precision=bf16 seeds 2, 3)" in " ".join(render(auto, "table").split())


# ----------------------------------------------------------------------------- effect by epoch, claim budgets


def _history(diffs: dict[int, list[float]], schedule: str | None = None) -> tuple[StudyRuns, pd.DataFrame]:
    """A batchnorm study whose per-seed val_acc differences (false - true, fractions) after each epoch are known."""
    sr = runs({"true": [0.60, 0.62, 0.58], "false": [0.57, 0.58, 0.57]}, claims=[BN_CLAIM])
    if schedule is not None:
        sr.schedules = {"batchnorm=true": [schedule], "batchnorm=false": [schedule]}
    rows = []
    for epoch, d in diffs.items():
        for seed, dd in enumerate(d):
            base = 0.3 + 0.1 * epoch + 0.01 * seed
            rows.append({"arm": "batchnorm=true", "seed": seed, "epoch": epoch, "metric": "val_acc", "value": base})
            rows.append(
                {"arm": "batchnorm=false", "seed": seed, "epoch": epoch, "metric": "val_acc", "value": base + dd}
            )
    return sr, pd.DataFrame(rows)


def test_effect_by_epoch_is_the_paired_t_interval_of_each_epoch():
    from scipy import stats as st

    from ablations.report import effect_by_epoch

    diffs = {1: [-0.08, -0.06, -0.07], 2: [-0.03, -0.01, -0.02], 3: [0.01, -0.02, 0.0]}
    sr, hist = _history(diffs, "none")
    b = effect_by_epoch(build_report(sr), hist)
    assert b["metric"] == "val_acc" and b["final_metric"] == "test_acc" and b["pointwise"] and b["descriptive"]
    arm = b["rows"][b["rows"]["kind"] == "arm"]
    assert arm["epoch"].tolist() == [1, 2, 3] and arm["n"].tolist() == [3, 3, 3]
    for row, d in zip(arm.itertuples(), diffs.values(), strict=True):
        res = st.ttest_1samp(100 * np.array(d), 0.0)
        ci = res.confidence_interval(0.95)
        assert row.estimate == pytest.approx(100 * np.mean(d))
        assert (row.ci_low, row.ci_high) == pytest.approx((ci.low, ci.high))
    claim = b["rows"][b["rows"]["kind"] == "claim"]  # the claim's treatment minus control: the other sign
    assert claim["estimate"].tolist() == pytest.approx((-arm["estimate"]).tolist())
    notes = " ".join(b["notes"])
    assert "pointwise 95% t intervals" in notes and "descriptive" in notes and "final test_acc" in notes
    assert "constant learning rate" in notes and "what a run of e epochs" in notes


def test_with_a_schedule_epoch_e_is_not_an_e_epoch_run_and_every_format_says_so(tmp_path):
    from ablations.report import effect_by_epoch

    sr, hist = _history({1: [-0.08, -0.06, -0.07], 2: [-0.03, -0.01, -0.02]}, "step")
    r = build_report(sr)
    r.by_epoch = effect_by_epoch(r, hist)
    assert r.by_epoch["constant_lr"] is False
    said = "is not what a run of e epochs gives"
    for fmt in ("table", "markdown", "html", "latex"):
        text = " ".join(render(r, fmt).split())
        assert said in text and "pointwise" in text and "verdicts are those of the final test_acc" in text, fmt
    j = json.loads(render(r, "json"))["by_epoch"]
    assert j["constant_lr"] is False and any(said in n for n in j["notes"]) and len(j["rows"]) == 4
    table = render(r, "table")
    assert "effect by epoch" in table and "-7.00 [" in table and all(len(x) <= 100 for x in table.splitlines())
    write_report(r, "csv", tmp_path / "r.csv")
    assert (tmp_path / "r.by_epoch.csv").read_text().startswith("kind,comparison,vs,epoch,n,estimate")
    from ablations.plots import effect_by_epoch_plot

    assert effect_by_epoch_plot(r.by_epoch, "t").axes[0].get_xlabel() == "epoch"


def test_effect_by_epoch_plot_draws_identical_comparisons_once():
    """Two claims on one pair of arms have the same rows: one line, one legend entry naming both."""
    import pandas as pd

    from ablations.plots import effect_by_epoch_plot

    def rows(name, est):
        return [
            {"comparison": name, "epoch": e, "estimate": x, "ci_low": x - 1, "ci_high": x + 1}
            for e, x in enumerate(est, 1)
        ]

    df = pd.DataFrame(
        rows("bn=false", [-3.0, -2.0])
        + rows("claim 1: bn=true vs bn=false", [3.0, 2.0])
        + rows("claim 2: bn=true vs bn=false", [3.0, 2.0])
    )
    by = {"rows": df, "metric": "val_acc", "final_metric": "test_acc", "level": 0.95, "unit": "pp"}
    ax = effect_by_epoch_plot(by).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["bn=false", "claims 1, 2: bn=true vs bn=false"]
    assert len(ax.get_lines()) == 3  # two comparisons and the zero line
    df.loc[df["comparison"] == "claim 2: bn=true vs bn=false", "estimate"] += 0.5
    labels = [t.get_text() for t in effect_by_epoch_plot(by).axes[0].get_legend().get_texts()]
    assert len(labels) == 3


def test_report_by_epoch_command_and_json(store):
    from click.testing import CliRunner

    from ablations.cli import main

    uri, _ = store
    cli = CliRunner()
    out = cli.invoke(main, ["report", "bn", "--tracking-uri", uri, "--by-epoch"])
    assert out.exit_code == 0, out.output
    assert "effect by epoch" in out.output and "pointwise" in out.output
    assert "effect by epoch" not in cli.invoke(main, ["report", "bn", "--tracking-uri", uri]).output
    j = json.loads(cli.invoke(main, ["report", "bn", "--tracking-uri", uri, "--format", "json"]).output)
    assert {row["epoch"] for row in j["by_epoch"]["rows"]} == {1, 2} and j["by_epoch"]["metric"] == "val_acc"
    html = cli.invoke(main, ["report", "bn", "--tracking-uri", uri, "--format", "html"]).output
    assert "Effect by epoch" in html and 'alt="effect_by_epoch"' in html


QUICK = {"train.epochs": 4, "data.train_subset": 8000, "data.val_fraction": 0.1, "data.root": None}
FULL = {"train.epochs": 60, "data.train_subset": None, "data.val_fraction": 0.1, "data.root": None}
SAID = (
    "supported at profile quick (4 epochs, 8,000 images); the claim is about profile full (60 epochs, "
    "45,000 images): not measured there"
)


def test_a_verdict_at_another_budget_says_so_in_every_format(tmp_path):
    claim = {
        **BN_CLAIM,
        "min_effect": None,
        "tests": "BatchNorm alone, dropout fixed",
        "budget": "full",
        "claimed_budget": {"profile": "full", "settings": {"train.epochs": 60}, "values": FULL},
    }
    sr = runs({"true": [0.60, 0.62, 0.58, 0.61], "false": [0.55, 0.57, 0.54, 0.56]}, claims=[claim])
    sr.profile, sr.budget_values = "quick", QUICK
    r = build_report(sr)
    row = r.claims.iloc[0]
    assert row["verdict"] == "supported" and row["statement"] == SAID and not row["budget_same"]
    for fmt in ("table", "markdown", "html", "latex", "csv"):
        text = " ".join(render(r, fmt).split())
        assert "not measured there" in text and "profile full (60 epochs, 45,000 images)" in text, fmt
        assert "this study tests: BatchNorm alone, dropout fixed" in text or fmt in ("csv", "table"), fmt
    assert "claim 1: this study tests BatchNorm alone, dropout fixed" in render(r)
    j = json.loads(render(r, "json"))["claims"][0]
    assert j["statement"] == SAID and j["tests"] == "BatchNorm alone, dropout fixed"
    assert j["measured_budget"]["values"] == QUICK and j["measured_budget"]["profile"] == "quick"
    assert j["claimed_budget"]["values"] == FULL and j["claimed_budget"]["profile"] == "full"
    # measured at the claim's budget: it says so instead
    sr.profile, sr.budget_values = "full", FULL
    assert build_report(sr).claims.iloc[0]["statement"] == (
        "supported at profile full (60 epochs, 45,000 images), the budget the claim is about"
    )


def test_claim_budget_and_tests_are_checked_and_leave_the_study_key_alone(tmp_path):
    from ablations.study import StudyError, load_study

    body = (
        "name: s\nquestion: q\nbase: {data.val_fraction: 0.1}\nfactors:\n  batchnorm: [true, false]\nseeds: [0]\n"
        "profiles:\n  full: {train.epochs: 60}\n  quick: {train.epochs: 4, data.train_subset: 8000}\n"
        "claims:\n  - {source: s, text: t, treatment: {batchnorm: true}, control: {batchnorm: false}, "
        "direction: increase%s}\n"
    )
    path = tmp_path / "s.yaml"
    path.write_text(body % "")
    plain = load_study(path, "quick")
    path.write_text(body % ", budget: full, tests: BatchNorm alone")
    named = load_study(path, "quick")
    assert named.key == plain.key  # claims and budgets are report-only: finished runs keep their study
    assert named.claim_records()[0]["claimed_budget"]["values"]["train.epochs"] == 60
    path.write_text(body % ", budget: {train.epochs: 50}")
    assert load_study(path, "quick").claim_records()[0]["claimed_budget"]["settings"] == {"train.epochs": 50}
    path.write_text(body % ", budget: long")
    with pytest.raises(StudyError, match=r"claims\[0\]\.budget.*no profile 'long'"):
        load_study(path, "quick")
    path.write_text(body % ", budget: {train.epoch: 50}")
    with pytest.raises(StudyError, match=r"claims\[0\]\.budget"):
        load_study(path, "quick")
