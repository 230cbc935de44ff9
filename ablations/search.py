"""Optuna: each study is an Optuna study whose trials are the grid cells.

The cells (factor levels x seeds) are enqueued as trials with fixed params,
so a worker takes the next one with ``study.ask()``. Running the same study
again enqueues only cells without a COMPLETE trial: failed, interrupted and
stale ones (a worker whose heartbeat stopped) are trained again; a finished
study trains nothing.

Default storage: ``sqlite:///mlruns/optuna.db`` (``--storage URL`` to override,
e.g. ``postgresql://...`` for many machines).
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from ablations.factors import level_label
from ablations.study import Cell, Study
from ablations.tracking import absolute_sqlite

__all__ = ["DEFAULT_STORAGE", "Heartbeat", "open_study", "pending_cells", "resolve_storage"]

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"
HEARTBEAT_S = 10  # a running trial writes a heartbeat this often
GRACE_S = 60  # a trial whose heartbeat is older than this is stale (its worker died)

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats and stale-trial failing are marked experimental, and Optuna warns that
# heartbeats are meant for Study.optimize; this module drives them with ask/tell on purpose.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
logging.getLogger("alembic").setLevel(logging.WARNING)


def resolve_storage(url: str | None) -> str:
    """``url``, else ``$ABLATE_OPTUNA_STORAGE``, else the project default (directory created)."""
    return absolute_sqlite(url or os.environ.get("ABLATE_OPTUNA_STORAGE") or DEFAULT_STORAGE)


def open_study(
    study: Study, storage: str | None = None, on_stale: Callable[[FrozenTrial], None] | None = None
) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    """Create or load the Optuna study for ``study.key``, failing stale trials first.

    Args:
        study: the validated study.
        storage: Optuna storage URL (see :func:`resolve_storage`).
        on_stale: called with each trial found stale (its worker stopped beating
            for ``GRACE_S`` seconds, e.g. killed with SIGKILL) after Optuna marks it FAILED.

    Returns:
        The Optuna study and its storage (for :class:`Heartbeat`).
    """
    rdb = optuna.storages.RDBStorage(
        resolve_storage(storage),
        heartbeat_interval=HEARTBEAT_S,
        grace_period=GRACE_S,
        heartbeat_stale_trial_callback=(lambda _study, trial: on_stale(trial)) if on_stale else None,
    )
    ostudy = optuna.create_study(
        storage=rdb, study_name=study.key, direction=study.metric.direction, load_if_exists=True
    )
    ostudy.set_metric_names([study.metric.name])
    optuna.storages.fail_stale_trials(ostudy)
    return ostudy, rdb


def _params(cell: Cell) -> dict:
    # Level labels, not values: Optuna params must be scalars, and a level may be a list.
    return {**{k: level_label(v) for k, v in cell.levels.items()}, "seed": cell.seed}


def pending_cells(study: Study, ostudy: optuna.Study) -> tuple[list[Cell], int]:
    """Enqueue every cell that has no COMPLETE, WAITING or RUNNING trial.

    Returns:
        (cells still to train, i.e. waiting in the queue, number already complete).
    """
    trials = ostudy.get_trials(deepcopy=False)
    complete = {t.user_attrs.get("cell") for t in trials if t.state == TrialState.COMPLETE}
    queued = {t.user_attrs.get("cell") for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)}
    todo = []
    for cell in study.cells():
        if cell.key in complete:
            continue
        if cell.key not in queued:
            ostudy.enqueue_trial(_params(cell), user_attrs={"cell": cell.key})
        todo.append(cell)
    return todo, len(complete & {c.key for c in study.cells()})


def next_trial(ostudy: optuna.Study) -> optuna.Trial | None:
    """Pop the next enqueued cell's trial, or ``None`` when the queue is empty."""
    if not ostudy.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return None
    trial = ostudy.ask()
    if "cell" not in trial.user_attrs:  # another worker emptied the queue in between
        ostudy.tell(trial, state=TrialState.FAIL)
        return None
    return trial


class Heartbeat:
    """Context manager: record the trial's heartbeat in a background thread.

    A worker killed with SIGKILL stops beating; after ``GRACE_S`` seconds
    ``optuna.storages.fail_stale_trials`` (called by :func:`open_study`) marks
    its trial FAILED so the cell is trained again.
    """

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int) -> None:
        self._storage = storage
        self._trial_id = trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.is_set():
            self._storage.record_heartbeat(self._trial_id)
            self._stop.wait(HEARTBEAT_S)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
