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
engine's defaults (channels_last, ``train.precision`` auto: bf16 on CUDA and on
a CPU with native bf16, see ``core.precision``), or each precision of
``--precision fp32,bf16``: then (b) and (c) of each precision run one after the
other, ``--rounds`` times (3 by default), and the fastest round of each is compared
(other work on a shared host only slows a round down).

It prints what the CPU offers (torch's CPU capability, oneDNN's bf16, AVX512-BF16
and AMX), b/a (the speed-up over the old way), b/c of each precision (how close
the engine is to pure compute) and, with two precisions, the second over the
first (``bf16 / fp32: N.NNx``, engine images/s). Usage::

    ABLATE_DATA=../shared/data/cifar10-jpeg.tar.gz python benchmarks/throughput.py [--steps 40] [--device auto]
        [--model cnn4|resnet18|...] [--precision auto|fp32|bf16|fp16|fp32,bf16] [--rounds N] [--no-seed-style]
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from core.augment import BatchAugment, ReferenceDataset, reference_transform
from core.config import RunConfig, apply_overrides
from core.data import DataError, load_cifar10, make_splits
from core.models import create_model
from core.precision import PRECISIONS, cpu_summary, resolve_precision
from core.train import Callback, autocast_context, fit, memory_format, select_device


def _step(model, opt, xb, yb, autocast=None):
    with autocast or nullcontext():  # forward and loss, as core.train does
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
    autocast, _ = autocast_context(cfg, device)  # the engine's precision (train.precision, auto resolved)
    for i in range(warmup):
        _step(model, opt, *batches[i % len(batches)], autocast)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        _step(model, opt, *batches[i % len(batches)], autocast)
    _sync(device)
    return steps * bs / (time.perf_counter() - t0)


def _precisions(text: str, device) -> list[str]:
    """``--precision`` as a list of distinct resolved precisions (``auto`` -> what the engine picks here)."""
    out: list[str] = []
    for name in text.split(","):
        name = name.strip()
        if name not in ("auto", *PRECISIONS):
            sys.exit(f"Error: --precision takes auto, {', '.join(PRECISIONS)} (comma-separated), not {name!r}")
        resolved = resolve_precision(name, device)
        if resolved not in out:
            out.append(resolved)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed optimiser steps per pipeline")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="cnn4")
    parser.add_argument(
        "--precision",
        default="auto",
        help="train.precision of (b) and (c), comma-separated, e.g. fp32,bf16 (default auto: what the engine picks)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="times each precision's (b) and (c) (default: 3 with two precisions, else 1; the fastest counts)",
    )
    parser.add_argument("--no-seed-style", action="store_true", help="skip (a), the per-image PIL pipeline")
    args = parser.parse_args()

    device = select_device(args.device)
    precisions = _precisions(args.precision, device)
    rounds = args.rounds or (3 if len(precisions) > 1 else 1)
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
    if device.type == "cpu":
        print(cpu_summary())
    elif device.type == "cuda":
        print(f"gpu {torch.cuda.get_device_name(device)}, bf16 supported {torch.cuda.is_bf16_supported()}")
    seed = None
    if not args.no_seed_style:
        seed = seed_style(cfg, splits, args.steps, args.warmup, device)
        print(f"{'a. seed style (PIL per image, DataLoader 2 workers, fp32)':58s} {seed:9.0f} images/s")
    # (b) and (c) of every precision, one after the other, `rounds` times: drifts of a shared host
    # (other jobs, clock) fall on every precision alike. The fastest round of each is reported: other work
    # on a shared host only ever slows a round down (the rule of Python's timeit, which reports the minimum).
    rates: dict[tuple[str, str], list[float]] = {}
    for r in range(rounds):
        for p in precisions:
            run = apply_overrides(cfg, {"train.precision": p})
            for key, fn in (("b", engine), ("c", compute_only)):
                rates.setdefault((key, p), []).append(fn(run, splits, args.steps, args.warmup, device))
        if rounds > 1:
            done = ", ".join(f"{p} engine {rates['b', p][-1]:.0f} compute {rates['c', p][-1]:.0f}" for p in precisions)
            print(f"round {r + 1}/{rounds}: {done} images/s")
    med = {key: max(v) for key, v in rates.items()}
    head = "fastest of the rounds, images/s" if rounds > 1 else "images/s"
    print(f"{head:58s} " + " ".join(f"{p:>9s}" for p in precisions))
    for key, label in (
        ("b", "b. ablate engine (uint8 on device, batched augmentation)"),
        ("c", "c. compute only (batches ready beforehand)"),
    ):
        print(f"{label:58s} " + " ".join(f"{med[key, p]:9.0f}" for p in precisions))
    for p in precisions:
        tag = f" ({p})" if len(precisions) > 1 else ""
        if seed:
            print(f"engine / seed style{tag}:   {med['b', p] / seed:.2f}x")
        print(f"engine / compute only{tag}: {med['b', p] / med['c', p]:.2f}x")
    base = precisions[0]
    for p in precisions[1:]:
        engine_ratio, compute_ratio = med["b", p] / med["b", base], med["c", p] / med["c", base]
        print(f"{p} / {base}: {engine_ratio:.2f}x (engine; compute only {compute_ratio:.2f}x)")


if __name__ == "__main__":
    main()
