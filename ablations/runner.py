"""Run a study: train every pending cell, one Optuna trial and one MLflow child run each.

Order of events for a cell: the Optuna trial is taken from the queue, an
MLflow child run is created (the two name each other), ``core.train.fit_many``
trains with per-epoch metrics logged, then test metrics and artifacts are
logged and only then the trial is told COMPLETE. So a COMPLETE trial always
has a complete MLflow run; anything interrupted is trained again next time.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import TrialState
from tqdm import tqdm

from ablations.budget import GPU_BUDGET_S, Eta, estimate, format_seconds
from ablations.factors import level_label
from ablations.plots import learning_curves
from ablations.progress import EpochLines, epoch_lines_wanted
from ablations.search import (
    Heartbeat,
    cell_params,
    cell_space,
    fail_stale_trials,
    next_trial,
    open_study,
    pending_cells,
    record_params,
    stale_reason,
)
from ablations.study import Cell, Study
from ablations.tracking import CODE_TAG, PRECISION_TAG, TAG, Tracker, code_tag, git_commit
from core.config import DataConfig, RunConfig, config_hash, flatten
from core.data import Splits, load_splits
from core.train import Callback, DivergedError, FitResult, fit_many

__all__ = [
    "MlflowEpochs",
    "RunSummary",
    "PlanError",
    "RunnerError",
    "SequentialState",
    "join_study",
    "log_summary",
    "plan_record",
    "run_study",
    "run_workers",
    "sequential_state",
    "splits_for",
]


@dataclass
class RunSummary:
    """What one ``ablate run`` did."""

    trained: list[str] = field(default_factory=list)  # cell keys finished now
    failed: dict[str, str] = field(default_factory=dict)  # cell key -> reason
    skipped: int = 0  # cells already complete before this run
    values: dict[str, float] = field(default_factory=dict)  # cell key -> study metric
    running_elsewhere: list[str] = field(default_factory=list)  # cells another (or a just-killed) worker holds
    parent_run_id: str = ""
    looks: list[dict] = field(default_factory=list)  # a sequential study: its complete looks (see SequentialState)
    stopped: str | None = None  # a sequential study: decided, max_seeds or timeout


class MlflowEpochs(Callback):
    """Log each epoch's metrics (``train_loss``, ``val_acc``, ...) to MLflow run ``run_id`` at step = epoch."""

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
        if not self.bar.disable:  # drawn once per epoch, so a run shorter than tqdm's interval still shows it
            self.bar.set_postfix_str(f"epoch {epoch}/{self.epochs} done{self.val}", refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def splits_for(cfg: DataConfig, cache: dict) -> Splits:
    """The splits of ``cfg`` from ``cache`` (keyed by the data config), loaded on first use.

    Raises:
        core.data.DataError: the data set cannot be loaded.
    """
    key = cfg.model_dump_json()
    if key not in cache:
        cache[key] = load_splits(cfg)
    return cache[key]


def _log_result(tracker: Tracker, run_id: str, cell: Cell, result: FitResult) -> None:
    tracker.log_metrics(
        run_id,
        result.final_metrics(),
        step=len(result.history),
    )
    tracker.log_config(run_id, result.config.model_dump(mode="json"))
    tracker.log_figure(run_id, learning_curves(result.history, cell.key), "learning_curves.png")
    tracker.log_state_dict(run_id, result.state_dict)


class _SqliteLock:
    """An exclusive lock (``flock``) next to each SQLite store among ``tracking_uri`` and ``storage``.

    Held while a process creates the stores' schemas, the experiment and the parent run, so two
    processes that start the same study at once create one of each. Servers need none.
    """

    def __init__(self, tracking_uri: str | None, storage: str | None) -> None:
        import fcntl

        from ablations.search import resolve_storage
        from ablations.tracking import resolve_tracking_uri

        self.files = []
        paths = {u.removeprefix("sqlite:///") for u in (resolve_tracking_uri(tracking_uri), resolve_storage(storage))}
        for path in sorted(p for p in paths if not p.startswith(("sqlite", "http", "postgresql", "mysql")) and p):
            if "://" in path or not os.path.isdir(os.path.dirname(path) or "."):
                continue
            f = open(path + ".lock", "a")  # noqa: SIM115 - closed in release()
            fcntl.flock(f, fcntl.LOCK_EX)
            self.files.append(f)

    def release(self) -> None:
        for f in self.files:
            f.close()
        self.files = []


class _Session:
    """One process's handle on a study: its Optuna study, MLflow parent run and loaded data."""

    def __init__(self, study: Study, tracking_uri: str | None, storage: str | None, create: bool) -> None:
        self.study, self.data_cache, self.tried = study, {}, 0
        self.summarized = 0  # a sequential study: the looks whose answer is logged on the parent run
        self.eta: Eta | None = None  # set by run_study once the budget is estimated
        self.fuse_k: dict[str, int] = {}  # arm -> seeds trained as one fused model (core.fused)
        self.recorded_plan: dict = {}  # a sequential study's tag ablate.sequential_plan (_record_plan)
        # every cell this study may train (a sequential study: the seeds of its last look), and those of
        # the current look (what the progress bar counts)
        self.plan = study.looks()  # the seeds of each look (one look: the study's seeds)
        self.by_key = {c.key: c for c in study.with_seeds(self.plan[-1]).cells()}
        self.scope = {c.key for c in study.cells()}
        splits_for(study.config.data, self.data_cache)  # fail on missing data before anything is logged
        lock = _SqliteLock(tracking_uri, storage)  # two `ablate run` creating the same SQLite stores at once race
        self.tracker = Tracker(tracking_uri)
        self.ostudy, self.storage = open_study(study, storage, on_stale=self._stale)
        self.space = cell_space(study)  # the grid: each factor's levels and every seed up to the cap
        self.tags = {
            f"{TAG}study": study.name,
            f"{TAG}profile": study.profile,
            f"{TAG}git_commit": git_commit(),
            f"{TAG}config_hash": config_hash(study.config),
            "optuna.study": study.key,
            "mlflow.note.content": study.question,
        }
        if study.code:  # the code its models come from: part of the study key, logged with every run
            self.tags[CODE_TAG] = code_tag(study.code)
        self.exp_id = self.tracker.experiment(study.name, create=create)
        parent = self.tracker.find_parent(self.exp_id, study.key) if self.exp_id else None
        if parent is None and not create:
            changed = (
                f" (the code it imports is part of its key: {', '.join(c.spec for c in study.code)} must be what "
                "`ablate run` imported)"
                if study.code
                else ""
            )
            raise RunnerError(
                f"study '{study.key}' has no parent run in {self.tracker.uri}: start it with "
                f"`ablate run {study.path}` (same --profile, --set, --tracking-uri and --storage) first{changed}"
            )
        if create:
            fresh = parent is None
            try:
                parent = parent or self.tracker.create_parent(
                    self.exp_id, study.key, f"{study.name} ({study.profile})", self.tags
                )
                self._record_plan(parent, fresh)
            except PlanError:
                lock.release()
                raise
            self._describe(parent)
            if fresh and study.code:
                self.tracker.log_code(parent, study.code)
        self.parent = parent
        lock.release()  # the stores, the experiment and the one parent run exist now
        if create:
            self.close_orphans()

    def close_orphans(self) -> None:
        """End child runs left RUNNING whose trial is no longer running (FAILED, with the reason).

        A cell stopped while the tracking server was unreachable has its trial told FAIL but its run
        still RUNNING; the next ``ablate run`` ends it here, so no run stays RUNNING.
        """
        running = {str(t.number) for t in self.ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        for run in self.tracker.children(self.parent, status="RUNNING"):
            if run.data.tags.get("optuna.trial_number") not in running:
                self.tracker.end(run.info.run_id, "FAILED", "stopped while the tracking server was unreachable")

    def _record_plan(self, parent: str, fresh: bool) -> None:
        """Fix a sequential study's looks and analysis on its parent run (tag ``ablate.sequential_plan``), once.

        The planned intervals (``stats.LookPlan``) hold for looks chosen before the data, so the first
        sequential run of a study records its looks, its boundary and its analysis (alpha, metric,
        baseline, claims, margins: ``ablations.report.analysis_plan``), and later runs keep them: a run
        with a higher ``--max-seeds`` or another ``step`` judges the looks beyond the plan with the
        anytime-valid sequence alone, and a run whose study file changed the analysis is refused
        (:class:`PlanError`). A study with finished runs but no plan (fixed-seed runs, whose report has
        tested them) is refused too: a plan recorded now would take data already seen as its first look.
        A parent run that ran sequentially before plans were recorded (it has a sequential config
        already) gets no looks: its intervals stay the anytime-valid ones at the whole alpha.

        Raises:
            PlanError: the study file's analysis differs from the recorded one, or the study has runs
                from before its first sequential run.
        """
        from ablations.report import PLAN_TAG, _parent_config, plan_differences

        study = self.study
        if study.sequential is None:
            return
        tags = {} if fresh else self.tracker.client.get_run(parent).data.tags
        plan = plan_record(study)
        current = plan["analysis"]
        if PLAN_TAG in tags:
            self.recorded_plan = json.loads(tags[PLAN_TAG])
            changed = plan_differences(self.recorded_plan.get("analysis") or {}, current)
            if changed:
                raise PlanError(_plan_changed(study, parent, changed))
            return
        earlier = not fresh and (
            f"{TAG}sequential_stop" in tags or _parent_config(self.tracker, parent).get("sequential") is not None
        )
        if earlier:
            plan = {
                "looks": None,
                "why": "the study ran sequentially before its looks were planned",
                "analysis": current,
            }
        else:
            seen = [] if fresh else self.tracker.children(parent)
            if seen:
                raise PlanError(_plan_after_data(study, parent, seen))
        text = json.dumps(plan)
        if len(text) > 7900:  # MLflow's tag limit is 8,000 characters: the claims' words give way first
            for claim in current["claims"]:
                claim.pop("text", None)
                claim.pop("source", None)
            text = json.dumps(plan)
        self.tracker.client.set_tag(parent, PLAN_TAG, text)
        self.recorded_plan = plan

    def _describe(self, parent: str) -> None:
        """Record the study's current factors, seeds, metric and claims on its parent run."""
        study, tracker = self.study, self.tracker
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
                "claims": study.claim_records(),
                "sequential": None
                if study.sequential is None
                else {**study.sequential.model_dump(), "looks": study.looks()},
            },
        )

    def _stale(self, ostudy, trial) -> None:
        """A worker died (SIGKILL, OOM kill, power loss): close its MLflow run and queue its cell again.

        Optuna calls this once per stale trial, in the one process that marked it FAILED,
        so the cell is queued exactly once.
        """
        if "mlflow_run_id" in trial.user_attrs:
            self.tracker.end(trial.user_attrs["mlflow_run_id"], "FAILED", stale_reason(trial))
        cell = self.by_key.get(trial.user_attrs.get("cell"))
        if cell is not None:
            requeue(ostudy, cell)  # Optuna's study: this may run inside open_study, before self.ostudy exists

    def use_seeds(self, seeds: list[int]) -> None:
        """Work on the cells of these seeds (one look of a sequential study) from now on."""
        self.study = self.study.with_seeds(seeds)
        self.scope = {c.key for c in self.study.cells()}
        self.tracker.client.set_tag(self.parent, f"{TAG}seeds", json.dumps(list(seeds)))

    def complete_keys(self) -> set[str]:
        return {t.user_attrs.get("cell") for t in self.ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}

    def work(self, summary: RunSummary, progress: bool) -> None:
        """Train queued cells until the queue is empty."""
        study, total = self.study, len(self.scope)
        done = len(self.complete_keys() & self.scope)
        bar = tqdm(
            total=total,
            initial=done,
            unit="cell",
            desc=study.name,
            disable=None if progress else True,
            dynamic_ncols=True,
            position=0,
        )
        try:
            while True:
                fail_stale_trials(self.ostudy)  # a dead worker's cell goes back in the queue
                trial = next_trial(self.ostudy)
                if trial is None:
                    break
                cell = self.by_key.get(trial.user_attrs["cell"])
                if cell is None:  # a queued cell from an older version of the file
                    self.ostudy.tell(trial, state=TrialState.FAIL)
                    continue
                record_params(self.ostudy, trial, cell, self.space)  # the cell's levels and seed, for Optuna's plots
                place = len(self.complete_keys() & self.scope) + 1  # this cell is [place/total]
                t_cell = time.monotonic()
                group = [(cell, trial)]
                try:
                    group = self._fused_group(cell, trial)  # up to K queued seeds of this arm, or just this one
                    _run_group(self, group, summary, progress, place, total)
                except BaseException:  # e.g. the tracking server went away before the run existed
                    for _, t in group:
                        _fail_if_running(self.ostudy, t)
                    raise
                complete = self.complete_keys()
                bar.n = len(complete & self.scope)
                eta = ""
                if self.eta is not None:
                    for _ in group:  # a fused group: each seed took its share of the group's time
                        self.eta.finished((time.monotonic() - t_cell) / len(group))
                    left = self.eta.remaining([self.by_key[k] for k in self.scope - complete])
                    eta = f"; study ETA {format_seconds(left)}"
                    bar.set_postfix_str(f"study ETA {format_seconds(left)}", refresh=False)
                bar.refresh()
                for done_cell, _ in group:
                    if done_cell.key in summary.values:
                        value = summary.values[done_cell.key]
                        metric = study.metric.name
                        shown = f"{100 * value:.2f}%" if metric.endswith(("acc", "top3")) else f"{value:.4f}"
                        tqdm.write(f"[{bar.n}/{total}] {done_cell.key}: {metric} {shown}{eta}")
        finally:
            bar.close()

    def _fused_group(self, cell: Cell, trial) -> list[tuple[Cell, Any]]:
        """``cell`` and up to K - 1 more queued seeds of its arm, to train as one fused model.

        K is ``core.fused.fuse_group_size`` for the arm's config (``train.fuse_seeds``; 1 on the CPU
        with ``auto``), decided once per arm and said once when it fuses or falls back. Only the
        next queued trials are taken, and only while they are seeds of the same arm with the same
        config: cells queue seeds innermost, so those are the arm's other seeds.
        """
        from core.fused import fuse_group_size
        from core.train import resolve_config, select_device

        group = [(cell, trial)]
        cfg = self.study.cell_config(cell)
        if cell.arm not in self.fuse_k:
            k, why = fuse_group_size(resolve_config(cfg), 2**31, select_device(cfg.train.device))
            self.fuse_k[cell.arm] = k
            if cfg.train.fuse_seeds != "off" and (k > 1 or "one at a time:" in why):
                tqdm.write(f"{cell.arm or self.study.name}: {why}")
        same = {k: v for k, v in flatten(cfg).items() if k != "train.seed"}
        while len(group) < self.fuse_k[cell.arm]:
            waiting = sorted(
                self.ostudy.get_trials(deepcopy=False, states=(TrialState.WAITING,)), key=lambda t: t.number
            )
            nxt = self.by_key.get(waiting[0].user_attrs.get("cell")) if waiting else None
            if nxt is None or nxt.arm != cell.arm or nxt.key in {c.key for c, _ in group}:
                break
            t = next_trial(self.ostudy)
            if t is None:
                break
            other = self.by_key.get(t.user_attrs.get("cell"))
            fits = other is not None and other.arm == cell.arm and other.key not in {c.key for c, _ in group}
            if fits:
                fits = {k: v for k, v in flatten(self.study.cell_config(other)).items() if k != "train.seed"} == same
            if not fits:  # another worker took the peeked trial in between: put this one back
                t.set_user_attr("outcome", "returned to the queue")
                self.ostudy.tell(t, state=TrialState.FAIL)
                if other is not None:
                    requeue(self.ostudy, other)
                break
            record_params(self.ostudy, t, other, self.space)
            group.append((other, t))
        return group

    def running(self) -> list[str]:
        return [
            t.user_attrs.get("cell", "?") for t in self.ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        ]


