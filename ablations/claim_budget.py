"""The training budget a claim was made at, the one a study measured at, and how to say both.

A claim from the literature is about its source's recipe: seed 000's "BatchNorm improves accuracy by
~1.4%" is about 60 epochs on all 45,000 training images. A study's ``quick`` profile measures it after
4 epochs on 8,000, where BatchNorm mostly speeds convergence up. A claim's ``budget:`` (a profile name
of its study file, or settings on top of ``base``: ``{train.epochs: 60}``) names the budget it is about;
:func:`resolve` turns either into the settings that fix the budget (:data:`BUDGET_KEYS`), and the report
says, beside a verdict measured at another budget, that the claim's own budget was not measured
(:func:`note`).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["BUDGET_KEYS", "CIFAR10_TRAIN", "describe", "note", "resolve", "same", "train_images"]

# the settings that decide how much training a run gets (what a claim's budget is compared on)
BUDGET_KEYS = ("train.epochs", "data.train_subset", "data.val_fraction")
CIFAR10_TRAIN = 50_000  # CIFAR-10's training images, 5,000 per class (Krizhevsky 2009)
_CLASSES = 10


def resolve(overrides: dict[str, Any]) -> dict[str, Any]:
    """The budget settings dotted ``overrides`` give on top of the run config's defaults.

    Args:
        overrides: dotted config overrides (a study's ``base`` merged with a profile, or with a
            claim's budget settings; or a parent run's logged ``overrides``).

    Returns:
        ``{key: value}`` for every key of :data:`BUDGET_KEYS` plus ``data.root`` (None: CIFAR-10 from the
        default sources), the defaults of ``core.config.RunConfig`` where ``overrides`` does not set them.
        Overrides that no longer validate (a run logged by an older version) are read as written.
    """
    key = json.dumps(overrides, sort_keys=True, default=str)
    if key not in _RESOLVED:  # the replay of a sequential study asks at every look
        _RESOLVED[key] = _resolve(overrides)
    return dict(_RESOLVED[key])


_RESOLVED: dict[str, dict[str, Any]] = {}


def _resolve(overrides: dict[str, Any]) -> dict[str, Any]:
    from core.config import ConfigError, RunConfig, apply_overrides, flatten

    keys = (*BUDGET_KEYS, "data.root")
    defaults = flatten(RunConfig())
    try:
        values = flatten(apply_overrides(RunConfig(), dict(overrides)))
    except (ConfigError, ValueError, TypeError):
        values = {**defaults, **{k: v for k, v in overrides.items() if k in keys}}
    return {k: values.get(k, defaults.get(k)) for k in keys}


def train_images(values: dict[str, Any]) -> int | None:
    """Training images a run of budget ``values`` (:func:`resolve`) trains on, or None when unknown.

    As ``core.data`` splits CIFAR-10: ``round(val_fraction * 5000)`` images of each class held out for
    validation, then ``train_subset // 10`` of each class kept (all of the rest without a subset). For
    another data set (``data.root`` set) only a subset's size is known.
    """
    subset, fraction = values.get("data.train_subset"), float(values.get("data.val_fraction") or 0.0)
    if subset is not None:
        return int(subset) // _CLASSES * _CLASSES
    if values.get("data.root"):
        return None
    per_class = CIFAR10_TRAIN // _CLASSES
    return _CLASSES * (per_class - int(fraction * per_class + 0.5))


def describe(values: dict[str, Any], profile: str | None = None, settings: dict[str, Any] | None = None) -> str:
    """A budget in words: ``profile quick (4 epochs, 8,000 images)`` or ``train.epochs=60 (60 epochs, 45,000 images)``.

    Args:
        values: the budget settings (:func:`resolve`).
        profile: the profile's name, when the budget is one.
        settings: the settings as written (a claim's ``budget:`` mapping), named when there is no profile.

    Returns:
        The text.
    """
    epochs = values.get("train.epochs")
    images = train_images(values)
    parts = [f"{epochs} epoch{'s' if epochs != 1 else ''}"] if epochs is not None else []
    if images is not None:
        parts.append(f"{images:,} images")
    else:
        fraction = float(values.get("data.val_fraction") or 0.0)
        parts.append("all training images" + (f" less {fraction:.0%} for validation" if fraction else ""))
    what = ", ".join(parts)
    if profile is not None:
        return f"profile {profile} ({what})"
    if settings:
        return f"{', '.join(f'{k}={v}' for k, v in settings.items())} ({what})"
    return what


def same(measured: dict[str, Any], claimed: dict[str, Any]) -> bool:
    """Whether a study measured at the budget a claim is about: every key of :data:`BUDGET_KEYS` equal.

    A subset as large as the whole training split counts as the whole split (the same images).
    """
    for key in BUDGET_KEYS:
        a, b = measured.get(key), claimed.get(key)
        if key == "data.train_subset":
            a, b = train_images(measured), train_images(claimed)
        if a != b and not (isinstance(a, float | int) and isinstance(b, float | int) and abs(a - b) < 1e-9):
            return False
    return True


def note(verdict: str, measured: str, claimed: str | None, matches: bool | None) -> str:
    """The verdict with the budget it was measured at and, when the claim names one, whether that is it.

    Args:
        verdict: the claim's verdict (``supported``, ``inconclusive at 5 seeds per arm (profile quick)``, ...).
        measured: the measured budget in words (:func:`describe`).
        claimed: the claim's budget in words, or None when the claim names none.
        matches: :func:`same` of the two (None when the claim names none).

    Returns:
        E.g. ``supported at profile quick (4 epochs, 8,000 images); the claim is about profile full
        (60 epochs, 45,000 images): not measured there``.
    """
    joiner = "; measured at " if ("profile" in verdict or ";" in verdict) else " at "
    text = f"{verdict}{joiner}{measured}"
    if claimed is None:
        return text
    if matches:
        return f"{text}, the budget the claim is about"
    return f"{text}; the claim is about {claimed}: not measured there"
