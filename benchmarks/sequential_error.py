"""The error rates and the seeds to a verdict of three stopping rules on simulated sequential studies, in one run.

    python benchmarks/sequential_error.py [--studies 4000] [--sd 2.5]

Each simulated study draws per-seed differences from N(effect, sd) and looks after 3, 5, ..., 19, 20 seeds
per arm (the default `sequential` block: seeds [0, 1, 2], step 2, max_seeds 20). It prints, for a true
effect of 0, how often each rule ends with a false better/worse, and, for true effects 0, 0.7 and 3 pp, how
often the interval at the stop covers the truth, how many seeds per arm the study took, and how often it ended
decided (better, worse or equivalent within 1 pp) before the cap: (a) the anytime-valid t confidence sequence
alone (`ablations.stats.sequential_from_values` without a plan: a study whose looks were not planned), (b) the
naive rule, stopping the first time the fixed-n paired t interval excludes 0, and (c) ablate's rule for a study
whose first sequential run recorded its looks: the repeated confidence interval of the planned looks at 0.9
alpha intersected with the anytime-valid sequence at 0.1 alpha. (d) is (c) with one seed of every study failed
(a random one of the 20, dropped from every look after it), and (e) is (c) extended after an undecided cap of 20
to 40 seeds, looks 22, 24, ..., 40 beyond the plan. (f) and (g) are (a) and (c) when the per-seed differences
are not normal but skewed: a lognormal (sigma 0.3, skewness 0.95) shifted to mean 0 and scaled to the same SD,
and (h) is one fixed-n paired t test at 7 seeds (what a fixed-seed study's report does) on those skewed values.
The same checks, but (f), (g) and (h), are tests in tests/test_sequential_stats.py.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from scipy import stats as sps  # noqa: E402

from ablations import stats  # noqa: E402

LOOKS = [3, 5, 7, 9, 11, 13, 15, 17, 19, 20]


PLAN = stats.LookPlan(tuple(LOOKS))
EXTENDED = LOOKS + list(range(22, 41, 2))


def sequential(
    d: np.ndarray, alpha: float, margin: float, plan=None, looks=LOOKS, failed: int | None = None
) -> tuple[str, float, float, int]:
    """The first decided look of one study (or the last): verdict, interval, seeds per arm planned."""
    for n in looks:
        x = d[:n] if failed is None or failed >= n else np.delete(d[:n], failed)
        c = stats.sequential_from_values(x, alpha, plan=plan, look=n)
        v = stats.sequential_verdict(c, True, margin)
        if v != "no detectable difference":
            break
    return v, c.ci_low, c.ci_high, n


def naive(d: np.ndarray, alpha: float) -> tuple[str, float, float, int]:
    for n in LOOKS:
        x = d[:n]
        half = sps.t.ppf(1 - alpha / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
        if abs(x.mean()) > half:
            return ("better" if x.mean() > 0 else "worse"), x.mean() - half, x.mean() + half, n
    return "no detectable difference", x.mean() - half, x.mean() + half, n


def fixed(d: np.ndarray, alpha: float, n: int = 7) -> tuple[str, float, float, int]:
    """One paired t test at n seeds, no looks: the fixed-seed report's test."""
    x = d[:n]
    half = sps.t.ppf(1 - alpha / 2, n - 1) * x.std(ddof=1) / math.sqrt(n)
    v = ("better" if x.mean() > 0 else "worse") if abs(x.mean()) > half else "no detectable difference"
    return v, x.mean() - half, x.mean() + half, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=4000)
    ap.add_argument("--sd", type=float, default=2.5, help="SD of the per-seed difference, pp")
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args()
    rng = np.random.default_rng(2023)
    n = args.studies
    print(
        f"{n} simulated studies per row, looks at {LOOKS} seeds per arm, per-seed SD {args.sd} pp, alpha {args.alpha}"
    )
    a, m = args.alpha, 1.0
    widths = []
    for k in (3, 7, 20):  # interval width over Student's at the same n (the same for any data: both scale with s)
        d = np.arange(k, dtype=float)
        student = 2 * sps.t.ppf(1 - a / 2, k - 1) * d.std(ddof=1) / math.sqrt(k)
        planned, anytime_ = (stats.sequential_from_values(d, a, plan=p) for p in (PLAN, None))
        widths.append(
            f"{k} seeds planned {(planned.ci_high - planned.ci_low) / student:.2f}x, "
            f"anytime-valid {(anytime_.ci_high - anytime_.ci_low) / student:.2f}x"
        )
    print(f"Pocock's level of the plan at {0.9 * a:g}: {stats.planned_level(LOOKS, 0.9 * a):.4f}")
    print("width over Student's t interval at " + "; ".join(widths))
    rules = (
        ("a. anytime-valid t-CS    ", lambda d, f: sequential(d, a, m)),
        ("b. naive fixed-n t       ", lambda d, f: naive(d, a)),
        ("c. planned: RCI + t-CS   ", lambda d, f: sequential(d, a, m, PLAN)),
        ("d. planned, 1 seed failed", lambda d, f: sequential(d, a, m, PLAN, failed=f)),
        ("e. planned, extended to 40", lambda d, f: sequential(d, a, m, PLAN, EXTENDED)),
        ("f. anytime, skewed values", lambda d, f: sequential(d, a, m)),
        ("g. planned, skewed values", lambda d, f: sequential(d, a, m, PLAN)),
        ("h. one t test at 7, skewed", lambda d, f: fixed(d, a)),
    )
    sigma = 0.3  # lognormal shape: skewness (e^s2 + 2) sqrt(e^s2 - 1) = 0.95
    mean, sd = math.exp(sigma**2 / 2), math.sqrt((math.exp(sigma**2) - 1) * math.exp(sigma**2))
    skewed = (rng.lognormal(0.0, sigma, (n, EXTENDED[-1])) - mean) / sd * args.sd
    for effect in (0.0, 0.7, 2.0, 3.0):
        data = rng.normal(effect, args.sd, (n, EXTENDED[-1]))
        fails = rng.integers(0, LOOKS[-1], n)
        for name, rule in rules:
            if effect != 0 and name[0] in "defgh":
                continue  # the robustness rows are about the error rate
            values = skewed if name[0] in "fgh" else data
            out = [rule(d, f) for d, f in zip(values, fails, strict=True)]
            false = sum(v in ("better", "worse") for v, *_ in out) / n if effect == 0 else math.nan
            decided = sum(v != "no detectable difference" for v, *_ in out) / n
            cover = sum(lo <= effect <= hi for _, lo, hi, _ in out) / n
            seeds = np.mean([k for *_, k in out])
            se = lambda p: math.sqrt(max(p * (1 - p), 1e-12) / n)  # noqa: E731
            fp = f"false better/worse {false:.4f} ± {se(false):.4f}, " if effect == 0 else ""
            print(
                f"effect {effect:3.1f} pp  {name}: {fp}coverage at the stop {cover:.4f} ± {se(cover):.4f}, "
                f"decided {decided:.3f}, mean seeds per arm at the stop {seeds:.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
