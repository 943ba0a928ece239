"""Ray and Tune set-up of the driver: joining or starting Ray, and building or restoring the Tuner."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from workers._files import TUNE_TRIALS_FILE
from workers.storage import Location
from workers.trainable import trial_dirname, trial_name

log = logging.getLogger("workers.driver")

DEFAULT_CHECKPOINTS_TO_KEEP = 2


def ensure_ray(address: str | None, num_cpus: float | None = None, attempts: int = 4) -> bool:
    """Connect to Ray (or start a local one); True when this call did it (then shut it down).

    A driver killed a moment ago leaves its local Ray's agent processes behind (here for over
    a minute); starting a new local Ray then can fail on a port or socket they still hold, so
    the start is retried with a pause instead of failing the restarted sweep.

    Ray 2.60 clusters use token auth; Ray never sends the local token to an explicit address on
    its own, so a driver given an address needs ``RAY_AUTH_MODE=token`` and the cluster's token
    (``RAY_AUTH_TOKEN`` or ``~/.ray/auth_token``) in its environment, as a Ray Job has.
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING}
    delay = 2.0
    for attempt in range(1, attempts + 1):
        try:
            if address:
                ray.init(address=address, logging_level=logging.WARNING)
            else:
                try:
                    ray.init(num_cpus=int(num_cpus) if num_cpus else None, **kwargs)
                except ValueError as e:  # RAY_ADDRESS names a cluster: its CPUs are its own
                    if "existing cluster" not in str(e):
                        raise
                    ray.init(**kwargs)
            return True
        except (ConnectionError, RuntimeError, TimeoutError) as e:
            with contextlib.suppress(Exception):
                ray.shutdown()
            if attempt == attempts:
                raise
            log.warning("starting Ray failed (%s); retrying in %.0fs", e, delay)
            time.sleep(delay)
            delay *= 2
    return False  # pragma: no cover


def tune_env() -> None:
    # MLflow is the record of every result: Tune's own JSON/CSV/TensorBoard loggers would only
    # write it a second time. The "excessive snapshot" warning fires by design with
    # CheckpointConfig(num_to_keep) and short trials.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


def _storage_filesystem(location: Location) -> Any:
    """What Tune gets as ``storage_filesystem``: None for a local path (Tune's default)."""
    return None if location.local else location.fs


def _restorable(tune_root: Location, keys: set[str]) -> Location | None:
    """The newest Tune experiment under `tune_root` built for a superset of `keys`, if any."""
    from ray import tune

    candidates = []
    for name in tune_root.dirs():
        meta = tune_root.child(name, TUNE_TRIALS_FILE).read_json()
        if isinstance(meta, dict) and keys <= set(meta.get("trial_keys", [])):
            candidates.append((str(meta.get("created_at", "")), name))
    for _, name in sorted(candidates, reverse=True):
        path = tune_root.child(name)
        if tune.Tuner.can_restore(path.path, storage_filesystem=_storage_filesystem(path)):
            return path
    return None


def prune_finished_checkpoints(tune_root: Location, keys: Sequence[str]) -> int:
    """Delete what Tune's storage still holds of trials whose MLflow run is FINISHED.

    A finished trial's checkpoints are deleted right after its run ends, by the driver that ran
    it; a driver killed between the two (a lost head) leaves them. The next driver skips the
    trial, so it deletes them here. FINISHED means the final checkpoint is an MLflow artifact
    already: the writer ends a run only after its artifacts. Returns how many it deleted.
    """
    from workers.trainable import trial_dirname_suffix

    suffixes = {trial_dirname_suffix(k) for k in keys}
    deleted = 0
    for experiment in tune_root.dirs():
        for trial_dir in tune_root.child(experiment).dirs():
            if trial_dir.rsplit("-", 1)[-1] not in suffixes:
                continue
            for name in tune_root.child(experiment, trial_dir).dirs():
                if name.startswith("checkpoint_"):
                    tune_root.child(experiment, trial_dir, name).delete()
                    deleted += 1
    if deleted:
        log.info("deleted %d checkpoint(s) of finished trials left in Tune's storage", deleted)
    return deleted