class RunnerError(RuntimeError):
    """A worker cannot join: the study has not been started."""


def plan_record(study: Study) -> dict:
    """What a sequential study's first sequential run records on its parent run (tag ``ablate.sequential_plan``).

    ``looks``: the seeds per arm of each look ``study.looks()`` plans; ``reserve``: the share of alpha of
    the anytime-valid sequence (``ablations.stats.PLAN_RESERVE``); ``boundary``: ``sequential.boundary``;
    ``analysis``: :func:`ablations.report.analysis_plan` of the study. ``benchmarks/sequential_error.py``
    records its simulated studies' plans with it.

    Args:
        study: a sequential study.

    Returns:
        The plan, JSON-ready.
    """
    from ablations.report import analysis_plan
    from ablations.stats import PLAN_RESERVE

    seq = study.sequential
    return {
        "looks": [len(seeds) for seeds in study.looks()],
        "reserve": PLAN_RESERVE,
        "boundary": seq.boundary,
        "analysis": analysis_plan(
            study.alpha,
            study.metric.name,
            study.metric.direction,
            study.baseline,
            study.claim_records(),
            seq.model_dump(),
        ),
    }


class PlanError(RunnerError):
    """A sequential run refused: the study file's analysis differs from the plan its first sequential run
    recorded, or the study has runs from before its first sequential run. The message is one line that
    names the key, the recorded value and how to start a new study."""


