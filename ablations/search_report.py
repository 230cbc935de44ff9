"""The report of a hyperparameter search: its trials sorted by value, the counts and the best config.

``ablate report STUDY`` on a study with a ``search:`` block reads it with
:func:`load_search` (from MLflow alone, like :mod:`ablations.report`) and
prints :func:`render_search`; the same formats as an ordinary report.
"""

from __future__ import annotations

import json
import math
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from ablations.rendering import FORMATS, WIDTH, _clean, _f
from ablations.report import _BUDGET_KEYS, _parent_config, _reader, _scale
from ablations.tracking import TAG

__all__ = ["SearchArmRuns", "SearchRuns", "load_search", "render_search", "search_plots", "write_search"]


# ablate.trial_state of a trial's run -> the report's state; runs without it: by MLflow status
_TRIAL_STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "INTERRUPTED": "interrupted"}
_STATE_ORDER = ("complete", "pruned", "failed", "running", "interrupted", "error", "lost")


@dataclass
class SearchArmRuns:
    """The trials of one search (the study's, or one arm's), as read from MLflow.

    Attributes:
        arm: the arm's levels, ``""`` without factors.
        parent_run_id: the search's parent run.
        n_trials: the cap the search ran with (``None`` if unknown).
        trials: one row per trial run: ``number``, ``state`` (complete, pruned, failed,
            running, interrupted, error, lost), ``value`` (the study metric, complete
            trials only), ``run_id``, ``note`` (why it was pruned or failed), ``test_acc``
            and one column per sampled key; sorted best first, then by state.
    """

    arm: str
    parent_run_id: str
    n_trials: int | None
    trials: pd.DataFrame

    def count(self, state: str) -> int:
        """Number of trials in ``state``."""
        return int((self.trials["state"] == state).sum()) if not self.trials.empty else 0

    @property
    def best(self) -> dict | None:
        """The best complete trial's row (``number``, ``value``, the sampled keys), or ``None``."""
        done = self.trials[self.trials["state"] == "complete"] if not self.trials.empty else self.trials
        return None if done.empty else done.iloc[0].to_dict()


@dataclass
class SearchRuns:
    """A hyperparameter search (one per arm with factors) read from MLflow: see :func:`load_search`."""

    study: str
    profile: str
    metric: str
    direction: str
    seed: str
    space: list[str]
    arms: list[SearchArmRuns]
    budget: dict[str, object] = field(default_factory=dict)
    tracking_uri: str | None = None
    search: dict = field(default_factory=dict)  # the search block as logged (space, sampler, pruner, ...)

    @property
    def scale(self) -> float:
        """100 for accuracies (shown in percent), else 1."""
        return _scale(self.metric)


def load_search(study: str, tracking_uri: str | None = None, profile: str | None = None) -> SearchRuns | None:
    """Read the newest hyperparameter search of ``study`` (optionally of one profile) from MLflow.

    Args:
        study: the study's name (its MLflow experiment).
        tracking_uri: MLflow tracking URI.
        profile: read this profile's search instead of the newest.

    Returns:
        The :class:`SearchRuns` (every arm's parent run and trial runs), or ``None`` when the
        study's newest parent run is not a search (an ordinary study, or none at all).

    Raises:
        ReportError: there is no MLflow store at ``tracking_uri``.
    """
    tracker = _reader(tracking_uri)
    parents = [p for p in tracker.parents(study) if profile is None or p.data.tags.get(f"{TAG}profile") == profile]
    if not parents or parents[0].data.tags.get(f"{TAG}search") != "true":
        return None
    key = parents[0].data.tags[f"{TAG}search_key"]
    found = [p for p in parents if p.data.tags.get(f"{TAG}search_key") == key]
    found.sort(key=lambda p: int(p.data.tags.get(f"{TAG}arm_index", "0")))
    tags = found[0].data.tags
    direction = tags.get(f"{TAG}direction", "maximize")
    space = json.loads(tags.get(f"{TAG}space", "[]"))
    arms = []
    for parent in found:
        rows = [_trial_row(run, space) for run in tracker.children(parent.info.run_id, status=None)]
        n = parent.data.tags.get(f"{TAG}n_trials")
        arms.append(
            SearchArmRuns(
                parent.data.tags.get(f"{TAG}arm", ""),
                parent.info.run_id,
                int(n) if n else None,
                _sort_trials(pd.DataFrame(rows, columns=[*_TRIAL_COLUMNS, *space]), direction),
            )
        )
    config = _parent_config(tracker, found[0].info.run_id)
    overrides = config.get("overrides") or {}
    return SearchRuns(
        study,
        tags.get(f"{TAG}profile", "?"),
        tags.get(f"{TAG}metric", "?"),
        direction,
        tags.get(f"{TAG}seed", "?"),
        space,
        arms,
        budget={k: overrides[k] for k in _BUDGET_KEYS if k in overrides},
        tracking_uri=tracker.uri,
        search=config.get("search") or {},
    )


_TRIAL_COLUMNS = ["number", "state", "value", "test_acc", "run_id", "note"]


