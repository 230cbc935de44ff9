"""K runs of one config that differ only in ``train.seed``, trained as one fused model.

On a GPU one small CIFAR model leaves most of the device idle; training the seeds of a study
arm side by side in one model fills it. HFTA (Wang et al., MLSys 2021, "Horizontally Fused
Training Array") showed the recipe: K copies of a conv become one grouped conv, K BatchNorms one
BatchNorm over K times the channels, K linear layers one batched matmul, and per-element
optimisers (SGD, Adam, AdamW) stay exact per copy.

Design choice: ``torch.func`` instead of hand-written HFTA layers. The K models' parameters and
buffers are stacked into (K, ...) tensors and the network runs under ``torch.vmap`` over
``torch.func.functional_call`` (the model-ensembling recipe of the torch.func docs).
``vmap``'s convolution batching rule (``aten/src/ATen/functorch/BatchRulesConvolution.cpp``)
turns a conv with batched weights and inputs into exactly HFTA's grouped convolution (groups =
K), linear layers become batched matmuls, and BatchNorm with batched running statistics
normalises and updates each seed's statistics separately. So every registered model fuses
unchanged (the cnn presets, ``resnet18``, ``resnet18_imagenet``), the fused checkpoints are the
ordinary state dicts sliced out of the stack, and one optimiser over the stacked leaves steps
all seeds at once (the per-element maths of Adam/AdamW/SGD, weight decay included, is the same
per seed; in floating point the grouped kernels sum in another order, so fused and separate
runs agree to rounding, which Adam's normalisation can amplify for gradients near zero).

What cannot fuse, and why (:func:`unfusable_reason`): the ``plateau`` schedule (it cuts the lr
on each run's own validation loss, and the fused seeds share one lr), ``fp16`` precision (one
GradScaler would skip the step of every seed when one overflows), and a model whose forward
``vmap`` cannot batch (probed once per model config on the CPU, in float32 and, when the run
will use bf16, under bf16 autocast too).

``K = 1`` uses the plain module (:class:`Single`): the ordinary run is the same training loop
(``core.train``) without ``vmap``.

The training tricks (``core.tricks``) stay per seed: each seed mixes its batch with its own draws,
its gradient norm is clipped alone (over its slices of the stacked leaves), and its moving average of
the weights is a :meth:`Stacked.clone` updated from its own slices.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap
from torch.overrides import TorchFunctionMode

from core.config import RunConfig

__all__ = ["Single", "Stacked", "fuse_group_size", "unfusable_reason"]

MAX_AUTO_K = 16  # auto never fuses more than this (the largest K benchmarks/fused.py measures)


class Single:
    """One plain model behind the replica interface (K = 1).

    Args:
        model: the network, on its training device.
        compiled: run the forward pass through ``torch.compile`` (``train.compile=on``); the
            weights stay the module's own, so :meth:`state_dict` has the ordinary keys.

    Shapes:
        :meth:`__call__` maps float (1, B, 3, H, W) to logits (1, B, C);
        :meth:`shared` maps (B, 3, H, W) to (1, B, C).
    """

    def __init__(self, model: nn.Module, compiled: bool = False) -> None:
        self.model, self.k = model, 1
        self._forward = torch.compile(model) if compiled else model

    def __call__(self, x: Tensor) -> Tensor:
        return self._forward(x[0])[None]

    def shared(self, x: Tensor) -> Tensor:
        return self._forward(x)[None]

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def trainable(self) -> list[Tensor]:
        """The parameters the optimiser steps (frozen ones, ``model.trainable``, left out)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def named_trainable(self) -> list[tuple[str, Tensor]]:
        """:meth:`trainable` with the parameters' names (``features.0.0.weight``, ...)."""
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def tensors(self) -> tuple[list[Tensor], list[Tensor]]:
        """``(parameters, buffers)`` in a fixed order, the same in a :meth:`clone`."""
        return list(self.model.parameters()), list(self.model.buffers())

    def clone(self) -> Single:
        """A copy with tensors of its own and no gradients (the weights' moving average, ``train.ema``)."""
        model = copy.deepcopy(self.model).requires_grad_(False)
        return Single(model)

    def state_dict(self, j: int) -> dict[str, Tensor]:
        """Replica ``j``'s (here: the model's) state dict, copied to the CPU."""
        assert j == 0
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def keep(self, js: Sequence[int], opt: torch.optim.Optimizer | None = None) -> None:
        """Nothing to drop with one replica: the run ends when it does."""


