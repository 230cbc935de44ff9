"""What ``ablate ui`` shows: a study's runs in MLflow's model-training view, one group per arm.

The first page a user sees is the study's child runs, grouped by arm (the arm's
mean of the study metric on its group row), with a column per factor level, the
study metric and the seed; the parent run carries the report (its description,
``report/`` artifacts and figures).

What this relies on in MLflow 3 (read in its UI's sources, 3.17):

- The runs page of an experiment is ``#/experiments/<id>/runs``. The UI has two
  modes, "GenAI" (the default, a traces overview) and "Model training"; the query
  parameter ``workflowType=machine_learning`` picks the second. The experiment tag
  ``mlflow.experimentKind`` (:data:`ablations.tracking.EXPERIMENT_KIND_TAG`) set to
  ``custom_model_development`` ("Machine learning" in its kind selector) marks a
  model-training experiment.
- ``viewStateShareKey=<id>`` opens the saved view stored in the experiment tag
  ``mlflow.sharedViewState.<id>``: a JSON envelope ``{"name", "createdAt",
  "state"}`` whose ``state`` is the JSON of the runs page's search facets
  (``searchFilter``, ``orderByKey``, ``orderByAsc``) and table state
  (``selectedColumns``, ``groupBy``, ``groupsExpanded``, ``columnWidths``,
  ``runsHiddenMode``, ...). It is listed under "Views" too. A shared view may not
  expand runs (the UI drops ``runsExpanded`` from it), so the child runs are not
  shown under their collapsed parent but grouped by the tag ``ablate.arm``, each
  group expanded; the parent run lands in "Additional runs".
- The view is not applied when the URL also carries search facets, so the URL
  has only ``workflowType``, ``viewStateShareKey`` and ``compareRunsMode=TABLE``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ablations.tracking import TAG, Tracker

__all__ = [
    "VIEW_TAG_PREFIX",
    "StudyView",
    "UIError",
    "prepare_view",
    "publish_report",
    "run_url",
    "studies",
    "study_url",
    "view_state",
]

VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # experiment tag of a saved (shared) runs-page view
NOTE_TAG = "mlflow.note.content"  # a run's description, rendered as Markdown by the UI
_NOTE_MAX = 7500  # MLflow keeps at most 8,000 characters in a tag


class UIError(LookupError):
    """No such study, or no parent run of it, in the tracking store."""


@dataclass(frozen=True)
class StudyView:
    """A study's saved view in MLflow.

    Attributes:
        study: the study (experiment) name.
        experiment_id: its MLflow experiment.
        view_id: the saved view's id (``viewStateShareKey``).
        name: the view's name in the UI's "Views" menu.
        parent_run_id: the parent run the view shows (the newest of the profile).
        profile: that parent run's profile.
    """

    study: str
    experiment_id: str
    view_id: str
    name: str
    parent_run_id: str
    profile: str


def studies(tracker: Tracker) -> list[str]:
    """Names of the experiments in the store that hold an ablate study (a parent run)."""
    out = []
    for exp in tracker.client.search_experiments(max_results=1000):
        if tracker.client.search_runs([exp.experiment_id], f"tags.`{TAG}role` = 'parent'", max_results=1):
            out.append(exp.name)
    return out


def _arms(factors: dict[str, list[str]]) -> list[str]:
    """Arm names in the runner's form (``batchnorm=false dropout=fc``), in file order."""
    combos = itertools.product(*factors.values())
    return [" ".join(f"{f}={lv}" for f, lv in zip(factors, combo, strict=True)) for combo in combos]


def view_state(parent_tags: dict[str, str]) -> dict:
    """The runs-page state of a study's view, from its parent run's tags.

    Child runs of the study key only (``tags.optuna.study``), best first by the
    study metric, grouped by the arm tag with every group expanded (the group row
    shows the arm's mean; a search shows its best trial per arm instead), and the
    columns: the study metric (a search: ``trial_value``, the metric the trial was
    judged by), one per factor (``params.factor.<name>``), the searched keys of a
    search, and the seed.
    """
    maximize = parent_tags.get(f"{TAG}direction", "maximize") == "maximize"
    factors = json.loads(parent_tags.get(f"{TAG}factors") or "{}")
    search = parent_tags.get(f"{TAG}search") == "true"
    # a trial's value is the metric at its best epoch (metric trial_value); the metric itself shows the last
    metric = "trial_value" if search else parent_tags.get(f"{TAG}metric", "test_acc")
    key = parent_tags.get(f"{TAG}search_key") if search else parent_tags.get(f"{TAG}study_key")
    key = key or parent_tags.get("optuna.study", "")
    columns = [f"metrics.`{metric}`"]  # first: in view however narrow the window
    columns += [f"params.`factor.{f}`" for f in factors]
    if search:
        columns += [f"params.`{k}`" for k in json.loads(parent_tags.get(f"{TAG}space") or "[]")]
    columns.append(f"tags.`{TAG}seed`")
    if search and not factors:  # one search, one group: its trials, the best value on the group row
        group_tag, groups = "optuna.study", [key]
    else:
        group_tag, groups = f"{TAG}arm", _arms(factors)
    aggregate = ("max" if maximize else "min") if search else "average"
    name_width = min(480, max(220, 8 * max((len(g) for g in groups), default=0) + 140))  # "Group: <arm> (n)"
    quoted = key.replace("'", "\\'")
    return {
        # a search's arms are Optuna studies '<key>:<arm>'; a grid study's cells carry '<key>' itself
        "searchFilter": f"tags.`optuna.study` LIKE '{quoted}%'" if search else f"tags.`optuna.study` = '{quoted}'",
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": not maximize,
        "selectedColumns": columns,
        "groupBy": {"aggregateFunction": aggregate, "groupByKeys": [{"mode": "tag", "groupByData": group_tag}]},
        "groupsExpanded": {f"tag.{group_tag}.{g or 'null'}": True for g in groups},
        "runsHiddenMode": "SHOW_ALL",  # charts: every arm, not the first 10 rows
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        # widths apply to the columns named in columnOrder only (the UI's own order: name, created, duration, ...)
        "columnOrder": ["attributes.`Run Name`", "runDateAndNestInfo", "duration", *columns],
        "columnWidths": {"attributes.`Run Name`": name_width, **{c: max(100, 8 * len(c) - 40) for c in columns}},
    }


