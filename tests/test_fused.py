"""Fused seeds (core.fused, core.train.fit_many): K seeds in one model give what K separate runs give."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import core.train as train_mod
from core.augment import BatchAugment
from core.config import RunConfig, apply_overrides
from core.fused import fuse_group_size, unfusable_reason
from core.models import create_model, list_models
from core.train import Callback, DivergedError, FitResult, evaluate, fit, fit_many, resolve_config
from tests.conftest import tiny_splits

CPU = torch.device("cpu")
TIMING = ("epoch_seconds", "images_per_s")
TOL = (1e-6, 1e-9)  # rtol, atol in float64 (see the float64 fixture)
# fp32 unless a test says otherwise: auto is bf16 on a CPU with native bf16 (core.precision), fp32 elsewhere
BASE = {
    "train.epochs": 2,
    "train.batch_size": 16,
    "train.device": "cpu",
    "train.fuse_seeds": 8,
    "train.precision": "fp32",
}


@pytest.fixture
def float64(monkeypatch):
    """Train in float64 (weights, images, losses).

    In float32 a max pooling whose two largest inputs are within rounding of each other sends the
    gradient to either, so fused and separate runs (both a few ulps from the exact values, each
    its own way) occasionally differ by a whole pooled gradient (a few % of a tensor's largest
    gradient, seen in about 1 of 20 cnn4 steps on random images, for the plain model as often as
    for the fused one). In float64 such near ties are 10^9 times rarer, so the comparison tests
    what fusing changes: nothing but the order of sums.
    """
    torch.set_default_dtype(torch.float64)
    real_apply, real_normalize = BatchAugment.apply, train_mod.normalize
    monkeypatch.setattr(BatchAugment, "apply", lambda self, x, u: real_apply(self, x, u).double())
    monkeypatch.setattr(train_mod, "normalize", lambda *a: real_normalize(*a).double())
    yield
    torch.set_default_dtype(torch.float32)


def _cfg(**kw) -> RunConfig:
    return apply_overrides(RunConfig(), {**BASE, **kw})


def _separate(cfg: RunConfig, seeds, splits) -> list[FitResult]:
    return [fit(cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": s})}), splits) for s in seeds]


def _assert_same(fused: FitResult, alone: FitResult, rtol: float, atol: float) -> None:
    assert fused.config.train.seed == alone.config.train.seed
    assert len(fused.history) == len(alone.history) and fused.best_epoch == alone.best_epoch
    for hf, ha in zip(fused.history, alone.history, strict=True):
        for key in hf:
            if key not in TIMING:
                assert hf[key] == pytest.approx(ha[key], rel=rtol, abs=atol, nan_ok=True), key
    assert fused.state_dict.keys() == alone.state_dict.keys()
    for key, v in alone.state_dict.items():
        torch.testing.assert_close(fused.state_dict[key].double(), v.double(), rtol=rtol, atol=atol, msg=key)
    for key, v in alone.test.items():
        assert fused.test[key] == pytest.approx(v, rel=rtol, abs=atol), key


# In float64 (the fixture) the fused and the separate updates differ only by the order of sums.
@pytest.mark.parametrize(
    "overrides",
    [
        {"model.batchnorm": True, "optim.name": "sgd", "optim.lr": 0.05, "optim.weight_decay": 5e-4},
        {"model.batchnorm": False, "optim.name": "adam"},
        {
            "model.dropout": "both",
            "model.dropout_p": 0.3,
            "optim.name": "adamw",
            "optim.weight_decay": 0.01,
            "schedule.name": "onecycle",
        },
    ],
    ids=["bn-sgd-wd", "nobn-adam", "dropout-both-adamw-onecycle"],
)
def test_cnn4_fused_equals_separate(overrides, float64):
    splits = tiny_splits(n_train=48, n_val=16, n_test=16)
    cfg = _cfg(**{"model.name": "cnn4", **overrides})
    seeds = [0, 1, 2]
    fused = fit_many(cfg, seeds, splits)
    for f, a in zip(fused, _separate(cfg, seeds, splits), strict=True):
        _assert_same(f, a, *TOL)


def test_resnet18_without_batchnorm_fused_equals_separate():
    """In float32: the CIFAR ResNet-18 has no max pooling (first_pool off), so no near ties to flip."""
    splits = tiny_splits(n_train=32, n_val=8, n_test=8)
    cfg = _cfg(
        **{
            "model.name": "resnet18",
            "model.batchnorm": False,
            "optim.name": "sgd",
            "optim.lr": 0.002,
            "train.max_steps": 2,
            "train.eval_batch_size": 8,
        }
    )
    fused = fit_many(cfg, [3, 4], splits)
    for f, a in zip(fused, _separate(cfg, [3, 4], splits), strict=True):
        _assert_same(f, a, 1e-4, 2e-5)


def test_resnet18_with_batchnorm_fused_equals_separate(float64):
    """In float64: BatchNorm over 8 images magnifies float32 rounding (3e-4 of the loss after 4 steps)."""
    splits = tiny_splits(n_train=16, n_val=8, n_test=8)
    cfg = _cfg(
        **{
            "model.name": "resnet18",
            "optim.name": "sgd",
            "optim.lr": 0.02,
            "train.batch_size": 8,
            "train.eval_batch_size": 8,
        }
    )
    fused = fit_many(cfg, [3, 4], splits)
    for f, a in zip(fused, _separate(cfg, [3, 4], splits), strict=True):
        _assert_same(f, a, *TOL)


def test_bf16_autocast_under_vmap_matches_separate_runs(monkeypatch):
    """bf16 autocast (CUDA's default precision) through the fused, vmapped forward, run on the CPU.

    Under ``vmap`` autocast alone leaves convs and linears in float32 (core.fused's
    ``_AutocastUnderVmap`` says why); the fused model must compute in bf16 as the plain one does.
    CPU autocast casts the same ops as CUDA's, so this runs on every CI host what the GPU path
    does, vmap and channels_last included. bf16 keeps 8 bits of mantissa and the fused and the
    plain model sum in another order, so they cannot agree to float32's tolerance. The test
    compares each seed's first update (all tensors together): the fused bf16 update must be much
    closer to the plain bf16 one than a float32 update is. (Measured: 5-6% off against 11-18% for
    float32, which is also what the fused model gave before it cast for autocast.)

    The network is cnn4's first revision (no conv biases, ``Linear(4096->10)``): a conv with a
    bias rounds twice under ``vmap`` in bf16 (the batching rule adds the bias after the grouped
    conv's bf16 output, the plain kernel inside its float32 accumulator), and before a BatchNorm
    that bias's update is rounding noise alone, so with seed 000's biased convs (cnn4 since issue
    24) the fused bf16 update is as far from the plain one as a float32 update (1.8% both) and
    this comparison could not tell a fused model that casts from one that does not.
    """
    from core.models import cnn, registry

    old = registry._REGISTRY["cnn4"]
    monkeypatch.setitem(
        registry._REGISTRY,
        "cnn4",
        dataclasses.replace(
            old,
            defaults={**old.defaults, "hidden": 0},
            build=lambda c: cnn._cnn(c, [bool(c.first_pool)] + [True] * (len(c.widths) - 1), conv_bias=False),
        ),
    )
    splits = tiny_splits(n_train=32, n_val=16, n_test=16)
    one_step = {"optim.name": "sgd", "optim.lr": 0.01, "train.max_steps": 1, "train.epochs": 1}
    cfg = _cfg(**{"train.precision": "bf16", **one_step})
    seen = []
    real = train_mod.F.cross_entropy

    def spy(logits, target, *a, **kw):
        seen.append(logits.dtype)
        return real(logits, target, *a, **kw)

    monkeypatch.setattr(train_mod.F, "cross_entropy", spy)
    fused = fit_many(cfg, [0, 1], splits)
    assert seen[0] == torch.bfloat16  # the training step's logits: out of a bf16 linear, as in the plain model
    monkeypatch.setattr(train_mod.F, "cross_entropy", real)
    fp32 = _separate(_cfg(**{"train.precision": "fp32", **one_step}), [0, 1], splits)
    for f, a, f32 in zip(fused, _separate(cfg, [0, 1], splits), fp32, strict=True):
        assert f.history[0]["train_loss"] == pytest.approx(a.history[0]["train_loss"], rel=1e-2)
        assert f.history[0]["val_loss"] == pytest.approx(a.history[0]["val_loss"], rel=1e-2)
        init = create_model(resolve_config(cfg).model, seed=a.config.train.seed).state_dict()
        keys = [k for k, v in init.items() if v.is_floating_point() and "running_var" not in k]

        alone, fused_step, fp32_step = (
            torch.cat([(r.state_dict[k] - init[k]).flatten() for k in keys]) for r in (a, f, f32)
        )
        off_fused = (fused_step - alone).norm() / alone.norm()
        off_fp32 = (fp32_step - alone).norm() / alone.norm()
        assert off_fused < 0.5 * off_fp32, (float(off_fused), float(off_fp32))


def test_seeds_differ_and_results_come_in_order():
    results = fit_many(_cfg(**{"train.epochs": 1}), [5, 6], tiny_splits(n_train=32, n_val=0, n_test=8))
    assert [r.config.train.seed for r in results] == [5, 6]
    assert results[0].history[0]["train_loss"] != results[1].history[0]["train_loss"]


class _Stop(Callback):
    """Raises in on_epoch_end of epoch ``at`` (stands for a pruner or a failing tracker)."""

    def __init__(self, at: int) -> None:
        self.at, self.epochs = at, []

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append(epoch)
        if epoch == self.at:
            raise RuntimeError(f"stop at {epoch}")


def test_a_callback_error_ends_its_seed_alone(float64):
    splits = tiny_splits(n_train=32, n_val=16, n_test=16)
    cfg = _cfg(**{"train.epochs": 3, "optim.name": "sgd", "optim.lr": 0.05})
    stop = _Stop(1)
    results = fit_many(cfg, [0, 1, 2], splits, [[], [stop], []])
    assert isinstance(results[1], RuntimeError) and stop.epochs == [1]
    alone = _separate(cfg, [0, 2], splits)
    _assert_same(results[0], alone[0], *TOL)
    _assert_same(results[2], alone[1], *TOL)


def test_a_diverging_seed_fails_alone(monkeypatch, float64):
    """NaN in seed 1's loss from the 2nd epoch on: seed 1 is a DivergedError, the others finish unchanged."""
    splits = tiny_splits(n_train=32, n_val=16, n_test=16)
    cfg = _cfg(**{"train.epochs": 3, "optim.name": "sgd", "optim.lr": 0.05})
    real = train_mod.F.cross_entropy
    calls = {"n": 0}

    def poisoned(logits, target, *a, **kw):
        out = real(logits, target, *a, **kw)
        if kw.get("reduction") == "none" and logits.requires_grad and len(target) == 48:  # training, K = 3
            calls["n"] += 1
            if calls["n"] > 2:  # after epoch 1 (2 steps)
                out = torch.cat([out[:16], out[16:32] * math.nan, out[32:]])
        return out

    monkeypatch.setattr(train_mod.F, "cross_entropy", poisoned)
    results = fit_many(cfg, [0, 1, 2], splits)
    monkeypatch.setattr(train_mod.F, "cross_entropy", real)
    assert isinstance(results[1], DivergedError) and results[1].epoch == 2
    alone = _separate(cfg, [0, 2], splits)
    _assert_same(results[0], alone[0], *TOL)
    _assert_same(results[2], alone[1], *TOL)


def test_early_stopping_per_seed_matches_separate_runs(float64):
    splits = tiny_splits(n_train=32, n_val=16, n_test=16)
    cfg = _cfg(**{"train.epochs": 4, "train.early_stopping": 1, "optim.name": "adam", "optim.lr": 1e-4})
    seeds = [0, 1, 2, 3]
    fused = fit_many(cfg, seeds, splits)
    alone = _separate(cfg, seeds, splits)
    assert len({len(r.history) for r in alone}) > 1  # the seeds stop at different epochs
    for f, a in zip(fused, alone, strict=True):
        _assert_same(f, a, *TOL)


def test_fused_checkpoints_load_into_the_ordinary_model(tmp_path):
    splits = tiny_splits(n_train=32, n_val=16, n_test=16)
    cfg = _cfg(**{"train.epochs": 1})
    results = fit_many(cfg, [0, 1], splits)
    assert not torch.equal(results[0].state_dict["features.0.0.weight"], results[1].state_dict["features.0.0.weight"])
    for r in results:
        path = tmp_path / f"best{r.config.train.seed}.pt"
        torch.save(r.state_dict, path)  # what the runner logs as checkpoint/best.pt
        model = create_model(r.config.model.model_copy(update={"weights": str(path)}))  # ablate evaluate/predict
        out = evaluate(model, splits.test_x, splits.test_y, r.config, topk=(1, 3))
        assert out["acc"] == pytest.approx(r.test["test_acc"]) and out["loss"] == pytest.approx(r.test["test_loss"])


def test_fuse_group_size_follows_the_setting():
    cfg = resolve_config(_cfg())
    assert fuse_group_size(cfg, 5, CPU)[0] == 5
    assert (
        fuse_group_size(cfg.model_copy(update={"train": cfg.train.model_copy(update={"fuse_seeds": 2})}), 5, CPU)[0]
        == 2
    )
    for setting in ("off", "auto"):  # auto: one at a time on the CPU
        k, why = fuse_group_size(
            cfg.model_copy(update={"train": cfg.train.model_copy(update={"fuse_seeds": setting})}), 5, CPU
        )
        assert k == 1 and setting in why
    plateau = resolve_config(_cfg(**{"schedule.name": "plateau"}))
    k, why = fuse_group_size(plateau, 4, CPU)
    assert k == 1 and "plateau" in why
    assert "fp16" in unfusable_reason(resolve_config(_cfg(**{"train.precision": "fp16"})))
    with pytest.raises(Exception, match="fuse_seeds"):
        _cfg(**{"train.fuse_seeds": 0})


def test_plateau_falls_back_to_one_at_a_time():
    splits = tiny_splits(n_train=32, n_val=16, n_test=8)
    cfg = _cfg(**{"schedule.name": "plateau", "train.max_steps": 1})
    fused = fit_many(cfg, [0, 1], splits)
    for f, a in zip(fused, _separate(cfg, [0, 1], splits), strict=True):
        assert f.history[-1]["train_loss"] == a.history[-1]["train_loss"]  # same loop, one seed at a time: exact


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_fuses(name, tmp_path):
    mcfg = {"model.name": name}
    if name == "resnet18_imagenet":
        import torchvision

        torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "w.pth")
        mcfg["model.weights"] = str(tmp_path / "w.pth")
    assert unfusable_reason(resolve_config(_cfg(**mcfg))) is None


def test_a_model_that_breaks_in_bf16_trains_one_seed_at_a_time(monkeypatch):
    """The vmap probe runs in bf16 too when the run will (bf16, or auto: bf16 on CUDA)."""
    import core.fused as fused_mod

    class Broken(fused_mod._AutocastUnderVmap):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.nn.functional.linear:
                raise RuntimeError("no bf16 linear under vmap")
            return super().__torch_function__(func, types, args, kwargs)

    monkeypatch.setattr(fused_mod, "_AutocastUnderVmap", Broken)
    fused_mod._vmap_probe.cache_clear()
    try:
        for precision in ("bf16", "auto"):
            why = unfusable_reason(resolve_config(_cfg(**{"train.precision": precision})))
            assert why is not None and "in bf16" in why and "no bf16 linear" in why, why
        assert unfusable_reason(resolve_config(_cfg(**{"train.precision": "fp32"}))) is None
        k, why = fuse_group_size(resolve_config(_cfg(**{"train.precision": "bf16"})), 3, CPU)
        assert k == 1 and "in bf16" in why
    finally:
        fused_mod._vmap_probe.cache_clear()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["cnn4", "resnet18"])
