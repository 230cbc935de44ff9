"""Every shipped study smoke-runs end to end on the real archive (`ablate run STUDY --profile smoke`)."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from ablations.cli import main

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted(p for p in (ROOT / "studies").rglob("*.yaml") if p.stem not in ("batchnorm", "transfer_resnet18"))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow/Optuna store for all studies (creating an SQLite store takes seconds)."""
    return tmp_path_factory.mktemp("store")


@pytest.mark.e2e
@pytest.mark.parametrize("path", STUDIES, ids=lambda p: str(p.relative_to(ROOT)))
def test_smoke_run(path, store, real_archive):
    args = ["--tracking-uri", f"sqlite:///{store}/mlflow.db", "--storage", f"sqlite:///{store}/optuna.db"]
    out = CliRunner().invoke(main, ["run", str(path), "--profile", "smoke", "--no-report", *args])
    assert out.exit_code == 0, out.output
    assert "0 failed" in out.output and "trained 0 cell(s)" not in out.output
