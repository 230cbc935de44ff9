"""Train ONE run, ``fit(cfg) -> FitResult``, or several seeds of it side by side, ``fit_many``.

The whole data set sits on the training device as uint8 tensors (see
``core.data``); each step indexes a batch, augments it on the device
(``core.augment.BatchAugment``) and takes an optimiser step. There are no
DataLoader workers and no per-image PIL work in the loop (the cifar10-airbench
habit). Per epoch the loop reports train/validation loss and top-1 accuracy,
seconds and images per second; at the end it evaluates the best-validation
weights on the official test set (top-1 and top-3).

:func:`fit_many` trains K seeds of one config in the same loop as one fused model
(``core.fused``: stacked parameters under ``torch.vmap``); :func:`fit` is its K = 1 case.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Sequence
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
from core.fused import Single, Stacked, fuse_group_size, per_replica_topk
from core.metrics import confusion_matrix, per_class_accuracy
from core.models import create_model, resolve_model_config
from core.precision import autocast_context
from core.tricks import BatchMix, Ema, clip_grad_norms, decayed_names, param_groups

log = logging.getLogger(__name__)

__all__ = [
    "Callback",
    "DivergedError",
    "FitResult",
    "evaluate",
    "fit",
    "fit_many",
    "resolve_config",
    "select_device",
]


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
        best_epoch: 1-based epoch whose weights were kept: the first epoch of the highest val top-1
            (``train.select: val_acc``) or of the lowest validation loss (``val_loss``, seed 003's
            ``src/train.py``); the last epoch when there is no validation set.
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


def memory_format(cfg: RunConfig, device: torch.device) -> torch.memory_format:
    """``torch.channels_last`` or ``torch.contiguous_format`` as ``train.channels_last`` says."""
    # auto: on for CUDA and the CPU, off for MPS
    on = cfg.train.channels_last == "on" or (cfg.train.channels_last == "auto" and device.type in ("cuda", "cpu"))
    return torch.channels_last if on else torch.contiguous_format


def _optimizer(cfg: RunConfig, params: list[Tensor]) -> torch.optim.Optimizer:
    """The optimiser over ``params`` (the trainable ones: frozen layers, ``model.trainable``, stay out).

    Adam, AdamW and SGD update each element from its own gradient and state only, so over the
    stacked (K, ...) leaves of fused seeds (``core.fused``) they step every seed as its own
    optimiser would, weight decay included.
    """
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)


class _Schedule:
    """The learning-rate schedule: stepped after each batch (OneCycle, the warmup) or each epoch (the others).

    With ``schedule.warmup_epochs`` W > 0 the first W epochs' steps (W x steps per epoch of them) raise the
    lr linearly, ``LinearLR(start_factor=1/(n+1), total_iters=n)`` over those n steps: step t (from 0) trains
    at ``lr * (t + 1) / (n + 1)``, and the first step after the warmup at ``lr``. Then the schedule starts
    from its beginning, as ``SequentialLR`` with the milestone n does (Goyal et al. 2017, "Accurate, Large
    Minibatch SGD": 5 epochs; He et al. 2019 likewise); cosine anneals over the epochs left.
    """

    def __init__(self, cfg: RunConfig, opt: torch.optim.Optimizer, steps_per_epoch: int) -> None:
        s, sched = cfg.schedule, torch.optim.lr_scheduler
        self.name = s.name
        self.warmup_epochs, self.warmup_steps = s.warmup_epochs, s.warmup_epochs * steps_per_epoch
        self.steps = self.epochs = 0  # taken so far
        main_epochs = max(1, cfg.train.epochs - s.warmup_epochs)
        self.sched = {
            "none": lambda: None,
            "step": lambda: sched.StepLR(opt, step_size=s.step_size, gamma=s.gamma),
            "cosine": lambda: sched.CosineAnnealingLR(opt, T_max=main_epochs, eta_min=s.min_lr),
            # Smith & Topin (2017), "Super-convergence": one cycle up to max_lr and down over the whole run
            "onecycle": lambda: sched.OneCycleLR(
                opt, max_lr=cfg.optim.lr * s.max_lr_factor, epochs=cfg.train.epochs, steps_per_epoch=steps_per_epoch
            ),
            "plateau": lambda: sched.ReduceLROnPlateau(opt, factor=s.gamma, patience=s.patience),
        }[s.name]()
        self.warmup = None
        if self.warmup_steps:  # onecycle is refused by ScheduleConfig
            n = self.warmup_steps
            self.warmup = sched.LinearLR(opt, start_factor=1.0 / (n + 1), total_iters=n)
            if self.name in ("step", "cosine"):
                self.warmup = sched.SequentialLR(opt, [self.warmup, self.sched], milestones=[n])

    def after_batch(self) -> None:
        if self.steps < self.warmup_steps:
            self.warmup.step()  # the n-th step of a SequentialLR starts the schedule at its epoch 0
        elif self.name == "onecycle":
            self.sched.step()
        self.steps += 1

    def after_epoch(self, val_loss: float, train_loss: float) -> None:
        self.epochs += 1
        if self.epochs <= self.warmup_epochs:
            return
        if self.name == "plateau":
            self.sched.step(val_loss if math.isfinite(val_loss) else train_loss)  # no val set: watch train loss
        elif self.name in ("step", "cosine"):
            (self.warmup or self.sched).step()


@torch.no_grad()
def evaluate(
    model: nn.Module, x: Tensor, y: Tensor, cfg: RunConfig, topk: Sequence[int] = (1,), num_classes: int = 0
) -> dict[str, Any]:
    """Loss and top-k accuracy of ``model`` on uint8 images ``x`` (N, 3, H, W), labels ``y`` (N,).

    Args:
        model: maps float (B, 3, H, W) to logits (B, C).
        x: uint8 images, on the model's device.
        y: int64 labels, on the model's device.
        cfg: supplies normalisation, precision, memory format and eval batch size.
        topk: which top-k accuracies to compute.
        num_classes: when > 0, also return the confusion matrix (C, C), rows = true class.

    Returns:
        ``{"loss": mean cross-entropy, "acc": top-1 in [0, 1], "top3": ..., "confusion": ...}``
        (one ``topK`` key per k > 1); empty ``x`` gives NaNs.
    """
    device = next(model.parameters()).device
    return _evaluate_replicas(Single(model), device, x, y, cfg, topk, num_classes)[0]


@torch.no_grad()
def _evaluate_replicas(
    reps: Single | Stacked,
    device: torch.device,
    x: Tensor,
    y: Tensor,
    cfg: RunConfig,
    topk: Sequence[int] = (1,),
    num_classes: int = 0,
) -> list[dict[str, Any]]:
    """:func:`evaluate` for each of the K replicas of a (fused) model on the same images: K dicts."""
    autocast, _ = autocast_context(cfg, device)
    fmt = memory_format(cfg, device)
    reps.train(False)
    k = reps.k
    loss_sum = torch.zeros(k, device=device)
    correct = {t: torch.zeros(k, dtype=torch.long, device=device) for t in topk}
    preds = []
    for i in range(0, len(x), cfg.train.eval_batch_size):
        xb = normalize(x[i : i + cfg.train.eval_batch_size], cfg.augment.mean, cfg.augment.std)
        yb = y[i : i + cfg.train.eval_batch_size]
        with autocast:
            logits = reps.shared(xb.contiguous(memory_format=fmt)).float()  # (K, B, C)
        loss_sum += F.cross_entropy(logits.flatten(0, 1), yb.repeat(k), reduction="none").view(k, -1).sum(1)
        for t in topk:
            correct[t] += per_replica_topk(logits, yb, t)
        if num_classes:
            preds.append(logits.argmax(dim=-1))
    n = len(x) if len(x) else float("nan")
    losses = (loss_sum / n).tolist() if len(x) else [math.nan] * k
    counts = {t: (c / n).tolist() if len(x) else [math.nan] * k for t, c in correct.items()}
    outs: list[dict[str, Any]] = []
    for j in range(k):
        out: dict[str, Any] = {"loss": losses[j]}
        for t in topk:
            out["acc" if t == 1 else f"top{t}"] = counts[t][j]
        if num_classes:
            pj = torch.cat([p[j] for p in preds]) if preds else y[:0]
            out["confusion"] = confusion_matrix(pj, y, num_classes).cpu()
        outs.append(out)
    return outs


def fit(cfg: RunConfig, splits: Splits | None = None, callbacks: Sequence[Callback] = ()) -> FitResult:
    """Train one model as ``cfg`` says and evaluate it on the test set: :func:`fit_many` with one seed.

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
        Exception: whatever a callback raised (e.g. ``optuna.TrialPruned``).
    """
    (result,) = fit_many(cfg, [cfg.train.seed], splits, [callbacks])
    if isinstance(result, BaseException):
        raise result
    return result


def fit_many(
    cfg: RunConfig,
    seeds: Sequence[int],
    splits: Splits | None = None,
    callbacks: Sequence[Sequence[Callback]] | None = None,
    group_size: int | None = None,
) -> list[FitResult | Exception]:
    """Train ``cfg`` once per seed in ``seeds``, K seeds at a time as one fused model (``core.fused``).

    K comes from ``train.fuse_seeds`` (:func:`core.fused.fuse_group_size`): ``off`` or an
    unfusable config trains one seed at a time, an int K fuses K seeds, ``auto`` fuses on CUDA.
    Each seed keeps everything a run of its own has: its initial weights, data order,
    augmentation draws and dropout masks (its streams of ``core.rng``), its validation, its
    best-epoch weights, its early stopping, its callbacks and its result. A seed whose loss
    diverges, or whose callback raises, ends alone (its entry is the exception) while the others
    go on; an interrupt (``KeyboardInterrupt`` and other non-``Exception`` errors) stops them all.

    Args:
        cfg: the run config; its ``train.seed`` is replaced by each seed in turn.
        seeds: the seeds to train, e.g. ``[0, 1, 2]``.
        splits: data already loaded (uint8 tensors, any device); loaded from ``cfg.data`` when ``None``.
        callbacks: one sequence of callbacks per seed (``None``: none); each seed's callbacks see
            that seed's config, losses and metrics only. ``epoch_seconds`` and ``images_per_s``
            are the fused group's: every seed of a group reports the group's epoch time.
        group_size: seeds per fused group, decided by the caller (the runner, which has already
            called :func:`core.fused.fuse_group_size`); ``None``: from ``train.fuse_seeds``.

    Returns:
        One entry per seed, in order: a :class:`FitResult` (``config.train.seed`` = that seed;
        ``seconds`` = the wall time of its group) or the exception that ended it
        (:class:`DivergedError`, or what its callback raised).

    Raises:
        ValueError: ``callbacks`` does not have one entry per seed.
        core.config.ConfigError: an invalid model setting.
        core.data.DataError: the data cannot be loaded.
    """
    seeds = list(seeds)
    callbacks = [()] * len(seeds) if callbacks is None else [list(c) for c in callbacks]
    if len(callbacks) != len(seeds):
        raise ValueError(f"fit_many: {len(seeds)} seeds but {len(callbacks)} callback lists")
    cfg = resolve_config(cfg)
    device = select_device(cfg.train.device)
    k, why = fuse_group_size(cfg, len(seeds), device) if group_size is None else (group_size, "given by the caller")
    k = max(1, min(k, len(seeds)))
    if len(seeds) > 1:
        log.info("fit_many: %d seeds, %d per group: %s", len(seeds), k, why)
    data = (splits or load_splits(cfg.data)).to(device)
    results: list[FitResult | Exception] = []
    for i in range(0, len(seeds), k):
        results += _fit_group(cfg, seeds[i : i + k], data, callbacks[i : i + k], device)
    return results


@dataclass
class _Seed:
    """The bookkeeping of one seed in a (fused) group."""

    cfg: RunConfig
    callbacks: list[Callback]
    history: list[dict[str, float]] = field(default_factory=list)
    best_score: float = -math.inf  # of train.select: val_acc, or minus val_loss
    best_epoch: int = 0
    best_state: dict[str, Tensor] | None = None
    best_watched: float = -math.inf  # of train.early_stopping_metric: val_acc, or minus val_loss
    stale_epochs: int = 0
    outcome: Exception | None = None  # why it ended early: DivergedError or a callback's exception
    done: bool = False  # ended (early stopping, divergence, a callback's exception)

    def call(self, hook: str, *args: Any) -> None:
        """Run ``hook`` of every callback; an ``Exception`` ends this seed alone."""
        if self.done:
            return
        try:
            for cb in self.callbacks:
                getattr(cb, hook)(*args)
        except Exception as exc:
            self.outcome, self.done = exc, True


def _fit_group(
    cfg: RunConfig, seeds: list[int], data: Splits, callbacks: list[list[Callback]], device: torch.device
) -> list[FitResult | Exception]:
    """The one training loop: ``len(seeds)`` runs of ``cfg`` as one fused model (K = 1: a plain one)."""
    t0 = time.perf_counter()
    seed_everything(seeds[0])
    fmt = memory_format(cfg, device)
    runs = [
        _Seed(cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": s})}), cbs)
        for s, cbs in zip(seeds, callbacks, strict=True)
    ]
    # Common random numbers (core.rng): the weights, the data order, each augmentation operation and
    # each dropout layer draw from their own stream of the seed, so arms that share a seed share every
    # draw their configs allow, and a seed draws the same fused as alone.
    models = [create_model(cfg.model, seed=s) for s in seeds]
    template = copy.deepcopy(models[0])  # for the test evaluation of each seed's kept weights
    reps: Single | Stacked
    compiled = cfg.train.compile == "on"
    if len(seeds) == 1:
        reps = Single(models[0].to(device, memory_format=fmt), compiled)
    else:
        reps = Stacked(models, device, compiled)
    del models
    # optim.no_bias_decay: weight decay on the convs' and linears' weights only (core.tricks)
    params = param_groups(reps.named_trainable(), decayed_names(template)) if cfg.optim.no_bias_decay else None
    opt = _optimizer(cfg, params or reps.trainable())
    autocast, use_scaler = autocast_context(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    augment = BatchAugment(cfg.augment)
    order_gens = [rng.generator(s, "order", device) for s in seeds]
    augment_gens = [rng.augment_generators(s, device) for s in seeds]
    # The tricks of core.tricks, each per seed: mixing from the seed's own streams, its own gradient
    # norm, its own average of the weights (evaluated, kept and checkpointed in place of the raw ones).
    mix = BatchMix(cfg.augment, cfg.model.num_classes)
    mix_gens = [BatchMix.generators(s) for s in seeds] if mix.on else []
    ema = Ema(reps, cfg.train.ema) if cfg.train.ema else None
    smoothing = cfg.train.label_smoothing

    n, bs = len(data.train_x), cfg.train.batch_size
    steps = n // bs if n >= bs else 1  # drop the last partial batch: steady shapes, as the seeds' loaders
    if cfg.train.max_steps:
        steps = min(steps, cfg.train.max_steps)
    sched = _Schedule(cfg, opt, steps)
    for run in runs:
        run.call("on_fit_start", run.cfg, steps)
    live = _drop_done(reps, opt, runs, list(range(len(runs))), ema)  # replica j trains seed live[j]

    for epoch in range(1, cfg.train.epochs + 1):
        if not live:
            break
        # ---- one training epoch, all live seeds at once ----
        reps.train()
        te = time.perf_counter()
        k = len(live)
        order = torch.stack([torch.randperm(n, device=device, generator=order_gens[i]) for i in live])  # (K, n)
        loss_sum = torch.zeros(k, device=device)
        correct = torch.zeros(k, dtype=torch.long, device=device)
        for step in range(steps):
            idx = order[:, step * bs : (step + 1) * bs]  # (K, B)
            b = idx.shape[1]
            draws = [augment.draw(b, device, augment_gens[i]) for i in live]  # each seed its own streams
            u = draws[0] if k == 1 else {op: torch.cat([d[op] for d in draws]) for op in draws[0]}
            xb = augment.apply(data.train_x[idx.reshape(-1)], u).contiguous(memory_format=fmt)
            xb = xb.view(k, b, *xb.shape[1:])  # (K, B, 3, H, W) float
            yb = data.train_y[idx]  # (K, B)
            targets = yb.reshape(-1)  # (K*B,) labels, or (K*B, C) soft targets when mixed
            if mix.on:
                mixes = [mix.draw(b, *xb.shape[-2:], mix_gens[i]) for i in live]
                xb, soft = mix.apply(xb, yb, mixes)
                xb = xb.flatten(0, 1).contiguous(memory_format=fmt).view(xb.shape)
                targets = soft.flatten(0, 1)
            with autocast:
                logits = reps(xb)  # (K, B, C)
                # (autocast computes cross_entropy in float32)
                losses = F.cross_entropy(logits.flatten(0, 1), targets, reduction="none", label_smoothing=smoothing)
                losses = losses.view(k, b).mean(1)  # (K,) each seed's mean loss
            opt.zero_grad(set_to_none=True)
            # The seeds' parameters are disjoint, so the gradient of the sum is each seed's own gradient.
            scaler.scale(losses.sum()).backward()
            if cfg.train.grad_clip:
                scaler.unscale_(opt)  # fp16: clip the true gradient (a no-op without a scaler)
                clip_grad_norms(reps.trainable(), cfg.train.grad_clip, stacked=isinstance(reps, Stacked))
            scaler.step(opt)
            scaler.update()
            if ema is not None:
                ema.update(reps)
            sched.after_batch()
            loss_sum += losses.detach() * b  # stays on the device: no sync per step
            correct += per_replica_topk(logits.detach(), yb)
            for j, i in enumerate(live):
                runs[i].call("on_batch_end", epoch, step, b, losses[j])
        seen = min(steps * bs, n)
        train_losses = (loss_sum / seen).tolist()  # the one sync of the epoch
        train_accs = (correct.double() / seen).tolist()
        lr = opt.param_groups[0]["lr"]  # the lr this epoch ended with
        seconds = time.perf_counter() - te
        # by seed from here on: dropping replicas renumbers them
        train_losses = {i: train_losses[j] for j, i in enumerate(live)}
        train_accs = {i: train_accs[j] for j, i in enumerate(live)}
        for i in live:
            if not math.isfinite(train_losses[i]) and not runs[i].done:
                runs[i].outcome, runs[i].done = DivergedError(epoch, train_losses[i]), True
        live = _drop_done(reps, opt, runs, live, ema)
        if not live:
            break

        # ---- validation, bookkeeping, per seed ----
        has_val = len(data.val_x) > 0
        nan = {"loss": math.nan, "acc": math.nan}
        kept = reps if ema is None else ema.reps  # what is evaluated, selected and checkpointed
        vals = _evaluate_replicas(kept, device, data.val_x, data.val_y, cfg) if has_val else [nan] * len(live)
        for j, i in enumerate(live):
            run, val = runs[i], vals[j]
            metrics = {
                "train_loss": train_losses[i],
                "train_acc": train_accs[i],
                "val_loss": val["loss"],
                "val_acc": val["acc"],
                "lr": lr,
                "epoch_seconds": seconds,
                "images_per_s": seen / seconds,
            }
            run.history.append(metrics)
            # train.select: the highest val_acc or the lowest val_loss (the first such epoch);
            # no validation set: the last epoch
            score = _higher_is_better(val, cfg.train.select) if has_val else epoch
            if score > run.best_score:
                run.best_score, run.best_epoch, run.best_state = score, epoch, kept.state_dict(j)
        # One lr schedule for the group (the config is shared); plateau, which watches a run's own
        # validation loss, trains alone (core.fused.unfusable_reason).
        sched.after_epoch(vals[0]["loss"], train_losses[live[0]])
        for j, i in enumerate(live):
            run, val = runs[i], vals[j]
            run.call("on_epoch_end", epoch, run.history[-1])
            if cfg.train.early_stopping and has_val and not run.done:
                watched = _higher_is_better(val, cfg.train.early_stopping_metric)
                if watched > run.best_watched:
                    run.best_watched, run.stale_epochs = watched, 0
                else:
                    run.stale_epochs += 1
                run.done = run.stale_epochs >= cfg.train.early_stopping
        live = _drop_done(reps, opt, runs, live, ema)

    # ---- each seed's kept weights on the test set ----
    del reps, opt, ema
    results: list[FitResult | Exception] = []
    for run in runs:
        if run.outcome is not None:
            results.append(run.outcome)
            continue
        assert run.best_state is not None, "train.epochs must be at least 1"
        model = copy.deepcopy(template)
        model.load_state_dict(run.best_state)
        model.to(device, memory_format=fmt)
        test = evaluate(model, data.test_x, data.test_y, cfg, topk=(1, 3), num_classes=cfg.model.num_classes)
        per_class = per_class_accuracy(test["confusion"]).tolist()
        results.append(
            FitResult(
                config=run.cfg,
                history=run.history,
                test={
                    "test_loss": test["loss"],
                    "test_acc": test["acc"],
                    "test_top3": test["top3"],
                    **{f"test_acc_class_{name}": acc for name, acc in zip(data.classes, per_class, strict=False)},
                },
                best_epoch=run.best_epoch,
                state_dict=run.best_state,
                device=str(device),
                seconds=time.perf_counter() - t0,
            )
        )
    return results


def _higher_is_better(val: dict[str, Any], metric: str) -> float:
    """``val_acc`` as it is, ``val_loss`` negated: a validation metric where larger is better.

    A NaN loss (a diverged evaluation) becomes -inf, never better than a finite one.
    """
    if metric == "val_loss":
        return -val["loss"] if math.isfinite(val["loss"]) else -math.inf
    return val["acc"]


def _drop_done(
    reps: Single | Stacked, opt: torch.optim.Optimizer, runs: list[_Seed], live: list[int], ema: Ema | None = None
) -> list[int]:
    """Remove the replicas of ended seeds from the fused model (and its average); return the seeds still training."""
    keep = [j for j, i in enumerate(live) if not runs[i].done]
    if len(keep) == len(live):
        return live
    if keep:
        reps.keep(keep, opt)
        if ema is not None:
            ema.keep(keep)
    return [live[j] for j in keep]
