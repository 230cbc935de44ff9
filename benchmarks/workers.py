"""Parallel workers on one CPU machine: 1 worker x all cores against N workers x (cores / N) threads.

Runs the same small study (``studies/batchnorm.yaml``, 6 cells, smoke data with
a few more images and epochs) twice in one invocation, each time in fresh
stores under a temporary folder:

a. ``ablate run STUDY`` with 1 worker and ``torch.set_num_threads(cores)``;
b. ``ablate run STUDY --workers N``: N worker processes with cores / N threads each.

It prints the wall time of each (process start, imports, data loading and
MLflow logging included, as a user sees them) and a / b. Usage::

    ABLATE_DATA=../shared/data/cifar10-jpeg.tar.gz python benchmarks/workers.py [--workers 2] [--epochs 2]
        [--train-subset 2000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed_run(study: str, sets: list[str], workers: int, folder: Path) -> float:
    """Seconds of one ``ablate run`` of ``study`` in fresh stores under ``folder``."""
    args = [sys.executable, "-m", "ablations.cli", "run", study, "--profile", "smoke", "--no-report"]
    args += [item for s in sets for item in ("--set", s)]
    args += ["--workers", str(workers)]
    args += ["--tracking-uri", f"sqlite:///{folder}/mlflow.db", "--storage", f"sqlite:///{folder}/optuna.db"]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    start = time.perf_counter()
    out = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"ablate run failed ({workers} worker(s)):\n{out.stdout}\n{out.stderr}")
    return seconds


def main() -> None:
    """Parse the options, run both ways, print the wall times and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=str(ROOT / "studies" / "batchnorm.yaml"))
    parser.add_argument("--workers", type=int, default=2, help="workers of the parallel run")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=2000, help="training images per cell")
    opts = parser.parse_args()
    cores = os.cpu_count() or 1
    sets = [f"train.epochs={opts.epochs}", f"data.train_subset={opts.train_subset}"]
    print(f"study {Path(opts.study).name}, profile smoke with {' '.join(sets)}; {cores} cores")
    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp, "one")
        many = Path(tmp, "many")
        one.mkdir()
        many.mkdir()
        # a: `ablate run` uses torch's default threads (one per core) in its single process
        a = timed_run(opts.study, sets, 1, one)
        print(f"a. 1 worker x {cores} threads: {a:7.1f} s")
        threads = max(1, cores // opts.workers)
        b = timed_run(opts.study, sets, opts.workers, many)
        print(f"b. {opts.workers} workers x {threads} thread(s): {b:7.1f} s")
    print(f"a / b = {a / b:.2f} (above 1: the workers are faster)")


if __name__ == "__main__":
    main()
