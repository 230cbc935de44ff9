"""MLflow tracking: one experiment per study, one parent run per study key, one child run per cell.

Default store: ``sqlite:///mlruns/mlflow.db`` with artifacts under
``mlruns/artifacts/`` (MLflow 3 deprecates the plain file store). Override
with ``--tracking-uri`` or ``MLFLOW_TRACKING_URI``; with a tracking server
(``http://...``) the server decides where artifacts go.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CODE_TAG",
    "DEFAULT_TRACKING_URI",
    "EXPERIMENT_KIND_TAG",
    "MODEL_TRAINING",
    "PRECISION_TAG",
    "StoreNotFoundError",
    "Tracker",
    "git_commit",
    "resolve_tracking_uri",
]

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
TAG = "ablate."  # prefix of this project's tags
# On a parent run and each cell's run of a study with imports: the code files (logged as code/<name>) and their
# SHA-256, in import order, as JSON [{"name": "models.py", "sha256": "..."}]; ablate evaluate/predict import them.
CODE_TAG = f"{TAG}code"
PRECISION_TAG = f"{TAG}precision"  # on a cell's run: the precision it trained in (bf16, fp32, fp16; never auto)
# MLflow 3's UI opens an experiment in its GenAI mode (traces) unless this experiment tag says
# "machine learning" (the value its UI's experiment-kind selector writes for model training).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


class StoreNotFoundError(LookupError):
    """A command that only reads runs was pointed at an SQLite store that does not exist."""


def resolve_tracking_uri(uri: str | None, create: bool = True) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else the project default.

    Args:
        uri: an MLflow tracking URI or ``None``.
        create: create the folder of an SQLite store; when ``False`` the database file must exist.

    Raises:
        StoreNotFoundError: ``create`` is ``False`` and the SQLite database file is missing.
    """
    uri = absolute_sqlite(uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI, mkdir=create)
    if not create and uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise StoreNotFoundError(
            f"no MLflow store at {uri.removeprefix('sqlite:///')}: run ablate in the folder where `ablate run` "
            "made mlruns/, or pass --tracking-uri (or set MLFLOW_TRACKING_URI)"
        )
    return uri


def absolute_sqlite(url: str, mkdir: bool = True) -> str:
    """Make a relative ``sqlite:///path`` absolute (from the working directory) and create its folder.

    Absolute, because MLflow and SQLAlchemy cache stores by URL: a relative one
    would keep pointing at the first working directory's database.
    """
    if not url.startswith("sqlite:///"):
        return url
    path = Path(url.removeprefix("sqlite:///")).expanduser().resolve()
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def code_tag(code) -> str:
    """The value of :data:`CODE_TAG` for ``code`` (``CodeFile`` objects): their names and SHA-256, in order."""
    return json.dumps([{"name": c.name, "sha256": c.sha256} for c in code])


