"""Parallel workers and crash safety, with real processes on the real archive (smoke budget)."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from ablations.search import this_worker, worker_gone

ROOT = Path(__file__).resolve().parents[1]
STUDY = str(ROOT / "studies" / "batchnorm.yaml")
CELLS = {f"batchnorm={b} seed={s}" for b in ("true", "false") for s in (0, 1, 2)}


def ablate(*args, env=None, log=None):
    """Start ``ablate ARGS``; output to ``log`` (a file nobody has to drain) or a pipe."""
    out = open(log, "w") if log else subprocess.PIPE  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        [sys.executable, "-m", "ablations.cli", *args],
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        text=True,
        # A shell without job control starts background jobs with SIGINT ignored, and Python then installs
        # no KeyboardInterrupt handler: give the child the terminal's default, as a user's shell would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def stores(tmp_path):
    return ["--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--storage", f"sqlite:///{tmp_path}/optuna.db"]


def trials(tmp_path):
    names = optuna.get_all_study_names(f"sqlite:///{tmp_path}/optuna.db")
    return optuna.load_study(study_name=names[0], storage=f"sqlite:///{tmp_path}/optuna.db").get_trials()


def cell_runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("batchnorm")
    return client.search_runs([exp.experiment_id], max_results=1000)


def assert_each_cell_finished_once(tmp_path):
    finished = [t.user_attrs["cell"] for t in trials(tmp_path) if t.state.name == "COMPLETE"]
    assert sorted(finished) == sorted(CELLS)
    runs = cell_runs(tmp_path)
    done = [r.info.run_name for r in runs if r.data.tags.get("ablate.role") == "cell" and r.info.status == "FINISHED"]
    assert sorted(done) == sorted(CELLS)
    assert len([r for r in runs if r.data.tags.get("ablate.role") == "parent"]) == 1
    return runs


def ready_to_kill(db: Path) -> bool:
    """One trial COMPLETE and one RUNNING with its MLflow run id set.

    Read with sqlite3 in read-only mode: opening the file with Optuna while the worker creates
    the schema would race it (both run Alembic's migrations).
    """
    if not db.exists():
        return False
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            states = {s for (s,) in con.execute("SELECT state FROM trials")}
            tracked = con.execute(
                "SELECT COUNT(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                "WHERE t.state = 'RUNNING' AND a.key = 'mlflow_run_id'"
            ).fetchone()[0]
    except sqlite3.Error:  # schema not there yet
        return False
    return "COMPLETE" in states and tracked > 0


def wait_until_mid_cell(proc, tmp_path: Path, log: str) -> None:
    """Return once ``proc`` has finished one cell and is training the next; fail if it never does."""
    deadline = time.monotonic() + 300
    while not ready_to_kill(tmp_path / "optuna.db"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no cell finished in time:\n" + (tmp_path / log).read_text())
        time.sleep(0.3)


@pytest.mark.e2e
def test_two_workers_share_the_queue_and_train_each_cell_once(tmp_path, real_archive):
    proc = ablate("run", STUDY, "--profile", "smoke", "--workers", "2", "--no-report", *stores(tmp_path))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "trained 6 cell(s)" in out
    assert out.count("worker ") == 2  # both workers reported
    assert_each_cell_finished_once(tmp_path)
    pids = {t.user_attrs.get("worker") for t in trials(tmp_path)}
    assert len(pids) == 2  # the work really was shared


@pytest.mark.e2e
def test_sigkill_mid_cell_then_rerun_at_once_completes_every_cell_once(tmp_path, real_archive):
    # The default 60 s grace: the rerun must not wait for the heartbeat, the dead PID on this host says enough.
    env = {k: v for k, v in os.environ.items() if k != "ABLATE_HEARTBEAT_GRACE"}
    args = ["run", STUDY, "--profile", "smoke", "--set", "train.epochs=3", "--no-report", *stores(tmp_path)]
    proc = ablate(*args, env=env, log=tmp_path / "killed.log")
    wait_until_mid_cell(proc, tmp_path, "killed.log")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = [t for t in trials(tmp_path) if t.state.name == "RUNNING"]
    assert len(killed) == 1  # its trial is left RUNNING: nobody could tell Optuna
    assert killed[0].user_attrs["worker_pid"] == proc.pid

    again = ablate(*args, env=env)  # at once
    out, _ = again.communicate(timeout=600)
    assert again.returncode == 0, out
    assert "held by another worker" not in out
    runs = assert_each_cell_finished_once(tmp_path)
    dead = [r for r in runs if r.info.run_id == killed[0].user_attrs["mlflow_run_id"]]
    assert dead[0].info.status == "FAILED"
    assert f"process {proc.pid} on {socket.gethostname()} is gone" in dead[0].data.tags["ablate.failure"]


def _attrs_of(proc) -> dict:
    """this_worker() as process ``proc`` would have recorded it."""
    me = this_worker()
    stat = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[-1].split()
    return {**me, "worker": f"{me['worker_host']}:{proc.pid}", "worker_pid": proc.pid, "worker_start": stat[19]}


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_a_worker_on_this_host_is_gone_once_its_process_is_and_not_before():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    attrs = _attrs_of(proc)
    assert worker_gone(attrs) is None  # alive
    assert "another process" in worker_gone({**attrs, "worker_start": "1"})  # the PID was reused
    proc.kill()
    time.sleep(0.2)
    assert "not yet reaped" in worker_gone(attrs)  # a zombie is dead too
    proc.wait()
    assert worker_gone(attrs) == f"process {proc.pid} on {attrs['worker_host']} is gone"
    # Another host, another container (PID namespace) or no record at all: only the heartbeat can tell.
    assert worker_gone({**attrs, "worker_host": "elsewhere"}) is None
    assert worker_gone({**attrs, "worker_pidns": "pid:[1]"}) is None
    assert worker_gone({"worker": "x:1"}) is None
    rebooted = {**attrs, "worker_boot": "an-earlier-boot"}
    assert worker_gone(rebooted) == (
        f"{attrs['worker_host']} rebooted since process {proc.pid} ran" if attrs["worker_machine"] else None
    )


def test_fail_stale_trials_fails_a_dead_local_workers_trial_once_and_calls_back(tmp_path):
    from ablations.search import claim, fail_stale_trials, rdb_storage

    seen = []
    storage = f"sqlite:///{tmp_path}/optuna.db"
    ostudy = optuna.create_study(storage=rdb_storage(storage, lambda s, t: seen.append(t.number)), study_name="s")
    alive, dead = ostudy.ask(), ostudy.ask()
    claim(ostudy, alive)
    claim(ostudy, dead)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead.set_user_attr("worker_pid", proc.pid)  # as if that process had taken it and was killed
    dead.set_user_attr("worker_start", "")
    fail_stale_trials(ostudy)
    other = optuna.load_study(study_name="s", storage=rdb_storage(storage, lambda s, t: seen.append(t.number)))
    fail_stale_trials(other)  # a second look finds nothing new
    states = {t.number: t.state.name for t in ostudy.get_trials()}
    assert states == {alive.number: "RUNNING", dead.number: "FAIL"} and seen == [dead.number]


_POP_QUEUE = """
import sys
import optuna
from ablations.search import rdb_storage

optuna.logging.set_verbosity(optuna.logging.ERROR)
study = optuna.load_study(study_name="q", storage=rdb_storage(sys.argv[1]))
while True:
    trial = study.ask()
    if "i" not in trial.user_attrs:  # the queue is empty: Optuna made a new trial
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        break
    print(trial.user_attrs["i"], flush=True)
"""


def test_workers_popping_one_sqlite_queue_at_once_each_take_a_different_trial(tmp_path):
    """Optuna's claim of a queued trial is a read, then a write; on SQLite, without ``BEGIN IMMEDIATE``
    (ablations.search.serialize_sqlite), two workers read the same WAITING trial and both train it:
    150 trials popped by 4 processes came out as 162 on the old storage."""
    from ablations.search import rdb_storage

    storage = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="q", storage=rdb_storage(storage))
    for i in range(150):
        study.enqueue_trial({}, user_attrs={"i": i})
    procs = [
        subprocess.Popen([sys.executable, "-c", _POP_QUEUE, storage], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    popped = [int(line) for p in procs for line in p.communicate(timeout=300)[0].split()]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(popped) == list(range(150))  # each queued trial taken once, none lost


@pytest.mark.e2e
def test_search_with_two_workers_holds_the_cap_and_logs_best_config_and_plots(tmp_path, real_archive):
    study = str(ROOT / "studies" / "search_lr.yaml")
    proc = ablate("run", study, "--profile", "smoke", "--workers", "2", *stores(tmp_path))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    assert "search search_lr: trained by 2 workers; 3 of 3 finished" in out and "best config" in out
    finished = [t for t in trials(tmp_path) if t.state.name == "COMPLETE"]
    assert len(finished) == 3  # the cap holds across both workers: no fourth trial
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name("search_lr")
    parents = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("ablate.role") == "parent"]
    assert len(parents) == 1
    logged = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"best_config.yaml", "optimization_history.png", "param_importances.png"} <= logged


@pytest.mark.e2e
def test_ctrl_c_marks_the_run_killed_keeps_finished_cells_and_says_how_to_resume(tmp_path, real_archive):
    args = ["run", STUDY, "--profile", "smoke", "--set", "train.epochs=3", "--no-report", *stores(tmp_path)]
    proc = ablate(*args, log=tmp_path / "interrupted.log")
    wait_until_mid_cell(proc, tmp_path, "interrupted.log")
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    assert proc.wait(timeout=120) == 130
    out = (tmp_path / "interrupted.log").read_text()
    assert "resume with: ablate run" in out and "--profile smoke" in out
    by_state = {}
    for t in trials(tmp_path):
        by_state.setdefault(t.state.name, []).append(t)
    assert "RUNNING" not in by_state and by_state["COMPLETE"]  # nothing left dangling, finished work kept
    interrupted = by_state["FAIL"][0].user_attrs["mlflow_run_id"]
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(interrupted)
    assert run.info.status == "KILLED"
