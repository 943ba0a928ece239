"""MLflow tracking of a sweep, written from the driver: exactly one run per trial.

Layout in MLflow: one experiment per sweep, named ``dab/<sweep id>``; in it one parent run for
the sweep (tag ``dab.role=sweep``) and one child run per trial (``dab.role=trial``,
``mlflow.parentRunId``, ``dab.trial_key``). Runs are found again by those tags, so a restarted
or resubmitted driver continues the runs it finds instead of making new ones.

Three pieces:

* `SweepTracker`: synchronous start-up work (experiment, parent run, the existing child runs
  with their status and the last step they hold).
* `MlflowWriter`: a background thread that owns every write. Tune's event loop only enqueues;
  the thread lingers a moment to collect work, then writes each run's metrics in one
  `log_batch` (never one request per metric). Runs are addressed by explicit run ids through
  `MlflowClient`: never MLflow's global active run.
* `TrackingCallback`: the Tune callback. It drops every report whose step a run already holds
  (a restore rewinds to the last checkpoint recorded in Tune's experiment state and reports
  those steps again), fills in from the checkpoint's report history the steps a killed driver
  reported but never wrote, logs the final checkpoint and ends each run FINISHED, FAILED or
  KILLED.

`configure_sqlite` puts a ``sqlite:`` store in WAL mode with a busy timeout: MLflow 3.17 sets
``busy_timeout`` itself on every session, but not WAL, and without WAL a writer blocks readers
(the service, the MLflow UI) and every commit pays a rollback-journal fsync.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import queue
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from workers.trainable import HISTORY_TIME_KEY, TRIAL_KEY, read_checkpoint_history

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from workers._status import SweepStatus

log = logging.getLogger(__name__)

# Tags. ``dab.*`` are ours; the ``mlflow.*`` ones are MLflow's own (the UI reads them).
TAG_SWEEP_ID = "dab.sweep_id"
TAG_ROLE = "dab.role"
TAG_TRIAL_KEY = "dab.trial_key"
TAG_TRIAL_INDEX = "dab.trial_index"
TAG_CELL = "dab.cell"
TAG_CELL_KEY = "dab.cell_key"
TAG_SEED = "dab.seed"
TAG_REPLICATE = "dab.replicate"
TAG_FAMILY = "dab.family"
TAG_VERSION = "dab.version"
TAG_GIT_COMMIT = "dab.git_commit"
TAG_SPEC_NAME = "dab.spec_name"
TAG_TRIAL_COUNT = "dab.trial_count"
TAG_SKIPPED_COUNT = "dab.skipped_count"
TAG_SKIPPED = "dab.skipped"
TAG_ATTEMPTS = "dab.attempts"
TAG_END_REASON = "dab.end_reason"
TAG_TRUNCATED_PARAMS = "dab.truncated_params"
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"
MLFLOW_RUN_NAME = "mlflow.runName"
MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"
ROLE_SWEEP = "sweep"
ROLE_TRIAL = "trial"

FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"
TERMINAL = frozenset({FINISHED, FAILED, KILLED})

# MLflow's limits (mlflow.utils.validation, 3.17): values past them are rejected.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100

PARENT = "__sweep__"  # the writer's key for the parent run

# Tune's own result keys: everything else a trial reports is one of its metrics.
_TUNE_RESULT_KEYS = frozenset(
    {
        "training_iteration",
        "time_total_s",
        "time_this_iter_s",
        "time_since_restore",
        "timesteps_total",
        "timesteps_since_restore",
        "iterations_since_restore",
        "episodes_total",
        "timestamp",
        "date",
        "pid",
        "hostname",
        "node_ip",
        "config",
        "trial_id",
        "experiment_id",
        "experiment_tag",
        "done",
        "should_checkpoint",
        "checkpoint_dir_name",
        HISTORY_TIME_KEY,
    }
)


def experiment_name(sweep_id: str) -> str:
    """The MLflow experiment of a sweep: deterministic, so a restarted driver finds it again."""
    return f"dab/{sweep_id}"


def find_sweep_ids(client: MlflowClient, sweep_id: str) -> tuple[str | None, str | None]:
    """(experiment id, parent run id) of a sweep, derived from its id; None where not created."""
    exp = client.get_experiment_by_name(experiment_name(sweep_id))
    if exp is None:
        return None, None
    runs = client.search_runs(
        [exp.experiment_id],
        f"tags.`{TAG_ROLE}` = '{ROLE_SWEEP}' and tags.`{TAG_SWEEP_ID}` = '{sweep_id}'",
        max_results=1,
    )
    return str(exp.experiment_id), (runs[0].info.run_id if runs else None)


# --------------------------------------------------------------------------------------------
# Store set-up


_sqlite_files: set[str] = set()  # the stores configure_sqlite was called for
_sqlite_lock = threading.Lock()


def _sqlite_path(tracking_uri: str) -> str | None:
    """The database file of a ``sqlite:///`` URI (absolute with four slashes), else None."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri[len("sqlite:///") :].split("?", 1)[0]
    return None if path in ("", ":memory:") else path