def git_commit() -> str:
    """The current git commit of the working directory, or ``unknown``."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Tracker:
    """Thin wrapper over :class:`mlflow.MlflowClient` for studies.

    Args:
        tracking_uri: see :func:`resolve_tracking_uri`.
        create: ``False`` for commands that only read runs: an SQLite store must exist already
            (nothing is created in the working directory).

    Raises:
        StoreNotFoundError: ``create`` is ``False`` and the SQLite store is missing.
    """

    def __init__(self, tracking_uri: str | None = None, create: bool = True) -> None:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # keep the terminal for ours
        from mlflow import MlflowClient  # slow import: only when tracking

        # MLflow and alembic log at INFO when they create tables; keep the terminal for progress.
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.uri = resolve_tracking_uri(tracking_uri, create)
        self.client = MlflowClient(self.uri)

    def _artifact_root(self, study: str) -> str | None:
        if self.uri.startswith("sqlite:///"):
            db = Path(self.uri.removeprefix("sqlite:///")).resolve()
            return (db.parent / "artifacts" / study).as_uri()
        return None

    def experiment(self, study: str, create: bool = True) -> str | None:
        """The experiment id of ``study``; created when missing and ``create``.

        A created experiment is tagged as a model-training experiment (:data:`EXPERIMENT_KIND_TAG`),
        so that MLflow's UI shows its runs rather than an empty GenAI traces page.
        """
        exp = self.client.get_experiment_by_name(study)
        if exp is not None:
            return exp.experiment_id
        if not create:
            return None
        return self.client.create_experiment(
            study, artifact_location=self._artifact_root(study), tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING}
        )

    def mark_model_training(self, exp_id: str) -> None:
        """Tag an experiment made before ablate tagged them as a model-training one (no change if it is)."""
        if self.client.get_experiment(exp_id).tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING:
            self.client.set_experiment_tag(exp_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)

    def find_parent(self, exp_id: str, study_key: str) -> str | None:
        """The run id of the parent run of ``study_key``, or ``None``."""
        found = self.client.search_runs(
            [exp_id], f"tags.`{TAG}study_key` = '{study_key}' and tags.`{TAG}role` = 'parent'", max_results=1
        )
        return found[0].info.run_id if found else None

    def create_parent(self, exp_id: str, study_key: str, name: str, tags: dict[str, str]) -> str:
        """Create the parent run of ``study_key`` (see :meth:`find_parent` first)."""
        run = self.client.create_run(
            exp_id, run_name=name, tags={**tags, f"{TAG}role": "parent", f"{TAG}study_key": study_key}
        )
        return run.info.run_id

    def start_cell(self, exp_id: str, parent_id: str, name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        """Create a child run named ``name`` with ``params`` (dotted keys) and ``tags``."""
        from mlflow.entities import Param

        run = self.client.create_run(
            exp_id, run_name=name, tags={**tags, "mlflow.parentRunId": parent_id, f"{TAG}role": "cell"}
        )
        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
            self.client.log_batch(run.info.run_id, params=items[i : i + 100])
        return run.info.run_id

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int) -> None:
        """Log ``metrics`` at ``step`` (the epoch); non-finite values are skipped."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v == v and abs(v) != float("inf")]
        if items:
            self.client.log_batch(run_id, metrics=items)

    def log_config(self, run_id: str, config: dict[str, Any]) -> None:
        """Save the resolved config as ``config.yaml``."""
        self.client.log_text(run_id, yaml.safe_dump(config, sort_keys=False), "config.yaml")

    def log_code(self, run_id: str, code) -> None:
        """Save each code file a study imports as the artifact ``code/<name>``, as it ran.

        Args:
            run_id: the run.
            code: ``core.models.plugins.CodeFile`` objects (``name``, ``text``).
        """
        for c in code:
            self.client.log_text(run_id, c.text, f"code/{c.name}")

    def log_figure(self, run_id: str, fig, name: str) -> None:
        """Save a matplotlib figure as a PNG artifact."""
        self.client.log_figure(run_id, fig, name)

    def log_state_dict(self, run_id: str, state_dict: dict, name: str = "checkpoint/best.pt") -> None:
        """Save weights only (``torch.save`` of a state dict) as an artifact."""
        import torch

        folder, _, file = name.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / file
            torch.save(state_dict, local)
            self.client.log_artifact(run_id, str(local), folder or None)

    def end(self, run_id: str, status: str = "FINISHED", reason: str | None = None) -> None:
        """End a run as ``FINISHED``, ``FAILED`` or ``KILLED``, recording ``reason`` as a tag."""
        if reason:
            self.client.set_tag(run_id, f"{TAG}failure", reason[:5000])
        self.client.set_terminated(run_id, status)

    def children(self, parent_id: str, status: str | None = "FINISHED") -> list:
        """Child runs of a parent run, optionally only those with ``status``."""
        flt = f"tags.`mlflow.parentRunId` = '{parent_id}'"
        if status:
            flt += f" and attributes.status = '{status}'"
        runs, token = [], None
        while True:
            page = self.client.search_runs(
                [self.client.get_run(parent_id).info.experiment_id], flt, max_results=1000, page_token=token
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def parents(self, study: str) -> list:
        """Parent runs of ``study``, newest first (empty if the experiment is missing)."""
        exp_id = self.experiment(study, create=False)
        if exp_id is None:
            return []
        return list(
            self.client.search_runs([exp_id], f"tags.`{TAG}role` = 'parent'", order_by=["attributes.start_time DESC"])
        )
