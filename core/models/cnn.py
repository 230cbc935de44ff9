"""One configurable plain CNN and its seed presets.

Every setting an ablation toggles is a constructor argument of
:class:`ConfigurableCNN`: BatchNorm on/off and its position, dropout placement
and rate, max pooling per block, widths per block, a hidden fully connected
layer. Presets are thin functions over it, registered by name:

========== ======================== =============================================
preset     seed                     network
========== ======================== =============================================
cnn4       000 (network/model.py)   4 conv blocks, 3 pools, fc 4096->512->128->10,
                                    dropout 0.1 after the first hidden layer
cnn5       001 (custom CNN)         5 convs, 3 pools, fc 4096->512->10, p 0.5
cnn3       004 (README)             3 convs, pool after each, fc ->512->10
cnn_s004   004 (the notebook's      6 unpadded convs, pools 2 and 3, fc
           MyNet)                   1024->100->10
cnn_s002   002 (widths: this        3 convs, pool after each, fc ->256->10
           project's choice)
cnn_s003   003 (src/model.py)       6 convs, 3 pools, Dropout2d 0.15 and 0.2,
                                    fc 4096->512->256->10, dropout 0.3
========== ======================== =============================================

cnn4, cnn_s003 and cnn_s004 are the seeds' own networks, read from their repositories'
code, with the seeds' parameter counts (2,553,994, 3,359,370 and 6,391,702).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from core.config import ConfigError, ModelConfig
from core.models.crn import SeededDropout, SeededDropout2d
from core.models.registry import FrozenNormEval, register_model

DROPOUT_PLACEMENTS = ("none", "conv", "fc", "both")
BN_POSITIONS = ("before", "after")


class ConfigurableCNN(FrozenNormEval):
    """conv -> [BN] -> ReLU blocks with optional pooling and dropout, then a classifier.

    Each block is ``Conv2d(3x3, padding) -> BatchNorm2d -> ReLU`` (``bn_position
    "before"``) or ``Conv2d -> ReLU -> BatchNorm2d`` (``"after"``), without the
    BatchNorm when ``batchnorm`` is off, then ``MaxPool2d(k)`` (if pooled) and
    ``Dropout2d`` (if dropout in conv, both). After the last block the features
    are flattened and fed to ``[Linear(-> hidden[0]) -> ReLU -> Dropout -> Linear(->
    hidden[1]) -> ReLU ...] -> Linear(-> num_classes)``: with hidden layers the
    dropout (if dropout in fc, both) follows the first one's ReLU, as in seeds 000,
    001 and 003; without, it comes right before the output layer. The dropouts are ``core.models.crn``'s seeded
    ``SeededDropout2d`` / ``SeededDropout`` (subclasses of ``nn.Dropout2d`` / ``nn.Dropout``),
    so arms with the same seed drop the same units where their shapes agree.

    Args:
        widths: output channels of each conv block, e.g. ``(32, 64, 128, 256)``.
        pool: per block, the max pooling that follows it: ``False`` or 0 none, ``True``
            2x2 (stride 2), an int k ``MaxPool2d(k)`` (k x k, stride k; seed 004's 3).
        batchnorm: a BatchNorm2d in each block. Unless ``conv_bias``, the conv has no
            bias when the BatchNorm directly follows it (the BatchNorm's shift replaces it).
        bn_position: ``"before"`` the activation (seed 000: "most effective when
            used before activation and pooling") or ``"after"`` it.
        dropout: where dropout goes: ``none``, ``conv`` (after each block),
            ``fc`` (before the output layer) or ``both``.
        dropout_p: the dropout probability.
        hidden: width of an optional hidden fully connected layer, or the widths of
            several in order (seed 000: ``(512, 128)``); 0, ``()`` or None: none.
        num_classes: output logits.
        image_size: the height and width the blocks see; inputs of another size
            are resized to it (bilinear) first.
        padding: zero padding of every 3x3 conv in pixels (1 keeps the size; seed
            004's notebook uses 0, each conv then takes 2 pixels off).
        conv_bias: every conv has a bias, also before a BatchNorm, as ``nn.Conv2d``'s
            default in the seeds' own code (their parameter counts include them).
        conv_dropout: per block, the ``Dropout2d`` rate used when dropout is in conv
            or both (0: none after that block; seed 003's 0.15 and 0.2 after its second
            and third stages); ``None``: ``dropout_p`` after every block.

    Raises:
        ConfigError: unknown dropout placement or BatchNorm position, widths and
            pool (or conv_dropout) of different lengths, or so much pooling (or
            unpadded convs) that no pixel is left.

    Shapes:
        input float (B, 3, H, W), normally 32 x 32 -> logits (B, num_classes).
    """

    def __init__(
        self,
        widths: Sequence[int],
        pool: Sequence[bool | int],
        *,
        batchnorm: bool = True,
        bn_position: str = "before",
        dropout: str = "fc",
        dropout_p: float = 0.1,
        hidden: int | Sequence[int] | None = None,
        num_classes: int = 10,
        image_size: int = 32,
        padding: int = 1,
        conv_bias: bool = False,
        conv_dropout: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if dropout not in DROPOUT_PLACEMENTS:
            raise ConfigError(f"model.dropout must be one of {DROPOUT_PLACEMENTS}, got {dropout!r}")
        if bn_position not in BN_POSITIONS:
            raise ConfigError(f"model.bn_position must be one of {BN_POSITIONS}, got {bn_position!r}")
        if len(widths) != len(pool):
            raise ConfigError(f"model.widths has {len(widths)} blocks but pooling is given for {len(pool)}")
        if conv_dropout is not None and len(conv_dropout) != len(widths):
            raise ConfigError(f"model.widths has {len(widths)} blocks but conv_dropout gives {len(conv_dropout)}")
        if image_size < 1:
            raise ConfigError(f"model.input_size must be positive, got {image_size}")
        self.image_size = image_size
        blocks: list[nn.Module] = []
        in_ch, size = 3, image_size
        rates = [dropout_p] * len(widths) if conv_dropout is None else list(conv_dropout)
        for out_ch, pooled, rate in zip(widths, pool, rates, strict=True):
            bn_first = batchnorm and bn_position == "before"
            conv = nn.Conv2d(in_ch, out_ch, 3, padding=padding, bias=conv_bias or not bn_first)
            layers: list[nn.Module] = [conv]
            size += 2 * padding - 2
            if bn_first:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
            if batchnorm and not bn_first:
                layers.append(nn.BatchNorm2d(out_ch))
            k = 2 if pooled is True else int(pooled)  # True: the usual 2x2 pooling; an int: k x k, stride k
            if k > 1:
                layers.append(nn.MaxPool2d(k))
                size //= k
            if size < 1:
                raise ConfigError(
                    f"model.widths/model.first_pool: {len(blocks) + 1} conv blocks with the pooling "
                    f"{list(pool)[: len(blocks) + 1]} leave no pixel of a {image_size} x {image_size} input"
                )
            if dropout in ("conv", "both") and rate > 0:
                layers.append(SeededDropout2d(rate))
            blocks.append(nn.Sequential(*layers))
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        head: list[nn.Module] = [nn.Flatten()]
        features = in_ch * size * size  # cnn4: 256 * 4 * 4 = 4096
        widths_fc = [hidden] if isinstance(hidden, int) else list(hidden or ())
        for i, width in enumerate(w for w in widths_fc if w):
            head += [nn.Linear(features, width), nn.ReLU(inplace=True)]
            if i == 0 and dropout in ("fc", "both") and dropout_p > 0:
                head.append(SeededDropout(dropout_p))  # after the first hidden layer's ReLU (seeds 000, 001, 003)
            features = width
        if not any(widths_fc) and dropout in ("fc", "both") and dropout_p > 0:
            head.append(SeededDropout(dropout_p))
        head.append(nn.Linear(features, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) float -> (B, num_classes) logits."""
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return self.classifier(self.features(x))


def _cnn(cfg: ModelConfig, pool: Sequence[bool | int], **fixed: Any) -> ConfigurableCNN:
    """A :class:`ConfigurableCNN` from a resolved config, the preset's pooling pattern and its fixed
    constructor arguments (``padding``, ``conv_bias``, ``conv_dropout``: no config keys)."""
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
        **fixed,
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
    revision=2,  # 1: Dropout -> Linear(4096->10) without conv biases (429,866 parameters), until issue 24
    batchnorm=True,
    dropout="fc",
    dropout_p=0.1,
    first_pool=False,
    widths=(32, 64, 128, 256),
    hidden=(512, 128),
    **_PLAIN,
)
def cnn4(cfg: ModelConfig) -> ConfigurableCNN:
    """Seed 000's CNN, layer for layer as its ``network/model.py`` builds it (README:
    ``shared/seeds/000_cec1d97c41c0932c.txt``, about 89% test top-1).

    Source: ``CIFARClassifier`` in ``network/model.py`` of
    github.com/MaherovskyiDenys/CIFAR10-Image-Classification-with-PyTorch-CNN-from-scratch::

        Conv2d(3->32)    BN ReLU             (B, 32, 32, 32)
        Conv2d(32->64)   BN ReLU MaxPool     (B, 64, 16, 16)
        Conv2d(64->128)  BN ReLU MaxPool     (B, 128, 8, 8)
        Conv2d(128->256) BN ReLU MaxPool     (B, 256, 4, 4)
        Flatten, Linear(4096->512), ReLU, Dropout(0.1), Linear(512->128), ReLU, Linear(128->10)

    3x3 convs with padding 1 and a bias each (``nn.Conv2d``'s default, kept before the
    BatchNorm as in the seed): 2,553,994 parameters. The seed's first linear layer is a
    ``LazyLinear(512)``; here it is a plain ``Linear`` of the known input size (4096 for a
    32x32 input), the same layer once materialised, so ``torch.vmap`` (``core.fused``) and the
    meta-device checks need no dummy forward pass.

    Settings: ``batchnorm``/``bn_position`` toggle and move the BatchNorms; ``dropout`` puts
    ``Dropout(dropout_p)`` after the first hidden ReLU (``fc``, the seed's), ``Dropout2d``
    after every block (``conv``) or both; ``first_pool`` adds the pooling after block 1 that
    the seed removed; ``hidden`` sets the hidden widths (0: ``Linear(4096->10)`` alone);
    any number of ``widths`` works (every block but the first pools).

    Until issue 24 ``cnn4`` ended in ``Dropout(0.1) -> Linear(4096->10)`` without conv biases
    (429,866 parameters); studies that train it have new keys since (docs/release-notes.md).

    Seed recipe (``network/train.py``, ``data/loader.py``): Adam 1e-3, 60 epochs, batch 128,
    no validation split (it reports the last epoch), crop (padding 4) + flip +
    ``ColorJitter(0.2, 0.2, 0.2, 0.05)`` + normalisation + ``RandomErasing(p=0.25,
    scale=(0.02, 0.15))``: ``studies/seeds/seed000.yaml``.

    Shapes:
        (B, 3, 32, 32) -> (B, num_classes).
    """
    assert cfg.widths is not None
    return _cnn(cfg, [bool(cfg.first_pool)] + [True] * (len(cfg.widths) - 1), conv_bias=True)


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
    revision=2,  # 1: this project's guess from the README (814,570 parameters), until issue 24
    batchnorm=True,
    dropout="both",
    dropout_p=0.3,
    first_pool=False,
    widths=(32, 64, 128, 128, 256, 256),
    hidden=(512, 256),
    **_PLAIN,
)
def cnn_s003(cfg: ModelConfig) -> ConfigurableCNN:
    """Seed 003's CNN, layer for layer as its ``src/model.py`` builds it (README:
    ``shared/seeds/003_7866fac92bc7a629.txt``, 88.10% test top-1).

    Source: ``CIFAR10CNN`` in ``src/model.py`` of github.com/Rybsonbvb/Convolution-CIFAR10::

        Conv2d(3->32)    BN ReLU                        (B, 32, 32, 32)
        Conv2d(32->64)   BN ReLU MaxPool                (B, 64, 16, 16)
        Conv2d(64->128)  BN ReLU                        (B, 128, 16, 16)
        Conv2d(128->128) BN ReLU MaxPool Dropout2d(0.15) (B, 128, 8, 8)
        Conv2d(128->256) BN ReLU                        (B, 256, 8, 8)
        Conv2d(256->256) BN ReLU MaxPool Dropout2d(0.2)  (B, 256, 4, 4)
        Flatten, Linear(4096->512), ReLU, Dropout(0.3), Linear(512->256), ReLU, Linear(256->10)

    3x3 convs with padding 1 and a bias each (``nn.Conv2d``'s default): 3,359,370 parameters.

    Settings: ``dropout`` is ``both`` (the seed's): ``conv`` keeps only the two ``Dropout2d``
    (their rates 0.15 and 0.2 are fixed, the seed's), ``fc`` only the classifier's
    ``Dropout(dropout_p)`` (0.3), ``none`` neither; ``batchnorm``/``bn_position`` toggle and
    move the BatchNorms; ``first_pool`` adds a pooling after the first conv; ``widths`` must
    give 6 channels, ``hidden`` the classifier's hidden widths.

    Until issue 24 ``cnn_s003`` was this project's guess from the README (three stages of two
    convs, 32 to 128 channels, 814,570 parameters).

    Seed recipe (``src/dataset.py``, ``src/train.py``, ``run_training.py``): Adam 1e-3, batch
    32, flip + ``RandomRotation(15)``, normalisation mean (0.4914, 0.4822, 0.4465) std (0.2023,
    0.1994, 0.2010), a random 80/20 train/validation split, up to 100 epochs, early stopping
    with patience 10 on validation loss, the weights of the lowest validation loss kept:
    ``studies/seeds/seed003.yaml``.

    Shapes:
        (B, 3, 32, 32) -> (B, num_classes).
    """
    _fixed_depth(cfg, 6)
    return _cnn(
        cfg,
        [bool(cfg.first_pool), True, False, True, False, True],
        conv_bias=True,
        conv_dropout=(0.0, 0.0, 0.0, 0.15, 0.0, 0.2),
    )


@register_model(
    "cnn_s004",
    batchnorm=False,
    dropout="none",
    dropout_p=0.5,
    first_pool=False,
    widths=(32, 64, 128, 256, 512, 1024),
    hidden=100,
    **_PLAIN,
)
def cnn_s004(cfg: ModelConfig) -> ConfigurableCNN:
    """Seed 004's notebook network, ``MyNet`` (README: ``shared/seeds/004_5f7bff2e245ea335.txt``).

    Source: ``MyNet`` in ``CIFAR10_CNN_Classifier.ipynb`` of
    github.com/Bogdan0611/CIFAR10_CNN_Classifier, the network the notebook trains (its README
    describes the three-conv ``cnn3`` instead)::

        Conv2d(3->32)     ReLU                  (B, 32, 30, 30)
        Conv2d(32->64)    ReLU                  (B, 64, 28, 28)
        Conv2d(64->128)   ReLU MaxPool(2)       (B, 128, 13, 13)
        Conv2d(128->256)  ReLU                  (B, 256, 11, 11)
        Conv2d(256->512)  ReLU MaxPool(3, 3)    (B, 512, 3, 3)
        Conv2d(512->1024) ReLU                  (B, 1024, 1, 1)
        Flatten, Linear(1024->100), ReLU, Linear(100->10)

    3x3 convs without padding, each with a bias: 6,391,702 parameters. No BatchNorm, no
    dropout.

    Settings: ``batchnorm: true`` adds a BatchNorm to each conv (``bn_position``); ``dropout``
    ``fc`` puts ``Dropout(dropout_p)`` after the hidden ReLU, ``conv`` a ``Dropout2d`` after
    every block (``dropout_p`` 0.5 is this project's choice: the seed has none); ``widths``
    must give 6 channels. ``first_pool: true`` is a ``ConfigError``: a pooling after the first
    unpadded conv leaves no pixel for the last one.

    Seed recipe (the notebook): SGD lr 0.01 momentum 0.9, batch 64, crop (padding 4) + flip,
    normalisation mean (0.4914, 0.4822, 0.4465) std (0.2023, 0.1994, 0.2010), 20 epochs, AMP on
    CUDA; it validates on the test set and keeps the last epoch: ``studies/seeds/seed004.yaml``.

    Shapes:
        (B, 3, 32, 32) -> (B, num_classes).
    """
    _fixed_depth(cfg, 6)
    if cfg.first_pool:
        raise ConfigError(
            "model.first_pool: cnn_s004's convs are unpadded; a pooling after the first leaves no pixel "
            "for its last conv (32, 30, 15, 13, 11, 5, 3, 1, then 0 pixels); keep it false"
        )
    return _cnn(cfg, [False, False, 2, False, 3, False], padding=0, conv_bias=True)