def configure_sqlite(tracking_uri: str, busy_timeout_ms: int = 30_000) -> None:
    """Make a ``sqlite:`` tracking store safe and fast for several writers; no-op otherwise.

    Switches the database file to WAL (a persistent property of the file, so every later
    reader and writer gets it) and registers, once per process, a SQLAlchemy ``connect`` hook
    that sets ``synchronous=NORMAL`` (safe in WAL: a crash loses no committed transaction) and
    the busy timeout on every new connection to a file configured here (other SQLite databases
    of the process, e.g. the service's, are left alone). Measured here: create_run 25 -> 7 ms,
    log_batch of 36 values 45 -> 10 ms.
    """
    path = _sqlite_path(tracking_uri)
    if path is None:
        return
    file = Path(path).resolve()
    file.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(file, timeout=busy_timeout_ms / 1000)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
    with _sqlite_lock:
        first = not _sqlite_files
        _sqlite_files.add(str(file))
        if not first:
            return
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            if not isinstance(dbapi_connection, sqlite3.Connection):
                return
            cursor = dbapi_connection.cursor()
            try:
                main = next(
                    (row[2] for row in cursor.execute("PRAGMA database_list") if row[1] == "main"), ""
                )
                if main and str(Path(main).resolve()) in _sqlite_files:
                    cursor.execute("PRAGMA journal_mode=WAL")
                    cursor.execute("PRAGMA synchronous=NORMAL")
                    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            finally:
                cursor.close()

        event.listen(Engine, "connect", _on_connect)


def default_artifact_root(tracking_uri: str) -> str | None:
    """Where a sweep's artifacts go when no root is given.

    For a ``sqlite:`` store: ``artifacts/`` beside the database file (MLflow's own default is
    ``./mlruns`` in the current directory, which scatters artifacts wherever the driver was
    started). For a tracking server: None, so the server's artifact store decides.
    """
    path = _sqlite_path(tracking_uri)
    if path is None:
        return None
    return Path(path).resolve().parent.joinpath("artifacts").as_uri()


def make_client(tracking_uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    configure_sqlite(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


# --------------------------------------------------------------------------------------------
# Params and tags


def _clean_key(key: str) -> str:
    # MLflow keys: alphanumerics, _ - . space / ; anything else would be rejected.
    out = "".join(c if c.isalnum() or c in "_-. /" else "_" for c in key)
    if len(out) > MAX_KEY:
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        out = f"{out[: MAX_KEY - 10]}~{digest}"
    return out


def _scalar_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None or isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True, default=str)


def truncate(value: str, limit: int) -> tuple[str, bool]:
    """`value` cut to `limit` characters with a marker naming the full value's hash."""
    if len(value) <= limit:
        return value, False
    digest = hashlib.sha256(value.encode()).hexdigest()[:12]
    marker = f"...[{len(value)} chars, sha256 {digest}]"
    return value[: limit - len(marker)] + marker, True


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, str], list[str]]:
    """A nested config as MLflow params: dotted keys, JSON for lists, values cut to MLflow's limit.

    Returns:
        (params, truncated): the params, and the keys whose values were too long and were cut
        (the caller logs the whole config as an artifact then).
    """
    params: dict[str, str] = {}
    truncated: list[str] = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            sub, sub_truncated = flatten_params(value, prefix=f"{name}.")
            params.update(sub)
            truncated.extend(sub_truncated)
            continue
        text, cut = truncate(_scalar_text(value), MAX_PARAM_VALUE)
        clean = _clean_key(name)
        params[clean] = text
        if cut:
            truncated.append(clean)
    return params, truncated


@functools.cache
def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("dab-sweeps")
    except Exception:  # not installed as a distribution: fall back on the library's own
        import dab_core

        return dab_core.__version__


_git_commit: str | None = None


