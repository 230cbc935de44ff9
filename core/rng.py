"""Common random numbers: one named random stream per purpose, seeded by ``(train.seed, name)``.

Two arms of a study that share ``train.seed`` should share every random draw they can, so that
pairing runs by seed removes the noise the arms do not differ in (common random numbers,
e.g. Glasserman & Yao 1992, "Some guidelines and guarantees for common random numbers"). Every
consumer of randomness in ``core`` therefore draws from its own stream, named by what it is for:

========================= ==================================================================
stream name               used for
========================= ==================================================================
``init:<param name>``     the initial values of one parameter (``core.models.init_weights``)
``dropout:<module name>`` one dropout layer's masks (``core.models.dropout``)
``order``                 the order of the training images in each epoch
``augment:<op>``          one augmentation operation (``crop``, ``flip``, ``rotation``, ...)
``mix:<what>``            batch mixing (``core.tricks.BatchMix``): ``apply`` (whether and which),
                          ``mixup`` and ``cutmix`` (their Beta draws, the box), ``pairs`` (partners)
========================= ==================================================================

so turning rotation on does not shift the crop draws, and a BatchNorm after a conv does not
shift the conv's initial weights. A stream's seed is a stable hash (SHA-256, not Python's
salted ``hash()``) of ``f"{seed}:{name}"``: the same on every machine, process and run.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

__all__ = ["AUGMENT_OPS", "augment_generators", "generator", "numpy_generator", "stream_seed"]

# The augmentation operations with a stream each (core.augment.BatchAugment's draws).
AUGMENT_OPS = ("crop", "flip", "rotation", "brightness", "contrast", "saturation", "hue", "erasing")


def stream_seed(seed: int, name: str) -> int:
    """A 63-bit seed for the stream ``name`` of run seed ``seed``: ``sha256(f"{seed}:{name}")``.

    Args:
        seed: the run's ``train.seed``.
        name: what the stream is for, e.g. ``"order"`` or ``"init:features.0.0.weight"``.

    Returns:
        An int in ``[0, 2**63)``, fit for ``torch.Generator.manual_seed``.
    """
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generator(seed: int, name: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with :func:`stream_seed` ``(seed, name)``."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, name))


def numpy_generator(seed: int, name: str) -> np.random.Generator:
    """A fresh NumPy ``Generator`` (PCG64) seeded with :func:`stream_seed` ``(seed, name)``.

    For draws torch cannot make from a ``torch.Generator``, such as Beta variates (mixup's and
    CutMix's mixing weights): drawn on the CPU, a few numbers per batch, the same on every device.
    """
    return np.random.Generator(np.random.PCG64(stream_seed(seed, name)))


def augment_generators(seed: int, device: torch.device | str = "cpu") -> dict[str, torch.Generator]:
    """One generator per augmentation operation (:data:`AUGMENT_OPS`), streams ``augment:<op>``.

    Pass the result to :class:`core.augment.BatchAugment` as its ``generator``.
    """
    return {op: generator(seed, f"augment:{op}", device) for op in AUGMENT_OPS}
