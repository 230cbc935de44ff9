"""A seed's own training code beside this engine, on the same images: do they learn alike?

Trains the seed's network (``--study seed000``: ``cnn4``, seed 000's ``CIFARClassifier``, 2,553,994
parameters; ``--study seed003``: ``cnn_s003``, seed 003's ``CIFAR10CNN``, 3,359,370 parameters) three
ways per seed (each way draws its own initial weights and data order from the seed) and prints the
mean training loss of every epoch and the final test top-1. For seed 000:

a. the seed's code: its ``data/loader.py`` transforms (torchvision v2 ``RandomCrop(32, padding=4)``,
   ``RandomHorizontalFlip``, ``ColorJitter(0.2, 0.2, 0.2, 0.05)``, ``Normalize``,
   ``RandomErasing(p=0.25, scale=(0.02, 0.15))`` on float images, one image at a time) in a
   shuffled ``DataLoader`` of batch 128 that keeps the last partial batch, and its
   ``network/model.py`` ``_run_epoch`` loop (Adam 1e-3, loss averaged over batches), fp32;
b. this engine (``core.train.fit``, ``studies/seeds/seed000.yaml``'s settings) in fp32;
c. this engine in bf16 (``train.precision: bf16``; skipped where the CPU or GPU has no bf16).

For seed 003, (a) is its ``src/dataset.py`` training transform (torchvision v1 on a PIL image:
``RandomHorizontalFlip``, ``RandomRotation(15)``, ``ToTensor``, ``Normalize`` with its own mean and
std) in a shuffled ``DataLoader`` of batch 32, and the training step of its ``src/train.py`` (Adam 1e-3,
loss averaged over batches); (b) and (c) train ``studies/seeds/seed003.yaml``'s settings. Both seeds'
validation is left out (``data.val_fraction: 0``, no early stopping): every way trains the same images
for the same epochs and tests the last one.

Where (a) and (b) agree, the engine trains what the seed's code trains, and a gap between
``ablate``'s seed-000 figure and the seed's own has another source (the data, the seed's runs);
(b) against (c) shows what bf16 changes. One seed is one draw: ``--seeds 0,1`` trains each way
per seed. Usage::

    ABLATE_DATA=../shared/data/cifar10-jpeg.tar.gz python benchmarks/seed000_fidelity.py
        [--study seed000|seed003] [--epochs 3] [--train-subset 10000] [--seeds 0,1] [--device auto] [--workers 2]

Sources of (a): github.com/MaherovskyiDenys/CIFAR10-Image-Classification-with-PyTorch-CNN-from-scratch,
files ``data/loader.py`` and ``network/model.py`` (seed 000); github.com/Rybsonbvb/Convolution-CIFAR10,
files ``src/dataset.py`` and ``src/train.py`` (seed 003).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as v1
from torchvision.transforms import v2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ablations.study import load_study  # noqa: E402
from core.config import apply_overrides  # noqa: E402
from core.data import DataError, load_cifar10, make_splits  # noqa: E402
from core.models import create_model  # noqa: E402
from core.precision import resolve_precision  # noqa: E402
from core.train import fit, resolve_config, select_device  # noqa: E402

MEAN = [0.49139968, 0.48215827, 0.44653124]  # seed 000's data/loader.py
STD = [0.24703233, 0.24348505, 0.26158768]
MEAN_003 = (0.4914, 0.4822, 0.4465)  # seed 003's src/dataset.py
STD_003 = (0.2023, 0.1994, 0.2010)
BATCH = {"seed000": 128, "seed003": 32}  # seed 000's network/train.py; seed 003's get_dataloaders default


class SeedTransforms(Dataset):
    """A seed's training (or test) transform over uint8 ``(N, 3, 32, 32)`` images, one image at a time.

    ``study="seed000"``: its ``transforms_train``/``transforms_test`` (torchvision v2 on float images);
    ``study="seed003"``: its ``train_transform``/``test_transform`` (torchvision v1 on a PIL image, as
    ``torchvision.datasets.CIFAR10`` hands it over). Items are ``((3, 32, 32) float32, label)``.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, train: bool, study: str = "seed000") -> None:
        self.x, self.y = x.cpu(), y.cpu()
        if study == "seed003":
            aug = [v1.RandomHorizontalFlip(), v1.RandomRotation(15)] if train else []
            self.t = v1.Compose([v1.ToPILImage(), *aug, v1.ToTensor(), v1.Normalize(MEAN_003, STD_003)])
            return
        head = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        aug = [
            v2.RandomCrop(32, padding=4),
            v2.RandomHorizontalFlip(p=0.5),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05),
        ]
        tail = [v2.Normalize(mean=MEAN, std=STD)] + ([v2.RandomErasing(p=0.25, scale=(0.02, 0.15))] if train else [])
        self.t = v2.Compose(head + (aug if train else []) + tail)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.t(self.x[i]), int(self.y[i])


