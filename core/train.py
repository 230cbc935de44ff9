"""Train ONE run: ``fit(cfg) -> FitResult``.

The whole data set sits on the training device as uint8 tensors (see
``core.data``); each step indexes a batch, augments it on the device
(``core.augment.BatchAugment``) and takes an optimiser step. There are no
DataLoader workers and no per-image PIL work in the loop (the cifar10-airbench
habit). Per epoch the loop reports train/validation loss and top-1 accuracy,
seconds and images per second; at the end it evaluates the best-validation
weights on the official test set (top-1 and top-3).
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core import rng
from core.augment import BatchAugment, normalize
from core.config import RunConfig
from core.data import Splits, load_splits
from core.metrics import confusion_matrix, per_class_accuracy, topk_correct
from core.models import create_model, resolve_model_config

__all__ = ["Callback", "DivergedError", "FitResult", "evaluate", "fit", "resolve_config", "select_device"]


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite.

    Attributes:
        epoch: the epoch (1-based) in which it happened.
        loss: the offending mean training loss of that epoch.
    """

    def __init__(self, epoch: int, loss: float) -> None:
        super().__init__(f"training diverged: mean train loss {loss} in epoch {epoch}")
        self.epoch, self.loss = epoch, loss


class Callback:
    """Hooks called by :func:`fit`; override what you need. All no-ops here."""

    def on_fit_start(self, cfg: RunConfig, steps_per_epoch: int) -> None:
        """Called once with the resolved config."""

    def on_batch_end(self, epoch: int, step: int, images: int, loss: Tensor) -> None:
        """After each optimiser step (``step`` counts from 0 in each epoch).

        ``images`` is the batch size of that step and ``loss`` its mean loss as a
        0-dim tensor on the device: reading it (``.item()``) waits for the device,
        so read it rarely.
        """

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """After each epoch with ``train_loss``, ``train_acc``, ``val_loss``,
        ``val_acc``, ``lr``, ``epoch_seconds``, ``images_per_s`` (accuracies in [0, 1])."""


@dataclass
class FitResult:
    """What one run produced.

    Attributes:
        config: the resolved config (model presets filled in).
        history: one dict of epoch metrics per epoch (see :class:`Callback`); shorter than
            ``train.epochs`` when early stopping ended the run.
        test: ``test_loss``, ``test_acc``, ``test_top3`` and ``test_acc_class_<class>``
            (accuracies in [0, 1]) of the best-validation weights on the test set.
        best_epoch: 1-based epoch whose weights were kept (highest val top-1;
            the last epoch when there is no validation set).
        state_dict: those weights, on the CPU.
        device: where it trained, e.g. ``"cuda:0"``.
        seconds: wall time of the whole fit, evaluation included.
    """

    config: RunConfig
    history: list[dict[str, float]]
    test: dict[str, float]
    best_epoch: int
    state_dict: dict[str, Tensor] = field(repr=False)
    device: str
    seconds: float

    def final_metrics(self) -> dict[str, float]:
        """The run's end-of-run numbers, as tracking logs them.

        Returns:
            :attr:`test`, ``best_epoch``, ``fit_seconds`` and ``train_test_acc_gap``: top-1 on the
            training batches in the kept epoch (augmented, in train mode) minus test top-1 of the
            kept weights, a fraction in [-1, 1]; the larger it is, the more the model overfits
            (seed 002 compares ResNet-18 and its CNN by such a gap).
        """
        train_acc = self.history[self.best_epoch - 1]["train_acc"]
        return {
            **self.test,
            "best_epoch": self.best_epoch,
            "fit_seconds": self.seconds,
            "train_test_acc_gap": train_acc - self.test["test_acc"],
        }

    def value(self, metric: str) -> float:
        """One number for ``metric``: a final metric (``test_*``, ``train_test_acc_gap``) or the
        per-epoch metric (``val_acc``, ``train_loss``, ...) of the kept epoch.

        Raises:
            KeyError: no such metric.
        """
        final = self.final_metrics()
        return float(final[metric] if metric in final else self.history[self.best_epoch - 1][metric])


def select_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available, then Apple MPS, then CPU; else ``torch.device(name)``."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_config(cfg: RunConfig) -> RunConfig:
    """Fill the model preset's values into ``cfg.model`` (see ``core.models``)."""
    return cfg.model_copy(update={"model": resolve_model_config(cfg.model)})


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast_context(cfg: RunConfig, device: torch.device):
    """``(context manager, use_grad_scaler)`` for ``train.precision`` on ``device`` (auto: bf16 on CUDA)."""
    precision = cfg.train.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return nullcontext(), False
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype), precision == "fp16"


