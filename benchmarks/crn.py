"""How much pairing by seed buys: the correlation of two arms' per-seed values and the paired vs unpaired spread.

    python benchmarks/crn.py STUDY [--tracking-uri URI] [--profile NAME] [--seeds N]

Reads the finished runs of STUDY (its newest parent run, or that of --profile) from MLflow and prints, for
each arm against the baseline arm: the per-seed values, their Pearson correlation r, the standard deviation
of the per-seed difference (what a paired test sees) and sqrt(s_a^2 + s_b^2) (what an unpaired comparison
sees), in percent points for accuracies. With common random numbers (the same seed gives both arms the same
initial weights, data order, augmentation draws and dropout masks) r should be positive and the paired SD
smaller than the unpaired one; without them r is near 0 and pairing buys nothing. --seeds N uses the first N
seeds shared by both arms.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from ablations.report import ReportError, _is_accuracy, load_runs  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study")
    ap.add_argument("--tracking-uri", default=None)
    ap.add_argument("--profile", default=None)
    ap.add_argument("--seeds", type=int, default=None, help="use the first N shared seeds")
    args = ap.parse_args()
    try:
        sr = load_runs(args.study, args.tracking_uri, args.profile)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    scale = 100.0 if _is_accuracy(sr.metric) else 1.0
    unit = " pp" if scale == 100.0 else ""
    by_arm = {a: g.set_index("seed")[sr.metric] * scale for a, g in sr.runs.groupby("arm")}
    base = " ".join(f"{f}={sr.baseline.get(f, lv[0])}" for f, lv in sr.factors.items())
    print(f"study {sr.study}, profile {sr.profile}, metric {sr.metric}, parent run {sr.parent_run_id}")
    for arm, values in by_arm.items():
        if arm == base:
            continue
        seeds = sorted(set(values.index) & set(by_arm[base].index))[: args.seeds]
        a, b = values.loc[seeds].to_numpy(), by_arm[base].loc[seeds].to_numpy()
        r = float(np.corrcoef(a, b)[0, 1]) if len(seeds) > 2 and a.std() > 0 and b.std() > 0 else math.nan
        paired = float(np.std(a - b, ddof=1))
        unpaired = math.sqrt(np.var(a, ddof=1) + np.var(b, ddof=1))
        print(f"{arm} vs {base}, {len(seeds)} seeds {seeds}")
        print(f"  {arm:>20}: " + " ".join(f"{x:.2f}" for x in a))
        print(f"  {base:>20}: " + " ".join(f"{x:.2f}" for x in b))
        print("  per-seed difference: " + " ".join(f"{x:+.2f}" for x in a - b))
        print(
            f"  correlation r = {r:+.2f}; SD of the paired difference {paired:.2f}{unit}, unpaired {unpaired:.2f}{unit}"
        )
        print(f"  paired / unpaired SD = {paired / unpaired:.2f} (below 1: pairing by seed reduces the noise)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
