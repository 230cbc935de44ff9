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

__all__ = ["DEFAULT_STORAGE", "Heartbeat", "open_study", "pending_cells", "rdb_storage", "resolve_storage"]

DEFAULT_STORAGE = "sqlite:///mlruns/optuna.db"
# A trial whose heartbeat is older than GRACE_S seconds is stale: its worker died. Long enough for
# a busy machine to miss a few beats; $ABLATE_HEARTBEAT_GRACE shortens it (tests) or lengthens it.
GRACE_S = int(os.environ.get("ABLATE_HEARTBEAT_GRACE", "60"))
HEARTBEAT_S = max(1, min(10, GRACE_S // 4))  # a running trial writes a heartbeat this often

optuna.logging.set_verbosity(optuna.logging.WARNING)
# Heartbeats and stale-trial failing are marked experimental, and Optuna warns that
# heartbeats are meant for Study.optimize; this module drives them with ask/tell on purpose.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
logging.getLogger("alembic").setLevel(logging.WARNING)


def resolve_storage(url: str | None) -> str:
    """``url``, else ``$ABLATE_OPTUNA_STORAGE``, else the project default (directory created)."""
    return absolute_sqlite(url or os.environ.get("ABLATE_OPTUNA_STORAGE") or DEFAULT_STORAGE)


def rdb_storage(
    storage: str | None, on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None
) -> optuna.storages.RDBStorage:
    """The Optuna storage at ``storage`` (see :func:`resolve_storage`), with heartbeats on.

    Args:
        storage: Optuna storage URL, or ``None`` for the default.
        on_stale: called as ``on_stale(optuna_study, trial)`` with each trial found stale (its
            worker stopped beating for ``GRACE_S`` seconds, e.g. killed with SIGKILL) after
            Optuna marks it FAILED.
    """
    url = resolve_storage(storage)
    return optuna.storages.RDBStorage(
        url,
        # several worker processes share one SQLite file: wait for its lock rather than fail at once
        engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None,
        heartbeat_interval=HEARTBEAT_S,
        grace_period=GRACE_S,
        heartbeat_stale_trial_callback=on_stale,
    )


def open_study(
    study: Study, storage: str | None = None, on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None
) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    """Create or load the Optuna study for ``study.key``, failing stale trials first.

    Args:
        study: the validated study.
        storage: Optuna storage URL (see :func:`resolve_storage`).
        on_stale: see :func:`rdb_storage`; it may run before this function returns.

    Returns:
        The Optuna study and its storage (for :class:`Heartbeat`).
    """
    rdb = rdb_storage(storage, on_stale)
    ostudy = optuna.create_study(
        storage=rdb, study_name=study.key, direction=study.metric.direction, load_if_exists=True
    )
    ostudy.set_metric_names([study.metric.name])
    fail_stale_trials(ostudy)
    return ostudy, rdb


def fail_stale_trials(ostudy: optuna.Study) -> None:
    """Mark trials whose worker stopped beating FAILED (and call the study's ``on_stale`` for each)."""
    optuna.storages.fail_stale_trials(ostudy)


def cell_params(cell: Cell) -> dict:
    """The Optuna params of a cell's trial: level labels and the seed."""
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
            ostudy.enqueue_trial(cell_params(cell), user_attrs={"cell": cell.key})
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
