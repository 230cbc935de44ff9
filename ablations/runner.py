"""Run a study: train every pending cell, one Optuna trial and one MLflow child run each.

Order of events for a cell: the Optuna trial is taken from the queue, an
MLflow child run is created (the two name each other), ``core.train.fit``
trains with per-epoch metrics logged, then test metrics and artifacts are
logged and only then the trial is told COMPLETE. So a COMPLETE trial always
has a complete MLflow run; anything interrupted is trained again next time.
"""

from __future__ import annotations

import json
import sys
import traceback
from dataclasses import dataclass, field

from optuna.trial import TrialState
from tqdm import tqdm

from ablations.factors import level_label
from ablations.plots import learning_curves
from ablations.search import Heartbeat, next_trial, open_study, pending_cells
from ablations.study import Cell, Study
from ablations.tracking import TAG, Tracker, git_commit
from core.config import DataConfig, RunConfig, config_hash, flatten
from core.data import Splits, load_splits
from core.train import Callback, DivergedError, FitResult, fit

__all__ = ["RunSummary", "run_study"]


@dataclass
class RunSummary:
    """What one ``ablate run`` did."""

    trained: list[str] = field(default_factory=list)  # cell keys finished now
    failed: dict[str, str] = field(default_factory=dict)  # cell key -> reason
    skipped: int = 0  # cells already complete before this run
    values: dict[str, float] = field(default_factory=dict)  # cell key -> study metric
    running_elsewhere: list[str] = field(default_factory=list)  # cells another (or a just-killed) worker holds
    parent_run_id: str = ""


class _MlflowEpochs(Callback):
    def __init__(self, tracker: Tracker, run_id: str) -> None:
        self.tracker, self.run_id = tracker, run_id

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics(self.run_id, metrics, step=epoch)


class _Progress(Callback):
    """One tqdm bar per run: epoch, batch, loss, images per second, ETA, last validation accuracy."""

    def __init__(self, label: str) -> None:
        self.label, self.bar, self.val = label, None, ""

    def on_fit_start(self, cfg: RunConfig, steps_per_epoch: int) -> None:
        self.epochs, self.steps = cfg.train.epochs, steps_per_epoch
        total = steps_per_epoch * cfg.train.batch_size * cfg.train.epochs
        self.bar = tqdm(
            total=total,
            unit="img",
            unit_scale=True,
            leave=False,
            desc=self.label,
            dynamic_ncols=True,
            disable=None,
            mininterval=1.0,
        )

    def on_batch_end(self, epoch: int, step: int, images: int, loss) -> None:
        self.bar.update(images)
        # Only when tqdm has just redrawn (about once a second): loss.item() waits for the device.
        if not self.bar.disable and self.bar.n == self.bar.last_print_n:
            self.bar.set_postfix_str(
                f"epoch {epoch}/{self.epochs} batch {step + 1}/{self.steps} loss {loss.item():.3f}{self.val}",
                refresh=False,
            )

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.val = f" val_acc {100 * metrics['val_acc']:.1f}%"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _splits_for(cfg: DataConfig, cache: dict) -> Splits:
    key = cfg.model_dump_json()
    if key not in cache:
        cache[key] = load_splits(cfg)
    return cache[key]


def _log_result(tracker: Tracker, run_id: str, cell: Cell, result: FitResult) -> None:
    tracker.log_metrics(
        run_id,
        {**result.test, "best_epoch": result.best_epoch, "fit_seconds": result.seconds},
        step=len(result.history),
    )
    tracker.log_config(run_id, result.config.model_dump(mode="json"))
    tracker.log_figure(run_id, learning_curves(result.history, cell.key), "learning_curves.png")
    tracker.log_state_dict(run_id, result.state_dict)


