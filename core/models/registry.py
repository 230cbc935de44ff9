"""Name -> model preset registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from core.config import ConfigError, ModelConfig


@dataclass(frozen=True)
class _Preset:
    build: Callable[[ModelConfig], nn.Module]
    defaults: dict[str, Any]


_REGISTRY: dict[str, _Preset] = {}


def register_model(name: str, **defaults: Any) -> Callable:
    """Decorator: register ``build(cfg: ModelConfig) -> nn.Module`` under ``name``.

    ``defaults`` are the preset's values for the ``ModelConfig`` fields that a
    config leaves as ``None`` (``batchnorm``, ``dropout``, ``dropout_p``,
    ``first_pool``, ``widths``).
    """

    def wrap(build: Callable[[ModelConfig], nn.Module]) -> Callable:
        _REGISTRY[name] = _Preset(build, defaults)
        return build

    return wrap


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def _preset(name: str) -> _Preset:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model '{name}' (model.name); registered: {', '.join(list_models())}")
    return _REGISTRY[name]


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """Return ``cfg`` with every ``None`` field replaced by the preset's own value.

    Raises:
        ConfigError: ``cfg.name`` is not registered.
    """
    preset = _preset(cfg.name)
    filled = {k: v for k, v in preset.defaults.items() if getattr(cfg, k) is None}
    return cfg.model_copy(update=filled)


def create_model(cfg: ModelConfig) -> nn.Module:
    """Build the network ``cfg.name`` with the settings in ``cfg``.

    The model maps float images (B, 3, 32, 32) to logits (B, cfg.num_classes).

    Raises:
        ConfigError: unknown name, or a setting the preset cannot honour.
    """
    return _preset(cfg.name).build(resolve_model_config(cfg))
