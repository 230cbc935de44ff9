"""Issue 24: each seed study trains its seed's recipe, the epoch kept is chosen on the validation split
(``train.select``), the test set never chooses, and runs of the earlier cnn4 are never pooled with new ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import ablations.runner as runner
import core.train as train_mod
from ablations.study import StudyError, load_study
from core.config import ConfigError, RunConfig, apply_overrides, config_hash
from core.train import fit
from tests.conftest import tiny_splits

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "model.name": "cnn_s002",
    "train.batch_size": 16,
    "train.device": "cpu",
    "train.precision": "fp32",
    "augment.erasing": 0.0,
}


# ---- train.select and early stopping: the validation split chooses ----


def _scripted_validation(monkeypatch, losses: list[float], accs: list[float]) -> None:
    """The validation split's loss and top-1 after epoch 1, 2, ... are ``losses`` and ``accs``."""
    real, epoch = train_mod._evaluate_replicas, iter(zip(losses, accs, strict=True))

    def scripted(reps, device, x, y, cfg, topk=(1,), num_classes=0):
        if num_classes:  # the test set: measured as it is
            return real(reps, device, x, y, cfg, topk, num_classes)
        loss, acc = next(epoch)
        return [{"loss": loss, "acc": acc}] * reps.k

    monkeypatch.setattr(train_mod, "_evaluate_replicas", scripted)


@pytest.mark.parametrize(("select", "kept"), [("val_acc", 3), ("val_loss", 2)])
def test_select_keeps_the_epoch_of_highest_accuracy_or_lowest_loss(monkeypatch, select, kept):
    """Seed 003's src/train.py keeps the weights of the lowest validation loss: train.select val_loss."""
    splits = tiny_splits(n_train=48, n_val=16, n_test=16)
    cfg = apply_overrides(RunConfig(), {**TINY, "train.epochs": 4, "train.select": select})
    _scripted_validation(monkeypatch, [1.0, 0.5, 0.8, 0.9], [0.2, 0.3, 0.6, 0.4])
    result = fit(cfg, splits)
    assert result.best_epoch == kept and len(result.history) == 4
    assert [h["val_loss"] for h in result.history] == [1.0, 0.5, 0.8, 0.9]
    # the kept weights are those after epoch `kept`: what the same run stopped after `kept` epochs ends with
    monkeypatch.undo()
    shorter = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": kept, "select": "val_acc"})})
    _scripted_validation(monkeypatch, [1.0] * kept, [0.1 * e for e in range(1, kept + 1)])  # its last epoch
    last = fit(shorter, splits)
    assert last.best_epoch == kept
    assert all(torch.equal(t, last.state_dict[k]) for k, t in result.state_dict.items())


def test_select_val_loss_takes_the_first_of_equal_losses(monkeypatch):
    splits = tiny_splits(n_train=32, n_val=16, n_test=16)
    cfg = apply_overrides(RunConfig(), {**TINY, "train.epochs": 3, "train.select": "val_loss"})
    _scripted_validation(monkeypatch, [0.7, 0.7, float("nan")], [0.1, 0.9, 0.9])
    assert fit(cfg, splits).best_epoch == 1


@pytest.mark.parametrize(("metric", "epochs"), [("val_loss", 2), ("val_acc", 5)])
def test_early_stopping_watches_its_metric(monkeypatch, metric, epochs):
    splits = tiny_splits(n_train=32, n_val=16, n_test=16)
    overrides = {**TINY, "train.epochs": 6, "train.early_stopping": 1, "train.early_stopping_metric": metric}
    cfg = apply_overrides(RunConfig(), overrides)
    _scripted_validation(monkeypatch, [1.0, 1.2, 0.9, 1.5, 1.6, 1.7], [0.2, 0.3, 0.4, 0.5, 0.1, 0.1])
    assert len(fit(cfg, splits).history) == epochs


# ---- the test set never chooses ----


@pytest.mark.parametrize("key", ["train.select", "train.early_stopping_metric"])
def test_a_test_metric_to_choose_epochs_is_refused_naming_the_key(key):
    with pytest.raises(ConfigError) as err:
        apply_overrides(RunConfig(), {key: "test_acc"})
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"config key '{key}': test_acc would let the test set choose")
    with pytest.raises(ConfigError, match=f"config key '{key}': must be one of val_acc, val_loss"):
        apply_overrides(RunConfig(), {key: "train_acc"})


