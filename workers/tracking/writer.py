"""The MLflow writer thread: every MLflow write of a sweep, batched, retried, in order per run.

Tune's event loop only enqueues (`MlflowWriter`'s public methods never touch the client); the
thread lingers a moment to collect work, then writes each run's params, tags and metrics in one
`log_batch` (never one request per metric or per tag). Runs are addressed by explicit run ids
through `MlflowClient`: never MLflow's global active run, which concurrent trials would share. The caller
(`workers.tracking.callback`) drops the steps a run already holds before they reach the writer;
the writer makes sure a retried write whose first answer was lost does not land twice.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workers.tracking.runs import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VALUE,
    RUNNING,
    TAG_END_REASON,
    TAG_SWEEP_ID,
    TAG_TRIAL_KEY,
    RunSpec,
    clean_key,
    set_run_tags,
    truncate,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger("workers.tracking")

PARENT = "__sweep__"  # the writer's key for the parent run


@dataclass(frozen=True)
class Report:
    """One report of a trial: its step, wall time (ms) and metric values."""

    step: int
    time_ms: int
    values: dict[str, float]


@contextlib.contextmanager
def local_directory(path: str, member: int | None = None) -> Iterator[str]:
    """A local checkpoint directory as an artifact source (`workers.tracking.callback.artifact_source`);
    a configuration's member `member`: its own part of it."""
    yield path if member is None else f"{path}/member-{member}"


class _Stop:
    pass


@dataclass
class _Op:
    kind: str
    key: str
    payload: Any = None


@dataclass
class _Pending:
    """What the writer holds for one run until it writes it: the run's creation when it is
    new (its `RunSpec` and tags), then reports and tags; written as `create_run` (with every
    tag held) and one `log_batch`."""

    reports: list[Report]
    tags: dict[str, str]
    since: float  # time.monotonic() when the first of it was held
    open: tuple[RunSpec, dict[str, str]] | None = None


