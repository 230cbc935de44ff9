"""The training tricks (core.tricks, docs/tricks.md): each does what its source says, per seed of a fused
group as alone, and a run killed mid-way and trained again gives the uninterrupted run's result."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR, LinearLR, SequentialLR
from torchvision.transforms import v2

import core.train as train_mod
from ablations.factors import FACTORS
from ablations.study import load_study
from core.config import ConfigError, RunConfig, apply_overrides, config_hash
from core.models import create_model
from core.train import Callback, evaluate, fit, fit_many
from core.tricks import BatchMix, Mix, clip_grad_norms, cutmix, decayed_names, mixup
from tests.conftest import tiny_splits
from tests.test_fused import TOL, _assert_same, _cfg, _separate, float64  # noqa: F401 (a fixture)

TINY = {"train.epochs": 1, "train.batch_size": 16, "train.device": "cpu", "train.precision": "fp32"}
TRICKS = {
    "label_smoothing": "train.label_smoothing",
    "mixup": "augment.mixup",
    "cutmix": "augment.cutmix",
    "mix_prob": "augment.mix_prob",
    "warmup_epochs": "schedule.warmup_epochs",
    "ema": "train.ema",
    "no_bias_decay": "optim.no_bias_decay",
    "grad_clip": "train.grad_clip",
}


# ---------------------------------------------------------------- keys, factors, study keys


def test_a_study_without_tricks_keeps_its_key():
    # The keys of studies/seeds/seed001.yaml from before the tricks' keys existed (commit 7101f1f): a key
    # that changes would orphan every finished run of the study. (studies/batchnorm.yaml, pinned here until
    # issue 24, trains cnn4, whose network changed on purpose then: docs/release-notes.md.)
    expected = {"full": "6607391f0471", "quick": "1360d8e51f53", "smoke": "4656b636cb33"}
    for profile, digest in expected.items():
        assert load_study("studies/seeds/seed001.yaml", profile=profile).key == f"seed001:{profile}:{digest}"


def test_each_trick_is_a_registered_factor_off_by_default_and_hashed_once_set():
    default = RunConfig()
    flat = {
        "train.label_smoothing": 0.0,
        "augment.mixup": 0.0,
        "augment.cutmix": 0.0,
        "augment.mix_prob": 1.0,
        "schedule.warmup_epochs": 0,
        "train.ema": 0.0,
        "optim.no_bias_decay": False,
        "train.grad_clip": 0.0,
    }
    for name, key in TRICKS.items():
        assert FACTORS[name] == key
        section, field = key.split(".")
        assert getattr(getattr(default, section), field) == flat[key]
    on = {
        "train.label_smoothing": 0.1,
        "augment.mixup": 0.2,
        "augment.cutmix": 1.0,
        "augment.mix_prob": 0.5,
        "schedule.warmup_epochs": 1,
        "train.ema": 0.999,
        "optim.no_bias_decay": True,
        "train.grad_clip": 1.0,
    }
    hashes = {config_hash(apply_overrides(default, {k: v})) for k, v in on.items()}
    assert config_hash(default) not in hashes and len(hashes) == len(on)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"schedule.name": "onecycle", "schedule.warmup_epochs": 1}, "warms up itself"),
        ({"train.label_smoothing": 1.0}, "train.label_smoothing"),
        ({"train.ema": -0.1}, "train.ema"),
        ({"augment.mix_prob": 1.5}, "augment.mix_prob"),
        ({"train.grad_clip": -1.0}, "train.grad_clip"),
    ],
)
def test_bad_values_are_refused_with_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(RunConfig(), overrides)


# ---------------------------------------------------------------- label smoothing


def test_label_smoothing_loss_equals_pytorchs(monkeypatch):
    """The training loss of a step is nn.CrossEntropyLoss(label_smoothing=0.1) of its logits and labels."""
    seen = []
    real = train_mod.F.cross_entropy

    def spy(logits, target, *a, **kw):
        if logits.requires_grad:
            seen.append((logits.detach().clone(), target.clone()))
        return real(logits, target, *a, **kw)

    monkeypatch.setattr(train_mod.F, "cross_entropy", spy)
    cfg = apply_overrides(RunConfig(), {**TINY, "train.max_steps": 1, "train.label_smoothing": 0.1})
    result = fit(cfg, tiny_splits())
    ((logits, labels),) = seen
    assert labels.dtype == torch.int64
    smoothed = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, labels)
    assert result.history[0]["train_loss"] == pytest.approx(float(smoothed), rel=1e-6)
    # cnn4's three linear layers start with logits near 0, where smoothing changes the loss by ~5e-4 of it
    assert float(smoothed) != pytest.approx(float(torch.nn.CrossEntropyLoss()(logits, labels)), rel=1e-4)


# ---------------------------------------------------------------- mixup and cutmix


class _Fixed:
    """Stands for torchvision's Beta distribution: always ``lam``, and no draw from the global generator."""

    def __init__(self, lam: float) -> None:
        self.lam = lam

    def sample(self, shape=()):
        return torch.tensor([self.lam])


