"""One run of the sweep driver, start to end: see `workers.driver`. (Over 500 lines: the
whole life of a driver run, from finding its MLflow runs to ending them, reads top to bottom
in one place; the search's own parts are in `workers.driver.search`.)"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from workers._files import SHARED_FILE, STATUS_FILE, TUNE_DIR, sweep_lock
from workers.driver.signals import Live, SignalState, stop_on_signals
from workers.driver.tuner import (
    DEFAULT_CHECKPOINTS_TO_KEEP,
    build_tuner,
    ensure_ray,
    prune_finished_checkpoints,
    tune_env,
)
from workers.storage import Location, open_location

log = logging.getLogger("workers.driver")

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_WAITING = 0, 1, 2, 3
_SKIP_REASON = "already has a FINISHED MLflow run"
TAG_ADOPTED = "dab.adopted"
TAG_ADOPTED_COUNT = "dab.adopted_count"
TAG_ADOPTED_BY = "dab.adopted_by"
TAG_WAITING_COUNT = "dab.waiting_count"
#: On a trial run trained in a stacked group (``execution.seeds: stacked``): "stacked".
TAG_EXECUTION = "dab.execution"


@dataclass
class SweepOutcome:
    """What a driver run did. `exit_code` is 0 only when every trial of the spec is FINISHED."""

    sweep_id: str
    state: str  # finished | failed | interrupted | waiting
    experiment_id: str
    parent_run_id: str
    ran: list[str] = field(default_factory=list)  # trial keys handed to Tune
    skipped: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)  # runs of other sweeps, recorded as ours
    waiting: list[str] = field(default_factory=list)  # other sweeps run them; the service restarts us
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
        if self.state == "waiting":
            return EXIT_WAITING
        return EXIT_INCOMPLETE


class SweepDirError(ValueError):
    """The sweep's location belongs to another sweep than the one asked for."""


def sweep_id_for(location: Location, given: str | None) -> str:
    """The sweep's id: `given` (the service passes its own), else the location's last name.

    Derived, never generated and kept: a standalone driver started again on the same
    location gets the same id, hence the same MLflow experiment and parent run, with no file
    recording them. A previous driver's ``status.json`` names the sweep it ran; a different id
    for the same location is refused, since it would track the Tune state of one sweep in the
    MLflow experiment of another.
    """
    sid = given or location.path.rstrip("/").rsplit("/", 1)[-1]
    previous = location.child(STATUS_FILE).read_json()
    known = previous.get("sweep_id") if isinstance(previous, dict) else None
    if known and known != sid:
        raise SweepDirError(
            f"{location} belongs to sweep {known!r}, not {sid!r}: pass --sweep-id {known} "
            "or use another sweep location"
        )
    return sid


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


def read_shared(location: Location) -> dict[str, Any]:
    """The service's word on trials other sweeps ran or run (``shared.json``, `service.sharing`):
    ``{"adopt": {key: {"run_id", "sweep_id"}}, "wait": {key: sweep_id}}``; empty without it."""
    data = location.child(SHARED_FILE).read_json()
    data = data if isinstance(data, dict) else {}
    adopt: dict[str, Any] = data["adopt"] if isinstance(data.get("adopt"), dict) else {}
    wait: dict[str, Any] = data["wait"] if isinstance(data.get("wait"), dict) else {}
    return {
        "adopt": {
            k: v for k, v in adopt.items() if isinstance(v, dict) and v.get("run_id") and v.get("sweep_id")
        },
        "wait": {k: str(v) for k, v in wait.items() if v},
    }


def _adoptable(client: Any, run_id: str) -> bool:
    """The run to adopt is still there and FINISHED (else this sweep runs the trial itself)."""
    from workers.tracking import FINISHED

    try:
        run = client.get_run(run_id)
    except Exception as e:
        log.warning("run %s to adopt not found (%s); running the trial instead", run_id, e)
        return False
    return bool(run.info.status == FINISHED and run.info.lifecycle_stage == "active")


