"""The sweep driver: runs a spec's trials on Ray Tune with each trial tracked in MLflow.

    python -m workers.driver SPEC --sweep-dir DIR --tracking-uri URI [--ray-address ADDR]

This is the entrypoint the service submits as a Ray Job. Without an address it joins the Ray
that ``RAY_ADDRESS`` names (a Ray Job sets it) or starts a local one; ``--ray-address`` (or
``DAB_RAY_ADDRESS``) names a cluster. The exit code is 0 only when every trial of the spec has
a FINISHED run: 1 when some failed or did not run, 2 for a bad spec or arguments, 130/143 when
stopped by SIGINT/SIGTERM.

What one run of the driver does, in order:

1. Takes the sweep directory's lock (one driver per sweep).
2. Finds or creates the sweep's MLflow experiment (``dab/<sweep id>``) and parent run, and
   lists the child runs already there. Runs left RUNNING by a driver that died are ended
   KILLED. Trials whose trial_key has a FINISHED run are skipped: they are never handed to
   Tune, and the skip is listed in ``status.json`` and on the parent run.
3. Runs the other trials: it restores the Tune experiment of the sweep directory that was
   built for them (``Tuner.restore(resume_unfinished=True, restart_errored=True)``) when there
   is one, else builds a new one (a resubmitted sweep with a seed added gets a new Tune
   experiment for the new trials only). Trials resume from their latest checkpoints.
4. Ends every run it opened FINISHED, FAILED or KILLED, the parent run too, and leaves the
   final ``status.json``; on SIGTERM/SIGINT it does this first, then lets Tune stop.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from workers._files import (
    SWEEP_FILE,
    TUNE_DIR,
    TUNE_TRIALS_FILE,
    atomic_write_json,
    read_json,
    sweep_lock,
)

log = logging.getLogger("workers.driver")

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE = 0, 1, 2
DEFAULT_CHECKPOINTS_TO_KEEP = 2
_SKIP_REASON = "already has a FINISHED MLflow run"


@dataclass
class SweepOutcome:
    """What a driver run did. `exit_code` is 0 only when every trial of the spec is FINISHED."""

    sweep_id: str
    state: str  # finished | failed | interrupted
    experiment_id: str
    parent_run_id: str
    ran: list[str] = field(default_factory=list)  # trial keys handed to Tune
    skipped: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)  # finished by this run
    failed: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)
    tune_experiment: str | None = None
    restored: bool = False
    signal: int | None = None
    tracking_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        if self.state == "finished":
            return EXIT_OK
        if self.signal is not None:
            return 128 + self.signal
        return EXIT_INCOMPLETE


# --------------------------------------------------------------------------------------------
# Ray and Tune set-up


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


def _tune_env() -> None:
    # MLflow is the record of every result: Tune's own JSON/CSV/TensorBoard loggers would only
    # write it a second time. The "excessive snapshot" warning fires by design with
    # CheckpointConfig(num_to_keep) and short trials.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


def _restorable(tune_root: Path, keys: set[str]) -> Path | None:
    """The newest Tune experiment under `tune_root` built for a superset of `keys`, if any."""
    from ray import tune

    if not tune_root.is_dir():
        return None
    candidates = []
    for path in tune_root.iterdir():
        meta = read_json(path / TUNE_TRIALS_FILE)
        if isinstance(meta, dict) and keys <= set(meta.get("trial_keys", [])):
            candidates.append((str(meta.get("created_at", "")), path))
    for _, path in sorted(candidates, reverse=True):
        if tune.Tuner.can_restore(str(path)):
            return path
    return None


def _new_experiment_name(keys: Sequence[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:8]
    return f"run-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}-{digest}"


def build_tuner(
    trainable: Any,
    keys: Sequence[str],
    *,
    tune_root: Path,
    callbacks: Sequence[Any],
    max_failures: int,
    max_concurrent: int | None,
    checkpoints_to_keep: int = DEFAULT_CHECKPOINTS_TO_KEEP,
    verbose: int = 0,
) -> tuple[Any, Path, bool]:
    """A Tuner for `keys`: the sweep's restorable Tune experiment for them, or a new one.

    Returns:
        (tuner, experiment path, restored)
    """
    from ray import tune

    from workers.trainable import TRIAL_KEY, trial_dirname, trial_name

    path = _restorable(tune_root, set(keys))
    if path is not None:
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, restart_errored=True)
        return tuner, path, True
    path = tune_root / _new_experiment_name(keys)
    atomic_write_json(
        path / TUNE_TRIALS_FILE,
        {"trial_keys": list(keys), "created_at": datetime.now(UTC).isoformat()},
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
            name=path.name,
            storage_path=str(tune_root),
            callbacks=list(callbacks),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=checkpoints_to_keep),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            verbose=verbose,
        ),
    )
    return tuner, path, False


# --------------------------------------------------------------------------------------------
# Signals


@dataclass
class _Live:
    """What the signal handler and the final clean-up need from inside the Tune set-up."""

    callback: Any = None
    started_ray: bool = False


@dataclass
class _SignalState:
    received: int | None = None
    in_fit: bool = False
    handler: Callable[[int, Any], None] | None = None
    previous: dict[int, Any] = field(default_factory=dict)

    def install(self) -> None:
        """(Re)install the handler: `ray.init` replaces SIGTERM's with its own `sys.exit`."""
        if self.handler is None or threading.current_thread() is not threading.main_thread():
            return
        for s in (signal.SIGTERM, signal.SIGINT):
            self.previous.setdefault(s, signal.getsignal(s))
            signal.signal(s, self.handler)

    def uninstall(self) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)
        self.previous.clear()


