"""The benchmark scripts as a user runs them (``make bench``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_without_data_is_one_line_not_a_traceback(tmp_path):
    env = {**os.environ, "ABLATE_DATA": str(tmp_path / "nowhere.tar.gz")}  # unset would find ../shared
    env.update(ABLATE_CACHE=str(tmp_path / "cache"), HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--steps", "1", "--warmup", "0"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "ABLATE_DATA" in lines[0]


def _script(name: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PY": sys.executable, "PYTHONPATH": str(ROOT), "HOME": str(tmp_path), **env}
    return subprocess.run(
        ["bash", str(ROOT / "benchmarks" / name)], capture_output=True, text=True, env=full, cwd=tmp_path, timeout=120
    )


def test_gpu_check_runs_only_the_steps_asked_for_and_writes_its_summary(tmp_path):
    """GPU_CHECK_STEPS splits the check over calls; on a CPU the studies skip, saying why."""
    out = _script("gpu_check.sh", tmp_path, GPU_CHECK_STEPS="smoke", GPU_CHECK_LOGS=str(tmp_path / "logs"))
    assert out.returncode == 0, out.stdout + out.stderr
    summary = (tmp_path / "logs" / "summary.txt").read_text()
    assert "steps: smoke" in summary and "no CUDA device" in summary
    assert "batchnorm-studies      skipped" in summary
    for step in ("tests-cuda-marked", "make test", "throughput", "fused-cpu"):  # not asked for: not run
        assert step not in summary


def test_gpu_device_without_the_bundle_says_what_to_run(tmp_path):
    repo = tmp_path / "repo"
    (repo / "benchmarks").mkdir(parents=True)
    (repo / "benchmarks" / "gpu_device.sh").write_text((ROOT / "benchmarks" / "gpu_device.sh").read_text())
    out = subprocess.run(
        ["bash", str(repo / "benchmarks" / "gpu_device.sh")],
        capture_output=True,
        text=True,
        env={**os.environ, "OUT": str(tmp_path)},
        timeout=60,
    )
    assert out.returncode == 2
    assert "make gpu-bundle" in out.stderr and "carry .gpu" in out.stderr


def test_seed000_fidelity_evaluates_what_the_engine_evaluates_and_fails_in_one_line(tmp_path):
    """Seed 000's test transform (ToImage, ToDtype, Normalize) gives the engine's evaluation input, and
    the training transform is random per image; without data the script says so in one line."""
    import importlib.util

    import torch

    from core.augment import normalize

    spec = importlib.util.spec_from_file_location("seed000_fidelity", ROOT / "benchmarks" / "seed000_fidelity.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(4)
    test = mod.SeedTransforms(x, y, train=False)
    got = torch.stack([test[i][0] for i in range(4)])
    assert torch.allclose(got, normalize(x, mod.MEAN, mod.STD), atol=1e-5)
    train = mod.SeedTransforms(x, y, train=True)
    torch.manual_seed(0)
    assert not torch.allclose(train[0][0], test[0][0])  # crop, flip, jitter, erasing: not the identity
    assert train[0][0].shape == (3, 32, 32) and train[0][1] == 0
    # seed 003's src/dataset.py: v1 transforms on a PIL image, its own mean and std; flip and rotation
    test = mod.SeedTransforms(x, y, train=False, study="seed003")
    got = torch.stack([test[i][0] for i in range(4)])
    assert torch.allclose(got, normalize(x, mod.MEAN_003, mod.STD_003), atol=1e-5)
    train = mod.SeedTransforms(x, y, train=True, study="seed003")
    torch.manual_seed(0)
    assert not torch.allclose(train[0][0], test[0][0]) and train[0][0].shape == (3, 32, 32)

    env = {**os.environ, "ABLATE_DATA": str(tmp_path / "nowhere.tar.gz"), "HOME": str(tmp_path)}
    env.update(ABLATE_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "seed000_fidelity.py"), "--epochs", "1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().startswith("Error: ") and len(out.stderr.strip().splitlines()) == 1


def _transfer_report(profile: str, diff: float, verdict: str, claim_verdict: str) -> dict:
    """The parts of ``ablate report --format json`` that benchmarks/transfer_table.py reads."""
    effect = {"kind": "arm", "effect": "bn=false", "vs": "bn=true", "n": 3, "verdict": verdict}
    effect.update(estimate=diff, ci_low=diff - 1, ci_high=diff + 1)
    claim = {**effect, "treatment": "bn=true", "control": "bn=false", "metric": "test_acc", "verdict": claim_verdict}
    claim.update(estimate=-diff, ci_low=-diff - 1, ci_high=-diff + 1)
    claim["measured_budget"] = {"text": f"profile {profile} (4 epochs, 8,000 images)"}
    rows = [
        {"kind": "arm", "comparison": "bn=false", "epoch": e, "estimate": diff, "ci_low": diff - 2, "ci_high": diff + 2}
        for e in (1, 2)
    ]
    rows.append({"kind": "claim", "comparison": "claim 1: bn=true vs bn=false", "epoch": 2, "estimate": -diff})
    rows[-1].update(ci_low=-diff - 2, ci_high=-diff + 2)
    return {
        "profile": profile,
        "metric": "test_acc",
        "budget": {},
        "effects": [effect],
        "claims": [claim],
        "by_epoch": {"metric": "val_acc", "rows": rows},
    }


def test_transfer_table_says_which_verdicts_held_at_the_larger_budget():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from transfer_table import markdown, transfer_rows

    reports = {
        "quick": _transfer_report("quick", -6.7, "worse", "supported"),
        "medium": _transfer_report(
            "medium", -0.4, "no detectable difference", "inconclusive at this budget (profile medium, 3 seeds per arm)"
        ),
    }
    rows = transfer_rows(reports)
    assert [(r["comparison"], r["profile"]) for r in rows] == [
        ("bn=false vs bn=true", "quick"),
        ("bn=false vs bn=true", "medium"),
        ("claim 1: bn=true vs bn=false", "quick"),
        ("claim 1: bn=true vs bn=false", "medium"),
    ]
    assert [r["held"] for r in rows] == ["", "changed (was worse)", "", "changed (was supported)"]
    assert rows[3]["verdict"] == "inconclusive" and rows[1]["budget"] == "4 epochs, 8,000 images"
    assert rows[0]["difference [95% CI]"] == "-6.70 [-7.70, -5.70]"
    assert rows[0]["last epoch"] == "val_acc after epoch 2: -6.70 [-8.70, -4.70]"
    same = transfer_rows({"quick": reports["quick"], "medium": _transfer_report("medium", -3.0, "worse", "supported")})
    assert [r["held"] for r in same] == ["", "held", "", "held"]
    assert markdown(rows).count("\n") == 2 + len(rows)
