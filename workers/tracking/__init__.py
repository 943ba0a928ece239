"""MLflow tracking of a sweep, written from the driver: exactly one run per trial.

One experiment per sweep (``dab/<spec name> (<sweep id>)``, tagged ``dab.sweep_id``), a parent run for the sweep and one child run per
trial, found again by their tags (see `workers.tracking.runs`), so their ids are never kept in
files: `find_sweep_ids` derives them from the sweep id. By concern:

* `workers.tracking.store`: the client, SQLite set-up (`sqlite_pragmas`, shared with the
  service's database), the default artifact root.
* `workers.tracking.runs`: tags and params, `RunSpec`, `SweepTracker` (find or create the
  experiment, parent run and child runs exactly once), `find_sweep_ids`.
* `workers.tracking.writer`: `MlflowWriter`, the background thread that owns every write.
* `workers.tracking.process`: `ProcessWriter`, the same writer in a child process (the driver's
  default; ``DAB_MLFLOW_WRITER=thread`` keeps the thread).
* `workers.tracking.callback`: `TrackingCallback`, the Ray Tune callback.

Every name is re-exported here, lazily (PEP 562): importing `workers.tracking.store` (as the
service's database layer does) or reading a tag constant imports neither Ray nor MLflow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.tracking.callback import (
        TrackingCallback,
        result_metrics,
    )
    from workers.tracking.runs import (
        EXPERIMENT_KIND_ML,
        FAILED,
        FINISHED,
        KILLED,
        MAX_EXPERIMENT_NAME,
        MAX_EXPERIMENT_TAG_VALUE,
        MAX_KEY,
        MAX_METRICS_PER_BATCH,
        MAX_PARAM_VALUE,
        MAX_PARAMS_TAGS_PER_BATCH,
        MAX_TAG_VALUE,
        MLFLOW_EXPERIMENT_KIND,
        MLFLOW_GIT_COMMIT,
        MLFLOW_NOTE,
        MLFLOW_PARENT_RUN_ID,
        MLFLOW_RUN_NAME,
        ROLE_SWEEP,
        ROLE_TRIAL,
        RUNNING,
        TAG_ATTEMPTS,
        TAG_CELL,
        TAG_CELL_KEY,
        TAG_CONFIG_INDEX,
        TAG_END_REASON,
        TAG_FAMILY,
        TAG_GIT_COMMIT,
        TAG_REPLICATE,
        TAG_ROLE,
        TAG_SEED,
        TAG_SKIPPED,
        TAG_SKIPPED_COUNT,
        TAG_SPEC_NAME,
        TAG_STOPPED_AT,
        TAG_STOPPED_EARLY,
        TAG_SWEEP_ID,
        TAG_TRIAL_COUNT,
        TAG_TRIAL_INDEX,
        TAG_TRIAL_KEY,
        TAG_TRUNCATED_PARAMS,
        TAG_VERSION,
        TERMINAL,
        ChildRun,
        RunSpec,
        SweepTracker,
        clean_key,
        experiment_name,
        find_experiment,
        find_sweep_ids,
        flatten_params,
        git_commit,
        legacy_experiment_name,
        package_version,
        set_run_tags,
        trial_run_spec,
        truncate,
    )
    from workers.tracking.store import (
        DEFAULT_BUSY_TIMEOUT_MS,
        configure_sqlite,
        default_artifact_root,
        make_client,
        sqlite_path,
        sqlite_pragmas,
    )
    from workers.tracking.writer import (
        PARENT,
        MlflowWriter,
        Report,
    )

_EXPORTS = {
    "ChildRun": "workers.tracking.runs",
    "FAILED": "workers.tracking.runs",
    "FINISHED": "workers.tracking.runs",
    "KILLED": "workers.tracking.runs",
    "EXPERIMENT_KIND_ML": "workers.tracking.runs",
    "MAX_EXPERIMENT_NAME": "workers.tracking.runs",
    "MAX_EXPERIMENT_TAG_VALUE": "workers.tracking.runs",
    "MAX_KEY": "workers.tracking.runs",
    "MAX_METRICS_PER_BATCH": "workers.tracking.runs",
    "MAX_PARAMS_TAGS_PER_BATCH": "workers.tracking.runs",
    "MAX_PARAM_VALUE": "workers.tracking.runs",
    "MAX_TAG_VALUE": "workers.tracking.runs",
    "MLFLOW_EXPERIMENT_KIND": "workers.tracking.runs",
    "MLFLOW_GIT_COMMIT": "workers.tracking.runs",
    "MLFLOW_NOTE": "workers.tracking.runs",
    "MLFLOW_PARENT_RUN_ID": "workers.tracking.runs",
    "MLFLOW_RUN_NAME": "workers.tracking.runs",
    "ROLE_SWEEP": "workers.tracking.runs",
    "ROLE_TRIAL": "workers.tracking.runs",
    "RUNNING": "workers.tracking.runs",
    "RunSpec": "workers.tracking.runs",
    "SweepTracker": "workers.tracking.runs",
    "TAG_ATTEMPTS": "workers.tracking.runs",
    "TAG_CELL": "workers.tracking.runs",
    "TAG_CELL_KEY": "workers.tracking.runs",
    "TAG_END_REASON": "workers.tracking.runs",
    "TAG_FAMILY": "workers.tracking.runs",
    "TAG_GIT_COMMIT": "workers.tracking.runs",
    "TAG_REPLICATE": "workers.tracking.runs",
    "TAG_ROLE": "workers.tracking.runs",
    "TAG_SEED": "workers.tracking.runs",
    "TAG_SKIPPED": "workers.tracking.runs",
    "TAG_SKIPPED_COUNT": "workers.tracking.runs",
    "TAG_SPEC_NAME": "workers.tracking.runs",
    "TAG_SWEEP_ID": "workers.tracking.runs",
    "TAG_TRIAL_COUNT": "workers.tracking.runs",
    "TAG_TRIAL_INDEX": "workers.tracking.runs",
    "TAG_TRIAL_KEY": "workers.tracking.runs",
    "TAG_TRUNCATED_PARAMS": "workers.tracking.runs",
    "TAG_STOPPED_EARLY": "workers.tracking.runs",
    "TAG_STOPPED_AT": "workers.tracking.runs",
    "TAG_CONFIG_INDEX": "workers.tracking.runs",
    "TAG_VERSION": "workers.tracking.runs",
    "TERMINAL": "workers.tracking.runs",
    "clean_key": "workers.tracking.runs",
    "experiment_name": "workers.tracking.runs",
    "find_experiment": "workers.tracking.runs",
    "find_sweep_ids": "workers.tracking.runs",
    "flatten_params": "workers.tracking.runs",
    "git_commit": "workers.tracking.runs",
    "legacy_experiment_name": "workers.tracking.runs",
    "package_version": "workers.tracking.runs",
    "set_run_tags": "workers.tracking.runs",
    "trial_run_spec": "workers.tracking.runs",
    "truncate": "workers.tracking.runs",
    "DEFAULT_BUSY_TIMEOUT_MS": "workers.tracking.store",
    "configure_sqlite": "workers.tracking.store",
    "default_artifact_root": "workers.tracking.store",
    "make_client": "workers.tracking.store",
    "sqlite_path": "workers.tracking.store",
    "sqlite_pragmas": "workers.tracking.store",
    "MlflowWriter": "workers.tracking.writer",
    "PARENT": "workers.tracking.writer",
    "Report": "workers.tracking.writer",
    "TrackingCallback": "workers.tracking.callback",
    "result_metrics": "workers.tracking.callback",
}

# Not public, kept importable under their old names: Tune experiments pickled by the
# single-module `workers.tracking` of earlier versions name `workers.tracking._restore_callback`
# (see `TrackingCallback.__reduce__`), and restoring such a sweep must still find it.
_PRIVATE = {
    "_restore_callback": ("workers.tracking.callback", "_restore_callback"),
    "_set_tags": ("workers.tracking.runs", "set_run_tags"),
    "_clean_key": ("workers.tracking.runs", "clean_key"),
    "_transient": ("workers.tracking.writer", "_transient"),
}

__all__ = [
    "DEFAULT_BUSY_TIMEOUT_MS",
    "EXPERIMENT_KIND_ML",
    "FAILED",
    "FINISHED",
    "KILLED",
    "MAX_EXPERIMENT_NAME",
    "MAX_EXPERIMENT_TAG_VALUE",
    "MAX_KEY",
    "MAX_METRICS_PER_BATCH",
    "MAX_PARAMS_TAGS_PER_BATCH",
    "MAX_PARAM_VALUE",
    "MAX_TAG_VALUE",
    "MLFLOW_EXPERIMENT_KIND",
    "MLFLOW_GIT_COMMIT",
    "MLFLOW_NOTE",
    "MLFLOW_PARENT_RUN_ID",
    "MLFLOW_RUN_NAME",
    "PARENT",
    "ROLE_SWEEP",
    "ROLE_TRIAL",
    "RUNNING",
    "TAG_ATTEMPTS",
    "TAG_CELL",
    "TAG_CELL_KEY",
    "TAG_CONFIG_INDEX",
    "TAG_END_REASON",
    "TAG_FAMILY",
    "TAG_GIT_COMMIT",
    "TAG_REPLICATE",
    "TAG_ROLE",
    "TAG_SEED",
    "TAG_SKIPPED",
    "TAG_SKIPPED_COUNT",
    "TAG_SPEC_NAME",
    "TAG_STOPPED_AT",
    "TAG_STOPPED_EARLY",
    "TAG_SWEEP_ID",
    "TAG_TRIAL_COUNT",
    "TAG_TRIAL_INDEX",
    "TAG_TRIAL_KEY",
    "TAG_TRUNCATED_PARAMS",
    "TAG_VERSION",
    "TERMINAL",
    "ChildRun",
    "MlflowWriter",
    "Report",
    "RunSpec",
    "SweepTracker",
    "TrackingCallback",
    "clean_key",
    "configure_sqlite",
    "default_artifact_root",
    "experiment_name",
    "find_experiment",
    "find_sweep_ids",
    "flatten_params",
    "git_commit",
    "legacy_experiment_name",
    "make_client",
    "package_version",
    "result_metrics",
    "set_run_tags",
    "sqlite_path",
    "sqlite_pragmas",
    "trial_run_spec",
    "truncate",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, attr = _EXPORTS[name], name
    elif name in _PRIVATE:
        module, attr = _PRIVATE[name]
    else:
        raise AttributeError(f"module 'workers.tracking' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