def prepare_view(tracker: Tracker, study: str, profile: str | None = None) -> StudyView:
    """Mark ``study``'s experiment as model training and save its view (see :func:`view_state`).

    The view shows the newest parent run of ``profile`` (default: the newest of
    all); running it again replaces the view of that study key.

    Raises:
        UIError: the store has no such study, or none of that profile.
    """
    parents = [p for p in tracker.parents(study) if profile is None or p.data.tags.get(f"{TAG}profile") == profile]
    if not parents:
        known = ", ".join(studies(tracker)) or "none"
        which = f"no runs of profile '{profile}' of study '{study}'" if profile else f"no study '{study}'"
        raise UIError(f"{which} in {tracker.uri} (studies there: {known})")
    parent = parents[0]
    tags = parent.data.tags
    exp_id = parent.info.experiment_id
    tracker.mark_model_training(exp_id)
    key = tags.get(f"{TAG}search_key") or tags.get(f"{TAG}study_key") or parent.info.run_id
    view_id = "ablate-" + hashlib.sha1(key.encode()).hexdigest()[:12]
    prof = tags.get(f"{TAG}profile", "")
    name = f"ablate: {study} ({prof}) by arm" if prof else f"ablate: {study} by arm"
    envelope = {"name": name, "createdAt": int(time.time() * 1000), "state": json.dumps(view_state(tags))}
    tracker.client.set_experiment_tag(exp_id, VIEW_TAG_PREFIX + view_id, json.dumps(envelope))
    return StudyView(study, exp_id, view_id, name, parent.info.run_id, prof)


def study_url(base: str, view: StudyView) -> str:
    """The address of ``view`` in the MLflow UI at ``base`` (``http://127.0.0.1:5000``)."""
    query = f"workflowType=machine_learning&viewStateShareKey={quote(view.view_id)}&compareRunsMode=TABLE"
    return f"{base.rstrip('/')}/#/experiments/{view.experiment_id}/runs?{query}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    """The address of one run's page (the parent run's report), in the model-training view."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def publish_report(study: str, tracking_uri: str | None, profile: str | None = None, report=None) -> str | None:
    """Put the report of ``study`` on its parent run, for the UI: a per-arm summary beside the runs.

    The parent run's description (``mlflow.note.content``) becomes the study's
    question followed by the Markdown report (arms with mean and 95% CI, effects,
    verdicts, claims); artifacts ``report/report.md``, ``report/arms.json`` (a
    table) and the figures (``report/effects.png``, ``report/learning_curves.png``,
    ``report/per_class.png``).

    Args:
        study: the study's name.
        tracking_uri: the MLflow store (``None``: the default).
        profile: the profile whose parent run gets the report (``None``: the newest).
        report: an :class:`ablations.report.Report` already built for it (``ablate run`` has
            one); ``None``: built here from the runs in MLflow.

    Returns:
        The parent run's id, or ``None`` when there is nothing to report yet (no
        finished runs) or the study is a hyperparameter search (its parent runs
        have their best trial and plots already).
    """
    from ablations.rendering import render, write_plots
    from ablations.report import ReportError, build_report, load_runs
    from ablations.search_report import load_search

    if report is None:
        try:
            if load_search(study, tracking_uri, profile) is not None:
                return None
            report = build_report(load_runs(study, tracking_uri, profile))
        except ReportError:  # no finished runs yet
            return None
    parent = report.runs.parent_run_id
    tracker = Tracker(tracking_uri)
    markdown = render(report, "markdown")
    note = "\n\n".join(x for x in (_parent_question(tracker, parent), markdown) if x)
    if len(note) > _NOTE_MAX:
        note = note[:_NOTE_MAX] + "\n\n... (the whole report: artifact report/report.md)"
    tracker.client.set_tag(parent, NOTE_TAG, note)
    tracker.client.log_text(parent, markdown, "report/report.md")
    tracker.client.log_table(parent, report.arms, "report/arms.json")
    with tempfile.TemporaryDirectory() as tmp:
        write_plots(report, Path(tmp))  # logs them to the parent run under report/
    return parent


def _parent_question(tracker: Tracker, run_id: str) -> str:
    """The study's question from the parent run's ``config.yaml``, or ``""``."""
    import yaml

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = tracker.client.download_artifacts(run_id, "config.yaml", tmp)
            return str((yaml.safe_load(Path(path).read_text()) or {}).get("question") or "")
        except Exception:  # noqa: BLE001 (an old parent run without config.yaml: no question, still a report)
            return ""