def memory_format(cfg: RunConfig, device: torch.device) -> torch.memory_format:
    """``torch.channels_last`` or ``torch.contiguous_format`` as ``train.channels_last`` says."""
    # auto: on for CUDA and the CPU (cnn4 trains 12-14% faster channels_last on this 2-core CPU), off for MPS
    on = cfg.train.channels_last == "on" or (cfg.train.channels_last == "auto" and device.type in ("cuda", "cpu"))
    return torch.channels_last if on else torch.contiguous_format


def _optimizer(cfg: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]  # frozen layers (model.trainable) stay out
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)


class _Schedule:
    """The learning-rate schedule: stepped after each batch (OneCycle) or each epoch (the others)."""

    def __init__(self, cfg: RunConfig, opt: torch.optim.Optimizer, steps_per_epoch: int) -> None:
        s, sched = cfg.schedule, torch.optim.lr_scheduler
        self.name = s.name
        self.sched = {
            "none": lambda: None,
            "step": lambda: sched.StepLR(opt, step_size=s.step_size, gamma=s.gamma),
            "cosine": lambda: sched.CosineAnnealingLR(opt, T_max=cfg.train.epochs, eta_min=s.min_lr),
            # Smith & Topin (2017), "Super-convergence": one cycle up to max_lr and down over the whole run
            "onecycle": lambda: sched.OneCycleLR(
                opt, max_lr=cfg.optim.lr * s.max_lr_factor, epochs=cfg.train.epochs, steps_per_epoch=steps_per_epoch
            ),
            "plateau": lambda: sched.ReduceLROnPlateau(opt, factor=s.gamma, patience=s.patience),
        }[s.name]()

    def after_batch(self) -> None:
        if self.name == "onecycle":
            self.sched.step()

    def after_epoch(self, val_loss: float, train_loss: float) -> None:
        if self.name == "plateau":
            self.sched.step(val_loss if math.isfinite(val_loss) else train_loss)  # no val set: watch train loss
        elif self.name not in ("none", "onecycle"):
            self.sched.step()


@torch.no_grad()
def evaluate(
    model: nn.Module, x: Tensor, y: Tensor, cfg: RunConfig, topk: Sequence[int] = (1,), num_classes: int = 0
) -> dict[str, Any]:
    """Loss and top-k accuracy of ``model`` on uint8 images ``x`` (N, 3, H, W), labels ``y`` (N,).

    Args:
        model: maps float (B, 3, H, W) to logits (B, C).
        x, y: images and int64 labels, on the model's device.
        cfg: supplies normalisation, precision, memory format and eval batch size.
        topk: which top-k accuracies to compute.
        num_classes: when > 0, also return the confusion matrix (C, C), rows = true class.

    Returns:
        ``{"loss": mean cross-entropy, "acc": top-1 in [0, 1], "top3": ..., "confusion": ...}``
        (one ``topK`` key per k > 1); empty ``x`` gives NaNs.
    """
    device = next(model.parameters()).device
    autocast, _ = autocast_context(cfg, device)
    fmt = memory_format(cfg, device)
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = {k: torch.zeros((), dtype=torch.long, device=device) for k in topk}
    preds = []
    for i in range(0, len(x), cfg.train.eval_batch_size):
        xb = normalize(x[i : i + cfg.train.eval_batch_size], cfg.augment.mean, cfg.augment.std)
        yb = y[i : i + cfg.train.eval_batch_size]
        with autocast:
            logits = model(xb.contiguous(memory_format=fmt)).float()
        loss_sum += F.cross_entropy(logits, yb, reduction="sum")
        for k in topk:
            correct[k] += topk_correct(logits, yb, k)
        if num_classes:
            preds.append(logits.argmax(dim=1))
    n = len(x) if len(x) else float("nan")
    out: dict[str, Any] = {"loss": loss_sum.item() / n}
    for k in topk:
        out["acc" if k == 1 else f"top{k}"] = correct[k].item() / n
    if num_classes:
        out["confusion"] = confusion_matrix(torch.cat(preds) if preds else y[:0], y, num_classes).cpu()
    return out


