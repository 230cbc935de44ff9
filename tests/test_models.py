import pytest
import torch
import torchvision
from torch import nn

from core.config import ConfigError, ModelConfig
from core.models import SeededDropout, create_model, list_models, resolve_model_config


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def _layer_types(block: nn.Module) -> list[type]:
    return [type(m) for m in block]


@pytest.fixture(scope="module")
def imagenet_weights(tmp_path_factory) -> str:
    """A torchvision ResNet-18 state dict shaped like resnet18-f37072fd.pth (1000-class fc; random values).

    The ``num_batches_tracked`` buffers are left out, as in older torchvision files.
    """
    state = torchvision.models.resnet18().state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("weights") / "resnet18-imagenet.pth"
    torch.save(state, path)
    return str(path)


def _cfg(name: str, weights: str, **kw) -> ModelConfig:
    """A config of preset ``name``; the preset that needs a weights file gets ``weights``."""
    if name == "resnet18_imagenet":
        kw.setdefault("weights", weights)
    return ModelConfig(name=name, **kw)


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_maps_images_to_logits(name, imagenet_weights):
    model = create_model(_cfg(name, imagenet_weights)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


@pytest.mark.parametrize("name", list_models())
def test_every_preset_resolves_to_a_concrete_config(name, imagenet_weights):
    cfg = resolve_model_config(_cfg(name, imagenet_weights))
    assert [k for k, v in cfg.model_dump().items() if v is None and k != "weights"] == []


def test_every_preset_docstring_cites_its_seed():
    from core.models.registry import _REGISTRY

    for name, preset in _REGISTRY.items():
        assert "shared/seeds/0" in (preset.build.__doc__ or ""), name


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _shapes(model: nn.Module, kind: type) -> list[tuple[int, ...]]:
    """The weight shapes of every ``kind`` layer, in model order."""
    return [tuple(m.weight.shape) for m in model.modules() if isinstance(m, kind)]


def test_cnn4_is_seed_000():
    """network/model.py of seed 000's repository: its CIFARClassifier, 2,553,994 parameters."""
    cfg = resolve_model_config(ModelConfig(name="cnn4"))
    assert (cfg.batchnorm, cfg.dropout, cfg.dropout_p, cfg.first_pool) == (True, "fc", 0.1, False)
    assert (cfg.bn_position, cfg.hidden, cfg.input_size, cfg.weights, cfg.trainable) == (
        "before",
        (512, 128),
        32,
        None,
        (),
    )
    model = create_model(cfg)
    assert _shapes(model, nn.Conv2d) == [(32, 3, 3, 3), (64, 32, 3, 3), (128, 64, 3, 3), (256, 128, 3, 3)]
    assert all(c.bias is not None and c.padding == (1, 1) for c in model.modules() if isinstance(c, nn.Conv2d))
    assert _count(model, nn.BatchNorm2d) == 4
    pooled = [any(isinstance(m, nn.MaxPool2d) for m in block) for block in model.features]
    assert pooled == [False, True, True, True]
    assert _count(model, nn.Dropout) == 1 and _count(model, nn.Dropout2d) == 0
    assert _layer_types(model.classifier) == [
        nn.Flatten,
        nn.Linear,
        nn.ReLU,
        SeededDropout,
        nn.Linear,
        nn.ReLU,
        nn.Linear,
    ]
    assert _shapes(model, nn.Linear) == [(512, 4096), (128, 512), (10, 128)]
    assert model.classifier[3].p == 0.1
    assert _params(model) == 2_553_994


def test_cnn_s003_is_seed_003():
    """src/model.py of seed 003's repository: its CIFAR10CNN, 3,359,370 parameters."""
    model = create_model(ModelConfig(name="cnn_s003"))
    assert _shapes(model, nn.Conv2d) == [
        (32, 3, 3, 3),
        (64, 32, 3, 3),
        (128, 64, 3, 3),
        (128, 128, 3, 3),
        (256, 128, 3, 3),
        (256, 256, 3, 3),
    ]
    assert all(c.bias is not None and c.padding == (1, 1) for c in model.modules() if isinstance(c, nn.Conv2d))
    assert _count(model, nn.BatchNorm2d) == 6
    pooled = [any(isinstance(m, nn.MaxPool2d) for m in block) for block in model.features]
    assert pooled == [False, True, False, True, False, True]
    drop2d = [[m.p for m in block if isinstance(m, nn.Dropout2d)] for block in model.features]
    assert drop2d == [[], [], [], [0.15], [], [0.2]]  # after the pooling of stages 2 and 3
    assert _layer_types(model.classifier) == [
        nn.Flatten,
        nn.Linear,
        nn.ReLU,
        SeededDropout,
        nn.Linear,
        nn.ReLU,
        nn.Linear,
    ]
    assert _shapes(model, nn.Linear) == [(512, 4096), (256, 512), (10, 256)]
    assert model.classifier[3].p == 0.3
    assert _params(model) == 3_359_370
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(("where", "conv", "fc"), [("none", [], []), ("conv", [0.15, 0.2], []), ("fc", [], [0.3])])
def test_cnn_s003_dropout_placements(where, conv, fc):
    """conv keeps the seed's two Dropout2d (their rates fixed), fc the classifier's Dropout(dropout_p)."""
    model = create_model(ModelConfig(name="cnn_s003", dropout=where))
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout2d)] == conv
    assert [m.p for m in model.modules() if type(m) is SeededDropout] == fc