@contextlib.contextmanager
def _stop_on_signals(on_stop: Callable[[int], None], state: _SignalState) -> Iterator[_SignalState]:
    """On SIGTERM (or SIGINT outside Tune), run `on_stop` first, then stop.

    Inside `Tuner.fit`, the stop goes through Tune's own SIGINT handler (it saves the
    experiment state and stops the trials); elsewhere it raises KeyboardInterrupt. `on_stop`
    ends the MLflow runs before either, because a Ray Job stop follows SIGTERM with SIGKILL a
    few seconds later.
    """

    def handler(signum: int, _frame: Any) -> None:
        first = state.received is None
        state.received = state.received or signum
        if first:
            with contextlib.suppress(Exception):
                on_stop(signum)
        if state.in_fit and first:
            signal.raise_signal(signal.SIGINT)  # Tune's handler: a graceful stop
        elif not state.in_fit:
            raise KeyboardInterrupt

    state.handler = handler
    state.install()
    try:
        yield state
    finally:
        state.uninstall()


# --------------------------------------------------------------------------------------------
# The sweep


def _sweep_id(sweep_dir: Path, given: str | None) -> str:
    known = read_json(sweep_dir / SWEEP_FILE)
    known_id = known.get("sweep_id") if isinstance(known, dict) else None
    if given and known_id and given != known_id:
        raise ValueError(f"{sweep_dir} belongs to sweep {known_id!r}, not {given!r}")
    return given or known_id or sweep_dir.name


def parent_tags(spec: Any, trials: Sequence[Any], sweep_id: str) -> dict[str, str]:
    from workers.tracking import (
        MLFLOW_GIT_COMMIT,
        TAG_FAMILY,
        TAG_GIT_COMMIT,
        TAG_SPEC_NAME,
        TAG_TRIAL_COUNT,
        TAG_VERSION,
        git_commit,
        package_version,
    )

    tags = {
        TAG_SPEC_NAME: spec.name,
        TAG_FAMILY: spec.experiment,
        TAG_TRIAL_COUNT: str(len(trials)),
        TAG_VERSION: package_version(),
        TAG_GIT_COMMIT: git_commit(),
        MLFLOW_GIT_COMMIT: git_commit(),
        "dab.metric": str(getattr(spec, "metric", "") or ""),
        "dab.mode": str(getattr(spec, "mode", "") or ""),
    }
    if getattr(spec, "description", ""):
        tags["mlflow.note.content"] = spec.description
    return tags


def _requested_resources(spec: Any) -> dict[str, float | None]:
    res = spec.resources
    memory_gb = getattr(res, "memory_gb", None)
    return {
        "cpu": float(res.cpu),
        "gpu": float(getattr(res, "gpu", 0.0) or 0.0),
        "memory": float(memory_gb) * 2**30 if memory_gb else None,
    }


