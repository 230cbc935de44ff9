"""``core``: train ONE image classifier on CIFAR-10; knows nothing of studies, Optuna or YAML.

The public names, imported on first use (``from core import fit`` loads torch, a
bare ``import core`` does not)::

    from core import RunConfig, apply_overrides, fit, load_splits
    cfg = apply_overrides(RunConfig(), {"model.name": "cnn4", "train.epochs": 2})
    result = fit(cfg)  # data from $ABLATE_DATA; result.test["test_acc"] in [0, 1]
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "RunConfig": "core.config",
    "ConfigError": "core.config",
    "apply_overrides": "core.config",
    "load_cifar10": "core.data",
    "load_splits": "core.data",
    "DataError": "core.data",
    "Splits": "core.data",
    "BatchAugment": "core.augment",
    "create_model": "core.models",
    "init_weights": "core.models",
    "list_models": "core.models",
    "register_model": "core.models",
    "fit": "core.train",
    "evaluate": "core.train",
    "Callback": "core.train",
    "FitResult": "core.train",
    "DivergedError": "core.train",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'core' has no attribute {name!r}")
