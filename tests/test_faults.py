"""Faults in the services and the disk lose nothing: real processes, the real archive, the smoke budget.

Each test starts what it breaks itself (an MLflow tracking server, a PostgreSQL cluster, a small tmpfs),
so it needs no other service; each promise is stated in docs/faults.md.
"""

import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
STUDY = str(ROOT / "studies" / "batchnorm.yaml")
CELLS = {f"batchnorm={b} seed={s}" for b in ("true", "false") for s in (0, 1, 2)}
SMOKE = ["--profile", "smoke", "--set", "train.epochs=3", "--no-report"]
pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ablate(*args, log: Path, env=None) -> subprocess.Popen:
    out = open(log, "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "ablations.cli", *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(predicate, what: str, proc=None, log: Path | None = None, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            if proc is not None and proc.poll() is None:
                proc.kill()
            pytest.fail(f"{what} did not happen in time:\n" + (log.read_text() if log else ""))
        time.sleep(0.3)


def finished_cells(log: Path) -> int:
    """Cells a run's log reports finished (`[2/6] batchnorm=true seed=1: test_acc 12.50%`)."""
    return len(re.findall(r"^\[\d+/6\] .*: test_acc", log.read_text(), re.M)) if log.exists() else 0


def check_every_cell_once(trials, runs) -> None:
    """Every cell COMPLETE exactly once, one FINISHED run each, no trial or run left RUNNING."""
    assert sorted(t.user_attrs["cell"] for t in trials if t.state.name == "COMPLETE") == sorted(CELLS)
    assert not [t for t in trials if t.state.name == "RUNNING"]
    cells = [r for r in runs if r.data.tags.get("ablate.role") == "cell"]
    assert sorted(r.info.run_name for r in cells if r.info.status == "FINISHED") == sorted(CELLS)
    assert not [r for r in runs if r.info.status == "RUNNING"], [r.info.run_name for r in runs]
    assert len([r for r in runs if r.data.tags.get("ablate.role") == "parent"]) == 1


def study_trials(storage: str):
    names = optuna.get_all_study_names(storage)
    assert len(names) == 1
    return optuna.load_study(study_name=names[0], storage=storage).get_trials()


def all_runs(tracking_uri: str):
    client = MlflowClient(tracking_uri)
    return client.search_runs([client.get_experiment_by_name("batchnorm").experiment_id], max_results=1000)


class MlflowServer:
    """`mlflow server` on loopback with a SQLite backend; stop() and start() keep its port and data."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.proc = root, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.root / "server.log", "a")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root}/server.db"]
            + ["--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1"]
            + ["--port", str(self.port), "--workers", "1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: stop() ends the workers it starts too
        )
        import urllib.request

        def healthy() -> bool:
            try:
                return urllib.request.urlopen(f"{self.uri}/health", timeout=2).status == 200
            except OSError:
                return False

        wait_for(healthy, "the MLflow server start", self.proc, self.root / "server.log", timeout=120)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    yield server
    server.stop()


def test_tracking_server_stopped_mid_study_stops_cleanly_and_the_same_command_resumes(
    tmp_path, real_archive, mlflow_server
):
    # Few, short retries: the client gives up in seconds instead of minutes.
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    storage = f"sqlite:///{tmp_path}/optuna.db"
    args = ["run", STUDY, *SMOKE, "--tracking-uri", mlflow_server.uri, "--storage", storage]
    first = ablate(*args, log=tmp_path / "first.log", env=env)
    wait_for(lambda: finished_cells(tmp_path / "first.log") >= 1, "a finished cell", first, tmp_path / "first.log")
    mlflow_server.stop()
    assert first.wait(timeout=300) == 1, (tmp_path / "first.log").read_text()
    out = (tmp_path / "first.log").read_text()
    assert "the study stopped: the MLflow tracking store http://127.0.0.1" in out and "resume with: ablate run" in out
    assert "Traceback" not in out
    kept = [t for t in study_trials(storage) if t.state.name == "COMPLETE"]
    assert kept and not [t for t in study_trials(storage) if t.state.name == "RUNNING"]

    mlflow_server.start()
    again = ablate(*args, log=tmp_path / "again.log", env=env)
    assert again.wait(timeout=600) == 0, (tmp_path / "again.log").read_text()
    assert f"trained {6 - len(kept)} cell(s), {len(kept)} already finished" in (tmp_path / "again.log").read_text()
    check_every_cell_once(study_trials(storage), all_runs(mlflow_server.uri))


def _pg_bin() -> Path | None:
    found = shutil.which("initdb") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None)
    return Path(os.path.realpath(found)).parent if found else None


class Postgres:
    """A private PostgreSQL cluster on loopback (as user postgres when we are root), with database `optuna`."""

    def __init__(self, root: Path) -> None:
        self.bin, self.dir, self.port = _pg_bin(), root / "pg", free_port()
        self.as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.url = f"postgresql://ablate@127.0.0.1:{self.port}/optuna"

    def ctl(self, *args: str) -> None:
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir.parent}"
        cmd = [*self.as_pg, str(self.bin / "pg_ctl"), "-D", str(self.dir), "-l", str(self.dir.parent / "pg.log")]
        subprocess.run([*cmd, "-w", "-o", opts, *args], check=True, capture_output=True)

    def start(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.dir.parent, "postgres")
        subprocess.run(
            [*self.as_pg, str(self.bin / "initdb"), "-D", str(self.dir), "-U", "ablate", "--auth=trust"],
            check=True,
            capture_output=True,
        )
        self.ctl("start")
        subprocess.run(
            [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "ablate", "optuna"], check=True
        )

    def stop(self) -> None:
        subprocess.run(
            [*self.as_pg, str(self.bin / "pg_ctl"), "-D", str(self.dir), "-m", "immediate", "stop"],
            capture_output=True,
        )


@pytest.fixture
def postgres(tmp_path):
    if _pg_bin() is None:
        pytest.skip("no PostgreSQL (initdb) installed; .ci/services.sh installs it")
    # Not under tmp_path: user postgres must reach it, and pytest's folders are root's alone (0700).
    root = Path(tempfile.mkdtemp(prefix="ablate-faults-pg."))
    os.chmod(root, 0o755)
    pg = Postgres(root)
    try:
        pg.start()
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_restarted_mid_study_with_two_workers_loses_nothing(tmp_path, real_archive, postgres):
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["run", STUDY, *SMOKE, "--workers", "2", "--tracking-uri", tracking, "--storage", postgres.url]
    proc = ablate(*args, log=tmp_path / "run.log")
    wait_for(lambda: finished_cells(tmp_path / "run.log") >= 1, "a finished cell", proc, tmp_path / "run.log")
    postgres.ctl("-m", "fast", "restart")  # every connection is cut; the server is back a moment later
    assert proc.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()
    out = (tmp_path / "run.log").read_text()
    assert "trained 6 cell(s)" in out and "worker exit codes" not in out  # both workers rode it out
    check_every_cell_once(study_trials(postgres.url), all_runs(tracking))


def test_two_runs_of_one_study_started_at_once_train_each_cell_once(tmp_path, real_archive):
    stores = ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage", f"sqlite:///{tmp_path}/optuna.db"]
    args = ["run", STUDY, "--profile", "smoke", "--no-report", *stores]
    procs = [ablate(*args, log=tmp_path / f"run{i}.log") for i in (1, 2)]
    for i, proc in enumerate(procs, 1):
        assert proc.wait(timeout=600) == 0, (tmp_path / f"run{i}.log").read_text()
    trials = study_trials(f"sqlite:///{tmp_path}/optuna.db")
    check_every_cell_once(trials, all_runs(f"sqlite:///{tmp_path}/mlflow.db"))
    assert {t.user_attrs.get("worker") for t in trials if t.state.name == "COMPLETE"} == {
        f"{socket.gethostname()}:{p.pid}" for p in procs
    }  # both really ran cells


def test_artifact_disk_full_fails_the_cell_with_a_clear_error_and_the_next_run_trains_it(tmp_path, real_archive):
    artifacts = tmp_path / "artifacts"  # where a sqlite:///DIR/mlflow.db store keeps its artifacts
    artifacts.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(artifacts)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    stores = ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage", f"sqlite:///{tmp_path}/optuna.db"]
    args = ["run", STUDY, "--profile", "smoke", "--no-report", *stores]
    try:
        full = ablate(*args, log=tmp_path / "full.log")
        assert full.wait(timeout=600) == 1, (tmp_path / "full.log").read_text()
    finally:
        subprocess.run(["umount", str(artifacts)], check=True)  # the disk has room again
    out = (tmp_path / "full.log").read_text()
    assert "the study stopped: no space to write" in out and "No space left on device" in out
    assert "Traceback" not in out.split("Error: the study stopped")[1]
    trials = study_trials(f"sqlite:///{tmp_path}/optuna.db")
    assert [t.state.name for t in trials] == ["FAIL"] + ["WAITING"] * 5  # the first cell failed, the rest wait
    failed = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(trials[0].user_attrs["mlflow_run_id"])
    assert failed.info.status == "FAILED" and "No space left on device" in failed.data.tags["ablate.failure"]

    again = ablate(*args, log=tmp_path / "again.log")
    assert again.wait(timeout=600) == 0, (tmp_path / "again.log").read_text()
    runs = all_runs(f"sqlite:///{tmp_path}/mlflow.db")
    check_every_cell_once(study_trials(f"sqlite:///{tmp_path}/optuna.db"), runs)
    for db in ("mlflow.db", "optuna.db"):  # nothing corrupt
        with sqlite3.connect(tmp_path / db) as con:
            assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for run in runs:
        if run.info.status == "FINISHED" and run.data.tags.get("ablate.role") == "cell":
            path = client.download_artifacts(run.info.run_id, "checkpoint/best.pt", str(tmp_path / run.info.run_id))
            assert torch.load(path, weights_only=True)
