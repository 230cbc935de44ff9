"""Typed, frozen configuration of ONE training run, and dotted overrides.

A run is fully described by a :class:`RunConfig`: model, data, augmentation,
optimiser, schedule and training settings. Every field has a default with a
comment saying why; unknown keys are an error, never a silent no-op (the
nanoGPT habit). Studies change runs only through dotted overrides such as
``{"optim.lr": 1.0e-3, "model.batchnorm": False}``.

The defaults are the recipe of seed 000 (``shared/seeds/000_cec1d97c41c0932c.txt``):
the ``cnn4`` network, Adam at 1e-3, batch 128, 60 epochs, random crop, flip,
colour jitter, normalisation and random erasing.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "TrainConfig",
    "apply_overrides",
    "config_hash",
    "flatten",
    "unflatten",
]

# Per-channel statistics of the CIFAR-10 training set, pixel values in [0, 1]
# (published figures; the JPEG rendition differs in the fourth decimal, see
# shared/data/README.md).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
# What may choose an epoch or stop a run (train.select, train.early_stopping_metric): the validation split,
# never the test set.
VALIDATION_METRICS = ("val_acc", "val_loss")


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the dotted key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    """Which network, and the settings an ablation toggles.

    ``None`` means "the preset's own value" (see ``core.models``); the resolved
    config written to MLflow always holds concrete values.
    """

    name: str = "cnn4"  # seed 000's network; `ablate models` lists the registry
    batchnorm: bool | None = None  # BatchNorm after each conv (cnn4: on)
    dropout: Literal["none", "conv", "fc", "both"] | None = None  # where dropout goes (cnn4: fc)
    dropout_p: float | None = None  # dropout probability (cnn4: 0.1, seed 000's choice)
    first_pool: bool | None = None  # max pooling in block 1 (cnn4: off; seed 000 removed it)
    widths: tuple[int, ...] | None = None  # conv channels per block (cnn4: 32, 64, 128, 256)
    bn_position: Literal["before", "after"] | None = None  # BatchNorm before or after the ReLU (seed 000: before)
    hidden: int | tuple[int, ...] | None = None  # hidden fully connected widths (cnn5: 512; cnn4: 512, 128; 0: none)
    input_size: int | None = None  # inputs are resized to this many pixels (resnet18_imagenet: 224)
    weights: str | None = None  # pretrained weights file (torchvision's or a checkpoint of this project)
    trainable: tuple[str, ...] | None = None  # train only modules with these name prefixes; () or None: all
    # A plugin model's own settings (``register_model(name, options={...})``), filled in from its defaults
    # and checked against their types by ``core.models``; the built-in presets have none. Empty, it adds no
    # key to ``flatten``, so configs without options hash as before.
    options: dict[str, Any] = {}
    num_classes: int = 10  # CIFAR-10

    @field_validator("dropout_p")
    @classmethod
    def _p_in_range(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 <= v < 1.0:
            raise ValueError("must be in [0, 1)")
        return v


class DataConfig(_Section):
    """Where CIFAR-10 comes from and how it is split."""

    root: str | None = None  # archive, ImageFolder tree or torchvision folder; None: $ABLATE_DATA
    download: bool = False  # let torchvision download cifar-10-python (needs internet)
    cache_dir: str | None = None  # decoded uint8 cache; None: $ABLATE_CACHE or ~/.cache/ablate
    val_fraction: float = 0.1  # held out of train for best-epoch selection (seed 000: none)
    split_seed: int = 0  # same for every cell of a study, so arms differ only by their factor
    train_subset: int | None = None  # class-balanced training images, for small budgets
    test_subset: int | None = None  # class-balanced test images (smoke tests only; None: all 10,000)

    @field_validator("val_fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0.0 <= v < 1.0:
            raise ValueError("must be in [0, 1)")
        return v


class AugmentConfig(_Section):
    """Training-time augmentation, drawn per image, executed on whole batches."""

    crop_padding: int = 4  # random crop after zero padding by this many pixels (0: off)
    flip: bool = True  # random horizontal flip with probability 0.5
    rotation: float = 0.0  # max rotation in degrees (seed 000 found 10 hurt; 0: off)
    brightness: float = 0.2  # colour jitter: factor drawn from [1-b, 1+b] (seed 000 uses ColorJitter)
    contrast: float = 0.2  # colour jitter: factor drawn from [1-c, 1+c]
    # colour jitter: blend with the grayscale image by a factor drawn from [1-s, 1+s] (seed 000: 0.2)
    saturation: float = Field(0.0, ge=0.0)
    # colour jitter: hue shifted by a fraction of the colour circle drawn from [-h, h] (seed 000: 0.05)
    hue: float = Field(0.0, ge=0.0, le=0.5)
    erasing: float = 0.25  # random erasing probability per image (seed 000 uses RandomErasing)
    # the erased area as a fraction of the image, drawn from [lo, hi]: torchvision's RandomErasing default;
    # seed 000 erases (0.02, 0.15)
    erasing_scale: tuple[float, float] = (0.02, 0.33)
    # Mixing whole batches (core.tricks.BatchMix), after the per-image operations: the alpha of the Beta
    # distribution of the mixing weight, 0 = off. mixup: Zhang et al. 2018 (alpha 1 on CIFAR-10, 0.2 on
    # ImageNet, as He et al. 2019); cutmix: Yun et al. 2019 (alpha 1). With both on, each mixed batch is one
    # of the two, cutmix with probability 0.5 (timm's switch_prob, torchvision's RandomChoice).
    mixup: float = Field(0.0, ge=0.0)
    cutmix: float = Field(0.0, ge=0.0)
    mix_prob: float = Field(1.0, ge=0.0, le=1.0)  # probability that a batch is mixed (timm's prob; CutMix: 0.5)
    mean: tuple[float, float, float] = CIFAR10_MEAN  # normalisation, per channel
    std: tuple[float, float, float] = CIFAR10_STD

    @field_validator("erasing_scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 < v[0] <= v[1] <= 1.0:
            raise ValueError(f"must be (lo, hi) with 0 < lo <= hi <= 1, a fraction of the image's area; got {v}")
        return v


class OptimConfig(_Section):
    """Optimiser."""

    name: Literal["adam", "adamw", "sgd"] = "adam"  # seed 000: Adam
    lr: float = 1.0e-3  # seed 000: 1e-3
    momentum: float = 0.9  # SGD only
    nesterov: bool = False  # SGD only
    weight_decay: float = 0.0  # seed 000: none
    # Weight decay only on the weights of convolutions and linear layers, none on biases and norms'
    # weights and biases (He et al. 2019, "Bag of Tricks", no bias decay; the cifar10-airbench records)
    no_bias_decay: bool = False


class ScheduleConfig(_Section):
    """Learning-rate schedule, stepped once per epoch."""

    name: Literal["none", "step", "cosine", "onecycle", "plateau"] = "none"  # seed 000: no scheduler
    step_size: int = 10  # StepLR: epochs between decays (seed 001: 10)
    gamma: float = 0.5  # StepLR: decay factor (seed 001: 0.5); plateau: the factor on a plateau
    patience: int = 2  # plateau: epochs without a better validation loss before the lr is cut
    max_lr_factor: float = 10.0  # OneCycle: peak lr = optim.lr x this (Smith & Topin 2017 use ~10x)
    min_lr: float = 0.0  # cosine: the lr reached at the last epoch
    # Linear warmup over this many epochs, stepped per batch, before the schedule starts (LinearLR then
    # SequentialLR; Goyal et al. 2017 and He et al. 2019 warm up 5 epochs). 0: off; not with onecycle.
    warmup_epochs: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _onecycle_warms_up_itself(self) -> ScheduleConfig:
        if self.warmup_epochs and self.name == "onecycle":
            raise ValueError("schedule.warmup_epochs must be 0 with schedule.name=onecycle, which warms up itself")
        return self


class TrainConfig(_Section):
    """The loop itself."""

    epochs: int = Field(60, ge=1)  # seed 000: 60
    batch_size: int = Field(128, ge=1)  # seed 000: 128
    eval_batch_size: int = Field(1000, ge=1)  # larger is faster; does not change results
    seed: int = 0  # torch, numpy and Python RNGs, data order and augmentation
    device: str = "auto"  # auto: CUDA, then Apple MPS, then CPU; or "cpu", "cuda:1", ...
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA and native-bf16 CPUs, else fp32
    channels_last: Literal["auto", "on", "off"] = "auto"  # auto: on for CUDA and CPU, off for MPS
    max_steps: int | None = None  # stop each epoch after this many batches (benchmarks, smoke)
    early_stopping: int | None = None  # stop after this many epochs without a better early_stopping_metric
    # What early stopping watches: val_loss (lower is better; seed 003) or val_acc. Never a test_* metric.
    early_stopping_metric: str = "val_loss"
    # Which epoch's weights are kept and tested: the highest val_acc or the lowest val_loss (seed 003's
    # src/train.py). Never a test_* metric. Without a validation split the last epoch is kept.
    select: str = "val_acc"
    # Cross-entropy against (1 - e) one-hot + e / classes (Szegedy et al. 2016 and He et al. 2019: e = 0.1)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    # Decay of an exponential moving average of the weights, updated after every step and evaluated, kept
    # and checkpointed in place of the raw weights (BatchNorm statistics copied); 0: off. Typical: 0.999.
    ema: float = Field(0.0, ge=0.0, lt=1.0)
    # Max total L2 norm of each run's gradient, clip_grad_norm_ per seed (Pascanu et al. 2013); 0: off
    grad_clip: float = Field(0.0, ge=0.0)
    # Seeds of one config trained side by side as one fused model (core.fused): "off", a group size
    # K, or "auto" (on CUDA as many as fit in free memory, up to 16; one at a time on the CPU, where
    # benchmarks/fused.py measured it slower: docs/performance.md). Results are the same as one at a time.
    fuse_seeds: Literal["auto", "off"] | int = "auto"
    # torch.compile the forward pass (the fused one too: vmap over functional_call compiles as one
    # graph). Off by default: on a 2-core x86-64 CPU (torch 2.14.1, 2026-12-03) cnn4 stepped 1.03x faster compiled
    # but took 109 s to compile (benchmarks/fused.py --compile both: docs/performance.md); in bf16 on a 2-core
    # Xeon with AMX (torch 2.14.1, 2026-12-04) it stepped 0.68x as fast as eager after 52 s of compiling (cnn4,
    # batch 128, --ks 1 --steps 10 --warmup 2 --compile both --precision bf16); no GPU has measured it yet.
    compile: Literal["off", "on"] = "off"

    @field_validator("early_stopping_metric", "select")
    @classmethod
    def _validation_metric(cls, v: str) -> str:
        if v.startswith("test_"):
            raise ValueError(
                f"{v} would let the test set choose; it only measures the kept weights: use val_acc or val_loss"
            )
        if v not in VALIDATION_METRICS:
            raise ValueError(f"must be one of {', '.join(VALIDATION_METRICS)}")
        return v

    @field_validator("fuse_seeds")
    @classmethod
    def _group_size(cls, v: str | int) -> str | int:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be 'auto', 'off' or a group size >= 1")
        return v


class RunConfig(_Section):
    """Everything one training run needs. Frozen; change it with :func:`apply_overrides`."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    train: TrainConfig = TrainConfig()


