"""The runner trains an arm's seeds as one fused group: same MLflow runs as one at a time, killed groups requeue."""

from __future__ import annotations

from pathlib import Path

import pytest

import ablations.runner as runner
from ablations.study import load_study
from ablations.tracking import resolve_tracking_uri
from tests.conftest import tiny_splits

STUDY = """\
name: tinyfuse
question: does BatchNorm matter?
base: {{train.epochs: 2, train.batch_size: 16, train.device: cpu, optim.name: sgd, optim.lr: 0.01,
        train.fuse_seeds: {fuse}, train.precision: fp32}}
factors:
  batchnorm: [true, false]
seeds: [0, 1]
metric: {{name: test_acc, direction: maximize}}
"""
TIMING = {"epoch_seconds", "images_per_s", "fit_seconds"}


def _study(tmp_path: Path, monkeypatch, fuse: str, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    monkeypatch.chdir(d)
    monkeypatch.setattr(runner, "load_splits", lambda cfg: tiny_splits(n_train=32, n_val=16, n_test=16))
    path = d / "tinyfuse.yaml"
    path.write_text(STUDY.format(fuse=fuse))
    return path


def _runs() -> dict:
    """cell key -> (status, params, metric histories, artifact paths, tag keys) of every cell run here."""
    from mlflow import MlflowClient

    client = MlflowClient(resolve_tracking_uri(None))
    exp = client.get_experiment_by_name("tinyfuse")
    out = {}
    for r in client.search_runs([exp.experiment_id], "tags.`ablate.role` = 'cell'"):
        rid = r.info.run_id
        history = {k: [m.value for m in client.get_metric_history(rid, k)] for k in r.data.metrics}
        artifacts = sorted(a.path for a in client.list_artifacts(rid))
        out[r.data.tags["ablate.cell"]] = (r.info.status, r.data.params, history, artifacts, set(r.data.tags))
    return out


def test_a_fused_study_logs_what_an_unfused_one_logs(tmp_path, monkeypatch, capsys):
    alone_path = _study(tmp_path, monkeypatch, "off", "alone")
    alone_summary = runner.run_study(load_study(alone_path), progress=False)
    alone = _runs()
    fused_path = _study(tmp_path, monkeypatch, "2", "fused")
    calls = []
    real = runner.fit_many
    monkeypatch.setattr(runner, "fit_many", lambda *a, **kw: calls.append(kw.get("group_size")) or real(*a, **kw))
    fused_summary = runner.run_study(load_study(fused_path), progress=False)
    fused = _runs()
    assert calls == [2, 2]  # one fused group per arm
    assert "train.fuse_seeds=2: 2 seeds fused" in capsys.readouterr().out
    assert sorted(fused_summary.trained) == sorted(alone_summary.trained) and len(alone) == 4
    assert fused.keys() == alone.keys()
    for key, (status, params, history, artifacts, tags) in alone.items():
        f_status, f_params, f_history, f_artifacts, f_tags = fused[key]
        assert f_status == status == "FINISHED"
        assert {k: v for k, v in f_params.items() if k != "train.fuse_seeds"} == {
            k: v for k, v in params.items() if k != "train.fuse_seeds"
        }
        assert (f_params["train.fuse_seeds"], params["train.fuse_seeds"]) == ("2", "off")
        assert f_history.keys() == history.keys()
        for metric, values in history.items():
            if metric not in TIMING:
                assert f_history[metric] == pytest.approx(values, rel=1e-3, abs=1e-4), (key, metric)
        assert f_artifacts == artifacts and f_tags == tags
    for key, value in alone_summary.values.items():
        assert fused_summary.values[key] == pytest.approx(value, abs=1e-9)


def test_a_killed_group_requeues_all_its_seeds(tmp_path, monkeypatch):
    path = _study(tmp_path, monkeypatch, "2", "killed")
    real = runner.fit_many

    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "fit_many", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.run_study(load_study(path), progress=False)
    runs = _runs()
    assert len(runs) == 2 and {r[0] for r in runs.values()} == {"KILLED"}  # both seeds of the first arm
    monkeypatch.setattr(runner, "fit_many", real)
    again = runner.run_study(load_study(path), progress=False)
    assert len(again.trained) == 4  # the killed group's two seeds and the other arm's
