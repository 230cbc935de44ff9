"""Name -> model preset registry, and what every preset shares: checks, pretrained weights, freezing.

A preset is a function ``build(cfg: ModelConfig) -> nn.Module`` registered with
:func:`register_model`, the one decorator the built-in presets (``core/models/cnn.py``,
``core/models/resnet.py``) and users' own models (a study's ``imports:``, a package's entry point
of the group ``ablate.models``: ``core.models.plugins``) all use. It declares its defaults:

- the built-in ``ModelConfig`` fields it honours (``batchnorm``, ``dropout``, ...), each with
  its value; a built-in preset gives every field. A field a preset does not declare may not be
  set (``model.batchnorm`` on a plugin without it is a ``ConfigError``, not ignored);
- its own ``options`` (``options={"kernel_size": 3}``): ``model.options.<key>``, each typed by its
  default.

:func:`resolve_model_config` turns a config of ``None`` fields and given options into a concrete
one (the config MLflow logs). A preset raises :class:`~core.config.ConfigError` naming the
``model.<field>`` key for any value it cannot honour.

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
- A plugin's network is checked once per config before anything trains: ``build`` returns an
  ``nn.Module`` whose output for a (2, 3, 32, 32) batch is (2, ``num_classes``).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.config import ConfigError, ModelConfig
from core.models import plugins
from core.models.crn import init_weights
from core.models.plugins import PluginError

__all__ = [
    "FrozenNormEval",
    "create_model",
    "list_models",
    "load_weights",
    "preset_defaults",
    "preset_info",
    "preset_revision",
    "register_model",
    "resolve_model_config",
    "set_trainable",
]

# The built-in fields a preset may declare (name and num_classes are always concrete; options are its own).
PRESET_FIELDS = tuple(f for f in ModelConfig.model_fields if f not in ("name", "num_classes", "options"))
# Shared fields every preset honours (handled here, not by build), with the same default everywhere.
_SHARED_DEFAULTS: dict[str, Any] = {"weights": None, "trainable": ()}
_OPTION_TYPES = (bool, int, float, str, type(None))
_TYPE_WORDS = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    tuple: "a list",
}

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@dataclass(frozen=True)
class _Preset:
    build: Callable[[ModelConfig], nn.Module]
    defaults: dict[str, Any]  # the built-in fields it declares -> its value
    options: dict[str, Any]  # its own options -> default
    origin: str | None  # the file that registered it; None: a built-in preset (core.models)
    revision: int = 1  # raised when the network a name builds changes (ablations.study.Study.key)


_REGISTRY: dict[str, _Preset] = {}
_CHECKED: set[tuple[str, int, str]] = set()  # plugin configs whose network has been built and run once


def _check_option_default(name: str, key: Any, value: Any) -> None:
    if not isinstance(key, str) or not key.isidentifier():
        raise TypeError(f"model {name!r}: option names are identifiers such as kernel_size, got {key!r}")
    items = value if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(v, _OPTION_TYPES) for v in items):
        raise TypeError(
            f"model {name!r}: option {key!r} has default {value!r}; an option's default is a boolean, integer, "
            "number, string, None or a list of those (its type is the option's type)"
        )


def register_model(name: str, options: dict[str, Any] | None = None, *, revision: int = 1, **settings: Any) -> Callable:
    """Decorator: register ``build(cfg: ModelConfig) -> nn.Module`` as the model ``name``.

    The one way a model is added, for the built-in presets and a user's own alike::

        from torch import nn
        from ablations import register_model

        @register_model("my_cnn", options={"kernel_size": 3, "residual": True})
        def build(cfg) -> nn.Module:  # cfg.options == {"kernel_size": 3, "residual": True} unless set
            ...

    ``build`` gets the resolved :class:`~core.config.ModelConfig`: ``cfg.options`` holds every
    option (the defaults, then the study's ``model.options``), ``cfg.num_classes`` the class count,
    and each declared built-in setting its value; undeclared settings are ``None``. Its network maps
    (B, 3, 32, 32) float images to (B, ``num_classes``) logits. ``model.weights`` and
    ``model.trainable`` work for every model. ``build`` may be a class (an ``nn.Module`` subclass
    taking ``cfg``).

    Args:
        name: the ``model.name`` that selects it.
        options: the model's own settings and their defaults, ``model.options.<key>`` in a study.
            An option's type is its default's: a boolean, integer, number (an integer is taken
            too), string or list; a default of ``None`` takes any of these.
        revision: raised by one each time the network that ``name`` builds changes (other layers,
            other parameter counts). A study whose cells train a model of revision 2 or later has
            that revision in its key (``ablations.study.Study.key``), so runs of the earlier
            network are never pooled with runs of the new one; at 1 the key is as it always was.
        **settings: the built-in ``ModelConfig`` fields the model honours, each with its value
            (``dropout_p=0.1``); ``weights`` and ``trainable`` are always honoured. A built-in
            preset gives every field.

    Returns:
        The decorator, which registers ``build`` and returns it unchanged.

    Raises:
        TypeError: a setting that is no ``ModelConfig`` field, an option default of another type,
            options that are not a mapping, a built-in preset without a value for every field, a
            revision that is no integer >= 1.
        core.models.plugins.PluginError: (when decorating) ``name`` is a built-in preset's, or
            another file registered it already.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"register_model: the name is a non-empty string, got {name!r}")
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
        raise TypeError(f"model {name!r}: revision is an integer >= 1, got {revision!r}")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise TypeError(f"model {name!r}: options is a mapping option -> default, got {type(options).__name__}")
    for key, value in options.items():
        _check_option_default(name, key, value)
    unknown = sorted(set(settings) - set(PRESET_FIELDS))
    if unknown:
        raise TypeError(f"model {name!r}: {', '.join(unknown)} are no ModelConfig fields; valid: {PRESET_FIELDS}")
    declared = {**_SHARED_DEFAULTS, **settings}

    def wrap(build: Callable[[ModelConfig], nn.Module]) -> Callable:
        builtin = getattr(build, "__module__", "").startswith("core.models.")
        if builtin and (missing := [f for f in PRESET_FIELDS if f not in declared]):
            raise TypeError(f"preset {name!r}: fields without a default {missing}")
        origin = None if builtin else _source_file(build)
        prev = _REGISTRY.get(name)
        if prev is not None and prev.origin != origin:
            if prev.origin is None:
                raise PluginError(f"model '{name}' is a built-in preset's name; register yours under another")
            raise PluginError(f"model '{name}' is registered already by {prev.origin}; two files cannot share a name")
        _REGISTRY[name] = _Preset(build, declared, dict(options), origin, revision)
        return build

    return wrap