def _trial_row(run, space: list[str]) -> dict:
    tags, status = run.data.tags, run.info.status
    state = _TRIAL_STATES.get(tags.get(f"{TAG}trial_state", ""))
    if state is None:  # no outcome written: still running, or its worker died (or an error)
        state = {"RUNNING": "running", "FINISHED": "complete"}.get(status, "lost")
        if tags.get(f"{TAG}trial_state") == "ERROR":
            state = "error"
    note = tags.get(f"{TAG}failure", "")
    note = note.strip().splitlines()[-1] if note.strip() else ""
    note = note.removeprefix(f"trial {tags.get('optuna.trial_number', '')}: ")
    params = json.loads(tags.get(f"{TAG}search_params", "{}"))
    metrics = run.data.metrics
    return {
        "number": int(tags.get("optuna.trial_number", -1)),
        "state": state,
        "value": metrics.get("trial_value") if state == "complete" else None,
        "test_acc": metrics.get("test_acc") if state == "complete" else None,
        "run_id": run.info.run_id,
        "note": note,
        **{k: params.get(k) for k in space},
    }


def _sort_trials(df: pd.DataFrame, direction: str) -> pd.DataFrame:
    """Complete trials best first, then pruned, failed, ... each by trial number."""
    if df.empty:
        return df
    rank = df["state"].map({s: i for i, s in enumerate(_STATE_ORDER)})
    value = pd.to_numeric(df["value"], errors="coerce")
    key = -value if direction == "maximize" else value
    out = df.assign(_rank=rank, _key=key.fillna(0.0)).sort_values(["_rank", "_key", "number"], kind="stable")
    return out.drop(columns=["_rank", "_key"]).reset_index(drop=True)


