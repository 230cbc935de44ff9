"""The budget printed before training: calibrated speed, seconds per cell, the GPU-budget warning, the ETA."""

from types import SimpleNamespace

import pytest

import ablations.runner as runner
from ablations.budget import Budget, Eta, calibrate, estimate, format_seconds
from ablations.study import load_study
from tests.conftest import tiny_splits

STUDY = (
    "name: {name}\nquestion: q\nbase: {{train.epochs: {epochs}, train.batch_size: 16, train.device: cpu}}\n"
    "factors:\n  batchnorm: [true, false]\nseeds: [0, 1]\n"
    "profiles:\n  full: {{}}\n  quick: {{train.epochs: 1}}\n"
)


def test_format_seconds():
    assert [format_seconds(s) for s in (42, 420, 2 * 3600 + 300)] == ["42 s", "7 min", "2 h 05 min"]


def test_calibration_measures_a_positive_speed_and_the_estimate_scales_with_epochs(tmp_path):
    splits = tiny_splits(n_train=128)
    one = tmp_path / "one.yaml"
    one.write_text(STUDY.format(name="one", epochs=1))
    ten = tmp_path / "ten.yaml"
    ten.write_text(STUDY.format(name="ten", epochs=10))
    s1, s10 = load_study(one), load_study(ten)
    assert calibrate(s1.cell_config(s1.cells()[0]), splits) > 0
    b1, b10 = estimate(s1, splits), estimate(s10, splits)
    assert set(b1.cell_seconds) == {"batchnorm=true", "batchnorm=false"}
    # ten epochs cost several times one (the calibration's overhead is counted once per cell)
    assert b10.seconds(s10.cells()) > 3 * b1.seconds(s1.cells()) * (min(b1.speed.values()) / max(b10.speed.values()))


def test_eta_uses_measured_cell_times_once_there_are_some():
    cells = [SimpleNamespace(arm="b")] * 3
    eta = Eta(Budget("cpu", {"a": 100.0}, {"a": 10.0}))
    assert eta.remaining(cells) == 30.0  # no arm matches: the mean estimate per cell
    eta.finished(4.0)
    eta.finished(6.0)
    assert eta.remaining(cells) == 15.0


def test_a_cpu_budget_over_three_hours_says_so_and_names_the_quick_profile(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(runner, "load_splits", lambda cfg: tiny_splits())
    monkeypatch.setattr(runner, "estimate", lambda study, splits: Budget("cpu", {"x": 1.0}, {"x": 3 * 3600.0}))
    path = tmp_path / "big.yaml"
    path.write_text(STUDY.format(name="big", epochs=1))
    study = load_study(path, profile="full")
    session = runner._Session(study, None, None, create=True)
    runner._announce_budget(session, set())
    out = capsys.readouterr().out
    assert "budget: 4 cell(s) to train, about 12 h 00 min" in out
    assert "that is a GPU budget: on this CPU run --profile quick" in out


@pytest.mark.parametrize("until_decided", [False, True])
def test_the_run_prints_the_budget_before_training(tmp_path, monkeypatch, capsys, until_decided):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(runner, "load_splits", lambda cfg: tiny_splits())
    path = tmp_path / "b.yaml"
    path.write_text(STUDY.format(name="b", epochs=1))
    runner.run_study(load_study(path, profile="quick", max_seeds=4 if until_decided else None), progress=False)
    out = capsys.readouterr().out
    assert "budget: 4 cell(s) to train, about" in out and "(on cpu: images/s batchnorm=true" in out
    assert ("up to 8 cell(s)" in out) == until_decided
    assert "study ETA" in out
