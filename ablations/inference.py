"""Use a trained run: evaluate its checkpoint on the test set, or predict the class of image files.

Both read the run's resolved ``config.yaml`` and ``checkpoint/best.pt`` from
MLflow (or a checkpoint file given directly), so the model is rebuilt exactly
as it was trained and images are normalised with the statistics that run used.
A run of a study with ``imports:`` (a user's own model) also logged that code
(``code/<file>``, tag ``ablate.code``): it is imported again from the run, so a
fresh process in any folder rebuilds the model from the code that trained it.
Seed 002's error analysis (per-class accuracy, confusion matrix, misclassified
test images) and seed 000's single-image inference are the models.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from core.augment import normalize  # noqa: E402
from core.config import ConfigError, RunConfig  # noqa: E402
from core.data import CLASSES, load_splits  # noqa: E402
from core.metrics import per_class_accuracy  # noqa: E402
from core.models import create_model  # noqa: E402
from core.train import evaluate, memory_format, resolve_config, select_device  # noqa: E402

__all__ = [
    "InferenceError",
    "LoadedModel",
    "confusion_figure",
    "evaluate_checkpoint",
    "load_checkpoint",
    "load_run",
    "misclassified_figure",
    "predict_files",
]


class InferenceError(RuntimeError):
    """A run without a checkpoint, a missing file, or an image that cannot be read."""


@dataclass
class LoadedModel:
    """A rebuilt model in eval mode with the config it was trained with.

    Attributes:
        model: maps float (B, 3, 32, 32) to logits (B, 10), on ``device``.
        config: the run's resolved config (normalisation statistics in ``config.augment``).
        device: where the model lives.
        run_id: the MLflow run it came from, if any.
    """

    model: torch.nn.Module
    config: RunConfig
    device: torch.device
    run_id: str | None = None


def load_checkpoint(checkpoint: str | Path, config: RunConfig | None = None, device: str = "auto") -> LoadedModel:
    """Rebuild a model from a weights-only checkpoint and a run config.

    Args:
        checkpoint: a ``torch.save``-d state dict (``checkpoint/best.pt`` of a run).
        config: the run's config; the defaults (``cnn4``) when ``None``.
        device: ``auto``, ``cpu``, ``cuda``, ...

    Raises:
        InferenceError: the file is missing or does not fit the model, or the config names a model
            not registered here.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise InferenceError(f"{path}: no such checkpoint file")
    try:
        cfg = resolve_config(config or RunConfig())
    except ConfigError as exc:  # e.g. a model of the user's own whose code is not imported here
        hint = "; a model of your own: give --import with its file" if "unknown model" in str(exc) else ""
        raise InferenceError(f"{path}: {exc}{hint}") from None
    dev = select_device(device)
    # Build from the checkpoint itself: the pretrained file the run started from may not be on this machine.
    try:
        model = create_model(cfg.model.model_copy(update={"weights": str(path)}))
    except ConfigError as exc:
        raise InferenceError(f"{path}: does not fit model '{cfg.model.name}': {exc}") from None
    model = model.to(dev, memory_format=memory_format(cfg, dev)).eval()
    return LoadedModel(model, cfg, dev)


def load_run(run_id: str, tracking_uri: str | None = None, device: str = "auto") -> LoadedModel:
    """Load the best checkpoint and config of MLflow run ``run_id``.

    Raises:
        InferenceError: no such run, or the run has no checkpoint (it failed or is still running).
    """
    from mlflow.exceptions import MlflowException

    from ablations.tracking import StoreNotFoundError, Tracker

    try:
        tracker = Tracker(tracking_uri, create=False)
    except StoreNotFoundError as exc:
        raise InferenceError(str(exc)) from None
    try:
        run = tracker.client.get_run(run_id)
    except MlflowException:
        raise InferenceError(f"no run '{run_id}' in {tracker.uri}") from None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cfg_path = tracker.client.download_artifacts(run_id, "config.yaml", tmp)
            ckpt = tracker.client.download_artifacts(run_id, "checkpoint/best.pt", tmp)
        except (MlflowException, OSError):
            raise InferenceError(
                f"run '{run_id}' ({run.info.run_name}, {run.info.status}) has no checkpoint: "
                "only finished cells of `ablate run` have one"
            ) from None
        cfg = RunConfig.model_validate(yaml.safe_load(Path(cfg_path).read_text()))
        _import_run_code(tracker, run_id, run.data.tags, Path(tmp))
        loaded = load_checkpoint(ckpt, cfg, device)
    loaded.run_id = run_id
    return loaded


def _import_run_code(tracker, run_id: str, tags: dict[str, str], tmp: Path) -> None:
    """Import the code a run logged (tag ``ablate.code``, artifacts ``code/<name>``), in the order it was imported.

    Code already imported in this process (the same SHA-256) is not run again.

    Raises:
        InferenceError: an artifact is missing, differs from its recorded SHA-256, or fails to import.
    """
    import hashlib
    import json

    from mlflow.exceptions import MlflowException

    from ablations.tracking import CODE_TAG
    from core.models.plugins import PluginError, import_file

    files = json.loads(tags.get(CODE_TAG) or "[]")
    if not files:
        return
    try:
        folder = Path(tracker.client.download_artifacts(run_id, "code", str(tmp)))
    except (MlflowException, OSError):
        raise InferenceError(f"run '{run_id}' records code ({CODE_TAG}) but has no code/ artifacts") from None
    for entry in files:
        path = folder / entry["name"]
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        if hashlib.sha256(text.encode()).hexdigest() != entry["sha256"]:
            raise InferenceError(f"run '{run_id}': code/{entry['name']} is missing or not the code the run recorded")
        try:
            import_file(path, name=entry["name"], spec=f"code/{entry['name']} of run {run_id}")
        except PluginError as exc:
            raise InferenceError(f"run '{run_id}': its code does not import here: {exc}") from None


