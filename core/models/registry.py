"""Name -> model preset registry, and what every preset shares: checks, pretrained weights, freezing.

A preset is a function ``build(cfg: ModelConfig) -> nn.Module`` registered with
:func:`register_model` together with its own value for every ``ModelConfig``
field, so that :func:`resolve_model_config` turns a config of ``None`` fields
into a concrete one (the config MLflow logs). A preset raises
:class:`~core.config.ConfigError` naming the ``model.<field>`` key for any value
it cannot honour.

Shared by every preset and handled here, after ``build``:

- ``model.weights``: a state dict file loaded into the network (torchvision's
  file or a ``checkpoint/best.pt`` of this project). The final ``nn.Linear``
  (the classifier) is left freshly initialised when its shapes differ, e.g.
  torchvision's 1000-class ``fc`` into a 10-class network; any other missing,
  unexpected or mis-shaped key is a ``ConfigError``.
- ``model.trainable``: when not empty, only parameters under these module name
  prefixes train (``"layer4"`` matches ``layer4.0.conv1.weight``; a prefix is
  matched by whole dotted components, so ``"layer"`` matches nothing); the
  rest get ``requires_grad=False``. A prefix that matches no parameter is a
  ``ConfigError``.
- Frozen BatchNorm: networks derived from :class:`FrozenNormEval` keep every
  BatchNorm layer whose parameters are all frozen in eval mode, also after
  ``model.train()``: its running statistics stay those of the weights file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.config import ConfigError, ModelConfig
from core.models.crn import init_weights

__all__ = [
    "FrozenNormEval",
    "create_model",
    "list_models",
    "load_weights",
    "preset_defaults",
    "register_model",
    "resolve_model_config",
    "set_trainable",
]

# The fields every preset gives a value for (name and num_classes are always concrete).
PRESET_FIELDS = tuple(f for f in ModelConfig.model_fields if f not in ("name", "num_classes"))
# Shared fields with the same default everywhere; a preset may still override them.
_SHARED_DEFAULTS: dict[str, Any] = {"weights": None, "trainable": ()}

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class _Preset:
    build: Callable[[ModelConfig], nn.Module]
    defaults: dict[str, Any]


_REGISTRY: dict[str, _Preset] = {}


def register_model(name: str, **defaults: Any) -> Callable:
    """Decorator: register ``build(cfg: ModelConfig) -> nn.Module`` under ``name``.

    Args:
        name: the ``model.name`` that selects the preset.
        **defaults: the preset's value for every ``ModelConfig`` field except
            ``name`` and ``num_classes`` (``weights`` defaults to ``None`` and
            ``trainable`` to ``()``, i.e. no file and everything trains).

    Raises:
        TypeError: a default names no ``ModelConfig`` field, or a field has no
            default (a programming error, raised at import).
    """
    unknown = sorted(set(defaults) - set(PRESET_FIELDS))
    full = {**_SHARED_DEFAULTS, **defaults}
    missing = [f for f in PRESET_FIELDS if f not in full]
    if unknown or missing:
        raise TypeError(f"preset {name!r}: unknown fields {unknown}, fields without a default {missing}")

    def wrap(build: Callable[[ModelConfig], nn.Module]) -> Callable:
        _REGISTRY[name] = _Preset(build, full)
        return build

    return wrap


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def preset_defaults(name: str) -> dict[str, Any]:
    """The preset's own value of every ``ModelConfig`` field it fills in.

    Raises:
        ConfigError: ``name`` is not registered.
    """
    return dict(_preset(name).defaults)


def _preset(name: str) -> _Preset:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model '{name}' (model.name); registered: {', '.join(list_models())}")
    return _REGISTRY[name]


class FrozenNormEval(nn.Module):
    """Mixin for preset networks: BatchNorm layers whose parameters are all frozen stay in eval mode.

    ``train(True)`` puts every module in training mode as usual, then puts back
    in eval mode each BatchNorm layer with affine parameters none of which
    ``requires_grad``, so a frozen, pretrained feature extractor normalises with
    its own running statistics and does not drift toward the new data.
    """

    def train(self, mode: bool = True) -> FrozenNormEval:
        super().train(mode)
        if mode:
            for m in self.modules():
                if isinstance(m, _NORMS):
                    params = list(m.parameters(recurse=False))
                    if params and not any(p.requires_grad for p in params):
                        m.eval()
        return self


def _matches(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def set_trainable(model: nn.Module, prefixes: tuple[str, ...], preset: str = "model") -> None:
    """Freeze every parameter not under one of ``prefixes``; ``()`` leaves all trainable.

    Raises:
        ConfigError: a prefix matches no parameter (the message lists the top-level modules).
    """
    if not prefixes:
        return
    names = [n for n, _ in model.named_parameters()]
    for p in prefixes:
        if not any(_matches(n, (p,)) for n in names):
            tops = list(dict.fromkeys(n.split(".")[0] for n in names))  # in model order
            raise ConfigError(
                f"model.trainable: {p!r} matches no parameter of {preset}; "
                f"prefixes are dotted module names such as: {', '.join(tops)}"
            )
    for n, param in model.named_parameters():
        param.requires_grad_(_matches(n, prefixes))


def _head_name(model: nn.Module) -> str | None:
    """Name of the last ``nn.Linear``: the classifier whose shape depends on the class count."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"model.weights: {path} does not hold a state dict (a mapping of names to tensors)")
    return dict(obj)


