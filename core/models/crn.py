"""Common random numbers in the network: per-layer initial weights and per-layer dropout masks.

Two arms of a study with the same ``train.seed`` should start from the same weights wherever
their layers agree, and drop the same units wherever their activations agree, so that pairing
their runs by seed removes that noise (see ``core.rng``). PyTorch draws both from one global
generator, so a BatchNorm or a bias added anywhere shifts every later layer's weights and every
dropout mask. Here:

- :func:`init_weights` draws each parameter from its own generator, seeded by ``(seed,
  "init:<stable name>.weight")`` (:func:`core.rng.stream_seed`), with the distribution the layer
  would have had: PyTorch's default for ``Conv2d`` and ``Linear`` (``kaiming_uniform_(a=sqrt(5))``,
  bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``), torchvision's ResNet rule for a model whose
  ``conv_init`` is ``"kaiming_normal_fan_out"``, BatchNorm weight 1 and bias 0.
- :class:`SeededDropout` and :class:`SeededDropout2d` draw their masks from a counter-based
  generator keyed by ``(seed, "dropout:<stable name>")`` and the number of training forwards so
  far: the same mask wherever the shapes agree, and the same in a fused group of seeds
  (``core.train``) as alone, because the mask is a pure function of tensors that ``torch.vmap``
  can batch (a ``torch.Generator`` cannot be batched by ``vmap``).

A layer's *stable name* is its qualified name with each ``nn.Sequential`` index counted only
over the children that hold parameters, so parameter-free layers (ReLU, pooling, dropout,
Flatten) never renumber the others: in ``cnn4`` the classifier ``Linear`` has the same stable
name with or without dropout before it, and each block's conv with or without a BatchNorm or
a bias. A parameter-free child is named ``<count of parameter-holding siblings before it>~<class
name>`` (e.g. ``classifier.0~SeededDropout``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from core.rng import generator, stream_seed

__all__ = ["SeededDropout", "SeededDropout2d", "init_weights", "stable_names"]

_M32 = 0xFFFFFFFF
_MUL = 0x45D9F3B  # the multiplier of Thomas Mueller's 32-bit integer hash (a bijection on 32 bits)


def _hash32(x: Tensor) -> Tensor:
    """An integer hash of int64 ``x`` holding values in [0, 2**32), elementwise, same shape.

    Two rounds of xorshift-multiply (Mueller's ``hash32``), then a final xorshift; each step is a
    bijection on 32-bit values and no product exceeds 2**59, so int64 never overflows.
    """
    x = ((x >> 16) ^ x) * _MUL & _M32
    x = ((x >> 16) ^ x) * _MUL & _M32
    return (x >> 16) ^ x


class _SeededMask:
    """Shared machinery of the seeded dropouts: the key buffer and the forward counter.

    Both are int64 scalar buffers, not Python numbers: under ``torch.vmap`` each replica of a fused
    group keeps its own, and ``torch.compile`` traces the count as data instead of recompiling the
    graph for every new value of it.
    """

    crn_key: Tensor
    crn_calls: Tensor

    def _init_key(self) -> None:
        # Until init_weights reseeds it: a key from torch's global generator (seed_everything), so an
        # unseeded model still drops different units in different runs.
        key = torch.randint(0, 2**32, (), dtype=torch.int64)
        self.register_buffer("crn_key", key, persistent=False)  # not in state_dict: checkpoints unchanged
        self.register_buffer("crn_calls", torch.zeros((), dtype=torch.int64), persistent=False)

    def reseed(self, key: int) -> None:
        """Restart the mask stream at 32-bit ``key`` (``init_weights`` gives ``(seed, name)``'s)."""
        self.crn_key.fill_(key & _M32)
        self.crn_calls.zero_()

    def _keep(self, shape: tuple[int, ...], p: float, device: torch.device) -> Tensor:
        """Bool mask of ``shape``: True with probability 1 - p, from (key, call count, position).

        A counter-based generator in the manner of Philox (Salmon et al. 2011, "Parallel random
        numbers: as easy as 1, 2, 3"): a hash of the position in the mask, the key and the number
        of training forwards so far. The key is a tensor, so under ``torch.vmap`` each seed of a
        fused group (its own key) draws its own mask.
        """
        n = math.prod(shape)
        # int64 products wrap modulo 2**64, which keeps the low 32 bits the mask below is made of.
        step = _hash32((self.crn_calls.to(device) * 0x9E3779B9 + 0x7F4A7C15) & _M32)
        base = _hash32(self.crn_key.to(device) ^ step)
        idx = torch.arange(n, device=device, dtype=torch.int64).view(shape)
        h = _hash32(_hash32(idx ^ base) ^ self.crn_key.to(device))
        return h >= int(p * 2**32)


class SeededDropout(_SeededMask, nn.Dropout):
    """``nn.Dropout(p)`` whose masks come from its own seeded stream (see the module docstring).

    In training mode each element is zeroed with probability ``p`` and the others scaled by
    ``1 / (1 - p)``; in eval mode it is the identity. The mask of the n-th training forward is a
    function of ``(seed, stable name, n, element position)`` only.

    Shapes:
        any (B, ...) -> the same shape.
    """

    def __init__(self, p: float = 0.5) -> None:
        nn.Dropout.__init__(self, p)
        self._init_key()

    def forward(self, x: Tensor) -> Tensor:
        """Drop elements of ``x`` (training mode only)."""
        if not self.training or self.p == 0:
            return x
        keep = self._keep(tuple(x.shape), self.p, x.device)
        self.crn_calls += 1
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))