def _new_study_hint(study: Study) -> str:
    nxt = max(study.seeds) + 100
    return (
        f"to change it, start a new study: give {study.path} a new name: and seeds not yet run "
        f"(e.g. seeds: [{nxt}, {nxt + 1}, {nxt + 2}]), so that its first look is data no report has seen"
    )


def _plan_changed(study: Study, parent: str, changed: list) -> str:
    """One line: which keys of the analysis differ from the recorded plan, their recorded values, what to do."""
    keys = "; ".join(
        f"{key} is {json.dumps(now)} in the study file, {json.dumps(was)} in the plan" for key, was, now in changed
    )
    return (
        f"study '{study.name}' (parent run {parent}): {keys}; the first sequential run recorded the analysis "
        "plan (tag ablate.sequential_plan) and a sequential study keeps it: put the value back, or "
        + _new_study_hint(study)
    )


def _plan_after_data(study: Study, parent: str, seen: list) -> str:
    """One line: the study has runs from before its first sequential run, so no plan can be recorded now."""
    seeds = sorted({int(r.data.tags.get(f"{TAG}seed", -1)) for r in seen})
    return (
        f"study '{study.name}' (parent run {parent}) already has {len(seen)} finished run(s) of seeds "
        f"{', '.join(map(str, seeds))} from fixed-seed runs, which its report has tested at alpha {study.alpha:g}; "
        f"a sequential plan recorded now would take them as its first look, data already seen, and its error "
        f"rate would not hold; {_new_study_hint(study)}"
    )