class MlflowWriter:
    """Background thread that performs every MLflow write of a sweep, in order per run.

    Methods enqueue and return at once. The thread waits `linger_s` after the first queued
    operation to collect more (asleep: an enqueue does not wake it, only `flush` and `close`
    do, so Tune's loop does not hand it the GIL at every report), then writes: a run's
    reports and tags of the round go out as one `log_batch` (up to 1,000 values, never
    splitting a report, so a run holds a report's metrics entirely or not at all), with its
    params when it was just created. A new run's creation is held up to `hold_s`, and with it
    the reports and tags that arrive meanwhile: the tags (where the trial runs) go into
    `create_run` itself, the reports into one `log_batch`. Anything else for the run
    (artifacts, its end), a `flush` and `close` write what is held first; so a trial shorter
    than `hold_s` costs `create_run`, one `log_batch` and `set_terminated`, and a longer one
    appears in MLflow `hold_s` after it started, then gets its reports each round as before.
    Transient failures are retried with backoff; a write that still fails is logged and kept
    in `errors`, and the sweep carries on.
    """

    def __init__(
        self,
        client: MlflowClient,
        experiment_id: str,
        runs: Mapping[str, str] | None = None,
        *,
        linger_s: float = 0.25,
        hold_s: float = 0.0,
        retries: int = 5,
    ) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.linger_s = linger_s
        self.hold_s = hold_s
        self.retries = retries
        self.errors: list[str] = []
        self.failed_keys: set[str] = set()
        self._pending_params: dict[str, list[Any]] = {}  # writer thread only
        self._held: dict[str, _Pending] = {}  # writer thread only, in the order first held
        self._create_tried: set[str] = set()  # writer thread only
        self._runs: dict[str, str] = dict(runs or {})
        self._artifact_uris: dict[str, str] = {}  # writer thread only: runs it created
        self._runs_lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Op | _Stop] = queue.SimpleQueue()
        self._urgent = threading.Event()  # a flush or close is waiting: stop lingering
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
        self._urgent.set()
        return done.wait(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Write what is queued, then stop the thread; False if it did not finish in time."""
        if self._closed:
            return True
        self._closed = True
        if not self._thread.is_alive():
            return self._queue.empty()
        self._queue.put(_Stop())
        self._urgent.set()
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
            try:
                first = self._queue.get(timeout=self._until_due())
            except queue.Empty:  # something held is due, and nothing else came
                self._flush_due()
                continue
            ops: list[_Op | _Stop] = [first]
            if isinstance(first, _Op) and first.kind != "barrier" and self.linger_s > 0:
                self._urgent.wait(self.linger_s)
            # Cleared before the queue is read: a flush or close whose op this round misses
            # set it after this, so the next round does not linger.
            self._urgent.clear()
            # Whatever is there now goes in this round.
            while True:
                try:
                    ops.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = self._process(ops)
            self._flush_due()

    def _until_due(self) -> float | None:
        """Seconds until the oldest held creation is due to be written; None when none is held
        (what is held for a run that exists is written at the end of its round)."""
        held = [p.since for p in self._held.values() if p.open is not None]
        if not held:
            return None
        return max(0.0, min(held) + self.hold_s - time.monotonic())

    def _held_for(self, key: str) -> _Pending:
        pending = self._held.get(key)
        if pending is None:
            pending = self._held[key] = _Pending([], {}, time.monotonic())
        return pending

    def _process(self, ops: list[_Op | _Stop]) -> bool:
        stop = False
        for op in ops:
            if isinstance(op, _Stop):
                stop = True
                continue
            if op.kind == "metrics":
                self._held_for(op.key).reports.extend(op.payload)
                continue
            if op.kind == "tags":  # tags go in the run's next write (a later value wins)
                self._held_for(op.key).tags.update(op.payload)
                continue
            if op.kind == "open" and self.run_id(op.key) is None and self.hold_s > 0:
                held = self._held_for(op.key)
                spec, tags = op.payload
                # A second open before the first was written (a quick retry): one creation,
                # its tags the later ones.
                held.open = (spec, {**(held.open[1] if held.open else {}), **tags})
                continue
            if op.kind == "barrier":
                self._flush_all()
                op.payload.set()
                continue
            if op.key in self._held or op.key in self._pending_params:
                # Keep per-run order: what was queued before this op is written before it.
                self._flush_key(op.key)
            self._guard(op.kind, op.key, functools.partial(self._apply, op))
        if stop:
            self._flush_all()
        return stop

    def _flush_due(self) -> None:
        """At the end of a round: write what is held for runs that exist, the creations held
        `hold_s` or longer, and the params of runs created since the last round (without
        `hold_s`, a run is created at once and its params wait for its first reports only
        until the round ends)."""
        now = time.monotonic()
        self._flush([k for k, p in self._held.items() if p.open is None or p.since + self.hold_s <= now])

    def _flush_all(self) -> None:
        self._flush(list(self._held))

    def _flush(self, keys: list[str]) -> None:
        """Write `keys`' held work, then the params still waiting for runs not held."""
        for key in [*keys, *(k for k in self._pending_params if k not in self._held)]:
            self._flush_key(key)

    def _flush_key(self, key: str) -> None:
        held = self._held.pop(key, None)
        reports, tags = (held.reports, held.tags) if held is not None else ([], {})
        if held is not None and held.open is not None:
            spec, open_tags = held.open
            # The tags held meanwhile are created with the run: no separate write for them.
            created = {**open_tags, **_tag_values(tags)}
            self._guard("open", key, functools.partial(self._open, key, spec, created))
            tags = {}
        if not (reports or tags or key in self._pending_params):
            return
        kind = "metrics" if reports or not tags else "tags"
        self._guard(kind, key, functools.partial(self._write, key, reports, tags))

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
            run_id = self._require(op.key)
            with source() as directory:
                uri = self._artifact_uris.get(op.key)
                if uri is not None:
                    # The run's artifact location came back with its creation: no get_run
                    # (MlflowClient.log_artifacts asks for the run to find it).
                    from mlflow.store.artifact.artifact_repository_registry import (
                        get_artifact_repository,
                    )

                    repo = get_artifact_repository(uri, tracking_uri=self.client.tracking_uri)
                    repo.log_artifacts(directory, path)
                else:
                    self.client.log_artifacts(run_id, directory, path)
        elif op.kind == "terminate":
            status, reason, after = op.payload
            run_id = self._require(op.key)
            if reason:
                set_run_tags(self.client, run_id, {TAG_END_REASON: reason})
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
                set_run_tags(self.client, run_id, tags)
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
                set_run_tags(self.client, run_id, tags)
        else:
            all_tags = {**spec.tags, **tags}
            info = self.client.create_run(self.experiment_id, tags=all_tags, run_name=spec.run_name).info
            run_id = info.run_id
            # MLflow rewrites a Databricks store's artifact URI before use: leave those to it.
            if info.artifact_uri and not str(self.client.tracking_uri).startswith("databricks"):
                self._artifact_uris[key] = info.artifact_uri
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

    def _write(self, key: str, reports: list[Report], tags: Mapping[str, str] | None = None) -> None:
        """Write `key`'s pending params, `tags` and `reports` in as few `log_batch` calls as
        MLflow's limits allow (100 params and tags, 1,000 values a call), never splitting a
        report across two calls."""
        from mlflow.entities import Metric, Param, RunTag

        run_id = self._require(key)
        params = self._pending_params.get(key, [])
        run_tags = [RunTag(k, v) for k, v in _tag_values(tags or {}).items()]
        head: list[Any] = [*params, *run_tags]
        batches: list[tuple[list[Any], list[Any], list[Metric]]] = []
        for i in range(0, len(head), MAX_PARAMS_TAGS_PER_BATCH):
            chunk = head[i : i + MAX_PARAMS_TAGS_PER_BATCH]
            batches.append(
                ([x for x in chunk if isinstance(x, Param)], [x for x in chunk if isinstance(x, RunTag)], [])
            )
        if not batches:
            batches.append(([], [], []))
        for report in reports:
            metrics = [Metric(clean_key(k), v, report.time_ms, report.step) for k, v in report.values.items()]
            batch_params, batch_tags, batch_metrics = batches[-1]
            size = len(batch_params) + len(batch_tags) + len(batch_metrics)
            if batch_metrics and size + len(metrics) > MAX_METRICS_PER_BATCH:
                batches.append(([], [], []))
            batches[-1][2].extend(metrics)
        for batch_params, batch_tags, batch_metrics in batches:
            if batch_params or batch_tags or batch_metrics:
                self._log_batch_once(run_id, batch_params, batch_metrics, batch_tags)
            if batch_params:  # landed: a retry must not send them again
                self._pending_params[key] = self._pending_params[key][len(batch_params) :]
        self._pending_params.pop(key, None)

    def _log_batch_once(
        self, run_id: str, params: list[Any], metrics: list[Any], tags: list[Any] | None = None
    ) -> None:
        try:
            self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags or [])
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


def _tag_values(tags: Mapping[str, Any]) -> dict[str, str]:
    """`tags` as MLflow takes them: keys cleaned, values as text cut to MLflow's limit."""
    return {clean_key(k): truncate(str(v), MAX_TAG_VALUE)[0] for k, v in tags.items()}


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
