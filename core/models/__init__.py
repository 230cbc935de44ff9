"""Models chosen by registered name (the timm habit).

``create_model(cfg.model)`` builds the network; ``resolve_model_config`` fills
the preset's own values into the fields a config leaves as ``None`` so that
the config logged with a run is concrete. An unknown name raises
:class:`~core.config.ConfigError` listing the registered names.
"""

from core.models.registry import (
    create_model,
    list_models,
    register_model,
    resolve_model_config,
)

# Importing the modules registers their presets.
from core.models import cnn as _cnn  # noqa: F401, E402  isort: skip

__all__ = ["create_model", "list_models", "register_model", "resolve_model_config"]
