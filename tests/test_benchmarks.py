"""The benchmark scripts as a user runs them (``make bench``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_without_data_is_one_line_not_a_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ABLATE_DATA"}
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
