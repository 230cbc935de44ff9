"""Which floating-point precision a run trains in: ``train.precision`` resolved for its device.

``auto`` means bf16 autocast where the device computes bf16 natively, and fp32 elsewhere:

- CUDA: bf16 (autocast on the GPU's bf16 tensor cores; ``fp16`` only when asked for);
- CPU: bf16 when the CPU has AVX512-BF16 (AMD Zen 4, Intel Cooper Lake and later) or AMX
  tiles (Intel Sapphire Rapids and later): ``torch.autocast("cpu", torch.bfloat16)`` then runs
  convolutions and matrix products through oneDNN's native bf16 kernels. A CPU without them
  would emulate bf16 (convert to fp32, compute, round back), slower than fp32, so ``auto`` is
  fp32 there;
- anything else (Apple MPS, ...): fp32.

:func:`cpu_bf16_native` is the one place that decides whether this CPU computes bf16 natively
(tests replace it to check both answers). Autocast keeps BatchNorm statistics, the loss and the
optimiser state in fp32 (only the lower-precision op list, convolutions and matrix products,
runs in bf16).
"""

from __future__ import annotations

import functools
import platform
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from core.config import RunConfig

__all__ = ["autocast_context", "cpu_bf16_native", "cpu_features", "cpu_summary", "resolve_precision"]

PRECISIONS = ("fp32", "bf16", "fp16")
_NATIVE_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of native bf16 arithmetic


def _cpuinfo() -> tuple[str, set[str]]:
    """(model name, flags) from ``/proc/cpuinfo``; ``("", set())`` where there is none (macOS, Windows)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "", set()
    name, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not name:
            name = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return name, flags


def _torch_cpu_check(name: str) -> bool | None:
    """``torch.cpu.<name>()`` (private helpers of torch's cpuinfo, e.g. ``_is_avx512_bf16_supported``), or None."""
    fn = getattr(torch.cpu, name, None)
    if fn is None:
        return None
    try:
        return bool(fn())
    except Exception:  # noqa: BLE001 - a private helper; absent or failing means: unknown
        return None


@functools.lru_cache(maxsize=1)
def cpu_features() -> dict[str, object]:
    """What this CPU and this torch build offer for bf16.

    Returns:
        ``model`` (the CPU's model name, or ``platform.processor()``), ``capability``
        (``torch.backends.cpu.get_cpu_capability()``: the widest vector ISA torch's kernels use,
        e.g. ``AVX512``), ``onednn`` (oneDNN is built in and enabled), ``onednn_bf16`` (oneDNN
        accepts bf16: ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``, true on any AVX-512 CPU,
        emulated or not), ``avx512_bf16`` and ``amx_bf16`` (the native instructions, from torch's
        cpuinfo helpers where it has them, else the ``/proc/cpuinfo`` flags), each a bool.
    """
    model, flags = _cpuinfo()
    try:
        onednn_bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        onednn_bf16 = False
    avx512_bf16 = _torch_cpu_check("_is_avx512_bf16_supported")
    amx_tile = _torch_cpu_check("_is_amx_tile_supported")
    return {
        "model": model or platform.processor() or platform.machine(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "onednn": bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled),
        "onednn_bf16": onednn_bf16,
        "avx512_bf16": "avx512_bf16" in flags if avx512_bf16 is None else avx512_bf16,
        # AMX tiles without AMX-BF16 do not exist in shipped CPUs; the flag says it where there is one
        "amx_bf16": ("amx_bf16" in flags) if flags else bool(amx_tile),
    }


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 natively through oneDNN: AVX512-BF16 or AMX, and oneDNN on.

    The one detection ``train.precision: auto`` follows on the CPU (see :func:`resolve_precision`).
    """
    f = cpu_features()
    return bool(f["onednn"] and f["onednn_bf16"] and (f["avx512_bf16"] or f["amx_bf16"]))


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``train.precision`` on ``device``: ``fp32``, ``bf16`` or ``fp16`` (``auto`` resolved).

    Args:
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        device: the training device (``torch.device`` or its name, e.g. ``"cpu"``, ``"cuda:0"``).

    Returns:
        ``precision`` itself unless it is ``auto``; ``auto`` gives ``bf16`` on CUDA and on a CPU
        where :func:`cpu_bf16_native` is true, else ``fp32``.

    Raises:
        ValueError: ``precision`` is none of the four.
    """
    if precision in PRECISIONS:
        return precision
    if precision != "auto":
        raise ValueError(f"train.precision must be auto, {', '.join(PRECISIONS)}; got {precision!r}")
    kind = torch.device(device).type
    if kind == "cuda" or (kind == "cpu" and cpu_bf16_native()):
        return "bf16"
    return "fp32"


def cpu_summary() -> str:
    """One line on what the CPU offers for bf16 and what ``auto`` picks on it, for benchmark headers."""
    f = cpu_features()

    def yes(v: object) -> str:
        return "yes" if v else "no"

    native = "native" if cpu_bf16_native() else "not native (emulated: slower than fp32)"
    return (
        f"cpu {f['model']}: capability {f['capability']}, oneDNN {yes(f['onednn'])} (bf16 {yes(f['onednn_bf16'])}), "
        f"AVX512-BF16 {yes(f['avx512_bf16'])}, AMX-BF16 {yes(f['amx_bf16'])}: bf16 {native}, "
        f"train.precision auto = {resolve_precision('auto', 'cpu')}"
    )


def autocast_context(cfg: RunConfig, device: torch.device) -> tuple[AbstractContextManager, bool]:
    """``(context manager, use_grad_scaler)`` for ``train.precision`` on ``device``.

    ``auto`` resolves as :func:`resolve_precision` says: bf16 on CUDA and on a CPU that computes
    bf16 natively (AVX512-BF16 or AMX), fp32 elsewhere. bf16 and fp16 are ``torch.autocast``:
    convolutions and matrix products in the low precision, the loss, BatchNorm's statistics and the
    weights (so the optimiser's state) in fp32. Here, below ``core.train`` and ``core.fused``, which
    both use it.
    """
    precision = resolve_precision(cfg.train.precision, device)
    if precision == "fp32":
        return nullcontext(), False
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype), precision == "fp16"