def _new_experiment_name(keys: Sequence[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:8]
    return f"run-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{digest}"


def build_tuner(
    trainable: Any,
    keys: Sequence[str],
    *,
    tune_root: Location,
    callbacks: Sequence[Any],
    max_failures: int,
    max_concurrent: int | None,
    checkpoints_to_keep: int = DEFAULT_CHECKPOINTS_TO_KEEP,
    verbose: int = 0,
) -> tuple[Any, Location, bool]:
    """A Tuner for `keys`: the sweep's restorable Tune experiment for them, or a new one.

    `tune_root` is the sweep's ``tune/`` location; Tune writes its experiment state and the
    trials their checkpoints there through the same pyarrow filesystem, so a trial restored on
    another node (or by a driver on a new head) finds its checkpoint.

    Returns:
        (tuner, experiment location, restored)
    """
    from ray import tune

    from workers.trainable import TRIAL_KEY

    path = _restorable(tune_root, set(keys))
    if path is not None:
        tuner = tune.Tuner.restore(
            path.path,
            trainable,
            resume_unfinished=True,
            restart_errored=True,
            storage_filesystem=_storage_filesystem(path),
        )
        return tuner, path, True
    path = tune_root.child(_new_experiment_name(keys))
    path.child(TUNE_TRIALS_FILE).write_json(
        {"trial_keys": list(keys), "created_at": datetime.now(UTC).isoformat()}
    )
    tuner = tune.Tuner(
        trainable,
        param_space={TRIAL_KEY: tune.grid_search(list(keys))},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max_concurrent,
            reuse_actors=True,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=path.path.rsplit("/", 1)[-1],
            storage_path=tune_root.path,
            storage_filesystem=_storage_filesystem(tune_root),
            callbacks=list(callbacks),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=checkpoints_to_keep),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            verbose=verbose,
        ),
    )
    return tuner, path, False


#: The Tune experiment of a search: one per sweep location, restored whenever it can be (its
#: trials are proposed as it runs, so no list of keys names it as a grid's is named).
SEARCH_EXPERIMENT = "search"


def build_search_tuner(
    spec: Any,
    trainable: Any,
    *,
    tune_root: Location,
    callbacks: Sequence[Any],
    checkpoints_to_keep: int = DEFAULT_CHECKPOINTS_TO_KEEP,
    verbose: int = 0,
) -> tuple[Any, Location, bool]:
    """A Tuner for the search `spec`: its restorable experiment (searcher, scheduler and trials
    as the last driver left them), or a new one (`workers.driver.search`).

    Returns:
        (tuner, experiment location, restored)
    """
    from ray import tune

    from workers.driver.search import DabSearch, SchedulerState, make_scheduler

    path = tune_root.child(SEARCH_EXPERIMENT)
    fs = _storage_filesystem(path)
    if tune.Tuner.can_restore(path.path, storage_filesystem=fs):
        tuner = tune.Tuner.restore(
            path.path, trainable, resume_unfinished=True, restart_errored=True, storage_filesystem=fs
        )
        return tuner, path, True
    metric, mode = spec.resolved_metric, spec.resolved_mode
    steps = [int(spec.params.get("steps", 0) or 0)]
    eval_every = int(spec.params.get("eval_every", 500) or 500)
    if "steps" in spec.space:
        steps.append(int(spec.distributions["steps"].high))
    scheduler = make_scheduler(spec, max_steps=max(steps), first_report=eval_every)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=metric,
            mode=mode,
            search_alg=DabSearch(spec.model_dump(mode="json"), metric, mode),
            scheduler=scheduler,
            num_samples=spec.num_configs,
            max_concurrent_trials=spec.limits.max_concurrent,
            reuse_actors=True,
            trial_name_creator=trial_name,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=SEARCH_EXPERIMENT,
            storage_path=tune_root.path,
            storage_filesystem=_storage_filesystem(tune_root),
            callbacks=[*callbacks, SchedulerState(scheduler)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=checkpoints_to_keep),
            failure_config=tune.FailureConfig(max_failures=spec.limits.max_failures),
            verbose=verbose,
        ),
    )
    return tuner, path, False
