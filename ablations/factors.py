"""Factor name -> how each level changes the run config (data, not code).

A factor in a study file is one of:

- a registered name below, whose levels are values of one config key
  (``batchnorm: [true, false]`` sets ``model.batchnorm``) or named levels that
  set several (``batchnorm: [before, after, none]``, see ``LEVELS``);
- a dotted config key itself (``optim.lr: [1.0e-3, 3.0e-4]``);
- a mapping from level label to dotted overrides, for levels that change
  several settings at once::

      augmentation:
        light: {augment.rotation: 0}
        heavy: {augment.rotation: 10, augment.erasing: 0.5}
"""

from __future__ import annotations

from typing import Any

__all__ = ["FACTORS", "LEVELS", "factor_overrides", "level_label"]

# Registered factors: name -> the config key its levels set.
FACTORS: dict[str, str] = {
    "batchnorm": "model.batchnorm",  # BatchNorm after each conv: true / false
    "dropout": "model.dropout",  # dropout placement: none / conv / fc / both
    "dropout_p": "model.dropout_p",  # dropout rate
    "rotation": "augment.rotation",  # max rotation in degrees, 0 = off
    "first_pool": "model.first_pool",  # max pooling in the first block: true / false
    "scheduler": "schedule.name",  # learning-rate schedule
    "optimizer": "optim.name",  # adam / sgd
    "model": "model.name",  # registered network
    # training tricks (docs/tricks.md), each off at 0 / false
    "label_smoothing": "train.label_smoothing",  # e of the smoothed targets
    "mixup": "augment.mixup",  # Beta alpha of mixup
    "cutmix": "augment.cutmix",  # Beta alpha of CutMix
    "mix_prob": "augment.mix_prob",  # probability that a batch is mixed
    "warmup_epochs": "schedule.warmup_epochs",  # epochs of linear lr warmup
    "ema": "train.ema",  # decay of the weights' moving average
    "no_bias_decay": "optim.no_bias_decay",  # no weight decay on biases and norms: true / false
    "grad_clip": "train.grad_clip",  # max gradient norm per run
}


# Named levels of registered factors that set more than one key (any other level is the key's value).
LEVELS: dict[str, dict[str, dict[str, Any]]] = {
    "batchnorm": {
        "before": {"model.batchnorm": True, "model.bn_position": "before"},  # conv -> BN -> ReLU (seed 000)
        "after": {"model.batchnorm": True, "model.bn_position": "after"},  # conv -> ReLU -> BN
        "none": {"model.batchnorm": False},
    },
}


def level_label(level: Any) -> str:
    """How a level is written in cell names and tables: ``true``, ``0.001``, ``fc``."""
    if isinstance(level, bool):
        return "true" if level else "false"
    return str(level)


def factor_overrides(name: str, spec: list | dict, level: Any) -> dict[str, Any]:
    """Dotted config overrides that put factor ``name`` at ``level``.

    Args:
        name: the factor's name in the study file.
        spec: its levels as written: a list of values, or a mapping label -> overrides.
        level: one of the levels (a label when ``spec`` is a mapping).

    Returns:
        ``{"dotted.key": value, ...}``.
    """
    if isinstance(spec, dict):
        return dict(spec[level])
    if isinstance(level, str) and level in LEVELS.get(name, {}):
        return dict(LEVELS[name][level])
    return {FACTORS.get(name, name): level}
