"""CIFAR-10 as uint8 tensors: loading, validation, a decoded cache, and splits.

Sources, detected from the path given as ``data.root`` (or ``$ABLATE_DATA`` when that is unset):

1. a ``.tar.gz``/``.tgz`` archive of the JPEG ImageFolder layout
   ``<top>/{train,test}/<class>/NNNN.jpg`` (``shared/data/cifar10-jpeg.tar.gz``), read by
   streaming the archive, never extracted to disk;
2. an extracted ImageFolder directory holding ``train/<class>/*.jpg|png`` and ``test/<class>/``,
   either the directory itself or one level down;
3. the torchvision format: a directory holding ``cifar-10-batches-py/`` (or that folder itself);
   with ``download=True`` a missing one is fetched by ``torchvision.datasets.CIFAR10``.

When neither is set, the offline archive beside the checkout (``../shared/data/cifar10-jpeg.tar.gz``
from the project folder or from the working directory, see :func:`beside_checkout`) is used when it
exists; otherwise ``torchvision.datasets.CIFAR10`` downloads the torchvision format once into
``<cache_dir>/torchvision/cifar-10-batches-py`` (progress bar, MD5 check), and later calls reuse it.
One line on stderr says which of these was chosen.

Class folders sorted by name must be :data:`CLASSES`; the label is the index. Files within a
class folder are taken in name order (the archive's order is the original batch order).

Decoding happens once: the tensors are saved to ``<cache_dir>/cifar10-<key>.pt`` where ``key``
is the first 16 hex digits of the SHA-256 of the archive bytes (for directories: of the sorted
relative path, size and mtime of every file). ``cache_dir`` is ``data.cache_dir``, else
``$ABLATE_CACHE``, else ``~/.cache/ablate``. The cache is written atomically (temporary file in
the same folder, then ``os.replace``); an unreadable cache is deleted and rebuilt.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import shutil
import socket
import sys
import tarfile
import tempfile
import urllib.error
import warnings
import zlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from core.config import DataConfig

__all__ = [
    "CLASSES",
    "CIFAR10Tensors",
    "DataError",
    "Splits",
    "beside_checkout",
    "default_cache_dir",
    "load_cifar10",
    "load_splits",
    "make_splits",
    "resolve_root",
]

log = logging.getLogger(__name__)

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_SPLITS = ("train", "test")
_JPEG = (".jpg", ".jpeg")
_IMAGES = (*_JPEG, ".png")
_TV_DIR = "cifar-10-batches-py"
_TV_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
_CACHE_VERSION = 1
_LAYOUTS = (
    "one of: (1) a .tar.gz/.tgz archive of <top>/{train,test}/<class>/*.jpg; "
    "(2) a directory with train/<class>/*.jpg|png and test/<class>/ (itself or one level down); "
    "(3) a directory holding cifar-10-batches-py/ (or that folder itself)"
)
_FIX_SOURCE = "Point data.root or $ABLATE_DATA at shared/data/cifar10-jpeg.tar.gz"
_SHARED_ARCHIVE = Path("shared", "data", "cifar10-jpeg.tar.gz")  # beside the checkout: ../shared/...
_announced: set[str] = set()  # default sources already named on stderr in this process
_Found = dict[str, dict[str, list[tuple[str, bytes]]]]  # split -> class -> [(member, bytes)]


class DataError(Exception):
    """CIFAR-10 cannot be found, read or split; the message names the path and the remedy."""


@dataclass(frozen=True)
class CIFAR10Tensors:
    """The whole data set, decoded.

    Attributes:
        train_x: uint8 ``(N, 3, 32, 32)``, RGB pixel values 0..255 (N = 50,000 for CIFAR-10).
        train_y: int64 ``(N,)``, labels 0..9 indexing ``classes``.
        test_x: uint8 ``(M, 3, 32, 32)`` (M = 10,000), the official test set.
        test_y: int64 ``(M,)``.
        classes: the 10 class names in label order (:data:`CLASSES`).
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]


