"""Training throughput: the seed projects' input pipeline against this engine, in one process run.

Trains ``cnn4`` (batch 128, seed 000's augmentations) for a fixed number of
steps three ways and prints images per second of each:

a. seed style: per-image PIL transforms (torchvision RandomCrop, flip,
   ColorJitter, ToTensor, Normalize, RandomErasing) in a DataLoader with 2
   workers, as ``torchvision.datasets.CIFAR10`` + ``transforms`` do;
b. this engine: ``core.train.fit`` with the data on the device as uint8 and
   per-image augmentation done on whole batches (``core.augment.BatchAugment``);
c. compute only: the same optimiser steps on batches prepared beforehand,
   in the engine's memory format and precision (the ceiling for any input
   pipeline).

(a) runs as the seed projects do (contiguous fp32); (b) and (c) use the
engine's defaults (channels_last, and bf16 autocast on CUDA).

It prints b/a (the speed-up over the old way) and b/c (how close the engine
is to pure compute). Usage::

    ABLATE_DATA=../shared/data/cifar10-jpeg.tar.gz python benchmarks/throughput.py [--steps 40] [--device auto]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from core.augment import BatchAugment, ReferenceDataset, reference_transform
from core.config import RunConfig, apply_overrides
from core.data import DataError, load_cifar10, make_splits
from core.models import create_model
from core.train import Callback, autocast_context, fit, memory_format, select_device


def _step(model, opt, xb, yb):
    loss = F.cross_entropy(model(xb), yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def seed_style(cfg: RunConfig, splits, steps: int, warmup: int, device) -> float:
    """Images/s of the per-image PIL pipeline with a 2-worker DataLoader."""
    torch.manual_seed(0)
    model = create_model(cfg.model).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    ds = ReferenceDataset(splits.train_x, splits.train_y, reference_transform(cfg.augment, train=True))
    loader = DataLoader(
        ds,
        batch_size=cfg.train.batch_size,
        shuffle=True,
        num_workers=2,
        drop_last=True,
        persistent_workers=False,
        pin_memory=device.type == "cuda",
    )
    it = iter(loader)
    for _ in range(warmup):
        xb, yb = next(it)
        _step(model, opt, xb.to(device), yb.to(device))
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        xb, yb = next(it)
        _step(model, opt, xb.to(device, non_blocking=True), yb.to(device, non_blocking=True))
    _sync(device)
    return steps * cfg.train.batch_size / (time.perf_counter() - t0)


class _Clock(Callback):
    """Times optimiser steps after ``warmup`` steps (fit's own epoch timer includes the first, slow ones)."""

    def __init__(self, warmup: int, device) -> None:
        self.warmup, self.device, self.t0, self.images = warmup, device, None, 0

    def on_batch_end(self, epoch: int, step: int, images: int, loss) -> None:
        if step + 1 == self.warmup:
            _sync(self.device)
            self.t0 = time.perf_counter()
        elif step + 1 > self.warmup:
            self.images += images

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        _sync(self.device)
        self.rate = self.images / (time.perf_counter() - self.t0)


def engine(cfg: RunConfig, splits, steps: int, warmup: int, device) -> float:
    """Images/s of ``core.train.fit`` (one epoch of ``warmup + steps`` steps) with its default settings."""
    clock = _Clock(warmup, device)
    run = apply_overrides(cfg, {"train.epochs": 1, "train.max_steps": warmup + steps})
    fit(run, splits, [clock])
    return clock.rate


def compute_only(cfg: RunConfig, splits, steps: int, warmup: int, device) -> float:
    """Images/s of optimiser steps on batches augmented beforehand, in the engine's memory format."""
    torch.manual_seed(0)
    fmt = memory_format(cfg, device)
    model = create_model(cfg.model).to(device, memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    aug = BatchAugment(cfg.augment)
    bs = cfg.train.batch_size
    x = splits.train_x[: bs * 4].to(device)
    y = splits.train_y[: bs * 4].to(device)
    batches = [(aug(x[i : i + bs]).contiguous(memory_format=fmt), y[i : i + bs]) for i in range(0, len(x), bs)]
    autocast, _ = autocast_context(cfg, device)
    with autocast:  # same precision as the engine (bf16 on CUDA, fp32 on the CPU)
        for i in range(warmup):
            _step(model, opt, *batches[i % len(batches)])
        _sync(device)
        t0 = time.perf_counter()
        for i in range(steps):
            _step(model, opt, *batches[i % len(batches)])
    _sync(device)
    return steps * bs / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed optimiser steps per pipeline")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="cnn4")
    args = parser.parse_args()

    device = select_device(args.device)
    cfg = apply_overrides(RunConfig(), {"model.name": args.model, "train.device": str(device)})
    try:
        data = load_cifar10()  # $ABLATE_DATA
    except DataError as exc:  # no data set: the CLI's one-line message, not a traceback
        sys.exit(f"Error: {exc}")
    splits = make_splits(data, val_fraction=0.0, split_seed=0, test_subset=10)
    threads = torch.get_num_threads()
    print(
        f"device {device}, torch {torch.__version__}, {threads} threads, model {args.model}, "
        f"batch {cfg.train.batch_size}, {args.steps} timed steps after {args.warmup} warm-up steps"
    )
    rates = {}
    for name, fn in (
        ("a. seed style (PIL per image, DataLoader 2 workers)", seed_style),
        ("b. ablate engine (uint8 on device, batched augmentation)", engine),
        ("c. compute only (batches ready beforehand)", compute_only),
    ):
        rates[name[0]] = fn(cfg, splits, args.steps, args.warmup, device)
        print(f"{name:58s} {rates[name[0]]:9.0f} images/s")
    print(f"engine / seed style:   {rates['b'] / rates['a']:.2f}x")
    print(f"engine / compute only: {rates['b'] / rates['c']:.2f}x")


if __name__ == "__main__":
    main()
