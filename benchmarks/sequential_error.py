"""False verdicts, coverage and seeds to a verdict of sequential studies, judged by the code of `ablate report`.

    python benchmarks/sequential_error.py [--studies 500] [--workers 2] [--rows 'mixture;effect 3']

Every simulated study is a set of synthetic runs (one test accuracy per arm and seed) of a one-factor study,
judged by `ablations.report.build_report`, the function `ablate report` and the runner's look replay use: the
looks `load_study(..., max_seeds=20).looks()` plans for a study file with seeds [0, 1, 2] (3, 5, ..., 19, 20
seeds per arm), the plan and analysis the study's first sequential run records (`ablations.runner.plan_record`),
its claims, the Bonferroni split over its comparisons, the running intersection of each comparison's intervals,
the rule that every deciding comparison must be decided, and failed runs as the report reads them. Only the
runs are synthetic: the baseline arm scores 80% + N(0, 2 pp) per seed, another arm the baseline's value plus
the row's per-seed difference (percent points).

Rows (true effect 0 unless the row says otherwise; a "false verdict" is `better` or `worse` where there is no
effect):

- normal: differences N(0, 2.5 pp); one comparison, and three arms against one baseline (family-wise);
- skewed: a lognormal (sigma 0.3, skewness 0.95) shifted to mean 0, SD 2.5 pp;
- mixture: 90% N(0, 1) and 10% N(-6, 1), centred to mean 0 (an occasional bad seed);
- each of those beside one paired t test at the rule's mean seeds per arm (what a fixed-seed report does);
- peek then sequential: a fixed-seed report at 3 seeds, and the sequential run the runner refuses on those runs
  (a fresh plan on seen data, the row shows what refusing prevents);
- loosened alpha: `ablate report --alpha 0.10` at every study: the recorded plan's verdict, and the exploratory
  one beside it;
- diverging arm: the treatment diverges on 20% of seeds (counted at chance, 10%) and is otherwise as good; a
  false verdict is `better` or `equivalent`;
- claimed size: true effect 0.4 pp, claimed 1.4 pp, SD 1 pp; a false verdict is `supported: as large as
  claimed`;
- claims, no effect: a claim without a size, differences N(0, 0.5 pp), equivalence margin 1 pp: how often the
  study ends `equivalent` before the cap;
- extended to 40: the plan of 20 recorded, then `--max-seeds 40` after an undecided cap;
- effect 2 and 3 pp: the seeds per arm to a verdict and the coverage of the interval at the stop.

Every row with the default (`sequential.boundary: anytime`), some also with `pocock` and `obrien-fleming`.
`tests/test_sequential_error.py` runs a few studies of every row.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats as sps  # noqa: E402

from ablations.report import StudyRuns, build_report  # noqa: E402
from ablations.runner import plan_record  # noqa: E402
from ablations.study import load_study  # noqa: E402

CAP = 20
SD = 2.5  # per-seed SD of the difference, pp (the batchnorm study's spread at the quick budget)
LEVELS = ["1.0e-3", "2.0e-3", "3.0e-3", "4.0e-3"]  # the factor's levels (optim.lr): the first is the baseline
DIVERGE = 0.2

STUDY = """name: sim
question: a simulated study
base: {{train.epochs: 1}}
factors:
  optim.lr: [{levels}]