def git_commit() -> str:
    """The commit of the code the driver runs: ``DAB_GIT_COMMIT`` (set in images), else git."""
    global _git_commit
    if _git_commit is None:
        commit = os.environ.get("DAB_GIT_COMMIT", "").strip()
        if not commit:
            try:
                commit = subprocess.run(
                    ["git", "rev-parse", "HEAD"],
                    cwd=Path(__file__).resolve().parent,
                    capture_output=True,
                    text=True,
                    timeout=5,
                    check=True,
                ).stdout.strip()
            except (OSError, subprocess.SubprocessError):
                commit = ""
        _git_commit = commit or "unknown"
    return _git_commit


@dataclass(frozen=True)
class RunSpec:
    """What a child run is created with: its name, tags and params."""

    run_name: str
    tags: dict[str, str]
    params: dict[str, str]
    config: dict[str, Any]
    truncated: tuple[str, ...] = ()


def trial_run_spec(trial: Any, *, sweep_id: str, parent_run_id: str, family: str) -> RunSpec:
    """The run of one expanded trial (a `workers.spec.Trial`)."""
    params, truncated = flatten_params(trial.config)
    cell_json = json.dumps(trial.cell, sort_keys=True, default=str)
    tags = {
        MLFLOW_PARENT_RUN_ID: parent_run_id,
        TAG_SWEEP_ID: sweep_id,
        TAG_ROLE: ROLE_TRIAL,
        TAG_TRIAL_KEY: trial.trial_key,
        TAG_TRIAL_INDEX: str(trial.index),
        TAG_CELL: truncate(cell_json, MAX_TAG_VALUE)[0],
        TAG_CELL_KEY: truncate(str(trial.cell_key), MAX_TAG_VALUE)[0],
        TAG_SEED: str(trial.seed),
        TAG_REPLICATE: str(trial.replicate),
        TAG_FAMILY: family,
        TAG_VERSION: package_version(),
        TAG_GIT_COMMIT: git_commit(),
        MLFLOW_GIT_COMMIT: git_commit(),
    }
    if truncated:
        tags[TAG_TRUNCATED_PARAMS] = truncate(",".join(truncated), MAX_TAG_VALUE)[0]
    name = f"{trial.index:04d} {trial.cell_key} seed={trial.seed}"
    return RunSpec(
        run_name=truncate(name, 250)[0],
        tags=tags,
        params=params,
        config=dict(trial.config),
        truncated=tuple(truncated),
    )


# --------------------------------------------------------------------------------------------
# Start-up: experiment, parent run, existing child runs


@dataclass
class ChildRun:
    """A trial's run as found in MLflow at start-up."""

    run_id: str
    trial_key: str
    status: str
    last_step: float | None
    duplicates: list[str] = field(default_factory=list)


def _status_rank(status: str) -> int:
    return {FINISHED: 0, RUNNING: 1, KILLED: 2, FAILED: 3}.get(status, 4)


