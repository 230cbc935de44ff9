"""Hyperparameter search: Optuna samples dotted config keys, each trial is one tracked training run.

A study file's ``search:`` block (:class:`ablations.study.SearchSpec`) gives a
space in Optuna's words (``float``/``int``/``categorical`` with ``low``,
``high``, ``step``, ``log``, ``choices``) keyed by dotted config paths, a
sampler, a pruner, a trial cap and a timeout. :func:`run_search` runs it:

- **Arms.** Without factors the study is one search: the Optuna study
  ``<study key>`` and one MLflow parent run. Beside factors every arm gets its
  own search with the same space, sampler, pruner and cap: the Optuna study
  ``<study key>:<arm>`` and a parent run per arm, so the report can compare the
  tuned arms.
- **Seeds.** Every trial trains with ``train.seed`` = the study's first seed
  (and the study's ``data.split_seed``), so trials differ only by the sampled
  values. The best value is a best-of-N on one seed, an optimistic estimate:
  re-run the best config (``best_config.yaml``) with all seeds in an ordinary
  study to measure it.
- **The cap** ``n_trials`` counts every trial that has an outcome or holds a
  place: COMPLETE, PRUNED, FAIL caused by training (the loss diverged, or the
  sampled values make an invalid config), and RUNNING or WAITING ones (another
  worker's). Trials interrupted by Ctrl-C, stopped by an error or left stale
  by a worker that died do not count: their place is trained again. Running
  the same command again continues up to the cap and trains nothing when it is
  reached. Several processes may run one search on one storage: each checks
  the count before asking for a trial (``optuna.study.MaxTrialsCallback``'s
  check, with running trials counted) and again after, counting only trials
  with a smaller number (Optuna numbers trials under a lock on the study), so
  the cap holds exactly; a trial over the cap is told FAIL (user attribute
  ``outcome: over_cap``) without training, and that worker stops.
- **Sampler seeds.** With ``seed: s``, ``tpe``, ``random`` and ``cmaes`` draw
  trial ``n``'s values with a sampler seeded ``s + n``: reproducible, and a
  resumed search or a second worker does not repeat the first trials' draws.
  ``grid`` and ``qmc`` keep ``s`` (it fixes the order of the grid or the
  scrambled sequence, which they walk by trial number).
- **Pruning.** :class:`PruningCallback` reports ``val_acc`` (accuracy
  metrics) or ``val_loss`` (losses) after every epoch and stops the run when
  the pruner says so: the trial is PRUNED, its MLflow run KILLED with the tag
  ``ablate.failure = "pruned at epoch N"``. A diverging run: trial FAIL, run
  FAILED, the search goes on.

Sources: the TPE sampler is Bergstra, Bardenet, Bengio and Kegl (2011),
"Algorithms for Hyper-Parameter Optimization", NeurIPS; the median pruner is
the median stopping rule of Golovin et al. (2017), "Google Vizier: A Service
for Black-Box Optimization", KDD; Hyperband is Li, Jamieson, DeSalvo,
Rostamizadeh and Talwalkar (2018), "Hyperband: A Novel Bandit-Based Approach
to Hyperparameter Optimization", JMLR 18(185); Optuna's successive halving is
the asynchronous variant (ASHA) of Li et al. (2020), "A System for Massively
Parallel Hyperparameter Tuning", MLSys; CMA-ES is Hansen (2016), "The CMA
Evolution Strategy: A Tutorial", arXiv:1604.00772.
"""

from __future__ import annotations

import json
import math
import sys
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from ablations.factors import level_label
from ablations.plots import learning_curves
from ablations.progress import EpochLines, epoch_lines_wanted
from ablations.runner import MlflowEpochs, splits_for
from ablations.samplers import PER_TRIAL_SEED, SearchSpecError, grid_size, grid_space, make_pruner, make_sampler
from ablations.search import GRACE_S, claim, fail_stale_trials, rdb_storage, stale_reason
from ablations.study import Cell, SearchSpec, Study
from ablations.tracking import CODE_TAG, TAG, Tracker, code_tag, git_commit
from core.config import ConfigError, RunConfig, apply_overrides, config_hash, flatten
from core.train import Callback, DivergedError, FitResult, fit, resolve_config

