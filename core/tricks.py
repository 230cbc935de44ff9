"""The training tricks that ablation papers vary, per seed of a (fused) group.

Each is off by default and set by one config key (``docs/tricks.md``):

=========================== ================================================ ============================
key                         what                                             source
=========================== ================================================ ============================
``train.label_smoothing``   cross-entropy against smoothed targets           Szegedy et al. 2016
``augment.mixup``           convex combinations of image pairs and targets   Zhang et al. 2018
``augment.cutmix``          a box of the partner image pasted in             Yun et al. 2019
``augment.mix_prob``        the probability that a batch is mixed            timm; Yun et al. 2019
``schedule.warmup_epochs``  linear learning-rate warmup, per step            Goyal et al. 2017
``train.ema``               moving average of the weights, evaluated         Polyak & Juditsky 1992
``optim.no_bias_decay``     no weight decay on biases and norms              He et al. 2019
``train.grad_clip``         each run's gradient norm bounded                 Pascanu et al. 2013
=========================== ================================================ ============================

Label smoothing is ``F.cross_entropy``'s own ``label_smoothing`` and the warmup is ``LinearLR`` before
the schedule in a ``SequentialLR`` (``core.train``). The others live here, written for the K seeds of
a fused group (``core.fused``): every seed mixes its own batch with its own draws, clips its own
gradient norm and averages its own weights, so K seeds trained fused give what each gives alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from core import rng
from core.config import AugmentConfig
from core.fused import Single, Stacked

__all__ = [
    "BatchMix",
    "Ema",
    "Mix",
    "clip_grad_norms",
    "cutmix",
    "cutmix_box",
    "decayed_names",
    "mixup",
    "param_groups",
]


def _soft(y: Tensor, num_classes: int) -> Tensor:
    """Float32 targets (..., C) from int64 labels (...) or float targets (..., C)."""
    if y.is_floating_point():
        return y.float()
    return F.one_hot(y, num_classes).float()


def mixup(x: Tensor, y: Tensor, lam: float, perm: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Mixup of one batch (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization").

    Image i becomes ``lam * x[i] + (1 - lam) * x[perm[i]]`` and its target the same mixture of the
    two one-hot labels: torchvision's ``transforms.v2.MixUp`` for a given ``lam``, whose partner is
    always the previous image (``perm = arange(B).roll(1)``). Zhang et al. draw ``lam ~ Beta(a, a)``
    with ``a = 1`` on CIFAR-10 (0.2 on ImageNet, as He et al. 2019).

    Args:
        x: float images (B, 3, H, W).
        y: int64 labels (B,) or soft targets (B, num_classes).
        lam: the weight of each image itself, in [0, 1].
        perm: int64 (B,) on ``x``'s device: each image's partner.
        num_classes: C.

    Returns:
        ``(images (B, 3, H, W), soft targets (B, num_classes) float32)``, new tensors.
    """
    t = _soft(y, num_classes)
    return x * lam + x[perm] * (1.0 - lam), t * lam + t[perm] * (1.0 - lam)


def cutmix_box(lam: float, h: int, w: int, cy: int, cx: int) -> tuple[tuple[int, int, int, int], float]:
    """CutMix's box for weight ``lam`` centred at row ``cy``, column ``cx``, as torchvision computes it.

    Half-sides ``int(0.5 * sqrt(1 - lam) * side)``, clipped to the image; the weight of the image
    itself is then the fraction of pixels outside the box.

    Args:
        lam: the drawn weight, in [0, 1].
        h: image height in pixels.
        w: image width in pixels.
        cy: the box centre's row, 0 <= cy < h.
        cx: the box centre's column, 0 <= cx < w.

    Returns:
        ``((y1, y2, x1, x2), lam_adjusted)``: rows ``y1:y2`` and columns ``x1:x2`` come from the partner;
        ``lam_adjusted = 1 - (y2 - y1) (x2 - x1) / (h w)``.
    """
    r = 0.5 * math.sqrt(1.0 - lam)
    rh, rw = int(r * h), int(r * w)
    y1, y2 = max(cy - rh, 0), min(cy + rh, h)
    x1, x2 = max(cx - rw, 0), min(cx + rw, w)
    return (y1, y2, x1, x2), float(1.0 - (x2 - x1) * (y2 - y1) / (w * h))


def cutmix(
    x: Tensor, y: Tensor, lam: float, center: tuple[int, int], perm: Tensor, num_classes: int
) -> tuple[Tensor, Tensor]:
    """CutMix of one batch (Yun et al. 2019, "CutMix: Regularization Strategy to Train Strong Classifiers
    with Localizable Features"; alpha 1, applied with probability 0.5 in their CIFAR runs).

    One box (:func:`cutmix_box`) for the whole batch: inside it image i shows ``x[perm[i]]``, and its
    target is ``lam_adjusted * onehot(y[i]) + (1 - lam_adjusted) * onehot(y[perm[i]])``. torchvision's
    ``transforms.v2.CutMix`` for a given ``lam`` and centre, whose partner is the previous image.

    Args:
        x: float images (B, 3, H, W).
        y: int64 labels (B,) or soft targets (B, num_classes).
        lam: the drawn weight, in [0, 1].
        center: the box centre ``(row, column)``.
        perm: int64 (B,) on ``x``'s device: each image's partner.
        num_classes: C.

    Returns:
        ``(images (B, 3, H, W), soft targets (B, num_classes) float32)``, new tensors.
    """
    (y1, y2, x1, x2), lam_adj = cutmix_box(lam, x.shape[-2], x.shape[-1], *center)
    out = x.clone()
    out[..., y1:y2, x1:x2] = x[perm][..., y1:y2, x1:x2]
    t = _soft(y, num_classes)
    return out, t * lam_adj + t[perm] * (1.0 - lam_adj)