class SweepTracker:
    """Synchronous MLflow work of the driver: find or make the sweep's experiment and runs."""

    def __init__(self, tracking_uri: str, sweep_id: str, artifact_root: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.sweep_id = sweep_id
        self.artifact_root = (
            artifact_root if artifact_root is not None else default_artifact_root(tracking_uri)
        )
        self.client = make_client(tracking_uri)
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None

    def ensure_experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        name = experiment_name(self.sweep_id)
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            location = f"{self.artifact_root.rstrip('/')}/{self.sweep_id}" if self.artifact_root else None
            try:
                self.experiment_id = self.client.create_experiment(
                    name, artifact_location=location, tags={TAG_SWEEP_ID: self.sweep_id}
                )
            except MlflowException:  # created meanwhile by someone else: use theirs
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
                self.experiment_id = experiment.experiment_id
        else:
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment.experiment_id)
            self.experiment_id = experiment.experiment_id
        return self.experiment_id

    def _search(self, filter_string: str) -> Iterator[Any]:
        assert self.experiment_id is not None
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id], filter_string, max_results=10_000, page_token=token
            )
            yield from page
            token = page.token
            if not token:
                return

    def ensure_parent(self, tags: Mapping[str, str], run_name: str) -> str:
        """The sweep's parent run, found by tag or created; set RUNNING with `tags` updated."""
        experiment_id = self.ensure_experiment()
        found = list(
            self._search(f"tags.`{TAG_ROLE}` = '{ROLE_SWEEP}' and tags.`{TAG_SWEEP_ID}` = '{self.sweep_id}'")
        )
        all_tags = {TAG_ROLE: ROLE_SWEEP, TAG_SWEEP_ID: self.sweep_id, **tags}
        if found:
            run = min(found, key=lambda r: r.info.start_time or 0)
            self.parent_run_id = run.info.run_id
            if run.info.status != RUNNING:
                self.client.update_run(self.parent_run_id, status=RUNNING)
            _set_tags(self.client, self.parent_run_id, all_tags)
        else:
            run = self.client.create_run(experiment_id, tags=all_tags, run_name=run_name)
            self.parent_run_id = run.info.run_id
        return self.parent_run_id

    def child_runs(self) -> dict[str, ChildRun]:
        """trial_key -> its run. Should a key ever have several, the best (FINISHED first, then
        the furthest along) is the run; the others are listed in `ChildRun.duplicates`."""
        by_key: dict[str, list[Any]] = {}
        filter_string = f"tags.`{TAG_ROLE}` = '{ROLE_TRIAL}' and tags.`{TAG_SWEEP_ID}` = '{self.sweep_id}'"
        for run in self._search(filter_string):
            key = run.data.tags.get(TAG_TRIAL_KEY)
            if key:
                by_key.setdefault(key, []).append(run)
        out: dict[str, ChildRun] = {}
        for key, runs in by_key.items():
            runs.sort(
                key=lambda r: (
                    _status_rank(r.info.status),
                    -(r.data.metrics.get("step") or 0),
                    r.info.start_time or 0,
                )
            )
            best = runs[0]
            out[key] = ChildRun(
                run_id=best.info.run_id,
                trial_key=key,
                status=best.info.status,
                last_step=best.data.metrics.get("step"),
                duplicates=[r.info.run_id for r in runs[1:]],
            )
            if len(runs) > 1:
                log.warning("trial %s has %d MLflow runs; continuing %s", key, len(runs), best.info.run_id)
        return out

    def end_interrupted(self, runs: Mapping[str, ChildRun]) -> list[str]:
        """End every run still RUNNING (its driver died): KILLED, until its trial runs again."""
        ended = []
        for run in runs.values():
            if run.status == RUNNING:
                _set_tags(self.client, run.run_id, {TAG_END_REASON: "driver stopped before the trial ended"})
                self.client.set_terminated(run.run_id, KILLED)
                run.status = KILLED
                ended.append(run.run_id)
        return ended


def _set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(_clean_key(k), truncate(str(v), MAX_TAG_VALUE)[0]) for k, v in tags.items()]
    for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, tags=items[i : i + MAX_PARAMS_TAGS_PER_BATCH])


# --------------------------------------------------------------------------------------------
# The writer thread


@dataclass(frozen=True)
class Report:
    """One report of a trial: its step, wall time (ms) and metric values."""

    step: int
    time_ms: int
    values: dict[str, float]


class _Stop:
    pass


@dataclass
class _Op:
    kind: str
    key: str
    payload: Any = None


