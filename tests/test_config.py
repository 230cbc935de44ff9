import pytest
from pydantic import ValidationError

from core.config import ConfigError, RunConfig, apply_overrides, config_hash, flatten, unflatten


def test_overrides_apply_and_validate_types():
    cfg = apply_overrides(RunConfig(), {"optim.lr": 3e-4, "model.batchnorm": False, "train.epochs": 2})
    assert cfg.optim.lr == 3e-4 and cfg.model.batchnorm is False and cfg.train.epochs == 2
    assert RunConfig().optim.lr == 1e-3  # the original is untouched


def test_unknown_key_names_it_and_lists_valid_keys():
    with pytest.raises(ConfigError, match=r"optim.learning_rate.*optim.lr"):
        apply_overrides(RunConfig(), {"optim.learning_rate": 1e-3})


def test_wrong_type_and_range_name_the_key():
    with pytest.raises(ConfigError, match="train.epochs"):
        apply_overrides(RunConfig(), {"train.epochs": "many"})
    with pytest.raises(ConfigError, match="model.dropout_p"):
        apply_overrides(RunConfig(), {"model.dropout_p": 1.5})
    with pytest.raises(ConfigError, match="optim.name"):
        apply_overrides(RunConfig(), {"optim.name": "lion"})


def test_config_is_frozen():
    with pytest.raises(ValidationError):
        RunConfig().optim.lr = 1.0  # type: ignore[misc]


def test_flatten_roundtrip_and_hash():
    flat = flatten(RunConfig())
    assert flat["optim.lr"] == 1e-3
    assert RunConfig.model_validate(unflatten(flat)) == RunConfig()
    other = apply_overrides(RunConfig(), {"optim.lr": 1e-2})
    assert config_hash(other) != config_hash(RunConfig())
    # where the data lives does not change what a run means
    moved = apply_overrides(RunConfig(), {"data.root": "/elsewhere/cifar.tar.gz", "train.device": "cpu"})
    assert config_hash(moved) == config_hash(RunConfig())