@dataclass(frozen=True)
class Splits:
    """Train / validation / test tensors of one run, in the layout of :class:`CIFAR10Tensors`.

    ``val_x`` is uint8 ``(V, 3, 32, 32)`` and ``val_y`` int64 ``(V,)``; ``V`` may be 0.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]

    def to(self, device: torch.device | str) -> Splits:
        """Return a copy with every tensor moved to ``device`` (dtypes unchanged)."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return Splits(**{k: v if k == "classes" else v.to(device) for k, v in moved.items()})


def resolve_root(root: str | None) -> Path | None:
    """Return ``root``, else ``$ABLATE_DATA``, as a path (existence is not checked).

    Returns:
        The path; None when neither is set (:func:`load_cifar10` then takes the default source).
    """
    root = root or os.environ.get("ABLATE_DATA")
    return Path(root).expanduser() if root else None


def beside_checkout() -> list[Path]:
    """Where the offline archive is looked for when neither data.root nor $ABLATE_DATA is set.

    Returns:
        ``../shared/data/cifar10-jpeg.tar.gz`` relative to the project folder (the one holding
        ``pyproject.toml``, where an editable install or a checkout imports ``core`` from) and
        relative to the working directory, without duplicates, in that order; existence is not
        checked.
    """
    found = [Path(__file__).resolve().parents[2] / _SHARED_ARCHIVE, Path.cwd().resolve().parent / _SHARED_ARCHIVE]
    return list(dict.fromkeys(found))


def default_cache_dir(cache_dir: str | None) -> Path:
    """Return ``cache_dir``, else ``$ABLATE_CACHE``, else ``~/.cache/ablate``."""
    return Path(cache_dir or os.environ.get("ABLATE_CACHE") or Path.home() / ".cache" / "ablate")


def load_cifar10(
    root: str | Path | None = None,
    *,
    download: bool = False,
    cache_dir: str | Path | None = None,
) -> CIFAR10Tensors:
    """Load CIFAR-10 from ``root`` (see the module docstring), through the decoded cache.

    Args:
        root: archive or directory; None: ``$ABLATE_DATA``; when that is unset too, the archive
            beside the checkout (:func:`beside_checkout`), else a torchvision download into
            ``<cache_dir>/torchvision``, made once and reused.
        download: fetch the torchvision format into ``root`` when no data is found there.
        cache_dir: where decoded tensors are kept; None: ``$ABLATE_CACHE`` or ``~/.cache/ablate``.

    Returns:
        The decoded tensors (uint8 images ``(N, 3, 32, 32)``, int64 labels), contiguous, on CPU.

    Raises:
        DataError: unknown layout, unreadable or incomplete data, wrong classes, an image that
            cannot be decoded or is not 32x32, a split without images, or a failed download
            (with no root set and no archive beside the checkout: the message says whether the
            network was unreachable and names the ways out).
    """
    path = resolve_root(None if root is None else str(root))
    cache = default_cache_dir(None if cache_dir is None else str(cache_dir))
    kind, src = _detect(path, download) if path is not None else _default_source(cache)
    file = cache / f"cifar10-{_checksum(kind, src)[:16]}.pt"
    data = _load_cache(file)
    if data is None:
        log.info("decoding CIFAR-10 from %s (once; cached in %s)", src, file)
        data = _read_source(kind, src)
        try:
            _save_cache(file, data)
        except OSError as e:
            warnings.warn(f"{file}: could not write the CIFAR-10 cache ({e})", stacklevel=2)
    return data


