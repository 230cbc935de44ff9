"""benchmarks/sequential_error.py on a few studies per row: every row runs through ``build_report`` and prints
its rates with their Monte Carlo errors (the documented table comes from the same script with more studies)."""

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "sequential_error.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("sequential_error", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sequential_error"] = module
    spec.loader.exec_module(module)
    return module


def test_the_rows_of_the_issue_are_in_the_table(bench):
    names = " | ".join(bench.ROWS)
    for row in ("normal", "3 arms", "skewed", "mixture", "peek", "loosened alpha", "diverging arm", "claimed size"):
        assert row in names, row
    assert any("[anytime]" in n for n in bench.ROWS) and any("effect 3 pp" in n for n in bench.ROWS)


def test_the_looks_and_plan_are_those_the_runner_records(bench):
    study, plan, _ = bench.studies_of(bench.ROWS["normal, 1 comparison [pocock]"])
    assert plan["looks"] == [3, 5, 7, 9, 11, 13, 15, 17, 19, 20] and plan["boundary"] == "pocock"
    assert plan["analysis"]["alpha"] == 0.05 and study.looks()[0] == [0, 1, 2]
    _, _, extended = bench.studies_of(bench.ROWS["extended to 40 after the cap [pocock]"])
    assert len(extended.looks()[-1]) == 40


@pytest.mark.parametrize(
    "name",
    [
        "normal, 1 comparison [anytime]",
        "normal, 3 arms vs baseline [anytime]",
        "mixture, 1 seed in 10 bad [obrien-fleming]",
        "peek at 3 seeds, then sequential [anytime]",
        "loosened alpha: report --alpha 0.10 [anytime]",
        "diverging arm, 20% of seeds [anytime]",
        "claimed size: true 0.4, claimed 1.4, SD 1 [anytime]",
        "claims, no effect, margin 1, SD 0.5 [anytime]",
        "effect 3 pp [pocock]",
    ],
)
def test_a_row_runs_through_the_report_and_prints_its_rates_with_errors(bench, name):
    spec = bench.ROWS[name]
    d, base, diverged = bench.draw(spec, np.random.default_rng(0), 3, spec.get("extend", bench.CAP))
    res = bench.judge((name, d, base, diverged))
    assert len(res) == 3 and all(stop in ("decided", "max_seeds") for _, stop, *_ in res)
    line = bench.summarize(name, spec, res, d, 0.05)
    assert line.startswith(name) and "coverage at the stop" in line
    assert re.search(r"\d\.\d{3} ± \d\.\d{3}", line), line
    if "claimed size" in name:
        assert not any(v[0].startswith("supported") for v, *_ in res)
    if "claims, no effect" in name:
        assert all(v[0].startswith("equivalent") for v, *_ in res)
