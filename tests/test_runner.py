"""The study loop's promises, on tiny in-memory data: failures are recorded, the study goes on,
an interrupted cell is trained again and nothing finished is trained twice."""

from pathlib import Path

import pytest

import ablations.runner as runner
from ablations.study import load_study
from ablations.tracking import resolve_tracking_uri
from tests.conftest import tiny_splits

STUDY = """\
name: tiny
question: does the learning rate matter?
base: {train.epochs: 1, train.batch_size: 16, train.device: cpu}
factors:
  augment.std: [[0.25, 0.25, 0.25], [0.0, 0.0, 0.0]]
seeds: [0, 1]
metric: {name: test_acc, direction: maximize}
"""


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner, "load_splits", lambda cfg: tiny_splits())
    path = Path("tiny.yaml")
    path.write_text(STUDY)
    return path


def _runs(status=None):
    from mlflow import MlflowClient

    client = MlflowClient(resolve_tracking_uri(None))
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], "tags.`ablate.role` = 'cell'")
    return [r for r in runs if status is None or r.info.status == status]


def test_diverging_cells_fail_with_reason_and_the_study_goes_on(env):
    summary = runner.run_study(load_study(env), progress=False)
    assert sorted(summary.trained) == ["augment.std=[0.25, 0.25, 0.25] seed=0", "augment.std=[0.25, 0.25, 0.25] seed=1"]
    assert set(summary.failed) == {"augment.std=[0.0, 0.0, 0.0] seed=0", "augment.std=[0.0, 0.0, 0.0] seed=1"}
    failed = _runs("FAILED")
    assert len(failed) == 2 and all("diverged" in r.data.tags["ablate.failure"] for r in failed)
    assert all(r.data.tags["ablate.outcome"] == "diverged" for r in failed)  # an outcome of its arm
    # a diverged cell has its outcome (the same seed diverges again), so neither it nor a finished one trains again
    again = runner.run_study(load_study(env), progress=False)
    assert again.skipped == 2 and again.trained == [] and again.failed == {} and len(_runs("FAILED")) == 2


def test_interrupted_cell_is_killed_and_trained_again(env, monkeypatch):
    real_fit, calls = runner.fit_many, []

    def fit_then_ctrl_c(cfg, seeds, splits, callbacks, group_size=None):
        calls.append(seeds)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_fit(cfg, seeds, splits, callbacks, group_size)

    monkeypatch.setattr(runner, "fit_many", fit_then_ctrl_c)
    study = load_study(env)
    with pytest.raises(KeyboardInterrupt):
        runner.run_study(study, progress=False)
    assert len(_runs("FINISHED")) == 1 and len(_runs("KILLED")) == 1

    monkeypatch.setattr(runner, "fit_many", real_fit)
    summary = runner.run_study(study, progress=False)
    assert summary.skipped == 1
    assert "augment.std=[0.25, 0.25, 0.25] seed=1" in summary.trained  # the interrupted cell
    assert "augment.std=[0.25, 0.25, 0.25] seed=0" not in summary.trained  # finished: not again