def make_splits(
    data: CIFAR10Tensors,
    *,
    val_fraction: float,
    split_seed: int,
    train_subset: int | None = None,
    test_subset: int | None = None,
) -> Splits:
    """Split off a class-stratified validation set and take class-balanced subsets.

    From each class, ``round(val_fraction * n_class)`` training images drawn with
    ``torch.Generator().manual_seed(split_seed)`` go to validation; the same permutation
    gives ``train_subset // n_classes`` per class of the rest, so smaller subsets are nested in
    larger ones and the validation set does not depend on ``train_subset``. ``test_subset``
    keeps the first ``test_subset // n_classes`` test images of every class. Every set keeps
    the original image order.

    Args:
        data: the full data set.
        val_fraction: share of each class held out for validation, in [0, 1).
        split_seed: seed of the split; the same seed gives the same split on every call.
        train_subset: training images to keep (class-balanced); None: all of the rest.
        test_subset: test images to keep (class-balanced); None: all.

    Returns:
        The splits; uint8 images, int64 labels, contiguous, on CPU; 0 validation rows when
        ``val_fraction`` is 0.

    Raises:
        ValueError: ``val_fraction`` outside [0, 1), a subset smaller than one image per class,
            larger than the images available, or a class left without training images.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    k = len(data.classes)
    per_class = _per_class("train_subset", train_subset, k)
    gen = torch.Generator().manual_seed(split_seed)
    val_idx, train_idx = [], []
    for c in range(k):
        idx = (data.train_y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val = int(val_fraction * len(idx) + 0.5)
        rest = idx[n_val:]
        need = per_class or 1
        if len(rest) < need:
            raise ValueError(
                f"class {data.classes[c]!r} has {len(rest)} training images left after "
                f"val_fraction={val_fraction}, {need} needed (train_subset={train_subset}); "
                "lower train_subset or val_fraction"
            )
        val_idx.append(idx[:n_val])
        train_idx.append(rest if per_class is None else rest[:per_class])
    test_x, test_y = data.test_x, data.test_y
    n_test = _per_class("test_subset", test_subset, k)
    if n_test is not None:
        idx = [_first(data.test_y, c, n_test, data.classes[c]) for c in range(k)]
        test_x, test_y = _take(data.test_x, data.test_y, idx)
    train = _take(data.train_x, data.train_y, train_idx)
    val = _take(data.train_x, data.train_y, val_idx)
    return Splits(*train, *val, test_x, test_y, classes=data.classes)


def load_splits(cfg: DataConfig) -> Splits:
    """Load CIFAR-10 and split it as ``cfg`` (a ``core.config.DataConfig``) says.

    Raises:
        DataError: see :func:`load_cifar10`.
        ValueError: see :func:`make_splits`.
    """
    data = load_cifar10(cfg.root, download=cfg.download, cache_dir=cfg.cache_dir)
    split = cfg.model_dump(include={"val_fraction", "split_seed", "train_subset", "test_subset"})
    return make_splits(data, **split)


# --- splits helpers ---------------------------------------------------------------------------


def _per_class(name: str, total: int | None, k: int) -> int | None:
    if total is not None and total < k:
        raise ValueError(f"{name}={total} is less than one image per class ({k} classes)")
    return None if total is None else total // k


def _first(y: torch.Tensor, c: int, n: int, name: str) -> torch.Tensor:
    idx = (y == c).nonzero().flatten()
    if len(idx) < n:
        raise ValueError(f"test_subset asks {n} images of class {name!r}, only {len(idx)} exist")
    return idx[:n]


def _take(x: torch.Tensor, y: torch.Tensor, idx: list[torch.Tensor]):
    order = torch.cat(idx).sort().values
    return x.index_select(0, order).contiguous(), y.index_select(0, order).contiguous()


# --- source detection and checksums -----------------------------------------------------------


def _detect(path: Path, download: bool) -> tuple[str, Path]:
    """Return ``(kind, source)``, kind being "archive", "folder" or "torchvision"."""
    if not path.exists():
        if download:
            return "torchvision", _download(path)
        raise DataError(
            f"{path} does not exist. Expected {_LAYOUTS}. {_FIX_SOURCE}, "
            "or set data.download=true to fetch the torchvision format there (needs internet)."
        )
    if path.is_file():
        if path.name.lower().endswith((".tar.gz", ".tgz")):
            return "archive", path
        raise DataError(f"{path} is not a recognised CIFAR-10 source. Expected {_LAYOUTS}.")
    tv = path if path.name == _TV_DIR or (path / "data_batch_1").is_file() else path / _TV_DIR
    if tv.is_dir():
        return "torchvision", tv
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = [d for d in (path, *subdirs) if all((d / s).is_dir() for s in _SPLITS)]
    if len(found) == 1 or (found and found[0] == path):
        return "folder", found[0]
    if found:
        raise DataError(f"{path} holds several train/test trees {found}; point at one of them.")
    if download:
        return "torchvision", _download(path)
    raise DataError(
        f"{path} is not a recognised CIFAR-10 layout. Expected {_LAYOUTS}. {_FIX_SOURCE}, "
        "or set data.download=true to fetch the torchvision format (needs internet)."
    )


def _download(root: Path) -> Path:
    try:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=True, download=True)
    except Exception as e:  # no internet, disk full, bad checksum, ...
        raise DataError(
            f"{root}: downloading CIFAR-10 with torchvision failed ({type(e).__name__}: {e}). "
            f"Expected {root / _TV_DIR} after the download. Without internet, {_FIX_SOURCE} "
            "(the offline JPEG copy) and leave data.download=false."
        ) from e
    return root / _TV_DIR


def _announce(line: str) -> None:
    if line not in _announced:
        _announced.add(line)
        print(line, file=sys.stderr, flush=True)


def _default_source(cache: Path) -> tuple[str, Path]:
    """The source when neither data.root nor $ABLATE_DATA is set (see the module docstring)."""
    hint = "set data.root or $ABLATE_DATA to use another"
    for arc in beside_checkout():
        if arc.is_file():
            _announce(f"CIFAR-10: {arc} (the archive beside the checkout; {hint})")
            return "archive", arc
    dest = cache / "torchvision" / _TV_DIR
    if dest.is_dir():  # renamed into place only after a complete, checked download
        _announce(f"CIFAR-10: {dest} (downloaded earlier; {hint})")
        return "torchvision", dest
    where = " or ".join(str(p) for p in beside_checkout())
    _announce(f"CIFAR-10: no archive at {where}; downloading it with torchvision into {dest} (170 MB, once)")
    try:
        from torchvision.datasets import CIFAR10

        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=dest.parent))
        try:
            for train in (True, False):  # each checks the MD5 of every file
                CIFAR10(str(tmp), train=train, download=True)
            try:
                os.rename(tmp / _TV_DIR, dest)
            except OSError:  # another process finished first: use its copy
                if not dest.is_dir():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except Exception as e:
        offline = isinstance(e, (ConnectionError, TimeoutError, socket.gaierror)) or (
            isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError)
        )
        why = "no network" if offline else "the download failed"
        raise DataError(
            f"no CIFAR-10: data.root and $ABLATE_DATA are unset, there is no archive at {where}, and "
            f"downloading it with torchvision into {dest.parent} failed: {why} ({type(e).__name__}: "
            f"{e}). Either set data.root or export ABLATE_DATA=/path/to/cifar10-jpeg.tar.gz (or a "
            "torchvision cifar-10-batches-py folder), or put the archive at "
            "../shared/data/cifar10-jpeg.tar.gz beside the checkout; or connect to the internet and "
            "run again."
        ) from e
    return "torchvision", dest


def _checksum(kind: str, src: Path) -> str:
    h = hashlib.sha256()
    if kind == "archive":
        with open(src, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()
    for p in sorted(q for q in src.rglob("*") if q.is_file()):
        st = p.stat()
        h.update(f"{p.relative_to(src).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# --- cache ------------------------------------------------------------------------------------

_TENSORS = ("train_x", "train_y", "test_x", "test_y")


def _load_cache(file: Path) -> CIFAR10Tensors | None:
    if not file.is_file():
        return None
    try:
        blob = torch.load(file, weights_only=True)
        if blob.get("version") != _CACHE_VERSION:
            raise ValueError(f"cache version {blob.get('version')}, expected {_CACHE_VERSION}")
        data = CIFAR10Tensors(**{k: blob[k] for k in _TENSORS}, classes=tuple(blob["classes"]))
        shape = (data.train_x.dtype, data.test_x.dtype, data.train_x.shape[1:], data.classes)
        if shape != (torch.uint8, torch.uint8, (3, 32, 32), CLASSES):
            raise ValueError(f"unexpected contents {shape}")
        return data
    except Exception as e:  # truncated zip, unpickling error, missing keys, ...
        msg = f"{file}: unreadable CIFAR-10 cache ({e}); deleting and rebuilding"
        warnings.warn(msg, stacklevel=3)
        file.unlink(missing_ok=True)
        return None


def _save_cache(file: Path, data: CIFAR10Tensors) -> None:
    """Write ``data`` to ``file`` atomically; on any error no file (temporary or final) is left."""
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{file.name}.", suffix=".tmp", dir=file.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            blob = {k: getattr(data, k) for k in _TENSORS}
            torch.save({**blob, "classes": list(data.classes), "version": _CACHE_VERSION}, fh)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- readers ----------------------------------------------------------------------------------


def _read_source(kind: str, src: Path) -> CIFAR10Tensors:
    if kind == "torchvision":
        return _read_torchvision(src)
    return _assemble(src, _read_archive(src) if kind == "archive" else _read_folder(src))


def _is_image(folder: str, name: str) -> bool:
    hidden = name.startswith(".") or folder.startswith(".")
    return not hidden and name.lower().endswith(_IMAGES)


def _read_archive(path: Path) -> _Found:
    found: _Found = {s: {} for s in _SPLITS}
    tops = set()
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                parts = m.name.split("/")
                if m.isfile() and len(parts) >= 3 and parts[-3] in found and _is_image(*parts[-2:]):
                    tops.add(tuple(parts[:-3]))
                    blob = tf.extractfile(m).read()
                    found[parts[-3]].setdefault(parts[-2], []).append((m.name, blob))
            while tf.fileobj.read(1 << 20):  # to the end, so that gzip checks length and CRC
                pass
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(
            f"{path}: the archive is truncated or corrupt ({type(e).__name__}: {e}). Expected a "
            "complete gzip tar; copy it again (shared/data/README.md lists its sha256)."
        ) from e
    if len(tops) > 1:
        names = sorted("/".join(t) or "." for t in tops)
        raise DataError(f"{path}: several train/test trees in one archive ({names}); expected one.")
    return found


def _read_folder(root: Path) -> _Found:
    found: _Found = {s: {} for s in _SPLITS}
    for split in _SPLITS:
        for d in sorted((root / split).iterdir()):
            if d.is_dir() and not d.name.startswith("."):
                files = [f for f in sorted(d.iterdir()) if _is_image(d.name, f.name)]
                found[split][d.name] = [(str(f), f.read_bytes()) for f in files]
    return found


def _assemble(path: Path, found: _Found) -> CIFAR10Tensors:
    out = []
    for split in _SPLITS:
        classes = found[split]
        if not any(classes.values()):
            raise DataError(
                f"{path}: split {split!r} has no images. Expected {split}/<class>/*.jpg|png "
                f"for the classes {list(CLASSES)}."
            )
        empty = [c for c, items in classes.items() if not items]
        if tuple(sorted(classes)) != CLASSES or empty:
            missing, extra = sorted(set(CLASSES) - classes.keys()), sorted(classes.keys() - CLASSES)
            raise DataError(
                f"{path}: {split}/ has class folders {sorted(classes)} (missing {missing}, "
                f"unexpected {extra}, empty {empty}); expected exactly {list(CLASSES)}, each "
                "with images. Fix the folders or use the unchanged archive."
            )
        items = [it for c in CLASSES for it in sorted(classes[c], key=_basename)]
        counts = torch.tensor([len(classes[c]) for c in CLASSES])
        out += [_decode_images(path, items), torch.arange(len(CLASSES)).repeat_interleave(counts)]
    return CIFAR10Tensors(*out, classes=CLASSES)


def _basename(item: tuple[str, bytes]) -> str:
    return os.path.basename(item[0])


def _decode_images(path: Path, items: list[tuple[str, bytes]]) -> torch.Tensor:
    """Decode ``(member, bytes)`` pairs into uint8 ``(N, 3, 32, 32)``; JPEGs in one batch."""
    imgs: list[torch.Tensor | None] = [None] * len(items)
    jpeg = [i for i, (name, _) in enumerate(items) if name.lower().endswith(_JPEG)]
    for i, img in zip(jpeg, _decode_jpegs(path, [items[i] for i in jpeg]), strict=True):
        imgs[i] = img
    for i, (name, blob) in enumerate(items):
        img = imgs[i] if imgs[i] is not None else _decode_pil(path, name, blob)
        if tuple(img.shape) != (3, 32, 32):
            raise DataError(
                f"{path}: image {name} is {tuple(img.shape)} (channels, height, width); expected "
                "(3, 32, 32), a 32x32 RGB image. Remove or replace it."
            )
        imgs[i] = img
    return torch.stack(imgs)


def _decode_jpegs(path: Path, items: list[tuple[str, bytes]]) -> list[torch.Tensor]:
    """Batched libjpeg-turbo decode; Pillow when torchvision cannot (and to name a bad file)."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:  # torchvision 0.29 deprecates its decoders in favour of TorchCodec
        decode_jpeg = None
    if decode_jpeg is not None and items:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
            try:
                blobs = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for _, blob in items]
                return decode_jpeg(blobs, mode=ImageReadMode.RGB)
            except (RuntimeError, ValueError):
                pass
    return [_decode_pil(path, name, blob) for name, blob in items]


