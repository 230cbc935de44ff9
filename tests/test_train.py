import math

import pytest
import torch

import core.train as train_mod
from core.config import RunConfig, apply_overrides
from core.models import create_model
from core.train import Callback, DivergedError, fit, resolve_config, select_device
from tests.conftest import tiny_splits

TINY = {"train.epochs": 2, "train.batch_size": 16, "train.device": "cpu"}


class Recorder(Callback):
    def __init__(self):
        self.epochs, self.images = [], 0

    def on_batch_end(self, epoch, step, images, loss):
        self.images += images

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append((epoch, metrics))


def test_fit_reports_every_epoch_and_test_metrics():
    rec = Recorder()
    result = fit(apply_overrides(RunConfig(), TINY), tiny_splits(), [rec])
    assert [e for e, _ in rec.epochs] == [1, 2]
    assert rec.images == 2 * 64  # 4 full batches of 16 per epoch
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "images_per_s"):
        assert math.isfinite(rec.epochs[0][1][key])
    assert {"test_loss", "test_acc", "test_top3", "test_acc_class_airplane", "test_acc_class_truck"} <= set(result.test)
    per_class = [v for k, v in result.test.items() if k.startswith("test_acc_class_")]
    counts = torch.bincount(tiny_splits().test_y, minlength=10)
    assert len(per_class) == 10
    assert float((torch.tensor(per_class) * counts).sum() / counts.sum()) == pytest.approx(result.test["test_acc"])
    assert 0 <= result.test["test_acc"] <= result.test["test_top3"] <= 1
    assert result.best_epoch in (1, 2) and result.config.model.widths == (32, 64, 128, 256)
    assert all(t.device.type == "cpu" for t in result.state_dict.values())
    final = result.final_metrics()  # what tracking logs at the end
    kept = rec.epochs[result.best_epoch - 1][1]
    assert final["train_test_acc_gap"] == pytest.approx(kept["train_acc"] - result.test["test_acc"])
    assert result.value("val_acc") == kept["val_acc"] and result.value("test_acc") == result.test["test_acc"]
    with pytest.raises(KeyError):
        result.value("no_such_metric")


def test_same_seed_same_result_different_seed_differs():
    a = fit(apply_overrides(RunConfig(), TINY), tiny_splits())
    b = fit(apply_overrides(RunConfig(), TINY), tiny_splits())
    c = fit(apply_overrides(RunConfig(), {**TINY, "train.seed": 1}), tiny_splits())
    assert a.history[-1]["train_loss"] == b.history[-1]["train_loss"]
    assert a.history[-1]["train_loss"] != c.history[-1]["train_loss"]


def test_best_validation_weights_are_kept(monkeypatch):
    """The kept weights are those of the epoch with the best validation accuracy, not the last epoch's."""
    models, states = [], []
    real_create = train_mod.create_model

    def create(cfg, seed=0):
        models.append(real_create(cfg, seed=seed))  # one seed: the loop trains this very module
        return models[-1]

    class Snapshot(Callback):
        def on_epoch_end(self, epoch, metrics):
            states.append({k: v.detach().clone() for k, v in models[0].state_dict().items()})

    monkeypatch.setattr(train_mod, "create_model", create)
    result = fit(apply_overrides(RunConfig(), {**TINY, "train.epochs": 4}), tiny_splits(), [Snapshot()])
    accs = [h["val_acc"] for h in result.history]
    assert result.best_epoch == accs.index(max(accs)) + 1
    assert result.best_epoch < 4  # (the case this test is about: the last epoch is not the best)
    for key, value in states[result.best_epoch - 1].items():
        assert torch.equal(result.state_dict[key], value), key
    assert not all(torch.equal(result.state_dict[k], v) for k, v in states[-1].items())


def test_sgd_and_step_schedule_decay_the_lr():
    cfg = apply_overrides(
        RunConfig(),
        {
            **TINY,
            "train.epochs": 3,
            "optim.name": "sgd",
            "optim.lr": 0.1,
            "schedule.name": "step",
            "schedule.step_size": 1,
            "schedule.gamma": 0.5,
        },
    )
    result = fit(cfg, tiny_splits())
    assert [h["lr"] for h in result.history] == pytest.approx([0.1, 0.05, 0.025])


def test_nan_loss_raises_diverged():
    # a zero std turns every normalised pixel into +-inf, so the loss is NaN
    cfg = apply_overrides(RunConfig(), {**TINY, "augment.std": (0.0, 0.0, 0.0)})
    with pytest.raises(DivergedError, match="epoch 1"):
        fit(cfg, tiny_splits())