class _AutocastUnderVmap(TorchFunctionMode):
    """What ``torch.autocast`` does to the registered models' ops, done before ``vmap`` sees them.

    ``torch.autocast`` works in the dispatcher, below ``vmap``'s batching rules: under ``vmap`` a
    conv or linear with batched weights leaves autocast out and runs in float32 (measured with
    torch 2.14 on the CPU: ``vmap`` over ``functional_call`` of ``nn.Linear`` or ``nn.Conv2d``
    inside ``torch.autocast("cpu", torch.bfloat16)`` returns float32 where the plain module returns
    bfloat16; pytorch/functorch#305 and pytorch/pytorch#105442 report such mismatches). A
    torch-function mode runs in Python before the dispatcher, so the fused model gets the plain
    model's dtypes:

    - convolutions, linear layers and matmuls (autocast's lower-precision list) take their float
      inputs, weights and biases cast to ``dtype``;
    - ``batch_norm`` of a ``dtype`` input computes in its statistics' dtype (float32) and returns
      ``dtype``, as the plain model's mixed kernel does (bf16 input, float32 statistics);
      ``vmap``'s batching rule for ``batch_norm`` refuses that mix of dtypes, so the input is cast
      up first.

    With ``dtype`` None (no autocast) nothing is cast. In both cases ``batch_norm`` in evaluation
    (running statistics) is computed as its definition, ``(x - mean) / sqrt(var + eps) * w + b``,
    with elementwise ops: on CUDA (torch 2.11, H200) ``vmap``'s rule for ``batch_norm`` asks cuDNN's
    path whether a channels_last input is contiguous, which functorch does not implement
    ("NYI: querying is_contiguous inside of vmap for memory_format other than
    torch.contiguous_format"), so every fused evaluation failed there.

    Everything else (ReLU, pooling, dropout, the residual adds) follows its inputs' dtype in both.
    """

    LOW = frozenset({F.conv1d, F.conv2d, F.conv3d, F.linear, torch.matmul})
    BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")

    def __init__(self, dtype: torch.dtype | None) -> None:
        super().__init__()
        self.dtype = dtype

    def _low(self, a):
        # autocast casts float32 (and the other low precision), never float64
        eligible = isinstance(a, Tensor) and a.is_floating_point() and a.dtype != torch.float64
        return a.to(self.dtype) if eligible else a

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.LOW and self.dtype is not None:
            return func(*map(self._low, args), **{k: self._low(v) for k, v in kwargs.items()})
        if func is F.batch_norm and args:
            bn = {"weight": None, "bias": None, "training": False, "eps": 1e-5}
            bn.update(zip(self.BN_ARGS, args, strict=False))  # trailing arguments may be left to their defaults
            bn.update(kwargs)
            x, mean, var = bn["input"], bn["running_mean"], bn["running_var"]
            if not bn["training"] and mean is not None and var is not None:
                shape = (1, -1) + (1,) * (x.dim() - 2)  # (1, C, 1, 1) for (B, C, H, W)
                y = (x.to(mean.dtype) - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn["eps"])
                if bn["weight"] is not None:
                    y = y * bn["weight"].view(shape)
                if bn["bias"] is not None:
                    y = y + bn["bias"].view(shape)
                return y.to(x.dtype)
            if x.dtype == self.dtype:
                wide = mean.dtype if isinstance(mean, Tensor) else torch.float32  # the statistics' dtype
                return func(x.to(wide), *args[1:], **kwargs).to(self.dtype)
        return func(*args, **kwargs)


def _autocast_ops(x: Tensor, training: bool = True):
    """:class:`_AutocastUnderVmap` for autocast's dtype (None when autocast is off for ``x``'s device).

    Entered when autocast is on, or in evaluation (``training`` False), where ``batch_norm`` needs it
    on CUDA; else nothing.
    """
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return _AutocastUnderVmap(torch.get_autocast_dtype(kind))
    if not training:
        return _AutocastUnderVmap(None)
    return contextlib.nullcontext()


