"""Shared fixtures: tiny in-memory data and isolated stores."""

from __future__ import annotations

import os

import pytest
import torch

from core.data import CLASSES, Splits


def tiny_splits(n_train: int = 64, n_val: int = 16, n_test: int = 32, seed: int = 0) -> Splits:
    """Random uint8 images (N, 3, 32, 32) with labels 0..9: enough to exercise the loop."""
    g = torch.Generator().manual_seed(seed)

    def part(n: int):
        return (torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % 10)

    (tx, ty), (vx, vy), (sx, sy) = part(n_train), part(n_val), part(n_test)
    return Splits(tx, ty, vx, vy, sx, sy, CLASSES)


@pytest.fixture
def real_archive() -> str:
    """Path of the real CIFAR-10 archive from $ABLATE_DATA; skips the test when unset."""
    path = os.environ.get("ABLATE_DATA")
    if not path or not os.path.exists(path):
        pytest.skip("ABLATE_DATA is not set to the CIFAR-10 archive")
    return path