def seed_code(cfg, splits, epochs: int, workers: int, device, study: str = "seed000") -> tuple[list[float], float]:
    """The seed's loop (seed 000's ``_run_epoch``; seed 003's ``train`` without its validation, the same
    step): per-epoch mean training loss and test top-1 (percent) after ``epochs``."""
    torch.manual_seed(cfg.train.seed)
    model = create_model(cfg.model).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(cfg.train.seed)
    train = DataLoader(
        SeedTransforms(splits.train_x, splits.train_y, True, study),
        batch_size=BATCH[study],
        shuffle=True,
        generator=g,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    losses = []
    for _ in range(epochs):
        model.train()
        total = 0.0
        for xb, yb in train:
            xb, yb = xb.to(device), yb.to(device)
            loss = loss_fn(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        losses.append(total / len(train))
    model.eval()
    test = DataLoader(SeedTransforms(splits.test_x, splits.test_y, False, study), batch_size=1000)
    correct = 0
    with torch.no_grad():
        for xb, yb in test:
            correct += (model(xb.to(device)).argmax(1).cpu() == yb).sum().item()
    return losses, 100 * correct / len(splits.test_y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", choices=sorted(BATCH), default="seed000", help="whose code and recipe")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-subset", type=int, default=10000, help="class-balanced training images (0: all 50,000)")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of (a)")
    args = p.parse_args()

    study = load_study(ROOT / f"studies/seeds/{args.study}.yaml", "full", {})
    base = study.cell_config(study.cells()[0])
    device = select_device(args.device)
    try:
        data = load_cifar10()
    except DataError as exc:
        sys.exit(f"Error: {exc}")
    subset = args.train_subset or None
    splits = make_splits(data, val_fraction=0.0, split_seed=0, train_subset=subset)
    print(
        f"{args.study}'s code against this engine: {base.model.name}, {len(splits.train_y):,} training images, "
        f"{args.epochs} epochs, batch {BATCH[args.study]}, Adam 1e-3; device {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    ways = [("a. seed's code, fp32", None), ("b. engine, fp32", "fp32")]
    if resolve_precision("auto", device) == "bf16":  # native bf16 only (core.precision)
        ways.append(("c. engine, bf16", "bf16"))
    print(f"{'way':24s} {'seed':>4s}  train_loss by epoch{'':10s} test top-1   seconds")
    for seed in [int(s) for s in args.seeds.split(",")]:
        for label, precision in ways:
            sets = {"train.seed": seed, "train.epochs": args.epochs, "data.train_subset": subset}
            sets |= {"data.val_fraction": 0.0, "train.early_stopping": None}  # the same images, the last epoch
            sets["train.device"] = str(device)
            if precision:
                sets["train.precision"] = precision
            cfg = apply_overrides(resolve_config(base), sets)
            t0 = time.perf_counter()
            if precision is None:
                losses, acc = seed_code(cfg, splits, args.epochs, args.workers, device, args.study)
            else:
                r = fit(cfg, splits)
                losses, acc = [h["train_loss"] for h in r.history], 100 * r.test["test_acc"]
            shown = " ".join(f"{x:.3f}" for x in losses)
            print(f"{label:24s} {seed:4d}  {shown:28s} {acc:8.2f}%  {time.perf_counter() - t0:8.0f}")


if __name__ == "__main__":
    main()