def test_new_keys_at_their_defaults_stay_out_of_the_hash():
    """Studies that leave the keys of issue 24 alone keep their config hash (and their runs)."""
    default = config_hash(RunConfig())
    same = {
        "augment.saturation": 0.0,
        "augment.hue": 0.0,
        "augment.erasing_scale": [0.02, 0.33],
        "train.select": "val_acc",
        "train.early_stopping_metric": "val_loss",
    }
    assert config_hash(apply_overrides(RunConfig(), same)) == default
    for key, value in {
        "augment.saturation": 0.2,
        "augment.hue": 0.05,
        "augment.erasing_scale": [0.02, 0.15],
        "train.select": "val_loss",
        "train.early_stopping_metric": "val_acc",
    }.items():
        assert config_hash(apply_overrides(RunConfig(), {key: value})) != default, key


SEARCH = """\
name: s
question: which lr?
base: {model.name: cnn_s002, data.val_fraction: 0.1}
seeds: [0]
search:
  space:
    optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
"""


def test_a_search_optimises_val_acc_by_default(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SEARCH)
    assert load_study(path).metric.name == "val_acc"


@pytest.mark.parametrize("metric", ["test_acc", "test_loss", "test_top3"])
def test_a_search_on_the_test_set_is_refused_naming_the_key(tmp_path, metric):
    path = tmp_path / "s.yaml"
    path.write_text(SEARCH + f"metric: {{name: {metric}, direction: maximize}}\n")
    with pytest.raises(StudyError) as err:
        load_study(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: metric: {metric} would let the test set choose")


def test_a_pruner_metric_is_refused_naming_the_key(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SEARCH + "  pruner: {name: median, metric: test_acc}\n")
    with pytest.raises(StudyError, match=r"search.pruner.metric: the pruner watches val_loss .* the test set never"):
        load_study(path)


@pytest.mark.parametrize("key", ["train.select", "train.early_stopping_metric"])
def test_a_study_choosing_epochs_on_the_test_set_is_refused(tmp_path, key):
    path = tmp_path / "s.yaml"
    path.write_text(SEARCH.replace("data.val_fraction: 0.1}", f"data.val_fraction: 0.1, {key}: test_loss}}"))
    with pytest.raises(StudyError, match=f"base: config key '{key}': test_loss would let the test set choose"):
        load_study(path)


# ---- cnn4 changed: runs of the earlier network keep their key and are never pooled ----

STUDY = """\
name: pooled
question: are runs of the earlier cnn4 pooled with new ones?
base: {model.name: cnn4, train.epochs: 1, train.batch_size: 16, train.device: cpu, train.precision: fp32}
factors:
  batchnorm: [true]
seeds: [0]
metric: {name: test_acc, direction: maximize}
"""


def test_runs_of_the_earlier_cnn4_are_never_pooled_with_new_ones(tmp_path, monkeypatch):
    from ablations.report import load_runs
    from ablations.tracking import Tracker, resolve_tracking_uri

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner, "load_splits", lambda cfg: tiny_splits(n_train=32, n_val=16, n_test=16))
    path = Path("pooled.yaml")
    path.write_text(STUDY)
    with monkeypatch.context() as m:  # the study as it was keyed before cnn4's revision 2
        m.setattr("core.models.registry.preset_revision", lambda name: 1)
        old = load_study(path)
        old_key = old.key
        assert runner.run_study(old, progress=False).trained == ["batchnorm=true seed=0"]
    new = load_study(path)
    assert new.key != old_key and new.key.rsplit(":", 1)[0] == old_key.rsplit(":", 1)[0] == "pooled:base"
    again = runner.run_study(new, progress=False)
    assert again.trained == ["batchnorm=true seed=0"] and again.skipped == 0  # nothing reused from the old key
    tracker = Tracker(resolve_tracking_uri(None))
    exp = tracker.experiment("pooled", create=False)
    old_parent, new_parent = tracker.find_parent(exp, old_key), tracker.find_parent(exp, new.key)
    assert old_parent and new_parent and old_parent != new_parent
    sr = load_runs("pooled")  # the report reads the newest parent: the new key's run alone
    assert sr.parent_run_id == new_parent and len(sr.runs) == 1