def run_study(
    study: Study,
    tracking_uri: str | None = None,
    storage: str | None = None,
    progress: bool = True,
    workers: int = 1,
    worker_args: list[str] | None = None,
    launcher: Callable[[int, list[str]], None] | None = None,
) -> RunSummary:
    """Train every cell of ``study`` that has not finished; log each to MLflow.

    Args:
        study: a validated study (see ``ablations.study.load_study``).
        tracking_uri: MLflow tracking URI (default: ``sqlite:///mlruns/mlflow.db``).
        storage: Optuna storage URL (default: ``sqlite:///mlruns/optuna.db``).
        progress: show progress: tqdm bars on a terminal, one line per epoch of each run where stdout
            or stderr is not one (``ablations.progress``); ``False``: neither.
        workers: with more than 1, start that many ``ablate worker`` processes that share
            the queue (each limits its torch threads to cores / workers); this process
            only queues the cells and waits.
        worker_args: the ``ablate worker`` command line for ``workers > 1``.
        launcher: starts the workers instead of :func:`run_workers`, called as ``launcher(workers,
            worker_args)``, also for one worker (``ablations.slurm.SlurmLauncher``: Slurm jobs).

    Returns:
        A :class:`RunSummary`.

    Raises:
        core.data.DataError: the data set cannot be loaded (before anything is logged).
        KeyboardInterrupt: after marking the current run KILLED and its trial FAILED.
    """
    summary = RunSummary()
    session = _Session(study, tracking_uri, storage, create=True)
    before = session.complete_keys()
    summary.parent_run_id = session.parent
    session.tracker.client.update_run(session.parent, status="RUNNING")
    status, visited = "FINISHED", set()
    started = time.monotonic()
    seq = study.sequential
    _announce_budget(session, before)
    if seq is not None:
        _announce_plan(session)
    try:
        look = 0
        while True:
            if seq is not None:
                state = sequential_state(session)
                summary.looks = state.looks
                if state.looks:  # cells of the looks already complete count as finished before this run
                    visited |= {c.key for c in study.with_seeds(study.looks()[len(state.looks) - 1]).cells()}
                if state.report is not None and len(state.looks) > session.summarized:
                    log_summary(session.tracker, session.parent, state.report, len(state.looks))
                    session.summarized = len(state.looks)
                if state.stopped:
                    summary.stopped = state.stopped
                    break
                if seq.timeout is not None and time.monotonic() - started > seq.timeout:
                    summary.stopped = "timeout"
                    break
                look = len(state.looks)
                if look < session.tried:  # this process trained that look and it is still not complete
                    break
                _announce_look(study, look, state)
            current = study.looks()[look]
            session.use_seeds(current)
            visited |= session.scope
            pending_cells(session.study, session.ostudy)
            if workers > 1 or launcher is not None:
                (launcher or run_workers)(workers, worker_args or [])
                _collect(session, summary, before)
            else:
                session.work(summary, progress)
            if seq is None:
                break
            session.tried = look + 1
        _finish_summary(session, fixed=seq is None)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        summary.skipped = len(before & visited)
        summary.running_elsewhere = session.running()
        if summary.stopped:
            session.tracker.client.set_tag(session.parent, f"{TAG}sequential_stop", summary.stopped)
        if status != "KILLED" and (summary.failed or summary.running_elsewhere):
            status = "FAILED" if summary.failed else "RUNNING"
        if status != "RUNNING":
            session.tracker.end(session.parent, status)
    return summary


