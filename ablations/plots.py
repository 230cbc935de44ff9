"""Plots: pure functions that return matplotlib Figures (the caller saves or logs them)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display needed; figures are saved or logged
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["learning_curves"]


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