def test_cnn_s004_is_seed_004s_notebook():
    """MyNet of seed 004's notebook (CIFAR10_CNN_Classifier.ipynb), 6,391,702 parameters."""
    model = create_model(ModelConfig(name="cnn_s004"))
    assert _shapes(model, nn.Conv2d) == [
        (32, 3, 3, 3),
        (64, 32, 3, 3),
        (128, 64, 3, 3),
        (256, 128, 3, 3),
        (512, 256, 3, 3),
        (1024, 512, 3, 3),
    ]
    assert all(c.bias is not None and c.padding == (0, 0) for c in model.modules() if isinstance(c, nn.Conv2d))
    pools = [[(m.kernel_size, m.stride) for m in block if isinstance(m, nn.MaxPool2d)] for block in model.features]
    assert pools == [[], [], [(2, 2)], [], [(3, 3)], []]
    assert _count(model, nn.BatchNorm2d) == 0 and _count(model, nn.Dropout) == 0 and _count(model, nn.Dropout2d) == 0
    assert _layer_types(model.classifier) == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
    assert _shapes(model, nn.Linear) == [(100, 1024), (10, 100)]
    assert _params(model) == 6_391_702
    sizes, x = [], torch.randn(2, 3, 32, 32)
    for block in model.features:
        x = block(x)
        sizes.append(x.shape[-1])
    assert sizes == [30, 28, 13, 11, 3, 1]


def test_cnn_s004_settings():
    bn = create_model(ModelConfig(name="cnn_s004", batchnorm=True, dropout="both"))
    assert _count(bn, nn.BatchNorm2d) == 6 and _count(bn, nn.Dropout2d) == 6
    assert _layer_types(bn.classifier) == [nn.Flatten, nn.Linear, nn.ReLU, SeededDropout, nn.Linear]
    assert bn(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match="model.first_pool: cnn_s004"):
        resolve_model_config(ModelConfig(name="cnn_s004", first_pool=True))


def test_resnet18_tv_is_torchvisions_resnet18():
    """Seed 002's network: torchvision.models.resnet18(weights=None, num_classes=10), 11,181,642 parameters."""
    model = create_model(ModelConfig(name="resnet18_tv")).eval()
    tv = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in tv.state_dict().items()}
    assert _params(model) == _params(tv) == 11_181_642
    assert (model.conv1.kernel_size, model.conv1.stride) == ((7, 7), (2, 2))
    assert isinstance(model.maxpool, nn.MaxPool2d)
    model.load_state_dict(tv.state_dict())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv(x))
    assert _params(create_model(ModelConfig(name="resnet18"))) == 11_173_962  # the CIFAR-stem variant


def test_resnet18_tv_settings():
    model = create_model(ModelConfig(name="resnet18_tv", batchnorm=False, dropout="fc", first_pool=False))
    assert _count(model, nn.BatchNorm2d) == 0 and isinstance(model.maxpool, nn.Identity)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


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
    assert on.classifier[1].in_features * 4 == off.classifier[1].in_features
    assert on(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_unknown_model_lists_registry():
    with pytest.raises(ConfigError, match="cnn4"):
        create_model(ModelConfig(name="vgg99"))


# ---- ConfigurableCNN: BatchNorm position, hidden layer, input size ----


def test_bn_position_orders_the_block():
    before = create_model(ModelConfig(name="cnn5", bn_position="before"))
    after = create_model(ModelConfig(name="cnn5", bn_position="after"))
    assert _layer_types(before.features[0]) == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert _layer_types(after.features[0]) == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d]
    assert _layer_types(after.features[1]) == [nn.Conv2d, nn.ReLU, nn.BatchNorm2d, nn.MaxPool2d]
    assert before.features[0][0].bias is None  # the BatchNorm's shift replaces the bias
    assert after.features[0][0].bias is not None  # a BatchNorm after the ReLU does not
    assert after(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_cnn5_is_seed_001():
    model = create_model(ModelConfig(name="cnn5"))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256)]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert _count(model, nn.BatchNorm2d) == 5 and _count(model, nn.ReLU) == 6
    pooled = [any(isinstance(m, nn.MaxPool2d) for m in block) for block in model.features]
    assert pooled == [False, True, False, True, True]
    assert _layer_types(model.classifier) == [nn.Flatten, nn.Linear, nn.ReLU, SeededDropout, nn.Linear]
    fc1, fc2 = model.classifier[1], model.classifier[4]
    assert (fc1.in_features, fc1.out_features, fc2.in_features, fc2.out_features) == (4096, 512, 512, 10)
    assert model.classifier[3].p == 0.5 and _count(model, nn.Dropout2d) == 0
    assert create_model(ModelConfig(name="cnn5", first_pool=True)).classifier[1].in_features == 1024