def run_sweep(
    spec: Any,
    trials: Sequence[Any],
    *,
    sweep_dir: str | os.PathLike[str],
    tracking_uri: str,
    sweep_id: str | None = None,
    ray_address: str | None = None,
    artifact_root: str | None = None,
    num_cpus: float | None = None,
    checkpoints_to_keep: int = DEFAULT_CHECKPOINTS_TO_KEEP,
    verbose: int = 0,
    linger_s: float = 0.25,
    prune_checkpoints: bool = True,
) -> SweepOutcome:
    """Run `trials` (the expansion of `spec`) as one sweep; see the module docstring.

    Args:
        spec: a `workers.spec.SweepSpec` (name, experiment, resources, limits, metric, mode).
        trials: its `workers.spec.Trial` list.
        sweep_dir: the sweep's directory (status, Tune storage, lock); created if missing.
        tracking_uri: MLflow tracking URI (``sqlite:///...`` or ``http(s)://...``).
        sweep_id: the sweep's id (default: the one recorded in the directory, else its name).
        ray_address: a Ray cluster to join; None joins ``RAY_ADDRESS`` or starts a local Ray
            (with `num_cpus`). An already initialised Ray in this process is used as it is.
        artifact_root: where the sweep's MLflow artifacts go (default: beside a sqlite store).
        checkpoints_to_keep: Tune's ``CheckpointConfig(num_to_keep)`` per running trial.
        prune_checkpoints: delete a finished trial's checkpoints from Tune's storage once its
            final checkpoint is an MLflow artifact.
    """
    from workers._status import SweepStatus
    from workers.tracking import (
        FINISHED,
        KILLED,
        PARENT,
        TAG_SKIPPED,
        TAG_SKIPPED_COUNT,
        MlflowWriter,
        SweepTracker,
        trial_run_spec,
        truncate,
    )

    t0 = time.monotonic()
    sweep_path = Path(sweep_dir).resolve()
    sweep_path.mkdir(parents=True, exist_ok=True)
    sid = _sweep_id(sweep_path, sweep_id)
    keys = [t.trial_key for t in trials]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"trials with identical configs (trial_key {dup[0]}): a sweep runs each config once")

    with sweep_lock(sweep_path):
        tracker = SweepTracker(tracking_uri, sid, artifact_root)
        experiment_id = tracker.ensure_experiment()
        parent_id = tracker.ensure_parent(parent_tags(spec, trials, sid), run_name=spec.name)
        atomic_write_json(
            sweep_path / SWEEP_FILE,
            {
                "sweep_id": sid,
                "name": spec.name,
                "experiment": spec.experiment,
                "tracking_uri": tracking_uri,
                "mlflow_experiment_id": experiment_id,
                "parent_run_id": parent_id,
                "trial_count": len(trials),
            },
        )
        runs = tracker.child_runs()
        tracker.end_interrupted(runs)

        status = SweepStatus(
            sweep_path,
            {
                "sweep_id": sid,
                "name": spec.name,
                "tracking_uri": tracking_uri,
                "experiment_id": experiment_id,
                "parent_run_id": parent_id,
                "tune_experiment": None,
            },
        )
        status.add_trials(trials, runs)
        pending = []
        skipped = []
        for trial in trials:
            run = runs.get(trial.trial_key)
            if run is not None and run.status == FINISHED:
                status.skip(trial.trial_key, _SKIP_REASON, run.run_id)
                skipped.append(trial.trial_key)
            else:
                pending.append(trial)
        tracker.client.set_tag(parent_id, TAG_SKIPPED_COUNT, str(len(skipped)))
        tracker.client.set_tag(parent_id, TAG_SKIPPED, truncate(",".join(skipped), 8000)[0])
        status.write()

        outcome = SweepOutcome(
            sweep_id=sid,
            state="failed",
            experiment_id=experiment_id,
            parent_run_id=parent_id,
            ran=[t.trial_key for t in pending],
            skipped=skipped,
        )
        writer = MlflowWriter(
            tracker.client,
            experiment_id,
            {**{k: r.run_id for k, r in runs.items()}, PARENT: parent_id},
            linger_s=linger_s,
        ).start()
        holder = _Live()
        error: BaseException | None = None

        def on_stop(signum: int) -> None:
            # Ray Job stop: SIGTERM, then SIGKILL a few seconds later. End the runs first.
            reason = f"driver stopped by {signal.Signals(signum).name}"
            if holder.callback is not None:
                holder.callback.stop(KILLED, reason)
            writer.flush(timeout=2.0)
            status.set(state="interrupted")
            status.write()

        signals = _SignalState()
        try:
            with _stop_on_signals(on_stop, signals):
                if pending:
                    tune_path, restored = _run_tune(
                        spec,
                        pending,
                        sweep_path=sweep_path,
                        writer=writer,
                        status=status,
                        runs=runs,
                        run_spec=lambda t: trial_run_spec(
                            t, sweep_id=sid, parent_run_id=parent_id, family=spec.experiment
                        ),
                        token=f"dab-sweep:{sid}",
                        prune_checkpoints=prune_checkpoints,
                        ray_address=ray_address,
                        num_cpus=num_cpus,
                        checkpoints_to_keep=checkpoints_to_keep,
                        verbose=verbose,
                        signals=signals,
                        live=holder,
                    )
                    outcome.tune_experiment = str(tune_path)
                    outcome.restored = restored
        except KeyboardInterrupt:
            # Our SIGTERM handler outside Tune, or Ctrl-C: the runs are ended below, and the
            # caller gets the outcome (state "interrupted") rather than a traceback.
            signals.received = signals.received or signal.SIGINT
        except BaseException as e:
            error = e
            raise
        finally:
            outcome.signal = signals.received
            _finish(outcome, status, writer, tracker, holder.callback, error)
            if holder.callback is not None:
                holder.callback.unregister()
            if holder.started_ray:
                import ray

                ray.shutdown()
            outcome.seconds = time.monotonic() - t0
    return outcome