def _source_file(build: Callable) -> str:
    try:
        return str(Path(inspect.getsourcefile(build) or inspect.getfile(build)).resolve())
    except TypeError:
        return f"<{getattr(build, '__module__', '?')}>"


def _registry() -> dict[str, _Preset]:
    """The registry, with installed packages' entry points loaded (``core.models.plugins``)."""
    plugins.load_entry_points()
    return _REGISTRY


def list_models() -> list[str]:
    """Registered model names, sorted (installed packages' entry points loaded first).

    Raises:
        core.models.plugins.PluginError: an entry point fails to load.
    """
    return sorted(_registry())


def preset_defaults(name: str) -> dict[str, Any]:
    """The preset's own value of every ``ModelConfig`` field it declares (``weights``, ``trainable`` too).

    Raises:
        ConfigError: ``name`` is not registered.
    """
    return dict(_preset(name).defaults)


def preset_info(name: str) -> dict[str, Any]:
    """What ``ablate models`` shows of a model: its options, declared settings and where it comes from.

    Returns:
        ``{"options": {option: default}, "settings": {field: value}, "origin": file or None}``
        (``None``: a built-in preset).

    Raises:
        ConfigError: ``name`` is not registered.
    """
    preset = _preset(name)
    settings = {k: v for k, v in preset.defaults.items() if k not in _SHARED_DEFAULTS}
    return {"options": dict(preset.options), "settings": settings, "origin": preset.origin}


def preset_revision(name: str) -> int:
    """How many times the network ``name`` builds has changed, plus one (``register_model``'s ``revision``).

    ``cnn4`` is at 2: seed 000's own classifier since issue 24 (docs/release-notes.md).

    Raises:
        ConfigError: ``name`` is not registered.
    """
    return _preset(name).revision


def _preset(name: str) -> _Preset:
    registry = _registry()
    if name not in registry:
        raise ConfigError(f"unknown model '{name}' (model.name); registered: {', '.join(sorted(registry))}")
    return registry[name]


def _forget_plugins() -> None:
    """Drop every model a plugin registered and forget the imported files (tests start from the built-ins)."""
    for name in [n for n, p in _REGISTRY.items() if p.origin is not None]:
        del _REGISTRY[name]
    _CHECKED.clear()
    plugins._forget()


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


def _words(t: type) -> str:
    return _TYPE_WORDS.get(t, t.__name__)


def _option_value(name: str, key: str, value: Any, default: Any) -> Any:
    """``value`` as the type of ``default`` (an integer for a number, a list for a list), or a ConfigError."""
    where = f"model.options.{key}"
    if default is None:
        _ok = isinstance(value, _OPTION_TYPES) or (
            isinstance(value, (list, tuple)) and all(isinstance(v, _OPTION_TYPES) for v in value)
        )
        if not _ok:
            raise ConfigError(f"{where}: model {name} takes a boolean, number, string or list, got {value!r}")
        return value
    kind = type(default)
    ok = {
        bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
    }.get(kind, lambda v: isinstance(v, (list, tuple)))(value)
    if not ok:
        hint = ""
        if kind is bool and isinstance(value, str) and value.lower() in ("on", "off", "yes", "no", "y", "n"):
            hint = "; write true or false (YAML 1.2: on/off/yes/no are strings)"
        shown = str(default).lower() if isinstance(default, bool) else repr(default)  # true, as a study file writes it
        raise ConfigError(f"{where}: model {name} takes {_words(kind)} (default {shown}), got {value!r}{hint}")
    if kind is float:
        return float(value)
    if kind in (list, tuple):
        return kind(value)
    return value