def test_cnn3_is_seed_004():
    model = create_model(ModelConfig(name="cnn3"))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(3, 32), (32, 64), (64, 128)]
    assert _count(model, nn.MaxPool2d) == 3 and _count(model, nn.BatchNorm2d) == 0
    assert _count(model, nn.Dropout) == 0 and _count(model, nn.Dropout2d) == 0
    assert _layer_types(model.classifier) == [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear]
    assert (model.classifier[1].in_features, model.classifier[1].out_features) == (2048, 512)
    assert model.classifier[3].out_features == 10
    toggled = create_model(ModelConfig(name="cnn3", batchnorm=True, dropout="fc", first_pool=False))
    assert _count(toggled, nn.BatchNorm2d) == 3 and _count(toggled, nn.MaxPool2d) == 2
    assert _layer_types(toggled.classifier)[-2:] == [SeededDropout, nn.Linear]
    assert toggled.classifier[1].in_features == 128 * 8 * 8


def test_seed_002_preset():
    model = create_model(ModelConfig(name="cnn_s002"))
    assert _count(model, nn.Conv2d) == 3 and _count(model, nn.MaxPool2d) == 3
    assert _count(model, nn.BatchNorm2d) == 0 and _count(model, nn.Linear) == 2


def test_seed_presets_keep_conv_biases_before_batchnorm():
    """cnn4 and cnn_s003 keep nn.Conv2d's default bias before each BatchNorm, as the seeds' code."""
    for name in ("cnn4", "cnn_s003"):
        model = create_model(ModelConfig(name=name, bn_position="before"))
        assert _layer_types(model.features[0]) == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
        assert model.features[0][0].bias is not None


@pytest.mark.parametrize("name", ["cnn5", "cnn_s003", "cnn_s004"])
def test_fixed_depth_presets_reject_other_widths(name):
    with pytest.raises(ConfigError, match="model.widths"):
        resolve_model_config(ModelConfig(name=name, widths=(32, 64)))


def test_too_much_pooling_is_a_config_error():
    with pytest.raises(ConfigError, match="model.widths"):
        resolve_model_config(ModelConfig(name="cnn4", widths=(8,) * 7, first_pool=True))


def test_cnn_input_size_resizes():
    model = create_model(ModelConfig(name="cnn4", input_size=64)).eval()
    assert model.classifier[1].in_features == 256 * 8 * 8
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


# ---- weights and trainable, shared by every preset ----