class MlflowWriter:
    """Background thread that performs every MLflow write of a sweep, in order per run.

    Methods enqueue and return at once. The thread waits `linger_s` after the first queued
    operation to collect more, then writes: consecutive metric reports of a run go out as one
    `log_batch` (up to 1,000 values, never splitting a report, so a run holds a report's
    metrics entirely or not at all). Transient failures are retried with backoff; a write
    that still fails is logged and kept in `errors`, and the sweep carries on.
    """

    def __init__(
        self,
        client: MlflowClient,
        experiment_id: str,
        runs: Mapping[str, str] | None = None,
        *,
        linger_s: float = 0.25,
        retries: int = 5,
    ) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.linger_s = linger_s
        self.retries = retries
        self.errors: list[str] = []
        self.failed_keys: set[str] = set()
        self._pending_params: dict[str, list[Any]] = {}  # writer thread only
        self._create_tried: set[str] = set()  # writer thread only
        self._runs: dict[str, str] = dict(runs or {})
        self._runs_lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Op | _Stop] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="dab-mlflow-writer", daemon=True)
        self._closed = False

    # -- the public, non-blocking side ---------------------------------------------------

    def start(self) -> MlflowWriter:
        self._thread.start()
        return self

    def run_id(self, key: str) -> str | None:
        with self._runs_lock:
            return self._runs.get(key)

    def open_run(self, key: str, spec: RunSpec, tags: Mapping[str, str] | None = None) -> None:
        """Create the run of `key` with `spec` and `tags`, or set its existing run RUNNING again
        (with `tags` updated)."""
        self._put(_Op("open", key, (spec, dict(tags or {}))))

    def log_reports(self, key: str, reports: Sequence[Report]) -> None:
        if reports:
            self._put(_Op("metrics", key, list(reports)))

    def log_artifacts(
        self, key: str, source: Callable[[], contextlib.AbstractContextManager[str]], path: str
    ) -> None:
        """Log the directory that `source()` yields (a context manager) under `path`."""
        self._put(_Op("artifacts", key, (source, path)))

    def set_tags(self, key: str, tags: Mapping[str, str]) -> None:
        self._put(_Op("tags", key, dict(tags)))

    def terminate(
        self, key: str, status: str, reason: str | None = None, after: Callable[[], None] | None = None
    ) -> None:
        """End the run of `key` with `status`; then, only if every write for `key` so far
        worked, call `after` (e.g. delete the copy of a checkpoint that is now an artifact)."""
        self._put(_Op("terminate", key, (status, reason, after)))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        if not self._thread.is_alive():
            return self._queue.empty()
        done = threading.Event()
        self._put(_Op("barrier", "", done))
        return done.wait(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Write what is queued, then stop the thread; False if it did not finish in time."""
        if self._closed:
            return True
        self._closed = True
        if not self._thread.is_alive():
            return self._queue.empty()
        self._queue.put(_Stop())
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _put(self, op: _Op) -> None:
        if self._closed:
            log.warning("MLflow writer is closed; dropping %s for %s", op.kind, op.key)
            return
        self._queue.put(op)

    # -- the thread -----------------------------------------------------------------------

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            ops: list[_Op | _Stop] = [first]
            if isinstance(first, _Op) and first.kind != "barrier":
                deadline = time.monotonic() + self.linger_s
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        op = self._queue.get(timeout=remaining)
                    except queue.Empty:
                        break
                    ops.append(op)
                    if isinstance(op, _Stop) or op.kind == "barrier":
                        break
            # Whatever else is already there goes in the same round.
            while True:
                try:
                    ops.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = self._process(ops)

    def _process(self, ops: list[_Op | _Stop]) -> bool:
        pending: dict[str, list[Report]] = {}
        stop = False
        for op in ops:
            if isinstance(op, _Stop):
                stop = True
                continue
            if op.kind == "metrics":
                pending.setdefault(op.key, []).extend(op.payload)
                continue
            if op.kind == "barrier":
                self._flush_all(pending)
                op.payload.set()
                continue
            if op.key in pending or op.key in self._pending_params:
                # Keep per-run order: what was queued before this op is written before it.
                self._flush_key(op.key, pending.pop(op.key, []))
            self._guard(op.kind, op.key, functools.partial(self._apply, op))
        self._flush_all(pending)
        return stop

    def _flush_all(self, pending: dict[str, list[Report]]) -> None:
        for key in [*pending, *(k for k in self._pending_params if k not in pending)]:
            self._flush_key(key, pending.get(key, []))
        pending.clear()

    def _flush_key(self, key: str, reports: list[Report]) -> None:
        self._guard("metrics", key, functools.partial(self._write, key, reports))

    def _guard(self, kind: str, key: str, fn: Callable[[], None]) -> None:
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                fn()
                return
            except Exception as e:
                if attempt == self.retries or not _transient(e):
                    msg = f"MLflow {kind} for {key!r} failed: {type(e).__name__}: {e}"
                    log.error(msg)
                    self.errors.append(msg)
                    self.failed_keys.add(key)
                    self._pending_params.pop(key, None)
                    return
                log.warning("MLflow %s for %r failed (%s), retrying in %.1fs", kind, key, e, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _require(self, key: str) -> str:
        run_id = self.run_id(key)
        if run_id is None:
            raise RuntimeError(f"no MLflow run for {key!r}: its creation failed earlier")
        return run_id

    def _apply(self, op: _Op) -> None:
        if op.kind == "open":
            spec, tags = op.payload
            self._open(op.key, spec, tags)
        elif op.kind == "artifacts":
            source, path = op.payload
            with source() as directory:
                self.client.log_artifacts(self._require(op.key), directory, path)
        elif op.kind == "tags":
            _set_tags(self.client, self._require(op.key), op.payload)
        elif op.kind == "terminate":
            status, reason, after = op.payload
            run_id = self._require(op.key)
            if reason:
                _set_tags(self.client, run_id, {TAG_END_REASON: reason})
            self.client.set_terminated(run_id, status)
            if after is not None and op.key not in self.failed_keys:
                try:
                    after()
                except Exception as e:  # the run is complete; a leftover copy is no error
                    log.warning("after ending the run of %r: %s", op.key, e)
        else:  # pragma: no cover - programming error
            raise ValueError(f"unknown writer op {op.kind!r}")

    def _open(self, key: str, spec: RunSpec, tags: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        run_id = self.run_id(key)
        if run_id is not None:
            self.client.update_run(run_id, status=RUNNING)
            if tags:
                _set_tags(self.client, run_id, tags)
            return
        existing: list[Any] = []
        if key in self._create_tried:
            # A retried create may follow one whose answer was lost (HTTP): look before creating.
            existing = self.client.search_runs(
                [self.experiment_id],
                f"tags.`{TAG_TRIAL_KEY}` = '{spec.tags[TAG_TRIAL_KEY]}' "
                f"and tags.`{TAG_SWEEP_ID}` = '{spec.tags[TAG_SWEEP_ID]}'",
                max_results=1,
            )
        self._create_tried.add(key)
        if existing:
            run_id = existing[0].info.run_id
            self.client.update_run(run_id, status=RUNNING)
            if tags:
                _set_tags(self.client, run_id, tags)
        else:
            all_tags = {**spec.tags, **tags}
            run_id = self.client.create_run(
                self.experiment_id, tags=all_tags, run_name=spec.run_name
            ).info.run_id
        with self._runs_lock:
            self._runs[key] = run_id
        if existing:
            return
        # The params go out with the run's first metrics: one request fewer per trial.
        self._pending_params[key] = [Param(k, v) for k, v in spec.params.items()]
        if spec.truncated:
            with tempfile.TemporaryDirectory(prefix="dab-config-") as tmp:
                with open(Path(tmp) / "config.json", "w", encoding="utf-8") as f:
                    json.dump(spec.config, f, indent=1, default=str)
                self.client.log_artifacts(run_id, tmp)

    def _write(self, key: str, reports: list[Report]) -> None:
        """Write `key`'s pending params and `reports` in as few `log_batch` calls as MLflow's
        limits allow, never splitting a report across two calls."""
        from mlflow.entities import Metric

        run_id = self._require(key)
        params = self._pending_params.get(key, [])
        batches: list[tuple[list[Any], list[Metric]]] = []
        for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            batches.append((params[i : i + MAX_PARAMS_TAGS_PER_BATCH], []))
        if not batches:
            batches.append(([], []))
        for report in reports:
            metrics = [
                Metric(_clean_key(k), v, report.time_ms, report.step) for k, v in report.values.items()
            ]
            batch_params, batch_metrics = batches[-1]
            if (
                batch_metrics
                and len(batch_params) + len(batch_metrics) + len(metrics) > MAX_METRICS_PER_BATCH
            ):
                batches.append(([], []))
            batches[-1][1].extend(metrics)
        for batch_params, batch_metrics in batches:
            if batch_params or batch_metrics:
                self._log_batch_once(run_id, batch_params, batch_metrics)
            if batch_params:  # landed: a retry must not send them again
                self._pending_params[key] = self._pending_params[key][len(batch_params) :]
        self._pending_params.pop(key, None)

    def _log_batch_once(self, run_id: str, params: list[Any], metrics: list[Any]) -> None:
        try:
            self.client.log_batch(run_id, metrics=metrics, params=params)
        except Exception as e:
            if not _transient(e):
                raise
            # The batch may have landed although its answer was lost: a batch is one
            # transaction, so the run's latest "step" (or a param) tells whether it did.
            with contextlib.suppress(Exception):
                data = self.client.get_run(run_id).data
                if metrics and (data.metrics.get("step") or -1) >= max(m.step for m in metrics):
                    return
                if not metrics and params and params[0].key in data.params:
                    return
            raise


def _transient(error: Exception) -> bool:
    """Whether a failed MLflow call is worth retrying (locked database, network, 5xx)."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        code = getattr(error, "error_code", "")
        text = str(error).lower()
        return code in {"TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED"} or (
            "locked" in text or "timed out" in text or "connection" in text
        )
    name = type(error).__name__
    return name in {
        "OperationalError",
        "ConnectionError",
        "Timeout",
        "ReadTimeout",
        "ConnectTimeout",
    } or isinstance(error, ConnectionError | TimeoutError)


# --------------------------------------------------------------------------------------------
# The Tune callback


def result_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The metrics a trial reported, without Tune's own bookkeeping keys."""
    out: dict[str, float] = {}
    for key, value in result.items():
        if key in _TUNE_RESULT_KEYS or key.startswith("config/") or isinstance(value, str):
            continue
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, int | float):
            out[key] = float(value)
    return out


