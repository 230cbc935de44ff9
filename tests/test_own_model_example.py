"""examples/own_model end to end, as a user runs it: a model file this project has never seen, imported by its
study file, trained as a sequential study by two worker processes at a tiny budget; its report; the code
logged with every run; and ``ablate predict`` on one of its runs from a fresh process in another folder.

The data is a tiny CIFAR-10-shaped PNG tree written here ($ABLATE_DATA), so the test needs no archive.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from PIL import Image

from core.data import CLASSES

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "own_model"


def _png_tree(root: Path, per_class: int = 20) -> Path:
    """root/{train,test}/<class>/NNNN.png: random 32x32 images, enough for the smoke profile's subsets."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    root / split / name / f"{i}.png"
                )
    return root


def _ablate(*args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, "-m", "ablations.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, f"ablate {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out


def test_own_model_example_runs_sequentially_with_two_workers_and_predicts_from_a_fresh_shell(tmp_path):
    env = {
        **os.environ,
        "ABLATE_DATA": str(_png_tree(tmp_path / "data")),
        "ABLATE_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": str(ROOT),
    }
    stores = ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]
    work = tmp_path / "project"
    work.mkdir()
    run = _ablate(
        "run",
        str(EXAMPLE / "study.yaml"),
        "--profile",
        "smoke",
        "--workers",
        "2",
        "--max-seeds",
        "4",
        *stores,
        "--storage",
        f"sqlite:///{tmp_path}/optuna.db",
        cwd=work,
        env=env,
    )
    assert "model.options.residual=true" in run.stdout and "sequential:" in run.stdout
    assert "the report and its figures are on parent run" in run.stdout  # what ablate ui shows

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("own_model")
    parent = client.search_runs([exp.experiment_id], "tags.`ablate.role` = 'parent'")[0]
    cells = client.search_runs([exp.experiment_id], "tags.`ablate.role` = 'cell' and attributes.status = 'FINISHED'")
    assert len(cells) >= 6  # 2 arms x 3 seeds at the first look, more if it went on
    text = (EXAMPLE / "models.py").read_text()
    sha = hashlib.sha256(text.encode()).hexdigest()
    assert json.loads(parent.data.tags["ablate.code"]) == [{"name": "models.py", "sha256": sha}]
    for cell in cells[:2]:
        logged = Path(client.download_artifacts(cell.info.run_id, "code/models.py", str(tmp_path)))
        assert logged.read_text() == text
        assert cell.data.params["model.options.kernel_size"] == "3"

    report = _ablate("report", "own_model", *stores, cwd=work, env=env)
    assert "model.options.residual" in report.stdout

    elsewhere = tmp_path / "elsewhere"  # a fresh process in a folder with neither the study nor its models.py
    elsewhere.mkdir()
    image = elsewhere / "frog.png"
    Image.fromarray(np.full((48, 48, 3), 90, dtype=np.uint8)).save(image)
    env_fresh = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    pred = _ablate(
        "predict", str(image), "--run", cells[0].info.run_id, "--top-k", "2", *stores, cwd=elsewhere, env=env_fresh
    )
    assert pred.stdout.startswith(f"{image}: ") and "1. " in pred.stdout