@dataclass
class SequentialState:
    """Where a sequential study stands, replayed from its MLflow runs (``ablations.report.sequential_looks``).

    Attributes:
        looks: one dict per complete look (``look``, ``seeds``, ``decided``, ``comparisons``).
        stopped: ``decided``, ``max_seeds`` or ``None`` (go on).
        report: the ``ablations.report.Report`` of the last complete look, or None before the first.
    """

    looks: list[dict]
    stopped: str | None
    report: Any = None


def sequential_state(session: _Session) -> SequentialState:
    """Replay the looks of ``session``'s study from MLflow (its parent run) and decide whether to go on."""
    from ablations.report import load_runs, sequential_looks

    sr = load_runs(session.study.name, session.tracker.uri, parent_run_id=session.parent)
    sr.sequential = {**(sr.sequential or {}), "looks": session.plan}
    if session.study.sequential is not None:
        sr.sequential.update(session.study.sequential.model_dump())
    looks, stopped = sequential_looks(sr) if not sr.runs.empty else ([], None)
    last = looks[-1].get("_report") if looks else None
    for look in looks:
        look.pop("_report", None)
    return SequentialState(looks, stopped if stopped in ("decided", "max_seeds") else None, last)


def log_summary(tracker: Tracker, parent: str, report, look: int | None = None) -> None:
    """Log a report's answer on the study's parent run as metrics (``ablations.report.summary_metrics``).

    The step is the fewest seeds per arm, so the chart view draws each arm's mean and each effect's
    interval as a study grows; a sequential study logs at each look, also its number (``look``).

    Args:
        tracker: the study's tracker.
        parent: the parent run's ID.
        report: an ``ablations.report.Report``.
        look: the look's number (from 1) for a sequential study, else None.
    """
    from ablations.report import summary_metrics

    metrics = summary_metrics(report)
    if look is not None:
        metrics["look"] = float(look)
    tracker.log_metrics(parent, metrics, step=int(metrics.get("seeds_per_arm", 0)))


