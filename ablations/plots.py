"""Plots: pure functions that return matplotlib Figures (the caller saves or logs them)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display needed; figures are saved or logged
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = [
    "CLASS_PREFIX",
    "arm_colours",
    "arm_learning_curves",
    "effect_by_epoch_plot",
    "effect_plot",
    "learning_curves",
    "per_class_columns",
    "per_class_difference",
]


def learning_curves(history: list[dict[str, float]], title: str = "") -> Figure:
    """Loss and top-1 accuracy per epoch, train and validation.

    Args:
        history: one dict per epoch with ``train_loss``, ``val_loss``,
            ``train_acc``, ``val_acc`` (accuracies in [0, 1]).
        title: figure title, e.g. the cell name.

    Returns:
        A Figure with two panels (loss; accuracy in percent).
    """
    epochs = list(range(1, len(history) + 1))
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for split, style in (("train", "-"), ("val", "--")):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], style, marker="o", label=split)
        ax_acc.plot(epochs, [100 * h[f"{split}_acc"] for h in history], style, marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    return fig


CLASS_PREFIX = "test_acc_class_"  # per-class test accuracy metrics: test_acc_class_<class name>, in [0, 1]


def arm_colours(arms: list[str]) -> dict[str, str]:
    """One colour per arm, by its place in ``arms`` (the report's arm order), the same in every figure.

    Args:
        arms: every arm of the study, in the report's order (the baseline wherever it is).

    Returns:
        ``{arm: "#rrggbb"}`` from matplotlib's ``tab10`` cycle (it repeats after 10 arms).
    """
    cycle = matplotlib.colormaps["tab10"]
    return {arm: matplotlib.colors.to_hex(cycle(i % 10)) for i, arm in enumerate(dict.fromkeys(arms))}


def effect_plot(arms: pd.DataFrame, baseline: str, metric_label: str = "test_acc (%)", title: str = "") -> Figure:
    """Each arm's mean with its 95% confidence interval, and its difference to the baseline.

    Args:
        arms: the report's arm table: ``arm``, ``mean``, ``ci_low``, ``ci_high``,
            ``diff``, ``diff_low``, ``diff_high`` (report units, e.g. percent).
        baseline: the baseline arm's name (a diamond at 0 and a reference line in its own colour).
        metric_label: axis label of the means, e.g. ``test_acc (%)``.
        title: figure title.

    Returns:
        A Figure with two panels: means with intervals; differences to the baseline with intervals and 0 marked.

    Raises:
        ValueError: ``arms`` is empty.
    """
    if arms.empty:
        raise ValueError("no arms to plot")
    n = len(arms)
    y = list(range(n))[::-1]
    fig = Figure(figsize=(10, 1.2 + 0.45 * n), layout="constrained")
    ax_m, ax_d = fig.subplots(1, 2, sharey=True)
    colours = arm_colours(list(arms["arm"]))  # the learning curves' and per-class figure's colours
    for yi, row in zip(y, arms.itertuples(), strict=True):
        is_base = row.arm == baseline
        colour = colours[row.arm]
        lo, hi = _err(row.mean, row.ci_low, row.ci_high)
        ax_m.errorbar(row.mean, yi, xerr=[[lo], [hi]], fmt="o", color=colour, capsize=4, label=row.arm)
        if is_base:
            ax_m.axvline(row.mean, color=colour, ls=":", lw=1)
            ax_d.plot(0, yi, "D", color=colour, label=row.arm)
        elif row.diff == row.diff:
            lo, hi = _err(row.diff, row.diff_low, row.diff_high)
            ax_d.errorbar(row.diff, yi, xerr=[[lo], [hi]], fmt="o", color=colour, capsize=4, label=row.arm)
    ax_d.axvline(0, color="grey", lw=1)
    ax_m.set_yticks(y, [f"{a} (baseline)" if a == baseline else a for a in arms["arm"]])
    ax_m.set(xlabel=f"{metric_label}: mean and 95% CI over seeds")
    unit = " (pp)" if "%" in metric_label else ""
    ax_d.set(xlabel=f"difference to the baseline{unit}, 95% CI")
    for ax in (ax_m, ax_d):
        ax.grid(alpha=0.3, axis="x")
    if title:
        fig.suptitle(title)
    return fig


def _err(mid: float, lo: float, hi: float) -> tuple[float, float]:
    return (mid - lo, hi - mid) if lo == lo else (0.0, 0.0)


def arm_learning_curves(history: pd.DataFrame, order: list[str] | None = None, title: str = "") -> Figure:
    """Per-epoch loss and accuracy per arm: mean over seeds with a band of ± one standard deviation.

    Args:
        history: long table with ``arm``, ``seed``, ``epoch``, ``metric`` (``train_loss``,
            ``val_loss``, ``train_acc``, ``val_acc``) and ``value`` (accuracies in [0, 1]).
        order: every arm of the study in the report's order, which gives each its colour
            (:func:`arm_colours`; default: sorted).
        title: figure title.

    Returns:
        A Figure with two panels (loss; accuracy in percent); train solid, validation dashed, one colour per arm.

    Raises:
        ValueError: ``history`` is empty.
    """
    if history.empty:
        raise ValueError("no metric history to plot")
    arms = order or sorted(history["arm"].unique())
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    colours = arm_colours(arms)  # by place in the order, also for arms without a history
    for arm in (a for a in arms if a in set(history["arm"])):
        h = history[history["arm"] == arm]
        for split, style in (("train", "-"), ("val", "--")):
            for ax, kind, scale in ((ax_loss, "loss", 1.0), (ax_acc, "acc", 100.0)):
                g = h[h["metric"] == f"{split}_{kind}"].groupby("epoch")["value"]
                if not len(g):
                    continue
                mean, sd = g.mean() * scale, g.std(ddof=1).fillna(0) * scale
                ax.plot(mean.index, mean, style, color=colours[arm], label=f"{arm} {split}")
                ax.fill_between(mean.index, mean - sd, mean + sd, color=colours[arm], alpha=0.15, lw=0)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.legend(fontsize="small")
    fig.suptitle((f"{title}\n" if title else "") + "mean over seeds, band ± 1 SD; train solid, validation dashed")
    return fig


def per_class_columns(runs: pd.DataFrame) -> list[str]:
    """The per-class accuracy columns (``test_acc_class_<class>``) of a runs table, in column order."""
    return [c for c in runs.columns if str(c).startswith(CLASS_PREFIX)]


def per_class_difference(runs: pd.DataFrame, baseline: str, title: str = "", order: list[str] | None = None) -> Figure:
    """Per-class test accuracy difference of each arm to the baseline arm, with 95% intervals.

    The difference of each class is paired by seed when the arms share seeds
    (Welch otherwise), as in the report (:func:`ablations.stats.compare`).

    Args:
        runs: one row per finished run: ``arm``, ``seed`` and ``test_acc_class_<class>`` in [0, 1].
        baseline: the baseline arm's name.
        title: figure title.
        order: every arm in the report's order, which gives each its colour (:func:`arm_colours`;
            default: the order of ``runs``).

    Returns:
        A Figure: classes on the x axis, one marker with an error bar per arm, in percent points.

    Raises:
        ValueError: no ``test_acc_class_*`` columns, or no runs of the baseline arm.
    """
    from ablations.stats import compare

    cols = per_class_columns(runs)
    if not cols:
        raise ValueError(f"no per-class accuracy metrics ({CLASS_PREFIX}<class>) in the runs")
    if baseline not in set(runs["arm"]):
        raise ValueError(f"no runs of the baseline arm '{baseline}'")
    base = runs[runs["arm"] == baseline].set_index("seed")
    order = list(dict.fromkeys([*(order or []), *runs["arm"]]))  # arms missing from ``order`` go last
    colours = arm_colours(order)
    present = set(runs["arm"])
    others = [a for a in order if a != baseline and a in present]
    classes = [c.removeprefix(CLASS_PREFIX) for c in cols]
    fig = Figure(figsize=(max(8, 0.9 * len(classes)), 4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(others), 1)
    for i, arm in enumerate(others):
        treat = runs[runs["arm"] == arm].set_index("seed")
        xs = [j - 0.4 + width * (i + 0.5) for j in range(len(classes))]
        est, lo, hi = [], [], []
        for col in cols:
            c = compare(100 * treat[col].astype(float), 100 * base[col].astype(float))
            est.append(c.estimate)
            lo.append(c.estimate - c.ci_low if c.ci_low == c.ci_low else 0.0)
            hi.append(c.ci_high - c.estimate if c.ci_high == c.ci_high else 0.0)
        ax.errorbar(xs, est, yerr=[lo, hi], fmt="o", capsize=3, label=arm, color=colours[arm])
    ax.axhline(0, color="grey", lw=1)
    ax.set_xticks(range(len(classes)), classes, rotation=30)
    ax.set(ylabel=f"test accuracy difference to\n{baseline} (pp), 95% CI (uncorrected)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def looks_plot(looks: list[dict], unit: str = "", margin: float | None = None, title: str = "") -> Figure:
    """How a sequential study's intervals (valid at every look at once) narrowed, look by look.

    Args:
        looks: ``Report.sequential["looks"]``: per look ``seeds`` (per arm) and ``comparisons``
            (``effect``, ``estimate``, ``ci_low``, ``ci_high``, ``verdict``), in the report's unit.
        unit: the difference unit for the y label (``pp`` for accuracies).
        margin: the equivalence margin, drawn as a band around 0, or None.
        title: figure title.

    Returns:
        A matplotlib ``Figure``: one panel per deciding comparison, x = seeds per arm, the estimate with its
        interval at each look (an unbounded interval drawn to the panel's edge), 0 and the margin marked.
    """
    names = list(dict.fromkeys(c["effect"] for look in looks for c in look["comparisons"]))
    fig = Figure(figsize=(6.4, 2.6 * max(len(names), 1)), layout="constrained")
    axes = fig.subplots(max(len(names), 1), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, names, strict=False):
        pts = [(look["seeds"], c) for look in looks for c in look["comparisons"] if c["effect"] == name]
        finite = [
            v
            for _, c in pts
            for v in (c["ci_low"], c["ci_high"], c["estimate"])
            if v is not None and abs(v) != float("inf")
        ]
        span = max((abs(v) for v in finite), default=1.0) * 1.3 or 1.0
        for n, c in pts:
            lo = max(c["ci_low"], -span) if c["ci_low"] is not None else -span
            hi = min(c["ci_high"], span) if c["ci_high"] is not None else span
            decided = not str(c["verdict"]).startswith(("no detectable", "inconclusive"))
            ax.errorbar(
                [n],
                [c["estimate"]],
                yerr=[[c["estimate"] - lo], [hi - c["estimate"]]],
                fmt="o",
                color="tab:green" if decided else "tab:blue",
                capsize=4,
            )
        ax.axhline(0.0, color="grey", lw=0.8)
        if margin:
            ax.axhspan(-margin, margin, color="tab:green", alpha=0.1, label=f"±{margin:g} (equivalence)")
            ax.legend(loc="upper right", fontsize=8)
        ax.set_ylim(-span, span)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel(f"difference{f' ({unit})' if unit else ''}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("seeds per arm (look)")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _same_lines(rows: pd.DataFrame) -> dict[str, list[str]]:
    """Comparisons grouped by their per-epoch rows: those with the same epochs, estimates and intervals
    (two claims of one treatment against one control, say) are one line, keyed by the first's name."""
    groups: dict[tuple, list[str]] = {}
    for name in dict.fromkeys(rows["comparison"]):
        r = rows[rows["comparison"] == name].sort_values("epoch")
        sig = tuple(tuple(r[c].round(9).fillna(float("inf"))) for c in ("epoch", "estimate", "ci_low", "ci_high"))
        groups.setdefault(sig, []).append(name)
    return {members[0]: members for members in groups.values()}


def _joined_label(names: list[str]) -> str:
    """One legend entry for comparisons drawn as one line: ``claims 1, 2: a vs b`` where only the claim
    numbers differ, else the names joined with `` = ``."""
    if len(names) == 1:
        return names[0]
    parts = [n.split(": ", 1) for n in names]
    if all(len(p) == 2 and p[0].startswith("claim ") for p in parts) and len({p[1] for p in parts}) == 1:
        return f"claims {', '.join(p[0].removeprefix('claim ') for p in parts)}: {parts[0][1]}"
    return " = ".join(names)


def effect_by_epoch_plot(by_epoch: dict, title: str = "") -> Figure:
    """Each comparison's paired difference after every epoch with its pointwise interval.

    Args:
        by_epoch: :func:`ablations.report.effect_by_epoch`'s dict: ``metric``, ``final_metric``,
            ``level``, ``unit`` (``pp`` for accuracies) and ``rows`` (``comparison``, ``epoch``,
            ``estimate``, ``ci_low``, ``ci_high``, in the report's difference unit).
        title: figure title.

    Returns:
        A Figure: one line per comparison with a band for its interval (no band where it cannot be
        computed; comparisons with the same rows, such as two claims on one pair of arms, share one line
        and one legend entry), 0 marked, and a caption saying the intervals are pointwise and descriptive and the
        verdict is the final metric's.

    Raises:
        ValueError: no rows to plot.
    """
    rows = by_epoch["rows"]
    if rows.empty:
        raise ValueError("no per-epoch differences to plot")
    groups = _same_lines(rows)
    colours = arm_colours(list(groups))
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.subplots()
    for name, members in groups.items():
        r = rows[rows["comparison"] == members[0]].sort_values("epoch")
        ax.plot(r["epoch"], r["estimate"], "-o", ms=3, color=colours[name], label=_joined_label(members))
        ok = r["ci_low"].notna()
        ax.fill_between(r["epoch"][ok], r["ci_low"][ok], r["ci_high"][ok], color=colours[name], alpha=0.15, lw=0)
    ax.axhline(0, color="grey", lw=1)
    unit = f" ({by_epoch['unit']})" if by_epoch.get("unit") else ""
    ax.set(xlabel="epoch", ylabel=f"difference in {by_epoch['metric']}{unit}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    caption = (
        f"band: pointwise {by_epoch['level']:.0%} t interval at each epoch, descriptive; "
        f"the verdict is the final {by_epoch['final_metric']}'s"
    )
    fig.suptitle((f"{title}\n" if title else "") + caption, fontsize=9)
    return fig
