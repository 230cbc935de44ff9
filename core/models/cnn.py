"""One configurable plain CNN and its seed presets.

Every setting an ablation toggles is a constructor argument of
:class:`ConfigurableCNN`: BatchNorm on/off and its position, dropout placement
and rate, max pooling per block, widths per block, a hidden fully connected
layer. Presets are thin functions over it, registered by name:

========== ======================== =========================================
preset     seed                     network
========== ======================== =========================================
cnn4       000                      4 conv blocks, 3 pools, fc dropout 0.1
cnn5       001 (custom CNN)         5 convs, 3 pools, fc 4096->512->10, p 0.5
cnn3       004                      3 convs, pool after each, fc ->512->10
cnn_s002   002 (widths: this        3 convs, pool after each, fc ->256->10
           project's choice)
cnn_s003   003 (widths: this        3 x 2 conv-BN-ReLU, pool per pair,
           project's choice)        fc ->256->10, dropout 0.5
========== ======================== =========================================
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from core.config import ConfigError, ModelConfig
from core.models.crn import SeededDropout, SeededDropout2d
from core.models.registry import FrozenNormEval, register_model

DROPOUT_PLACEMENTS = ("none", "conv", "fc", "both")
BN_POSITIONS = ("before", "after")


class ConfigurableCNN(FrozenNormEval):
    """conv -> [BN] -> ReLU blocks with optional pooling and dropout, then a classifier.

    Each block is ``Conv2d(3x3, padding 1) -> BatchNorm2d -> ReLU`` (``bn_position
    "before"``) or ``Conv2d -> ReLU -> BatchNorm2d`` (``"after"``), without the
    BatchNorm when ``batchnorm`` is off, then ``MaxPool2d(2)`` (if pooled) and
    ``Dropout2d`` (if dropout in conv, both). After the last block the features
    are flattened and fed to ``[Linear(-> hidden) -> ReLU] -> Dropout (if dropout
    in fc, both) -> Linear(-> num_classes)``: with a hidden layer the dropout
    follows its ReLU, as in seed 001. The dropouts are ``core.models.crn``'s seeded
    ``SeededDropout2d`` / ``SeededDropout`` (subclasses of ``nn.Dropout2d`` / ``nn.Dropout``),
    so arms with the same seed drop the same units where their shapes agree.

    Args:
        widths: output channels of each conv block, e.g. ``(32, 64, 128, 256)``.
        pool: per block, whether a 2x2 max pooling follows it.
        batchnorm: a BatchNorm2d in each block. The conv has no bias when the
            BatchNorm directly follows it (the BatchNorm's shift replaces it).
        bn_position: ``"before"`` the activation (seed 000: "most effective when
            used before activation and pooling") or ``"after"`` it.
        dropout: where dropout goes: ``none``, ``conv`` (after each block),
            ``fc`` (before the output layer) or ``both``.
        dropout_p: the dropout probability.
        hidden: width of an optional hidden fully connected layer (0 or None: none).
        num_classes: output logits.
        image_size: the height and width the blocks see; inputs of another size
            are resized to it (bilinear) first.

    Raises:
        ConfigError: unknown dropout placement or BatchNorm position, widths and
            pool of different lengths, or so much pooling that no pixel is left.

    Shapes:
        input float (B, 3, H, W), normally 32 x 32 -> logits (B, num_classes).
    """

    def __init__(
        self,
        widths: Sequence[int],
        pool: Sequence[bool],
        *,
        batchnorm: bool = True,
        bn_position: str = "before",
        dropout: str = "fc",
        dropout_p: float = 0.1,
        hidden: int | None = None,
        num_classes: int = 10,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        if dropout not in DROPOUT_PLACEMENTS:
            raise ConfigError(f"model.dropout must be one of {DROPOUT_PLACEMENTS}, got {dropout!r}")
        if bn_position not in BN_POSITIONS:
            raise ConfigError(f"model.bn_position must be one of {BN_POSITIONS}, got {bn_position!r}")
        if len(widths) != len(pool):
            raise ConfigError(f"model.widths has {len(widths)} blocks but pooling is given for {len(pool)}")
        if image_size < 1:
            raise ConfigError(f"model.input_size must be positive, got {image_size}")
        self.image_size = image_size
        blocks: list[nn.Module] = []
        in_ch, size = 3, image_size
        for out_ch, pooled in zip(widths, pool, strict=True):
            bn_first = batchnorm and bn_position == "before"
            layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=not bn_first)]
            if bn_first:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
            if batchnorm and not bn_first:
                layers.append(nn.BatchNorm2d(out_ch))
            if pooled:
                layers.append(nn.MaxPool2d(2))
                size //= 2
                if size == 0:
                    raise ConfigError(
                        f"model.widths/model.first_pool: {sum(pool)} poolings leave no pixel of a "
                        f"{image_size} x {image_size} input"
                    )
            if dropout in ("conv", "both") and dropout_p > 0:
                layers.append(SeededDropout2d(dropout_p))
            blocks.append(nn.Sequential(*layers))
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        head: list[nn.Module] = [nn.Flatten()]
        features = in_ch * size * size  # cnn4: 256 * 4 * 4 = 4096
        if hidden:
            head += [nn.Linear(features, hidden), nn.ReLU(inplace=True)]
            features = hidden
        if dropout in ("fc", "both") and dropout_p > 0:
            head.append(SeededDropout(dropout_p))
        head.append(nn.Linear(features, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) float -> (B, num_classes) logits."""
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return self.classifier(self.features(x))


def _cnn(cfg: ModelConfig, pool: Sequence[bool]) -> ConfigurableCNN:
    """A :class:`ConfigurableCNN` from a resolved config and the preset's pooling pattern."""
    assert cfg.widths is not None and cfg.dropout is not None and cfg.bn_position is not None
    return ConfigurableCNN(
        cfg.widths,
        pool,
        batchnorm=bool(cfg.batchnorm),
        bn_position=cfg.bn_position,
        dropout=cfg.dropout,
        dropout_p=float(cfg.dropout_p or 0.0),
        hidden=cfg.hidden or None,
        num_classes=cfg.num_classes,
        image_size=int(cfg.input_size or 32),
    )


def _fixed_depth(cfg: ModelConfig, n: int) -> None:
    assert cfg.widths is not None
    if len(cfg.widths) != n:
        raise ConfigError(
            f"model.widths: {cfg.name} has {n} conv layers with a fixed pooling pattern; "
            f"give {n} widths, got {len(cfg.widths)} ({cfg.widths})"
        )


# Settings every plain CNN preset shares unless it says otherwise.
_PLAIN = {"bn_position": "before", "input_size": 32}


@register_model(
    "cnn4",
    batchnorm=True,
    dropout="fc",
    dropout_p=0.1,
    first_pool=False,
    widths=(32, 64, 128, 256),
    hidden=0,
    **_PLAIN,
)
def cnn4(cfg: ModelConfig) -> ConfigurableCNN:
    """Seed 000's CNN (``shared/seeds/000_cec1d97c41c0932c.txt``; reports ~89% test top-1).

    Four conv -> BN -> ReLU blocks, 2x2 max pooling after blocks 2-4 only (seed
    000 removed the first block's pooling), dropout 0.1 before the linear
    classifier only. The seed does not give channel widths; this project uses
    32, 64, 128, 256 (a 32x32 input leaves 256 x 4 x 4 = 4096 features), a
    size that a 2-core CPU trains in minutes per epoch. Any number of widths
    works: every block but the first pools.

    Seed recipe: Adam 1e-3, 60 epochs, batch 128, crop + flip + colour jitter +
    CIFAR-10 normalisation + random erasing, no scheduler (the config defaults).

    Shapes:
        (B, 3, 32, 32) -> (B, num_classes).
    """
    assert cfg.widths is not None
    return _cnn(cfg, [bool(cfg.first_pool)] + [True] * (len(cfg.widths) - 1))


@register_model(
    "cnn5",
    batchnorm=True,
    dropout="fc",
    dropout_p=0.5,
    first_pool=False,
    widths=(64, 64, 128, 128, 256),
    hidden=512,
    **_PLAIN,
)
def cnn5(cfg: ModelConfig) -> ConfigurableCNN:
    """Seed 001's custom CNN (``shared/seeds/001_f4b157d342105146.txt``; reports 89.11% best test/val top-1).

    Layer by layer as the seed's table gives it::

        Conv2d(3->64)    BN ReLU             (B, 64, 32, 32)
        Conv2d(64->64)   BN ReLU MaxPool     (B, 64, 16, 16)
        Conv2d(64->128)  BN ReLU             (B, 128, 16, 16)
        Conv2d(128->128) BN ReLU MaxPool     (B, 128, 8, 8)
        Conv2d(128->256) BN ReLU MaxPool     (B, 256, 4, 4)
        Flatten, Linear(4096->512), ReLU, Dropout(0.5), Linear(512->10)

    All convs are 3x3 with padding 1. ``first_pool`` adds a pooling after the
    first conv (default off, as in the seed); ``widths`` must give 5 channels.

    Seed recipe: Adam 1e-3, StepLR(step 10, gamma 0.5), 30 epochs, batch 64,
    random crop (padding 4) + flip + ColorJitter(0.2, 0.2), normalisation with
    mean 0.5 and std 0.5 per channel (not the CIFAR-10 statistics: a study must
    set ``augment.mean``/``augment.std``), no random erasing.

    Shapes:
        (B, 3, 32, 32) -> (B, num_classes).
    """
    _fixed_depth(cfg, 5)
    return _cnn(cfg, [bool(cfg.first_pool), True, False, True, True])


@register_model(
    "cnn3",
    batchnorm=False,
    dropout="none",
    dropout_p=0.5,
    first_pool=True,
    widths=(32, 64, 128),
    hidden=512,
    **_PLAIN,
)
def cnn3(cfg: ModelConfig) -> ConfigurableCNN:
    """Seed 004's CNN (``shared/seeds/004_5f7bff2e245ea335.txt``; the seed reports no accuracy figure).

    ``Conv2d(3->32) -> ReLU -> MaxPool -> Conv2d(32->64) -> ReLU -> MaxPool ->
    Conv2d(64->128) -> ReLU -> MaxPool -> Flatten -> Linear(2048->512) -> ReLU ->
    Linear(512->10)``: no BatchNorm, no dropout. The seed gives 3x3 kernels but
    not the padding; this project uses padding 1, so 128 x 4 x 4 = 2048 features
    reach the hidden layer. ``first_pool`` is the pooling after the first conv
    (default on: the seed pools after every conv). The BatchNorm and dropout
    toggles work as for ``cnn4``; ``dropout_p`` 0.5 (used only when dropout is
    switched on) is this project's choice.

    Seed recipe: SGD with momentum 0.9, 20 epochs, mixed precision; learning
    rate, batch size and augmentation are not stated.

    Shapes:
        (B, 3, 32, 32) -> (B, num_classes).
    """
    assert cfg.widths is not None
    return _cnn(cfg, [bool(cfg.first_pool)] + [True] * (len(cfg.widths) - 1))


@register_model(
    "cnn_s002",
    batchnorm=False,
    dropout="none",
    dropout_p=0.5,
    first_pool=True,
    widths=(32, 64, 128),
    hidden=256,
    **_PLAIN,
)
def cnn_s002(cfg: ModelConfig) -> ConfigurableCNN:
    """Seed 002's "simple" custom CNN (``shared/seeds/002_b0a0b4f54b9b656e.txt``; reports 73-75% top-1, 93-94% top-3).

    The seed describes its CNN (``mycnn.py``) only as simple, easy to
    understand and built from basic PyTorch layers. The layers here are this
    project's choice of such a network, sized to land near the reported
    accuracy: ``Conv2d(3->32) -> ReLU -> MaxPool -> Conv2d(32->64) -> ReLU ->
    MaxPool -> Conv2d(64->128) -> ReLU -> MaxPool -> Flatten -> Linear(2048->256)
    -> ReLU -> Linear(256->10)``, 3x3 convs with padding 1, no BatchNorm, no
    dropout (``dropout_p`` 0.5 applies when a study switches dropout on).

    Seed recipe: Adam 1e-3, StepLR, 20 epochs, 90/10 train/validation split,
    normalisation, no augmentation stated.

    Shapes:
        (B, 3, 32, 32) -> (B, num_classes).
    """
    assert cfg.widths is not None
    return _cnn(cfg, [bool(cfg.first_pool)] + [True] * (len(cfg.widths) - 1))


@register_model(
    "cnn_s003",
    batchnorm=True,
    dropout="fc",
    dropout_p=0.5,
    first_pool=False,
    widths=(32, 32, 64, 64, 128, 128),
    hidden=256,
    **_PLAIN,
)
def cnn_s003(cfg: ModelConfig) -> ConfigurableCNN:
    """Seed 003's CNN (``shared/seeds/003_7866fac92bc7a629.txt``; reports 88.10% test top-1).

    The seed gives only the ingredients: conv -> BatchNorm -> ReLU blocks, max
    pooling, dropout and a fully connected classifier. The widths and layout
    are this project's choice, a VGG-style network of that kind: three stages
    of two 3x3 conv -> BN -> ReLU layers with 32, 32 | 64, 64 | 128, 128
    channels, 2x2 max pooling after each stage, then ``Flatten ->
    Linear(2048->256) -> ReLU -> Dropout(0.5) -> Linear(256->10)``.
    ``first_pool`` adds a pooling after the first conv (default off);
    ``widths`` must give 6 channels.

    Seed recipe: Adam 1e-3, random horizontal flip + random rotation, early
    stopping on validation loss, 80/20 train/validation split.

    Shapes:
        (B, 3, 32, 32) -> (B, num_classes).
    """
    _fixed_depth(cfg, 6)
    return _cnn(cfg, [bool(cfg.first_pool), True, False, True, False, True])