def _step_of(values: Mapping[str, Any]) -> float | None:
    step = values.get("step", values.get("training_iteration"))
    return None if step is None or (isinstance(step, float) and math.isnan(step)) else float(step)


@contextlib.contextmanager
def _checkpoint_directory(checkpoint: Any) -> Iterator[str]:
    with checkpoint.as_directory() as directory:
        yield directory


def _prune_trial_checkpoints(trial: Any) -> None:
    """Delete a finished trial's checkpoints from Tune's storage (its final one is in MLflow).

    A finished trial is never resumed (a restore skips TERMINATED trials), so its checkpoints
    in Tune's storage are a second copy of the MLflow artifact: on a 600-trial sweep of
    ResNet-18s that is tens of GB.
    """
    from pyarrow.fs import FileSelector, FileType

    fs = trial.storage.storage_filesystem
    infos = fs.get_file_info(FileSelector(trial.storage.trial_fs_path, allow_not_found=True))
    for info in infos:
        if info.type == FileType.Directory and info.base_name.startswith("checkpoint_"):
            fs.delete_dir(info.path)


# The live callback a restored Tuner gets back: see `TrackingCallback.__reduce__`.
_LIVE_CALLBACKS: dict[str, TrackingCallback] = {}


def _restore_callback(token: str) -> Callback:
    live = _LIVE_CALLBACKS.get(token)
    if live is None:
        log.warning(
            "restoring a Tune experiment without its live MLflow tracker (%s): nothing is logged", token
        )
        return Callback()
    return live


