"""A small residual CNN for CIFAR-10, registered for ``ablate`` as the model ``small_resnet``.

Written as in any PyTorch project; the only line that knows about ``ablate`` is the decorator, which
names the model and declares its two options with their defaults. A study file imports this file
(``imports: [models.py]``) and varies the options like any other setting
(``model.options.residual: [true, false]``).
"""

import torch
from torch import nn

from ablations import register_model


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the input when ``residual`` (He et al. 2016), then ReLU."""

    def __init__(self, channels: int, kernel_size: int, residual: bool) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + x if self.residual else y)


class SmallResNet(nn.Module):
    """Stem (3 -> 32), a block, pool, widen (32 -> 64), a block, pool, global mean, linear.

    Shapes:
        (B, 3, 32, 32) -> (B, num_classes).
    """

    def __init__(self, kernel_size: int = 3, residual: bool = True, num_classes: int = 10) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size, padding=pad, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            Block(32, kernel_size, residual),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size, padding=pad, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            Block(64, kernel_size, residual),
            nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(-2, -1)))  # global average pooling


@register_model("small_resnet", options={"kernel_size": 3, "residual": True})
def build(cfg) -> nn.Module:
    """The network for a resolved model config: ``cfg.options`` holds both options, ``cfg.num_classes`` 10."""
    return SmallResNet(cfg.options["kernel_size"], cfg.options["residual"], cfg.num_classes)
