"""torchvision's ResNet-18 as seed presets: from scratch on 32x32 (seed 002), pretrained at 224x224 (seed 001).

``resnet18_tv`` is ``torchvision.models.resnet18(weights=None, num_classes=10)`` itself (seed 002's
network); ``resnet18`` is this project's CIFAR-stem variant of it; ``resnet18_imagenet`` loads
torchvision's ImageNet weights (seed 001). All three presets are :class:`ResNet18`, a subclass
of ``torchvision.models.ResNet`` with the same parameter names, so torchvision's ImageNet state
dict (``resnet18-f37072fd.pth``) and this project's checkpoints load into it.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import ResNet18_Weights
from torchvision.models.resnet import BasicBlock, ResNet

from core.config import ConfigError, ModelConfig
from core.models.crn import SeededDropout
from core.models.registry import FrozenNormEval, register_model

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ResNet18"]

# The normalisation torchvision's ImageNet weights expect (set augment.mean / augment.std to these).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STAGE_WIDTHS = (64, 128, 256, 512)  # fixed by torchvision's ResNet-18


class ResNet18(FrozenNormEval, ResNet):
    """torchvision's ResNet-18 with a choice of stem, input resizing and dropout before ``fc``.

    Args:
        cifar_stem: replace the 7x7 stride-2 stem conv with a 3x3 stride-1 one
            (padding 1), the usual adaptation to 32x32 images.
        first_pool: keep the stem's 3x3 stride-2 max pooling (``maxpool``); off
            replaces it with ``nn.Identity``.
        batchnorm: ``False`` replaces every BatchNorm2d with ``nn.Identity``; the
            convs keep torchvision's ``bias=False``, so the network then has no
            per-channel shift before ``fc`` (an honest "no BatchNorm" ablation,
            which usually wants a lower learning rate).
        dropout_p: ``nn.Dropout`` on the pooled 512 features before ``fc`` when > 0.
        input_size: inputs whose height or width differ are resized to
            ``input_size`` x ``input_size`` with bilinear ``F.interpolate``
            inside ``forward``, so the data stays 32x32 uint8 on the device.
        num_classes: output logits (the ``fc`` layer's size).

    ``conv_init = "kaiming_normal_fan_out"`` tells ``core.models.init_weights`` to draw the convs
    as torchvision's ResNet does (``kaiming_normal_``, fan out, ReLU gain).

    Shapes:
        input float (B, 3, H, W) -> logits (B, num_classes).
    """

    conv_init = "kaiming_normal_fan_out"

    def __init__(
        self,
        *,
        cifar_stem: bool,
        first_pool: bool,
        batchnorm: bool = True,
        dropout_p: float = 0.0,
        input_size: int = 32,
        num_classes: int = 10,
    ) -> None:
        super().__init__(
            BasicBlock, [2, 2, 2, 2], num_classes=num_classes, norm_layer=nn.BatchNorm2d if batchnorm else nn.Identity
        )
        if cifar_stem:
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        if not first_pool:
            self.maxpool = nn.Identity()
        self.dropout = SeededDropout(dropout_p) if dropout_p > 0 else nn.Identity()
        self.input_size = input_size

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) float -> (B, num_classes) logits."""
        s = self.input_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        # The global average pool as a mean over H and W: what self.avgpool (AdaptiveAvgPool2d(1)) computes,
        # but with a vmap batching rule, so the fused model (core.fused) does not loop over its K replicas.
        x = x.mean(dim=(-2, -1))
        return self.fc(self.dropout(x))


def _check_fixed(cfg: ModelConfig) -> None:
    """Reject the ModelConfig settings a torchvision ResNet-18 cannot honour."""
    if cfg.widths is not None and tuple(cfg.widths) != STAGE_WIDTHS:
        raise ConfigError(f"model.widths: {cfg.name} has torchvision's fixed stage widths {STAGE_WIDTHS}")
    if cfg.hidden:
        raise ConfigError(f"model.hidden: {cfg.name} has no hidden fully connected layer; use 0")
    if cfg.bn_position != "before":
        raise ConfigError(f"model.bn_position: {cfg.name} has BatchNorm before the ReLU only ('before')")
    if cfg.dropout not in ("none", "fc"):
        raise ConfigError(f"model.dropout: {cfg.name} supports 'none' or 'fc' (dropout before fc), got {cfg.dropout!r}")
    if cfg.input_size is None or cfg.input_size < 1:
        raise ConfigError(f"model.input_size must be positive, got {cfg.input_size}")


def _resnet(cfg: ModelConfig, *, cifar_stem: bool) -> ResNet18:
    _check_fixed(cfg)
    return ResNet18(
        cifar_stem=cifar_stem,
        first_pool=bool(cfg.first_pool),
        batchnorm=bool(cfg.batchnorm),
        dropout_p=float(cfg.dropout_p or 0.0) if cfg.dropout == "fc" else 0.0,
        input_size=int(cfg.input_size or 32),
        num_classes=cfg.num_classes,
    )


# Fields with the same value in both presets; dropout_p 0.2 (used only with dropout "fc") is this project's choice.
_FIXED = {"widths": STAGE_WIDTHS, "hidden": 0, "bn_position": "before", "dropout": "none", "dropout_p": 0.2}


@register_model("resnet18", batchnorm=True, first_pool=False, input_size=32, **_FIXED)
def resnet18(cfg: ModelConfig) -> ResNet18:
    """A CIFAR-stem variant of seed 002's ResNet-18 (``shared/seeds/002_b0a0b4f54b9b656e.txt``; 78-80% top-1).

    Seed 002's own network is ``resnet18_tv``. This is
    ``torchvision.models.resnet18(weights=None, num_classes=10)`` adapted to
    32x32 inputs (11,173,962 parameters against torchvision's 11,181,642): the
    stem conv is 3x3 with stride 1 and its max pooling is the ``first_pool``
    setting (default off), so layer1 sees 32x32 maps. The seed only says "final
    classification layer modified for 10 classes"; the stem adaptation is this
    project's (the standard one for CIFAR).

    Settings: ``batchnorm: false`` replaces BatchNorm with ``nn.Identity`` (see
    :class:`ResNet18`); ``dropout: fc`` puts ``Dropout(dropout_p)`` before ``fc``;
    ``dropout: conv``/``both``, ``bn_position: after``, ``hidden`` or other
    ``widths`` raise ``ConfigError``. ``weights`` may name a checkpoint of this
    preset (torchvision's ImageNet file has a 7x7 stem: use ``resnet18_imagenet``).

    Seed recipe: Adam 1e-3, StepLR, 20 epochs, 90/10 train/validation split,
    normalisation.

    Shapes:
        (B, 3, 32, 32) -> (B, num_classes).
    """
    return _resnet(cfg, cifar_stem=True)


@register_model("resnet18_tv", batchnorm=True, first_pool=True, input_size=32, **_FIXED)
def resnet18_tv(cfg: ModelConfig) -> ResNet18:
    """Seed 002's ResNet-18 as its code builds it (``shared/seeds/002_b0a0b4f54b9b656e.txt``; 78-80% top-1).

    ``torchvision.models.resnet18(weights=None, num_classes=10)`` itself: the ImageNet stem
    (7x7 stride-2 conv, 3x3 stride-2 max pooling) on 32x32 inputs, so layer1 sees 8x8 maps and
    layer4 1x1; 11,181,642 parameters, torchvision's names, shapes and initialisation. The seed
    "imported from ``torchvision.models``", trained "from scratch" with the "final
    classification layer modified for 10 classes"; it has no public repository, and nothing in
    its README adapts the stem. The CIFAR-stem ``resnet18`` (3x3 stride-1 stem, no pooling,
    11,173,962 parameters) is this project's variant.

    Settings: ``first_pool`` keeps the stem's max pooling (default on, torchvision's);
    ``batchnorm: false`` replaces BatchNorm with ``nn.Identity`` (see :class:`ResNet18`);
    ``dropout: fc`` puts ``Dropout(dropout_p)`` before ``fc``; ``input_size`` resizes inputs
    inside ``forward`` (default 32: none). ``dropout: conv``/``both``, ``bn_position: after``,
    ``hidden`` or other ``widths`` raise ``ConfigError``.

    Seed recipe: Adam 1e-3, StepLR, 20 epochs, 90/10 train/validation split, normalisation, no
    augmentation: ``studies/cnn_vs_resnet.yaml``.

    Shapes:
        (B, 3, 32, 32) -> (B, num_classes).
    """
    return _resnet(cfg, cifar_stem=False)


@register_model(
    "resnet18_imagenet", batchnorm=True, first_pool=True, input_size=224, trainable=("layer4", "fc"), **_FIXED
)
def resnet18_imagenet(cfg: ModelConfig) -> ResNet18:
    """Seed 001's transfer learning (``shared/seeds/001_f4b157d342105146.txt``; reports 91.95% best test accuracy).

    torchvision's ResNet-18 with its original ImageNet stem (7x7 stride-2 conv,
    max pooling = ``first_pool``, default on), ImageNet weights from the local
    file ``model.weights``, and a new 10-class ``fc`` (torchvision's 1000-class
    ``fc`` is dropped when loading). Inputs (B, 3, 32, 32) are resized inside
    ``forward`` to ``input_size`` (default 224, as the seed's ``Resize(224)``)
    with bilinear interpolation. Only modules under ``trainable`` (default
    ``layer4`` and ``fc``, as in the seed) train; the others are frozen, and
    their BatchNorm layers stay in eval mode during training (running
    statistics of the weights file; the seed's notebook most likely let them
    update under ``model.train()``). ``trainable: []`` fine-tunes everything.

    The seed trains 10 epochs with Adam 1e-4 on the unfrozen parameters, batch
    64, resize to 224 + horizontal flip + ImageNet normalisation (no crop, no
    colour jitter). Normalisation must be ImageNet's: a study sets
    ``augment.mean: [0.485, 0.456, 0.406]`` and ``augment.std: [0.229, 0.224,
    0.225]`` (``IMAGENET_MEAN``, ``IMAGENET_STD``).

    Raises:
        ConfigError: ``model.weights`` is not set (this machine cannot download
            the weights; the message says where to get them), or ``batchnorm``
            is off (the pretrained weights include BatchNorm).

    Shapes:
        (B, 3, 32, 32) -> (B, num_classes).
    """
    if cfg.weights is None:
        raise ConfigError(
            f"model.weights: resnet18_imagenet needs torchvision's ImageNet ResNet-18 weights in a local file "
            f"(they are not downloaded here). Get {ResNet18_Weights.IMAGENET1K_V1.url} and set "
            f"model.weights to its path (e.g. --set model.weights=/path/to/resnet18-f37072fd.pth)"
        )
    if not cfg.batchnorm:
        raise ConfigError("model.batchnorm: resnet18_imagenet's pretrained weights include BatchNorm; keep it true")
    return _resnet(cfg, cifar_stem=False)
