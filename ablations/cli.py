"""The ``ablate`` command line: run, report, ui, models.

Every command that reads or writes runs takes ``--tracking-uri`` (default
``sqlite:///mlruns/mlflow.db`` or ``$MLFLOW_TRACKING_URI``) and, where it
touches Optuna, ``--storage`` (default ``sqlite:///mlruns/optuna.db``).
"""

from __future__ import annotations

import os
import subprocess
import sys
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
@tracking_option
@storage_option
def run(
    study_file: Path,
    profile: str | None,
    sets: tuple[str, ...],
    dry_run: bool,
    no_report: bool,
    tracking_uri: str | None,
    storage: str | None,
) -> None:
    """Train every cell (factor levels x seeds) of STUDY_FILE not yet finished; log each to MLflow."""
    study = _load(study_file, profile, sets)
    cells = study.cells()
    if dry_run:
        click.echo(f"study {study.name} (profile {study.profile}, key {study.key}): {len(cells)} cells")
        click.echo(f"question: {study.question}")
        for i, cell in enumerate(cells, 1):
            click.echo(f"  {i:3d}. {cell.key}")
        click.echo(f"\nresolved config of '{cells[0].key}':")
        click.echo(yaml.safe_dump(study.cell_config(cells[0]).model_dump(mode="json"), sort_keys=False))
        return

    from ablations.runner import run_study
    from ablations.search import GRACE_S
    from core.data import DataError

    click.echo(f"study {study.name} (profile {study.profile}): {len(cells)} cells; {study.question}")
    try:
        summary = run_study(study, tracking_uri, storage)
    except DataError as exc:
        raise click.ClickException(f"{exc}") from None
    except KeyboardInterrupt:
        click.echo(
            f"\ninterrupted: finished cells are kept; the current run is marked KILLED.\n"
            f"resume with: ablate run {study_file}" + (f" --profile {profile}" if profile else ""),
            err=True,
        )
        sys.exit(130)
    click.echo(
        f"trained {len(summary.trained)} cell(s), {summary.skipped} already finished, "
        f"{len(summary.failed)} failed; MLflow parent run {summary.parent_run_id}"
    )
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
        _print_report(study.name, tracking_uri, study.profile, "table", None, 0.05)


@main.command()
@click.argument("study")
@click.option("--profile", default=None, help="Report this profile's runs (default: the newest).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "markdown"]), default="table", show_default=True)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write to a file.")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="Significance level of the verdicts.")
@tracking_option
def report(
    study: str, profile: str | None, fmt: str, output: Path | None, alpha: float, tracking_uri: str | None
) -> None:
    """The results table of STUDY (its name, or its file): mean, CI, effect vs baseline, verdict."""
    name = load_study(study).name if study.endswith((".yaml", ".yml")) else study
    _print_report(name, tracking_uri, profile, fmt, output, alpha)


def _print_report(
    name: str, tracking_uri: str | None, profile: str | None, fmt: str, output: Path | None, alpha: float
) -> None:
    from ablations.report import ReportError, arm_table, format_table, load_runs

    try:
        runs = load_runs(name, tracking_uri, profile)
        text = format_table(runs, arm_table(runs, alpha), fmt)
    except ReportError as exc:
        raise click.ClickException(str(exc)) from None
    if output:
        output.write_text(text)
        click.echo(f"wrote {output}")
    else:
        click.echo(text)


@main.command()
@click.option("--port", type=int, default=5000, show_default=True)
@tracking_option
def ui(port: int, tracking_uri: str | None) -> None:
    """Start the MLflow UI on 127.0.0.1 for the project's store."""
    from ablations.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith(("http://", "https://")):
        raise click.ClickException(f"{uri} is a tracking server: open it in a browser instead")
    click.echo(f"MLflow UI for {uri} on http://127.0.0.1:{port} (Ctrl-C to stop)")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    try:
        sys.exit(subprocess.call(cmd, env=os.environ.copy()))
    except KeyboardInterrupt:
        sys.exit(0)


@main.command()
def models() -> None:
    """List the registered models."""
    from core.models import list_models

    for name in list_models():
        click.echo(name)


def _load(path: Path, profile: str | None, sets: tuple[str, ...]):
    try:
        return load_study(path, profile, parse_sets(sets))
    except (StudyError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