class TrackingCallback(Callback):
    """Tune callback that tracks every trial of a sweep in its own MLflow run, exactly once.

    Runs on Tune's event loop, so it only decides and enqueues; `MlflowWriter` does the IO.

    Args:
        writer: the sweep's writer; its run table already holds the runs found at start-up.
        status: the sweep's status file, updated as trials progress.
        run_specs: trial_key -> how to create its run, for the trials this driver runs.
        last_steps: trial_key -> the last step its run already holds (from MLflow at start-up);
            reports at or below it are dropped.
        token: the name under which a restored Tuner finds this live callback again: the same
            for every driver of the sweep.
        prune_checkpoints: once a finished trial's final checkpoint is an MLflow artifact,
            delete its checkpoints from Tune's storage.
    """

    def __init__(
        self,
        *,
        writer: MlflowWriter,
        status: SweepStatus,
        run_specs: Mapping[str, RunSpec],
        last_steps: Mapping[str, float | None],
        token: str,
        prune_checkpoints: bool = True,
    ) -> None:
        self.writer = writer
        self.prune_checkpoints = prune_checkpoints
        self.status = status
        self.run_specs = dict(run_specs)
        self.last_steps: dict[str, float] = {k: v for k, v in last_steps.items() if v is not None}
        self.token = token
        self.ended: dict[str, str] = {}  # trial_key -> FINISHED / FAILED / KILLED, this session
        self.started: set[str] = set()
        self._stopped = False
        self._reconciled = False
        self._lock = threading.RLock()  # signal handlers call `stop` on the loop's thread
        _LIVE_CALLBACKS[token] = self

    def __reduce__(self) -> tuple[Any, ...]:
        # Tuner pickles its RunConfig (callbacks included) into tuner.pkl, and Tuner.restore
        # unpickles it: a thread and a client cannot be pickled, and a restored driver must
        # use its own live tracker anyway. The pickle holds only the token.
        return (_restore_callback, (self.token,))

    # -- helpers --------------------------------------------------------------------------

    def _key(self, trial: Any) -> str | None:
        key = trial.config.get(TRIAL_KEY)
        return key if key in self.run_specs else None

    def _log(self, key: str, reports: Iterable[Report]) -> int:
        """Enqueue the reports past the run's last step; returns how many went out."""
        fresh = []
        last = self.last_steps.get(key, -math.inf)
        for report in sorted(reports, key=lambda r: r.step):
            if report.step > last:
                fresh.append(report)
                last = report.step
        if fresh:
            self.last_steps[key] = last
            self.writer.log_reports(key, fresh)
        return len(fresh)

    def _backfill(self, key: str, checkpoint: Any) -> float:
        """Write the steps the checkpoint's history holds and the run lacks; returns its step."""
        history = read_checkpoint_history(checkpoint)
        reports = []
        for entry in history:
            values = {k: float(v) for k, v in entry.items() if k != HISTORY_TIME_KEY}
            step = _step_of(values)
            if step is not None:
                reports.append(
                    Report(int(step), int(entry.get(HISTORY_TIME_KEY, time.time() * 1000)), values)
                )
        written = self._log(key, reports)
        if written:
            log.info("trial %s: %d report(s) filled in from its checkpoint history", key, written)
        return max((r.step for r in reports), default=0)

    def _finish(self, key: str, trial: Any) -> None:
        checkpoint = getattr(trial, "checkpoint", None)
        if checkpoint is not None:
            self._backfill(key, checkpoint)
            self.writer.log_artifacts(key, functools.partial(_checkpoint_directory, checkpoint), "checkpoint")
        prune = checkpoint is not None and self.prune_checkpoints
        self.writer.terminate(
            key, FINISHED, after=functools.partial(_prune_trial_checkpoints, trial) if prune else None
        )
        self.ended[key] = FINISHED
        self.status.finished(key)

    # -- Tune hooks -----------------------------------------------------------------------

    def _reconcile(self, trials: list[Any]) -> None:
        # A restored experiment can hold trials Tune already counts as TERMINATED whose MLflow
        # run never got its end (the driver died in between): finish them from their final
        # checkpoint (history and artifact) instead of leaving them open.
        for trial in trials:
            key = self._key(trial)
            if key and trial.status == "TERMINATED" and key not in self.ended:
                with self._lock:
                    self.writer.open_run(
                        key, self.run_specs[key], {TAG_ATTEMPTS: str(self.status.attempts(key))}
                    )
                    self._finish(key, trial)

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if not self._reconciled:
            self._reconciled = True
            self._reconcile(trials)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        key = self._key(trial)
        if key is None:
            return
        with self._lock:
            if self._stopped:
                return
            self.started.add(key)
            attempt = self.status.attempts(key) + 1
            self.writer.open_run(key, self.run_specs[key], {TAG_ATTEMPTS: str(attempt)})
            from_step = 0.0
            if trial.checkpoint is not None:
                from_step = self._backfill(key, trial.checkpoint)
            self.status.started(key, from_step=from_step, run_id=self.writer.run_id(key))

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        key = self._key(trial)
        if key is None or key in self.ended:  # an ended run is not written to again
            return
        values = result_metrics(result)
        step = _step_of(values)
        if step is None:
            return
        with self._lock:
            self._log(key, [Report(int(step), int(time.time() * 1000), values)])
            self.status.progress(key, step=step, pid=result.get("pid"), run_id=self.writer.run_id(key))

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        key = self._key(trial)
        if key is not None:
            self.status.retrying(key, error=_error_text(trial))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        key = self._key(trial)
        if key is None:
            return
        with self._lock:
            error = _error_text(trial)
            self.writer.terminate(key, FAILED, reason=error)
            self.ended[key] = FAILED
            self.status.failed(key, error=error)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        key = self._key(trial)
        if key is None or self.ended.get(key) == FINISHED:
            return
        with self._lock:
            self._finish(key, trial)

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        self.status.maybe_write()

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        if not self._stopped:  # a restore whose trials were all TERMINATED takes no step at all
            self._reconcile(trials)
        self.status.write()

    # -- the driver's side ----------------------------------------------------------------

    def stop(self, status: str, reason: str) -> list[str]:
        """End every run this session opened and did not end, with `status`; stop opening runs.

        Called when the driver stops (signal, error, or Tune returned with trials unfinished).
        Returns the trial keys it ended.
        """
        with self._lock:
            self._stopped = True
            ended = []
            for key in sorted(self.started - set(self.ended)):
                self.writer.terminate(key, status, reason=reason)
                self.ended[key] = status
                self.status.stopped(key, state="killed" if status == KILLED else "failed", error=reason)
                ended.append(key)
            return ended

    def unregister(self) -> None:
        if _LIVE_CALLBACKS.get(self.token) is self:
            del _LIVE_CALLBACKS[self.token]


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    text = ""
    if path:
        with contextlib.suppress(OSError):
            text = Path(path).read_text(errors="replace").strip().splitlines()[-1]
    return truncate(text or "trial failed", 2000)[0]


__all__ = [
    "FAILED",
    "FINISHED",
    "KILLED",
    "MLFLOW_PARENT_RUN_ID",
    "TAG_CELL",
    "TAG_CELL_KEY",
    "TAG_FAMILY",
    "TAG_GIT_COMMIT",
    "TAG_ROLE",
    "TAG_SEED",
    "TAG_SKIPPED",
    "TAG_SWEEP_ID",
    "TAG_TRIAL_KEY",
    "TAG_VERSION",
    "ChildRun",
    "MlflowWriter",
    "Report",
    "RunSpec",
    "SweepTracker",
    "TrackingCallback",
    "configure_sqlite",
    "default_artifact_root",
    "experiment_name",
    "flatten_params",
    "git_commit",
    "make_client",
    "package_version",
    "result_metrics",
    "trial_run_spec",
    "truncate",
]
