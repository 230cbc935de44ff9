"""Progress of a run in logs: one line per epoch where tqdm's bars are not drawn.

On a terminal the runner and the search draw tqdm bars. tqdm draws them only when its stream
(stderr) is a terminal, so under ``nohup``, in a Slurm job's log or in CI a long run would print
nothing between the study's budget and its result. There :class:`EpochLines` prints one plain
line per epoch of each run on stdout, as PyTorch Lightning and Keras do in logs::

    [1/4] batchnorm=true seed=0: epoch 2/30, train_loss 1.234, val_acc 45.6%, 1850 images/s, ETA 12 min

:func:`epoch_lines_wanted` decides: lines when stdout or stderr is not a terminal (with stdout
piped to a log and stderr on a terminal, the bars stay on the terminal and the log gets lines).
"""

from __future__ import annotations

import math
import sys
import time
from typing import IO

from tqdm import tqdm

from ablations.budget import format_seconds
from core.config import RunConfig
from core.train import Callback

__all__ = ["EpochLines", "epoch_line", "epoch_lines_wanted"]


def _is_terminal(stream: IO[str] | None) -> bool:
    try:
        return stream is not None and bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed file
        return False


def epoch_lines_wanted() -> bool:
    """Whether runs should print one line per epoch: stdout or stderr (where tqdm draws) is not a terminal.

    Checked when a run starts, so a test or a caller that swaps ``sys.stdout`` sees its own stream.
    """
    return not (_is_terminal(sys.stdout) and _is_terminal(sys.stderr))


def epoch_line(label: str, epoch: int, epochs: int, metrics: dict[str, float], eta_s: float) -> str:
    """One epoch of one run as a log line.

    Args:
        label: the run's name, e.g. ``[1/4] batchnorm=true seed=0`` (the runner's) or ``trial 3`` (the search's).
        epoch: the epoch just finished, counted from 1.
        epochs: the run's ``train.epochs``.
        metrics: that epoch's metrics (``core.train.Callback.on_epoch_end``): ``train_loss``, ``val_acc``
            (a fraction in [0, 1]; NaN without a validation set) and ``images_per_s`` are shown.
        eta_s: seconds the run still needs for its remaining epochs (its test evaluation is not counted).

    Returns:
        e.g. ``[1/4] batchnorm=true seed=0: epoch 2/30, train_loss 1.234, val_acc 45.6%, 1850 images/s, ETA 12 min``.
    """
    val = metrics.get("val_acc", math.nan)
    shown_val = f"{100 * val:.1f}%" if math.isfinite(val) else "n/a"
    return (
        f"{label}: epoch {epoch}/{epochs}, train_loss {metrics.get('train_loss', math.nan):.3f}, "
        f"val_acc {shown_val}, {metrics.get('images_per_s', math.nan):.0f} images/s, ETA {format_seconds(eta_s)}"
    )


class EpochLines(Callback):
    """Print :func:`epoch_line` on stdout after every epoch of one run (through ``tqdm.write``, then flushed).

    The ETA is the run's mean wall time per epoch so far (training and validation) times the epochs
    left; early stopping can end the run sooner. A failing write (a closed or broken stdout) stops
    the lines, never the run.

    Args:
        label: the run's name, printed first on each line.
    """

    def __init__(self, label: str) -> None:
        self.label, self.epochs, self.t0, self.broken = label, 0, 0.0, False

    def on_fit_start(self, cfg: RunConfig, steps_per_epoch: int) -> None:
        """Note the number of epochs and start the clock."""
        self.epochs, self.t0 = cfg.train.epochs, time.monotonic()

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """Print this epoch's line."""
        if self.broken:
            return
        per_epoch = (time.monotonic() - self.t0) / epoch
        line = epoch_line(self.label, epoch, self.epochs, metrics, per_epoch * (self.epochs - epoch))
        try:
            tqdm.write(line)  # clears and redraws any bar on the same terminal
            sys.stdout.flush()  # a log file is block-buffered: show the epoch now
        except (OSError, ValueError):
            self.broken = True