def _finish_summary(session: _Session, fixed: bool) -> None:
    """After a run of the study: its answer on the parent run (a fixed-seed study's metrics; a sequential
    one logged them at each look) and the figure ``report/effect_by_epoch.png``."""
    from mlflow.exceptions import MlflowException

    from ablations.plots import effect_by_epoch_plot
    from ablations.report import ReportError, build_report, effect_by_epoch, load_runs

    try:
        r = build_report(load_runs(session.study.name, session.tracker.uri, parent_run_id=session.parent))
        if fixed:
            log_summary(session.tracker, session.parent, r)
        r.by_epoch = effect_by_epoch(r)
        if not r.by_epoch["rows"].empty:
            fig = effect_by_epoch_plot(r.by_epoch, f"{r.runs.study}: {r.budget}")
            session.tracker.log_figure(session.parent, fig, "report/effect_by_epoch.png")
    except (ReportError, MlflowException) as exc:  # no finished runs yet, or the store went away: say so
        tqdm.write(f"no summary on the parent run: {exc}")


def _announce_budget(session: _Session, complete: set[str]) -> None:
    """Before training: the cells left, and how long they should take on this device (a short calibration).

    For a sequential study, the range from its first look to its cap. On a CPU, a budget above
    three hours is called a GPU budget, with the ``quick`` profile's estimate when the file has one.
    """
    study = session.study
    first = [c for c in study.cells() if c.key not in complete]
    cap = [c for c in session.by_key.values() if c.key not in complete]
    if not cap:
        return
    splits = splits_for(study.config.data, session.data_cache)
    try:
        budget = estimate(study, splits)
    except Exception as exc:  # noqa: BLE001 - an estimate is advice; the study itself reports real errors
        tqdm.write(f"budget: {len(first)} cell(s) to train; no time estimate ({type(exc).__name__}: {exc})")
        return
    session.eta = Eta(budget)
    speed = ", ".join(f"{arm or 'the run'} {ips:,.0f}" for arm, ips in budget.speed.items())
    line = f"budget: {len(first)} cell(s) to train, about {format_seconds(budget.seconds(first))}"
    if study.sequential is not None:
        line += f" for the first look, up to {len(cap)} cell(s) and {format_seconds(budget.seconds(cap))} at the cap"
    held = f" in {budget.precisions()}" if budget.precision else ""  # train.precision as resolved on this device
    tqdm.write(f"{line} (on {budget.device}: images/s {speed}{held}, measured just now)")
    if budget.device == "cpu" and budget.seconds(first) > GPU_BUDGET_S:
        hint = "that is a GPU budget"
        if study.profile != "quick" and "quick" in _profiles(study):
            hint += ": on this CPU run --profile quick (a few epochs on a subset) instead"
        tqdm.write(f"budget: {format_seconds(budget.seconds(first))} on the CPU: {hint}")


def _announce_plan(session: _Session) -> None:
    """Before a sequential study trains: the looks its first sequential run planned, and which looks lie beyond."""
    from ablations.rendering import looks_text

    planned = session.recorded_plan.get("looks")
    if planned and session.recorded_plan.get("boundary") == "anytime":
        tqdm.write(
            f"plan: looks at {looks_text(planned)} seeds per arm and the analysis, fixed by the study's first "
            "sequential run; anytime-valid intervals at the whole alpha (sequential.boundary: anytime)"
        )
        return
    if not planned:
        tqdm.write(
            "plan: none recorded (this study looked at its data sequentially before ablate recorded plans): "
            "anytime-valid intervals at the whole alpha"
        )
        return
    line = f"plan: looks at {looks_text(planned)} seeds per arm, fixed by the study's first sequential run"
    beyond = [len(seeds) for seeds in session.plan if len(seeds) not in planned]
    if beyond:
        line += (
            f"; the looks at {', '.join(map(str, beyond))} seeds per arm lie beyond it and get the wider "
            "anytime-valid interval alone"
        )
    tqdm.write(line)