def _batch(b: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 32, 32, generator=g), torch.randint(0, 10, (b,), generator=g)


def _cycle(b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random permutation with one cycle, ``perm``, and the order ``o`` in which torchvision's partner
    (the previous image) is ``perm``'s: ``perm[o[k]] == o[k - 1]``."""
    o = torch.randperm(b, generator=torch.Generator().manual_seed(seed))
    perm = torch.empty(b, dtype=torch.long)
    perm[o] = o.roll(1)
    return perm, o


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.71, 1.0])
def test_mixup_equals_torchvisions_with_the_same_lambda_and_partners(lam):
    lam = float(torch.tensor(lam))  # torchvision's Beta draws are float32
    x, y = _batch()
    tv = v2.MixUp(alpha=1.0, num_classes=10)
    tv._dist = _Fixed(lam)
    ex, ey = tv(x, y)
    mx, my = mixup(x, y, lam, torch.arange(8).roll(1), 10)  # torchvision's partner: the previous image
    assert torch.equal(mx, ex) and torch.equal(my, ey) and my.shape == (8, 10)
    perm, o = _cycle(8, seed=3)  # any single-cycle permutation, with the batch put in its order
    ex, ey = tv(x[o], y[o])
    mx, my = mixup(x, y, lam, perm, 10)
    assert torch.equal(mx[o], ex) and torch.equal(my[o], ey)


@pytest.mark.parametrize("lam, seed", [(0.0, 0), (0.35, 1), (0.8, 2), (1.0, 3)])
def test_cutmix_equals_torchvisions_with_the_same_lambda_centre_and_partners(lam, seed):
    lam = float(torch.tensor(lam))  # torchvision's Beta draws are float32
    x, y = _batch(seed=seed)
    torch.manual_seed(seed)  # torchvision draws the centre from the global generator: x, then y
    cx, cy = int(torch.randint(32, (1,))), int(torch.randint(32, (1,)))
    tv = v2.CutMix(alpha=1.0, num_classes=10)
    tv._dist = _Fixed(lam)
    perm, o = _cycle(8, seed)
    torch.manual_seed(seed)
    ex, ey = tv(x[o], y[o])
    mx, my = cutmix(x, y, lam, (cy, cx), perm, 10)
    assert torch.equal(mx[o], ex) and torch.equal(my[o], ey) and my.shape == (8, 10)
    if 0 < lam < 1:
        assert not torch.equal(mx, x)  # a box was pasted