def fit(cfg: RunConfig, splits: Splits | None = None, callbacks: Sequence[Callback] = ()) -> FitResult:
    """Train one model as ``cfg`` says and evaluate it on the test set.

    Args:
        cfg: the run config; model preset values are filled in.
        splits: data already loaded (uint8 tensors, any device); loaded from
            ``cfg.data`` when ``None``.
        callbacks: progress, tracking or pruning hooks.

    Returns:
        A :class:`FitResult` with per-epoch history and test metrics of the best-validation weights.

    Raises:
        DivergedError: the mean training loss of an epoch is NaN or infinite.
        core.config.ConfigError: an invalid model setting.
        core.data.DataError: the data cannot be loaded.
    """
    t0 = time.perf_counter()
    cfg = resolve_config(cfg)
    device = select_device(cfg.train.device)
    seed_everything(cfg.train.seed)
    data = (splits or load_splits(cfg.data)).to(device)
    # Common random numbers (core.rng): the weights, the data order, each augmentation operation and
    # each dropout layer draw from their own stream of train.seed, so arms that share the seed share
    # every draw their configs allow.
    model = create_model(cfg.model, seed=cfg.train.seed).to(device, memory_format=memory_format(cfg, device))
    opt = _optimizer(cfg, model)
    autocast, use_scaler = autocast_context(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    augment = BatchAugment(cfg.augment)
    fmt = memory_format(cfg, device)
    order_gen = rng.generator(cfg.train.seed, "order", device)
    augment_gens = rng.augment_generators(cfg.train.seed, device)

    n, bs = len(data.train_x), cfg.train.batch_size
    steps = n // bs if n >= bs else 1  # drop the last partial batch: steady shapes, as the seeds' loaders
    if cfg.train.max_steps:
        steps = min(steps, cfg.train.max_steps)
    sched = _Schedule(cfg, opt, steps)
    for cb in callbacks:
        cb.on_fit_start(cfg, steps)

    history: list[dict[str, float]] = []
    best_acc, best_epoch, best_state = -math.inf, 0, None
    best_val_loss, stale_epochs = math.inf, 0  # early stopping on validation loss (seed 003)
    for epoch in range(1, cfg.train.epochs + 1):
        # ---- one training epoch ----
        model.train()
        te = time.perf_counter()
        order = torch.randperm(n, device=device, generator=order_gen)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        for step in range(steps):
            idx = order[step * bs : (step + 1) * bs]
            xb = augment(data.train_x[idx], augment_gens).contiguous(memory_format=fmt)  # (B, 3, 32, 32) float
            yb = data.train_y[idx]
            with autocast:
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.after_batch()
            loss_sum += loss.detach() * len(idx)  # stays on the device: no sync per step
            correct += topk_correct(logits.detach(), yb)
            for cb in callbacks:
                cb.on_batch_end(epoch, step, len(idx), loss)
        seen = min(steps * bs, n)
        train_loss = loss_sum.item() / seen
        if not math.isfinite(train_loss):
            raise DivergedError(epoch, train_loss)
        lr = opt.param_groups[0]["lr"]  # the lr this epoch ended with
        seconds = time.perf_counter() - te

        # ---- validation, bookkeeping ----
        val = evaluate(model, data.val_x, data.val_y, cfg) if len(data.val_x) else {"loss": math.nan, "acc": math.nan}
        metrics = {
            "train_loss": train_loss,
            "train_acc": correct.item() / seen,
            "val_loss": val["loss"],
            "val_acc": val["acc"],
            "lr": lr,
            "epoch_seconds": seconds,
            "images_per_s": seen / seconds,
        }
        history.append(metrics)
        score = val["acc"] if len(data.val_x) else epoch  # no validation set: keep the last epoch
        if score > best_acc:
            best_acc, best_epoch = score, epoch
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
        sched.after_epoch(val["loss"], train_loss)
        for cb in callbacks:
            cb.on_epoch_end(epoch, metrics)
        if cfg.train.early_stopping and len(data.val_x):
            best_val_loss, stale_epochs = (
                (val["loss"], 0) if val["loss"] < best_val_loss else (best_val_loss, stale_epochs + 1)
            )
            if stale_epochs >= cfg.train.early_stopping:
                break

    assert best_state is not None, "train.epochs must be at least 1"
    model.load_state_dict(best_state)
    test = evaluate(model, data.test_x, data.test_y, cfg, topk=(1, 3), num_classes=cfg.model.num_classes)
    per_class = per_class_accuracy(test["confusion"]).tolist()
    return FitResult(
        config=cfg,
        history=history,
        test={
            "test_loss": test["loss"],
            "test_acc": test["acc"],
            "test_top3": test["top3"],
            **{f"test_acc_class_{name}": acc for name, acc in zip(data.classes, per_class, strict=False)},
        },
        best_epoch=best_epoch,
        state_dict=best_state,
        device=str(device),
        seconds=time.perf_counter() - t0,
    )