def _profiles(study: Study) -> list[str]:
    """The profile names of the study's file (empty when it cannot be read again)."""
    import yaml

    try:
        return list((yaml.safe_load(study.path.read_text()) or {}).get("profiles") or {})
    except (OSError, yaml.YAMLError, AttributeError):
        return []


def _announce_look(study: Study, look: int, state: SequentialState) -> None:
    """One line before a round: which look, how many seeds per arm, and what the last look said."""
    seeds = study.looks()[look]
    last = state.looks[-1] if state.looks else None
    said = ""
    if last is not None:
        verdicts = "; ".join(f"{c['effect']}: {c['verdict']}" for c in last["comparisons"])
        said = f" (look {last['look']} at {last['seeds']} seeds per arm: {verdicts})"
    cap = study.sequential.max_seeds if study.sequential else len(seeds)
    tqdm.write(f"look {look + 1}: {len(seeds)} seeds per arm, up to {cap}{said}")


def join_study(
    study: Study, tracking_uri: str | None = None, storage: str | None = None, progress: bool = True
) -> RunSummary:
    """Work on a study another ``ablate run`` started (``ablate worker``): take queued cells until none is left.

    Raises:
        RunnerError: the study has no parent run yet.
    """
    summary = RunSummary()
    session = _Session(study, tracking_uri, storage, create=False)
    summary.parent_run_id = session.parent
    session.work(summary, progress)
    return summary


def run_workers(n: int, args: list[str]) -> None:
    """Start ``n`` worker processes (``args`` is the ``ablate worker`` command line) and wait for all.

    Raises:
        KeyboardInterrupt: after every worker, which got the same Ctrl-C, has exited.
    """
    procs = [subprocess.Popen(args) for _ in range(n)]
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:  # the workers got the same Ctrl-C: let them mark their runs KILLED
        for p in procs:
            p.wait()
        raise
    if any(codes):
        tqdm.write(f"worker exit codes: {codes}", file=sys.stderr)


def _collect(session: _Session, summary: RunSummary, before: set[str]) -> None:
    """Fill ``summary`` from the Optuna study after worker processes finished."""
    for t in session.ostudy.get_trials(deepcopy=False):
        key = t.user_attrs.get("cell")
        if key not in session.by_key or key in before:
            continue
        if t.state == TrialState.COMPLETE:
            summary.trained.append(key)
            summary.values[key] = t.value
        elif t.state == TrialState.FAIL and "failure" in t.user_attrs and key not in summary.trained:
            summary.failed[key] = t.user_attrs["failure"]
    summary.failed = {k: v for k, v in summary.failed.items() if k not in summary.trained}


def requeue(ostudy, cell: Cell) -> None:
    """Put ``cell`` back in the queue (after its worker died)."""
    ostudy.enqueue_trial(cell_params(cell), user_attrs={"cell": cell.key})


def _fail_if_running(ostudy, trial) -> None:
    """Tell Optuna a trial this process holds FAIL unless it has an outcome already."""
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        if ostudy._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
            ostudy.tell(trial, state=TrialState.FAIL)
    except (UpdateFinishedTrialError, RuntimeError, ValueError):
        pass  # told in the meantime


def _end_quietly(tracker: Tracker, run_id: str, status: str, reason: str) -> None:
    """End the run if the tracking server answers; if not, :meth:`_Session.close_orphans` ends it next time."""
    try:
        tracker.end(run_id, status, reason)
    except Exception as exc:
        tqdm.write(f"could not mark MLflow run {run_id} {status}: {str(exc).splitlines()[0][:200]}", file=sys.stderr)


def _diverged(tracker, ostudy, cell: Cell, trial, run_id: str, exc: DivergedError, summary: RunSummary) -> None:
    """A run whose loss diverged: its MLflow run FAILED with the reason and the tag ``ablate.outcome`` =
    ``diverged``, its trial FAIL and not queued again; the study goes on and the report counts the seed as
    an outcome of its arm (``ablations.report``)."""
    from ablations.report import DIVERGED, OUTCOME_TAG

    reason = f"{cell.key}: {exc}"
    tracker.client.set_tag(run_id, OUTCOME_TAG, DIVERGED)  # an outcome of its arm, not a missing value
    tracker.end(run_id, "FAILED", reason)
    trial.set_user_attr("failure", reason)
    trial.set_user_attr("outcome", DIVERGED)  # not queued again: the same seed diverges again
    ostudy.tell(trial, state=TrialState.FAIL)
    summary.failed[cell.key] = str(exc)
    tqdm.write(f"run '{cell.key}' failed: {exc}; the study goes on", file=sys.stderr)