def _options(name: str, preset: _Preset, given: dict[str, Any]) -> dict[str, Any]:
    """Every option of ``preset``: ``given`` checked against the defaults' types, the rest the defaults."""
    for key in given:
        if key not in preset.options:
            if not preset.options:
                raise ConfigError(f"model.options.{key}: model {name} has no options")
            near = difflib.get_close_matches(key, list(preset.options), n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise ConfigError(
                f"model.options.{key}: model {name} has no option '{key}'; {hint}"
                f"its options: {', '.join(preset.options)}"
            )
    return {k: _option_value(name, k, given[k], d) if k in given else d for k, d in preset.options.items()}


def _undeclared(cfg: ModelConfig, preset: _Preset) -> None:
    """A built-in setting the preset does not declare may not be set."""
    for f in PRESET_FIELDS:
        if f not in preset.defaults and getattr(cfg, f) is not None:
            mine = [k for k in preset.defaults if k not in _SHARED_DEFAULTS]
            has = (
                f"its settings: {', '.join(f'model.{k}' for k in mine)}"
                if mine
                else "it declares none of the built-in settings"
            )
            opts = f"; its options: {', '.join(f'model.options.{k}' for k in preset.options)}" if preset.options else ""
            raise ConfigError(
                f"model.{f}: model {cfg.name} does not declare the setting {f} "
                f"(register_model({cfg.name!r}, ..., {f}=<default>) to honour it); {has}{opts}"
            )


def _check(cfg: ModelConfig) -> None:
    """Build ``cfg`` on the meta device (no memory, no weights) so every setting is checked up front.

    A plugin's network is built on the CPU and runs a (2, 3, 32, 32) batch instead, once per config.
    """
    preset = _preset(cfg.name)
    if preset.origin is not None:
        _check_plugin(cfg, preset)
    else:
        with torch.device("meta"):
            model = preset.build(cfg)
        set_trainable(model, tuple(cfg.trainable or ()), cfg.name)
    if cfg.weights is not None and not Path(cfg.weights).expanduser().is_file():
        raise ConfigError(f"model.weights: no such file: {cfg.weights}")


def _check_plugin(cfg: ModelConfig, preset: _Preset) -> None:
    """A plugin's build returns an ``nn.Module`` whose output for (2, 3, 32, 32) is (2, num_classes).

    Run on the CPU under a forked random state (the global generator is left as it was), in eval
    mode, without gradients; any error in the user's code is one line with its file and line.
    """
    key = (cfg.name, id(preset.build), cfg.model_dump_json(exclude={"weights"}))
    if key in _CHECKED:
        return
    name = f"model {cfg.name} ({preset.origin})"

    def fail(what: str, exc: Exception) -> ConfigError:
        at = plugins.where(exc, [preset.origin or ""])
        line = f" at line {at.rsplit(':', 1)[1]}" if at else ""
        msg = (str(exc).strip().splitlines() or [""])[0]
        return ConfigError(f"{name}: {what} raised {type(exc).__name__}{line}: {msg}")

    with torch.random.fork_rng(devices=[]):
        try:
            model = preset.build(cfg)
        except ConfigError:
            raise
        except Exception as exc:
            raise fail("build", exc) from None
        if not isinstance(model, nn.Module):
            raise ConfigError(f"{name}: build returned {type(model).__name__}, not a torch.nn.Module")
        try:
            with torch.no_grad():
                out = model.eval()(torch.zeros(2, 3, 32, 32))
        except Exception as exc:
            raise fail("its forward pass on a (2, 3, 32, 32) batch", exc) from None
    expected = (2, cfg.num_classes)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != expected:
        raise ConfigError(
            f"{name}: its output for a (2, 3, 32, 32) batch has shape {got}; expected {expected} (batch, num_classes)"
        )
    set_trainable(model, tuple(cfg.trainable or ()), cfg.name)
    _CHECKED.add(key)


def resolve_model_config(cfg: ModelConfig) -> ModelConfig:
    """Return ``cfg`` with every ``None`` field and every option filled in from the preset, after checking it.

    The check builds the network on the meta device (no memory; a plugin's on the CPU, once, and
    runs a (2, 3, 32, 32) batch through it) and checks that a ``model.weights`` file exists, so a
    setting the preset cannot honour fails here, before anything trains or is logged.

    Raises:
        ConfigError: ``cfg.name`` is not registered; a built-in setting the preset does not declare
            is set; an option it does not declare or of another type than its default; the preset
            cannot honour a setting; a plugin's network is no ``nn.Module`` or gives another output
            shape (the message names the ``model.<field>`` key, or the model and its file).
    """
    preset = _preset(cfg.name)
    _undeclared(cfg, preset)
    filled: dict[str, Any] = {k: v for k, v in preset.defaults.items() if getattr(cfg, k) is None}
    if cfg.options or preset.options:
        filled["options"] = _options(cfg.name, preset, dict(cfg.options))
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
