"""``ablations``: run MANY training jobs as a study; Optuna, MLflow, statistics, reports and the CLI.

The public names, imported on first use (so ``ablate --help`` stays quick)::

    from ablations import load_study, run_study, load_runs, build_report, render
    study = load_study("studies/batchnorm.yaml", profile="smoke")
    run_study(study)                                  # every cell, tracked in MLflow
    print(render(build_report(load_runs("batchnorm"))))
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
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'ablations' has no attribute {name!r}")