seeds: [0, 1, 2]
alpha: {alpha}
sequential: {{max_seeds: {cap}, step: 2, boundary: {boundary}{margin}}}
{claims}"""


def study_file(
    folder: Path, arms: int, boundary: str, margin: float | None, claim: str | None, alpha: float = 0.05
) -> Path:
    """A study file whose only use is its looks, plan and analysis (nothing trains)."""
    claims = ""
    if claim is not None:
        claims = (
            "claims:\n  - {source: s, text: t, treatment: {optim.lr: 2.0e-3}, control: {optim.lr: 1.0e-3}, "
            f"direction: increase{claim}}}\n"
        )
    path = folder / f"sim-{arms}-{boundary}-{margin}-{abs(hash(claim))}-{alpha}.yaml"
    path.write_text(
        STUDY.format(
            levels=", ".join(LEVELS[:arms]),
            alpha=alpha,
            cap=CAP,
            boundary=boundary,
            margin="" if margin is None else f", equivalence_margin: {margin}",
            claims=claims,
        )
    )
    return path


def runs_of(study, plan: dict, diffs: np.ndarray, base: np.ndarray, diverged=None, sequential=True) -> StudyRuns:
    """The runs of one simulated study as ``ablations.report.load_runs`` returns them from MLflow.

    ``diffs`` (arms - 1, seeds): each other arm's per-seed difference to the baseline (pp); ``base`` (seeds,)
    the baseline's values (%); ``diverged`` (seeds,) bool: the first other arm's seeds that diverged.
    """
    cells = study.with_seeds(list(range(diffs.shape[1]))).cells()
    labels = [c.arm for c in cells]
    arms = list(dict.fromkeys(labels))
    rows, fails = [], []
    for cell in cells:
        k, s = arms.index(cell.arm), cell.seed
        if k == 1 and diverged is not None and diverged[s]:
            fails.append({"arm": cell.arm, "seed": s, "status": "FAILED", "kind": "diverged"})
            continue
        value = base[s] + (diffs[k - 1, s] if k else 0.0)
        rows.append({"arm": cell.arm, "seed": s, "optim.lr": cell.arm.split("=")[1], "test_acc": value / 100})
    seq = None
    if sequential:
        block = study.sequential.model_dump()
        seq = {**block, "looks": study.looks(), "stopped": None, "plan": dict(plan), "analysis": plan["analysis"]}
        seq["plan"].pop("analysis")
    return StudyRuns(
        study.name,
        study.profile,
        "simulated",
        {"optim.lr": [a.split("=")[1] for a in arms]},
        "test_acc",
        "maximize",
        pd.DataFrame(rows),
        len(fails),
        claims=[c.model_dump() for c in study.claims],
        baseline={"optim.lr": arms[0].split("=")[1]},
        alpha=study.alpha,
        failures=pd.DataFrame(fails, columns=["arm", "seed", "status", "kind"]),
        sequential=seq,
    )


# ----------------------------------------------------------------------------------------------- the rows

ROWS: dict[str, dict] = {}


def row(name: str, **spec) -> None:
    ROWS[name] = spec


for b in ("anytime", "pocock", "obrien-fleming"):
    row(f"normal, 1 comparison [{b}]", data="normal", boundary=b)
row("normal, 3 arms vs baseline [anytime]", data="normal", arms=4)
for b in ("anytime", "obrien-fleming"):
    row(f"skewed (lognormal) [{b}]", data="skewed", boundary=b)
for b in ("anytime", "pocock", "obrien-fleming"):
    row(f"mixture, 1 seed in 10 bad [{b}]", data="mixture", boundary=b)
row("peek at 3 seeds, then sequential [anytime]", data="normal", peek=True)
row("loosened alpha: report --alpha 0.10 [anytime]", data="normal", loosen=0.10)
row("diverging arm, 20% of seeds [anytime]", data="normal", diverge=True, margin=1.0)
row("claimed size: true 0.4, claimed 1.4, SD 1 [anytime]", data="normal", effect=0.4, sd=1.0, claim=1.4)
row("claims, no effect, margin 1, SD 0.5 [anytime]", data="normal", sd=0.5, claim=0.0, margin=1.0)
row("extended to 40 after the cap [pocock]", data="normal", boundary="pocock", extend=40)
for e, boundaries in ((3.0, ("anytime", "pocock", "obrien-fleming")), (2.0, ("anytime", "pocock"))):
    for b in boundaries:
        row(f"effect {e:g} pp [{b}]", data="normal", effect=e, boundary=b)


def draw(spec: dict, rng: np.random.Generator, n: int, seeds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(diffs (n, arms - 1, seeds), base (n, seeds), diverged (n, seeds))`` of a row."""
    arms = spec.get("arms", 2)
    sd, effect = spec.get("sd", SD), spec.get("effect", 0.0)
    shape = (n, arms - 1, seeds)
    if spec["data"] == "normal":
        d = rng.normal(effect, sd, shape)
    elif spec["data"] == "skewed":
        sigma = 0.3
        mean, s = math.exp(sigma**2 / 2), math.sqrt((math.exp(sigma**2) - 1) * math.exp(sigma**2))
        d = effect + (rng.lognormal(0.0, sigma, shape) - mean) / s * sd
    else:  # mixture: 90% N(0, 1), 10% N(-6, 1), centred to mean 0
        d = np.where(rng.random(shape) < 0.1, rng.normal(-6, 1, shape), rng.normal(0, 1, shape)) + 0.6 + effect
    base = 80 + rng.normal(0, 2.0, (n, seeds))
    diverged = rng.random((n, seeds)) < DIVERGE if spec.get("diverge") else np.zeros((n, seeds), bool)
    return d, base, diverged


