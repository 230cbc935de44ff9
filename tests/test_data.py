"""Tests of core.data on tiny data sets written into tmp_path (real JPEG, PNG, pickle formats)."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import core.data as D
from core.config import DataConfig
from core.data import CLASSES, CIFAR10Tensors, DataError

N_TRAIN, N_TEST = 3, 2  # images per class


def _solid(split: str, c: int, i: int) -> tuple[int, int, int]:
    """A distinct solid colour per image (JPEG keeps solid colours nearly exactly)."""
    return (20 + 22 * c, 40 + 60 * i + (30 if split == "test" else 0), 230 - 15 * c)


def _write_tree(root: Path, fmt: str = "jpg", seed: int = 0) -> dict[str, tuple]:
    """Write root/{train,test}/<class>/NNNN.<fmt>; return split -> (x, y) in load order."""
    rng = np.random.default_rng(seed)
    expected = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        xs, ys = [], []
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                if fmt == "png":  # lossless: random pixels, compared exactly
                    arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                else:
                    arr = np.empty((32, 32, 3), np.uint8)
                    arr[:] = _solid(split, c, i)
                Image.fromarray(arr).save(root / split / name / f"{i:04d}.{fmt}", quality=95)
                xs.append(torch.from_numpy(arr).permute(2, 0, 1))
                ys.append(c)
        expected[split] = (torch.stack(xs), torch.tensor(ys))
    return expected


def _tar(tree: Path, out: Path, top: str = "cifar10-jpeg") -> Path:
    with tarfile.open(out, "w:gz") as tf:
        tf.add(tree, arcname=top)
    return out


def _write_batches(root: Path, seed: int = 0) -> dict[str, tuple]:
    """Write a fake torchvision cifar-10-batches-py in the real pickle format."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    with open(d / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [c.encode() for c in CLASSES], b"num_vis": 3072}, fh)
    expected = {}
    train = [f"data_batch_{i}" for i in range(1, 6)]
    for split, names, n in (("train", train, 4), ("test", ["test_batch"], 6)):
        xs, ys = [], []
        for name in names:
            x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
            y = rng.integers(0, 10, n).tolist()
            with open(d / name, "wb") as fh:
                pickle.dump({b"batch_label": name.encode(), b"labels": y, b"data": x}, fh)
            xs.append(torch.from_numpy(x).reshape(n, 3, 32, 32))
            ys += y
        expected[split] = (torch.cat(xs), torch.tensor(ys))
    return expected


def _check(data: CIFAR10Tensors, expected: dict, atol: int = 0) -> None:
    assert data.classes == CLASSES
    for split in ("train", "test"):
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        ex, ey = expected[split]
        assert x.dtype == torch.uint8 and y.dtype == torch.int64
        assert x.shape == ex.shape and x.is_contiguous() and x.device.type == "cpu"
        assert torch.equal(y, ey)
        assert (x.int() - ex.int()).abs().max() <= atol


@pytest.fixture
def jpeg_tree(tmp_path):
    root = tmp_path / "tree"
    return root, _write_tree(root)


# --- the three formats -------------------------------------------------------------------------


def test_archive_loads(jpeg_tree, tmp_path):
    tree, expected = jpeg_tree
    data = D.load_cifar10(_tar(tree, tmp_path / "c.tar.gz"), cache_dir=tmp_path / "cache")
    _check(data, expected, atol=3)
    assert data.train_y.tolist() == [c for c in range(10) for _ in range(N_TRAIN)]


def test_archive_with_other_top_folder_and_tgz(jpeg_tree, tmp_path):
    tree, expected = jpeg_tree
    arc = _tar(tree, tmp_path / "c.tgz", top="some/other")
    _check(D.load_cifar10(arc, cache_dir=tmp_path / "cache"), expected, atol=3)


def test_folder_loads_itself_and_one_level_down(jpeg_tree, tmp_path):
    tree, expected = jpeg_tree
    _check(D.load_cifar10(tree, cache_dir=tmp_path / "cache"), expected, atol=3)
    _check(D.load_cifar10(tmp_path, cache_dir=tmp_path / "cache"), expected, atol=3)


def test_png_folder_exact(tmp_path):
    expected = _write_tree(tmp_path / "png", fmt="png")
    _check(D.load_cifar10(tmp_path / "png", cache_dir=tmp_path / "cache"), expected)


def test_torchvision_format_exact(tmp_path):
    expected = _write_batches(tmp_path / "tv")
    _check(D.load_cifar10(tmp_path / "tv", cache_dir=tmp_path / "c"), expected)
    inner = tmp_path / "tv" / "cifar-10-batches-py"
    _check(D.load_cifar10(inner, cache_dir=tmp_path / "c"), expected)