class SeededDropout2d(_SeededMask, nn.Dropout2d):
    """``nn.Dropout2d(p)`` (whole channels) whose masks come from its own seeded stream.

    Shapes:
        (B, C, H, W) -> the same shape; the mask is (B, C, 1, 1).
    """

    def __init__(self, p: float = 0.5) -> None:
        nn.Dropout2d.__init__(self, p)
        self._init_key()

    def forward(self, x: Tensor) -> Tensor:
        """Drop whole channels of ``x`` (training mode only)."""
        if not self.training or self.p == 0:
            return x
        keep = self._keep((*x.shape[:2], 1, 1), self.p, x.device)
        self.crn_calls += 1
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))


def _has_params(m: nn.Module) -> bool:
    return next(m.parameters(), None) is not None


def stable_names(model: nn.Module) -> dict[str, str]:
    """Qualified module name -> stable name (see the module docstring); ``""`` is the model."""
    out: dict[str, str] = {}

    def walk(module: nn.Module, qual: str, stable: str) -> None:
        out[qual] = stable
        seq, k = isinstance(module, nn.Sequential), 0
        for name, child in module.named_children():
            has = _has_params(child)
            part = (str(k) if has else f"{k}~{type(child).__name__}") if seq else name
            k += has
            walk(child, f"{qual}.{name}" if qual else name, f"{stable}.{part}" if stable else part)

    walk(model, "", "")
    return out


@torch.no_grad()
def init_weights(model: nn.Module, seed: int) -> nn.Module:
    """Initialise every parameter of ``model`` from its own stream of ``seed``; reseed its dropouts.

    Distributions: ``Conv2d``/``Linear`` weights ``kaiming_uniform_(a=sqrt(5))`` (PyTorch's
    default), or ``kaiming_normal_(mode="fan_out", nonlinearity="relu")`` for convs when the
    model's ``conv_init`` attribute is ``"kaiming_normal_fan_out"`` (torchvision's ResNet);
    biases ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``; BatchNorm weight 1, bias 0, running statistics
    reset. Any other module with parameters of its own runs its ``reset_parameters()`` with
    torch's generator seeded from its stream. Stream names: ``init:<stable name>.<param>``.

    Call it before loading pretrained weights (``create_model(cfg, seed=...)`` does), so the file
    wins where it has values.

    Args:
        model: the network, on the CPU or any device (draws are made on the CPU, then copied, so
            the values do not depend on the device).
        seed: the run's ``train.seed``.

    Returns:
        ``model``, changed in place.

    Raises:
        TypeError: a module with parameters of its own that has no ``reset_parameters``.
    """
    names = stable_names(model)
    conv_rule = getattr(model, "conv_init", "default")
    for qual, m in model.named_modules():
        st = names[qual]
        if isinstance(m, _SeededMask):
            m.reseed(stream_seed(seed, f"dropout:{st}"))
        if not any(True for _ in m.parameters(recurse=False)):
            continue
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = torch.empty(m.weight.shape)  # contiguous, on the CPU
            g = generator(seed, f"init:{st}.weight")
            if isinstance(m, nn.Conv2d) and conv_rule == "kaiming_normal_fan_out":
                nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu", generator=g)
            else:
                nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=g)
            m.weight.copy_(w)
            if m.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(w)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                b = torch.empty(m.bias.shape).uniform_(-bound, bound, generator=generator(seed, f"init:{st}.bias"))
                m.bias.copy_(b)
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            m.reset_running_stats()
            if m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif hasattr(m, "reset_parameters"):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(stream_seed(seed, f"init:{st}"))
                m.reset_parameters()
        else:
            raise TypeError(f"init_weights: {qual} ({type(m).__name__}) has parameters but no reset_parameters")
    return model