def test_fused_on_cuda_matches_separate_on_cuda(name, monkeypatch):
    # cuDNN's fp32 convolutions default to TF32 (10-bit mantissa), whose rounding differs between the
    # grouped and the plain convolution: on an H200 (torch 2.11) the first conv's weights of cnn4 differed
    # beyond 1e-2 after two epochs with TF32 on. Full fp32 leaves only the order of sums.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    splits = tiny_splits(n_train=64, n_val=16, n_test=16)
    cfg = _cfg(**{"model.name": name, "train.device": "cuda", "train.precision": "fp32", "optim.name": "sgd"})
    cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"lr": 0.02})})
    fused = fit_many(cfg, [0, 1], splits)
    for f, a in zip(fused, _separate(cfg, [0, 1], splits), strict=True):
        _assert_same(f, a, 1e-2, 1e-3)  # cuDNN picks other algorithms for the grouped convs


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_fuses_on_cuda_and_bf16_runs():
    cfg = resolve_config(_cfg(**{"train.device": "cuda", "train.fuse_seeds": "auto", "train.precision": "auto"}))
    k, why = fuse_group_size(cfg, 8, torch.device("cuda"))
    assert k > 1, why
    results = fit_many(cfg, list(range(k)), tiny_splits())
    assert all(isinstance(r, FitResult) and math.isfinite(r.test["test_loss"]) for r in results)


