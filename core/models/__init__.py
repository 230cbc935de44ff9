"""Models chosen by registered name (the timm habit).

``create_model(cfg.model)`` builds the network; ``resolve_model_config`` fills
the preset's own values into the fields a config leaves as ``None`` so that
the config logged with a run is concrete, and checks that the preset can
honour every setting. An unknown name or an unsupported setting raises
:class:`~core.config.ConfigError` naming the ``model.<field>`` key.

Presets (seed file in ``shared/seeds/``): ``cnn4`` (000), ``cnn5`` (001's
custom CNN), ``cnn3`` (004's README), ``cnn_s004`` (004's notebook),
``cnn_s002`` (002), ``cnn_s003`` (003), ``resnet18_tv`` (002's ResNet-18:
torchvision's own), ``resnet18`` (its 32x32-stem variant) and
``resnet18_imagenet`` (001's pretrained ResNet-18 at 224x224; needs
``model.weights``).
"""

from core.models.crn import SeededDropout, SeededDropout2d, init_weights, stable_names
from core.models.registry import (
    create_model,
    list_models,
    load_weights,
    preset_defaults,
    register_model,
    resolve_model_config,
)

# Importing the modules registers their presets.
from core.models import cnn as _cnn  # noqa: F401, E402  isort: skip
from core.models import resnet as _resnet  # noqa: F401, E402  isort: skip

__all__ = [
    "SeededDropout",
    "SeededDropout2d",
    "create_model",
    "init_weights",
    "list_models",
    "load_weights",
    "preset_defaults",
    "register_model",
    "resolve_model_config",
    "stable_names",
]