def test_checkpoint_weights_load_into_a_cnn(tmp_path):
    src = create_model(ModelConfig(name="cnn4"))
    torch.save(src.state_dict(), tmp_path / "best.pt")
    model = create_model(ModelConfig(name="cnn4", weights=str(tmp_path / "best.pt")))
    for (k, a), b in zip(src.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_weights_of_another_network_are_a_config_error(tmp_path):
    torch.save(create_model(ModelConfig(name="cnn3")).state_dict(), tmp_path / "cnn3.pt")
    with pytest.raises(ConfigError, match="model.weights.*cnn4"):
        create_model(ModelConfig(name="cnn4", weights=str(tmp_path / "cnn3.pt")))


def test_trainable_freezes_the_rest():
    model = create_model(ModelConfig(name="cnn4", trainable=("classifier",)))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained == {f"classifier.{i}.{w}" for i in (1, 4, 6) for w in ("weight", "bias")}
    model.train()
    assert model.classifier.training and not model.features[0][1].training  # frozen BatchNorm stays in eval
    with pytest.raises(ConfigError, match="model.trainable.*'head'.*features, classifier"):
        resolve_model_config(ModelConfig(name="cnn4", trainable=("head",)))


# ---- resnet18 (seed 002, from scratch) ----


def test_resnet18_has_a_cifar_stem():
    model = create_model(ModelConfig(name="resnet18"))
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.padding == (1, 1)
    assert isinstance(model.maxpool, nn.Identity) and isinstance(model.dropout, nn.Identity)
    assert model.fc.out_features == 10 and model.input_size == 32
    assert isinstance(create_model(ModelConfig(name="resnet18", first_pool=True)).maxpool, nn.MaxPool2d)


def test_resnet18_batchnorm_and_dropout_toggles():
    model = create_model(ModelConfig(name="resnet18", batchnorm=False, dropout="fc", dropout_p=0.3)).eval()
    assert _count(model, nn.BatchNorm2d) == 0
    assert isinstance(model.dropout, nn.Dropout) and model.dropout.p == 0.3
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"dropout": "conv"}, "model.dropout"),
        ({"bn_position": "after"}, "model.bn_position"),
        ({"hidden": 512}, "model.hidden"),
        ({"widths": (32, 64, 128, 256)}, "model.widths"),
    ],
)
def test_resnet18_rejects_what_it_cannot_honour(override, key):
    with pytest.raises(ConfigError, match=key):
        resolve_model_config(ModelConfig(name="resnet18", **override))


def test_resnet18_rejects_imagenet_weights(imagenet_weights):
    with pytest.raises(ConfigError, match="model.weights.*conv1.weight"):
        create_model(ModelConfig(name="resnet18", weights=imagenet_weights))


# ---- resnet18_imagenet (seed 001, transfer learning) ----


def test_resnet18_imagenet_loads_weights_and_replaces_fc(imagenet_weights):
    saved = torch.load(imagenet_weights, weights_only=True)
    model = create_model(ModelConfig(name="resnet18_imagenet", weights=imagenet_weights))
    assert model.conv1.kernel_size == (7, 7) and isinstance(model.maxpool, nn.MaxPool2d)
    assert torch.equal(model.conv1.weight, saved["conv1.weight"])
    assert torch.equal(model.layer3[1].bn2.running_var, saved["layer3.1.bn2.running_var"])
    assert saved["fc.weight"].shape == (1000, 512) and model.fc.weight.shape == (10, 512)


def test_resnet18_imagenet_loads_its_own_checkpoint(imagenet_weights, tmp_path):
    src = create_model(ModelConfig(name="resnet18_imagenet", weights=imagenet_weights))
    torch.save(src.state_dict(), tmp_path / "best.pt")  # as core.train saves it: 10-class fc, num_batches_tracked
    model = create_model(ModelConfig(name="resnet18_imagenet", weights=str(tmp_path / "best.pt")))
    assert torch.equal(model.fc.weight, src.fc.weight)


def test_resnet18_imagenet_freezes_all_but_layer4_and_fc(imagenet_weights):
    model = create_model(ModelConfig(name="resnet18_imagenet", weights=imagenet_weights))
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"layer4", "fc"}
    assert not any(p.requires_grad for p in model.layer3.parameters())
    model.train()
    assert model.training and model.layer4[0].bn1.training and model.fc.training
    assert not model.bn1.training and not model.layer3[1].bn2.training  # frozen BatchNorm keeps its statistics
    everything = create_model(ModelConfig(name="resnet18_imagenet", weights=imagenet_weights, trainable=()))
    assert all(p.requires_grad for p in everything.parameters()) and everything.bn1.training


def test_resnet18_imagenet_resizes_inside_forward(imagenet_weights):
    model = create_model(ModelConfig(name="resnet18_imagenet", weights=imagenet_weights)).eval()
    seen = []
    model.conv1.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert seen == [(1, 3, 224, 224)] and out.shape == (1, 10)


def test_resnet18_imagenet_weights_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.weights.*https://download\.pytorch\.org/models/resnet18"):
        resolve_model_config(ModelConfig(name="resnet18_imagenet"))
    with pytest.raises(ConfigError, match="model.weights: no such file"):
        resolve_model_config(ModelConfig(name="resnet18_imagenet", weights=str(tmp_path / "missing.pth")))
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(ConfigError, match="model.weights: cannot read"):
        create_model(ModelConfig(name="resnet18_imagenet", weights=str(tmp_path / "junk.pth")))
    with pytest.raises(ConfigError, match="model.batchnorm"):
        resolve_model_config(ModelConfig(name="resnet18_imagenet", weights=str(tmp_path / "junk.pth"), batchnorm=False))