def _run_tune(
    spec: Any,
    pending: Sequence[Any],
    *,
    sweep_path: Path,
    writer: Any,
    status: Any,
    runs: Mapping[str, Any],
    run_spec: Callable[[Any], Any],
    token: str,
    prune_checkpoints: bool,
    ray_address: str | None,
    num_cpus: float | None,
    checkpoints_to_keep: int,
    verbose: int,
    signals: _SignalState,
    live: _Live,
) -> tuple[Path, bool]:
    import ray

    from dab_core.experiments import parse_config
    from workers.tracking import TrackingCallback
    from workers.trainable import make_trainable, resolve_resources

    for trial in pending:  # a bad config fails the sweep before any compute
        parse_config(trial.config)
    live.started_ray = ensure_ray(ray_address, num_cpus)
    signals.install()
    _tune_env()
    resources, notes = resolve_resources(_requested_resources(spec), ray.cluster_resources())
    for note in notes:
        log.warning(note)
        status.note(note)
    callback = TrackingCallback(
        writer=writer,
        status=status,
        run_specs={t.trial_key: run_spec(t) for t in pending},
        last_steps={t.trial_key: runs[t.trial_key].last_step for t in pending if t.trial_key in runs},
        token=token,
        prune_checkpoints=prune_checkpoints,
    )
    live.callback = callback
    keys = [t.trial_key for t in pending]
    trainable = make_trainable({t.trial_key: t.config for t in pending}, resources, run_keys=keys)
    tuner, path, restored = build_tuner(
        trainable,
        keys,
        tune_root=sweep_path / TUNE_DIR,
        callbacks=[callback],
        max_failures=spec.limits.max_failures,
        max_concurrent=spec.limits.max_concurrent,
        checkpoints_to_keep=checkpoints_to_keep,
        verbose=verbose,
    )
    status.set(tune_experiment=str(path), resources=resources)
    status.write()
    log.info("%s Tune experiment %s for %d trial(s)", "restored" if restored else "new", path, len(keys))
    signals.in_fit = True
    try:
        tuner.fit()
    finally:
        signals.in_fit = False
    return path, restored


