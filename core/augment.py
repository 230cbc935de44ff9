"""Training-time augmentation drawn per image, executed on whole batches.

The data set lives on the training device as one uint8 tensor ``(N, 3, H, W)``;
:class:`BatchAugment` turns a uint8 batch into a normalised float32 batch with a
handful of tensor ops per step: no per-image Python loop, no PIL, no DataLoader.
Every random parameter (crop offset, flip, angle, jitter factors, erasing
rectangle) is drawn independently per image, as the torchvision pipeline does;
only the execution is batched. The idea follows cifar10-airbench by Keller Jordan
(batched per-image flips and translations on a GPU-resident data set).

The seed projects' per-image torchvision/PIL pipeline stays available as
:func:`reference_transform` and :class:`ReferenceDataset`; tests compare the two
in distribution.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image

from core.config import AugmentConfig

__all__ = ["BatchAugment", "ReferenceDataset", "normalize", "reference_transform", "shift_hue"]

# One generator for every operation, one per operation name, or None (torch's default generator).
Generators = torch.Generator | Mapping[str, torch.Generator] | None

_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
# torchvision's _hsv_to_rgb: for each HSV sector 0..5, which of (v, p, q, t) is R, G and B
_HSV_SECTORS = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], dtype=torch.long)
_ERASE_RATIO = (0.3, 3.3)  # RandomErasing's default aspect ratio h/w (its area fraction: augment.erasing_scale)
_ERASE_TRIES = 10  # RandomErasing draws up to 10 rectangles, keeps the first that fits


def _check(x: torch.Tensor) -> None:
    if x.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 image batch, got {x.dtype}")
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected shape (B, 3, H, W), got {tuple(x.shape)}")


def _affine(mean: Sequence[float], std: Sequence[float], device: torch.device):
    """(scale, shift), each (1, 3, 1, 1) float32, with x*scale - shift == (x/255 - mean)/std."""
    m = torch.tensor(mean, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    scale, shift = (1.0 / (255.0 * s)).float(), (m / s).float()
    return scale.view(1, 3, 1, 1).to(device), shift.view(1, 3, 1, 1).to(device)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Convert uint8 images to normalised float32, ``(x / 255 - mean) / std``.

    The batched equivalent of torchvision ``ToTensor()`` + ``Normalize(mean, std)``;
    used for evaluation and as the last step of :class:`BatchAugment`.

    Args:
        x: uint8 ``(B, 3, H, W)``, pixel values 0..255, any device.
        mean: per-channel mean of pixel values in [0, 1] (3 floats).
        std: per-channel standard deviation, same units (3 floats).

    Returns:
        float32 ``(B, 3, H, W)`` on ``x.device``, a new tensor.

    Raises:
        TypeError: ``x`` is not uint8.
        ValueError: ``x`` is not ``(B, 3, H, W)``.
    """
    _check(x)
    scale, shift = _affine(mean, std, x.device)
    return x.float().mul_(scale).sub_(shift).contiguous()