_CACHE: dict = {}


def studies_of(spec: dict, alpha: float = 0.05):
    """The row's study (looks, plan, analysis) from a study file, as `ablate run` would load it."""
    key = (spec.get("arms", 2), spec.get("boundary", "anytime"), spec.get("margin"), spec.get("claim"), alpha)
    key += (spec.get("extend"),)
    if key not in _CACHE:
        folder = Path(tempfile.mkdtemp(prefix="ablate-sim-"))
        claim = spec.get("claim")
        text = None if claim is None else ("" if claim == 0 else f", min_effect: {claim}")
        path = study_file(folder, key[0], key[1], key[2], text, alpha)
        study = load_study(path, max_seeds=CAP)
        plan = plan_record(study)
        extended = load_study(path, max_seeds=spec["extend"]) if spec.get("extend") else None
        _CACHE[key] = (study, plan, extended)
    return _CACHE[key]


def judge(args) -> list[tuple]:
    """Judge a chunk of simulated studies of one row: one tuple per study (see ``summarize``)."""
    name, d, base, diverged = args
    spec = ROWS[name]
    study, plan, extended = studies_of(spec)
    out = []
    for k in range(len(d)):
        sr = runs_of(extended or study, plan, d[k], base[k], diverged[k] if spec.get("diverge") else None)
        peeked = None
        if spec.get("peek"):  # the fixed-seed report at 3 seeds, before any sequential run
            fixed = runs_of(study, plan, d[k][:, :3], base[k][:3], sequential=False)
            peeked = build_report(fixed).effects.iloc[0]["verdict"]
        r = build_report(sr, alpha=spec.get("loosen"))
        last = r.sequential["looks"][-1]
        verdicts = [c["verdict"] for c in last["comparisons"]]
        lo, hi = last["comparisons"][0]["ci_low"], last["comparisons"][0]["ci_high"]
        explored = [c["verdict"] for c in (r.exploratory or {}).get("comparisons", [])]
        out.append((verdicts, r.sequential["stopped"], last["seeds"], lo, hi, peeked, explored))
    return out


def fixed_t(d: np.ndarray, n: int, alpha: float) -> float:
    """The share of studies where one paired t test at ``n`` seeds (first comparison) rejects no difference."""
    x = d[:, 0, :n]
    half = sps.t.ppf(1 - alpha / 2, n - 1) * x.std(axis=1, ddof=1) / math.sqrt(n)
    return float((np.abs(x.mean(axis=1)) > half).mean())


def se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / n)