def test_no_validation_set_keeps_last_epoch():
    s = tiny_splits(n_val=0)
    result = fit(apply_overrides(RunConfig(), TINY), s)
    assert result.best_epoch == 2 and math.isnan(result.history[0]["val_acc"])


def test_device_auto_falls_back_to_cpu():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert select_device("auto").type == expected


@pytest.mark.parametrize("name", ["cosine", "onecycle", "plateau"])
def test_schedulers_change_the_lr(name):
    cfg = apply_overrides(RunConfig(), {**TINY, "train.epochs": 3, "schedule.name": name, "schedule.patience": 0})
    history = fit(cfg, tiny_splits()).history
    lrs = [h["lr"] for h in history]
    if name == "cosine":
        assert lrs[0] == pytest.approx(1e-3) and lrs[0] > lrs[1] > lrs[2]
    elif name == "onecycle":  # stepped per batch: warms up above the base lr, then anneals far below it
        assert max(lrs) > 1e-3 and lrs[-1] < max(lrs) / 10
    else:  # patience 0: after any epoch without a better val loss (by 1e-4, relative) the lr is cut by gamma
        losses = [h["val_loss"] for h in history]
        expected, best = [1e-3], math.inf
        for loss in losses[:-1]:
            better = loss < best * (1 - 1e-4)
            best = loss if better else best
            expected.append(expected[-1] * (1.0 if better else 0.5))
        assert lrs == pytest.approx(expected) and lrs[-1] < lrs[0]


def test_adamw_applies_decoupled_weight_decay():
    """One AdamW step: w1 = w0 (1 - lr wd) - adam_step, the Adam step not depending on wd (Loshchilov &
    Hutter 2019); so with and without decay the weights differ by -lr wd w0. Adam's L2 decay would change
    the step itself (its gradient is g + wd w)."""
    one = {**TINY, "train.epochs": 1, "train.max_steps": 1, "optim.name": "adamw", "optim.lr": 0.01}
    lr, wd = 0.01, 0.5
    decayed = fit(apply_overrides(RunConfig(), {**one, "optim.weight_decay": wd}), tiny_splits()).state_dict
    plain = fit(apply_overrides(RunConfig(), {**one, "optim.weight_decay": 0.0}), tiny_splits()).state_dict
    model = create_model(resolve_config(RunConfig()).model, seed=0)
    for name, w0 in model.named_parameters():
        torch.testing.assert_close(decayed[name] - plain[name], -lr * wd * w0.detach(), rtol=1e-3, atol=1e-7)


def test_early_stopping_ends_the_run():
    # lr 0 and no BatchNorm statistics: the model never changes, nor does its validation loss,
    # so with patience 1 the run stops after epoch 2
    frozen = {"optim.lr": 0.0, "model.batchnorm": False}
    cfg = apply_overrides(RunConfig(), {**TINY, **frozen, "train.epochs": 6, "train.early_stopping": 1})
    result = fit(cfg, tiny_splits())
    assert len(result.history) == 2


def test_top1_takes_the_first_of_tied_logits_as_the_confusion_matrix_does():
    """bf16 logits of an untrained network tie often: top-1 accuracy must then equal the count-weighted
    mean of the per-class accuracies, both taking argmax's prediction (the first of the tied classes;
    torch.topk returns the last of a tie between classes 0 and 9 on the CPU)."""
    from core.fused import per_replica_topk
    from core.metrics import confusion_matrix, topk_correct
    from core.train import evaluate

    class Tie(torch.nn.Module):  # classes 0 and 9 share the highest logit for every image
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            logits = torch.full((len(x), 10), -1.0) + self.w
            logits[:, [0, 9]] = 0.5
            return logits

    y = torch.tensor([0] * 8 + [9] * 2 + [c for c in range(1, 9) for _ in range(3)])  # 34 images
    logits = Tie()(torch.zeros(len(y), 1))
    assert int(topk_correct(logits, y)) == 8 == int(per_replica_topk(logits[None], y)[0])
    assert int(confusion_matrix(logits.argmax(1), y, 10).diagonal().sum()) == 8
    x = torch.randint(0, 256, (len(y), 3, 32, 32), dtype=torch.uint8)
    cfg = apply_overrides(RunConfig(), {"train.device": "cpu", "train.eval_batch_size": 16})
    out = evaluate(Tie(), x, y, cfg, topk=(1, 3), num_classes=10)
    assert out["acc"] == pytest.approx(8 / 34) and int(out["confusion"].diagonal().sum()) == 8
    assert out["top3"] == pytest.approx(13 / 34)  # classes 0, 9 and one of the rest (3 images each)