def _decode_pil(path: Path, name: str, blob: bytes) -> torch.Tensor:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(blob)) as im:
            return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()
    except Exception as e:
        raise DataError(
            f"{path}: cannot decode image {name} ({type(e).__name__}: {e}); expected a 32x32 "
            "RGB JPEG or PNG. Remove or replace it."
        ) from e


def _read_torchvision(src: Path) -> CIFAR10Tensors:
    def unpickle(name: str) -> dict:
        f = src / name
        try:
            with open(f, "rb") as fh:
                return pickle.load(fh, encoding="bytes")
        except Exception as e:
            raise DataError(
                f"{f}: cannot read ({type(e).__name__}: {e}). Expected the torchvision folder "
                f"{_TV_DIR}/ with {', '.join(_TV_FILES)}. Delete it and download again "
                f"(data.download=true), or {_FIX_SOURCE}."
            ) from e

    names = tuple(n.decode() for n in unpickle("batches.meta").get(b"label_names", []))
    if names != CLASSES:
        raise DataError(f"{src}/batches.meta: label_names {names}; expected {CLASSES}.")
    out = []
    for files in (_TV_FILES[:5], _TV_FILES[5:6]):
        batches = [unpickle(f) for f in files]
        try:
            x = np.concatenate([np.asarray(b[b"data"], dtype=np.uint8) for b in batches])
            y = torch.tensor(sum((list(b[b"labels"]) for b in batches), []), dtype=torch.int64)
            x = torch.from_numpy(x).reshape(len(y), 3, 32, 32)
            if not len(y) or int(y.min()) < 0 or int(y.max()) >= len(CLASSES):
                raise ValueError(f"{len(y)} labels, range must be 0..{len(CLASSES) - 1}")
        except Exception as e:
            raise DataError(
                f"{src}: {', '.join(files)} hold no valid images ({type(e).__name__}: {e}); "
                "expected b'data' (N, 3072) uint8 and b'labels' 0..9. Download again or use the "
                "JPEG archive."
            ) from e
        out += [x.contiguous(), y]
    return CIFAR10Tensors(*out, classes=CLASSES)