def _tag_adoptions(
    client: Any, parent_id: str, sweep_id: str, adopted: Mapping[str, str], waiting: int
) -> None:
    """Say on the parent run which trials were adopted, and on each adopted run which sweeps
    adopted it (its ``dab.adopted_by``): the MLflow UI shows the link both ways."""
    from workers.tracking import set_run_tags, truncate

    set_run_tags(
        client,
        parent_id,
        {
            TAG_ADOPTED_COUNT: str(len(adopted)),
            TAG_ADOPTED: truncate(",".join(f"{k}={r}" for k, r in sorted(adopted.items())), 8000)[0],
            TAG_WAITING_COUNT: str(waiting),
        },
    )
    for run_id in sorted(set(adopted.values())):
        try:
            before = client.get_run(run_id).data.tags.get(TAG_ADOPTED_BY, "")
            ids = [x for x in before.split(",") if x]
            if sweep_id not in ids:
                client.set_tag(run_id, TAG_ADOPTED_BY, truncate(",".join([*ids, sweep_id]), 8000)[0])
        except Exception as e:  # a tag is a courtesy: the adoption itself is in the status
            log.warning("could not tag adopted run %s: %s", run_id, e)


def _with_tags(run_spec: Any, tags: Mapping[str, str]) -> Any:
    run_spec.tags.update(tags)
    return run_spec


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
    sweep_dir: str | os.PathLike[str] | Location,
    tracking_uri: str,
    sweep_id: str | None = None,
    ray_address: str | None = None,
    artifact_root: str | None = None,
    num_cpus: float | None = None,
    checkpoints_to_keep: int = DEFAULT_CHECKPOINTS_TO_KEEP,
    verbose: int = 0,
    linger_s: float = 1.0,
    hold_s: float = 0.0,
    prune_checkpoints: bool = True,
    extra_tags: Mapping[str, str] | None = None,
) -> SweepOutcome:
    """Run `trials` (the expansion of `spec`) as one sweep; see the module docstring.

    Args:
        spec: a `workers.spec.SweepSpec` (name, experiment, resources, limits, metric, mode).
        trials: its `workers.spec.Trial` list.
        sweep_dir: the sweep's location (status, Tune storage): a local directory (created if
            missing), an ``s3://bucket/prefix/<id>`` URI, or a `workers.storage.Location`.
        tracking_uri: MLflow tracking URI (``sqlite:///...`` or ``http(s)://...``).
        sweep_id: the sweep's id (default: the sweep directory's name; see `sweep_id_for`).
        ray_address: a Ray cluster to join; None joins ``RAY_ADDRESS`` or starts a local Ray
            (with `num_cpus`). An already initialised Ray in this process is used as it is.
        artifact_root: where the sweep's MLflow artifacts go (default: beside a sqlite store).
        checkpoints_to_keep: Tune's ``CheckpointConfig(num_to_keep)`` per running trial.
        linger_s: how long the MLflow writer collects work before it writes (a trial's reports
            and tags within it go out as one ``log_batch``): metrics reach MLflow within about
            this long. A killed driver's unwritten steps are filled in from the checkpoint's
            report history by the next one; a SIGTERM flushes first.
        hold_s: how long the writer holds a new run's creation, with the reports and tags
            that arrive meanwhile, to write them together (`MlflowWriter`): a trial shorter
            than this costs MLflow three requests (create with its tags, one ``log_batch``,
            end); a longer one shows in MLflow `hold_s` after it started. Off by default: at
            3 s it saved about 5% of the writer process's CPU (`bench/tracking_writer.py`) and
            nothing measurable of the 1,000-trial wall (1.12 against 1.10-1.16 without), and
            CI's run of the search SIGKILL test with it on lost three configurations' runs
            once, which did not reproduce here (`docs/workers.md`, "Off by default").
        prune_checkpoints: delete a finished trial's checkpoints from Tune's storage once its
            final checkpoint is an MLflow artifact.
        extra_tags: MLflow tags for the parent run and every trial run (the service's
            ``dab.suite_id`` for a suite's members).
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
    from workers.tracking.process import ProcessWriter

    t0 = time.monotonic()
    # MLflow's usage telemetry is a thread that competes with Tune's loop for the GIL (about
    # 4 ms of driver CPU a trial, bench/orchestration.py); off unless the environment says.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    location = sweep_dir if isinstance(sweep_dir, Location) else open_location(sweep_dir)
    if location.local:
        location.fs.create_dir(location.path, recursive=True)
    sid = sweep_id_for(location, sweep_id)
    keys = [t.trial_key for t in trials]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"trials with identical configs (trial_key {dup[0]}): a sweep runs each config once")

    with sweep_lock(location):
        tracker = SweepTracker(tracking_uri, sid, artifact_root, name=spec.name, description=spec.description)
        # The ids are MLflow's: found by the sweep id (or created) here, never kept in a file.
        experiment_id = tracker.ensure_experiment()
        extra = dict(extra_tags or {})
        parent_id = tracker.ensure_parent({**parent_tags(spec, trials, sid), **extra}, run_name=spec.name)
        runs = tracker.child_runs()
        tracker.end_interrupted(runs)

        status = SweepStatus(
            location,
            {
                "sweep_id": sid,
                "name": spec.name,
                "tracking_uri": tracking_uri,
                "tune_experiment": None,
                "search": spec.search is not None,
            },
        )
        status.add_trials(trials, runs)
        shared = read_shared(location)
        pending = []
        skipped = []
        adopted: dict[str, str] = {}
        waiting: list[str] = []
        for trial in trials:
            key = trial.trial_key
            run = runs.get(key)
            if run is not None and run.status == FINISHED:
                status.skip(key, _SKIP_REASON, run.run_id)
                skipped.append(key)
            elif key in shared["adopt"] and _adoptable(tracker.client, shared["adopt"][key]["run_id"]):
                source = shared["adopt"][key]
                status.adopt(key, source["run_id"], source["sweep_id"])
                adopted[key] = source["run_id"]
            elif key in shared["wait"]:
                status.wait(key, shared["wait"][key])
                waiting.append(key)
            else:
                pending.append(trial)
        tracker.client.set_tag(parent_id, TAG_SKIPPED_COUNT, str(len(skipped)))
        tracker.client.set_tag(parent_id, TAG_SKIPPED, truncate(",".join(skipped), 8000)[0])
        _tag_adoptions(tracker.client, parent_id, sid, adopted, len(waiting))
        status.write()
        if prune_checkpoints and skipped:
            prune_finished_checkpoints(location.child(TUNE_DIR), skipped)

        outcome = SweepOutcome(
            sweep_id=sid,
            state="failed",
            experiment_id=experiment_id,
            parent_run_id=parent_id,
            ran=[t.trial_key for t in pending],
            skipped=skipped,
            adopted=sorted(adopted),
            waiting=waiting,
        )
        known_runs = {**{k: r.run_id for k, r in runs.items()}, PARENT: parent_id}
        writer: MlflowWriter | ProcessWriter
        if os.environ.get("DAB_MLFLOW_WRITER", "process") == "thread":
            writer = MlflowWriter(
                tracker.client, experiment_id, known_runs, linger_s=linger_s, hold_s=hold_s
            ).start()
        else:  # the default: MLflow's per-request work off the driver's GIL (tracking/process.py)
            writer = ProcessWriter(
                tracking_uri, experiment_id, known_runs, linger_s=linger_s, hold_s=hold_s
            ).start()
        holder = Live()
        error: BaseException | None = None

        def on_stop(signum: int) -> None:
            # Ray Job stop: SIGTERM, then SIGKILL a few seconds later. End the runs first.
            reason = f"driver stopped by {signal.Signals(signum).name}"
            if holder.callback is not None:
                holder.callback.stop(KILLED, reason)
            writer.flush(timeout=2.0)
            status.set(state="interrupted")
            status.write()

        signals = SignalState()
        try:
            with stop_on_signals(on_stop, signals):
                session = _TuneSession(
                    location=location,
                    writer=writer,
                    status=status,
                    runs=runs,
                    run_spec=lambda t: _with_tags(
                        trial_run_spec(t, sweep_id=sid, parent_run_id=parent_id, family=spec.experiment),
                        extra,
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
                if spec.search is not None or pending:
                    tune_path, restored = (
                        _run_search(spec, session)
                        if spec.search is not None
                        else _run_tune(spec, pending, session)
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
            if not signals.wait_stopped(30):  # on_stop's flush waits 2 s at most
                log.error("ending the runs on %s took over 30 s; finishing without it", outcome.signal)
            _finish(outcome, status, writer, tracker, holder.callback, error)
            if holder.callback is not None:
                holder.callback.unregister()
            if holder.started_ray:
                import ray

                ray.shutdown()
            outcome.seconds = time.monotonic() - t0
    return outcome


@dataclass
class _TuneSession:
    """What a driver's Tune run works with: the sweep's storage, tracking and signals."""

    location: Location
    writer: Any
    status: Any
    runs: Mapping[str, Any]
    run_spec: Callable[[Any], Any]
    token: str
    prune_checkpoints: bool
    ray_address: str | None
    num_cpus: float | None
    checkpoints_to_keep: int
    verbose: int
    signals: SignalState
    live: Live

    def start(self, spec: Any) -> dict[str, float]:
        """Join (or start) Ray and return the per-trial resources fitted to the cluster."""
        import ray

        from workers.trainable import resolve_resources

        self.live.started_ray = ensure_ray(self.ray_address, self.num_cpus)
        self.signals.install()
        tune_env()
        resources, notes = resolve_resources(_requested_resources(spec), ray.cluster_resources())
        for note in notes:
            log.warning(note)
            self.status.note(note)
        return resources

    def callback(self, run_specs: Mapping[str, Any], last_steps: Mapping[str, Any], **kwargs: Any) -> Any:
        from workers.tracking import TrackingCallback

        callback = TrackingCallback(
            writer=self.writer,
            status=self.status,
            run_specs=run_specs,
            last_steps=last_steps,
            token=self.token,
            prune_checkpoints=self.prune_checkpoints,
            **kwargs,
        )
        self.live.callback = callback
        return callback

    def fit(self, tuner: Any, path: Location, resources: Mapping[str, float]) -> None:
        self.status.set(tune_experiment=str(path), resources=dict(resources))
        self.status.write()
        self.signals.in_fit = True
        try:
            tuner.fit()
        finally:
            self.signals.in_fit = False


def stacked_groups(pending: Sequence[Any]) -> dict[str, list[dict[str, Any]]]:
    """A grid's pending trials as group trials of ``execution.seeds: stacked``: one per cell,
    holding the cell's seeds still to run (a finished or adopted seed is not trained again),
    keyed by a digest of their trial keys (the same pending seeds, the same key: a restarted
    driver restores the group's Tune trial)."""
    import hashlib

    from workers.trainable import trial_dirname_suffix

    cells: dict[str, list[Any]] = {}
    for t in pending:
        cells.setdefault(t.cell_key, []).append(t)
    groups: dict[str, list[dict[str, Any]]] = {}
    for trials in cells.values():
        digest = hashlib.sha256("\n".join(t.trial_key for t in trials).encode()).hexdigest()
        members = [
            {"trial_key": t.trial_key, "replicate": t.replicate, "seed": t.seed, "config": dict(t.config)}
            for t in trials
        ]
        groups[trial_dirname_suffix(digest)] = members
    return groups


def _run_tune(spec: Any, pending: Sequence[Any], session: _TuneSession) -> tuple[Location, bool]:
    """A grid's pending trials under Tune: one Tune trial each, or with ``execution.seeds:
    stacked`` one a cell (`stacked_groups`), whose seeds the tracking logs one run each."""
    from dab_core.experiments import parse_config
    from workers.trainable import make_group_trainable, make_trainable

    for trial in pending:  # a bad config fails the sweep before any compute
        parse_config(trial.config)
    resources = session.start(spec)
    runs = session.runs
    stacked = spec.execution.seeds == "stacked"
    execution = {TAG_EXECUTION: "stacked"} if stacked else {}
    groups = stacked_groups(pending) if stacked else None
    callback = session.callback(
        {t.trial_key: _with_tags(session.run_spec(t), execution) for t in pending},
        {t.trial_key: runs[t.trial_key].last_step for t in pending if t.trial_key in runs},
        groups=groups,
    )
    if groups is not None:
        keys = list(groups)
        trainable = make_group_trainable(resources, stacked=True, groups=groups)
    else:
        keys = [t.trial_key for t in pending]
        trainable = make_trainable({t.trial_key: t.config for t in pending}, resources, run_keys=keys)
    tuner, path, restored = build_tuner(
        trainable,
        keys,
        tune_root=session.location.child(TUNE_DIR),
        callbacks=[callback],
        max_failures=spec.limits.max_failures,
        max_concurrent=spec.limits.max_concurrent,
        checkpoints_to_keep=session.checkpoints_to_keep,
        verbose=session.verbose,
    )
    log.info("%s Tune experiment %s for %d trial(s)", "restored" if restored else "new", path, len(keys))
    session.fit(tuner, path, resources)
    return path, restored


def _run_search(spec: Any, session: _TuneSession) -> tuple[Location, bool]:
    """A search under Tune (`workers.driver.search`): its configurations' trials are registered
    as the callback meets them (proposed now, or restored from the last driver's experiment)."""
    from workers.driver.search_state import repair_saved_search
    from workers.driver.tuner import SEARCH_EXPERIMENT, build_search_tuner
    from workers.spec import Trial
    from workers.spec.expand import cell_key_of
    from workers.tracking import FINISHED, TAG_CONFIG_INDEX
    from workers.trainable import CELL, INDEX, MEMBERS, make_group_trainable

    resources = session.start(spec)
    # every step of Tune's loop saves the experiment, the searcher with it: a proposal is on
    # storage before its trial starts (see workers.driver.search)
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "0"
    status, runs = session.status, session.runs

    def discover(config: Mapping[str, Any]) -> None:
        index, cell = int(config[INDEX]), dict(config[CELL])
        trials = [
            Trial(
                index * len(config[MEMBERS]) + int(m["replicate"]),
                cell,
                cell_key_of(cell),
                int(m["replicate"]),
                int(m["seed"]),
                dict(m["config"]),
                str(m["trial_key"]),
            )
            for m in config[MEMBERS]
        ]
        new = [t for t in trials if t.trial_key not in status.data["trials"]]
        status.add_trials(new, runs, cells=True)
        for t in new:
            run = runs.get(t.trial_key)
            if run is not None and run.status == FINISHED:
                status.skip(t.trial_key, _SKIP_REASON, run.run_id)
                continue
            callback.run_specs[t.trial_key] = _with_tags(session.run_spec(t), {TAG_CONFIG_INDEX: str(index)})
            if run is not None and run.last_step is not None:
                callback.last_steps[t.trial_key] = run.last_step
        status.write()

    callback = session.callback({}, {}, discover=discover)
    # Tune's saved files of a search can come from different saves (workers.driver.search_state)
    for note in repair_saved_search(session.location.child(TUNE_DIR, SEARCH_EXPERIMENT)):
        status.note(note)
    tuner, path, restored = build_search_tuner(
        spec,
        make_group_trainable(resources, stacked=spec.execution.seeds == "stacked"),
        tune_root=session.location.child(TUNE_DIR),
        callbacks=[callback],
        checkpoints_to_keep=session.checkpoints_to_keep,
        verbose=session.verbose,
    )
    log.info(
        "%s search %s: at most %d configuration(s)", "restored" if restored else "new", path, spec.num_configs
    )
    session.fit(tuner, path, resources)
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
    from workers._status import DONE_STATES
    from workers.tracking import FAILED, FINISHED, KILLED, set_run_tags

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
    if callback is not None:  # a search's trials are the ones its callback met
        outcome.ran = list(dict.fromkeys([*outcome.ran, *callback.run_specs]))
    if not writer.close(timeout=120):
        log.error("MLflow writer did not finish within 120 s; some writes may be missing")
    status.set_run_ids({k: writer.run_id(k) for k in status.states()})
    states = status.states()
    outcome.finished = sorted(k for k in outcome.ran if states.get(k) == "finished")
    outcome.failed = sorted(k for k, s in states.items() if s == "failed")
    outcome.killed = sorted(k for k, s in states.items() if s == "killed")
    outcome.not_run = sorted(k for k, s in states.items() if s == "pending")
    outcome.tracking_errors = list(writer.errors)
    complete = all(s in DONE_STATES for s in states.values())
    rest_done = all(s in (*DONE_STATES, "waiting") for s in states.values())
    parent_status: str | None
    if complete and error is None and not writer.errors:
        outcome.state, parent_status = "finished", FINISHED
    elif interrupted:
        outcome.state, parent_status = "interrupted", KILLED
    elif rest_done and error is None and not writer.errors:
        # Only trials other sweeps run are left: the parent run stays RUNNING, and the
        # service starts this driver again once they are done (exit code EXIT_WAITING).
        outcome.state, parent_status = "waiting", None
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
        set_run_tags(
            tracker.client, outcome.parent_run_id, {f"dab.count.{k}": str(v) for k, v in counts.items()}
        )
        if parent_status is not None:
            tracker.client.set_terminated(outcome.parent_run_id, parent_status)
    except Exception as e:  # the trials' runs are ended already; say so and move on
        log.error("could not end the parent run %s: %s", outcome.parent_run_id, e)
        outcome.tracking_errors.append(f"parent run: {e}")