@pytest.mark.parametrize(
    ("file", "profile", "old"),
    [  # the keys before issue 24 (commit c04a906)
        ("studies/batchnorm.yaml", "smoke", "batchnorm:smoke:d87d9d55909d"),
        ("studies/dropout.yaml", "quick", "dropout:quick:ef075271b9b9"),
        ("studies/seeds/seed000.yaml", "full", "seed000:full:9eaa09d67979"),
        ("studies/seeds/seed003.yaml", "full", "seed003:full:714e9493b33b"),
    ],
)
def test_studies_of_the_changed_networks_have_new_keys(file, profile, old):
    assert load_study(ROOT / file, profile).key != old


# ---- each seed study resolves to its seed's recipe ----


def _config(file: str, profile: str = "full") -> RunConfig:
    study = load_study(ROOT / file, profile)
    return study.cell_config(study.cells()[0])


def test_seed000_is_seed_000s_code():
    """network/train.py and data/loader.py of seed 000's repository."""
    cfg = _config("studies/seeds/seed000.yaml")
    a = cfg.augment
    assert cfg.model.name == "cnn4" and cfg.model.hidden == (512, 128)
    assert (cfg.optim.name, cfg.optim.lr, cfg.train.batch_size, cfg.train.epochs) == ("adam", 1e-3, 128, 60)
    assert cfg.data.val_fraction == 0.0 and cfg.schedule.name == "none"
    assert (a.crop_padding, a.flip, a.rotation) == (4, True, 0.0)
    assert (a.brightness, a.contrast, a.saturation, a.hue) == (0.2, 0.2, 0.2, 0.05)
    assert a.erasing == 0.25 and a.erasing_scale == (0.02, 0.15)
    assert a.mean == (0.49139968, 0.48215827, 0.44653124) and a.std == (0.24703233, 0.24348505, 0.26158768)


def test_seed003_is_seed_003s_code():
    """src/dataset.py, src/train.py and run_training.py of seed 003's repository."""
    cfg = _config("studies/seeds/seed003.yaml")
    a, t = cfg.augment, cfg.train
    assert cfg.model.name == "cnn_s003" and cfg.model.dropout == "both"
    assert (cfg.optim.name, cfg.optim.lr, t.batch_size, t.epochs) == ("adam", 1e-3, 32, 100)
    assert cfg.data.val_fraction == 0.2
    assert (t.early_stopping, t.early_stopping_metric, t.select) == (10, "val_loss", "val_loss")
    assert (a.crop_padding, a.flip, a.rotation, a.brightness, a.contrast, a.erasing) == (0, True, 15.0, 0, 0, 0)
    assert a.mean == (0.4914, 0.4822, 0.4465) and a.std == (0.2023, 0.1994, 0.2010)


def test_seed004_is_seed_004s_notebook():
    cfg = _config("studies/seeds/seed004.yaml")
    a = cfg.augment
    assert cfg.model.name == "cnn_s004"
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum) == ("sgd", 1e-2, 0.9)
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.data.val_fraction) == (64, 20, 0.0)
    assert (a.crop_padding, a.flip, a.brightness, a.contrast, a.erasing) == (4, True, 0, 0, 0)
    assert a.std == (0.2023, 0.1994, 0.2010)


def test_cnn_vs_resnet_trains_seed_002s_recipe_with_torchvisions_resnet18():
    study = load_study(ROOT / "studies/cnn_vs_resnet.yaml", "full")
    configs = [study.cell_config(c) for c in study.cells() if c.seed == study.seeds[0]]
    assert [c.model.name for c in configs] == ["cnn_s002", "resnet18_tv"]
    for cfg in configs:
        a = cfg.augment
        assert (a.crop_padding, a.flip, a.rotation, a.brightness, a.contrast, a.saturation, a.hue, a.erasing) == (
            0,
            False,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0,
        )
        assert (a.mixup, a.cutmix) == (0.0, 0.0)
        assert (cfg.optim.name, cfg.optim.lr, cfg.schedule.name, cfg.train.epochs) == ("adam", 1e-3, "step", 20)
        assert cfg.data.val_fraction == 0.1


@pytest.mark.parametrize("file", ["batchnorm", "dropout", "first_pool", "rotation", "tricks", "precision"])
def test_cnn4_ablations_train_seed_000s_augmentation(file):
    a = _config(f"studies/{file}.yaml").augment
    assert (a.brightness, a.contrast, a.saturation, a.hue, a.erasing, a.erasing_scale) == (
        0.2,
        0.2,
        0.2,
        0.05,
        0.25,
        (0.02, 0.15),
    )