def run_study(
    study: Study, tracking_uri: str | None = None, storage: str | None = None, progress: bool = True
) -> RunSummary:
    """Train every cell of ``study`` that has not finished; log each to MLflow.

    Args:
        study: a validated study (see ``ablations.study.load_study``).
        tracking_uri: MLflow tracking URI (default: ``sqlite:///mlruns/mlflow.db``).
        storage: Optuna storage URL (default: ``sqlite:///mlruns/optuna.db``).
        progress: show tqdm bars (on a terminal only).

    Returns:
        A :class:`RunSummary`.

    Raises:
        core.data.DataError: the data set cannot be loaded (before anything is logged).
        KeyboardInterrupt: after marking the current run KILLED and its trial FAILED.
    """
    summary = RunSummary()
    data_cache: dict = {}
    _splits_for(study.config.data, data_cache)  # fail on missing data before anything is logged
    tracker = Tracker(tracking_uri)

    def mark_stale(trial) -> None:  # its worker died (SIGKILL, power loss): close its MLflow run too
        if "mlflow_run_id" in trial.user_attrs:
            tracker.end(trial.user_attrs["mlflow_run_id"], "FAILED", "worker stopped: no heartbeat")

    ostudy, storage_obj = open_study(study, storage, on_stale=mark_stale)
    todo, summary.skipped = pending_cells(study, ostudy)
    exp_id = tracker.experiment(study.name)
    tags = {
        f"{TAG}study": study.name,
        f"{TAG}profile": study.profile,
        f"{TAG}git_commit": git_commit(),
        f"{TAG}config_hash": config_hash(study.config),
        "optuna.study": study.key,
        "mlflow.note.content": study.question,
    }
    parent = tracker.parent_run(exp_id, study.key, f"{study.name} ({study.profile})", tags)
    summary.parent_run_id = parent
    # Tags, not params: adding levels or seeds later keeps the parent run but changes these.
    level_labels = {f: [level_label(v) for v in spec] for f, spec in study.factors.items()}
    for key, value in {
        "factors": json.dumps(level_labels),
        "seeds": json.dumps(study.seeds),
        "metric": study.metric.name,
        "direction": study.metric.direction,
    }.items():
        tracker.client.set_tag(parent, f"{TAG}{key}", value)
    tracker.log_config(
        parent,
        {
            "study": study.name,
            "question": study.question,
            "profile": study.profile,
            "overrides": study.overrides,
            "factors": study.factors,
            "seeds": study.seeds,
            "metric": study.metric.model_dump(),
            "alpha": study.alpha,
            "baseline": study.baseline,
            "claims": [c.model_dump() for c in study.claims],
        },
    )
    by_key = {c.key: c for c in study.cells()}
    total = len(by_key)
    bar = tqdm(
        total=total,
        initial=summary.skipped,
        unit="cell",
        desc=study.name,
        disable=None if progress else True,
        dynamic_ncols=True,
        position=0,
    )
    status = "FINISHED"
    try:
        while (trial := next_trial(ostudy)) is not None:
            cell = by_key.get(trial.user_attrs["cell"])
            if cell is None:  # a queued cell from an older version of the file
                ostudy.tell(trial, state=TrialState.FAIL)
                continue
            _run_cell(
                study,
                cell,
                trial,
                ostudy,
                storage_obj,
                tracker,
                exp_id,
                parent,
                tags,
                data_cache,
                summary,
                progress,
                f"[{bar.n + 1}/{total}] {cell.key}",
            )
            bar.update(1)
            if cell.key in summary.values:
                value = summary.values[cell.key]
                shown = f"{100 * value:.2f}%" if study.metric.name.endswith(("acc", "top3")) else f"{value:.4f}"
                tqdm.write(f"[{bar.n}/{total}] {cell.key}: {study.metric.name} {shown}")
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        bar.close()
        summary.running_elsewhere = [
            t.user_attrs.get("cell", "?") for t in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        ]
        if status != "KILLED" and summary.failed:
            status = "FAILED"
        tracker.end(parent, status)
    return summary


def _run_cell(
    study, cell, trial, ostudy, storage_obj, tracker, exp_id, parent, tags, data_cache, summary, progress, label
) -> None:
    cfg = study.cell_config(cell)
    params = {**flatten(cfg), **{f"factor.{k}": level_label(v) for k, v in cell.levels.items()}}
    run_id = tracker.start_cell(
        exp_id,
        parent,
        cell.key,
        params,
        {
            **tags,
            f"{TAG}cell": cell.key,
            f"{TAG}arm": cell.arm,
            f"{TAG}seed": str(cell.seed),
            f"{TAG}config_hash": config_hash(cfg),
            "optuna.trial_number": str(trial.number),
        },
    )
    trial.set_user_attr("mlflow_run_id", run_id)
    bar = _Progress(label) if progress else None
    callbacks = [_MlflowEpochs(tracker, run_id)] + ([bar] if bar else [])
    try:
        with Heartbeat(storage_obj, trial._trial_id):  # Optuna's storage API needs the trial id
            result = fit(cfg, _splits_for(cfg.data, data_cache), callbacks)
            _log_result(tracker, run_id, cell, result)
    except DivergedError as exc:
        reason = f"{cell.key}: {exc}"
        tracker.end(run_id, "FAILED", reason)
        trial.set_user_attr("failure", reason)
        ostudy.tell(trial, state=TrialState.FAIL)
        summary.failed[cell.key] = str(exc)
        tqdm.write(f"run '{cell.key}' failed: {exc}; the study goes on", file=sys.stderr)
        return
    except KeyboardInterrupt:
        tracker.end(run_id, "KILLED", "interrupted (Ctrl-C)")
        ostudy.tell(trial, state=TrialState.FAIL)
        raise
    except BaseException:
        tracker.end(run_id, "FAILED", traceback.format_exc())
        ostudy.tell(trial, state=TrialState.FAIL)
        raise
    finally:
        if bar:
            bar.close()
    tracker.end(run_id)
    metric = study.metric.name
    value = result.test[metric] if metric.startswith("test") else result.history[result.best_epoch - 1][metric]
    ostudy.tell(trial, value)
    summary.trained.append(cell.key)
    summary.values[cell.key] = value
