import pytest
import torch
from torch import nn

from core.config import ConfigError, ModelConfig
from core.models import create_model, list_models, resolve_model_config


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_maps_images_to_logits(name):
    model = create_model(ModelConfig(name=name)).eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_cnn4_is_seed_000():
    cfg = resolve_model_config(ModelConfig(name="cnn4"))
    assert (cfg.batchnorm, cfg.dropout, cfg.dropout_p, cfg.first_pool) == (True, "fc", 0.1, False)
    model = create_model(cfg)
    assert _count(model, nn.Conv2d) == 4 and _count(model, nn.BatchNorm2d) == 4
    assert _count(model, nn.MaxPool2d) == 3  # blocks 2-4 only
    assert _count(model, nn.Dropout) == 1 and _count(model, nn.Dropout2d) == 0


def test_batchnorm_toggle():
    model = create_model(ModelConfig(name="cnn4", batchnorm=False))
    assert _count(model, nn.BatchNorm2d) == 0
    assert all(conv.bias is not None for conv in model.modules() if isinstance(conv, nn.Conv2d))


@pytest.mark.parametrize(("where", "conv", "fc"), [("none", 0, 0), ("conv", 4, 0), ("fc", 0, 1), ("both", 4, 1)])
def test_dropout_placement(where, conv, fc):
    model = create_model(ModelConfig(name="cnn4", dropout=where, dropout_p=0.3))
    assert _count(model, nn.Dropout2d) == conv
    assert _count(model, nn.Dropout) == fc
    assert all(m.p == 0.3 for m in model.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d)))


def test_first_pool_halves_the_features():
    on = create_model(ModelConfig(name="cnn4", first_pool=True))
    off = create_model(ModelConfig(name="cnn4", first_pool=False))
    assert _count(on, nn.MaxPool2d) == 4
    assert on.classifier[-1].in_features * 4 == off.classifier[-1].in_features
    assert on(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_unknown_model_lists_registry():
    with pytest.raises(ConfigError, match="cnn4"):
        create_model(ModelConfig(name="vgg99"))