def test_failed_download_is_data_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match="download") as err:
        D.load_cifar10(tmp_path / "dl", download=True, cache_dir=tmp_path / "c")
    assert str(tmp_path / "dl") in str(err.value) and "ABLATE_DATA" in str(err.value)


# --- cache ------------------------------------------------------------------------------------


def _forbid_decoding(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("decoder called although the cache should be used")

    monkeypatch.setattr(D, "_decode_images", boom)
    monkeypatch.setattr(D, "_read_torchvision", boom)


def test_cache_hit_keyed_by_archive_sha256(jpeg_tree, tmp_path, monkeypatch):
    tree, expected = jpeg_tree
    arc, cache = _tar(tree, tmp_path / "c.tar.gz"), tmp_path / "cache"
    first = D.load_cifar10(arc, cache_dir=cache)
    key = hashlib.sha256(arc.read_bytes()).hexdigest()[:16]
    assert [p.name for p in cache.iterdir()] == [f"cifar10-{key}.pt"]
    _forbid_decoding(monkeypatch)
    second = D.load_cifar10(arc, cache_dir=cache)
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, name), getattr(second, name))
    assert second.classes == CLASSES


def test_changed_source_gets_new_cache(jpeg_tree, tmp_path, monkeypatch):
    tree, _ = jpeg_tree
    cache = tmp_path / "cache"
    D.load_cifar10(tree, cache_dir=cache)
    img = tree / "train" / "cat" / "0001.jpg"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(img)
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls = []
    real = D._decode_images
    monkeypatch.setattr(D, "_decode_images", lambda *a: calls.append(1) or real(*a))
    data = D.load_cifar10(tree, cache_dir=cache)
    assert calls and len(list(cache.iterdir())) == 2
    assert data.train_x[3 * N_TRAIN + 1, :, 0, 0].tolist() == pytest.approx([1, 2, 3], abs=3)


