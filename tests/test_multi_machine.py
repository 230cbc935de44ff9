"""Many machines, on loopback: Optuna storage on PostgreSQL, runs on an MLflow tracking server.

`.ci/run` starts both services with `.ci/services.sh` and exports their URLs; without them the
test is skipped. Locally: `bash -c 'source .ci/services.sh && .venv/bin/python -m pytest -q
tests/test_multi_machine.py'`.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
STUDY = str(ROOT / "studies" / "batchnorm.yaml")
CELLS = {f"batchnorm={b} seed={s}" for b in ("true", "false") for s in (0, 1, 2)}
POSTGRES = os.environ.get("ABLATE_TEST_POSTGRES")
SERVER = os.environ.get("ABLATE_TEST_MLFLOW_SERVER")
# Long enough per cell (several seconds on 2 cores) that the second worker joins while cells remain.
SETS = ["--set", "train.epochs=2", "--set", "data.train_subset=480"]

pytestmark = pytest.mark.skipif(
    not (POSTGRES and SERVER), reason="ABLATE_TEST_POSTGRES / ABLATE_TEST_MLFLOW_SERVER unset (see .ci/services.sh)"
)


def ablate(*args, log: Path):
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ablations.cli", *args], stdout=out, stderr=subprocess.STDOUT, text=True
        )


@pytest.mark.e2e
def test_run_and_a_joining_worker_share_postgres_and_the_tracking_server(tmp_path, real_archive):
    from ablations.study import load_study, parse_sets

    # The server is shared with other tests (tests/test_slurm.py runs this study too): find this run's
    # parent by its study key, which the profile and the --set values decide.
    key = load_study(Path(STUDY), "smoke", parse_sets(SETS[1::2])).key
    stores = ["--storage", POSTGRES, "--tracking-uri", SERVER]
    # Machine 1 starts the study; machine 2 joins once the study's parent run is on the server.
    first = ablate("run", STUDY, "--profile", "smoke", *SETS, "--no-report", *stores, log=tmp_path / "run.log")
    client = MlflowClient(SERVER)
    mine = f"tags.`ablate.role` = 'parent' and tags.`ablate.study_key` = '{key}'"
    deadline = time.monotonic() + 180
    while True:
        exp = client.get_experiment_by_name("batchnorm")
        parents = client.search_runs([exp.experiment_id], mine) if exp else []
        if parents:
            break
        if first.poll() is not None or time.monotonic() > deadline:
            first.kill()
            pytest.fail("the study never started:\n" + (tmp_path / "run.log").read_text())
        time.sleep(0.5)
    second = ablate("worker", STUDY, "--profile", "smoke", *SETS, *stores, log=tmp_path / "worker.log")
    assert first.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()
    assert second.wait(timeout=600) == 0, (tmp_path / "worker.log").read_text()

    trials = optuna.load_study(study_name=key, storage=POSTGRES).get_trials()
    complete = [t.user_attrs["cell"] for t in trials if t.state.name == "COMPLETE"]
    assert sorted(complete) == sorted(CELLS)  # every cell exactly once
    assert len({t.user_attrs["worker"] for t in trials if t.state.name == "COMPLETE"}) == 2  # both machines worked

    runs = client.search_runs([exp.experiment_id], max_results=1000)
    cells = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.info.run_name for r in cells if r.info.status == "FINISHED") == sorted(CELLS)
    for run in cells:  # metrics and artifacts reached the server
        assert "test_acc" in run.data.metrics
        assert {"checkpoint", "learning_curves.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert len(client.search_runs([exp.experiment_id], mine)) == 1  # one parent run for the study
