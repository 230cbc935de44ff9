"""The default source when neither data.root nor $ABLATE_DATA is set: torchvision's download.

A small archive in torchvision's exact format (cifar-10-python.tar.gz holding cifar-10-batches-py/)
is served from a loopback HTTP server; ``torchvision.datasets.CIFAR10`` is pointed at it by its
class attributes (URL and MD5 sums), so the real download, checksum and extraction code runs.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import pickle
import socket
import struct
import tarfile
import threading

import numpy as np
import pytest
import torch
import torchvision.datasets

import core.data as D
from core.config import DataConfig
from core.data import CLASSES, DataError

TV_FILES = [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta"]


class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 ``str``, as in the real batches: torchvision reads them with
    ``encoding="latin1"`` (keys ``"data"``), core.data with ``encoding="bytes"`` (keys ``b"data"``)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: str | bytes) -> None:
        b = obj.encode("latin1") if isinstance(obj, str) else obj
        short = len(b) < 256
        self.write(
            pickle.SHORT_BINSTRING + bytes([len(b)]) + b if short else pickle.BINSTRING + struct.pack("<i", len(b)) + b
        )
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = _save_py2_str


def _py2_pickle(obj: dict) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _tv_archive(n_per_batch: int = 4) -> tuple[bytes, dict[str, str], dict[str, tuple]]:
    """Return (the .tar.gz bytes, file -> MD5, split -> expected (x, y))."""
    rng = np.random.default_rng(0)
    blobs = {"batches.meta": _py2_pickle({"label_names": list(CLASSES), "num_vis": 3072})}
    expected: dict[str, tuple] = {"train": ([], []), "test": ([], [])}
    for i, name in enumerate(TV_FILES[:-1]):
        x = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        y = [(i * n_per_batch + j) % 10 for j in range(n_per_batch)]  # every class in train
        blobs[name] = _py2_pickle({"batch_label": name, "labels": y, "data": x})
        xs, ys = expected["test" if name == "test_batch" else "train"]
        xs.append(torch.from_numpy(x).reshape(-1, 3, 32, 32))
        ys += y
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, blob in blobs.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    md5 = {name: hashlib.md5(blob).hexdigest() for name, blob in blobs.items()}
    return buf.getvalue(), md5, {s: (torch.cat(xs), torch.tensor(ys)) for s, (xs, ys) in expected.items()}


@pytest.fixture
def no_source(tmp_path, monkeypatch):
    """No data.root, no $ABLATE_DATA, no archive beside the checkout; the cache under tmp_path."""
    monkeypatch.delenv("ABLATE_DATA", raising=False)
    monkeypatch.setenv("ABLATE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(D, "beside_checkout", lambda: [tmp_path / "shared" / "data" / "cifar10-jpeg.tar.gz"])
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "cache"


def _point_torchvision_at(monkeypatch, url: str, tgz: bytes, md5: dict[str, str]) -> None:
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "url", url)
    monkeypatch.setattr(cls, "tgz_md5", hashlib.md5(tgz).hexdigest())
    monkeypatch.setattr(cls, "train_list", [[f, md5[f]] for f in TV_FILES[:5]])
    monkeypatch.setattr(cls, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5["batches.meta"]})


@pytest.fixture
def server():
    """Serve ``server.body`` at any path on 127.0.0.1; ``server.requests`` counts the requests."""
    state = type("State", (), {"body": b"", "requests": 0})()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            state.requests += 1
            self.send_response(200)
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/cifar-10-python.tar.gz"
    yield state
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_download_once_then_reuse(no_source, server, monkeypatch, capsys):
    tgz, md5, expected = _tv_archive()
    server.body = tgz
    _point_torchvision_at(monkeypatch, server.url, tgz, md5)

    data = D.load_cifar10()
    for split, n in (("train", 20), ("test", 4)):
        x, y = getattr(data, f"{split}_x"), getattr(data, f"{split}_y")
        assert x.shape == (n, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
        assert torch.equal(x, expected[split][0]) and torch.equal(y, expected[split][1])
    assert data.classes == CLASSES
    assert server.requests >= 1
    dest = no_source / "torchvision" / "cifar-10-batches-py"
    assert sorted(p.name for p in dest.iterdir()) == sorted(TV_FILES)
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]  # no archive or temporary folder left
    err = capsys.readouterr().err
    assert f"downloading it with torchvision into {dest}" in err

    served = server.requests
    for pt in no_source.glob("cifar10-*.pt"):  # without the decoded cache: read the download again
        pt.unlink()
    splits = D.load_splits(DataConfig(val_fraction=0.0))  # the normal path of a run
    assert server.requests == served
    assert torch.equal(splits.train_x, expected["train"][0]) and torch.equal(splits.test_y, expected["test"][1])
    assert f"CIFAR-10: {dest} (downloaded earlier" in capsys.readouterr().err


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"


def test_offline_error_names_both_ways_out(no_source, monkeypatch):
    tgz, md5, _ = _tv_archive()
    _point_torchvision_at(monkeypatch, _closed_port_url(), tgz, md5)
    with pytest.raises(DataError) as err:
        D.load_cifar10()
    msg = str(err.value)
    assert "no network" in msg and "URLError" in msg
    assert "data.root" in msg and "ABLATE_DATA=/path/to/cifar10-jpeg.tar.gz" in msg  # way out 1: point at data
    assert "../shared/data/cifar10-jpeg.tar.gz beside the checkout" in msg
    assert "connect to the internet and run again" in msg  # way out 2
    assert str(no_source / "torchvision") in msg
    assert list((no_source / "torchvision").iterdir()) == []  # nothing half-downloaded is kept


def test_corrupt_download_is_not_called_offline(no_source, server, monkeypatch):
    tgz, md5, _ = _tv_archive()
    server.body = tgz[:-10]  # truncated: torchvision's MD5 check fails
    _point_torchvision_at(monkeypatch, server.url, tgz, md5)
    with pytest.raises(DataError, match="the download failed") as err:
        D.load_cifar10()
    assert "no network" not in str(err.value) and "connect to the internet" in str(err.value)
    assert not (no_source / "torchvision" / "cifar-10-batches-py").exists()