def test_batch_mix_mixes_each_seed_as_the_functions_do():
    """K seeds in one call: seed k's images and soft targets are mixup's or cutmix's of its own draw."""
    x, y = _batch(16)
    xs, ys = x.view(2, 8, 3, 32, 32), y.view(2, 8)
    mix = BatchMix(apply_overrides(RunConfig(), {"augment.mixup": 0.4, "augment.cutmix": 1.0}).augment, 10)
    p0, p1 = torch.randperm(8), torch.randperm(8)
    mixes = [Mix("mixup", 0.3, None, p0), Mix("cutmix", 0.75, (4, 20, 8, 24), p1)]
    mx, my = mix.apply(xs, ys, mixes)
    ex0, ey0 = mixup(xs[0], ys[0], 0.3, p0, 10)
    assert torch.equal(mx[0], ex0) and torch.equal(my[0], ey0)
    # the box (4, 20, 8, 24) is cutmix_box's for lam 1 - 0.25 centred at (12, 16): 16 x 16 of 32 x 32
    ex1, ey1 = cutmix(xs[1], ys[1], 0.75, (12, 16), p1, 10)
    assert torch.equal(mx[1], ex1) and torch.equal(my[1], ey1)
    none = mix.apply(xs, ys, [Mix("none", 1.0, None, p0)] * 2)
    assert torch.equal(none[0], xs) and torch.equal(none[1], F.one_hot(ys, 10).float())


def test_mix_draws_come_from_the_seeds_own_streams():
    cfg = RunConfig().augment

    def draws(seed, **kw):
        mix, gens = BatchMix(cfg.model_copy(update=kw), 10), BatchMix.generators(seed)
        return [mix.draw(16, 32, 32, gens) for _ in range(400)]

    a, b = draws(0, mixup=0.2), draws(0, mixup=0.2)
    assert [m.lam for m in a] == [m.lam for m in b]
    assert all(torch.equal(m.perm, n.perm) for m, n in zip(a, b, strict=True))
    assert [m.lam for m in draws(1, mixup=0.2)] != [m.lam for m in a]
    # an arm with another alpha, or with cutmix too, pairs the same images at every step (common random numbers)
    for other in (draws(0, mixup=1.0), draws(0, mixup=0.2, cutmix=1.0)):
        assert all(torch.equal(m.perm, n.perm) for m, n in zip(a, other, strict=True))
    assert {m.kind for m in a} == {"mixup"} and sum(m.lam for m in a) / len(a) == pytest.approx(0.5, abs=0.05)
    both = draws(0, mixup=0.2, cutmix=1.0, mix_prob=0.5)
    kinds = [m.kind for m in both]
    assert kinds.count("none") == pytest.approx(200, abs=40)  # mix_prob 0.5
    assert kinds.count("cutmix") == pytest.approx(100, abs=30) and kinds.count("mixup") == pytest.approx(100, abs=30)
    assert all(m.lam == 1.0 for m in both if m.kind == "none")
    assert all(0 <= m.lam <= 1 for m in both)
    assert not BatchMix(cfg, 10).on and not BatchMix(cfg.model_copy(update={"mixup": 1.0, "mix_prob": 0.0}), 10).on


def test_mixup_in_training_uses_soft_targets(monkeypatch):
    """The loop hands cross-entropy the mixed soft targets (B, C); turned off, the labels."""
    seen = []
    real = train_mod.F.cross_entropy

    def spy(logits, target, *a, **kw):
        if logits.requires_grad:
            seen.append(target.clone())
        return real(logits, target, *a, **kw)

    monkeypatch.setattr(train_mod.F, "cross_entropy", spy)
    fit(apply_overrides(RunConfig(), {**TINY, "train.max_steps": 1, "augment.mixup": 1.0}), tiny_splits())
    (soft,) = seen
    assert soft.shape == (16, 10) and soft.sum(1).allclose(torch.ones(16))
    assert ((soft > 0) & (soft < 1)).any()  # mixed, not one-hot


# ---------------------------------------------------------------- warmup


