"""Classification metrics on logits: top-k accuracy, per-class accuracy, confusion matrix."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["confusion_matrix", "per_class_accuracy", "topk_correct"]


def topk_correct(logits: Tensor, targets: Tensor, k: int = 1) -> Tensor:
    """Count of samples whose true class is among the ``k`` highest logits.

    Args:
        logits: float (B, C).
        targets: int64 (B,) class indices.
        k: how many top predictions count (top-1, top-3, ...); at most C.

    Returns:
        A 0-dim int64 tensor on the logits' device (no host sync).

    For ``k == 1`` the prediction is ``argmax`` (the first of tied logits), as in the confusion matrix.
    """
    if k == 1:
        return (logits.argmax(dim=1) == targets).sum()
    top = logits.topk(k, dim=1).indices  # (B, k)
    return (top == targets[:, None]).any(dim=1).sum()


def confusion_matrix(preds: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """Confusion matrix, rows = true class, columns = predicted class.

    Args:
        preds: int64 (N,) predicted classes.
        targets: int64 (N,) true classes.
        num_classes: C.

    Returns:
        int64 (C, C) counts.
    """
    idx = targets.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(cm: Tensor) -> Tensor:
    """Top-1 accuracy per true class from a confusion matrix: float (C,), in [0, 1]."""
    totals = cm.sum(dim=1).clamp(min=1)
    return cm.diag().double() / totals