class Stacked:
    """K models of one architecture as stacked (K, ...) parameters and buffers under ``torch.vmap``.

    Args:
        models: K networks of the same class and config (their own initial weights), on the CPU.
        device: where the stacked tensors live.
        compiled: run the vmapped forward through ``torch.compile`` (``train.compile=on``).

    Shapes:
        :meth:`__call__` maps float (K, B, 3, H, W) (each replica its own batch) to logits
        (K, B, C); :meth:`shared` maps one batch (B, 3, H, W) for all replicas to (K, B, C).
    """

    def __init__(self, models: Sequence[nn.Module], device: torch.device, compiled: bool = False) -> None:
        self.k = len(models)
        self.base = copy.deepcopy(models[0]).to("meta")  # the structure; the tensors come from the stack
        self.persistent = list(models[0].state_dict().keys())
        named = [dict(m.named_parameters()) for m in models]
        bufs = [dict(m.named_buffers()) for m in models]  # non-persistent too (the dropout keys)
        self.params = {
            n: torch.stack([d[n].detach() for d in named]).to(device).requires_grad_(p.requires_grad)
            for n, p in named[0].items()
        }
        self.buffers = {n: torch.stack([d[n] for d in bufs]).to(device) for n in bufs[0]}
        self._each = vmap(self._call, in_dims=(0, 0, 0))
        self._shared = vmap(self._call, in_dims=(0, 0, None))
        if compiled:
            self._each, self._shared = torch.compile(self._each), torch.compile(self._shared)

    def _call(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def __call__(self, x: Tensor) -> Tensor:
        with _autocast_ops(x, self.base.training):
            return self._each(self.params, self.buffers, x)

    def shared(self, x: Tensor) -> Tensor:
        with _autocast_ops(x, self.base.training):
            return self._shared(self.params, self.buffers, x)

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)

    def trainable(self) -> list[Tensor]:
        """The stacked leaves the optimiser steps (frozen parameters left out)."""
        return [p for p in self.params.values() if p.requires_grad]

    def named_trainable(self) -> list[tuple[str, Tensor]]:
        """:meth:`trainable` with the model's parameter names; each leaf is (K, ...)."""
        return [(n, p) for n, p in self.params.items() if p.requires_grad]

    def tensors(self) -> tuple[list[Tensor], list[Tensor]]:
        """``(parameters, buffers)``, stacked (K, ...), in a fixed order, the same in a :meth:`clone`."""
        return list(self.params.values()), list(self.buffers.values())

    def clone(self) -> Stacked:
        """A copy with stacked tensors of its own and no gradients (the weights' moving average,
        ``train.ema``); it shares the structure and the (compiled) vmapped forward."""
        twin = copy.copy(self)
        twin.params = {n: p.detach().clone() for n, p in self.params.items()}
        twin.buffers = {n: b.clone() for n, b in self.buffers.items()}
        return twin

    def state_dict(self, j: int) -> dict[str, Tensor]:
        """Replica ``j``'s ordinary state dict (the model's keys, persistent buffers only), on the CPU."""
        every = {**self.params, **self.buffers}
        return {n: every[n][j].detach().cpu().clone() for n in self.persistent}

    @torch.no_grad()
    def keep(self, js: Sequence[int], opt: torch.optim.Optimizer | None = None) -> None:
        """Keep only replicas ``js`` (in that order), slicing the optimiser's state to match.

        The optimiser object stays (a learning-rate schedule holds it); its parameter leaves and
        their per-element state (Adam's moments, SGD's momentum) are replaced by their slices, so
        the kept seeds go on exactly as before. ``opt`` None: the replicas alone (a :meth:`clone`).
        """
        index = torch.tensor(list(js), device=next(iter(self.params.values())).device)
        old_to_new: dict[Tensor, Tensor] = {}
        for n, p in list(self.params.items()):
            q = p.detach().index_select(0, index).clone().requires_grad_(p.requires_grad)
            self.params[n] = q
            old_to_new[p] = q
        for n, b in list(self.buffers.items()):
            self.buffers[n] = b.index_select(0, index).clone()
        for group in opt.param_groups if opt is not None else []:
            new = []
            for p in group["params"]:
                q = old_to_new[p]
                state = opt.state.pop(p, None)
                if state is not None:
                    opt.state[q] = {
                        s: v.index_select(0, index).clone() if torch.is_tensor(v) and v.shape == p.shape else v
                        for s, v in state.items()
                    }
                new.append(q)
            group["params"] = new
        self.k = len(js)


@functools.lru_cache(maxsize=32)
def _vmap_probe(model_json: str, bf16: bool) -> str | None:
    """None when two replicas of the model run forward and backward under ``vmap``; else the error.

    With ``bf16`` the forward runs under ``torch.autocast("cpu", torch.bfloat16)`` too (CPU
    autocast casts the ops CUDA's does), so a model whose fused forward breaks in bf16 trains
    one seed at a time instead of failing on the GPU.
    """
    from core.config import ModelConfig
    from core.models import create_model

    mcfg = ModelConfig.model_validate_json(model_json)
    size = int(mcfg.input_size or 32)
    size = 32 if size > 32 else size  # the models resize inside forward
    for autocast in [contextlib.nullcontext()] + ([torch.autocast("cpu", torch.bfloat16)] if bf16 else []):
        try:
            models = [create_model(mcfg, seed=s) for s in (0, 1)]
            reps = Stacked(models, torch.device("cpu"))
            reps.train()
            with autocast:
                out = reps(torch.zeros(2, 2, 3, size, size))
            out.float().sum().backward()
        except Exception as exc:  # any failure means: do not fuse this model
            where = " in bf16" if isinstance(autocast, torch.autocast) else ""
            return f"{type(exc).__name__}{where}: {exc}"
    return None