def flatten(cfg: BaseModel | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Return ``{"optim.lr": 0.001, ...}``: every leaf of ``cfg`` under its dotted key."""
    data = cfg.model_dump() if isinstance(cfg, BaseModel) else cfg
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def unflatten(dotted: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten`: ``{"a.b": 1}`` -> ``{"a": {"b": 1}}``."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def valid_keys() -> list[str]:
    """All dotted keys a :class:`RunConfig` accepts, sorted."""
    return sorted(flatten(RunConfig()))


OPTIONS = "model.options"  # a plugin model's options: ``model.options.<option>`` is a dotted key like any other
_OPTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _expand_options(overrides: dict[str, Any]) -> dict[str, Any]:
    """``{"model.options": {"k": 5}}`` -> ``{"model.options.k": 5}``; option names and values checked.

    Raises:
        ConfigError: ``model.options`` is not a mapping, an option name is not an identifier, or an
            option's value is a mapping (options are numbers, booleans, strings or lists).
    """
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        if key == OPTIONS:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(
                    f"config key '{OPTIONS}': a mapping option -> value, e.g. {{kernel_size: 5}}; got {value!r}"
                )
            items = {f"{OPTIONS}.{k}": v for k, v in value.items()}
        elif key.startswith(OPTIONS + "."):
            items = {key: value}
        else:
            out[key] = value
            continue
        for dotted, v in items.items():
            name = dotted.removeprefix(OPTIONS + ".")
            if not _OPTION_NAME.match(name):
                raise ConfigError(f"config key '{dotted}': an option name is an identifier such as kernel_size")
            if isinstance(v, dict):
                raise ConfigError(
                    f"config key '{dotted}': an option is a number, boolean, string or list, not a mapping"
                )
            out[dotted] = v
    return out


def apply_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Return a new config with dotted ``overrides`` applied and validated.

    A plugin model's options are keys too: ``{"model.options.kernel_size": 5}``, or the mapping
    ``{"model.options": {"kernel_size": 5}}``; their names and types are checked against the model
    by ``core.models.resolve_model_config``, which knows its declared options.

    Args:
        cfg: the starting config (not modified).
        overrides: ``{"section.field": value}``; values are validated by type.

    Raises:
        ConfigError: an unknown key (the message lists close valid keys) or a
            value of the wrong type or range (the message names the key).
    """
    overrides = _expand_options(overrides)
    keys = set(valid_keys())
    for key in overrides:
        if key not in keys and not key.startswith(OPTIONS + "."):
            section = key.split(".")[0]
            near = [k for k in sorted(keys) if k.startswith(section + ".")] or sorted(keys)
            if section == "model":
                near.append(f"{OPTIONS}.<option>")
            raise ConfigError(f"unknown config key '{key}'; valid keys: {', '.join(near)}")
    merged = flatten(cfg)
    merged.update(overrides)
    try:
        return RunConfig.model_validate(unflatten(merged))
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"config key '{key}': {msg} (got {err.get('input')!r})") from None


