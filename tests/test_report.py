import math

import numpy as np
import pandas as pd
import pytest

from ablations.report import ReportError, StudyRuns, arm_table, compare, format_table


def runs(values: dict[str, list[float]], seeds=None, metric="test_acc") -> StudyRuns:
    rows = []
    for level, vals in values.items():
        for i, v in enumerate(vals):
            rows.append({"arm": f"batchnorm={level}", "seed": (seeds or range(len(vals)))[i], metric: v})
    return StudyRuns("bn", "smoke", "parent", {"batchnorm": list(values)}, metric, "maximize", pd.DataFrame(rows), 0)


def test_paired_difference_matches_hand_computation():
    # differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3); t(0.975, 2) = 4.302653
    base = pd.Series([50.0, 60.0, 70.0], index=[0, 1, 2])
    treat = pd.Series([51.0, 62.0, 73.0], index=[0, 1, 2])
    out = compare(treat, base)
    half = 4.302653 / math.sqrt(3)
    assert out["test"] == "paired t"
    assert out["diff"] == pytest.approx(2.0)
    assert out["diff_low"] == pytest.approx(2 - half, abs=1e-5)
    assert out["diff_high"] == pytest.approx(2 + half, abs=1e-5)
    # t = 2 / (1/sqrt(3)) = 3.4641 with 2 df: two-sided p = 0.07418
    assert out["p"] == pytest.approx(0.07418, abs=1e-4)


def test_unpaired_seeds_use_welch():
    base = pd.Series([1.0, 2.0, 3.0], index=[0, 1, 2])
    treat = pd.Series([4.0, 5.0, 6.0], index=[10, 11, 12])
    out = compare(treat, base)
    assert out["test"] == "Welch t" and out["diff"] == pytest.approx(3.0)
    # equal variances (1) and n: t = 3 / sqrt(2/3) = 3.674, df = 4: p = 0.02131
    assert out["p"] == pytest.approx(0.02131, abs=1e-4)


def test_known_true_effect_is_found_and_null_is_not():
    rng = np.random.default_rng(0)
    seeds = list(range(10))
    noise = rng.normal(0, 0.5, size=10)
    base = 80 + rng.normal(0, 1.0, size=10)
    table = arm_table(runs({"true": list(base / 100), "false": list((base + 2.0 + noise) / 100)}, seeds))
    row = table.set_index("batchnorm").loc["false"]
    assert row["diff_low"] < 2.0 < row["diff_high"]  # interval covers the true +2 points
    assert row["verdict"] == "better"
    null = arm_table(runs({"true": list(base / 100), "false": list((base + noise) / 100)}, seeds))
    assert null.set_index("batchnorm").loc["false", "verdict"] == "no detectable difference"


def test_worse_and_minimize_direction():
    sr = runs({"true": [0.80, 0.81, 0.82, 0.80], "false": [0.70, 0.71, 0.715, 0.705]})
    assert arm_table(sr).set_index("batchnorm").loc["false", "verdict"] == "worse"
    sr.direction = "minimize"
    assert arm_table(sr).set_index("batchnorm").loc["false", "verdict"] == "better"


def test_fewer_than_three_seeds_gives_no_verdict():
    table = arm_table(runs({"true": [0.5, 0.6], "false": [0.1, 0.2]}))
    assert table.set_index("batchnorm").loc["false", "verdict"].startswith("not possible")


def test_arm_ci_and_percent_scale():
    table = arm_table(runs({"true": [0.50, 0.60, 0.70], "false": [0.5, 0.5, 0.5]}))
    base = table.set_index("batchnorm").loc["true"]
    assert base["mean"] == pytest.approx(60.0) and base["std"] == pytest.approx(10.0)
    half = 4.302653 * 10 / math.sqrt(3)
    assert base["ci_low"] == pytest.approx(60 - half, abs=1e-4)
    text = format_table(runs({"true": [0.5, 0.6, 0.7], "false": [0.5, 0.5, 0.5]}), table)
    assert "60.00 ± 10.00" in text and "baseline" in text
    assert format_table(runs({"true": [0.5]}), arm_table(runs({"true": [0.5]})), "csv").startswith("arm,")


def test_empty_study_is_an_error():
    with pytest.raises(ReportError, match="no finished runs"):
        arm_table(StudyRuns("bn", "smoke", "p", {"batchnorm": ["true"]}, "test_acc", "maximize", pd.DataFrame(), 0))
