"""``ablations``: run MANY training jobs as a study; Optuna, MLflow, statistics, reports and the CLI.

The public names, imported on first use (so ``ablate --help`` stays quick)::

    from ablations import load_study, run_study, load_runs, build_report, render
    study = load_study("studies/batchnorm.yaml", profile="smoke")
    run_study(study)                                  # every cell, tracked in MLflow
    print(render(build_report(load_runs("batchnorm"))))

A user's own network is registered with ``register_model`` (the same decorator as the
built-in presets, ``core.models.register_model``), in a file a study names under ``imports:``::

    from ablations import register_model

    @register_model("my_cnn", options={"kernel_size": 3, "residual": True})
    def build(cfg):  # cfg.options: the options, filled in from the defaults; cfg.num_classes: 10
        ...
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    "load_study": "ablations.study",
    "Study": "ablations.study",
    "StudyError": "ablations.study",
    "run_study": "ablations.runner",
    "Tracker": "ablations.tracking",
    "load_runs": "ablations.report",
    "load_search": "ablations.search_report",
    "build_report": "ablations.report",
    "render": "ablations.rendering",
    "write_report": "ablations.rendering",
    "ReportError": "ablations.report",
    "register_model": "core.models",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'ablations' has no attribute {name!r}")