@dataclass(frozen=True)
class Mix:
    """One seed's mixing of one batch, drawn by :meth:`BatchMix.draw`.

    Attributes:
        kind: ``"none"``, ``"mixup"`` or ``"cutmix"``.
        lam: the weight of each image itself (for cutmix the fraction of pixels outside the box).
        box: cutmix's ``(y1, y2, x1, x2)``; ``None`` otherwise.
        perm: int64 (B,) on the CPU: each image's partner.
    """

    kind: str
    lam: float
    box: tuple[int, int, int, int] | None
    perm: Tensor


class BatchMix:
    """Mixup and CutMix of each seed's training batch, on the training device (``augment.mixup``,
    ``augment.cutmix``, ``augment.mix_prob``).

    A batch is mixed with probability ``mix_prob``; with both on, a mixed batch is CutMix with
    probability 0.5 (timm's ``switch_prob``, torchvision's ``RandomChoice([MixUp, CutMix])``). The
    draws come from the seed's own NumPy streams ``mix:apply``, ``mix:mixup``, ``mix:cutmix`` and
    ``mix:pairs`` (``core.rng``): the other augmentations' draws do not move when mixing is turned on,
    and two arms that share a seed share the partners whatever their alphas. Every stream in use is
    drawn from at every step, mixed or not, so a step's draws do not depend on the steps before.

    Args:
        cfg: the augmentation settings.
        num_classes: C.
    """

    def __init__(self, cfg: AugmentConfig, num_classes: int) -> None:
        self.mixup, self.cutmix, self.prob = cfg.mixup, cfg.cutmix, cfg.mix_prob
        self.num_classes = num_classes
        self.on = (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.mix_prob > 0

    @staticmethod
    def generators(seed: int) -> dict[str, np.random.Generator]:
        """The streams of run seed ``seed``: ``{"apply", "mixup", "cutmix", "pairs"}``."""
        return {name: rng.numpy_generator(seed, f"mix:{name}") for name in ("apply", "mixup", "cutmix", "pairs")}

    def draw(self, b: int, h: int, w: int, gens: dict[str, np.random.Generator]) -> Mix:
        """One seed's mixing of a batch of ``b`` images of ``h`` x ``w`` pixels, from its streams ``gens``."""
        u_apply, u_switch = gens["apply"].random(2)
        lam_mix = float(gens["mixup"].beta(self.mixup, self.mixup)) if self.mixup > 0 else 1.0
        if self.cutmix > 0:
            lam_cut = float(gens["cutmix"].beta(self.cutmix, self.cutmix))
            cy, cx = int(gens["cutmix"].integers(h)), int(gens["cutmix"].integers(w))
        perm = torch.from_numpy(gens["pairs"].permutation(b))
        if u_apply >= self.prob:
            return Mix("none", 1.0, None, perm)
        if self.cutmix > 0 and (self.mixup == 0 or u_switch < 0.5):
            box, lam = cutmix_box(lam_cut, h, w, cy, cx)
            return Mix("cutmix", lam, box, perm)
        return Mix("mixup", lam_mix, None, perm)

    def apply(self, x: Tensor, y: Tensor, mixes: Sequence[Mix]) -> tuple[Tensor, Tensor]:
        """Mix the batch of each of K seeds with its own draw.

        Image i of seed k becomes ``w * x[k, i] + (1 - w) * x[k, perm_k[i]]`` with ``w`` the seed's
        ``lam`` (mixup), 0 inside its box and 1 outside (CutMix) or 1 (not mixed); its target is
        ``lam * onehot(y[k, i]) + (1 - lam) * onehot(y[k, perm_k[i]])``. Per seed the same numbers as
        :func:`mixup` and :func:`cutmix`.

        Args:
            x: float images (K, B, 3, H, W).
            y: int64 labels (K, B).
            mixes: K draws of :meth:`draw`.

        Returns:
            ``(images (K, B, 3, H, W), soft targets (K, B, num_classes))``, both of ``x``'s dtype
            (float32 in training: autocast computes the loss in float32).
        """
        k, b, _, h, w = x.shape
        weight = torch.ones(k, h, w, dtype=torch.float64)
        lams = torch.ones(k, dtype=torch.float64)
        for j, m in enumerate(mixes):
            lams[j] = m.lam
            if m.kind == "mixup":
                weight[j] = m.lam
            elif m.kind == "cutmix":
                y1, y2, x1, x2 = m.box
                weight[j, y1:y2, x1:x2] = 0.0
        dev = x.device
        perm = torch.stack([m.perm for m in mixes]).to(dev)  # (K, B)
        rows = torch.arange(k, device=dev)[:, None]
        # the weights and their complements rounded from float64, as torchvision's Python floats are
        w_self = weight.to(dev, x.dtype)[:, None, None]  # (K, 1, 1, H, W)
        w_other = (1.0 - weight).to(dev, x.dtype)[:, None, None]
        mixed = x * w_self + x[rows, perm] * w_other
        t = F.one_hot(y, self.num_classes).to(x.dtype)  # (K, B, C)
        t_self = lams.to(dev, x.dtype)[:, None, None]
        t_other = (1.0 - lams).to(dev, x.dtype)[:, None, None]
        return mixed, t * t_self + t[rows, perm] * t_other


class Ema:
    """An exponential moving average of the weights of each replica (``train.ema``), evaluated, kept and
    checkpointed in place of the raw weights.

    After the first step the average is the weights; after step t > 1 it is ``decay * ema + (1 - decay) *
    weights``, per parameter and per seed (``torch.optim.swa_utils.get_ema_multi_avg_fn``, the maths of
    ``AveragedModel`` with ``multi_avg_fn``); the buffers (BatchNorm's running statistics) are copied from
    the raw weights. Polyak & Juditsky (1992) average iterates; decays of 0.999-0.9999 per step are usual
    (timm's ``ModelEmaV2``: 0.9998 on ImageNet).

    Args:
        reps: the replicas being trained (:class:`core.fused.Single` or :class:`core.fused.Stacked`).
        decay: in [0, 1).

    Attributes:
        reps: the average, a replica object of the same kind: ``reps.state_dict(j)`` is seed j's averaged
            checkpoint.
        updates: how many steps have been averaged.
    """

    def __init__(self, reps: Single | Stacked, decay: float) -> None:
        self.reps = reps.clone()
        self.decay, self.updates = decay, 0
        self._avg = get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(self, reps: Single | Stacked) -> None:
        """Average in the current weights of ``reps`` (after an optimiser step)."""
        (ema_p, ema_b), (p, b) = self.reps.tensors(), reps.tensors()
        if self.updates == 0:
            torch._foreach_copy_(ema_p, [t.detach() for t in p])
        else:
            self._avg(ema_p, [t.detach() for t in p], self.updates)
        if ema_b:
            torch._foreach_copy_(ema_b, b)
        self.updates += 1

    def keep(self, js: Sequence[int]) -> None:
        """Keep the averages of replicas ``js`` only (the seeds still training)."""
        self.reps.keep(js)


@torch.no_grad()
def clip_grad_norms(params: Sequence[Tensor], max_norm: float, stacked: bool) -> Tensor:
    """Clip each replica's gradient to total L2 norm ``max_norm`` (Pascanu et al. 2013, "On the difficulty
    of training recurrent neural networks"); ``torch.nn.utils.clip_grad_norm_`` per seed.

    In a fused group every seed's norm is its own, over its slices of all leaves, never the norm of all
    seeds together: a seed with a large gradient does not shrink the others' steps.

    Args:
        params: the trained parameters, with their ``.grad``; (K, ...) leaves when ``stacked``.
        max_norm: the bound, > 0.
        stacked: the leaves carry the K replicas in dim 0 (``core.fused.Stacked``); else one model.

    Returns:
        float (K,): each replica's norm before clipping (K = 1 for one model), on the parameters' device.
    """
    if not stacked:
        return torch.nn.utils.clip_grad_norm_(params, max_norm).reshape(1)
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.linalg.vector_norm(torch.stack([g.flatten(1).norm(dim=1) for g in grads]), dim=0)  # (K,)
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)  # clip_grad_norm_'s coefficient
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
    return norms


def decayed_names(model: nn.Module) -> set[str]:
    """Names of the parameters weight decay applies to with ``optim.no_bias_decay``: the weights of
    convolutions and linear layers; not biases, nor BatchNorm's (or any other norm's) weight and bias
    (He et al. 2019, "Bag of Tricks for Image Classification with Convolutional Neural Networks", 3.1)."""
    out = set()
    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) and isinstance(m.weight, Tensor):
            out.add(f"{name}.weight" if name else "weight")
    return out


def param_groups(named: Sequence[tuple[str, Tensor]], decayed: set[str]) -> list[dict]:
    """Two optimiser parameter groups: the ``decayed`` names with the optimiser's weight decay, the rest
    with none (``weight_decay`` 0). Both share the learning rate.

    Args:
        named: ``(name, parameter)`` of the trained parameters (``Single`` / ``Stacked.named_trainable``).
        decayed: from :func:`decayed_names`.

    Returns:
        ``[{"params": [...]}, {"params": [...], "weight_decay": 0.0}]`` for ``torch.optim`` optimisers.
    """
    return [
        {"params": [p for n, p in named if n in decayed]},
        {"params": [p for n, p in named if n not in decayed], "weight_decay": 0.0},
    ]
