"""End to end: `ablate run` + `ablate report` on the smoke profile with the real archive."""

import os
import shlex
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from ablations.cli import main

STUDY = str(Path("studies/batchnorm.yaml").resolve())


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_dry_run_lists_cells_and_trains_nothing(workdir):
    out = CliRunner().invoke(main, ["run", STUDY, "--profile", "smoke", "--dry-run"])
    assert out.exit_code == 0, out.output
    assert "6 cells" in out.output and "batchnorm=false seed=2" in out.output
    assert "batchnorm: true" in out.output  # the resolved config of the first cell
    assert not (workdir / "mlruns").exists()


def test_help_texts_print_percent_signs_once():
    """click prints help verbatim (no %-formatting as in argparse), so a doubled %% reaches the user."""
    for name in main.commands:
        out = CliRunner().invoke(main, [name, "--help"], terminal_width=200)
        assert out.exit_code == 0, out.output
        assert "%%" not in out.output, f"ablate {name} --help: {out.output}"


def test_typo_in_study_stops_at_once_naming_it(workdir):
    bad = workdir / "bad.yaml"
    bad.write_text(Path(STUDY).read_text().replace("seeds:", "sedes:"))
    out = CliRunner().invoke(main, ["run", str(bad), "--profile", "smoke"])
    assert out.exit_code == 1
    assert f"{bad}: sedes: unknown key; did you mean 'seeds'?" in out.output
    assert not (workdir / "mlruns").exists()  # nothing logged for an invalid study


def test_missing_data_names_the_path(workdir, monkeypatch):
    monkeypatch.setenv("ABLATE_DATA", str(workdir / "nowhere.tar.gz"))
    out = CliRunner().invoke(main, ["run", STUDY, "--profile", "smoke"])
    assert out.exit_code == 1 and "nowhere.tar.gz" in out.output


def test_ctrl_c_resume_command_repeats_the_sets_and_stores(workdir, monkeypatch):
    import ablations.runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ablations.runner, "run_study", interrupted)
    mlflow_uri, optuna_url = f"sqlite:///{workdir}/a b/mlflow.db", f"sqlite:///{workdir}/optuna.db"
    args = ["run", STUDY, "--profile", "smoke", "--set", "train.epochs=2", "--set", "optim.lr=3e-4"]
    args += ["--tracking-uri", mlflow_uri, "--storage", optuna_url, "--workers", "2"]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 130
    resume = next(line for line in out.output.splitlines() if line.startswith("resume with: "))
    words = shlex.split(resume.removeprefix("resume with: "))  # a shell line: the path with a space is quoted
    assert words[:3] == ["ablate", "run", STUDY]
    pairs = list(zip(words[3::2], words[4::2], strict=True))
    assert sorted(pairs) == sorted(
        [
            ("--profile", "smoke"),
            ("--set", "train.epochs=2"),
            ("--set", "optim.lr=3e-4"),
            ("--tracking-uri", mlflow_uri),
            ("--storage", optuna_url),
            ("--workers", "2"),
        ]
    )