def summarize(name: str, spec: dict, res: list[tuple], d: np.ndarray, alpha: float) -> str:
    n = len(res)
    effect = spec.get("effect", 0.0)
    verdicts = [v for v, *_ in res]
    seeds = float(np.mean([s for _, _, s, *_ in res]))
    before_cap = sum(stop == "decided" for _, stop, *_ in res) / n
    cover = sum(lo <= effect <= hi for _, _, _, lo, hi, *_ in res) / n
    parts = []
    if spec.get("diverge"):
        false = sum(v[0] in ("better", "equivalent") for v in verdicts) / n
        worse = sum(v[0] == "worse" for v in verdicts) / n
        parts.append(f"false (better or equivalent) {false:.3f} ± {se(false, n):.3f}; worse {worse:.3f}")
    elif spec.get("claim") is not None and spec["claim"] > 0:
        false = sum(v[0].startswith("supported") for v in verdicts) / n
        direction = sum(v[0].startswith("direction confirmed") for v in verdicts) / n
        smaller = sum(v[0].startswith("contradicted: smaller") for v in verdicts) / n
        parts.append(
            f"false (as large as claimed) {false:.3f} ± {se(false, n):.3f}; smaller than claimed {smaller:.3f}; "
            f"direction confirmed, size not resolved {direction:.3f}"
        )
    elif spec.get("claim") == 0:
        equiv = sum(v[0].startswith("equivalent") for v in verdicts) / n
        false = sum(v[0].startswith(("supported", "contradicted")) for v in verdicts) / n
        parts.append(f"false {false:.3f} ± {se(false, n):.3f}; equivalent {equiv:.3f}")
    elif effect == 0:
        false = sum(any(x in ("better", "worse") for x in v) for v in verdicts) / n
        parts.append(f"false {false:.3f} ± {se(false, n):.3f}")
        if spec.get("peek"):
            bad = ("better", "worse")
            fixed = sum(r[5] in bad for r in res) / n
            fresh = sum(r[5] in bad or any(x in bad for x in r[0]) for r in res) / n
            parts[-1] = (
                f"false {fixed:.3f} ± {se(fixed, n):.3f} (the runner refuses the sequential run: the fixed report's "
                f"verdicts alone; with a fresh plan on the seen runs {fresh:.3f} ± {se(fresh, n):.3f})"
            )
        if spec.get("loosen"):
            loose = sum(any(x in ("better", "worse") for x in e) for *_, e in res) / n
            parts.append(f"exploratory at alpha {spec['loosen']:g}: {loose:.3f} (not error-controlled)")
        if not any(spec.get(k) for k in ("peek", "loosen", "extend")) and spec.get("arms", 2) == 2:
            k = round(seeds)
            t = fixed_t(d, k, alpha)
            parts.append(f"one t test at {k} seeds {t:.3f} ± {se(t, n):.3f}")
    else:
        better = sum(v[0] == "better" for v in verdicts) / n
        parts.append(f"better {better:.3f}")
    parts += [
        f"decided before the cap {before_cap:.3f}",
        f"mean seeds per arm at the stop {seeds:.1f}",
        f"coverage at the stop {cover:.3f} ± {se(cover, n):.3f}",
    ]
    return f"{name}: " + "; ".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=500, help="simulated studies per row")
    ap.add_argument("--workers", type=int, default=2, help="processes (the rows' studies are split among them)")
    ap.add_argument("--rows", default="", help="';'-separated substrings: only the rows whose name has one")
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args()
    wanted = [w.strip() for w in args.rows.split(";") if w.strip()]
    names = [n for n in ROWS if not wanted or any(w in n for w in wanted)]
    print(
        f"{args.studies} simulated studies per row, looks at 3, 5, ..., 19, 20 seeds per arm (seeds [0, 1, 2], "
        f"step 2, max_seeds {CAP}), per-seed SD {SD} pp unless the row says, alpha {args.alpha}; each through "
        "ablations.report.build_report",
        flush=True,
    )
    started = time.monotonic()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(args.workers) as pool:
        for name in names:
            spec = ROWS[name]
            rng = np.random.default_rng([2023, list(ROWS).index(name)])
            seeds = spec.get("extend", CAP)
            d, base, diverged = draw(spec, rng, args.studies, seeds)
            chunks = np.array_split(np.arange(args.studies), max(args.workers * 4, 1))
            parts = pool.map(judge, [(name, d[c], base[c], diverged[c]) for c in chunks if len(c)])
            res = [x for part in parts for x in part]
            print(summarize(name, spec, res, d, args.alpha), flush=True)
    print(f"{time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
