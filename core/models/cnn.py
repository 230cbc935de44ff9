"""One configurable plain CNN and its seed presets.

Every setting an ablation toggles is a constructor argument of
:class:`ConfigurableCNN`: BatchNorm on/off, dropout placement and rate,
max pooling in the first block, widths per block. Presets are thin functions
over it, registered by name.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from core.config import ConfigError, ModelConfig
from core.models.registry import register_model

DROPOUT_PLACEMENTS = ("none", "conv", "fc", "both")


class ConfigurableCNN(nn.Module):
    """conv -> [BN] -> ReLU blocks with optional pooling and dropout, then a classifier.

    Each block is ``Conv2d(3x3, padding 1) -> BatchNorm2d (if batchnorm) -> ReLU
    -> MaxPool2d(2) (if pooled) -> Dropout2d (if dropout in conv, both)``. After
    the last block the features are flattened and fed to ``Dropout (if dropout
    in fc, both) -> Linear(-> num_classes)``, or to a hidden layer first when
    ``hidden`` is given.

    Args:
        widths: output channels of each conv block, e.g. ``(32, 64, 128, 256)``.
        pool: per block, whether a 2x2 max pooling follows it.
        batchnorm: BatchNorm2d after each conv, before the activation (seed 000:
            "most effective when used before activation and pooling").
        dropout: where dropout goes: ``none``, ``conv`` (after each block),
            ``fc`` (before the classifier) or ``both``.
        dropout_p: the dropout probability.
        hidden: width of an optional hidden fully connected layer.
        num_classes: output logits.
        image_size: input height and width in pixels (32 for CIFAR-10).

    Raises:
        ConfigError: unknown dropout placement, or widths and pool of different lengths.

    Shapes:
        input float (B, 3, image_size, image_size) -> logits (B, num_classes).
    """

    def __init__(
        self,
        widths: Sequence[int],
        pool: Sequence[bool],
        *,
        batchnorm: bool = True,
        dropout: str = "fc",
        dropout_p: float = 0.1,
        hidden: int | None = None,
        num_classes: int = 10,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        if dropout not in DROPOUT_PLACEMENTS:
            raise ConfigError(f"model.dropout must be one of {DROPOUT_PLACEMENTS}, got {dropout!r}")
        if len(widths) != len(pool):
            raise ConfigError(f"model.widths has {len(widths)} blocks but pooling is given for {len(pool)}")
        blocks: list[nn.Module] = []
        in_ch, size = 3, image_size
        for out_ch, pooled in zip(widths, pool, strict=True):
            layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=not batchnorm)]
            if batchnorm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(nn.ReLU(inplace=True))
            if pooled:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            if dropout in ("conv", "both") and dropout_p > 0:
                layers.append(nn.Dropout2d(dropout_p))
            blocks.append(nn.Sequential(*layers))
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        head: list[nn.Module] = [nn.Flatten()]
        features = in_ch * size * size  # cnn4: 256 * 4 * 4 = 4096
        if hidden:
            head += [nn.Linear(features, hidden), nn.ReLU(inplace=True)]
            features = hidden
        if dropout in ("fc", "both") and dropout_p > 0:
            head.append(nn.Dropout(dropout_p))
        head.append(nn.Linear(features, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) float -> (B, num_classes) logits."""
        return self.classifier(self.features(x))


@register_model(
    "cnn4",
    batchnorm=True,
    dropout="fc",
    dropout_p=0.1,
    first_pool=False,
    widths=(32, 64, 128, 256),
)
def cnn4(cfg: ModelConfig) -> ConfigurableCNN:
    """Seed 000's CNN (``shared/seeds/000_cec1d97c41c0932c.txt``; reports ~89% test top-1).

    Four conv -> BN -> ReLU blocks, 2x2 max pooling after blocks 2-4 only (seed
    000 removed the first block's pooling), dropout 0.1 before the linear
    classifier only. The seed does not give channel widths; this project uses
    32, 64, 128, 256 (a 32x32 input leaves 256 x 4 x 4 = 4096 features), a
    size that a 2-core CPU trains in minutes per epoch.
    """
    assert cfg.widths is not None and cfg.dropout is not None
    pool = [bool(cfg.first_pool)] + [True] * (len(cfg.widths) - 1)
    return ConfigurableCNN(
        cfg.widths,
        pool,
        batchnorm=bool(cfg.batchnorm),
        dropout=cfg.dropout,
        dropout_p=float(cfg.dropout_p or 0.0),
        num_classes=cfg.num_classes,
    )