def _finish(
    outcome: SweepOutcome,
    status: Any,
    writer: Any,
    tracker: Any,
    callback: Any,
    error: BaseException | None,
) -> None:
    """End every open run with the right status, write the final status, end the parent run."""
    from workers.tracking import FAILED, FINISHED, KILLED, _set_tags

    interrupted = outcome.signal is not None or isinstance(error, KeyboardInterrupt | SystemExit)
    if callback is not None:
        if interrupted:
            reason = f"driver stopped by {signal.Signals(outcome.signal or signal.SIGINT).name}"
            callback.stop(KILLED, reason)
        elif error is not None:
            callback.stop(FAILED, f"driver error: {type(error).__name__}: {error}")
        else:  # Tune returned with trials unended: it was stopped (e.g. a SIGINT it handled)
            if callback.stop(KILLED, "Tune stopped before the trial ended"):
                interrupted = True
    if not writer.close(timeout=120):
        log.error("MLflow writer did not finish within 120 s; some writes may be missing")
    status.set_run_ids({k: writer.run_id(k) for k in status.states()})
    states = status.states()
    outcome.finished = sorted(k for k in outcome.ran if states.get(k) == "finished")
    outcome.failed = sorted(k for k, s in states.items() if s == "failed")
    outcome.killed = sorted(k for k, s in states.items() if s == "killed")
    outcome.not_run = sorted(k for k, s in states.items() if s == "pending")
    outcome.tracking_errors = list(writer.errors)
    complete = all(s in ("finished", "skipped") for s in states.values())
    if complete and error is None and not writer.errors:
        outcome.state, parent_status = "finished", FINISHED
    elif interrupted:
        outcome.state, parent_status = "interrupted", KILLED
    else:
        outcome.state, parent_status = "failed", FAILED
    status.set(
        state=outcome.state,
        finished_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        tracking_errors=outcome.tracking_errors,
    )
    status.write()
    try:
        counts = status.data["counts"]
        _set_tags(
            tracker.client, outcome.parent_run_id, {f"dab.count.{k}": str(v) for k, v in counts.items()}
        )
        tracker.client.set_terminated(outcome.parent_run_id, parent_status)
    except Exception as e:  # the trials' runs are ended already; say so and move on
        log.error("could not end the parent run %s: %s", outcome.parent_run_id, e)
        outcome.tracking_errors.append(f"parent run: {e}")


# --------------------------------------------------------------------------------------------
# CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m workers.driver", description=__doc__.split("\n\n")[0])
    p.add_argument("spec", help="sweep spec file (YAML or JSON)")
    p.add_argument("--sweep-dir", required=True, help="the sweep's directory (status, Tune storage)")
    p.add_argument(
        "--tracking-uri",
        default=os.environ.get("DAB_MLFLOW_TRACKING_URI") or os.environ.get("MLFLOW_TRACKING_URI"),
        help="MLflow tracking URI: sqlite:///path or http(s)://server (env DAB_MLFLOW_TRACKING_URI)",
    )
    p.add_argument(
        "--ray-address",
        default=os.environ.get("DAB_RAY_ADDRESS") or None,
        help="Ray cluster address (env DAB_RAY_ADDRESS); default: RAY_ADDRESS or a local Ray",
    )
    p.add_argument(
        "--sweep-id", default=None, help="sweep id (default: recorded in the sweep dir, else its name)"
    )
    p.add_argument(
        "--artifact-root",
        default=os.environ.get("DAB_MLFLOW_ARTIFACT_ROOT") or None,
        help="root URI of the sweep's MLflow artifacts (env DAB_MLFLOW_ARTIFACT_ROOT); default: beside a "
        "sqlite store, or the tracking server's",
    )
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of a local Ray this driver starts")
    p.add_argument("--checkpoints-to-keep", type=int, default=DEFAULT_CHECKPOINTS_TO_KEEP)
    p.add_argument(
        "--keep-tune-checkpoints",
        action="store_true",
        help="keep finished trials' checkpoints in Tune's storage (default: the MLflow artifact is the copy)",
    )
    p.add_argument("-v", "--verbose", type=int, default=1, help="Tune verbosity 0-3 (default 1)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.tracking_uri:
        print("error: --tracking-uri (or DAB_MLFLOW_TRACKING_URI) is required", file=sys.stderr)
        return EXIT_USAGE
    from workers.spec import SpecError, SweepSuite, expand, load_spec

    try:
        spec = load_spec(args.spec)
        if isinstance(spec, SweepSuite):
            names = ", ".join(s.name for _, s in spec.specs)
            print(
                f"error: {args.spec} is a suite ({names}); the driver runs one sweep: submit each spec on its own",
                file=sys.stderr,
            )
            return EXIT_USAGE
        trials = expand(spec)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        outcome = run_sweep(
            spec,
            trials,
            sweep_dir=args.sweep_dir,
            tracking_uri=args.tracking_uri,
            sweep_id=args.sweep_id,
            ray_address=args.ray_address,
            artifact_root=args.artifact_root,
            num_cpus=args.num_cpus,
            checkpoints_to_keep=args.checkpoints_to_keep,
            verbose=args.verbose,
            prune_checkpoints=not args.keep_tune_checkpoints,
        )
    except KeyboardInterrupt:
        return 130
    print(
        f"sweep {outcome.sweep_id}: {outcome.state}; ran {len(outcome.ran)}, skipped {len(outcome.skipped)}, "
        f"finished {len(outcome.finished)}, failed {len(outcome.failed)}, killed {len(outcome.killed)} "
        f"({outcome.seconds:.1f} s)",
        flush=True,
    )
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
