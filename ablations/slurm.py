"""``ablate run --launcher slurm``: the study's workers as a Slurm job array, submitted with submitit.

``ablate run`` queues the cells (or opens the search) as always, then, instead of starting
``ablate worker`` processes on this machine, submits N jobs of one array, each running the same
``ablate worker`` command line against the same ``--storage`` and ``--tracking-uri``, and follows
them: the study's progress, every job's ID and state (from ``squeue``, which needs no accounting
database), until none is left in the queue. Ctrl-C cancels the jobs it submitted (``scancel``), waits
for them to leave the queue (each worker marks its run KILLED on the SIGTERM) and re-raises.

Workers on other nodes cannot share SQLite files: :func:`check_shared_stores` refuses them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SlurmError", "SlurmLauncher", "SlurmOptions", "check_shared_stores", "parse_time", "study_progress"]

POLL_S = 5.0  # how often the queue is read while following the jobs
FINAL_STATES = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "REVOKED",
    "TIMEOUT",
}


class SlurmError(RuntimeError):
    """Slurm cannot be used here: no submitit or sbatch, local stores, a bad option, a refused submission."""


@dataclass
class SlurmOptions:
    """What each worker job asks Slurm for (``--slurm-*`` options of ``ablate run``)."""

    partition: str | None = None
    time_min: int = 240  # submitit's own default is 5 minutes: far too short for training
    cpus_per_worker: int | None = None
    gpus_per_worker: int | None = None
    mem: str | None = None  # Slurm's --mem, e.g. 16G
    account: str | None = None
    qos: str | None = None
    setup: list[str] = field(default_factory=list)  # shell lines before the worker, e.g. module load
    extra: dict[str, str] = field(default_factory=dict)  # any other sbatch option, without the dashes
    folder: Path = Path("slurm-jobs")  # submitit's pickles and the jobs' logs; must be on a shared disk
    job_name: str = "ablate-worker"


def parse_time(text: str) -> int:
    """Minutes from a Slurm time limit: ``90``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``, ``D-HH:MM:SS``.

    Raises:
        SlurmError: ``text`` is none of these forms.
    """
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise SlurmError(f"--slurm-time {text!r}: expected minutes, HH:MM:SS or D-HH:MM:SS")
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        minutes = int(days) * 1440 + int(a) * 60 + int(b or 0) + (1 if c and int(c) else 0)
    elif c is not None:  # HH:MM:SS
        minutes = int(a) * 60 + int(b) + (1 if int(c) else 0)
    elif b is not None:  # MM:SS
        minutes = int(a) + (1 if int(b) else 0)
    else:
        minutes = int(a)
    if minutes < 1:
        raise SlurmError(f"--slurm-time {text!r}: at least one minute")
    return minutes


def check_shared_stores(tracking_uri: str, storage: str) -> None:
    """Refuse stores that workers on other nodes cannot share.

    Args:
        tracking_uri: the resolved MLflow tracking URI.
        storage: the resolved Optuna storage URL.

    Raises:
        SlurmError: either is a SQLite file or a local path, naming what to use instead.
    """
    bad = []
    if storage.startswith("sqlite"):
        bad.append(f"--storage {storage} (SQLite: use postgresql://USER:PASSWORD@HOST/DB)")
    if not re.match(r"^(https?|postgresql|mysql|mssql|databricks)[+:]", tracking_uri):
        bad.append(f"--tracking-uri {tracking_uri} (a local store: use an MLflow tracking server, http://HOST:5000)")
    if bad:
        raise SlurmError(
            "--launcher slurm runs workers on other nodes, which cannot share local or SQLite stores: "
            + "; ".join(bad)
            + ". See docs/scaling.md, 'Many machines' and 'Slurm'."
        )


def study_progress(study, storage: str) -> str:
    """One line on how far ``study`` is, read from its Optuna storage: finished and running cells or trials."""
    import optuna
    from optuna.trial import TrialState

    storage_obj = optuna.storages.RDBStorage(storage)
    names = [n for n in optuna.get_all_study_names(storage_obj) if n == study.key or n.startswith(study.key + ":")]
    trials = []
    for name in names:
        trials += optuna.load_study(study_name=name, storage=storage_obj).get_trials(deepcopy=False)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    if study.search is None:
        keys = {c.key for c in study.cells()}
        done = len({t.user_attrs.get("cell") for t in trials if t.state == TrialState.COMPLETE} & keys)
        return f"{done}/{len(keys)} cells finished, {running} running"
    done = sum(t.state.is_finished() and t.user_attrs.get("outcome") != "over_cap" for t in trials)
    return f"{done} trial(s) finished, {running} running"


class SlurmLauncher:
    """Submit ``n`` copies of the ``ablate worker`` command as one Slurm job array and follow them.

    Called like :func:`ablations.runner.run_workers` (``launcher(n, args)``), so ``run_study`` and the
    search use it in its place.

    Args:
        options: what each job asks for.
        progress: returns one line on the study's progress (see :func:`study_progress`).
        echo: where the follow-up lines go (default: stderr).
    """

    def __init__(
        self,
        options: SlurmOptions,
        progress: Callable[[], str] | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.options, self.progress = options, progress
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self.jobs: list = []

    def executor(self):
        """The submitit executor for the worker jobs.

        Raises:
            SlurmError: submitit is not installed or there is no ``sbatch`` on PATH.
        """
        try:
            import submitit
        except ImportError:
            raise SlurmError('--launcher slurm needs submitit: pip install "ablate[slurm]"') from None
        if shutil.which("sbatch") is None:
            raise SlurmError("--launcher slurm: no sbatch on PATH (run it on a Slurm login node)")
        o = self.options
        folder = o.folder.resolve()
        folder.mkdir(parents=True, exist_ok=True)
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
        params = {
            "name": o.job_name,
            "timeout_min": o.time_min,
            "tasks_per_node": 1,
            "cpus_per_task": o.cpus_per_worker,
            "gpus_per_node": o.gpus_per_worker,
            "slurm_partition": o.partition,
            "slurm_mem": o.mem,
            "slurm_account": o.account,
            "slurm_qos": o.qos,
            "slurm_setup": o.setup or None,
            "slurm_additional_parameters": o.extra or None,
        }
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
        return executor

    def __call__(self, n: int, args: list[str]) -> None:
        """Submit ``n`` jobs running ``args`` (an ``ablate worker`` command line) and wait until all left the queue.

        Raises:
            SlurmError: the submission failed (sbatch's message).
            KeyboardInterrupt: after cancelling the submitted jobs.
        """
        import submitit

        executor = self.executor()
        executor.update_parameters(slurm_array_parallelism=n)
        command = submitit.helpers.CommandFunction(args, verbose=True, cwd=str(Path.cwd()))
        try:
            with executor.batch():
                jobs = [executor.submit(command) for _ in range(n)]
        except Exception as exc:  # sbatch refused: a bad partition, a time over the limit, ...
            raise SlurmError(f"sbatch refused the worker jobs: {exc}".strip()) from None
        self.jobs = jobs
        ids = ", ".join(j.job_id for j in jobs)
        self.echo(f"slurm: submitted {n} worker job(s): {ids} (logs in {self.options.folder.resolve()})")
        try:
            self._follow()
        except KeyboardInterrupt:
            self.cancel()
            raise
        self._report()

    def array_id(self) -> str:
        return self.jobs[0].job_id.split("_")[0] if self.jobs else ""

    def queue(self) -> dict[str, str]:
        """The submitted jobs still in the queue: job id -> state (PENDING, RUNNING, ...)."""
        if not self.jobs:
            return {}
        ids = sorted({j.job_id.split("_")[0] for j in self.jobs})
        try:
            out = subprocess.run(
                ["squeue", "-h", "-r", "-j", ",".join(ids), "-o", "%i|%T"],
                capture_output=True,
                text=True,
                timeout=60,
            )
        except (OSError, subprocess.TimeoutExpired):
            return {j.job_id: "UNKNOWN" for j in self.jobs}
        if out.returncode != 0:  # squeue says "Invalid job id" once every job of the array has left
            return {} if "Invalid job id" in out.stderr else {j.job_id: "UNKNOWN" for j in self.jobs}
        queue = dict(line.split("|", 1) for line in out.stdout.split() if "|" in line)
        # A finished job stays listed for MinJobAge seconds (300 by default) in a final state.
        return {jid: state for jid, state in queue.items() if state not in FINAL_STATES}

    def _follow(self) -> None:
        last = None
        while True:
            queue = self.queue()
            states = ", ".join(f"{jid} {queue.get(jid, 'done')}" for jid in (j.job_id for j in self.jobs))
            line = (f"{self.progress()}; " if self.progress else "") + f"jobs: {states}"
            if line != last:
                self.echo(f"slurm: {line}")
                last = line
            if not queue:
                return
            time.sleep(POLL_S)

    def _report(self) -> None:
        """One line per job that failed: its error and where its log is."""
        for job in self.jobs:
            if not job.paths.result_pickle.exists():
                self.echo(f"slurm: job {job.job_id} ended without a result; its log: {job.paths.stderr}")
                continue
            try:
                job.result()
            except Exception as exc:
                last = str(exc).strip().splitlines()[-1:] or [""]
                self.echo(f"slurm: job {job.job_id} failed ({last[0]}); its log: {job.paths.stderr}")

    def cancel(self, wait_s: float = 120) -> None:
        """Cancel the submitted jobs and wait up to ``wait_s`` seconds for them to leave the queue."""
        if not self.jobs:
            return
        ids = sorted({j.job_id.split("_")[0] for j in self.jobs})
        subprocess.run(["scancel", *ids], check=False)
        self.echo(f"slurm: cancelled job(s) {', '.join(j.job_id for j in self.jobs)}; waiting for them to stop")
        deadline = time.monotonic() + wait_s
        try:
            while self.queue() and time.monotonic() < deadline:
                time.sleep(1)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
            pass
