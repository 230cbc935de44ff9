"""Optuna: each study is an Optuna study whose trials are the grid cells.

The cells (factor levels x seeds) are enqueued as trials with fixed params,
so a worker takes the next one with ``study.ask()``. Running the same study
again enqueues only cells without a COMPLETE trial: failed, interrupted and
stale ones (a worker whose process on this host is gone, or whose heartbeat
stopped) are trained again; a finished study trains nothing. Storage calls
retry while the database is unreachable (``STORAGE_RETRY_S``).

Default storage: ``sqlite:///mlruns/optuna.db`` (``--storage URL`` to override,
e.g. ``postgresql://...`` for many machines).
"""

from __future__ import annotations

import copy
import logging
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from ablations.factors import level_label
from ablations.study import Cell, Study
from ablations.tracking import absolute_sqlite

__all__ = [
    "DEFAULT_STORAGE",
    "Heartbeat",
    "fail_stale_trials",
    "open_study",
    "CellGrid",
    "cell_space",
    "pending_cells",
    "rdb_storage",
    "record_params",
    "resolve_storage",
    "stale_reason",
    "this_worker",
    "worker_gone",
]

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
            worker stopped beating for ``GRACE_S`` seconds, or its process on this host is gone,
            e.g. killed with SIGKILL) after it is marked FAILED (see :func:`fail_stale_trials`).
    """
    url = resolve_storage(storage)
    sqlite = url.startswith("sqlite")
    rdb = _RetryingStorage(
        url,
        # several worker processes share one SQLite file: wait for its lock rather than fail at once
        # (isolation_level None: transactions begin where serialize_sqlite says, not where pysqlite guesses);
        # a server's pooled connections die when it restarts: test each before use
        engine_kwargs={"connect_args": {"timeout": 60, "isolation_level": None}} if sqlite else {"pool_pre_ping": True},
        heartbeat_interval=HEARTBEAT_S,
        grace_period=GRACE_S,
        heartbeat_stale_trial_callback=on_stale,
    )
    if sqlite:
        serialize_sqlite(rdb.engine)
    return rdb


def serialize_sqlite(engine) -> None:
    """Make every transaction on a SQLite ``engine`` take the database's write lock when it begins.

    Optuna claims a queued trial (``Study.ask``) and fails a stale one by reading its state and then
    writing it, in one transaction, with ``SELECT ... FOR UPDATE``. SQLite has no row locks, and Python's
    sqlite3 module begins a transaction only at the first write, so two workers could both read
    ``WAITING`` and both take the same trial: two processes trained one cell and the second one's
    ``tell`` failed with "Cannot tell a COMPLETE trial". ``BEGIN IMMEDIATE`` makes the read and the
    write one atomic step (SQLAlchemy's recipe for serializable SQLite, "Serializable isolation /
    Savepoints / Transactional DDL" in its pysqlite dialect documentation). Workers wait for each
    other's short transactions, up to the connection's ``timeout``.

    Args:
        engine: the ``sqlalchemy.engine.Engine`` of an ``optuna.storages.RDBStorage`` on a
            ``sqlite://`` URL, created with ``connect_args={"isolation_level": None}``.
    """
    from sqlalchemy import event

    @event.listens_for(engine, "begin")
    def _begin_immediate(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


# How long a storage call retries while the database is unreachable (a PostgreSQL restart, a network
# blip, a SQLite lock held long) before the error reaches the caller.
STORAGE_RETRY_S = float(os.environ.get("ABLATE_STORAGE_RETRY", "180"))


def _transient(exc: BaseException) -> bool:
    """A lost connection or a locked database (worth retrying), not bad data."""
    import sqlalchemy.exc as sa

    cause = exc.__cause__ if isinstance(exc, optuna.exceptions.StorageInternalError) else exc
    # PendingRollbackError: the session still holds the transaction the lost connection broke
    return isinstance(cause, (sa.OperationalError, sa.InterfaceError, sa.PendingRollbackError)) or (
        isinstance(cause, sa.DBAPIError) and cause.connection_invalidated
    )


def _retrying(method):
    def call(self, *args, **kwargs):
        import sqlalchemy.exc as sa

        deadline, said = None, False
        while True:
            try:
                result = method(self, *args, **kwargs)
            except (optuna.exceptions.StorageInternalError, sa.DBAPIError, sa.PendingRollbackError) as exc:
                if not _transient(exc):
                    raise
                try:
                    self.remove_session()  # a fresh session (and connection) for the next try
                except Exception:  # noqa: BLE001 - best effort on a broken connection
                    pass
                now = time.monotonic()
                deadline = deadline or now + STORAGE_RETRY_S
                if now > deadline:
                    raise
                if not said:
                    cause = str(exc.__cause__ or exc).strip().splitlines()[0][:200]
                    print(
                        f"Optuna storage unreachable ({cause}); retrying for up to {STORAGE_RETRY_S:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )
                    said = True
                time.sleep(1)
                continue
            if said:
                print("Optuna storage reachable again", file=sys.stderr, flush=True)
            return result

    call.__name__, call.__doc__ = method.__name__, method.__doc__
    return call


_PRIVATE_CALLS = ("_get_stale_trial_ids", "_get_trials", "_create_new_trial", "_set_trial_param", "_get_best_trial_id")


class _RetryingStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose calls wait for the database to come back (up to ``STORAGE_RETRY_S``)."""


for _name in [
    m
    for m in dir(optuna.storages.RDBStorage)
    # the private ones are what Optuna's cached storage (the one a Study uses) calls
    if (not m.startswith("_") or m in _PRIVATE_CALLS)
    and callable(getattr(optuna.storages.RDBStorage, m))
    and m not in ("get_heartbeat_interval", "get_heartbeat_stale_trial_callback", "get_failed_trial_callback")
    and m not in ("upgrade", "remove_session", "get_current_version", "get_head_version", "get_all_versions")
]:
    setattr(_RetryingStorage, _name, _retrying(getattr(optuna.storages.RDBStorage, _name)))


def open_study(
    study: Study, storage: str | None = None, on_stale: Callable[[optuna.Study, FrozenTrial], None] | None = None
) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    """Create or load the Optuna study for ``study.key``, failing stale trials first.

    Args:
        study: the validated study.
        storage: Optuna storage URL (see :func:`resolve_storage`).
        on_stale: see :func:`rdb_storage`; it may run before this function returns.

    Returns:
        The Optuna study and its storage (for :class:`Heartbeat`). Its sampler is a ``GridSampler`` on
        :func:`cell_space`: the cells are enqueued, so it never picks one, but it names the grid.
    """
    rdb = rdb_storage(storage, on_stale)
    ostudy = optuna.create_study(
        storage=rdb,
        study_name=study.key,
        direction=study.metric.direction,
        load_if_exists=True,
        sampler=CellGrid(cell_space(study)),
    )
    ostudy.set_metric_names([study.metric.name])
    fail_stale_trials(ostudy)
    return ostudy, rdb


def fail_stale_trials(ostudy: optuna.Study) -> None:
    """Mark the RUNNING trials whose worker is gone FAILED and call the storage's ``on_stale`` for each.

    A trial's worker is gone when its heartbeat is older than ``GRACE_S`` seconds (any host), or at
    once when it ran on this host and its process no longer exists (:func:`worker_gone`). When
    several processes look at the same time, the storage lets exactly one of them fail each trial,
    and only that one calls ``on_stale``, so a cell is queued again once.
    """
    optuna.storages.fail_stale_trials(ostudy)  # heartbeat older than the grace period
    storage = ostudy._storage  # Optuna's own fail_stale_trials reads it the same way
    failed = []
    for trial in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if worker_gone(trial.user_attrs) is None:
            continue
        try:
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                failed.append(trial._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:  # another process failed (or finished) it first
            pass
    on_stale = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    if on_stale is not None:
        for trial_id in failed:
            on_stale(ostudy, copy.deepcopy(storage.get_trial(trial_id)))


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of process ``pid`` from /proc, or ``None``."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name in (...) may hold spaces
    return fields[0], fields[19]  # fields 3 and 22 of proc(5)


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def this_worker() -> dict[str, str | int]:
    """Who runs a trial, as trial user attributes: this host and process.

    ``worker`` (host:pid, for people), ``worker_host``, ``worker_pid``, ``worker_start`` (the
    process's start time from /proc, so a PID reused later is told apart), ``worker_boot`` (the
    kernel's boot id), ``worker_machine`` (/etc/machine-id) and ``worker_pidns`` (PID namespace):
    :func:`worker_gone` compares them with the process that looks.
    """
    host, pid = socket.gethostname(), os.getpid()
    stat = _proc_stat(pid)
    return {
        "worker": f"{host}:{pid}",
        "worker_host": host,
        "worker_pid": pid,
        "worker_start": stat[1] if stat else "",
        "worker_boot": _read("/proc/sys/kernel/random/boot_id"),
        "worker_machine": _read("/etc/machine-id"),
        "worker_pidns": _pid_namespace(),
    }


def worker_gone(attrs: dict) -> str | None:
    """Why the worker recorded in trial user attributes ``attrs`` is certainly gone, else ``None``.

    Only a worker on this host can be known gone: same host name, boot id and PID namespace, and
    its PID no longer runs, is a zombie, or is now another process (a different start time). The
    same host name and machine id with another boot id means this host rebooted since. Anything
    else (another host, no record) is left to the heartbeat's grace period.
    """
    me = this_worker()
    if "worker_pid" not in attrs or attrs.get("worker_host") != me["worker_host"]:
        return None
    host, pid = attrs["worker_host"], int(attrs["worker_pid"])
    if attrs.get("worker_boot") != me["worker_boot"]:
        if me["worker_machine"] and attrs.get("worker_machine") == me["worker_machine"]:
            return f"{host} rebooted since process {pid} ran"
        return None
    if attrs.get("worker_pidns") != me["worker_pidns"]:  # another container with the same host name
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"process {pid} on {host} is gone"
    except PermissionError:  # it exists, under another user
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return None if not os.path.isdir("/proc/self") else f"process {pid} on {host} is gone"
    if stat[0] in ("Z", "X"):
        return f"process {pid} on {host} is gone (exited, not yet reaped)"
    if attrs.get("worker_start") and stat[1] != attrs["worker_start"]:
        return f"process {pid} on {host} is gone (the PID now belongs to another process)"
    return None


def stale_reason(trial: FrozenTrial) -> str:
    """The reason logged for a trial :func:`fail_stale_trials` failed (tag ``ablate.failure``)."""
    gone = worker_gone(trial.user_attrs)
    return f"worker stopped: {gone}" if gone else f"worker stopped: no heartbeat for {GRACE_S} s"


def cell_params(cell: Cell) -> dict:
    """The Optuna params of a cell's trial: level labels and the seed."""
    # Level labels, not values: Optuna params must be scalars, and a level may be a list.
    return {**{k: level_label(v) for k, v in cell.levels.items()}, "seed": cell.seed}


class CellGrid(optuna.samplers.GridSampler):
    """Optuna's ``GridSampler`` on a study's cells (:func:`cell_space`), which never stops a study.

    The cells are enqueued trials with fixed params, so the grid names the space (what
    ``optuna-dashboard`` and ``study.sampler`` show) without choosing cells. ``GridSampler`` calls
    ``Study.stop`` once every grid point was asked for outside the queue, which outside
    ``Study.optimize`` raises (its documentation's note on ask-and-tell): here the runner, not the
    sampler, decides when a study is done, so that call is left out.
    """

    def after_trial(self, study, trial, state, values) -> None:  # noqa: D102 - see the class
        return None


def cell_space(study: Study) -> dict[str, list]:
    """The grid of a study's cells as Optuna sees it: each factor's level labels, and ``seed``: every seed
    the study may train (a sequential study: up to its cap), in order.

    Returns:
        ``{factor: [label, ...], "seed": [int, ...]}``, the search space of ``optuna.samplers.GridSampler``
        and the choices of each trial's categorical params (:func:`record_params`).
    """
    space: dict[str, list] = {f: [level_label(v) for v in levels] for f, levels in study.factors.items()}
    space["seed"] = list(study.looks()[-1])
    return space


def record_params(ostudy: optuna.Study, trial: optuna.Trial, cell: Cell, space: dict[str, list]) -> list[str]:
    """Record a cell's factor levels and seed as its trial's params (categorical distributions).

    Enqueued params (:func:`pending_cells`) become a trial's params only once suggested: each is
    suggested here with ``Trial.suggest_categorical(name, choices)``, which returns the enqueued value,
    so that Optuna's API and ``optuna-dashboard`` (parameter importance, slice, parallel coordinates)
    see the study by its factors. Optuna keeps one distribution per param name in a study, and a
    categorical one cannot change its choices: a param already recorded with choices holding the value
    keeps them; a level or seed added to a study after trials recorded theirs (choices that no longer
    match) is left off the trial and named in its user attribute ``params_left_out``.

    Args:
        ostudy: the Optuna study.
        trial: the cell's trial (taken with :func:`next_trial`).
        cell: the cell.
        space: :func:`cell_space` of the study.

    Returns:
        The names of the params left off (empty when every one was recorded).
    """
    from optuna.distributions import CategoricalDistribution

    values = cell_params(cell)
    recorded: dict[str, CategoricalDistribution] = {}
    for t in ostudy.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            recorded.setdefault(name, dist)
        if len(recorded) >= len(values):
            break
    left = []
    for name, value in values.items():
        earlier = recorded.get(name)
        if isinstance(earlier, CategoricalDistribution) and value in earlier.choices:
            choices = list(earlier.choices)
        else:
            choices = list(space.get(name, [value]))
        try:
            trial.suggest_categorical(name, choices)
        except ValueError:  # the study recorded this param with other choices before
            left.append(name)
    if left:
        trial.set_user_attr(
            "params_left_out",
            f"{', '.join(left)}: the study recorded them with other choices before (levels or seeds were added)",
        )
    return left


def pending_cells(study: Study, ostudy: optuna.Study) -> tuple[list[Cell], int]:
    """Enqueue every cell that has no COMPLETE, WAITING or RUNNING trial, nor one whose training diverged.

    Returns:
        (cells still to train, i.e. waiting in the queue, number already complete).
    """
    trials = ostudy.get_trials(deepcopy=False)
    # A cell whose training diverged has its outcome (ablations.runner._diverged): it would diverge again.
    complete = {
        t.user_attrs.get("cell")
        for t in trials
        if t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and t.user_attrs.get("outcome") == "diverged")
    }
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
    while True:
        trial = ostudy.ask()
        if "cell" not in trial.user_attrs:  # another worker emptied the queue in between
            ostudy.tell(trial, state=TrialState.FAIL)
            return None
        if not _duplicate(ostudy, trial):
            claim(ostudy, trial)
            return trial
        # Two `ablate run` that started at once both queued the cell: the copy with the lowest number wins.
        trial.set_user_attr("outcome", "duplicate")
        ostudy.tell(trial, state=TrialState.FAIL)
        if not ostudy.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            return None


def _duplicate(ostudy: optuna.Study, trial: optuna.Trial) -> bool:
    """Another trial of the same cell is COMPLETE, or queued or running with a lower number."""
    cell = trial.user_attrs["cell"]
    for other in ostudy.get_trials(deepcopy=False):
        if other.number == trial.number or other.user_attrs.get("cell") != cell:
            continue
        if other.state == TrialState.COMPLETE:
            return True
        if other.state in (TrialState.RUNNING, TrialState.WAITING) and other.number < trial.number:
            return True
    return False


def claim(ostudy: optuna.Study, trial: optuna.Trial) -> None:
    """Mark ``trial`` as this process's at once: a first heartbeat, then :func:`this_worker`'s attributes.

    Optuna never finds a RUNNING trial without a heartbeat stale, so the heartbeat comes first.
    """
    storage = ostudy._storage
    if hasattr(storage, "record_heartbeat") and getattr(storage, "heartbeat_interval", None):
        storage.record_heartbeat(trial._trial_id)
    for key, value in this_worker().items():
        trial.set_user_attr(key, value)


class Heartbeat:
    """Context manager: record the trial's heartbeat in a background thread.

    A worker killed with SIGKILL stops beating; after ``GRACE_S`` seconds (at once on
    its own host, see :func:`worker_gone`) :func:`fail_stale_trials` (called by
    :func:`open_study`) marks its trial FAILED so the cell is trained again.
    """

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int) -> None:
        self._storage = storage
        self._trial_id = trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception as exc:  # the database is away: beat again next time, never stop beating
                print(f"heartbeat not recorded ({str(exc).splitlines()[0][:200]}); retrying", file=sys.stderr)
            self._stop.wait(HEARTBEAT_S)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