def test_env_cache_dir_and_corrupt_cache_rebuilt(tmp_path, monkeypatch):
    expected = _write_batches(tmp_path / "tv")
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "envcache"))
    D.load_cifar10(tmp_path / "tv")
    (file,) = (tmp_path / "envcache").iterdir()
    blob = file.read_bytes()
    file.write_bytes(blob[: len(blob) // 2])
    with pytest.warns(UserWarning, match="unreadable"):
        _check(D.load_cifar10(tmp_path / "tv"), expected)
    _forbid_decoding(monkeypatch)
    _check(D.load_cifar10(tmp_path / "tv"), expected)


@pytest.mark.parametrize("error", [OSError("disk full"), RuntimeError("killed")])
def test_cache_write_is_atomic(tmp_path, monkeypatch, error):
    expected = _write_batches(tmp_path / "tv")
    cache = tmp_path / "cache"

    def half_write(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 partial")
        raise error

    monkeypatch.setattr(torch, "save", half_write)
    if isinstance(error, OSError):  # the data is still returned, with a warning
        with pytest.warns(UserWarning, match="could not write"):
            _check(D.load_cifar10(tmp_path / "tv", cache_dir=cache), expected)
    else:
        with pytest.raises(RuntimeError):
            D.load_cifar10(tmp_path / "tv", cache_dir=cache)
    assert list(cache.iterdir()) == []


# --- bad inputs -------------------------------------------------------------------------------


def _raises_naming(path: Path, *needles: str, **kwargs) -> None:
    with pytest.raises(DataError) as err:
        D.load_cifar10(path, cache_dir=kwargs.get("cache", path.parent / "cache"))
    for text in (str(path), *needles):
        assert text in str(err.value)


def test_missing_path(tmp_path):
    _raises_naming(tmp_path / "nope.tar.gz", "does not exist", "ABLATE_DATA")


def test_unrecognised_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "readme.txt").write_text("hi")
    _raises_naming(tmp_path / "stuff", "cifar-10-batches-py", "train/<class>")
    (tmp_path / "data.zip").write_bytes(b"PK")
    _raises_naming(tmp_path / "data.zip", ".tar.gz")


def test_missing_class_folder(jpeg_tree):
    tree, _ = jpeg_tree
    shutil.rmtree(tree / "test" / "cat")
    _raises_naming(tree, "test/", "missing ['cat']", "airplane")


def test_extra_class_folder(jpeg_tree):
    tree, _ = jpeg_tree
    shutil.copytree(tree / "train" / "cat", tree / "train" / "kitten")
    _raises_naming(tree, "unexpected ['kitten']")


def test_split_without_images(jpeg_tree, tmp_path):
    tree, _ = jpeg_tree
    for f in (tree / "test").rglob("*.jpg"):
        f.unlink()
    _raises_naming(tree, "'test' has no images")
    _raises_naming(_tar(tree, tmp_path / "notest.tar.gz"), "'test' has no images")


def test_truncated_archive(jpeg_tree, tmp_path):
    tree, _ = jpeg_tree
    blob = _tar(tree, tmp_path / "full.tar.gz").read_bytes()
    for cut in (len(blob) // 2, len(blob) - 10):
        bad = tmp_path / f"cut{cut}.tar.gz"
        bad.write_bytes(blob[:cut])
        _raises_naming(bad, "truncated or corrupt")


def test_image_of_wrong_size(jpeg_tree, tmp_path):
    tree, _ = jpeg_tree
    Image.new("RGB", (16, 16), (9, 9, 9)).save(tree / "train" / "dog" / "0001.jpg")
    _raises_naming(tree, "dog/0001.jpg", "(3, 16, 16)", "(3, 32, 32)")
    _raises_naming(_tar(tree, tmp_path / "small.tar.gz"), "train/dog/0001.jpg")


def test_undecodable_images(jpeg_tree):
    tree, _ = jpeg_tree
    (tree / "test" / "frog" / "0000.jpg").write_bytes(b"not a jpeg at all")
    _raises_naming(tree, "frog/0000.jpg", "cannot decode")
    (tree / "test" / "frog" / "0000.jpg").unlink()
    (tree / "test" / "frog" / "0009.png").write_bytes(b"\x89PNG broken")
    _raises_naming(tree, "frog/0009.png", "cannot decode")


def test_torchvision_bad_files(tmp_path):
    _write_batches(tmp_path / "tv")
    d = tmp_path / "tv" / "cifar-10-batches-py"
    (d / "data_batch_3").unlink()
    _raises_naming(tmp_path / "tv", "data_batch_3", cache=tmp_path / "c")
    with open(d / "batches.meta", "wb") as fh:
        pickle.dump({b"label_names": [b"a", b"b"]}, fh)
    _raises_naming(d, "label_names", cache=tmp_path / "c")


# --- roots ------------------------------------------------------------------------------------


def test_resolve_root_and_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ABLATE_DATA", "/from/env.tar.gz")
    assert D.resolve_root(None) == Path("/from/env.tar.gz")
    assert D.resolve_root("/given") == Path("/given")
    monkeypatch.delenv("ABLATE_DATA")
    assert D.resolve_root(None) is None  # load_cifar10 then takes the default source
    monkeypatch.delenv("ABLATE_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert D.default_cache_dir(None) == tmp_path / ".cache" / "ablate"
    monkeypatch.setenv("ABLATE_CACHE", "/env/cache")
    assert D.default_cache_dir(None) == Path("/env/cache")
    assert D.default_cache_dir("/mine") == Path("/mine")


def test_beside_checkout_looks_next_to_the_project_and_the_working_directory(monkeypatch, tmp_path):
    project = Path(D.__file__).resolve().parents[1]
    assert (project / "pyproject.toml").is_file()
    (tmp_path / "clone").mkdir()
    monkeypatch.chdir(tmp_path / "clone")
    assert D.beside_checkout() == [
        project.parent / "shared" / "data" / "cifar10-jpeg.tar.gz",
        tmp_path / "shared" / "data" / "cifar10-jpeg.tar.gz",
    ]


def test_unset_root_takes_the_archive_beside_the_checkout(jpeg_tree, tmp_path, monkeypatch, capsys):
    tree, expected = jpeg_tree
    arc = _tar(tree, tmp_path / "cifar10-jpeg.tar.gz")
    monkeypatch.delenv("ABLATE_DATA", raising=False)
    monkeypatch.setattr(D, "beside_checkout", lambda: [tmp_path / "absent.tar.gz", arc])
    monkeypatch.setattr("torchvision.datasets.CIFAR10", None)  # no download is attempted
    _check(D.load_cifar10(cache_dir=tmp_path / "cache"), expected, atol=3)
    err = capsys.readouterr().err
    assert f"CIFAR-10: {arc} (the archive beside the checkout" in err and len(err.splitlines()) == 1
    monkeypatch.setenv("ABLATE_DATA", str(tmp_path / "elsewhere.tar.gz"))  # a set location wins
    with pytest.raises(DataError, match="elsewhere.tar.gz does not exist"):
        D.load_cifar10(cache_dir=tmp_path / "cache")


# --- splits -----------------------------------------------------------------------------------


def _synthetic(per_class: int = 20, test_per_class: int = 10) -> CIFAR10Tensors:
    """Images whose first two bytes hold their index, labels interleaved like CIFAR-10."""

    def make(n: int):
        x = torch.zeros(n * 10, 3, 32, 32, dtype=torch.uint8)
        idx = torch.arange(n * 10)
        x[:, 0, 0, 0], x[:, 0, 0, 1] = idx // 256, idx % 256
        return x, torch.randperm(n * 10, generator=torch.Generator().manual_seed(1)) % 10

    return CIFAR10Tensors(*make(per_class), *make(test_per_class), classes=CLASSES)


def _ids(x: torch.Tensor) -> list[int]:
    return (x[:, 0, 0, 0].long() * 256 + x[:, 0, 0, 1].long()).tolist()


def test_splits_deterministic_stratified_disjoint():
    data = _synthetic()
    a = D.make_splits(data, val_fraction=0.1, split_seed=7)
    b = D.make_splits(data, val_fraction=0.1, split_seed=7)
    c = D.make_splits(data, val_fraction=0.1, split_seed=8)
    assert _ids(a.val_x) == _ids(b.val_x) and _ids(a.train_x) == _ids(b.train_x)
    assert _ids(a.val_x) != _ids(c.val_x)
    assert a.val_y.bincount(minlength=10).tolist() == [2] * 10
    assert a.train_y.bincount(minlength=10).tolist() == [18] * 10
    assert set(_ids(a.val_x)).isdisjoint(_ids(a.train_x))
    assert sorted(_ids(a.val_x) + _ids(a.train_x)) == list(range(200))
    assert torch.equal(data.train_y[_ids(a.val_x)], a.val_y)  # labels follow their images
    assert a.test_x is data.test_x and a.classes == CLASSES
    for t in (a.train_x, a.val_x, a.test_x):
        assert t.dtype == torch.uint8 and t.is_contiguous()


def test_train_subset_balanced_nested_and_val_unchanged():
    data = _synthetic()
    full = D.make_splits(data, val_fraction=0.25, split_seed=3)
    s50 = D.make_splits(data, val_fraction=0.25, split_seed=3, train_subset=50)
    s30 = D.make_splits(data, val_fraction=0.25, split_seed=3, train_subset=30)
    assert s50.train_y.bincount(minlength=10).tolist() == [5] * 10
    assert _ids(s50.val_x) == _ids(full.val_x)
    assert set(_ids(s30.train_x)) < set(_ids(s50.train_x)) < set(_ids(full.train_x))


def test_test_subset_and_zero_val():
    data = _synthetic()
    s = D.make_splits(data, val_fraction=0.0, split_seed=0, test_subset=30)
    assert s.val_x.shape == (0, 3, 32, 32) and s.val_x.dtype == torch.uint8
    assert s.val_y.shape == (0,) and s.val_y.dtype == torch.int64
    assert s.train_x.shape[0] == 200
    assert s.test_y.bincount(minlength=10).tolist() == [3] * 10
    first3 = [i for c in range(10) for i in (data.test_y == c).nonzero().flatten()[:3].tolist()]
    assert _ids(s.test_x) == sorted(first3)
    moved = s.to("cpu")
    assert moved.classes == CLASSES and torch.equal(moved.test_x, s.test_x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": 0.1, "train_subset": 190}, "train_subset"),
        ({"val_fraction": 0.1, "train_subset": 5}, "less than one image per class"),
        ({"val_fraction": 0.1, "test_subset": 110}, "test_subset"),
    ],
)
def test_impossible_splits(kwargs, match):
    with pytest.raises(ValueError, match=match):
        D.make_splits(_synthetic(), split_seed=0, **kwargs)


def test_load_splits_from_config(jpeg_tree, tmp_path):
    tree, _ = jpeg_tree
    cache = str(tmp_path / "c")
    cfg = DataConfig(root=str(tree), cache_dir=cache, val_fraction=0.34, test_subset=10)
    s = D.load_splits(cfg)
    assert (s.train_x.shape[0], s.val_x.shape[0], s.test_x.shape[0]) == (20, 10, 10)


# --- the real archive -------------------------------------------------------------------------


@pytest.mark.e2e
def test_real_archive(real_archive, tmp_path, monkeypatch):
    t0 = time.perf_counter()
    data = D.load_cifar10(real_archive, cache_dir=tmp_path)
    t1 = time.perf_counter()
    _forbid_decoding(monkeypatch)
    again = D.load_cifar10(real_archive, cache_dir=tmp_path)
    t2 = time.perf_counter()
    print(f"\ndecode {t1 - t0:.1f} s, cached reload {t2 - t1:.2f} s")
    assert data.train_x.shape == (50000, 3, 32, 32) and data.test_x.shape == (10000, 3, 32, 32)
    assert data.train_y.bincount().tolist() == [5000] * 10
    assert data.test_y.bincount().tolist() == [1000] * 10
    mean = data.train_x.float().mean(dim=(0, 2, 3)) / 255
    assert mean.tolist() == pytest.approx([0.4913, 0.4821, 0.4465], abs=0.002)
    assert torch.equal(again.test_x, data.test_x)
