"""Fused seeds against one seed at a time: images/s, memory and the ratio, in one process run.

For each model (``cnn4``, ``resnet18``) and each group size K (1, 2, 4, 8, 16) it trains K seeds
of one config as one fused model with ``core.train.fit_many`` (``train.fuse_seeds=K``; K = 1 is
the ordinary plain-model run) for ``--warmup`` + ``--steps`` optimiser steps and times the steps
after the warm-up. Sequential training of K seeds runs at the K = 1 rate whatever K is, so the
ratio column is the fused rate over the K = 1 rate: above 1 fusing pays.

``--compile both`` also times each K with ``train.compile=on`` (``torch.compile`` of the forward,
fused or not); the ratio stays against eager K = 1, the old way. ``warm-up s`` is the wall time
from the start of the fit to the end of the warm-up steps: model set-up plus, compiled, the
compilation, which a run pays once.

Memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` during the fused run; on the CPU
(no allocator statistics) an estimate of one training step's tensors: parameters, gradients, Adam's
two moments and the activations autograd saves for the backward pass (counted once per storage
with ``torch.autograd.graph.saved_tensors_hooks``).

The images are random uint8 tensors: speed does not depend on what they show, and the benchmark
needs no data set. Usage::

    python benchmarks/fused.py [--device auto] [--models cnn4,resnet18] [--ks 1,2,4,8,16]
                               [--steps N] [--warmup N] [--batch B] [--compile off|on|both]
                               [--precision auto|fp32|bf16|fp32,bf16]

``--precision`` takes ``train.precision`` values, comma-separated (``auto``: what the engine picks
on this device, ``core.precision``); each precision gets its own rows, and its ratio column is
against eager K = 1 in that precision.

Defaults: batch 128, 10 timed steps after 2 warm-up steps on CUDA; batch 32, 2 steps after 1 on
the CPU, so that the whole table takes a few minutes there.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F

from core.config import RunConfig, apply_overrides
from core.data import CLASSES, Splits
from core.fused import Single, Stacked
from core.models import create_model
from core.precision import PRECISIONS, cpu_summary, resolve_precision
from core.train import Callback, autocast_context, fit_many, resolve_config, select_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Clock(Callback):
    """Wall time of the steps after ``warmup`` (synchronised with the device at both ends)."""

    def __init__(self, warmup: int, steps: int, device: torch.device) -> None:
        self.warmup, self.steps, self.device = warmup, steps, device
        self.t0 = self.seconds = self.start = self.warmup_seconds = None

    def on_fit_start(self, cfg: RunConfig, steps_per_epoch: int) -> None:
        self.start = time.perf_counter()

    def on_batch_end(self, epoch: int, step: int, images: int, loss) -> None:
        if step + 1 == self.warmup:
            _sync(self.device)
            self.t0 = time.perf_counter()
            self.warmup_seconds = self.t0 - self.start
        elif step + 1 == self.warmup + self.steps:
            _sync(self.device)
            self.seconds = time.perf_counter() - self.t0


def _splits(n_train: int) -> Splits:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n_train + 10, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.arange(n_train + 10) % 10
    empty_x, empty_y = x[:0], y[:0]
    return Splits(x[:n_train], y[:n_train], empty_x, empty_y, x[n_train:], y[n_train:], CLASSES)


def _cpu_memory_estimate(cfg: RunConfig, k: int, batch: int) -> float:
    """MiB of one training step's tensors for K fused replicas (see the module docstring), in the run's precision."""
    models = [create_model(cfg.model, seed=s) for s in range(k)]
    reps = Single(models[0]) if k == 1 else Stacked(models, torch.device("cpu"))
    reps.train()
    params = reps.trainable()
    param_bytes = sum(p.numel() * p.element_size() for p in params)
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # wrapped (vmap) tensors without a storage
            seen[id(t)] = t.numel() * t.element_size()
        return t

    x = torch.zeros(k, batch, 3, 32, 32)
    autocast, _ = autocast_context(cfg, torch.device("cpu"))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        logits = reps(x)
        loss = F.cross_entropy(logits.flatten(0, 1), torch.zeros(k * batch, dtype=torch.long))
    loss.backward()
    return (4 * param_bytes + sum(seen.values())) / 2**20


def measure(
    cfg: RunConfig, k: int, warmup: int, steps: int, device: torch.device, compiled: bool = False
) -> tuple[float, float, float]:
    """(images/s over all K seeds, memory in MiB, warm-up seconds) of K fused seeds of ``cfg``."""
    run = apply_overrides(
        cfg,
        {
            "train.fuse_seeds": k,
            "train.epochs": 1,
            "train.max_steps": warmup + steps,
            "train.compile": "on" if compiled else "off",
        },
    )
    splits = _splits(cfg.train.batch_size * (warmup + steps))
    clock = _Clock(warmup, steps, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    fit_many(run, list(range(k)), splits, [[clock]] + [[] for _ in range(k - 1)])
    rate = k * cfg.train.batch_size * steps / clock.seconds
    if device.type == "cuda":
        mem = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        mem = _cpu_memory_estimate(resolve_config(run), k, cfg.train.batch_size)
    return rate, mem, clock.warmup_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default="cnn4,resnet18")
    parser.add_argument("--ks", default="1,2,4,8,16", help="group sizes K, comma-separated")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 10 on CUDA, 2 elsewhere)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 2 on CUDA, 1 elsewhere)")
    parser.add_argument("--batch", type=int, default=None, help="batch per seed (default: 128 on CUDA, 32 elsewhere)")
    parser.add_argument(
        "--compile", choices=("off", "on", "both"), default="off", help="train.compile of the rows (both: each K twice)"
    )
    parser.add_argument("--precision", default="auto", help="train.precision of the rows, comma-separated: fp32,bf16")
    args = parser.parse_args()

    device = select_device(args.device)
    on_gpu = device.type == "cuda"
    steps = args.steps or (10 if on_gpu else 2)
    warmup = args.warmup or (2 if on_gpu else 1)
    batch = args.batch or (128 if on_gpu else 32)
    ks = [int(k) for k in args.ks.split(",")]
    name = torch.cuda.get_device_name(device) if on_gpu else f"cpu, {torch.get_num_threads()} threads"
    cuda = f", CUDA {torch.version.cuda}" if on_gpu else ""
    precisions = []
    for p in args.precision.split(","):
        if p not in ("auto", *PRECISIONS):
            raise SystemExit(f"Error: --precision takes auto, {', '.join(PRECISIONS)} (comma-separated), not {p!r}")
        if resolve_precision(p, device) not in precisions:
            precisions.append(resolve_precision(p, device))
    print(f"device {device} ({name}), torch {torch.__version__}{cuda}")
    if device.type == "cpu":
        print(cpu_summary())
    print(f"batch {batch} per seed, {steps} timed steps after {warmup} warm-up, default memory format")
    mem_label = "GPU MiB (peak)" if on_gpu else "MiB (estimate)"
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    print(
        f"{'model':10s} {'precision':>9s} {'K':>3s} {'compile':>7s} {'images/s':>10s} {'per seed':>9s} "
        f"{mem_label:>15s} {'warm-up s':>9s} {'vs sequential':>14s}"
    )
    for model in args.models.split(","):
        for precision in precisions:
            cfg = apply_overrides(
                RunConfig(),
                {
                    "model.name": model,
                    "train.device": str(device),
                    "train.batch_size": batch,
                    "train.precision": precision,
                },
            )
            single = None  # eager K = 1: one seed at a time, the old way
            for compiled in modes:
                for k in ks:
                    try:
                        rate, mem, warm = measure(copy.deepcopy(cfg), k, warmup, steps, device, compiled)
                    except torch.OutOfMemoryError:
                        print(f"{model:10s} {precision:>9s} {k:3d} {'out of memory':>10s}")
                        break
                    if k == 1 and not compiled:
                        single = rate
                    ratio = f"{rate / single:13.2f}x" if single else f"{'(no eager K=1)':>14s}"
                    flag = "on" if compiled else "off"
                    print(
                        f"{model:10s} {precision:>9s} {k:3d} {flag:>7s} {rate:10.0f} {rate / k:9.0f} {mem:15.0f} "
                        f"{warm:9.1f} {ratio}"
                    )


if __name__ == "__main__":
    main()