def _rotate(y: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate float ``(B, C, H, W)`` by per-image ``angle`` (B,) radians, counter-clockwise.

    About the image centre, nearest neighbour, zero fill: matches torchvision
    ``rotate(..., interpolation=NEAREST)`` pixel for pixel (up to rounding ties).
    """
    b, ch, h, w = y.shape
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    # Output (x, y) samples the input at R(-angle) (x, y), in normalised coordinates.
    row0 = torch.stack([cos, -sin * h / w, zero], 1)
    row1 = torch.stack([sin * w / h, cos, zero], 1)
    grid = F.affine_grid(torch.stack([row0, row1], 1), [b, ch, h, w], align_corners=False)
    return F.grid_sample(y, grid, mode="nearest", padding_mode="zeros", align_corners=False)


class BatchAugment:
    """Per-image random augmentation executed on a whole batch.

    Same operations, order and parameter distributions as :func:`reference_transform`
    (torchvision ``RandomCrop(padding=p)``, ``RandomHorizontalFlip()``,
    ``RandomRotation(r)`` with nearest interpolation and fill 0,
    ``ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)``, ``ToTensor()``,
    ``Normalize(mean, std)``, ``RandomErasing(p=e, scale=erasing_scale)``), batched in the
    manner of cifar10-airbench (Keller Jordan):

    * crop and flip are one exact integer gather (a row ``index_select`` and a column
      ``gather``) from the zero-padded uint8 batch; offsets uniform in 0..2p;
    * rotation is one ``affine_grid`` + ``grid_sample(mode="nearest")`` with a
      per-image matrix, about the image centre, counter-clockwise for positive angles
      (pixel-identical to torchvision's ``rotate``);
    * colour jitter applies brightness, contrast, saturation, then hue: a fixed order, where
      torchvision shuffles the four per image (brightness and contrast commute unless pixels
      clip). Brightness scales by ``f ~ U[max(0, 1-b), 1+b]``; contrast blends with the image's
      mean grayscale value with ``f ~ U[max(0, 1-c), 1+c]``; saturation blends with the
      per-pixel grayscale image with ``f ~ U[max(0, 1-s), 1+s]``; hue turns the colour circle
      by ``f ~ U[-h, h]`` (RGB -> HSV, ``(H + f) mod 1``, -> RGB); each clamps to the valid
      range. This is torchvision's ``adjust_brightness``/``adjust_contrast``/
      ``adjust_saturation``/``adjust_hue`` maths (``torchvision.transforms.v2.functional``,
      grayscale weights 0.2989, 0.587, 0.114) on float values. Values stay float: PIL
      truncates to uint8 after each step (0.5 grey level lower on average);
    * random erasing draws 10 candidate rectangles per image exactly as torchvision
      does (area fraction ~ U[augment.erasing_scale], default torchvision's [0.02, 0.33],
      log aspect ratio ~ U[log 0.3, log 3.3],
      sides rounded) and keeps the first that fits, so its distribution matches
      torchvision's; if none fits the image is left alone, as in torchvision.
      Erased pixels are 0 after normalisation.

    Operations that are off (0 / False) cost nothing. The random numbers are drawn by
    :meth:`draw`, one ``torch.rand`` per operation that is on, each from its own generator
    when given one per operation (``core.rng.augment_generators``), and applied by
    :meth:`apply`.

    Args:
        cfg: the augmentation settings.

    Raises:
        ValueError: a negative padding, rotation, brightness, contrast or saturation, a hue
            outside [0, 0.5], or an erasing probability outside [0, 1].
    """

    def __init__(self, cfg: AugmentConfig):
        if min(cfg.crop_padding, cfg.rotation, cfg.brightness, cfg.contrast, cfg.saturation) < 0:
            raise ValueError(f"augmentation settings must be >= 0, got {cfg}")
        if not 0.0 <= cfg.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5] (a fraction of the colour circle), got {cfg.hue}")
        if not 0.0 <= cfg.erasing <= 1.0:
            raise ValueError(f"erasing probability must be in [0, 1], got {cfg.erasing}")
        self.cfg = cfg
        self.pad = int(cfg.crop_padding)
        # Uniform draws per image of each operation that is on (the stream names of core.rng).
        widths = {
            "crop": (2, self.pad > 0),
            "flip": (1, cfg.flip),
            "rotation": (1, cfg.rotation > 0),
            "brightness": (1, cfg.brightness > 0),
            "contrast": (1, cfg.contrast > 0),
            "saturation": (1, cfg.saturation > 0),
            "hue": (1, cfg.hue > 0),
            "erasing": (3 + 2 * _ERASE_TRIES, cfg.erasing > 0),
        }
        self._widths = {name: w for name, (w, on) in widths.items() if on}
        self._consts: dict[tuple, dict[str, torch.Tensor]] = {}

    def _device_consts(self, device: torch.device, h: int, w: int) -> dict[str, torch.Tensor]:
        """Small constant tensors, made once per (device, H, W): no host copies per step."""
        key = (device, h, w)
        if key not in self._consts:
            scale, shift = _affine(self.cfg.mean, self.cfg.std, device)
            self._consts[key] = {
                "scale": scale,
                "shift": shift,
                "gray": torch.tensor(_GRAY, device=device).view(1, 3),
                "sign": torch.tensor([1.0, -1.0], device=device),
                "hw": torch.tensor([float(h), float(w)], device=device),
                "pos": torch.arange(max(h, w), device=device, dtype=torch.float32),
            }
        return self._consts[key]

    def draw(self, b: int, device: torch.device | str, generator: Generators = None) -> dict[str, torch.Tensor]:
        """The random parameters of ``b`` images: uniforms in [0, 1) per operation that is on.

        Args:
            b: batch size.
            device: where to draw (the generators must live there).
            generator: one ``torch.Generator`` for every operation (drawn in the order crop,
                flip, rotation, brightness, contrast, saturation, hue, erasing), or a mapping from operation name
                (``core.rng.AUGMENT_OPS``) to its own generator, as ``core.rng.augment_generators``
                gives: then each operation's draws do not depend on which others are on (common
                random numbers across arms that differ in one operation). ``None``: the
                device's default generator.

        Returns:
            ``{op: float32 (b, width)}`` for the operations that are on (crop 2 columns, erasing
            23, the others 1).

        Raises:
            KeyError: a mapping lacks an operation that is on.
        """
        out = {}
        for name, width in self._widths.items():
            g = generator[name] if isinstance(generator, Mapping) else generator
            out[name] = torch.rand(b, width, generator=g, device=device)
        return out

    def __call__(self, x: torch.Tensor, generator: Generators = None) -> torch.Tensor:
        """Augment and normalise one batch: ``apply(x, draw(len(x), x.device, generator))``.

        Args:
            x: uint8 ``(B, 3, H, W)``, pixel values 0..255, on any device. Not modified.
            generator: source of all randomness (same seed, same output), one generator or
                one per operation (see :meth:`draw`); must live on ``x.device``. ``None``: the
                device's default generator.

        Returns:
            float32 ``(B, 3, H, W)``, normalised, contiguous, on ``x.device``.

        Raises:
            TypeError: ``x`` is not uint8.
            ValueError: ``x`` is not ``(B, 3, H, W)``.
            RuntimeError: ``generator`` is on another device (raised by torch).
        """
        _check(x)
        return self.apply(x, self.draw(len(x), x.device, generator))

    def apply(self, x: torch.Tensor, u: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Augment and normalise ``x`` with the parameters ``u`` from :meth:`draw` (row i: image i).

        Several runs' batches can be augmented in one call: concatenate their images and their
        draws along dim 0 (``core.train`` does so for fused seeds).

        Raises:
            TypeError: ``x`` is not uint8.
            ValueError: ``x`` is not ``(B, 3, H, W)``.
        """
        _check(x)
        cfg = self.cfg
        b, _, h, w = x.shape
        if b == 0:
            return torch.empty(x.shape, dtype=torch.float32, device=x.device)
        k = self._device_consts(x.device, h, w)
        y = self._crop_flip(x, u) if "crop" in u or "flip" in u else x
        y = y.float()  # a new float32 tensor; everything below is in place

        if "rotation" in u:  # 3. about the centre, nearest neighbour, zero fill
            y = _rotate(y, (2 * u["rotation"][:, 0] - 1) * math.radians(cfg.rotation))

        # 4. Colour jitter, brightness then contrast, on the 0..255 scale.
        if "brightness" in u:
            lo = max(0.0, 1 - cfg.brightness)
            f = (lo + (1 + cfg.brightness - lo) * u["brightness"][:, 0]).view(b, 1, 1, 1)
            y.mul_(f).clamp_(max=255.0)
        if "contrast" in u:
            lo = max(0.0, 1 - cfg.contrast)
            f = (lo + (1 + cfg.contrast - lo) * u["contrast"][:, 0]).view(b, 1, 1, 1)
            m = (y.mean((2, 3)) * k["gray"]).sum(1).view(b, 1, 1, 1)  # mean of the grayscale image
            y.mul_(f).add_((1 - f) * m).clamp_(0.0, 255.0)
        if "saturation" in u:  # blend with the grayscale image, pixel by pixel
            lo = max(0.0, 1 - cfg.saturation)
            f = (lo + (1 + cfg.saturation - lo) * u["saturation"][:, 0]).view(b, 1, 1, 1)
            gray = (y * k["gray"].view(1, 3, 1, 1)).sum(1, keepdim=True)  # (B, 1, H, W)
            y.mul_(f).add_((1 - f) * gray).clamp_(0.0, 255.0)
        if "hue" in u:
            f = ((2 * u["hue"][:, 0] - 1) * cfg.hue).view(b, 1, 1)
            y = shift_hue(y.div_(255.0), f).mul_(255.0)

        y.mul_(k["scale"]).sub_(k["shift"])  # 5. normalise
        if "erasing" in u:  # 6. value 0 after normalisation
            y.mul_(self._erase_keep(u["erasing"], k, h, w))
        return y.contiguous()

    def _crop_flip(self, x: torch.Tensor, u: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """uint8 (B,3,H,W) -> uint8 (B,3,H,W): per-image window of the padded batch, maybe
        mirrored; one row ``index_select`` and one column ``gather``, exact integer shifts."""
        b, ch, h, w = x.shape
        p, dev = self.pad, x.device
        rows = torch.arange(h, device=dev).expand(b, h)
        cols = torch.arange(w, device=dev).expand(b, w)
        out = x
        if p:
            off = (u["crop"] * (2 * p + 1)).long().clamp_(max=2 * p)  # uniform 0..2p
            hp, wp = h + 2 * p, w + 2 * p
            planes = torch.arange(b * ch, device=dev).view(b, ch, 1) * hp  # first row of each
            rows = (rows + off[:, :1])[:, None] + planes  # (B, 3, H) rows of the padded stack
            cols = cols + off[:, 1:]
            out = F.pad(x, (p, p, p, p)).view(b * ch * hp, wp)
            out = out.index_select(0, rows.reshape(-1)).view(b, ch, h, wp)
        if "flip" in u:
            cols = torch.where(u["flip"] < 0.5, cols.flip(1), cols)
        return out.gather(3, cols[:, None, None, :].expand(b, ch, h, w))

    def _erase_keep(self, u: torch.Tensor, k: dict, h: int, w: int) -> torch.Tensor:
        """Float (B,1,H,W): 0 inside torchvision ``RandomErasing.get_params`` rectangles, else 1.

        ``u`` (B, 2T+3) uniforms: T area draws, T log-ratio draws, apply, top, left.
        Side lengths are ``round(sqrt(area * ratio))``, ``round(sqrt(area / ratio))``
        computed as ``exp((log area +- log ratio) / 2)``; the first of the T tries with both
        sides smaller than the image is used, as torchvision does.
        """
        t, hw = _ERASE_TRIES, k["hw"]
        lo, hi = (h * w * s for s in self.cfg.erasing_scale)
        r0, r1 = (math.log(r) for r in _ERASE_RATIO)
        log_area = (u[:, :t] * (hi - lo) + lo).log_()
        log_ratio = u[:, t : 2 * t] * (r1 - r0) + r0
        sides = (log_area[..., None] + log_ratio[..., None] * k["sign"]).mul_(0.5).exp_().round_()
        fits = (sides < hw).all(2)  # (B, T)
        first = fits.to(torch.uint8).argmax(1)
        on = (u[:, 2 * t] < self.cfg.erasing) & fits.any(1)  # no fit: image left alone
        size = sides.gather(1, first.view(-1, 1, 1).expand(-1, 1, 2)).squeeze(1) * on[:, None]
        start = (u[:, 2 * t + 1 :] * (hw + 1 - size)).floor_().clamp_(max=hw - size)  # (B, 2)
        pos = k["pos"]  # 0 .. max(H, W) - 1
        inside = ((pos >= start[..., None]) & (pos < (start + size)[..., None])).float()
        return 1.0 - inside[:, 0, None, :h, None] * inside[:, 1, None, None, :w]


def shift_hue(y: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Turn the hue of float RGB images in [0, 1] by ``shift`` (a fraction of the colour circle).

    torchvision's ``adjust_hue`` on float images (``torchvision.transforms.v2.functional``:
    ``_rgb_to_hsv``, ``(h + shift) mod 1``, ``_hsv_to_rgb``), batched with one shift per image.

    Args:
        y: float ``(B, 3, H, W)``, values in [0, 1].
        shift: float broadcastable to ``(B, H, W)``, e.g. ``(B, 1, 1)``, each in [-0.5, 0.5].

    Returns:
        float ``(B, 3, H, W)`` in [0, 1], a new tensor.
    """
    r, g, b = y.unbind(1)  # (B, H, W) each
    maxc, _ = y.max(1)
    minc, _ = y.min(1)
    eqc = maxc == minc  # gray pixels: no hue
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = ((maxc - c) / cr_divisor for c in (r, g, b))
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = ((hr + hg + hb) / 6.0 + 1.0).fmod(1.0)
    h = (h + shift).remainder(1.0)
    # HSV -> RGB, as torchvision's _hsv_to_rgb
    h6 = h * 6.0
    i = h6.floor()
    f = h6 - i
    i = i.to(torch.int32).remainder(6)
    v = maxc
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    # sector i: (R, G, B) = (v,t,p), (q,v,p), (p,v,t), (p,q,v), (t,p,v), (v,p,q): rows of _HSV_SECTORS
    vpqt = torch.stack((v, p, q, t), 1)  # (B, 4, H, W)
    select = _HSV_SECTORS.to(y.device)[:, i.long()].movedim(0, 1)  # (B, 3, H, W) indices into vpqt
    return vpqt.gather(1, select)


def reference_transform(cfg: AugmentConfig, train: bool = True, size: int = 32) -> T.Compose:
    """The seed projects' per-image torchvision pipeline for PIL images.

    ``RandomCrop(size, padding=p)``, ``RandomHorizontalFlip()``,
    ``RandomRotation(r)`` (nearest, fill 0), ``ColorJitter(brightness=b, contrast=c,
    saturation=s, hue=h)``, ``ToTensor()``, ``Normalize(mean, std)``, ``RandomErasing(p=e,
    scale=erasing_scale)``; operations that are off are left out. With ``train=False`` only
    ``ToTensor`` + ``Normalize``.

    Args:
        cfg: the augmentation settings.
        train: training (random) or evaluation (deterministic) pipeline.
        size: side of the square crop in pixels (32 for CIFAR-10).

    Returns:
        A ``torchvision.transforms.Compose`` mapping a PIL RGB image to a float32
        ``(3, size, size)`` tensor.
    """
    ops: list = []
    if train:
        if cfg.crop_padding > 0:
            ops.append(T.RandomCrop(size, padding=cfg.crop_padding))
        if cfg.flip:
            ops.append(T.RandomHorizontalFlip())
        if cfg.rotation > 0:
            ops.append(T.RandomRotation(cfg.rotation, interpolation=T.InterpolationMode.NEAREST))
        if cfg.brightness > 0 or cfg.contrast > 0 or cfg.saturation > 0 or cfg.hue > 0:
            ops.append(
                T.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast, saturation=cfg.saturation, hue=cfg.hue)
            )
    ops += [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]
    if train and cfg.erasing > 0:
        ops.append(T.RandomErasing(p=cfg.erasing, scale=tuple(cfg.erasing_scale)))
    return T.Compose(ops)


class ReferenceDataset(torch.utils.data.Dataset):
    """Seed-style dataset: each item becomes a PIL image and goes through ``transform``.

    Behaves like ``torchvision.datasets.CIFAR10``; the slow per-image reference that
    :class:`BatchAugment` replaces.

    Args:
        x: uint8 ``(N, 3, H, W)`` images (any device; kept on the CPU).
        y: int ``(N,)`` labels.
        transform: applied to each PIL image, e.g. :func:`reference_transform`;
            ``None`` returns the PIL image.

    Raises:
        TypeError: ``x`` is not uint8.
        ValueError: ``x`` is not ``(N, 3, H, W)`` or ``y`` has a different length.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform):
        _check(x)
        if len(y) != len(x):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        self.x = x.detach().cpu().permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, 3)
        self.y = torch.as_tensor(y).cpu().tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        """Return ``(transform(PIL image), int label)`` for item ``i``."""
        img = Image.fromarray(self.x[i])
        if self.transform is not None:
            img = self.transform(img)
        return img, self.y[i]
