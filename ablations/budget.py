"""How long a study will take, before it trains: a short calibration on this device, then arithmetic.

:func:`calibrate` trains each arm's config for a few optimiser steps on a few batches of the real data
(``core.train.fit`` itself, with ``train.max_steps`` and one epoch) and reads its training speed in
images per second. :func:`estimate` turns that into seconds per cell: ``epochs x steps x batch`` training
images at that speed, plus validation after every epoch and the test set at the end at three times that
speed (a forward pass costs about a third of a forward and backward pass). The first steps include the
warm-up, so the figure errs on the slow side; the runner corrects it with the measured time of every
cell as the study goes (:class:`Eta`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from ablations.study import Cell, Study
from core.config import RunConfig
from core.data import Splits

__all__ = ["Budget", "Eta", "calibrate", "estimate", "format_seconds"]

CALIBRATION_STEPS = 4  # optimiser steps timed per arm (the first includes the warm-up)
EVAL_SPEEDUP = 3.0  # evaluation images per second / training images per second
GPU_BUDGET_S = 3 * 3600  # above this on a CPU, say it is a GPU budget and name the quick profile


def format_seconds(s: float) -> str:
    """``42 s``, ``7 min``, ``2 h 05 min``: a wall time in the unit a person plans with."""
    if not math.isfinite(s):
        return "?"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    h, m = divmod(round(s / 60), 60)
    return f"{h} h {m:02d} min"


def _cell_images(cfg: RunConfig, n_train: int, n_val: int, n_test: int) -> float:
    """Training-image equivalents of one cell: training steps, then validation each epoch and the test set."""
    bs = cfg.train.batch_size
    steps = n_train // bs if n_train >= bs else 1
    if cfg.train.max_steps:
        steps = min(steps, cfg.train.max_steps)
    train = cfg.train.epochs * steps * bs
    return train + (cfg.train.epochs * n_val + n_test) / EVAL_SPEEDUP


def calibrate(cfg: RunConfig, splits: Splits, steps: int = CALIBRATION_STEPS) -> float:
    """Training speed of ``cfg`` on this device, in images per second, from ``steps`` optimiser steps.

    Args:
        cfg: a cell's resolved config (its device, model, batch size and precision are used:
            ``train.precision`` auto trains, and is timed, in what it resolves to on this device).
        splits: the study's data (uint8 tensors); only ``steps`` batches of it are used.
        steps: optimiser steps to time.

    Returns:
        Images per second of the timed epoch (warm-up included), > 0.

    Raises:
        core.train.DivergedError: the calibration steps diverged (the study's first cell would too).
    """
    from core.train import fit

    bs = cfg.train.batch_size
    few = Splits(
        splits.train_x[: bs * steps],
        splits.train_y[: bs * steps],
        splits.val_x[:0],
        splits.val_y[:0],
        splits.test_x[:bs],
        splits.test_y[:bs],
        splits.classes,
    )
    train = cfg.train.model_copy(update={"epochs": 1, "max_steps": steps, "early_stopping": None})
    result = fit(cfg.model_copy(update={"train": train}), few)
    return float(result.history[0]["images_per_s"])


@dataclass
class Budget:
    """The study's cells and how long they should take here.

    Attributes:
        device: where the study trains (``cpu``, ``cuda:0``, ...).
        speed: arm -> training images per second measured by :func:`calibrate`.
        cell_seconds: arm -> estimated seconds per cell.
        precision: arm -> the precision its calibration (and its cells) train in on this device:
            ``train.precision`` resolved (``bf16``, ``fp32`` or ``fp16``; ``core.precision``).
    """

    device: str
    speed: dict[str, float] = field(default_factory=dict)
    cell_seconds: dict[str, float] = field(default_factory=dict)
    precision: dict[str, str] = field(default_factory=dict)

    def precisions(self) -> str:
        """The arms' resolved precisions in words: ``bf16``, or ``fp32 and bf16`` when arms differ."""
        return " and ".join(dict.fromkeys(self.precision.values()))

    def seconds(self, cells: list[Cell]) -> float:
        """Estimated wall time of ``cells`` (one after another), in seconds."""
        mean = sum(self.cell_seconds.values()) / max(len(self.cell_seconds), 1)
        return sum(self.cell_seconds.get(c.arm, mean) for c in cells)


def estimate(study: Study, splits: Splits, arms: list[Cell] | None = None) -> Budget:
    """Calibrate every arm of ``study`` on this device and estimate the seconds each cell takes.

    Args:
        study: the study (its cells' configs give epochs, batch size and data sizes).
        splits: the loaded data of the study's first cell (sizes of train, validation and test sets).
        arms: one cell per arm to calibrate (default: the first seed of every arm).

    Returns:
        A :class:`Budget`.

    Raises:
        core.train.DivergedError: a calibration diverged.
    """
    from core.precision import resolve_precision
    from core.train import select_device

    if arms is None:
        seen: dict[str, Cell] = {}
        for cell in study.cells():
            seen.setdefault(cell.arm, cell)
        arms = list(seen.values())
    first = study.cell_config(arms[0])
    budget = Budget(str(select_device(first.train.device)))
    n_train, n_val, n_test = len(splits.train_x), len(splits.val_x), len(splits.test_x)
    for cell in arms:
        cfg = study.cell_config(cell)
        t0 = time.perf_counter()
        speed = calibrate(cfg, splits)
        overhead = time.perf_counter() - t0 - CALIBRATION_STEPS * cfg.train.batch_size / speed
        budget.speed[cell.arm] = speed
        budget.precision[cell.arm] = resolve_precision(cfg.train.precision, select_device(cfg.train.device))
        # model creation, logging and checkpointing: about what the calibration spent outside its steps
        budget.cell_seconds[cell.arm] = _cell_images(cfg, n_train, n_val, n_test) / speed + max(overhead, 0.0)
    return budget


class Eta:
    """The study's remaining time: the calibrated estimate, replaced by the measured mean as cells finish."""

    def __init__(self, budget: Budget) -> None:
        self.budget, self.done = budget, []

    def finished(self, seconds: float) -> None:
        """Record one finished cell's wall time (seconds)."""
        self.done.append(seconds)

    def remaining(self, cells: list[Cell]) -> float:
        """Seconds left for ``cells`` (not yet trained)."""
        if not self.done:
            return self.budget.seconds(cells)
        return len(cells) * sum(self.done) / len(self.done)