def _keys(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f" (and {len(keys) - n} more)" if len(keys) > n else "")


def load_weights(model: nn.Module, path: str | Path, preset: str = "model") -> list[str]:
    """Load a state dict file into ``model``; return the classifier keys left freshly initialised.

    The file is read with ``torch.load(path, map_location="cpu", weights_only=True)``.
    Keys of the final ``nn.Linear`` whose shapes differ from the model's (another
    class count) are dropped; missing ``num_batches_tracked`` buffers are filled.

    Raises:
        ConfigError: the file is missing or unreadable, or a key other than the
            classifier's is missing, unexpected or of another shape.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.weights: no such file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-weights pickles
        raise ConfigError(f"model.weights: cannot read {path} as a weights-only state dict: {exc}") from None
    state = _state_dict_of(obj, path)
    own = model.state_dict()
    head = _head_name(model)
    dropped, wrong = [], []
    for k, v in list(state.items()):
        if k in own and v.shape != own[k].shape:
            if head is not None and _matches(k, (head,)):
                dropped.append(k)
                del state[k]
            else:
                wrong.append(f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}")
    if wrong:
        raise ConfigError(f"model.weights: {path} does not fit {preset}: shapes differ for {_keys(wrong, 3)}")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k not in dropped]
    if missing or result.unexpected_keys:
        parts = ([f"missing {_keys(missing)}"] if missing else []) + (
            [f"unexpected {_keys(result.unexpected_keys)}"] if result.unexpected_keys else []
        )
        raise ConfigError(f"model.weights: {path} does not fit {preset}: {'; '.join(parts)}")
    return dropped


def _check(cfg: ModelConfig) -> None:
    """Build ``cfg`` on the meta device (no memory, no weights) so every setting is checked up front."""
    preset = _preset(cfg.name)
    with torch.device("meta"):
        model = preset.build(cfg)
    set_trainable(model, tuple(cfg.trainable or ()), cfg.name)
    if cfg.weights is not None and not Path(cfg.weights).expanduser().is_file():
        raise ConfigError(f"model.weights: no such file: {cfg.weights}")


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """Return ``cfg`` with every ``None`` field replaced by the preset's own value, after checking it.

    The check builds the network on the meta device (no memory) and checks that
    a ``model.weights`` file exists, so a setting the preset cannot honour fails
    here, before anything trains or is logged.

    Raises:
        ConfigError: ``cfg.name`` is not registered, or the preset cannot honour
            a setting (the message names the ``model.<field>`` key).
    """
    preset = _preset(cfg.name)
    filled = {k: v for k, v in preset.defaults.items() if getattr(cfg, k) is None}
    resolved = cfg.model_copy(update=filled)
    _check(resolved)
    return resolved


def create_model(cfg: ModelConfig, seed: int | None = None) -> nn.Module:
    """Build the network ``cfg.name`` with the settings in ``cfg``, on the CPU, in training mode.

    With ``seed``, draws every layer's initial weights and dropout masks from its own stream of
    that seed (``core.models.crn.init_weights``: common random numbers across arms); without,
    PyTorch's global generator as usual. Then loads ``cfg.weights`` (if set: the file wins over
    the initial values) and freezes parameters outside ``cfg.trainable`` (if not empty); see the
    module docstring.

    Shapes:
        The model maps float images (B, 3, 32, 32) to logits (B, cfg.num_classes).

    Raises:
        ConfigError: unknown name, or a setting the preset cannot honour.
    """
    cfg = resolve_model_config(cfg)
    model = _preset(cfg.name).build(cfg)
    if seed is not None:
        init_weights(model, seed)
    if cfg.weights is not None:
        load_weights(model, cfg.weights, cfg.name)
    set_trainable(model, tuple(cfg.trainable or ()), cfg.name)
    return model.train()
