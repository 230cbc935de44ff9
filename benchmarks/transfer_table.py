"""Does a quick verdict transfer? One study's effects and claim verdicts at several budgets, side by side.

    python benchmarks/transfer_table.py STUDY [--tracking-uri URI] [--profiles quick,medium]

Reads the finished runs of STUDY at each profile (the newest parent run of each, as ``ablate report STUDY
--profile P`` does) from MLflow and prints one Markdown table: for each comparison against the baseline arm
and each claim, at each profile, the seeds per arm, the paired difference of the study metric with its 95%
confidence interval (percent points for accuracies), the verdict, the difference in the per-epoch metric
after the last epoch, and whether the verdict is the one of the first profile ("held") or not. The numbers
are those of ``ablate report STUDY --profile P --format json`` (``effects``, ``claims`` and ``by_epoch``).
The table of docs/report.md, "Does a quick verdict transfer?", comes from it.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ablations.rendering import to_json  # noqa: E402
from ablations.report import ReportError, build_report, effect_by_epoch, load_runs  # noqa: E402

COLUMNS = ("comparison", "profile", "budget", "seeds per arm", "difference [95% CI]", "verdict", "last epoch", "held")


def report_json(study: str, tracking_uri: str | None, profile: str) -> dict:
    """``ablate report STUDY --profile PROFILE --format json`` as a dict (with ``by_epoch``).

    Raises:
        ReportError: no finished runs of ``study`` at ``profile`` in the store.
    """
    rep = build_report(load_runs(study, tracking_uri, profile))
    rep.by_epoch = effect_by_epoch(rep)
    return to_json(rep)


def short_verdict(verdict: str) -> str:
    """A verdict without the budget and seeds it names (those are columns): the part before ``;``, and
    ``inconclusive at this budget (profile quick, 3 seeds per arm)`` as ``inconclusive``."""
    return re.sub(r" at (this budget|\d+ seeds per arm) \([^)]*\)", "", verdict.split(";")[0]).strip()


def _interval(est, lo, hi) -> str:
    return "n/a" if est is None else f"{est:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def _budget(report: dict) -> str:
    """What the runs trained at: the claims' ``measured_budget`` text, else from the profile's settings."""
    for claim in report["claims"]:
        if claim.get("measured_budget"):
            return claim["measured_budget"]["text"].removeprefix(f"profile {report['profile']} ").strip("()")
    values = report.get("budget") or {}
    epochs, subset = values.get("train.epochs"), values.get("data.train_subset")
    images = f"{subset:,} images" if subset else "all training images"
    return f"{epochs} epochs, {images}" if epochs is not None else images


def _last_epoch(report: dict, kind: str, comparison: str) -> str:
    """The per-epoch metric's difference after the last epoch with every seed, for one comparison."""
    by_epoch = report.get("by_epoch") or {}
    rows = [r for r in by_epoch.get("rows", []) if r["kind"] == kind and r["comparison"] == comparison]
    if not rows:
        return "n/a"
    last = max(rows, key=lambda r: r["epoch"])
    shown = _interval(last["estimate"], last["ci_low"], last["ci_high"])
    return f"{by_epoch['metric']} after epoch {last['epoch']}: {shown}"


def transfer_rows(reports: dict[str, dict]) -> list[dict[str, str]]:
    """One row per comparison and claim at each profile, in the order of ``reports`` (the first is the reference).

    Args:
        reports: ``{profile: report JSON}`` (:func:`report_json`), the quick budget first.

    Returns:
        Rows with the keys of ``COLUMNS``. ``held`` is empty for the first profile; for the others it is
        ``held`` when the verdict equals the first profile's, else ``changed (was VERDICT)``.
    """
    first: dict[str, str] = {}
    rows = []
    for i, (profile, rep) in enumerate(reports.items()):
        items = [(f"{e['effect']} vs {e['vs']}", "arm", e["effect"], e) for e in rep["effects"] if e["kind"] == "arm"]
        for n, c in enumerate(rep["claims"], 1):
            if c.get("metric", rep["metric"]) == rep["metric"]:
                label = f"claim {n}: {c['treatment']} vs {c['control']}"  # as by_epoch names it
                items.append((label, "claim", label, c))
        for label, kind, key, rec in items:
            verdict = short_verdict(rec["verdict"])
            held = ""
            if i == 0:
                first[label] = verdict
            elif label in first:
                held = "held" if verdict == first[label] else f"changed (was {first[label]})"
            rows.append(
                {
                    "comparison": label,
                    "profile": profile,
                    "budget": _budget(rep),
                    "seeds per arm": str(rec["n"]),
                    "difference [95% CI]": _interval(rec["estimate"], rec["ci_low"], rec["ci_high"]),
                    "verdict": verdict,
                    "last epoch": _last_epoch(rep, kind, key),
                    "held": held,
                }
            )
    order = {label: n for n, label in enumerate(dict.fromkeys(r["comparison"] for r in rows))}
    return sorted(rows, key=lambda r: order[r["comparison"]])  # each comparison's budgets together


def markdown(rows: list[dict[str, str]]) -> str:
    """The rows as a Markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "| " + " | ".join("---" for _ in COLUMNS) + " |"]
    lines += ["| " + " | ".join(r[c] for c in COLUMNS) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study")
    ap.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db")
    ap.add_argument("--profiles", default="quick,medium", help="comma-separated, the reference first")
    args = ap.parse_args()
    try:
        reports = {p: report_json(args.study, args.tracking_uri, p) for p in args.profiles.split(",")}
    except ReportError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(markdown(transfer_rows(reports)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
