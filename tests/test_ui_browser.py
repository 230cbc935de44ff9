"""``ablate ui STUDY`` in a real browser: headless Chromium on the page it prints.

The store is made with ablate's own tracking code (``Tracker``: the experiment,
the parent run with the tags and ``config.yaml`` the runner writes, one child
run per cell); the runs are fabricated, since what is tested is the UI's view of
them. Needs Debian's ``chromium`` (``.ci/run`` installs it) and the ``playwright``
package (the dev extra); skipped with the reason when either is missing.

``ABLATE_UI_SCREENSHOT=PATH`` also saves the first view there (``docs/ui.png``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# arm -> seed -> test_acc: four digits, so the table shows them whole
VALUES = {"true": {0: 0.5512, 1: 0.5634, 2: 0.5578}, "false": {0: 0.5101, 1: 0.5243, 2: 0.5187}}
KEY = "batchnorm:smoke:0123456789ab"


def make_store(uri: str) -> tuple[str, str, dict[str, str]]:
    """A finished 2-arm x 3-seed batchnorm study, logged as the runner logs it: (experiment, parent, cell -> run)."""
    from ablations.tracking import TAG, Tracker

    tracker = Tracker(uri)
    exp = tracker.experiment("batchnorm")
    tags = {f"{TAG}study": "batchnorm", f"{TAG}profile": "smoke", "optuna.study": KEY}
    parent = tracker.create_parent(exp, KEY, "batchnorm (smoke)", tags)
    for key, value in {
        "factors": json.dumps({"batchnorm": ["true", "false"]}),
        "seeds": "[0, 1, 2]",
        "metric": "test_acc",
        "direction": "maximize",
    }.items():
        tracker.client.set_tag(parent, f"{TAG}{key}", value)
    tracker.log_config(
        parent,
        {
            "study": "batchnorm",
            "question": "Does BatchNorm help cnn4?",
            "profile": "smoke",
            "overrides": {"train.epochs": 2},
            "factors": {"batchnorm": [True, False]},
            "seeds": [0, 1, 2],
            "metric": {"name": "test_acc", "direction": "maximize"},
            "alpha": 0.05,
            "baseline": {},
            "claims": [],
        },
    )
    cells = {}
    for arm, by_seed in VALUES.items():
        for seed, acc in by_seed.items():
            name = f"batchnorm={arm} seed={seed}"
            run = tracker.start_cell(
                exp,
                parent,
                name,
                {"model.name": "cnn4", "model.batchnorm": arm, "train.seed": seed, "factor.batchnorm": arm},
                {**tags, f"{TAG}cell": name, f"{TAG}arm": f"batchnorm={arm}", f"{TAG}seed": str(seed)},
            )
            for epoch in (1, 2):
                tracker.log_metrics(
                    run, {"train_loss": 2.0 / epoch, "val_loss": 2.1 / epoch, "train_acc": acc, "val_acc": acc}, epoch
                )
            tracker.log_metrics(run, {"test_acc": acc, "test_loss": 1.2}, 2)
            tracker.end(run)
            cells[name] = run
    tracker.end(parent)
    return exp, parent, cells


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"ablate ui exited: {proc.stdout.read()}")
            time.sleep(1)
    pytest.fail(f"the MLflow UI did not answer {url} within {timeout_s:.0f} s")


def test_first_view_shows_the_child_runs_with_levels_and_metric(tmp_path):
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the dev extra)")
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    exp, parent, cells = make_store(uri)

    port = _free_port()
    cmd = [sys.executable, "-m", "ablations.cli", "ui", "batchnorm", "--port", str(port), "--tracking-uri", uri]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path, env=env)
    try:
        first = proc.stdout.readline()
        assert first.startswith(f"MLflow UI for {uri} on http://127.0.0.1:{port}"), first
        line = proc.stdout.readline()
        assert line.startswith("batchnorm (profile smoke): "), line
        url = line.split(": ", 1)[1].strip()
        assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/{exp}/runs?workflowType=machine_learning")
        report = proc.stdout.readline()
        assert report.strip().endswith(f"/#/experiments/{exp}/runs/{parent}?workflowType=machine_learning"), report
        _wait_for(f"http://127.0.0.1:{port}/health", proc, 240)

        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.goto(url)
            rows = {}
            for name in cells:  # every child run is on the first view, none collapsed under its parent
                row = page.locator("[role=row]", has=page.get_by_text(name, exact=True)).first
                row.wait_for(timeout=120_000)
                # the grid draws a row in parts (pinned name column, scrolled columns), one row-index
                parts = page.locator(f"[role=row][row-index='{row.get_attribute('row-index')}']")
                rows[name] = "\n".join(parts.all_inner_texts())
            if os.environ.get("ABLATE_UI_SCREENSHOT"):
                time.sleep(2)  # let the last cells render
                page.screenshot(path=os.environ["ABLATE_UI_SCREENSHOT"])
            body = page.inner_text("body")
            final_url = page.url
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    for arm, by_seed in VALUES.items():
        for seed, acc in by_seed.items():
            text = rows[f"batchnorm={arm} seed={seed}"]
            assert f"{acc:.4f}".rstrip("0") in text, text  # the study metric ...
            assert arm in text.replace(f"batchnorm={arm}", "")  # ... and the factor level, in their own columns
    assert "Group: batchnorm=true" in body and "Group: batchnorm=false" in body  # one group per arm
    assert "test_acc" in body and "factor.batchnorm" in body  # the columns' headers
    assert "workflowType=machine_learning" in final_url  # model training, not GenAI's traces overview

    from mlflow import MlflowClient

    client = MlflowClient(uri)
    assert client.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    note = client.get_run(parent).data.tags["mlflow.note.content"]  # the per-arm summary on the parent run
    assert note.startswith("Does BatchNorm help cnn4?") and "55.75" in note and "51.77" in note
    logged = {f.path for f in client.list_artifacts(parent, "report")}
    assert {"report/report.md", "report/arms.json", "report/effects.png"} <= logged