def _start_cell_run(session: _Session, cell: Cell, trial, cfg: RunConfig) -> str:
    """Create the cell's MLflow child run (params, tags) and link it to its trial; return its ID.

    The tag ``ablate.precision`` holds the precision the run trains in, ``train.precision`` resolved
    on this worker's device (``auto`` -> ``bf16`` or ``fp32``, ``core.precision``); the param keeps
    the study's setting, so the study key and its cells stay the same on any host.
    """
    from core.precision import resolve_precision
    from core.train import select_device

    params = {**flatten(cfg), **{f"factor.{k}": level_label(v) for k, v in cell.levels.items()}}
    run_id = session.tracker.start_cell(
        session.exp_id,
        session.parent,
        cell.key,
        params,
        {
            **session.tags,
            f"{TAG}cell": cell.key,
            f"{TAG}arm": cell.arm,
            f"{TAG}seed": str(cell.seed),
            f"{TAG}config_hash": config_hash(cfg),
            PRECISION_TAG: resolve_precision(cfg.train.precision, select_device(cfg.train.device)),
            "optuna.trial_number": str(trial.number),
        },
    )
    trial.set_user_attr("mlflow_run_id", run_id)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    if session.study.code:  # what evaluate and predict import to rebuild this run's model
        session.tracker.log_code(run_id, session.study.code)
    return run_id


def _run_group(
    session: _Session, group: list[tuple[Cell, Any]], summary: RunSummary, progress: bool, place: int, total: int
) -> None:
    """Train one cell, or the seeds of one arm as one fused model (``core.train.fit_many``), each its own run and trial.

    Every seed gets what a cell trained alone gets (a group of one is the ordinary case): its MLflow
    child run with the same params, tags, per-epoch metrics, final metrics and artifacts, and its
    Optuna trial told its value. A seed that diverges fails alone (its run FAILED, its trial FAIL);
    an interrupt or an error marks every run of the group KILLED/FAILED and every trial FAIL, so the
    next ``ablate run`` queues all the group's seeds again.
    """
    study, tracker, ostudy = session.study, session.tracker, session.ostudy
    cells, trials = [c for c, _ in group], [t for _, t in group]
    cfg = study.cell_config(cells[0])
    run_ids = [_start_cell_run(session, c, t, study.cell_config(c)) for c, t in group]
    labels = [f"[{place + i}/{total}] {c.key}" for i, c in enumerate(cells)]  # the cells' places in the study
    fused = f" (+{len(group) - 1} seeds fused)" if len(group) > 1 else ""
    bar = _Progress(labels[0] + fused) if progress else None
    # Where the bar is not drawn (a log, not a terminal): one line per epoch of every seed.
    lines = progress and epoch_lines_wanted()
    in_group = f" ({len(group)} seeds fused)" if len(group) > 1 else ""
    callbacks = [
        [MlflowEpochs(tracker, rid)]
        + ([bar] if bar and i == 0 else [])
        + ([EpochLines(labels[i] + in_group)] if lines else [])
        for i, rid in enumerate(run_ids)
    ]
    try:
        with ExitStack() as beats:
            for t in trials:
                beats.enter_context(Heartbeat(session.storage, t._trial_id))
            splits = splits_for(cfg.data, session.data_cache)
            results = fit_many(cfg, [c.seed for c in cells], splits, callbacks, group_size=len(group))
            for cell, run_id, result in zip(cells, run_ids, results, strict=True):
                if isinstance(result, FitResult):
                    _log_result(tracker, run_id, cell, result)
    except KeyboardInterrupt:
        for run_id, t in zip(run_ids, trials, strict=True):
            _end_quietly(tracker, run_id, "KILLED", "interrupted (Ctrl-C)")
            _fail_if_running(ostudy, t)
        raise
    except BaseException:  # the tracking server or the artifact disk may be what failed: tell Optuna anyway
        reason = traceback.format_exc()
        for run_id, t in zip(run_ids, trials, strict=True):
            _end_quietly(tracker, run_id, "FAILED", reason)
            _fail_if_running(ostudy, t)
        raise
    finally:
        if bar:
            bar.close()
    error = None
    for cell, trial, run_id, result in zip(cells, trials, run_ids, results, strict=True):
        if isinstance(result, DivergedError):
            _diverged(tracker, ostudy, cell, trial, run_id, result, summary)
            continue
        if isinstance(result, BaseException):  # a callback of this seed raised (e.g. MLflow)
            _end_quietly(tracker, run_id, "FAILED", "".join(traceback.format_exception(result)))
            ostudy.tell(trial, state=TrialState.FAIL)
            error = error or result
            continue
        try:
            tracker.end(run_id)
        except BaseException:  # not FINISHED in MLflow: the cell is not complete (the next run closes the run)
            ostudy.tell(trial, state=TrialState.FAIL)
            raise
        value = result.value(study.metric.name)
        ostudy.tell(trial, value)
        summary.trained.append(cell.key)
        summary.values[cell.key] = value
    if error is not None:
        raise error