__all__ = [
    "ArmSearch",
    "PruningCallback",
    "SearchSpecError",
    "SearchSummary",
    "best_config_yaml",
    "counts_toward_cap",
    "grid_space",
    "make_pruner",
    "make_sampler",
    "pruning_metric",
    "run_search",
    "summary_text",
]

OUTCOME = "outcome"  # trial user attribute: complete, pruned, failed, interrupted, error, over_cap
PLOTS = ("optimization_history.png", "param_importances.png", "parallel_coordinate.png")


def suggest(trial: optuna.Trial, search: SearchSpec) -> dict[str, Any]:
    """Draw every key of the space for ``trial`` (``suggest_float``/``_int``/``_categorical``), in file order."""
    out: dict[str, Any] = {}
    for key, p in search.space.items():
        if p.type == "float":
            out[key] = trial.suggest_float(key, p.low, p.high, step=p.step, log=p.log)
        elif p.type == "int":
            out[key] = trial.suggest_int(key, p.low, p.high, step=p.step, log=p.log)
        else:
            out[key] = trial.suggest_categorical(key, p.choices)
    return out


def counts_toward_cap(trial: FrozenTrial) -> bool:
    """Whether ``trial`` uses up one of the search's ``n_trials`` (see the module docstring)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING):
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get(OUTCOME) == "failed"


def pruning_metric(metric: str) -> str:
    """The per-epoch metric the pruner watches for study metric ``metric``: ``val_loss`` or ``val_acc``."""
    return "val_loss" if metric.endswith("loss") else "val_acc"


class PruningCallback(Callback):
    """Report the validation metric to the Optuna trial after each epoch; stop when the pruner says so.

    Args:
        trial: the running trial.
        metric: the study metric; ``val_loss`` is reported for losses, ``val_acc`` otherwise,
            so the reported value moves in the study's direction.

    Raises:
        optuna.TrialPruned: from ``on_epoch_end`` when ``trial.should_prune()``;
            ``pruned_at`` then holds the epoch.
    """

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.key, self.pruned_at = trial, pruning_metric(metric), None

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        value = metrics.get(self.key)
        if value is None or not math.isfinite(value):
            return
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")


class _EpochBar(Callback):
    """A tqdm bar per trial: epochs, last validation accuracy."""

    def __init__(self, label: str, enabled: bool) -> None:
        self.label, self.enabled, self.bar = label, enabled, None

    def on_fit_start(self, cfg: RunConfig, steps_per_epoch: int) -> None:
        self.bar = tqdm(
            total=cfg.train.epochs,
            unit="epoch",
            leave=False,
            desc=self.label,
            dynamic_ncols=True,
            disable=None if self.enabled else True,
        )

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.bar.update(1)
        self.bar.set_postfix_str(f"val_acc {100 * metrics['val_acc']:.1f}%")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------------- summary


@dataclass
class ArmSearch:
    """One search (the whole study, or one arm of it) after :func:`run_search`.

    Attributes:
        arm: the arm's levels (``batchnorm=false``); ``""`` for a study without factors.
        optuna_study: the Optuna study's name (``<study key>`` or ``<study key>:<arm>``).
        parent_run_id: the arm's MLflow parent run.
        n_trials: the cap (``search.n_trials``; at most the grid's size for ``grid``).
        complete, pruned: trial numbers this call finished that way.
        failed: trial number -> reason, for the trials of this call that failed (diverged).
        counts: over the whole search: ``complete``, ``pruned``, ``failed``, ``running``.
        best_trial, best_value, best_params: the best COMPLETE trial so far, or ``None``.
        running_elsewhere: numbers of trials RUNNING in another worker (or one that died
            less than the heartbeat grace period ago).
        plots: the PNGs logged to the parent run.
    """

    arm: str
    optuna_study: str
    parent_run_id: str
    n_trials: int
    complete: list[int] = field(default_factory=list)
    pruned: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    best_trial: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    running_elsewhere: list[int] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)

    @property
    def trained(self) -> int:
        """Trials this call trained (any outcome)."""
        return len(self.complete) + len(self.pruned) + len(self.failed)


@dataclass
class SearchSummary:
    """What one :func:`run_search` did, per arm (one arm without factors)."""

    study: str
    profile: str
    metric: str
    direction: str
    seed: int
    arms: list[ArmSearch] = field(default_factory=list)


def best_config_yaml(params: dict[str, Any], header: list[str] | None = None, indent: int = 0) -> str:
    """The sampled values as dotted overrides, YAML ready to paste into a study's ``base``.

    Args:
        params: dotted key -> value.
        header: comment lines put first (without ``#``).
        indent: spaces before every line (2 to paste under ``base:``).
    """
    body = yaml.safe_dump(dict(params), sort_keys=False, default_flow_style=False)
    lines = [f"# {h}" for h in header or []] + body.splitlines()
    return "".join(" " * indent + line + "\n" for line in lines)


def _show(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.2f}%" if metric.endswith(("acc", "top3")) else f"{value:.4f}"


def summary_text(summary: SearchSummary, workers: int = 1) -> str:
    """What ``ablate run`` prints after a search: trials, best value, best config as YAML for ``base``.

    Args:
        summary: what :func:`run_search` returned.
        workers: with more than 1, the trials were trained by that many worker processes (each
            printed its own count), not by the process that summarises.
    """
    out = []
    for arm in summary.arms:
        name = f"search {summary.study}" + (f" [{arm.arm}]" if arm.arm else "")
        c = arm.counts
        finished = c.get("complete", 0) + c.get("pruned", 0) + c.get("failed", 0)
        trained = (
            f"trained {arm.trained} trial(s): {len(arm.complete)} complete, {len(arm.pruned)} pruned, "
            f"{len(arm.failed)} failed"
            if workers <= 1
            else f"trained by {workers} workers"
        )
        out.append(
            f"{name}: {trained}; {finished} of {arm.n_trials} finished ({c.get('complete', 0)} complete, "
            f"{c.get('pruned', 0)} pruned, {c.get('failed', 0)} failed); MLflow parent run {arm.parent_run_id}"
        )
        for number, reason in arm.failed.items():
            out.append(f"  failed: trial {number}: {reason}")
        if arm.running_elsewhere:
            out.append(
                f"  {len(arm.running_elsewhere)} trial(s) run in another worker, or in one that died less than "
                f"{GRACE_S} s ago: {', '.join(map(str, arm.running_elsewhere))}; run the same command again later "
                "if they do not finish"
            )
        if arm.best_trial is None:
            out.append("  no complete trial yet")
            continue
        out.append(f"  best: trial {arm.best_trial}, {summary.metric} {_show(summary.metric, arm.best_value)}")
        out.append(f"  best config (train.seed {summary.seed}; paste under a study's base: and re-run with seeds):")
        out.append(best_config_yaml(arm.best_params, indent=4).rstrip("\n"))
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------- the search


class _TrialFailed(Exception):
    """A trial that ends FAIL and the search goes on (diverged, invalid config, over the cap)."""


def _open(study: Study, name: str, storage: str | None, on_stale: Callable[[FrozenTrial], None]) -> optuna.Study:
    rdb = rdb_storage(storage, lambda _study, trial: on_stale(trial))
    search = study.search
    assert search is not None
    ostudy = optuna.create_study(
        storage=rdb,
        study_name=name,
        direction=study.metric.direction,
        sampler=make_sampler(search),
        pruner=make_pruner(search),
        load_if_exists=True,
    )
    recorded = ostudy.metric_names
    if recorded and recorded != [study.metric.name] and ostudy.get_trials(deepcopy=False):
        # a search written without metric: optimised test_acc until the default became val_acc (issue 24)
        raise RuntimeError(
            f"search {name} has trials valued by {recorded[0]}, and the study's metric is now "
            f"{study.metric.name}: their values cannot be pooled; give the study another name or profile"
        )
    ostudy.set_metric_names([study.metric.name])
    fail_stale_trials(ostudy)  # heartbeat older than the grace, or a dead process on this host
    return ostudy


def _experiment(tracker: Tracker, name: str) -> str:
    """The study's experiment id; created if missing, also when another worker creates it at the same time."""
    from mlflow.exceptions import MlflowException

    try:
        return tracker.experiment(name)
    except MlflowException:
        exp_id = tracker.experiment(name, create=False)
        if exp_id is None:
            raise
        return exp_id


def _parent_run(tracker: Tracker, exp_id: str, key: str, name: str, tags: dict[str, str]) -> str:
    """The parent run of search ``key``: found, or created. Workers that race to create it agree on the oldest."""
    client = tracker.client
    flt = f"tags.`{TAG}study_key` = '{key}' and tags.`{TAG}role` = 'parent'"
    found = client.search_runs([exp_id], flt)
    created = None
    if not found:
        created = client.create_run(
            exp_id, run_name=name, tags={**tags, f"{TAG}role": "parent", f"{TAG}study_key": key}
        ).info.run_id
        found = client.search_runs([exp_id], flt)
    found = sorted(found, key=lambda r: (r.info.start_time, r.info.run_id))
    run_id = found[0].info.run_id
    if created is not None and created != run_id:
        client.delete_run(created)  # another worker created one first
    client.update_run(run_id, status="RUNNING")
    return run_id


def run_search(
    study: Study, tracking_uri: str | None = None, storage: str | None = None, progress: bool = True
) -> SearchSummary:
    """Run the study's hyperparameter search (each arm's, with factors) up to ``search.n_trials``.

    Safe to call from several processes on one Optuna storage and one MLflow store at
    once: they share the trials, and the cap holds over all of them.

    Args:
        study: a validated study with a ``search`` block (see ``ablations.study.load_study``).
        tracking_uri: MLflow tracking URI (default: ``sqlite:///mlruns/mlflow.db``).
        storage: Optuna storage URL (default: ``sqlite:///mlruns/optuna.db``).
        progress: show progress: tqdm bars on a terminal, one line per epoch of each run where stdout
            or stderr is not one (``ablations.progress``); ``False``: neither.

    Returns:
        A :class:`SearchSummary`, one :class:`ArmSearch` per arm.

    Raises:
        ValueError: the study has no search block.
        core.data.DataError: the data set cannot be loaded (before anything is logged).
        KeyboardInterrupt: after marking the current run KILLED and its trial FAIL (not counted).
    """
    if study.search is None:
        raise ValueError(f"study {study.name} has no search block")
    cache: dict = {}
    splits_for(study.config.data, cache)  # fail on missing data before anything is logged
    tracker = Tracker(tracking_uri)
    exp_id = _experiment(tracker, study.name)
    summary = SearchSummary(study.name, study.profile, study.metric.name, study.metric.direction, study.seeds[0])
    for index, cell in enumerate(study.cells()):
        summary.arms.append(_Search(study, cell, index, tracker, exp_id, storage, cache, progress).run())
    return summary


class _Search:
    """The search of one arm: an Optuna study, a parent run, trials as child runs."""

    def __init__(
        self,
        study: Study,
        cell: Cell,
        index: int,
        tracker: Tracker,
        exp_id: str,
        storage: str | None,
        cache: dict,
        progress: bool,
    ) -> None:
        assert study.search is not None
        self.study, self.search, self.cell, self.tracker, self.exp_id = study, study.search, cell, tracker, exp_id
        self.cache, self.progress = cache, progress
        self.name = f"{study.key}:{cell.arm}" if cell.levels else study.key
        self.cap = self.search.n_trials
        if self.search.sampler.name == "grid":
            self.cap = min(self.cap, grid_size(self.search))
        self.ostudy = _open(study, self.name, storage, self._stale)
        self.tags = {
            f"{TAG}study": study.name,
            f"{TAG}profile": study.profile,
            f"{TAG}git_commit": git_commit(),
            f"{TAG}config_hash": config_hash(study.config),
            "optuna.study": self.name,
            "mlflow.note.content": study.question,
        }
        if study.code:  # the code its models come from (part of the key), logged with every run
            self.tags[CODE_TAG] = code_tag(study.code)
        run_name = f"{study.name} ({study.profile})" + (f" {cell.arm}" if cell.arm else "")
        factors = {f: [level_label(v) for v in spec] for f, spec in study.factors.items()}
        parent_tags = {
            **self.tags,
            f"{TAG}search": "true",
            f"{TAG}search_key": study.key,
            f"{TAG}arm": cell.arm,
            f"{TAG}arm_index": str(index),
            f"{TAG}factors": json.dumps(factors),
            f"{TAG}levels": json.dumps({k: level_label(v) for k, v in cell.levels.items()}),
            f"{TAG}seed": str(cell.seed),
            f"{TAG}metric": study.metric.name,
            f"{TAG}direction": study.metric.direction,
            f"{TAG}space": json.dumps(list(self.search.space)),
        }
        self.parent = _parent_run(tracker, exp_id, self.name, run_name, parent_tags)
        if study.code:
            tracker.log_code(self.parent, study.code)
        tracker.client.set_tag(self.parent, f"{TAG}n_trials", str(self.cap))  # a tag: it may be raised later
        tracker.log_config(
            self.parent,
            {
                "study": study.name,
                "question": study.question,
                "profile": study.profile,
                "overrides": study.overrides,
                "factors": study.factors,
                "arm": {k: level_label(v) for k, v in cell.levels.items()},
                "seed": cell.seed,
                "metric": study.metric.model_dump(),
                "search": {**self.search.model_dump(mode="json"), "n_trials": self.cap},
            },
        )
        self.arm = ArmSearch(cell.arm, self.name, self.parent, self.cap)

    def _stale(self, trial: FrozenTrial) -> None:
        """``trial``'s worker is gone (no heartbeat, or a dead process on this host): close its MLflow run too."""
        if "mlflow_run_id" in trial.user_attrs:
            self.tracker.end(trial.user_attrs["mlflow_run_id"], "FAILED", stale_reason(trial))

    def _counted(self, below: int | None = None) -> int:
        trials = self.ostudy.get_trials(deepcopy=False)
        return sum(counts_toward_cap(t) for t in trials if below is None or t.number < below)

    def run(self) -> ArmSearch:
        status = "FINISHED"
        try:
            if self._counted() < self.cap:
                self._optimize()
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except BaseException:
            status = "FAILED"
            raise
        finally:
            if status == "FINISHED":
                self._finish()
            self.tracker.end(self.parent, status)
        return self.arm

    def _optimize(self) -> None:
        finished = sum(counts_toward_cap(t) and t.state.is_finished() for t in self.ostudy.get_trials(deepcopy=False))
        label = self.study.name + (f" [{self.cell.arm}]" if self.cell.arm else "")
        self.bar = tqdm(
            total=self.cap,
            initial=min(finished, self.cap),
            unit="trial",
            desc=label,
            disable=None if self.progress else True,
            dynamic_ncols=True,
        )

        def after_trial(ostudy: optuna.Study, trial: FrozenTrial) -> None:
            if trial.user_attrs.get(OUTCOME) != "over_cap":
                self.bar.update(1)
            if self._counted() >= self.cap:  # MaxTrialsCallback, with other workers' running trials counted
                ostudy.stop()

        # Optuna would log a failed trial with its traceback; ablate prints one line per trial itself.
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        try:
            self.ostudy.optimize(
                self._objective,
                timeout=self.search.timeout,
                catch=(_TrialFailed,),
                callbacks=[after_trial],
            )
        finally:
            optuna.logging.set_verbosity(verbosity)
            self.bar.close()

    def _objective(self, trial: optuna.Trial) -> float:
        if self._counted(below=trial.number) >= self.cap:  # other workers took the last places
            trial.set_user_attr(OUTCOME, "over_cap")
            self.ostudy.stop()
            raise _TrialFailed("over the n_trials cap")
        claim(self.ostudy, trial)  # host and PID: a dead worker on this host is noticed at once
        if self.search.sampler.seed is not None and self.search.sampler.name in PER_TRIAL_SEED:
            self.ostudy.sampler = make_sampler(self.search, trial.number)
        params = suggest(trial, self.search)
        label = f"trial {trial.number}"
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        tags = {
            **self.tags,
            f"{TAG}cell": f"{self.cell.arm} {label}".strip(),
            f"{TAG}arm": self.cell.arm,
            f"{TAG}seed": str(self.cell.seed),
            f"{TAG}search_params": json.dumps(params),
            "optuna.trial_number": str(trial.number),
        }
        logged = {f"factor.{k}": level_label(v) for k, v in self.cell.levels.items()}
        logged.update({f"search.{k}": v for k, v in params.items()})
        try:
            cfg = resolve_config(apply_overrides(self.study.config, {**self.cell.overrides, **params}))
        except ConfigError as exc:  # the values are valid alone but not together
            run_id = self.tracker.start_cell(self.exp_id, self.parent, label, logged, tags)
            self._fail(trial, run_id, label, f"invalid config: {exc}")
        run_id = self.tracker.start_cell(
            self.exp_id, self.parent, label, {**flatten(cfg), **logged}, {**tags, f"{TAG}config_hash": config_hash(cfg)}
        )
        trial.set_user_attr("mlflow_run_id", run_id)
        if self.study.code:  # what evaluate and predict import to rebuild this trial's model
            self.tracker.log_code(run_id, self.study.code)
        pruning = PruningCallback(trial, self.study.metric.name)
        bar = _EpochBar(label, self.progress)
        # Where the bars are not drawn (a log, not a terminal): one line per epoch, before the pruner may stop it.
        lines = [EpochLines(tags[f"{TAG}cell"])] if self.progress and epoch_lines_wanted() else []
        try:
            result = fit(
                cfg, splits_for(cfg.data, self.cache), [MlflowEpochs(self.tracker, run_id), *lines, pruning, bar]
            )
            value = result.value(self.study.metric.name)  # test_* of the kept weights, else its epoch
            self._log_result(run_id, label, result, value)
        except optuna.TrialPruned:
            reason = f"pruned at epoch {pruning.pruned_at}"
            self.tracker.client.set_tag(run_id, f"{TAG}trial_state", "PRUNED")
            self.tracker.end(run_id, "KILLED", reason)
            trial.set_user_attr(OUTCOME, "pruned")
            self.arm.pruned.append(trial.number)
            tqdm.write(f"{label} ({shown}): {reason}")
            raise
        except DivergedError as exc:
            self._fail(trial, run_id, label, str(exc))
        except KeyboardInterrupt:
            self.tracker.client.set_tag(run_id, f"{TAG}trial_state", "INTERRUPTED")
            self.tracker.end(run_id, "KILLED", "interrupted (Ctrl-C)")
            trial.set_user_attr(OUTCOME, "interrupted")
            raise
        except BaseException:
            self.tracker.client.set_tag(run_id, f"{TAG}trial_state", "ERROR")
            self.tracker.end(run_id, "FAILED", traceback.format_exc())
            trial.set_user_attr(OUTCOME, "error")
            raise
        finally:
            bar.close()
        self.tracker.client.set_tag(run_id, f"{TAG}trial_state", "COMPLETE")
        self.tracker.end(run_id)  # the run is complete before the trial is told COMPLETE
        trial.set_user_attr(OUTCOME, "complete")
        self.arm.complete.append(trial.number)
        tqdm.write(f"{label} ({shown}): {self.study.metric.name} {_show(self.study.metric.name, value)}")
        return value

    def _fail(self, trial: optuna.Trial, run_id: str, label: str, reason: str) -> None:
        self.tracker.client.set_tag(run_id, f"{TAG}trial_state", "FAIL")
        self.tracker.end(run_id, "FAILED", f"{label}: {reason}")
        trial.set_user_attr(OUTCOME, "failed")
        trial.set_user_attr("failure", reason)
        self.arm.failed[trial.number] = reason
        tqdm.write(f"{label} failed: {reason}; the search goes on", file=sys.stderr)
        raise _TrialFailed(reason)

    def _log_result(self, run_id: str, label: str, result: FitResult, value: float) -> None:
        self.tracker.log_metrics(
            run_id,
            {**result.final_metrics(), "trial_value": value},
            step=len(result.history),
        )
        self.tracker.log_config(run_id, result.config.model_dump(mode="json"))
        self.tracker.log_figure(run_id, learning_curves(result.history, label), "learning_curves.png")
        self.tracker.log_state_dict(run_id, result.state_dict)

    def _finish(self) -> None:
        """Counts, the best trial and its config, and Optuna's plots, logged to the parent run."""
        trials = self.ostudy.get_trials(deepcopy=False)
        states = [t.state for t in trials]
        failed = sum(t.state == TrialState.FAIL and t.user_attrs.get(OUTCOME) == "failed" for t in trials)
        self.arm.counts = {
            "complete": states.count(TrialState.COMPLETE),
            "pruned": states.count(TrialState.PRUNED),
            "failed": failed,
            "running": states.count(TrialState.RUNNING),
        }
        self.arm.running_elsewhere = [t.number for t in trials if t.state == TrialState.RUNNING]
        finished = self.arm.counts["complete"] + self.arm.counts["pruned"] + failed
        self.tracker.log_metrics(
            self.parent, {f"trials_{k}": v for k, v in self.arm.counts.items() if k != "running"}, step=finished
        )
        if not self.arm.counts["complete"]:
            return
        best = self.ostudy.best_trial
        metric = self.study.metric.name
        self.arm.best_trial, self.arm.best_value = best.number, best.value
        self.arm.best_params = {k: best.params[k] for k in self.search.space if k in best.params}
        self.tracker.log_metrics(self.parent, {f"best_{metric}": best.value}, step=finished)
        self.tracker.client.set_tag(self.parent, f"{TAG}best_trial", str(best.number))
        if "mlflow_run_id" in best.user_attrs:
            self.tracker.client.set_tag(self.parent, f"{TAG}best_run_id", best.user_attrs["mlflow_run_id"])
        where = f"profile {self.study.profile}" + (f", arm {self.cell.arm}" if self.cell.arm else "")
        header = [
            f"best trial {best.number} of the search {self.study.name} ({where}): {metric} {best.value:.6g}",
            f"trained with train.seed {self.cell.seed}; dotted overrides for a study's base",
        ]
        self.tracker.client.log_text(self.parent, best_config_yaml(self.arm.best_params, header), "best_config.yaml")
        self.arm.plots = self._plots()

    def _plots(self) -> list[str]:
        """Optuna's optimisation history, parameter importances and parallel coordinates, as PNGs."""
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as ovm

        metric = self.study.metric.name
        draw = {
            "optimization_history.png": lambda: ovm.plot_optimization_history(self.ostudy, target_name=metric),
            "parallel_coordinate.png": lambda: ovm.plot_parallel_coordinate(self.ostudy, target_name=metric),
        }
        if self.arm.counts["complete"] >= 2 and len(self.search.space) >= 2:  # importances need both
            draw["param_importances.png"] = lambda: ovm.plot_param_importances(self.ostudy, target_name=metric)
        logged = []
        for name in PLOTS:
            if name not in draw:
                continue
            try:
                with warnings.catch_warnings():  # e.g. "identical low and high ylims" for a value seen once
                    warnings.simplefilter("ignore")
                    fig = draw[name]().figure
            except Exception as exc:  # a plot never fails a finished search
                tqdm.write(f"skipped {name}: {exc}", file=sys.stderr)
                continue
            try:
                fig.set_size_inches(max(fig.get_figwidth(), 8), max(fig.get_figheight(), 5))
                fig.tight_layout()
                self.tracker.log_figure(self.parent, fig, name)
                logged.append(name)
            finally:
                plt.close(fig)
        return logged