# Where the data lives, which device trains and how seeds are grouped do not change what a run means:
# a study resumed on another machine, or with the archive elsewhere, is the same study.
_NOT_HASHED = (
    "data.root",
    "data.download",
    "data.cache_dir",
    "train.device",
    "train.eval_batch_size",
    "train.fuse_seeds",  # fused or one at a time, the runs are the same (core.fused)
    "train.compile",  # compiled or eager, the same computation (to rounding)
)


# Keys added after studies had been run, all off by default: hashed only when they differ from their
# default, so a config that leaves them alone (every study written before them) keeps its hash and its runs.
_HASHED_WHEN_SET = (
    "augment.mixup",
    "augment.cutmix",
    "augment.mix_prob",
    "augment.saturation",  # issue 24: seed 000's colour jitter and erasing
    "augment.hue",
    "augment.erasing_scale",
    "train.select",  # issue 24: seed 003 keeps the lowest validation loss
    "train.early_stopping_metric",
    "optim.no_bias_decay",
    "schedule.warmup_epochs",
    "train.label_smoothing",
    "train.ema",
    "train.grad_clip",
)


def config_hash(cfg: RunConfig) -> str:
    """A short, stable hash (12 hex digits) of the settings that change results.

    Leaves out where the data lives and which device trains (``_NOT_HASHED``), and the training tricks
    at their defaults (``_HASHED_WHEN_SET``: configs from before they existed hash as they did).
    """
    defaults = flatten(RunConfig())
    flat = {
        k: v
        for k, v in flatten(cfg).items()
        if k not in _NOT_HASHED and not (k in _HASHED_WHEN_SET and v == defaults[k])
    }
    text = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