def _loop_lrs(cfg: RunConfig, steps: int) -> list[float]:
    """The lr of every training step, stepping ``core.train``'s schedule as the loop does."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.lr)
    sched = train_mod._Schedule(cfg, opt, steps)
    lrs = []
    for _ in range(cfg.train.epochs):
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.after_batch()
        sched.after_epoch(1.0, 1.0)
    return lrs


def _reference_lrs(cfg: RunConfig, steps: int) -> list[float]:
    """LinearLR for the warmup's steps, then the schedule per epoch from its start, in a SequentialLR."""
    s, lr, w = cfg.schedule, cfg.optim.lr, cfg.schedule.warmup_epochs
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    n = w * steps
    after = cfg.train.epochs - w

    def main(i: int) -> float:  # step i after the warmup -> the schedule's factor in its epoch i // steps
        e = i // steps
        if s.name == "step":
            return s.gamma ** (e // s.step_size)
        if s.name == "cosine":
            return (s.min_lr + (lr - s.min_lr) * (1 + math.cos(math.pi * e / after)) / 2) / lr
        return 1.0

    seq = SequentialLR(opt, [LinearLR(opt, start_factor=1 / (n + 1), total_iters=n), LambdaLR(opt, main)], [n])
    lrs = []
    for _ in range(cfg.train.epochs * steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        seq.step()
    return lrs


@pytest.mark.parametrize("name", ["none", "step", "cosine"])
@pytest.mark.parametrize("warmup", [1, 2])
def test_warmup_lr_of_every_step_equals_linear_lr_then_the_schedule(name, warmup):
    over = {"schedule.name": name, "schedule.warmup_epochs": warmup, "schedule.step_size": 1, "train.epochs": 5}
    cfg = apply_overrides(RunConfig(), {**over, "optim.lr": 0.1, "schedule.min_lr": 0.001})
    lrs = _loop_lrs(cfg, steps=3)
    assert lrs == pytest.approx(_reference_lrs(cfg, steps=3), rel=1e-9)
    n = 3 * warmup
    assert lrs[:n] == pytest.approx([0.1 * (t + 1) / (n + 1) for t in range(n)]) and lrs[n] == pytest.approx(0.1)


def test_warmup_before_plateau_then_plateau_cuts():
    over = {"schedule.name": "plateau", "schedule.warmup_epochs": 1, "schedule.patience": 0, "train.epochs": 4}
    cfg = apply_overrides(RunConfig(), over)
    # the same loss every epoch: plateau first sees it after epoch 2 (a best), then after epoch 3 (no better: cut)
    lrs = _loop_lrs(cfg, steps=2)
    assert lrs[:2] == pytest.approx([1e-3 / 3, 2e-3 / 3]) and lrs[2:6] == pytest.approx([1e-3] * 4)
    assert lrs[6:] == pytest.approx([5e-4] * 2)


def test_the_training_loop_warms_up():
    cfg = apply_overrides(RunConfig(), {**TINY, "train.epochs": 2, "schedule.warmup_epochs": 2})
    result = fit(cfg, tiny_splits())  # 4 steps an epoch, 8 of warmup
    assert [h["lr"] for h in result.history] == pytest.approx([1e-3 * 5 / 9, 1e-3])


# ---------------------------------------------------------------- EMA


def test_ema_weights_follow_the_formula_and_are_evaluated_kept_and_checkpointed(monkeypatch, tmp_path):
    """ema_1 = w_1, ema_t = d ema_{t-1} + (1 - d) w_t per parameter; BatchNorm statistics copied."""
    models, steps = [], []
    real_create, real_optimizer = train_mod.create_model, train_mod._optimizer

    def create(cfg, seed=0):
        models.append(real_create(cfg, seed=seed))
        return models[-1]

    def optimizer(cfg, params):
        opt = real_optimizer(cfg, params)
        opt.register_step_post_hook(lambda o, a, k: steps.append([p.detach().clone() for p in params]))
        return opt

    monkeypatch.setattr(train_mod, "create_model", create)
    monkeypatch.setattr(train_mod, "_optimizer", optimizer)
    d = 0.6
    cfg = apply_overrides(RunConfig(), {**TINY, "optim.name": "sgd", "optim.lr": 0.05, "train.ema": d})
    result = fit(cfg, tiny_splits())
    assert len(steps) == 4
    names = [n for n, _ in models[0].named_parameters()]
    ema = steps[0]
    for w in steps[1:]:
        ema = [d * e + (1 - d) * x for e, x in zip(ema, w, strict=True)]
    for name, e, first, last in zip(names, ema, steps[0], steps[-1], strict=True):
        torch.testing.assert_close(result.state_dict[name], e, rtol=1e-5, atol=1e-7, msg=name)
        # the raw weights are not what was kept (a conv bias before a BatchNorm, whose gradient is ~0, barely moves)
        assert not torch.allclose(e, last) or torch.allclose(first, last), name
    raw = models[0].state_dict()
    for name in (k for k in raw if "running" in k or "num_batches" in k):
        assert torch.equal(result.state_dict[name], raw[name]), name
    # the validation and test figures are the average's, and the checkpoint is what ablate evaluate loads
    path = tmp_path / "best.pt"
    torch.save(result.state_dict, path)
    model = create_model(result.config.model.model_copy(update={"weights": str(path)}))
    s = tiny_splits()
    assert evaluate(model, s.val_x, s.val_y, result.config)["loss"] == pytest.approx(result.history[0]["val_loss"])
    assert evaluate(model, s.test_x, s.test_y, result.config)["acc"] == pytest.approx(result.test["test_acc"])


# ---------------------------------------------------------------- no bias decay


def test_no_bias_decay_decays_conv_and_linear_weights_only():
    """One SGD step with and without weight decay: the difference is -lr wd w0 on the weights of convs
    and linears, and nothing on biases and BatchNorm's weights and biases."""
    one = {**TINY, "train.max_steps": 1, "optim.name": "sgd", "optim.momentum": 0.0, "optim.lr": 0.1}
    lr, wd = 0.1, 0.05
    init = create_model(train_mod.resolve_config(RunConfig()).model, seed=0).state_dict()

    def step(**kw):
        return fit(apply_overrides(RunConfig(), {**one, **kw}), tiny_splits()).state_dict

    plain = step()
    decayed = step(**{"optim.weight_decay": wd, "optim.no_bias_decay": True})
    everything = step(**{"optim.weight_decay": wd})
    names = decayed_names(create_model(train_mod.resolve_config(RunConfig()).model))
    params = [n for n, _ in create_model(train_mod.resolve_config(RunConfig()).model).named_parameters()]
    assert names and set(params) - names  # convs' and linears' weights; biases and norms
    for name in params:
        if name in names:
            torch.testing.assert_close(decayed[name] - plain[name], -lr * wd * init[name], rtol=1e-3, atol=1e-8)
        else:
            assert torch.equal(decayed[name], plain[name]), name  # not decayed
            if init[name].any():  # (decay moves nothing that starts at 0: BatchNorm's biases)
                assert not torch.equal(everything[name], plain[name]), name  # plain weight decay would


# ---------------------------------------------------------------- gradient clipping


def test_clip_grad_norms_bounds_each_seed_by_its_own_norm():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 5, 3, generator=g), torch.randn(2, 4, generator=g)
    a[0] *= 100  # seed 0's gradient is large, seed 1's small
    a[1] *= 0.01
    b[1] *= 0.01
    leaves = [torch.zeros_like(a, requires_grad=True), torch.zeros_like(b, requires_grad=True)]
    leaves[0].grad, leaves[1].grad = a.clone(), b.clone()
    norms = clip_grad_norms(leaves, 1.0, stacked=True)
    for k in range(2):
        alone = [torch.zeros_like(a[k], requires_grad=True), torch.zeros_like(b[k], requires_grad=True)]
        alone[0].grad, alone[1].grad = a[k].clone(), b[k].clone()
        expected = torch.nn.utils.clip_grad_norm_(alone, 1.0)
        assert norms[k] == pytest.approx(float(expected))
        torch.testing.assert_close(leaves[0].grad[k], alone[0].grad)
        torch.testing.assert_close(leaves[1].grad[k], alone[1].grad)
    after = torch.cat([leaves[0].grad.flatten(1), leaves[1].grad.flatten(1)], 1).norm(dim=1)
    assert after[0] == pytest.approx(1.0, rel=1e-5)
    assert torch.equal(leaves[1].grad[1], b[1])  # the small seed is untouched, not scaled by the group's norm


def test_training_clips_each_seeds_gradient(monkeypatch):
    """Fused seeds: every step's gradient, as the optimiser sees it, has each seed's norm <= grad_clip."""
    seen = []
    real_optimizer = train_mod._optimizer

    def optimizer(cfg, params):
        opt = real_optimizer(cfg, params)

        def pre(o, a, k):
            grads = [p.grad for p in params if p.grad is not None]
            seen.append(torch.linalg.vector_norm(torch.stack([g.flatten(1).norm(dim=1) for g in grads]), dim=0))

        opt.register_step_pre_hook(pre)
        return opt

    monkeypatch.setattr(train_mod, "_optimizer", optimizer)
    splits = tiny_splits(n_train=32, n_val=16, n_test=16)
    free = fit_many(_cfg(**{"train.epochs": 1}), [0, 1], splits)
    unclipped, seen[:] = torch.stack(seen), []
    clip = float(unclipped.min()) * 0.9  # below every natural norm, so every step clips
    fit_many(_cfg(**{"train.epochs": 1, "train.grad_clip": clip}), [0, 1], splits)
    clipped = torch.stack(seen)
    assert clipped.shape == (2, 2) and free
    assert (clipped <= clip * (1 + 1e-5)).all()
    torch.testing.assert_close(clipped, torch.full((2, 2), clip), rtol=1e-5, atol=0.0)


# ---------------------------------------------------------------- fused as alone, and resumed


ONE_EACH = {
    "label_smoothing": {"train.label_smoothing": 0.1},
    "mixup": {"augment.mixup": 1.0},
    "cutmix": {"augment.cutmix": 1.0, "augment.mix_prob": 0.5},
    "mixup+cutmix": {"augment.mixup": 0.2, "augment.cutmix": 1.0},
    "warmup": {"schedule.warmup_epochs": 1, "schedule.name": "step", "schedule.step_size": 1},
    "ema": {"train.ema": 0.5},
    "no_bias_decay": {"optim.weight_decay": 0.05, "optim.no_bias_decay": True},
    "grad_clip": {"train.grad_clip": 0.5},
}


class _Kill(Callback):
    """Interrupts the whole fit (as SIGINT or a killed worker would) at a step of epoch 2."""

    def on_batch_end(self, epoch, step, images, loss):
        if epoch == 2 and step == 1:
            raise KeyboardInterrupt


@pytest.mark.usefixtures("float64")
@pytest.mark.parametrize("trick", list(ONE_EACH))
def test_trick_fused_equals_alone_and_a_killed_run_trained_again_equals_the_uninterrupted(trick):
    splits = tiny_splits(n_train=32, n_val=16, n_test=16)
    small = {"model.widths": (8, 8, 16, 16)}  # cnn4's layers (BatchNorm, dropout, max pooling), narrower
    cfg = _cfg(**{**small, "optim.name": "sgd", "optim.lr": 0.05, **ONE_EACH[trick]})
    fused = fit_many(cfg, [0, 1], splits)
    for f, a in zip(fused, _separate(cfg, [0, 1], splits), strict=True):
        _assert_same(f, a, *TOL)
    with pytest.raises(KeyboardInterrupt):
        fit_many(cfg, [0, 1], splits, [[_Kill()], []])
    again = fit_many(cfg, [0, 1], splits)  # what the runner does with a killed cell: train it again
    for f, a in zip(again, fused, strict=True):
        _assert_same(f, a, 0.0, 0.0)
