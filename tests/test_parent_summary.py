"""The parent run as the study's summary (each arm's mean and interval, each effect's interval as MLflow
metrics, at each look; the effect-by-epoch figure) and the cells' factor levels and seed as Optuna params."""

from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

import ablations.runner as runner
from ablations.report import build_report, load_runs, metric_key, summary_metrics
from ablations.search import CellGrid, cell_space, record_params
from ablations.study import load_study
from tests.conftest import tiny_splits

TINY = (
    "name: {name}\nquestion: q\nbase: {{train.epochs: 2, train.batch_size: 16, train.device: cpu}}\n"
    "factors:\n  batchnorm: [true, false]\nseeds: [0, 1, 2]\n"
)


@pytest.fixture
def tiny_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("ABLATE_OPTUNA_STORAGE", raising=False)
    monkeypatch.setattr(runner, "load_splits", lambda cfg: tiny_splits())
    return tmp_path


def test_metric_names_are_ones_mlflow_accepts():
    from mlflow.utils.validation import _validate_metric_name

    for name in ("arm.batchnorm=false.test_acc_mean", "effect.bn=on x drop=fc.low", "arm.rot=[1, 2].x"):
        _validate_metric_name(metric_key(name))
    assert metric_key("arm.batchnorm=false.test_acc_mean") == "arm.batchnorm:false.test_acc_mean"


def test_a_sequential_study_logs_its_answer_on_the_parent_run_at_each_look(tiny_store):
    path = tiny_store / "seq.yaml"
    path.write_text(TINY.format(name="seq") + "sequential: {max_seeds: 5, step: 2}\n")
    study = load_study(path)
    summary = runner.run_study(study, progress=False)
    looks = [look["seeds"] for look in summary.looks]
    assert looks and looks[0] == 3
    client = MlflowClient(load_runs("seq").tracking_uri)
    parent = summary.parent_run_id
    mean = client.get_metric_history(parent, "arm.batchnorm:true.test_acc_mean")
    assert [m.step for m in mean] == looks  # one point per look, at its seeds per arm
    assert [m.value for m in client.get_metric_history(parent, "look")] == list(range(1, len(looks) + 1))
    r = build_report(load_runs("seq"))  # the tables of the look it stopped at
    arm = r.arms.set_index("arm").loc["batchnorm=true"]
    assert mean[-1].value == pytest.approx(arm["mean"])
    effect = r.effects.set_index("effect").loc["batchnorm=false"]
    metrics = client.get_run(parent).data.metrics
    assert metrics["effect.batchnorm:false.low"] == pytest.approx(effect["ci_low"])
    assert metrics["effect.batchnorm:false.high"] == pytest.approx(effect["ci_high"])
    assert metrics["arm.batchnorm:false.test_acc_high"] == pytest.approx(
        r.arms.set_index("arm").loc["batchnorm=false", "ci_high"]
    )
    assert summary_metrics(r)["seeds_per_arm"] == looks[-1]
    artifacts = {a.path for a in client.list_artifacts(parent, "report")}
    assert "report/effect_by_epoch.png" in artifacts

    # Optuna's own view: every finished cell's trial carries its level and seed as categorical params
    storage = f"sqlite:///{tiny_store / 'mlruns' / 'optuna.db'}"
    ostudy = optuna.load_study(study_name=study.key, storage=storage)
    done = ostudy.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 2 * looks[-1]
    for t in done:
        level, seed = t.user_attrs["cell"].split(" seed=")
        assert t.params == {"batchnorm": level.removeprefix("batchnorm="), "seed": int(seed)}
        assert t.distributions["batchnorm"] == CategoricalDistribution(["true", "false"])
        assert t.distributions["seed"] == CategoricalDistribution([0, 1, 2, 3, 4])  # every seed up to the cap
    assert {t.params["seed"] for t in done} == set(range(looks[-1]))


def test_a_fixed_study_logs_its_answer_once_it_has_trained(tiny_store):
    path = tiny_store / "fixed.yaml"
    path.write_text(TINY.format(name="fixed").replace("seeds: [0, 1, 2]", "seeds: [0, 1]"))
    summary = runner.run_study(load_study(path), progress=False)
    metrics = MlflowClient(load_runs("fixed").tracking_uri).get_run(summary.parent_run_id).data.metrics
    assert metrics["seeds_per_arm"] == 2 and "arm.batchnorm:true.test_acc_mean" in metrics
    assert "effect.batchnorm:false.estimate" in metrics


def test_params_keep_the_recorded_choices_and_a_grown_grid_is_named(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(TINY.format(name="g"))
    study = load_study(path)
    space = cell_space(study)
    assert space == {"batchnorm": ["true", "false"], "seed": [0, 1, 2]}
    ostudy = optuna.create_study(sampler=CellGrid(space))
    cells = study.cells()
    for cell in cells:
        ostudy.enqueue_trial({"batchnorm": cell.arm.split("=")[1], "seed": cell.seed}, user_attrs={"cell": cell.key})
    for cell in cells:
        trial = ostudy.ask()
        assert record_params(ostudy, trial, cell, space) == []
        ostudy.tell(trial, 0.5)
    assert ostudy.best_trial.params.keys() == {"batchnorm", "seed"}
    # a seed added later: Optuna's categorical choices cannot grow, so the seed is left off and named
    grown = study.with_seeds([0, 1, 2, 3])
    extra = grown.cells()[3]
    ostudy.enqueue_trial({"batchnorm": "true", "seed": 3}, user_attrs={"cell": extra.key})
    trial = ostudy.ask()
    assert record_params(ostudy, trial, extra, cell_space(grown)) == ["seed"]
    assert trial.params == {"batchnorm": "true"} and "seed" in ostudy.trials[-1].user_attrs["params_left_out"]
    assert Path(path).exists()
