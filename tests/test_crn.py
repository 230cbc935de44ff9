"""Common random numbers across arms: same seed, same draws wherever the configs allow."""

from __future__ import annotations

import math

import torch
from torch import nn

from core import rng
from core.augment import BatchAugment
from core.config import AugmentConfig, ModelConfig, RunConfig, apply_overrides
from core.models import SeededDropout, SeededDropout2d, create_model, init_weights, stable_names
from core.train import fit
from tests.conftest import tiny_splits

TINY = {"train.epochs": 2, "train.batch_size": 16, "train.device": "cpu"}


def _convs(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_stream_seed_is_stable_and_distinct():
    assert rng.stream_seed(0, "order") == rng.stream_seed(0, "order")  # no salted hash()
    assert len({rng.stream_seed(s, n) for s in (0, 1) for n in ("order", "augment:crop")}) == 4
    assert 0 <= rng.stream_seed(123, "x") < 2**63


def test_batchnorm_on_and_off_start_from_the_same_convs_and_fc():
    on = create_model(ModelConfig(name="cnn4", batchnorm=True), seed=3)
    off = create_model(ModelConfig(name="cnn4", batchnorm=False), seed=3)
    assert isinstance(on.features[0][1], nn.BatchNorm2d) and isinstance(off.features[0][1], nn.ReLU)  # arms differ
    for a, b in zip(_convs(on), _convs(off), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(on.classifier[-1].weight, off.classifier[-1].weight)
    other = create_model(ModelConfig(name="cnn4", batchnorm=True), seed=4)
    assert not torch.equal(_convs(on)[0], _convs(other)[0])


def test_dropout_placement_and_bn_position_keep_the_weights():
    base = create_model(ModelConfig(name="cnn4", dropout="none"), seed=0)
    for kw in ({"dropout": "fc"}, {"dropout": "both"}, {"bn_position": "after"}):
        arm = create_model(ModelConfig(name="cnn4", **kw), seed=0)
        layers = [(m.weight, m.bias) for m in base.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        same = [(m.weight, m.bias) for m in arm.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        for (wa, ba), (wb, bb) in zip(layers, same, strict=True):
            assert torch.equal(wa, wb), kw
            assert ba is None or bb is None or torch.equal(ba, bb), kw
    names = stable_names(create_model(ModelConfig(name="cnn4", dropout="fc")))
    assert names["classifier.4"] == "classifier.1"  # the Linear after the dropout keeps its stable name
    assert names["classifier.3"] == "classifier.1~SeededDropout"


def test_resnet18_batchnorm_toggle_keeps_the_convs_and_follows_torchvision_init():
    on = create_model(ModelConfig(name="resnet18"), seed=0)
    off = create_model(ModelConfig(name="resnet18", batchnorm=False), seed=0)
    for a, b in zip(_convs(on), _convs(off), strict=True):
        assert torch.equal(a, b)
    w = on.layer3[0].conv2.weight  # kaiming_normal_, fan_out, relu: std sqrt(2 / (256 * 9))
    assert abs(w.std().item() / math.sqrt(2 / (256 * 9)) - 1) < 0.05
    assert torch.equal(on.bn1.weight, torch.ones(64)) and torch.equal(on.bn1.bias, torch.zeros(64))


def test_default_init_distribution_is_pytorchs():
    model = create_model(ModelConfig(name="cnn4", batchnorm=False), seed=0)
    conv = model.features[2][0]  # 64 -> 128, fan_in 576
    bound = 1 / math.sqrt(64 * 9)
    assert conv.weight.abs().max() <= bound and abs(conv.weight.std().item() / (bound / math.sqrt(3)) - 1) < 0.05
    assert conv.bias.abs().max() <= bound and conv.bias.std() > 0


def test_pretrained_weights_still_load_over_the_seeded_init(tmp_path):
    src = create_model(ModelConfig(name="cnn4"), seed=7)
    torch.save(src.state_dict(), tmp_path / "best.pt")
    model = create_model(ModelConfig(name="cnn4", weights=str(tmp_path / "best.pt")), seed=0)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_init_weights_does_not_depend_on_the_global_generator():
    torch.manual_seed(1)
    a = init_weights(create_model(ModelConfig(name="cnn4")), 5)
    torch.manual_seed(2)
    b = init_weights(create_model(ModelConfig(name="cnn4")), 5)
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), n


def test_rotation_on_and_off_keep_the_other_operations_draws():
    gens = rng.augment_generators
    plain = BatchAugment(AugmentConfig(rotation=0.0)).draw(64, "cpu", gens(0))
    rotated = BatchAugment(AugmentConfig(rotation=10.0)).draw(64, "cpu", gens(0))
    assert "rotation" in rotated and "rotation" not in plain
    for op in ("crop", "flip", "brightness", "contrast", "erasing"):
        assert torch.equal(plain[op], rotated[op]), op
    assert not torch.equal(plain["crop"], BatchAugment(AugmentConfig()).draw(64, "cpu", gens(1))["crop"])
    # and so the cropped and flipped images are the same when another operation is switched on
    x = torch.randint(1, 256, (16, 3, 32, 32), dtype=torch.uint8)
    a = BatchAugment(AugmentConfig(brightness=0.0, contrast=0.0, erasing=0.0))(x, gens(0))
    b = BatchAugment(AugmentConfig(brightness=0.0, contrast=0.0, erasing=0.5))(x, gens(0))
    kept = (b != 0).all(1, keepdim=True).expand_as(b)
    assert torch.equal(a[kept], b[kept])


def test_dropout_masks_equal_across_arms_where_shapes_agree():
    fc = create_model(ModelConfig(name="cnn4", dropout="fc", dropout_p=0.3), seed=0)
    both = create_model(ModelConfig(name="cnn4", dropout="both", dropout_p=0.3), seed=0)
    d_fc, d_both = fc.classifier[3], both.classifier[3]  # seed 000's head: Linear(4096, 512), ReLU, Dropout
    assert isinstance(d_fc, SeededDropout) and isinstance(d_both, SeededDropout)
    x = torch.ones(32, 512)
    first = d_fc(x)
    assert torch.equal(first, d_both(x))
    assert not torch.equal(first, d_fc(x))  # the next forward draws a new mask
    keep = (first != 0).float().mean().item()
    assert abs(keep - 0.7) < 0.01 and torch.allclose(first[first != 0], torch.tensor(1 / 0.7))
    other = create_model(ModelConfig(name="cnn4", dropout="fc", dropout_p=0.3), seed=1).classifier[3]
    assert not torch.equal(first, other(x))
    d_fc.eval()
    assert torch.equal(d_fc(x), x)


def test_dropout_counter_does_not_recompile_under_torch_compile():
    """The mask counter is a buffer, not a Python int: dynamo traces it as data (train.compile=on)."""
    compiled, eager = SeededDropout(0.5), SeededDropout(0.5)
    for d in (compiled, eager):
        d.reseed(7)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    step = torch.compile(compiled, backend="eager")  # dynamo's capture and guards, without inductor's code
    x = torch.ones(4, 64)
    for _ in range(5):
        assert torch.equal(step(x), eager(x))  # the same mask sequence as the eager module
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert int(compiled.crn_calls) == 5 and "crn_calls" not in compiled.state_dict()  # checkpoints unchanged


def test_dropout2d_drops_whole_channels():
    model = create_model(ModelConfig(name="cnn4", dropout="conv", dropout_p=0.5), seed=0)
    d = next(m for m in model.modules() if isinstance(m, SeededDropout2d))
    y = d(torch.ones(8, 16, 4, 4))
    per_channel = y.flatten(2)
    assert ((per_channel == 0).all(2) | (per_channel == 2).all(2)).all()
    assert 0.3 < (per_channel[..., 0] == 0).float().mean() < 0.7


def test_identical_configs_give_bit_identical_runs():
    cfg = apply_overrides(RunConfig(), {**TINY, "augment.rotation": 10.0, "model.dropout": "both"})
    a, b = fit(cfg, tiny_splits()), fit(cfg, tiny_splits())
    strip = ("epoch_seconds", "images_per_s")
    assert [{k: v for k, v in h.items() if k not in strip} for h in a.history] == [
        {k: v for k, v in h.items() if k not in strip} for h in b.history
    ]
    assert a.test == b.test
    for k, v in a.state_dict.items():
        assert torch.equal(v, b.state_dict[k]), k
