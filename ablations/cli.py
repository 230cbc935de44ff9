"""The ``ablate`` command line: run, report, ui, models.

Every command that reads or writes runs takes ``--tracking-uri`` (default
``sqlite:///mlruns/mlflow.db`` or ``$MLFLOW_TRACKING_URI``) and, where it
touches Optuna, ``--storage`` (default ``sqlite:///mlruns/optuna.db``).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
import webbrowser
from pathlib import Path

import click
import yaml

from ablations.study import StudyError, load_study, parse_sets

tracking_option = click.option(
    "--tracking-uri",
    default=None,
    metavar="URI",
    help="MLflow tracking URI. [default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db]",
)
storage_option = click.option(
    "--storage",
    default=None,
    metavar="URL",
    help="Optuna storage URL. [default: $ABLATE_OPTUNA_STORAGE or sqlite:///mlruns/optuna.db]",
)


def slurm_options(f):
    """``--launcher`` and the ``--slurm-*`` options of ``ablate run`` (see ablations.slurm)."""
    options = [
        click.option(
            "--launcher",
            type=click.Choice(["local", "slurm"]),
            default="local",
            show_default=True,
            help="Where the --workers run: processes here, or Slurm jobs (one array; needs PostgreSQL "
            "--storage and a tracking server).",
        ),
        click.option("--slurm-partition", default=None, metavar="P", help="Slurm partition of the worker jobs."),
        click.option(
            "--slurm-time",
            default="4:00:00",
            show_default=True,
            metavar="T",
            help="Time limit of each job: minutes, HH:MM:SS or D-HH:MM:SS.",
        ),
        click.option(
            "--slurm-cpus-per-worker",
            type=click.IntRange(1),
            default=None,
            metavar="C",
            help="CPUs per job (also its torch threads).",
        ),
        click.option(
            "--slurm-gpus-per-worker", type=click.IntRange(0), default=None, metavar="G", help="GPUs per job."
        ),
        click.option("--slurm-mem", default=None, metavar="M", help="Memory per job, as sbatch --mem (e.g. 16G)."),
        click.option("--slurm-account", default=None, metavar="A", help="Slurm account to charge."),
        click.option("--slurm-qos", default=None, metavar="Q", help="Slurm quality of service."),
        click.option(
            "--slurm-setup",
            multiple=True,
            metavar="LINE",
            help="Shell line run before the worker in each job, e.g. 'module load cuda' (repeatable).",
        ),
        click.option(
            "--slurm-option",
            multiple=True,
            metavar="KEY=VALUE",
            help="Any other sbatch option, e.g. constraint=a100 (repeatable).",
        ),
        click.option(
            "--slurm-folder",
            type=click.Path(file_okay=False, path_type=Path),
            default=Path("slurm-jobs"),
            show_default=True,
            help="submitit's files and the jobs' logs, on a disk the nodes share.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _slurm_launcher(launcher: str, study, tracking_uri: str | None, storage: str | None, slurm: dict):
    """The SlurmLauncher for ``--launcher slurm`` (``None`` for local); a bad store or option is a usage error."""
    if launcher != "slurm":
        given = [k for k, v in slurm.items() if v not in (None, (), Path("slurm-jobs"), "4:00:00")]
        if given:
            raise click.UsageError(f"--{given[0].replace('_', '-')} needs --launcher slurm")
        return None
    from ablations.search import resolve_storage
    from ablations.slurm import SlurmError, SlurmLauncher, SlurmOptions, check_shared_stores, parse_time, study_progress
    from ablations.tracking import resolve_tracking_uri

    url = resolve_storage(storage)
    try:
        check_shared_stores(resolve_tracking_uri(tracking_uri), url)
        extra = {}
        for item in slurm["slurm_option"]:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise SlurmError(f"--slurm-option {item!r}: expected KEY=VALUE, e.g. constraint=a100")
            extra[key.strip().lstrip("-")] = value
        options = SlurmOptions(
            partition=slurm["slurm_partition"],
            time_min=parse_time(slurm["slurm_time"]),
            cpus_per_worker=slurm["slurm_cpus_per_worker"],
            gpus_per_worker=slurm["slurm_gpus_per_worker"],
            mem=slurm["slurm_mem"],
            account=slurm["slurm_account"],
            qos=slurm["slurm_qos"],
            setup=list(slurm["slurm_setup"]),
            extra=extra,
            folder=slurm["slurm_folder"],
            job_name=f"ablate-{study.name}",
        )
    except SlurmError as exc:
        raise click.UsageError(str(exc)) from None
    return SlurmLauncher(options, progress=lambda: study_progress(study, url), echo=lambda line: click.echo(line))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="ablate")
def main() -> None:
    """Ablation studies for CIFAR-10 classifiers: many seeds, tracked runs, tables with error bars."""


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--profile", default=None, help="Budget from the study's `profiles` (default: full).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a config key, e.g. train.epochs=2.")
@click.option("--dry-run", is_flag=True, help="List the cells and one resolved config; train nothing.")
@click.option("--no-report", is_flag=True, help="Do not print the results table at the end.")
@click.option(
    "--workers",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Worker processes sharing the queue (CPU: each gets cores/workers torch threads).",
)
@click.option(
    "--until-decided",
    is_flag=True,
    help="Add seeds in rounds until every deciding comparison is decided (the study's `sequential` block, "
    "or max 20 seeds per arm, step 2).",
)
@click.option(
    "--max-seeds",
    type=click.IntRange(2),
    default=None,
    metavar="N",
    help="Cap of seeds per arm (implies --until-decided). The study's first sequential run fixes its planned "
    "looks; looks above a later, higher cap get the wider anytime-valid interval.",
)
@tracking_option
@storage_option
@slurm_options
def run(
    study_file: Path,
    profile: str | None,
    sets: tuple[str, ...],
    dry_run: bool,
    no_report: bool,
    workers: int,
    until_decided: bool,
    max_seeds: int | None,
    tracking_uri: str | None,
    storage: str | None,
    launcher: str,
    **slurm,
) -> None:
    """Train every cell (factor levels x seeds) of STUDY_FILE not yet finished; log each to MLflow.

    A sequential study (a `sequential` block, --until-decided or --max-seeds) adds seeds in rounds and stops
    once its question is decided; intervals valid at every look at once keep the error rate however many
    rounds it takes (repeated confidence intervals for the planned looks, anytime-valid beyond them).
    """
    study = _load(study_file, profile, sets, until_decided, max_seeds)
    cells = study.cells()
    if dry_run:
        click.echo(f"study {study.name} (profile {study.profile}, key {study.key}): {len(cells)} cells")
        click.echo(f"question: {study.question}")
        for i, cell in enumerate(cells, 1):
            click.echo(f"  {i:3d}. {cell.key}")
        click.echo(f"\nresolved config of '{cells[0].key}':")
        click.echo(yaml.safe_dump(study.cell_config(cells[0]).model_dump(mode="json"), sort_keys=False))
        return

    launch = _slurm_launcher(launcher, study, tracking_uri, storage, slurm)  # None: processes on this machine
    threads = slurm["slurm_cpus_per_worker"] if launch else _threads_per_worker(workers)
    args = _worker_args(study_file, study.profile, sets, tracking_uri, storage, threads=threads)
    if study.sequential is not None:  # the workers must know the seeds of every look
        args += ["--max-seeds", str(study.sequential.max_seeds)]
    if study.search is not None:  # a hyperparameter search (ablations.hpsearch): trials instead of cells
        _run_search(study, study_file, profile, tracking_uri, storage, workers, args, launch)
        return

    from ablations.runner import run_study
    from ablations.search import GRACE_S
    from core.data import DataError

    if study.sequential is not None:
        looks = study.looks()
        click.echo(
            f"study {study.name} (profile {study.profile}), sequential: {len(cells)} cells at the first look, "
            f"up to {len(study.with_seeds(looks[-1]).cells())} in {len(looks)} looks; {study.question}"
        )
    else:
        click.echo(f"study {study.name} (profile {study.profile}): {len(cells)} cells; {study.question}")
    try:
        summary = run_study(study, tracking_uri, storage, workers=workers, worker_args=args, launcher=launch)
    except DataError as exc:
        raise click.ClickException(f"{exc}") from None
    except RuntimeError as exc:  # SlurmError: sbatch refused the jobs; PlanError: the recorded plan refused the run
        if type(exc).__name__ not in ("SlurmError", "PlanError"):
            raise
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        _interrupted(study_file, profile)
    except Exception as exc:  # a service or the disk failed mid-study: what failed and how to resume
        _stopped(exc, study_file, profile, tracking_uri, storage)
    click.echo(
        f"trained {len(summary.trained)} cell(s), {summary.skipped} already finished, "
        f"{len(summary.failed)} failed; MLflow parent run {summary.parent_run_id}"
    )
    if study.sequential is not None:
        last = summary.looks[-1] if summary.looks else None
        where = f" at look {last['look']} ({last['seeds']} seeds per arm)" if last else ""
        click.echo(f"sequential: {summary.stopped or 'not stopped'}{where}")
    for key, reason in summary.failed.items():
        click.echo(f"  failed: {key}: {reason}", err=True)
    if summary.running_elsewhere:
        click.echo(
            f"  {len(summary.running_elsewhere)} cell(s) are held by another worker, or by one that died less than "
            f"{GRACE_S} s ago (its heartbeat has not gone stale yet): {', '.join(summary.running_elsewhere)}; "
            "run the same command again later to train them",
            err=True,
        )
    if not no_report:
        rep = _print_report(study.name, tracking_uri, study.profile, "table", None, spec=study)
        _publish(rep, study.name, tracking_uri, study.profile)


def _publish(rep, name: str, tracking_uri: str | None, profile: str) -> None:
    """Put the report just printed on the study's parent run, where MLflow's UI shows it (a failure is a warning)."""
    from ablations.ui import publish_report

    try:
        parent = publish_report(name, tracking_uri, profile, report=rep)
    except Exception as exc:  # noqa: BLE001 (the runs and the printed table are what matter)
        click.echo(f"could not put the report on the parent run: {exc}", err=True)
        return
    click.echo(f"the report and its figures are on parent run {parent} (`ablate ui {name}` shows it)")


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--profile", default=None, help="The profile the study was started with (default: full).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="The --set overrides it was started with.")
@click.option("--threads", type=click.IntRange(1), default=None, help="torch threads for this worker (CPU).")
@click.option(
    "--max-seeds", type=click.IntRange(2), default=None, metavar="N", help="A sequential study's cap (as in run)."
)
@tracking_option
@storage_option
def worker(
    study_file: Path,
    profile: str | None,
    sets: tuple[str, ...],
    threads: int | None,
    max_seeds: int | None,
    tracking_uri: str | None,
    storage: str | None,
) -> None:
    """Join a study that `ablate run` started: train queued cells until none is left.

    On other machines, point --storage and --tracking-uri at the shared services
    (PostgreSQL for Optuna, an MLflow tracking server) the study was started with.
    """
    import torch

    from ablations.runner import RunnerError, join_study
    from core.data import DataError

    if threads:
        torch.set_num_threads(threads)
    _stop_on_signals()
    study = _load(study_file, profile, sets, max_seeds=max_seeds)
    if study.search is not None:  # every worker runs the same search; the cap holds across them
        from ablations.hpsearch import run_search

        try:
            result = run_search(study, tracking_uri, storage)
        except DataError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            sys.exit(130)
        click.echo(f"worker {os.getpid()}: trained {sum(arm.trained for arm in result.arms)} trial(s)")
        return
    try:
        summary = join_study(study, tracking_uri, storage)
    except (DataError, RunnerError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        sys.exit(130)
    click.echo(f"worker {os.getpid()}: trained {len(summary.trained)} cell(s), {len(summary.failed)} failed")


def _stop_on_signals() -> None:
    """SIGTERM (scancel, a Slurm time limit, a stopped container) and SIGUSR2 (submitit's warning before
    the time limit) stop a worker as Ctrl-C does: its run marked KILLED, its trial FAIL, the cell queued."""

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, getattr(signal, "SIGUSR2", None)):
        if sig is not None:
            signal.signal(sig, interrupt)


def _run_search(
    study,
    study_file: Path,
    profile: str | None,
    tracking_uri,
    storage,
    workers: int,
    worker_args: list[str],
    launch=None,
) -> None:
    """``ablate run`` of a study with a ``search`` block: in this process, or in ``workers`` worker processes.

    With workers, this process waits for them and then calls ``run_search`` itself, which trains
    nothing once the cap is reached and logs the best trial and the plots to the parent run(s).
    """
    from ablations.hpsearch import run_search, summary_text
    from ablations.runner import run_workers
    from ablations.search import rdb_storage
    from ablations.tracking import Tracker
    from core.data import DataError, load_splits

    click.echo(f"search {study.name} (profile {study.profile}): up to {study.search.n_trials} trials")
    try:
        if workers > 1 or launch is not None:  # launch: Slurm jobs (ablations.slurm) instead of processes
            load_splits(study.config.data)  # a missing data set: one message, not one per worker
            # Create both stores' schemas here: workers that all create a fresh SQLite file race.
            Tracker(tracking_uri).experiment(study.name)
            rdb_storage(storage)
            (launch or run_workers)(workers, worker_args)
        click.echo(summary_text(run_search(study, tracking_uri, storage), workers), nl=False)
    except DataError as exc:
        raise click.ClickException(f"{exc}") from None
    except KeyboardInterrupt:
        _interrupted(study_file, profile)


def _interrupted(study_file: Path, profile: str | None) -> None:
    """Ctrl-C: say that nothing finished is lost and how to resume (the same command line); exit 130."""
    click.echo(
        "\ninterrupted: finished runs are kept; the current run is marked KILLED.\n"
        f"resume with: {_resume_command(study_file, profile)}",
        err=True,
    )
    sys.exit(130)


def _resume_command(study_file: Path, profile: str | None) -> str:
    """The ``ablate run`` command line that was given: the file and every option set (``--set``, the stores, ...).

    Read from click's context, so an option added to ``run`` later is repeated too; without a context
    (called outside a command) only the file and ``--profile``.
    """
    words = ["ablate", "run", str(study_file)]
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return shlex.join(words + (["--profile", profile] if profile else []))
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if not isinstance(param, click.Option) or value in (None, False, ()) or value == param.default:
            continue
        name = max(param.opts, key=len)  # the long name
        if param.is_flag:
            words.append(name)
            continue
        for item in value if param.multiple else (value,):
            words += [name, str(item)]
    return shlex.join(words)


def _stopped(exc: Exception, study_file: Path, profile: str | None, tracking_uri, storage) -> None:
    """A study stopped by a full disk or an unreachable service: one clear error and how to resume (exit 1).

    Anything else is re-raised (a bug keeps its traceback).
    """
    import errno
    import re

    from mlflow.exceptions import MlflowException
    from optuna.exceptions import StorageInternalError

    from ablations.search import resolve_storage
    from ablations.tracking import resolve_tracking_uri

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        what = f"no space to write {exc.filename or 'a file'} ({exc.strerror})"
    elif isinstance(exc, MlflowException) and "No space left on device" in str(exc):
        what = f"the tracking server has no space left for artifacts ({first})"
    elif isinstance(exc, MlflowException | OSError) and not isinstance(exc, FileNotFoundError):
        what = f"the MLflow tracking store {resolve_tracking_uri(tracking_uri)} failed ({first})"
    elif isinstance(exc, StorageInternalError):
        url = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", resolve_storage(storage))  # no password on screen
        what = f"the Optuna storage {url} failed ({first})"
    else:
        raise exc
    click.echo(
        f"Error: the study stopped: {what}.\n"
        "Finished cells are kept; the cell in progress is marked FAILED (its trial FAIL) and is trained "
        "again by the next run.\n"
        f"resume with: {_resume_command(study_file, profile)}",
        err=True,
    )
    sys.exit(1)


def _threads_per_worker(workers: int) -> int | None:
    import torch

    if workers == 1:
        return None
    return max(1, (os.cpu_count() or 1) // workers) if not torch.cuda.is_available() else None


def _worker_args(
    study_file: Path,
    profile: str,
    sets: tuple[str, ...],
    tracking_uri: str | None,
    storage: str | None,
    threads: int | None,
) -> list[str]:
    """The command line of one `ablate worker` for this run (same interpreter, same stores)."""
    from ablations.search import resolve_storage
    from ablations.tracking import resolve_tracking_uri

    args = [
        sys.executable,
        "-m",
        "ablations.cli",
        "worker",
        str(study_file),
        "--profile",
        profile,
        "--tracking-uri",
        resolve_tracking_uri(tracking_uri),
        "--storage",
        resolve_storage(storage),
    ]
    for item in sets:
        args += ["--set", item]
    return args + (["--threads", str(threads)] if threads else [])


@main.command()
@click.argument("study")
@click.option("--profile", default=None, help="Report this profile's runs (default: the newest).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "markdown", "latex", "html", "json"]),
    default="table",
    show_default=True,
    help="csv: one file per table with --output (FILE, FILE.effects.csv, FILE.claims.csv).",
)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write to a file.")
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="Significance level of the verdicts. [default: the study's alpha, else 0.05]",
)
@click.option(
    "--effect",
    type=click.FloatRange(0, min_open=True),
    default=None,
    metavar="SIZE",
    help="Effect size (percent points for accuracies) the seeds-needed column is computed for. "
    "[default: the claimed size, else the observed difference]",
)
@click.option(
    "--plots",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="Write the figures (effects, learning curves, per-class, effect by epoch) to DIR and log them to the "
    "parent run.",
)
@click.option(
    "--by-epoch",
    is_flag=True,
    help="Add each comparison's difference in the per-epoch metric (val_acc for test_acc) after every epoch, "
    "with pointwise 95% t intervals (descriptive: the verdicts stay the final metric's). JSON and HTML "
    "always carry it.",
)
@tracking_option
def report(
    study: str,
    profile: str | None,
    fmt: str,
    output: Path | None,
    alpha: float | None,
    effect: float | None,
    plots: Path | None,
    by_epoch: bool,
    tracking_uri: str | None,
) -> None:
    """The report of STUDY (its name, or its file): arms, effects with CIs, verdicts, claims.

    Read from MLflow alone. Given a study file, its current claims, baseline and
    alpha are used instead of those logged with the runs.
    """
    spec = None
    if study.endswith((".yaml", ".yml")):
        spec = _load(Path(study), None, ())
        study = spec.name
    from ablations.report import ReportError
    from ablations.search_report import load_search, render_search, search_plots, write_search

    try:
        search = load_search(study, tracking_uri, profile)
    except ReportError as exc:
        raise click.ClickException(str(exc)) from None
    if search is not None:  # a hyperparameter search: its trials sorted by value and the best config
        with _writing():
            _emit(output, lambda: render_search(search, fmt), lambda: write_search(search, fmt, output))
            for path in search_plots(search, plots) if plots else []:
                click.echo(f"wrote {path}")
        return
    _print_report(
        study, tracking_uri, profile, fmt, output, alpha, effect=effect, plots=plots, spec=spec, by_epoch=by_epoch
    )


def _emit(output: Path | None, text, write) -> None:
    """Print ``text()``, or with ``--output`` call ``write()`` and name the files it wrote."""
    if output is None:
        click.echo(text(), nl=False)
        return
    for path in write():
        click.echo(f"wrote {path}")


@contextlib.contextmanager
def _writing():
    """Turn a file that cannot be written (``--output``, ``--plots``) into an error that names it."""
    try:
        yield
    except OSError as exc:
        raise click.ClickException(f"cannot write {exc.filename or ''}: {exc.strerror or exc}") from None


@main.command("runs")
@click.argument("study")
@click.option("--profile", default=None, help="List this profile's runs (default: the newest).")
@tracking_option
def runs_cmd(study: str, profile: str | None, tracking_uri: str | None) -> None:
    """The finished runs of STUDY (its name, or its file): arm, seed, study metric and MLflow run ID.

    The run IDs are what ``ablate evaluate`` and ``ablate predict --run`` take.
    """
    from tabulate import tabulate

    from ablations.report import ReportError, load_runs
    from ablations.search_report import load_search

    if study.endswith((".yaml", ".yml")):
        study = _load(Path(study), None, ()).name
    try:
        search = load_search(study, tracking_uri, profile)
        sr = None if search is not None else load_runs(study, tracking_uri, profile)
    except ReportError as exc:
        raise click.ClickException(str(exc)) from None
    if search is not None:  # a hyperparameter search: its trials, best first
        for a in search.arms:
            click.echo(f"search {study}{f' [{a.arm}]' if a.arm else ''}, parent run {a.parent_run_id}")
            cols = ["number", "state", "value", "run_id"]
            table = a.trials[cols].astype(object).where(a.trials[cols].notna(), "") if not a.trials.empty else []
            click.echo(tabulate(table, headers=["trial", "state", search.metric, "run id"], showindex=False))
        return
    click.echo(f"study {sr.study}, profile {sr.profile}, parent run {sr.parent_run_id}")
    if sr.runs.empty:
        click.echo("no finished runs yet")
        return

    def file_order(r: dict) -> tuple:  # arms in the order of the study file's levels, then seeds
        levels = [sr.factors[f].index(r[f]) if r.get(f) in sr.factors[f] else len(sr.factors[f]) for f in sr.factors]
        return (*levels, r["seed"])

    rows = sorted(sr.runs.to_dict("records"), key=file_order)
    table = [[r["arm"], r["seed"], f"{r.get(sr.metric, float('nan')):.4f}", r["run_id"]] for r in rows]
    click.echo(tabulate(table, headers=["arm", "seed", sr.metric, "run id"], disable_numparse=True))
    if sr.failed:
        click.echo(f"and {sr.failed} failed or killed run(s): `ablate report {sr.study}` lists them")


def _print_report(
    name: str,
    tracking_uri: str | None,
    profile: str | None,
    fmt: str,
    output: Path | None,
    alpha: float | None = None,
    *,
    effect: float | None = None,
    plots: Path | None = None,
    spec=None,
    by_epoch: bool = False,
):
    """Print (or write to ``output``) the report of study ``name``; return it (an ``ablations.report.Report``).

    ``by_epoch`` (and the ``json`` and ``html`` formats) add the effect by epoch (``ablations.report.effect_by_epoch``).
    """
    from ablations.rendering import render, write_plots, write_report
    from ablations.report import ReportError, build_report, effect_by_epoch, load_runs

    try:
        runs = load_runs(name, tracking_uri, profile)
        if spec is not None:  # the study file's current claims, baseline and alpha
            runs.claims = spec.claim_records()
            runs.baseline, runs.alpha = dict(spec.baseline), spec.alpha
        rep = build_report(runs, alpha, effect)
        if by_epoch or fmt in ("json", "html"):
            rep.by_epoch = effect_by_epoch(rep)
    except ReportError as exc:
        raise click.ClickException(str(exc)) from None
    with _writing():
        _emit(output, lambda: render(rep, fmt), lambda: write_report(rep, fmt, output))
        paths = write_plots(rep, plots) if plots else []
    if plots:
        for path in paths:
            click.echo(f"wrote {path} (logged to parent run {rep.runs.parent_run_id} as report/{path.name})")
        if "per_class.png" not in {p.name for p in paths}:
            click.echo("no per_class.png: the runs have no per-class metrics (test_acc_class_<class>)")
    return rep


@main.command()
@click.argument("study", required=False)
@click.option("--profile", default=None, help="With STUDY: show this profile's runs (default: the newest).")
@click.option("--port", type=int, default=5000, show_default=True)
@click.option("--open", "open_browser", is_flag=True, help="Open the study's page in a browser once the UI answers.")
@tracking_option
def ui(study: str | None, profile: str | None, port: int, open_browser: bool, tracking_uri: str | None) -> None:
    """Start the MLflow UI on 127.0.0.1 for the project's store and print the page of each study's runs.

    STUDY (its name or file; default: every study in the store) opens in MLflow's model-training view on
    its child runs, one expanded group per arm with the arm's mean of the study metric, a column per
    factor, the metric and the seed; its parent run gets the report (description, report/ artifacts).
    With a tracking server (--tracking-uri http://...) nothing is started: the pages on it are printed.
    """
    from ablations.tracking import Tracker, resolve_tracking_uri
    from ablations.ui import UIError, prepare_view, studies, study_url

    if study and study.endswith((".yaml", ".yml")):
        study = _load(Path(study), None, ()).name
    uri = resolve_tracking_uri(tracking_uri)
    server = uri.startswith(("http://", "https://"))
    base = uri.rstrip("/") if server else f"http://127.0.0.1:{port}"
    tracker = Tracker(uri)
    try:  # before the UI starts: an unknown study is an error at once
        names = [study] if study else studies(tracker)
        views = [prepare_view(tracker, name, profile if study else None) for name in names]
    except UIError as exc:
        raise click.ClickException(str(exc)) from None
    urls = [study_url(base, view) for view in views]
    if server:
        _list_views(views, urls, uri, base)
        if open_browser and urls:
            webbrowser.open(urls[0])
        return
    click.echo(f"MLflow UI for {uri} on {base} (Ctrl-C to stop)")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    # mlflow ui starts uvicorn, a job runner and its huey consumers (about 180 MB each). In a process group of
    # their own they can all be stopped together when this process ends, by Ctrl-C or by SIGTERM.
    group = hasattr(os, "killpg")
    proc = subprocess.Popen(cmd, env=os.environ.copy(), start_new_session=group)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    rc = 0
    try:
        _list_views(views, urls, uri, base)
        if not views:
            click.echo("no studies in this store yet: `ablate run STUDY.yaml` makes one")
        if open_browser:
            _open_when_up(proc, base, urls[0] if urls else base)
        rc = proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if group:
            _stop_group(proc)
        else:
            proc.terminate()
    sys.exit(rc)


def _list_views(views, urls: list[str], uri: str, base: str) -> None:
    """Print each study's page, and put its report on its parent run (a report that fails is a warning)."""
    from ablations.ui import publish_report, run_url

    for view, url in zip(views, urls, strict=True):
        click.echo(f"{view.study}{f' (profile {view.profile})' if view.profile else ''}: {url}")
        try:
            parent = publish_report(view.study, uri, view.profile or None)
        except Exception as exc:  # noqa: BLE001 (the UI is still worth starting)
            click.echo(f"  could not put the report on the parent run: {exc}", err=True)
            continue
        if parent:
            click.echo(
                f"  the report (per-arm means and intervals, figures) is on parent run {parent}: "
                + run_url(base, view.experiment_id, parent)
            )


def _open_when_up(proc: subprocess.Popen, base: str, url: str, timeout_s: float = 120.0) -> None:
    """Open ``url`` in a web browser once the UI at ``base`` answers (or say it did not)."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                webbrowser.open(url)
                return
        except OSError:
            time.sleep(0.5)
    click.echo(f"the MLflow UI did not answer at {base}; open {url} yourself", err=True)


def _stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the process group led by ``proc``; SIGKILL what is left of it after ``grace_s`` seconds."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader, so that an empty group reads as gone
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


@main.command("evaluate")
@click.argument("run_id", required=False)
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), help="A weights file instead of a run.")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --checkpoint: the run's config.yaml (default: the cnn4 defaults).",
)
@click.option(
    "--import",
    "imports",
    multiple=True,
    metavar="CODE",
    help="With --checkpoint: code that registers the run's model, a file or module as in a study's imports: "
    "(a RUN_ID imports the code it logged itself).",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write the figures and per-class table to this folder.",
)
@tracking_option
def evaluate_cmd(
    run_id: str | None,
    checkpoint: Path | None,
    config_file: Path | None,
    imports: tuple[str, ...],
    output: Path | None,
    tracking_uri: str | None,
) -> None:
    """Test loss, top-1/top-3, per-class accuracy, confusion matrix and misclassified images of RUN_ID.

    With RUN_ID, everything is also logged to that MLflow run (metrics ``eval_*``, artifacts under ``evaluation/``).
    """
    from ablations.inference import (
        InferenceError,
        confusion_figure,
        evaluate_checkpoint,
        load_checkpoint,
        load_run,
        misclassified_figure,
    )
    from core.config import RunConfig
    from core.data import DataError

    if bool(run_id) == bool(checkpoint):
        raise click.UsageError("give a RUN_ID or --checkpoint PATH (one of them)")
    if imports and run_id:
        raise click.UsageError("--import goes with --checkpoint: a RUN_ID imports the code it logged")
    from core.models.plugins import PluginError, import_code

    try:
        for code in imports:
            import_code(code)
    except PluginError as exc:
        raise click.ClickException(f"--import {exc}") from None
    try:
        if run_id:
            loaded = load_run(run_id, tracking_uri)
        else:
            cfg = RunConfig.model_validate(yaml.safe_load(config_file.read_text())) if config_file else None
            loaded = load_checkpoint(checkpoint, cfg)
        res = evaluate_checkpoint(loaded)
    except (InferenceError, DataError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"test loss {res['test_loss']:.4f}  top-1 {100 * res['test_acc']:.2f}%  top-3 {100 * res['test_top3']:.2f}%"
    )
    click.echo("per-class top-1 accuracy:")
    for name, acc in res["per_class"].items():
        click.echo(f"  {name:12s} {100 * acc:6.2f}%")
    figs = {
        "confusion_matrix.png": confusion_figure(res["confusion"]),
        "misclassified.png": misclassified_figure(res["wrong"]),
    }
    per_class_csv = "class,top1\n" + "".join(f"{k},{v:.4f}\n" for k, v in res["per_class"].items())
    if output:
        output.mkdir(parents=True, exist_ok=True)
        for name, fig in figs.items():
            fig.savefig(output / name, dpi=120)
        (output / "per_class.csv").write_text(per_class_csv)
        click.echo(f"wrote {output}/confusion_matrix.png, misclassified.png, per_class.csv")
    if run_id:
        from ablations.tracking import Tracker

        tracker = Tracker(tracking_uri)
        metrics = {f"eval_{k}": res[k] for k in ("test_loss", "test_acc", "test_top3")}
        metrics.update({f"eval_test_acc_class_{k}": v for k, v in res["per_class"].items()})
        tracker.log_metrics(run_id, metrics, step=0)
        for name, fig in figs.items():
            tracker.log_figure(run_id, fig, f"evaluation/{name}")
        tracker.client.log_text(run_id, per_class_csv, "evaluation/per_class.csv")
        click.echo(f"logged to MLflow run {run_id} (artifacts under evaluation/)")


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--run", "run_id", required=True, help="The MLflow run whose checkpoint predicts.")
@click.option("--top-k", type=click.IntRange(1, 10), default=1, show_default=True, help="Print the k best classes.")
@click.option("--show", is_flag=True, help="Save (and open, where a display exists) the 32x32 image the model saw.")
@tracking_option
def predict(images: tuple[Path, ...], run_id: str, top_k: int, show: bool, tracking_uri: str | None) -> None:
    """Predict the class of IMAGES (JPEG, PNG or GIF of any size, resized to 32x32) with a run's model."""
    from ablations.inference import InferenceError, load_run, predict_files

    try:
        loaded = load_run(run_id, tracking_uri)
    except InferenceError as exc:
        raise click.ClickException(str(exc)) from None
    failed = 0
    for res in predict_files(loaded, list(images), top_k):
        if "error" in res:
            failed += 1
            click.echo(f"error: {res['error']}", err=True)
            continue
        best, conf = res["top"][0]
        click.echo(f"{res['path']}: {best} ({100 * conf:.1f}%)")
        if top_k > 1:
            for rank, (name, p) in enumerate(res["top"], 1):
                click.echo(f"  {rank}. {name:12s} {100 * p:5.1f}%")
        if show:
            _show(Path(res["path"]), res["image"])
    if failed:
        sys.exit(1)


def _show(path: Path, image) -> None:
    from PIL import Image

    out = path.with_name(path.stem + ".seen.png")
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(out)
    click.echo(f"  the model saw: {out}")
    if os.environ.get("DISPLAY") or sys.platform in ("darwin", "win32"):
        click.launch(str(out))


@main.command()
@click.option(
    "--study",
    "study_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also the models the code this study file imports registers (its `imports:`).",
)
def models(study_file: Path | None) -> None:
    """List the registered models with their options (model.options.<key>) and where each comes from.

    The built-in presets, those of installed packages (entry points of the group ablate.models) and,
    with --study, those of the study's `imports:`.
    """
    from tabulate import tabulate

    from ablations.study import import_study_code
    from core.config import ConfigError
    from core.models import list_models
    from core.models.registry import preset_info

    try:
        if study_file is not None:
            import_study_code(study_file)
        names = list_models()
    except (StudyError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None

    def shown(v) -> str:
        return yaml.safe_dump(v, default_flow_style=True, width=1000).strip().removesuffix("...").strip()

    rows = []
    for name in names:
        info = preset_info(name)
        options = ", ".join(f"{k}={shown(v)}" for k, v in info["options"].items()) or "-"
        origin = info["origin"]
        if origin is not None:
            with contextlib.suppress(ValueError):
                origin = str(Path(origin).relative_to(Path.cwd()))
        rows.append([name, options, origin or "built in"])
    click.echo(tabulate(rows, headers=["model", "options (default)", "from"], disable_numparse=True))


def _load(
    path: Path, profile: str | None, sets: tuple[str, ...], until_decided: bool = False, max_seeds: int | None = None
):
    try:
        return load_study(path, profile, parse_sets(sets), until_decided, max_seeds)
    except (StudyError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
