"""Plots are pure functions returning figures; check what they draw, not how it looks."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from ablations import plots


def test_learning_curves_of_one_run():
    history = [{"train_loss": 2.0, "val_loss": 2.1, "train_acc": 0.3, "val_acc": 0.28}] * 3
    fig = plots.learning_curves(history, "cell")
    assert isinstance(fig, Figure) and len(fig.axes) == 2


def test_effect_plot_marks_the_baseline_and_draws_every_arm():
    arms = pd.DataFrame(
        {
            "arm": ["bn=true", "bn=false"],
            "mean": [55.0, 51.3],
            "ci_low": [50.1, 47.6],
            "ci_high": [60.0, 55.0],
            "diff": [np.nan, -3.75],
            "diff_low": [np.nan, -11.2],
            "diff_high": [np.nan, 3.7],
        }
    )
    fig = plots.effect_plot(arms, "bn=true", "test_acc (%)", "bn")
    means, diffs = fig.axes
    labels = [t.get_text() for t in means.get_yticklabels()]
    assert labels == ["bn=true (baseline)", "bn=false"]
    assert "difference to the baseline (pp)" in diffs.get_xlabel()
    # one error bar per arm on the left; the baseline has none on the right (it is the 0 marker)
    assert len(means.containers) == 2 and len(diffs.containers) == 1
    with pytest.raises(ValueError, match="no arms"):
        plots.effect_plot(arms.iloc[:0], "bn=true")


def test_arm_learning_curves_mean_and_band():
    rows = [
        {"arm": arm, "seed": s, "epoch": e, "metric": m, "value": v + 0.01 * s}
        for arm, v in (("a", 0.5), ("b", 0.6))
        for s in range(3)
        for e in (1, 2, 3)
        for m in ("train_loss", "val_loss", "train_acc", "val_acc")
    ]
    fig = plots.arm_learning_curves(pd.DataFrame(rows), ["b", "a"], "t")
    loss, acc = fig.axes
    assert len(loss.lines) == 4 and len(acc.lines) == 4  # 2 arms x train/val
    assert len(acc.collections) == 4  # one band per line
    line = acc.lines[0]  # arm b, train: mean over seeds 0.61 -> 61 %
    assert np.allclose(line.get_ydata(), 61.0) and list(line.get_xdata()) == [1, 2, 3]
    with pytest.raises(ValueError, match="no metric history"):
        plots.arm_learning_curves(pd.DataFrame(columns=["arm", "seed", "epoch", "metric", "value"]))


def test_per_class_difference_needs_the_metrics_and_plots_them():
    runs = pd.DataFrame(
        [
            {"arm": arm, "seed": s, "test_acc_class_cat": base + 0.01 * s, "test_acc_class_ship": base + 0.1}
            for arm, base in (("bn=true", 0.5), ("bn=false", 0.45))
            for s in range(3)
        ]
    )
    assert plots.per_class_columns(runs) == ["test_acc_class_cat", "test_acc_class_ship"]
    fig = plots.per_class_difference(runs, "bn=true")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "ship"]
    (bars,) = ax.containers
    assert np.allclose(bars.lines[0].get_ydata(), -5.0)  # every class 5 points lower than the baseline
    with pytest.raises(ValueError, match="test_acc_class_"):
        plots.per_class_difference(runs[["arm", "seed"]], "bn=true")
    with pytest.raises(ValueError, match="baseline arm"):
        plots.per_class_difference(runs, "bn=maybe")


def test_one_colour_per_arm_in_every_figure():
    order = ["bn=true", "bn=false", "bn=half"]  # the report's arm order; the first is the baseline
    arms = pd.DataFrame(
        {
            "arm": order,
            "mean": [55.0, 51.3, 53.0],
            "ci_low": [50.1, 47.6, 50.0],
            "ci_high": [60.0, 55.0, 56.0],
            "diff": [np.nan, -3.75, -2.0],
            "diff_low": [np.nan, -11.2, -5.0],
            "diff_high": [np.nan, 3.7, 1.0],
        }
    )
    history = pd.DataFrame(
        [
            {"arm": arm, "seed": s, "epoch": e, "metric": m, "value": 0.5}
            for arm in order[::-1]  # histories arrive in another order
            for s in range(2)
            for e in (1, 2)
            for m in ("train_loss", "val_loss", "train_acc", "val_acc")
        ]
    )
    runs = pd.DataFrame(
        [{"arm": arm, "seed": s, "test_acc_class_cat": 0.5 + 0.01 * s} for arm in order[::-1] for s in range(3)]
    )
    means, diffs = plots.effect_plot(arms, "bn=true").axes
    effect = {c.get_label(): to_hex(c.lines[0].get_color()) for c in means.containers}
    curves = {
        line.get_label().removesuffix(" train"): to_hex(line.get_color())
        for line in plots.arm_learning_curves(history, order).axes[0].lines
        if line.get_label().endswith(" train")
    }
    per_class = {
        c.get_label(): to_hex(c.lines[0].get_color())
        for c in plots.per_class_difference(runs, "bn=true", order=order).axes[0].containers
    }
    assert effect == curves == plots.arm_colours(order)
    assert per_class == {a: effect[a] for a in order[1:]}
    assert len(set(effect.values())) == 3  # the baseline is not drawn in another arm's colour
    base_marker = next(line for line in diffs.lines if line.get_label() == "bn=true")
    assert to_hex(base_marker.get_color()) == effect["bn=true"]
