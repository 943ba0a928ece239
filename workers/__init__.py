"""workers: the Ray Tune side of DAB Sweeps.

Reads and expands sweep specs (`workers.spec`), runs their trials as Ray Tune trials (`workers.trainable`), with every trial tracked
in its own MLflow run, exactly once (`workers.tracking`), from a driver that restores an
interrupted sweep and skips finished trials (`workers.driver`, ``python -m workers.driver``).

Importing this package is cheap: nothing here imports Ray, MLflow or torch until one of the
names below is used (PEP 562 lazy attributes), so the service can import `workers.spec`
without paying for Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.driver import SweepOutcome, build_tuner, ensure_ray, main, run_sweep
    from workers.spec import SpecError, SweepSpec, SweepSuite, Trial, expand, load_spec, parse_spec
    from workers.tracking import (
        MlflowWriter,
        SweepTracker,
        TrackingCallback,
        configure_sqlite,
        experiment_name,
        find_sweep_ids,
        sqlite_pragmas,
    )
    from workers.trainable import dab_trainable, make_trainable, resolve_resources

_EXPORTS = {
    "SweepOutcome": "workers.driver",
    "build_tuner": "workers.driver",
    "ensure_ray": "workers.driver",
    "main": "workers.driver",
    "run_sweep": "workers.driver",
    "MlflowWriter": "workers.tracking",
    "SweepTracker": "workers.tracking",
    "TrackingCallback": "workers.tracking",
    "configure_sqlite": "workers.tracking",
    "experiment_name": "workers.tracking",
    "find_sweep_ids": "workers.tracking",
    "sqlite_pragmas": "workers.tracking",
    "SpecError": "workers.spec",
    "SweepSpec": "workers.spec",
    "SweepSuite": "workers.spec",
    "Trial": "workers.spec",
    "expand": "workers.spec",
    "load_spec": "workers.spec",
    "parse_spec": "workers.spec",
    "dab_trainable": "workers.trainable",
    "make_trainable": "workers.trainable",
    "resolve_resources": "workers.trainable",
}

__all__ = [
    "MlflowWriter",
    "SpecError",
    "SweepOutcome",
    "SweepSpec",
    "SweepSuite",
    "SweepTracker",
    "TrackingCallback",
    "Trial",
    "build_tuner",
    "configure_sqlite",
    "dab_trainable",
    "ensure_ray",
    "expand",
    "experiment_name",
    "find_sweep_ids",
    "load_spec",
    "main",
    "make_trainable",
    "parse_spec",
    "resolve_resources",
    "run_sweep",
    "sqlite_pragmas",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'workers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