def evaluate_checkpoint(loaded: LoadedModel) -> dict:
    """Test-set metrics of a loaded model on the data its config names.

    Returns:
        ``test_loss``, ``test_acc``, ``test_top3`` (accuracies in [0, 1]), ``per_class``
        (class -> accuracy), ``confusion`` (int64 (10, 10), rows = true class) and
        ``wrong``: up to 32 misclassified test images as (uint8 (3, 32, 32), true, predicted).

    Raises:
        core.data.DataError: the data set cannot be loaded.
    """
    cfg = loaded.config
    splits = load_splits(cfg.data).to(loaded.device)
    out = evaluate(loaded.model, splits.test_x, splits.test_y, cfg, topk=(1, 3), num_classes=cfg.model.num_classes)
    # The test set is ordered by class: look for mistakes in a fixed random sample of it, not its start.
    sample = torch.randperm(len(splits.test_x), generator=torch.Generator().manual_seed(0))[:2000].to(loaded.device)
    preds = _predict(loaded, splits.test_x[sample]).argmax(dim=1)
    wrong = (preds != splits.test_y[sample]).nonzero().flatten()[:32].tolist()
    return {
        "test_loss": out["loss"],
        "test_acc": out["acc"],
        "test_top3": out["top3"],
        "per_class": dict(zip(splits.classes, per_class_accuracy(out["confusion"]).tolist(), strict=True)),
        "confusion": out["confusion"],
        "wrong": [(splits.test_x[sample[i]].cpu(), int(splits.test_y[sample[i]]), int(preds[i])) for i in wrong],
    }


@torch.no_grad()
def _predict(loaded: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    """Softmax probabilities (N, 10) for uint8 images (N, 3, 32, 32)."""
    cfg, fmt = loaded.config, memory_format(loaded.config, loaded.device)
    probs = []
    for i in range(0, len(x), cfg.train.eval_batch_size):
        xb = normalize(x[i : i + cfg.train.eval_batch_size].to(loaded.device), cfg.augment.mean, cfg.augment.std)
        probs.append(loaded.model(xb.contiguous(memory_format=fmt)).float().softmax(dim=1))
    return torch.cat(probs)


def read_image(path: str | Path, size: int = 32) -> torch.Tensor:
    """Read a JPEG, PNG or GIF of any size as uint8 (3, size, size) RGB (bilinear resize, first GIF frame).

    Raises:
        InferenceError: the file is missing or not an image.
    """
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except FileNotFoundError:
        raise InferenceError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise InferenceError(f"{path}: not an image this tool can read (JPEG, PNG or GIF): {exc}") from None
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()


def predict_files(loaded: LoadedModel, paths: list[str | Path], top_k: int = 1) -> list[dict]:
    """Predict each file; a file that cannot be read gets an ``error`` instead of predictions.

    Returns:
        One dict per path: ``path``, and either ``image`` (uint8 (3, 32, 32), what the model
        saw) with ``top`` (list of (class, probability in [0, 1]), best first), or ``error``.
    """
    out = []
    for path in paths:
        try:
            x = read_image(path)
        except InferenceError as exc:
            out.append({"path": str(path), "error": str(exc)})
            continue
        probs = _predict(loaded, x[None])[0]
        values, idx = probs.topk(min(top_k, len(probs)))
        out.append(
            {
                "path": str(path),
                "image": x,
                "top": [(CLASSES[i], float(v)) for v, i in zip(values.tolist(), idx.tolist(), strict=True)],
            }
        )
    return out


def confusion_figure(confusion: torch.Tensor, classes: tuple[str, ...] = CLASSES) -> Figure:
    """Confusion matrix (rows = true class, columns = predicted), counts annotated."""
    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.subplots()
    cm = confusion.numpy()
    im = ax.imshow(cm, cmap="Blues")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true")
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(
                j,
                i,
                int(cm[i, j]),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if cm[i, j] > cm.max() / 2 else "black",
            )
    fig.colorbar(im, ax=ax)
    return fig


def misclassified_figure(wrong: list[tuple[torch.Tensor, int, int]], classes: tuple[str, ...] = CLASSES) -> Figure:
    """A grid of misclassified test images titled ``true -> predicted``."""
    cols = 8
    rows = max(1, -(-len(wrong) // cols))
    fig = Figure(figsize=(cols * 1.4, rows * 1.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (img, true, pred) in zip(axes.flat, wrong, strict=False):
        ax.imshow(img.permute(1, 2, 0).numpy())
        ax.set_title(f"{classes[true]}\n-> {classes[pred]}", fontsize=7)
    return fig
