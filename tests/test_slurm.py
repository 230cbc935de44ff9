"""`ablate run --launcher slurm`: the workers as a Slurm job array, on a real one-node Slurm cluster.

`.ci/services.sh` starts PostgreSQL, an MLflow tracking server and (`.ci/slurm.sh`) slurmctld, slurmd and
munged on loopback, and exports ABLATE_TEST_POSTGRES, ABLATE_TEST_MLFLOW_SERVER, ABLATE_TEST_SLURM and
SLURM_CONF. Locally: `bash -c 'source .ci/services.sh && .venv/bin/python -m pytest tests/test_slurm.py -q'`.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from ablations.cli import main
from ablations.slurm import SlurmError, check_shared_stores, parse_time

ROOT = Path(__file__).resolve().parents[1]
STUDY = str(ROOT / "studies" / "batchnorm.yaml")
CELLS = {f"batchnorm={b} seed={s}" for b in ("true", "false") for s in (0, 1, 2)}
POSTGRES = os.environ.get("ABLATE_TEST_POSTGRES")
SERVER = os.environ.get("ABLATE_TEST_MLFLOW_SERVER")
SLURM = os.environ.get("ABLATE_TEST_SLURM")
needs_slurm = pytest.mark.skipif(
    not (SLURM and POSTGRES and SERVER),
    reason=os.environ.get("ABLATE_TEST_SLURM_SKIP")
    or "ABLATE_TEST_SLURM / ABLATE_TEST_POSTGRES / ABLATE_TEST_MLFLOW_SERVER unset (source .ci/services.sh)",
)


def test_slurm_refuses_sqlite_and_local_stores_with_what_to_use():
    result = CliRunner().invoke(
        main,
        ["run", STUDY, "--profile", "smoke", "--launcher", "slurm", "--workers", "2", "--storage", "sqlite:///x.db"],
    )
    assert result.exit_code == 2
    assert "--storage sqlite:///" in result.output and "postgresql://" in result.output
    assert "--tracking-uri" in result.output and "tracking server" in result.output
    with pytest.raises(SlurmError, match="tracking-uri"):
        check_shared_stores("file:///tmp/mlruns", "postgresql://u@h/db")
    check_shared_stores("http://tracking:5000", "postgresql://u@h/db")  # shared: accepted


def test_slurm_options_need_the_slurm_launcher_and_times_parse_as_slurm_writes_them():
    result = CliRunner().invoke(main, ["run", STUDY, "--profile", "smoke", "--slurm-partition", "gpu"])
    assert result.exit_code == 2 and "--slurm-partition needs --launcher slurm" in result.output
    assert [parse_time(t) for t in ("90", "30:00", "2:00:00", "1-0", "1-02:30", "0:0:30")] == [
        90,
        30,
        120,
        1440,
        1590,
        1,
    ]
    with pytest.raises(SlurmError):
        parse_time("two hours")


def slurm_run(tmp_path: Path, *sets: str, log: str = "run.log") -> subprocess.Popen:
    args = [
        *("run", STUDY, "--profile", "smoke", "--launcher", "slurm", "--workers", "2"),
        *("--storage", POSTGRES, "--tracking-uri", SERVER),
        *("--slurm-cpus-per-worker", "1", "--slurm-time", "20", "--slurm-folder", str(tmp_path / "jobs")),
        # a fresh study each time (a new recipe hash), also against services that outlive one test run
        *("--set", f"data.split_seed={random.randrange(1, 10**6)}"),
        *[x for s in sets for x in ("--set", s)],
    ]
    out = open(tmp_path / log, "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "ablations.cli", *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal would
    )


def squeue() -> list[str]:
    return subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, check=True).stdout.split(
        "\n"
    )[:-1]


def study_of(log: str):
    """The Optuna study and MLflow child runs of the study a log's run started (its parent run id)."""
    parent = log.split("MLflow parent run ")[1].split()[0] if "MLflow parent run " in log else None
    client = MlflowClient(SERVER)
    if parent is None:  # interrupted before the summary: the newest parent of the experiment
        exp = client.get_experiment_by_name("batchnorm")
        runs = client.search_runs([exp.experiment_id], "tags.`ablate.role` = 'parent'", order_by=["start_time DESC"])
        parent = runs[0].info.run_id
    run = client.get_run(parent)
    trials = optuna.load_study(study_name=run.data.tags["ablate.study_key"], storage=POSTGRES).get_trials()
    children = client.search_runs([run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=1000)
    return trials, children


@needs_slurm
@pytest.mark.e2e
def test_slurm_job_array_trains_every_cell_once_and_prints_the_table(tmp_path, real_archive):
    proc = slurm_run(tmp_path)
    assert proc.wait(timeout=900) == 0, (tmp_path / "run.log").read_text()
    log = (tmp_path / "run.log").read_text()
    assert "slurm: submitted 2 worker job(s)" in log and "6/6 cells finished" in log
    assert "trained 6 cell(s)" in log and "baseline arm:" in log  # the summary and the table
    trials, children = study_of(log)
    complete = [t.user_attrs["cell"] for t in trials if t.state.name == "COMPLETE"]
    assert sorted(complete) == sorted(CELLS)  # every cell exactly once
    assert len({t.user_attrs["worker"] for t in trials if t.state.name == "COMPLETE"}) == 2  # both jobs worked
    assert sorted(r.info.run_name for r in children if r.info.status == "FINISHED") == sorted(CELLS)
    assert not [r for r in children if r.info.status == "RUNNING"]
    assert squeue() == []  # no job left in the queue


@needs_slurm
@pytest.mark.e2e
def test_ctrl_c_cancels_the_submitted_jobs_and_leaves_no_run_running(tmp_path, real_archive):
    proc = slurm_run(tmp_path, "train.epochs=40", log="interrupted.log")
    deadline = time.monotonic() + 300
    while (
        "RUNNING" not in (tmp_path / "interrupted.log").read_text()
        or "0/6 cells finished, 2 running" not in (tmp_path / "interrupted.log").read_text()
    ):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the jobs never started training:\n" + (tmp_path / "interrupted.log").read_text())
        time.sleep(1)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=180) == 130
    log = (tmp_path / "interrupted.log").read_text()
    assert "slurm: cancelled job(s)" in log and "resume with: ablate run" in log
    assert squeue() == []
    trials, children = study_of(log)
    assert not [t for t in trials if t.state.name == "RUNNING"]  # each worker failed its trial on the SIGTERM
    assert children and {r.info.status for r in children} == {"KILLED"}
