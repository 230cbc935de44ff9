"""Progress in logs (ablations.progress): where stdout is not a terminal, every run prints one line per
epoch (cell, epoch e/E, train loss, validation accuracy, images/s, ETA); on a terminal only the tqdm bars."""

from __future__ import annotations

import io
import math
import re
import sys
from pathlib import Path

import pytest

import ablations.hpsearch as hpsearch
import ablations.runner as runner
from ablations.progress import EpochLines, epoch_line, epoch_lines_wanted
from ablations.study import load_study
from tests.conftest import tiny_splits
from tests.test_hpsearch import SEARCH, _fresh_stores, empty_stores  # noqa: F401 (a fixture)

STUDY = """\
name: tinylines
question: does BatchNorm matter?
base: {{train.epochs: 2, train.batch_size: 16, train.device: cpu, optim.name: sgd, optim.lr: 0.01,
        train.fuse_seeds: {fuse}}}
factors:
  batchnorm: [true, false]
seeds: {seeds}
metric: {{name: test_acc, direction: maximize}}
"""
# e.g. "[1/4] batchnorm=true seed=0: epoch 2/2, train_loss 2.412, val_acc 12.5%, 1532 images/s, ETA 0 s"
LINE = re.compile(
    r"^(?P<label>.+): epoch (?P<epoch>\d+)/(?P<epochs>\d+), train_loss (?P<loss>\d+\.\d{3}), "
    r"val_acc (?P<val>\d+\.\d%), (?P<speed>\d+) images/s, ETA (?P<eta>\d+ s|\d+ min|\d+ h \d\d min)$"
)


@pytest.fixture
def env(tmp_path, monkeypatch, empty_stores):  # noqa: F811 (the fixture imported above)
    """A working directory with its own empty stores and tiny in-memory data."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("ABLATE_OPTUNA_STORAGE", raising=False)
    monkeypatch.setattr(runner, "load_splits", lambda cfg: tiny_splits(n_train=32, n_val=16, n_test=16))
    _fresh_stores(tmp_path, empty_stores)
    return tmp_path


def _study(folder: Path, fuse: str = "off", seeds: str = "[0, 1]") -> Path:
    path = folder / "tinylines.yaml"
    path.write_text(STUDY.format(fuse=fuse, seeds=seeds))
    return path


def _lines(out: str) -> list[re.Match]:
    return [m for m in map(LINE.match, out.splitlines()) if m]


def _fake_terminal(monkeypatch) -> None:
    """Make the captured stdout and stderr say they are terminals (tqdm then draws into them)."""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)


def test_a_study_in_a_log_prints_one_line_per_epoch_and_cell(env, capsys):
    summary = runner.run_study(load_study(_study(env)), progress=True)
    assert len(summary.trained) == 4
    out = capsys.readouterr().out
    lines = _lines(out)
    cells = {f"batchnorm={bn} seed={s}" for bn in ("true", "false") for s in (0, 1)}
    seen = {(m["label"].split("] ", 1)[1], int(m["epoch"])) for m in lines}
    assert seen == {(c, e) for c in cells for e in (1, 2)} and len(lines) == 8, out
    for m in lines:
        assert re.fullmatch(r"\[[1-4]/4\] batchnorm=(true|false) seed=[01]", m["label"])
        assert m["epochs"] == "2" and math.isfinite(float(m["loss"])) and int(m["speed"]) > 0
    assert all(m["eta"] == "0 s" for m in lines if m["epoch"] == "2")
    for cell in cells:  # a cell's epochs, then its result
        last = next(m for m in lines if m["label"].endswith(f"] {cell}") and m["epoch"] == "2")
        assert out.index(last.group(0)) < out.index(f"{cell}: test_acc")


def test_on_a_terminal_only_the_bars_show(env, capsys, monkeypatch):
    _fake_terminal(monkeypatch)
    assert not epoch_lines_wanted()
    runner.run_study(load_study(_study(env, seeds="[0]")), progress=True)
    out = capsys.readouterr()
    assert _lines(out.out) == [] and ": epoch 1/2," not in out.out + out.err
    assert "epoch" in out.err  # the tqdm bars were drawn (into the fake terminal)


def test_no_progress_prints_no_lines_either(env, capsys):
    runner.run_study(load_study(_study(env, seeds="[0]")), progress=False)
    assert _lines(capsys.readouterr().out) == []


def test_every_seed_of_a_fused_group_prints_its_own_lines(env, capsys):
    summary = runner.run_study(load_study(_study(env, fuse="2")), progress=True)
    assert len(summary.trained) == 4
    lines = _lines(capsys.readouterr().out)
    assert len(lines) == 8 and all(m["label"].endswith(" (2 seeds fused)") for m in lines)
    labels = {m["label"].removesuffix(" (2 seeds fused)").split("] ", 1)[1] for m in lines}
    assert labels == {f"batchnorm={bn} seed={s}" for bn in ("true", "false") for s in (0, 1)}
    # the two seeds of a group differ in loss but share the group's speed
    by_epoch = {}
    for m in lines:
        by_epoch.setdefault((m["label"].split(" seed=")[0].split("] ")[1], m["epoch"]), []).append(m)
    assert all(len(ms) == 2 and ms[0]["speed"] == ms[1]["speed"] for ms in by_epoch.values())


def test_a_search_in_a_log_prints_one_line_per_epoch_and_trial(env, capsys):
    (env / "tiny.yaml").write_text(SEARCH)
    study = load_study(env / "tiny.yaml", sets={"search.n_trials": 2})
    hpsearch.run_search(study, progress=True)
    lines = _lines(capsys.readouterr().out)
    assert [m["label"] for m in lines] == ["trial 0", "trial 1"]
    assert all(m["epoch"] == m["epochs"] == "1" for m in lines)


def test_the_line_and_the_choice():
    line = epoch_line(
        "[3/14] batchnorm=false seed=1",
        4,
        30,
        {"train_loss": 1.23456, "val_acc": 0.4567, "images_per_s": 1849.6},
        7500.0,
    )
    assert line == (
        "[3/14] batchnorm=false seed=1: epoch 4/30, train_loss 1.235, val_acc 45.7%, 1850 images/s, ETA 2 h 05 min"
    )
    assert "val_acc n/a," in epoch_line("x", 1, 1, {"train_loss": 1.0, "val_acc": math.nan, "images_per_s": 1}, 0)

    class Stream(io.StringIO):
        def __init__(self, tty: bool) -> None:
            super().__init__()
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    with pytest.MonkeyPatch.context() as mp:
        for out_tty, err_tty, wanted in [
            (True, True, False),
            (False, True, True),
            (True, False, True),
            (False, False, True),
        ]:
            mp.setattr(sys, "stdout", Stream(out_tty))
            mp.setattr(sys, "stderr", Stream(err_tty))
            assert epoch_lines_wanted() is wanted, (out_tty, err_tty)
        mp.setattr(sys, "stdout", None)  # pythonw, a closed console
        assert epoch_lines_wanted()


def test_a_broken_stdout_stops_the_lines_not_the_run(monkeypatch):
    class Broken(io.StringIO):
        def write(self, s: str) -> int:
            raise BrokenPipeError("the log reader went away")

    from core.config import RunConfig, apply_overrides

    lines = EpochLines("[1/1] seed=0")
    lines.on_fit_start(apply_overrides(RunConfig(), {"train.epochs": 3}), 4)
    monkeypatch.setattr(sys, "stdout", Broken())
    lines.on_epoch_end(1, {"train_loss": 1.0, "val_acc": 0.5, "images_per_s": 10.0})  # no exception
    assert lines.broken
