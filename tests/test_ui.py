"""``ablate ui``'s view of a study, without a browser: the tags it writes and the address it prints.

tests/test_ui_browser.py opens that address in Chromium.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from test_ui_browser import KEY, make_store

from ablations.cli import main
from ablations.tracking import EXPERIMENT_KIND_TAG, MODEL_TRAINING, Tracker
from ablations.ui import VIEW_TAG_PREFIX, UIError, prepare_view, study_url, view_state


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path}/mlruns/mlflow.db"


def test_experiments_are_made_as_model_training_ones(uri):
    tracker = Tracker(uri)
    exp = tracker.experiment("batchnorm")
    assert tracker.client.get_experiment(exp).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING == "custom_model_development"


def test_the_view_groups_the_child_runs_by_arm_with_levels_and_metric(uri):
    exp, parent, _ = make_store(uri)
    tracker = Tracker(uri)
    tracker.client.delete_experiment_tag(exp, EXPERIMENT_KIND_TAG)  # a study made before ablate tagged them
    view = prepare_view(tracker, "batchnorm")
    assert (view.experiment_id, view.parent_run_id, view.profile) == (exp, parent, "smoke")
    tags = tracker.client.get_experiment(exp).tags
    assert tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING
    envelope = json.loads(tags[VIEW_TAG_PREFIX + view.view_id])  # what the UI's "Views" menu lists
    assert envelope["name"] == view.name == "ablate: batchnorm (smoke) by arm" and envelope["createdAt"] > 0
    state = json.loads(envelope["state"])
    assert state["searchFilter"] == f"tags.`optuna.study` = '{KEY}'"  # this study key's runs only
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "ablate.arm"}]
    assert state["groupBy"]["aggregateFunction"] == "average"
    assert state["groupsExpanded"] == {"tag.ablate.arm.batchnorm=true": True, "tag.ablate.arm.batchnorm=false": True}
    assert state["selectedColumns"] == ["metrics.`test_acc`", "params.`factor.batchnorm`", "tags.`ablate.seed`"]
    assert state["orderByKey"] == "metrics.`test_acc`" and state["orderByAsc"] is False
    assert "runsExpanded" not in state  # the UI drops it from a shared view
    url = study_url("http://127.0.0.1:5000", view)
    assert url == (
        f"http://127.0.0.1:5000/#/experiments/{exp}/runs?workflowType=machine_learning"
        f"&viewStateShareKey={view.view_id}&compareRunsMode=TABLE"
    )
    assert prepare_view(tracker, "batchnorm", "smoke").view_id == view.view_id  # the same view, replaced


def test_a_search_view_shows_the_searched_keys_and_the_best_trial_per_arm():
    state = view_state(
        {
            "ablate.search": "true",
            "ablate.search_key": "search_lr:quick:abc",
            "ablate.metric": "val_loss",
            "ablate.direction": "minimize",
            "ablate.factors": "{}",
            "ablate.space": json.dumps(["optim.lr", "model.dropout_p"]),
        }
    )
    assert state["searchFilter"] == "tags.`optuna.study` LIKE 'search_lr:quick:abc%'"
    assert state["selectedColumns"][:3] == ["metrics.`trial_value`", "params.`optim.lr`", "params.`model.dropout_p`"]
    assert state["orderByKey"] == "metrics.`trial_value`"  # the value at the trial's best epoch, not its last
    assert state["groupBy"]["aggregateFunction"] == "min" and state["orderByAsc"] is True
    assert state["groupsExpanded"] == {"tag.optuna.study.search_lr:quick:abc": True}


def test_unknown_study_or_profile_is_a_clear_error_before_the_ui_starts(uri):
    make_store(uri)
    with pytest.raises(UIError, match="no study 'dropout' in .*studies there: batchnorm"):
        prepare_view(Tracker(uri), "dropout")
    with pytest.raises(UIError, match="no runs of profile 'quick' of study 'batchnorm'"):
        prepare_view(Tracker(uri), "batchnorm", "quick")
    out = CliRunner().invoke(main, ["ui", "dropout", "--tracking-uri", uri])
    assert out.exit_code == 1 and "no study 'dropout'" in out.output and "MLflow UI for" not in out.output


def test_open_waits_for_the_ui_then_opens_the_page(monkeypatch):
    import http.server
    import threading

    from ablations import cli

    opened = []
    monkeypatch.setattr(cli.webbrowser, "open", opened.append)

    class Proc:  # the mlflow ui process, still running
        def poll(self):
            return None

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        cli._open_when_up(Proc(), base, f"{base}/#/experiments/1/runs", timeout_s=20)
    finally:
        server.shutdown()
    assert opened == [f"{base}/#/experiments/1/runs"]
