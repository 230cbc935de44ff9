"""`ablate evaluate` and `ablate predict` on a checkpoint the test trains itself (tiny data)."""

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from ablations.cli import main
from ablations.inference import InferenceError, load_checkpoint, predict_files, read_image
from core.config import RunConfig, apply_overrides
from core.train import fit
from tests.conftest import tiny_splits


@pytest.fixture
def checkpoint(tmp_path):
    cfg = apply_overrides(RunConfig(), {"train.epochs": 1, "train.batch_size": 16, "train.device": "cpu"})
    result = fit(cfg, tiny_splits())
    path = tmp_path / "best.pt"
    torch.save(result.state_dict, path)
    return path, result.config


def test_read_image_any_size_and_format(tmp_path):
    Image.new("RGB", (200, 120), (255, 0, 0)).save(tmp_path / "red.png")
    Image.new("RGB", (50, 50), (0, 0, 255)).save(tmp_path / "blue.gif")
    red = read_image(tmp_path / "red.png")
    assert red.shape == (3, 32, 32) and red.dtype == torch.uint8 and red[0].min() > 250
    assert read_image(tmp_path / "blue.gif")[2].min() > 240
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(InferenceError, match="notes.txt: not an image"):
        read_image(tmp_path / "notes.txt")


def test_predict_keeps_going_after_a_bad_file(tmp_path, checkpoint):
    path, cfg = checkpoint
    loaded = load_checkpoint(path, cfg, "cpu")
    Image.new("RGB", (64, 64), (10, 200, 10)).save(tmp_path / "green.jpg")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    out = predict_files(loaded, [tmp_path / "bad.png", tmp_path / "green.jpg"], top_k=3)
    assert "error" in out[0] and "bad.png" in out[0]["error"]
    probs = [p for _, p in out[1]["top"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_checkpoint_that_does_not_fit_is_a_clear_error(checkpoint):
    path, cfg = checkpoint
    other = apply_overrides(cfg, {"model.widths": (8, 8, 8, 8)})
    with pytest.raises(InferenceError, match="does not fit model 'cnn4'"):
        load_checkpoint(path, other)
    with pytest.raises(InferenceError, match="no such checkpoint"):
        load_checkpoint(path.with_name("missing.pt"), cfg)


def test_evaluate_cli_with_checkpoint_needs_data_or_says_so(tmp_path, checkpoint, monkeypatch):
    path, _ = checkpoint
    monkeypatch.setenv("ABLATE_DATA", str(tmp_path / "nowhere"))
    out = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(path)])
    assert out.exit_code == 1 and "nowhere" in out.output
    both = CliRunner().invoke(main, ["evaluate"])
    assert both.exit_code == 2 and "RUN_ID or --checkpoint" in both.output


def test_predict_unknown_run_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    from ablations.tracking import Tracker

    Tracker().experiment("some study")  # the project store exists, the run does not
    out = CliRunner().invoke(main, ["predict", "x.png", "--run", "deadbeef"])
    assert out.exit_code == 1 and "no run 'deadbeef'" in out.output