def _fmt_param(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _search_tables(sr: SearchRuns) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """(arms overview, one display table of trials per arm), values as strings."""
    unit = " (%)" if sr.scale == 100.0 else ""
    overview = pd.DataFrame(
        {
            "arm": [a.arm for a in sr.arms],
            "complete": [a.count("complete") for a in sr.arms],
            "pruned": [a.count("pruned") for a in sr.arms],
            "failed": [a.count("failed") for a in sr.arms],
            f"best {sr.metric}{unit}": [_f(a.best["value"] * sr.scale) if a.best else "-" for a in sr.arms],
            "best trial": [str(int(a.best["number"])) if a.best else "-" for a in sr.arms],
        }
    )
    tables = []
    for a in sr.arms:
        t = a.trials
        tables.append(
            pd.DataFrame(
                {
                    "trial": t["number"].astype(int).astype(str),
                    "state": t["state"],
                    f"{sr.metric}{unit}": [_f(v * sr.scale) if v == v and v is not None else "-" for v in t["value"]],
                    **{k: [_fmt_param(v) for v in t[k]] for k in sr.space},
                    "note": [textwrap.shorten(n, 60) if n else "" for n in t["note"]],
                }
            )
        )
    return overview, tables


def _search_head(sr: SearchRuns) -> list[str]:
    better = "higher" if sr.direction == "maximize" else "lower"
    unit = " in %" if sr.scale == 100.0 else ""
    budget = f" ({', '.join(f'{k}={v}' for k, v in sr.budget.items())})" if sr.budget else ""
    lines = [
        f"search {sr.study}: {sr.metric}{unit}, {better} is better; every trial trains with train.seed {sr.seed}",
        f"budget: profile {sr.profile}{budget}",
    ]
    sampler, pruner = sr.search.get("sampler") or {}, sr.search.get("pruner") or {}
    if sampler or pruner:
        seed = f" (seed {sampler['seed']})" if sampler.get("seed") is not None else ""
        lines.append(f"sampler {sampler.get('name', '?')}{seed}, pruner {pruner.get('name', '?')}")
    return lines


def _counts(a: SearchArmRuns) -> str:
    cap = f" of {a.n_trials}" if a.n_trials else ""
    done = a.count("complete") + a.count("pruned") + a.count("failed")
    text = (
        f"{done}{cap} finished: {a.count('complete')} complete, {a.count('pruned')} pruned, {a.count('failed')} failed"
    )
    other = {s: a.count(s) for s in ("running", "interrupted", "error", "lost") if a.count(s)}
    if other:
        text += f" ({', '.join(f'{n} {s}' for s, n in other.items())}: not counted)"
    return text


def _best_yaml(sr: SearchRuns, a: SearchArmRuns, indent: int = 2) -> str:
    best = a.best
    if best is None:
        return " " * indent + "# no complete trial yet\n"
    params = {k: best[k] for k in sr.space if best.get(k) is not None}
    body = yaml.safe_dump(params, sort_keys=False, default_flow_style=False)
    return "".join(" " * indent + line + "\n" for line in body.splitlines())


_SEARCH_NOTE = (
    "best of the trials on one seed: an optimistic estimate. Paste the best config under a study's base: and "
    "re-run it with seeds (an ordinary study) to measure it with an interval{arms}."
)


def render_search(sr: SearchRuns, fmt: str = "table") -> str:
    """The search report as text: per arm, the trials sorted by value with their sampled values,
    the counts of complete / pruned / failed trials and the best config (YAML for a study's ``base``).

    Args:
        sr: the search.
        fmt: ``table``, ``csv`` (one row per trial, unrounded), ``markdown``, ``latex``, ``html`` or ``json``.

    Raises:
        ValueError: unknown ``fmt``.
    """
    overview, tables = _search_tables(sr)
    note = _SEARCH_NOTE.format(arms=", and to compare the tuned arms" if len(sr.arms) > 1 else "")
    if fmt == "csv":
        return _search_raw(sr).to_csv(index=False)
    if fmt == "json":
        return json.dumps(_search_json(sr), indent=2, allow_nan=False) + "\n"
    if fmt in ("latex", "html"):
        import html

        parts = []
        for a, t in zip(sr.arms, tables, strict=True):
            title = f"{sr.study}: trials" + (f" of {a.arm}" if a.arm else "")
            if fmt == "latex":
                parts.append(t.to_latex(index=False, escape=True, caption=f"{title}; {_counts(a)}"))
            else:
                parts += [f"<h2>{html.escape(title)}</h2>", f"<p>{_counts(a)}</p>", t.to_html(index=False)]
        if fmt == "latex":
            return "\n".join(["% " + line for line in _search_head(sr)] + parts)
        head = "".join(f"<p>{html.escape(line)}</p>" for line in _search_head(sr))
        title = f"<h1>{html.escape(sr.study)}</h1>"
        return f"<!DOCTYPE html>\n<html><body>\n{title}{head}\n" + "\n".join(parts) + "\n</body></html>\n"
    if fmt not in ("table", "markdown"):
        raise ValueError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    md = fmt == "markdown"
    if md:
        out = ["  \n".join(_search_head(sr))]
    else:
        out = [textwrap.fill(line, WIDTH, subsequent_indent="  ") for line in _search_head(sr)]
    if len(sr.arms) > 1:
        out += ["", "### Arms" if md else "arms", _table(overview, md)]
    for a, t in zip(sr.arms, tables, strict=True):
        title = "trials" + (f" of {a.arm}" if a.arm else "") + f" ({_counts(a)})"
        out += ["", f"### {title}" if md else title, _table(t, md)]
        best = a.best
        label = f"best config (trial {int(best['number'])}), for a study's base:" if best else "best config:"
        out += ["", label, ("```yaml\n" if md else "") + _best_yaml(sr, a, 0 if md else 2) + ("```" if md else "")]
    out += ["", note if md else textwrap.fill(note, WIDTH)]
    return "\n".join(line.rstrip("\n") for line in out) + "\n"


def _table(df: pd.DataFrame, md: bool) -> str:
    if md:
        return df.to_markdown(index=False, disable_numparse=True)
    from tabulate import tabulate

    return tabulate(df.to_dict("list"), headers="keys", tablefmt="simple", disable_numparse=True)


def _search_raw(sr: SearchRuns) -> pd.DataFrame:
    frames = [a.trials.assign(arm=a.arm) for a in sr.arms]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return df.reindex(columns=["arm", *_TRIAL_COLUMNS, *sr.space])


def _search_json(sr: SearchRuns) -> dict:
    return _clean(
        {
            "study": sr.study,
            "profile": sr.profile,
            "metric": sr.metric,
            "direction": sr.direction,
            "seed": sr.seed,
            "space": sr.space,
            "budget": sr.budget,
            "search": sr.search,
            "tracking_uri": sr.tracking_uri,
            "arms": [
                {
                    "arm": a.arm,
                    "parent_run_id": a.parent_run_id,
                    "n_trials": a.n_trials,
                    "counts": {s: a.count(s) for s in _STATE_ORDER},
                    "best": a.best,
                    "trials": a.trials.to_dict("records"),
                }
                for a in sr.arms
            ],
        }
    )


def write_search(sr: SearchRuns, fmt: str, path: Path) -> list[Path]:
    """Write :func:`render_search` to ``path`` (its folder created); returns the files written.

    Raises:
        OSError: the file cannot be written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_search(sr, fmt))
    return [path]


def search_plots(sr: SearchRuns, folder: Path) -> list[Path]:
    """Copy each search's Optuna plots (logged to its parent run) into ``folder``.

    With several arms the files are prefixed by the arm's index (``1_optimization_history.png``).
    """
    from mlflow.exceptions import MlflowException

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tracker = _reader(sr.tracking_uri)
    out = []
    for i, a in enumerate(sr.arms, 1):
        for name in ("optimization_history.png", "param_importances.png", "parallel_coordinate.png"):
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    local = Path(tracker.client.download_artifacts(a.parent_run_id, name, tmp))
                    target = folder / (f"{i}_{name}" if len(sr.arms) > 1 else name)
                    target.write_bytes(local.read_bytes())
            except (MlflowException, OSError):
                continue  # not drawn (too few trials)
            out.append(target)
    return out