@pytest.mark.e2e
def test_run_then_report_then_nothing_to_do(workdir, real_archive):
    from mlflow import MlflowClient

    runner = CliRunner()
    out = runner.invoke(main, ["run", STUDY, "--profile", "smoke"])
    assert out.exit_code == 0, out.output
    assert "trained 6 cell(s), 0 already finished, 0 failed" in out.output
    assert "effect vs baseline" in out.output and "baseline" in out.output

    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("batchnorm")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("ablate.role") == "parent"]
    cells = [r for r in runs if r.data.tags.get("ablate.role") == "cell"]
    assert len(parents) == 1 and len(cells) == 6
    # the report just printed is on the parent run for MLflow's UI: its description and report/ artifacts
    assert f"on parent run {parents[0].info.run_id}" in out.output
    assert "| batchnorm" in parents[0].data.tags["mlflow.note.content"]
    published = {f.path for f in client.list_artifacts(parents[0].info.run_id, "report")}
    assert {"report/report.md", "report/arms.json", "report/effects.png"} <= published
    assert {r.info.run_name for r in cells} == {f"batchnorm={b} seed={s}" for b in ("true", "false") for s in (0, 1, 2)}
    run = next(r for r in cells if r.info.run_name == "batchnorm=false seed=1")
    assert run.info.status == "FINISHED"
    assert run.data.params["model.batchnorm"] == "False" and run.data.params["factor.batchnorm"] == "false"
    assert run.data.params["train.seed"] == "1" and run.data.params["optim.lr"] == "0.001"
    tags = run.data.tags
    assert tags["mlflow.parentRunId"] == parents[0].info.run_id
    assert tags["ablate.profile"] == "smoke" and tags["ablate.seed"] == "1" and "ablate.git_commit" in tags
    assert "optuna.trial_number" in tags and len(tags["ablate.config_hash"]) == 12
    assert {"test_acc", "test_top3", "test_loss", "train_loss", "val_acc"} <= set(run.data.metrics)
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [1]  # smoke: one epoch, step = epoch
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "learning_curves.png", "checkpoint"} <= files
    ckpt = client.download_artifacts(run.info.run_id, "checkpoint/best.pt", str(workdir))
    state = torch.load(ckpt, weights_only=True)
    assert "features.0.0.weight" in state and not any("running_mean" in k for k in state)  # no BatchNorm

    import optuna

    trials = optuna.load_study(study_name=tags["optuna.study"], storage=f"sqlite:///{workdir}/mlruns/optuna.db").trials
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {r.info.run_id for r in cells}

    again = runner.invoke(main, ["run", STUDY, "--profile", "smoke"])
    assert again.exit_code == 0, again.output
    assert "trained 0 cell(s), 6 already finished" in again.output
    assert len(client.search_runs([exp.experiment_id])) == 7  # no new runs

    csv = runner.invoke(main, ["report", "batchnorm", "--format", "csv", "--output", "new/table.csv"])
    assert csv.exit_code == 0, csv.output  # the output's folder is created
    lines = (workdir / "new" / "table.csv").read_text().splitlines()
    assert lines[0].startswith("arm,batchnorm,n,mean,std,ci_low,ci_high,diff") and len(lines) == 3
    listed = runner.invoke(main, ["runs", "batchnorm"]).output.splitlines()  # the run IDs evaluate/predict take
    assert listed[0].startswith("study batchnorm, profile smoke, parent run ") and len(listed) == 3 + 6
    assert listed[3].split()[:2] == ["batchnorm=true", "0"]  # in the file's level order, then by seed
    assert any(line.split()[:2] == ["batchnorm=false", "1"] and run.info.run_id in line for line in listed)
    # evaluate and predict use a finished run's checkpoint and config
    ev = runner.invoke(main, ["evaluate", run.info.run_id, "--output", "eval"])
    assert ev.exit_code == 0, ev.output
    assert "top-1" in ev.output and "truck" in ev.output and (workdir / "eval" / "confusion_matrix.png").exists()
    logged = {f.path for f in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/misclassified.png"} <= logged
    from PIL import Image

    Image.new("RGB", (120, 80), (200, 30, 30)).save(workdir / "red.png")
    pred = runner.invoke(main, ["predict", "red.png", "--run", run.info.run_id, "--top-k", "3"])
    assert pred.exit_code == 0, pred.output
    assert pred.output.startswith("red.png: ") and "  3. " in pred.output

    (workdir / "file").write_text("")
    blocked = runner.invoke(main, ["report", "batchnorm", "--output", "file/table.txt"])
    assert blocked.exit_code == 1 and "cannot write file: " in blocked.output, blocked.output
    md = runner.invoke(main, ["report", "batchnorm", "--format", "markdown"])
    assert md.output.count("| batchnorm") == 1 and "|---" in md.output.replace(":", "-")


def test_report_of_unknown_study_is_a_clear_error(workdir):
    from ablations.tracking import Tracker

    for cmd in (["report", "nosuchstudy"], ["runs", "nosuchstudy"], ["predict", "x.png", "--run", "abc"]):
        out = CliRunner().invoke(main, cmd)  # reading commands create no store where there is none
        assert out.exit_code == 1 and f"no MLflow store at {workdir}/mlruns/mlflow.db" in out.output, out.output
    assert not (workdir / "mlruns").exists()
    Tracker().experiment("other")  # a store with another study in it
    out = CliRunner().invoke(main, ["report", "nosuchstudy"])
    assert out.exit_code == 1 and "no study 'nosuchstudy'" in out.output


def test_ui_serves_the_store_on_loopback(workdir):
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-c", "from ablations.cli import main; main()", "ui", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                    assert resp.status == 200 and b"MLflow" in resp.read()
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(1)
        else:
            pytest.fail("the MLflow UI did not answer within 90 s")
        server = _pgid_of(str(workdir / "mlruns" / "mlflow.db"))  # the mlflow ui process's group
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert (workdir / "mlruns" / "mlflow.db").exists()
    if not Path("/proc/self/stat").exists():  # the process-group checks read Linux's /proc
        return
    assert server is not None and server != os.getpgid(0)  # mlflow runs in a group of its own ...
    assert _group_gone(server, timeout=30)  # ... which ablate ui stops whole: uvicorn, job runner, huey consumers


def _pgid_of(text: str) -> int | None:
    """The process group of the process whose command line contains ``text`` (Linux /proc)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                return os.getpgid(int(cmdline.parent.name))
        except (OSError, ProcessLookupError):
            continue
    return None


def _group_gone(pgid: int, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)": state ppid pgrp ...
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                alive.append(stat.parent.name)
        if not alive:
            return True
        time.sleep(0.5)
    return False