def test_compiled_fused_forward_gives_the_eager_results(float64):
    """train.compile=on (torch.compile of the vmapped forward) changes the speed, not the runs.

    The fused pair is the case with something to break (dynamo tracing vmap over functional_call).
    cnn3 without dropout keeps the compile time of the test short (inductor's code for dropout's
    mask hash adds about two minutes on 2 CPU cores); tests/test_crn.py checks that dropout's
    counter does not make the graph recompile.
    """
    splits = tiny_splits(n_train=32, n_val=8, n_test=8)
    cfg = _cfg(**{"model.name": "cnn3", "model.dropout": "none", "optim.name": "sgd", "optim.lr": 0.02})
    eager = fit_many(cfg, [0, 1], splits)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = fit_many(apply_overrides(cfg, {"train.compile": "on"}), [0, 1], splits)
    for c, e in zip(compiled, eager, strict=True):
        _assert_same(c, e, *TOL)
    # 4 training steps, 2 validations: one graph for training and one for evaluation, not one per step
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert 1 <= graphs <= 2, dict(torch._dynamo.utils.counters["stats"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_fused_on_cuda_matches_eager_in_bf16():
    splits = tiny_splits(n_train=256, n_val=64, n_test=64)
    cfg = _cfg(
        **{
            "train.device": "cuda",
            "train.batch_size": 64,
            "optim.name": "sgd",
            "optim.lr": 0.02,
            "train.precision": "auto",  # bf16 on CUDA
        }
    )
    eager = fit_many(cfg, [0, 1, 2, 3], splits)
    compiled = fit_many(apply_overrides(cfg, {"train.compile": "on"}), [0, 1, 2, 3], splits)
    for c, e in zip(compiled, eager, strict=True):
        assert c.history[-1]["train_loss"] == pytest.approx(e.history[-1]["train_loss"], rel=5e-2)  # bf16