def unfusable_reason(cfg: RunConfig) -> str | None:
    """Why seeds of ``cfg`` cannot be trained as one fused model, or ``None`` if they can.

    Args:
        cfg: a resolved run config (``core.train.resolve_config``).
    """
    if cfg.schedule.name == "plateau":
        return "schedule.name=plateau cuts the lr on each run's own validation loss; fused seeds share one lr"
    if cfg.train.precision == "fp16":
        return "train.precision=fp16: one GradScaler would skip every fused seed's step when one overflows"
    # auto: bf16 on CUDA and on CPUs with native bf16 (core.precision); the probe itself runs on the CPU
    err = _vmap_probe(cfg.model.model_dump_json(), cfg.train.precision in ("auto", "bf16"))
    if err is not None:
        return f"model {cfg.model.name} does not run under torch.vmap ({err})"
    return None


def _cuda_replicas(cfg: RunConfig, device: torch.device) -> int:
    """How many replicas of ``cfg``'s model fit in the free memory of CUDA ``device``.

    Measures one replica's training step (forward and backward of one batch under the run's
    autocast) with ``torch.cuda.max_memory_allocated``, adds Adam's two moments per trainable
    parameter, and divides 80% of ``torch.cuda.mem_get_info``'s free bytes by it.
    """
    import torch.nn.functional as F

    from core.models import create_model
    from core.precision import autocast_context

    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    model = create_model(cfg.model, seed=0).to(device)
    autocast, _ = autocast_context(cfg, device)
    x = torch.zeros(cfg.train.batch_size, 3, 32, 32, device=device)
    with autocast:
        loss = F.cross_entropy(model(x).float(), torch.zeros(len(x), dtype=torch.long, device=device))
    loss.backward()
    peak = torch.cuda.max_memory_allocated(device) - start
    moments = 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    if cfg.train.ema:  # the moving average: one more copy of every parameter and buffer
        moments += sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    del model, loss, x
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, int(0.8 * free // max(1, peak + moments)))


def fuse_group_size(cfg: RunConfig, n_seeds: int, device: torch.device) -> tuple[int, str]:
    """How many seeds of ``cfg`` to train as one fused model, and why.

    ``train.fuse_seeds``: ``off`` -> 1; an int K -> min(K, n_seeds); ``auto`` -> on CUDA, as many
    as fit in free memory (at most :data:`MAX_AUTO_K`), elsewhere 1 (``benchmarks/fused.py`` found
    fused slower than one at a time on 2-core CPUs, in fp32 and more so in bf16: cnn4, batch 128,
    2-core Xeon with AMX, torch 2.14.1, 2026-12-04, ``--ks 1,2,4 --steps 8 --warmup 2 --batch 128
    --precision fp32,bf16``: K = 2 at 0.43x (fp32) and 0.30x (bf16) of one seed at a time, K = 4 at
    0.37x and 0.23x; see docs/performance.md). Any setting gives 1 when :func:`unfusable_reason`
    names a reason.

    Args:
        cfg: a resolved run config.
        n_seeds: how many seeds are waiting to train.
        device: the training device.

    Returns:
        ``(K, reason)``: 1 <= K <= max(1, n_seeds), and a sentence for the user.
    """
    setting = cfg.train.fuse_seeds
    if n_seeds <= 1:
        return 1, "one seed to train"
    if setting == "off":
        return 1, "train.fuse_seeds=off"
    if setting == "auto" and device.type != "cuda":
        return 1, f"train.fuse_seeds=auto trains one seed at a time on {device.type} (not faster fused there)"
    reason = unfusable_reason(cfg)
    if reason is not None:
        return 1, f"seeds train one at a time: {reason}"
    if setting == "auto":
        k = min(_cuda_replicas(cfg, device), MAX_AUTO_K, n_seeds)
        return k, f"train.fuse_seeds=auto: {k} seeds fused (free memory of {device})"
    k = min(int(setting), n_seeds)
    return k, f"train.fuse_seeds={setting}: {k} seeds fused"


def per_replica_topk(logits: Tensor, targets: Tensor, k: int = 1) -> Tensor:
    """Per replica, how many samples have their true class among the ``k`` highest logits.

    Args:
        logits: float (K, B, C).
        targets: int64 (B,) (shared) or (K, B).

    Returns:
        int64 (K,) on the logits' device (no host sync).

    For ``k == 1`` the prediction is ``argmax`` (the first of tied logits), the same as the confusion
    matrix's, so top-1 accuracy equals the count-weighted mean of the per-class accuracies even where
    logits tie (bf16 logits of an untrained network often do; ``topk`` breaks ties in another order).
    """
    t = targets if targets.dim() == 2 else targets.expand(logits.shape[0], -1)
    if k == 1:
        return (logits.argmax(dim=-1) == t).sum(-1)
    top = logits.topk(k, dim=-1).indices  # (K, B, k)
    return (top == t[..., None]).any(-1).sum(-1)
