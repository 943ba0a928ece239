"""`ProcessWriter`: the sweep's `MlflowWriter` run in a process of its own, so that MLflow's
per-request Python does not share the driver's GIL with Tune's loop.

Why a process: at 1,000 trials Tune's loop is busy itself (about 46 s of driver CPU on these
2 cores), and the writer thread's MLflow calls (about 26 ms a trial: a SQLAlchemy session per
request against SQLite) ran beside it under one GIL, adding their time to the loop's
(`docs/workers.md`, benchmark). Here the same `MlflowWriter` code runs in a child process;
the driver side only pickles each operation and sends it down a pipe.

The contract is `MlflowWriter`'s: the same methods, the same order per run, `flush` and
`close` wait until everything queued before them is written, `run_id`, `errors` and
`failed_keys` read what the child reports back. What stays in the driver:

* ``terminate(after=...)``: `after` (e.g. delete Tune's copy of a checkpoint that is now an
  artifact) runs in the driver, on the thread that reads the child's reports, once the child
  says the run ended, and only if no write for that run failed on either side.
* pickling: an operation is pickled on the caller's thread, so a value that cannot travel
  (an artifact source must be a `functools.partial` of a module function, as the callback's
  is) is an error recorded in `errors` there, not lost on the way.

The child dies with the driver: it waits on the parent's sentinel and exits at once when the
driver is gone (a SIGKILLed driver loses the writes it had not made, exactly as the thread
did; the next driver fills them in from the checkpoints). It ignores SIGINT and SIGTERM, which
a terminal or Ray's job stop sends to the whole process group: the driver decides when the
writer stops, after flushing. If the child itself dies, the driver records an error, so the
sweep does not end "finished" with writes missing.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from workers.tracking.runs import RunSpec
from workers.tracking.writer import MlflowWriter, Report, _Op

log = logging.getLogger("workers.tracking")


class _Outbox:
    """The child's end of the pipe back to the driver; the writer thread and the main thread
    both report through it."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def put(self, message: tuple[Any, ...]) -> None:
        with self._lock:
            self._conn.send(message)


class _Flushed:
    """What a barrier sets in the child: it tells the driver that flush `token` is done."""

    def __init__(self, outbox: _Outbox, token: int) -> None:
        self._outbox, self._token = outbox, token

    def set(self) -> None:
        self._outbox.put(("flushed", self._token))


class _ChildWriter(MlflowWriter):
    """The writer inside the child: tells the driver each run id and each failed write."""

    def __init__(self, outbox: _Outbox, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outbox = outbox

    def _open(self, key: str, spec: RunSpec, tags: Mapping[str, str]) -> None:
        super()._open(key, spec, tags)
        self._outbox.put(("run", key, self.run_id(key)))

    def _guard(self, kind: str, key: str, fn: Callable[[], None]) -> None:
        known = len(self.errors)
        super()._guard(kind, key, fn)
        for message in self.errors[known:]:
            self._outbox.put(("error", key, message))

    def barrier(self, done: _Flushed) -> None:
        """`flush` without waiting: the child's main loop keeps reading the pipe meanwhile."""
        self._put(_Op("barrier", "", done))
        self._urgent.set()


def _exit_with_parent() -> None:
    parent = multiprocessing.parent_process()
    if parent is None:  # pragma: no cover - only ever started by ProcessWriter
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(0)  # the driver is gone: stop now, as a thread in it would have

    threading.Thread(target=watch, name="dab-parent-watch", daemon=True).start()


def _child_main(
    tracking_uri: str,
    experiment_id: str,
    runs: dict[str, str],
    linger_s: float,
    hold_s: float,
    retries: int,
    inbox: Any,
    out: Any,
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _exit_with_parent()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    outbox = _Outbox(out)
    writer = _ChildWriter(
        outbox,
        MlflowClient(tracking_uri),
        experiment_id,
        runs,
        linger_s=linger_s,
        hold_s=hold_s,
        retries=retries,
    )
    writer.start()
    while True:
        try:
            message = pickle.loads(inbox.recv_bytes())
        except EOFError:  # pragma: no cover - the driver is gone; the watcher exits too
            os._exit(0)
        except Exception as e:  # e.g. an artifact source whose module does not import here
            outbox.put(
                ("error", None, f"the MLflow writer could not read an operation: {type(e).__name__}: {e}")
            )
            continue
        kind = message[0]
        if kind == "op":
            _, method, args = message
            getattr(writer, method)(*args)
        elif kind == "terminate":
            _, key, status, reason, token = message
            after = None if token is None else functools.partial(outbox.put, ("after", token))
            writer.terminate(key, status, reason, after)
        elif kind == "flush":
            writer.barrier(_Flushed(outbox, message[1]))
        elif kind == "close":
            writer.close()
            outbox.put(("closed",))
            out.close()
            # Every write is committed and acknowledged: skip the interpreter's teardown of
            # MLflow, SQLAlchemy and their modules (about 0.5 s of the driver's close, each
            # sweep, measured here).
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


class ProcessWriter:
    """`MlflowWriter`'s interface, with the writes made by a child process (see the module)."""

    def __init__(
        self,
        tracking_uri: str,
        experiment_id: str,
        runs: Mapping[str, str] | None = None,
        *,
        linger_s: float = 0.25,
        hold_s: float = 0.0,
        retries: int = 5,
    ) -> None:
        # spawn, not fork: the driver holds Ray's and gRPC's threads, which a fork would copy
        # in whatever state they were in; spawn is also what macOS uses. Pipes, not
        # multiprocessing queues: no semaphores to track, and EOF tells that the child is gone.
        ctx = multiprocessing.get_context("spawn")
        self._child_in, self._to_child = ctx.Pipe(duplex=False)
        self._from_child, self._child_out = ctx.Pipe(duplex=False)
        self._process = ctx.Process(
            target=_child_main,
            args=(
                tracking_uri,
                experiment_id,
                dict(runs or {}),
                linger_s,
                hold_s,
                retries,
                self._child_in,
                self._child_out,
            ),
            name="dab-mlflow-writer",
            daemon=True,
        )
        self.errors: list[str] = []
        self.failed_keys: set[str] = set()
        self._runs: dict[str, str] = dict(runs or {})
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._afters: dict[int, tuple[str, Callable[[], None]]] = {}
        self._flushes: dict[int, threading.Event] = {}
        self._tokens = itertools.count()
        self._closed_ack = threading.Event()
        self._gone = threading.Event()  # the child ended (closed, or died)
        self._reader = threading.Thread(target=self._read, name="dab-mlflow-writer-reports", daemon=True)
        self._closed = False

    # -- MlflowWriter's interface --------------------------------------------------------

    def start(self) -> ProcessWriter:
        self._process.start()
        # The child holds these ends now; closing ours makes its exit an EOF here.
        self._child_in.close()
        self._child_out.close()
        self._reader.start()
        # multiprocessing joins its children at exit, and this one ignores SIGTERM: a driver
        # that exits without `close` (an error before it) would wait for it forever.
        atexit.register(self._close_at_exit)
        return self

    def _close_at_exit(self) -> None:
        if not self._closed:
            log.warning("MLflow writer still open at exit: writing what is queued, then closing it")
            self.close(timeout=30)

    def run_id(self, key: str) -> str | None:
        with self._lock:
            return self._runs.get(key)

    def open_run(self, key: str, spec: RunSpec, tags: Mapping[str, str] | None = None) -> None:
        self._send(("op", "open_run", (key, spec, dict(tags or {}))), key)

    def log_reports(self, key: str, reports: Sequence[Report]) -> None:
        if reports:
            self._send(("op", "log_reports", (key, list(reports))), key)

    def log_artifacts(
        self, key: str, source: Callable[[], contextlib.AbstractContextManager[str]], path: str
    ) -> None:
        """`source` travels to the child: it must pickle (a `functools.partial` of a module
        function over picklable values, e.g. a Ray `Checkpoint`)."""
        self._send(("op", "log_artifacts", (key, source, path)), key)

    def set_tags(self, key: str, tags: Mapping[str, str]) -> None:
        self._send(("op", "set_tags", (key, dict(tags))), key)

    def terminate(
        self, key: str, status: str, reason: str | None = None, after: Callable[[], None] | None = None
    ) -> None:
        token = None
        if after is not None:
            token = next(self._tokens)
            with self._lock:
                self._afters[token] = (key, after)
        self._send(("terminate", key, status, reason, token), key)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is written; False on timeout or if the child
        is gone."""
        token = next(self._tokens)
        done = threading.Event()
        with self._lock:
            self._flushes[token] = done
        if not self._send(("flush", token), ""):
            with self._lock:
                self._flushes.pop(token, None)
            return False
        return done.wait(timeout) and not self._gone.is_set()

    def close(self, timeout: float | None = None) -> bool:
        """Write what is queued, then stop the child; False if it did not finish in time."""
        if self._closed:
            return self._closed_ack.is_set()
        atexit.unregister(self._close_at_exit)
        sent = self._send(("close",), "")
        self._closed = True
        finished = sent and self._closed_ack.wait(timeout)
        self._process.join(5 if finished else 0)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._reader.join(5)
        self._to_child.close()
        return finished

    # -- the driver's side of the pipes --------------------------------------------------

    def _send(self, message: tuple[Any, ...], key: str) -> bool:
        what = message[1] if message[0] == "op" else message[0]
        if self._closed or self._gone.is_set():
            log.warning("MLflow writer is closed; dropping %s for %s", what, key)
            return False
        try:
            data = pickle.dumps(message)
        except Exception as e:
            self._record(key, f"MLflow {what} for {key!r} could not be sent to the writer: {e}")
            return False
        try:
            with self._send_lock:
                self._to_child.send_bytes(data)
        except OSError:  # the child is gone; the reader records it
            return False
        return True

    def _record(self, key: str | None, message: str) -> None:
        log.error(message)
        with self._lock:
            self.errors.append(message)
            if key is not None:
                self.failed_keys.add(key)

    def _read(self) -> None:
        while True:
            try:
                message = self._from_child.recv()
            except (EOFError, OSError):
                self._died()
                return
            self._handle(message)
            if message[0] == "closed":
                self._gone.set()
                return

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "run":
            with self._lock:
                self._runs[message[1]] = message[2]
        elif kind == "error":  # the child has logged it
            with self._lock:
                self.errors.append(message[2])
                if message[1] is not None:
                    self.failed_keys.add(message[1])
        elif kind == "after":
            with self._lock:
                key, after = self._afters.pop(message[1], ("", None))
                # The child knows its own failed writes; this side also knows what never
                # reached it.
                skip = key in self.failed_keys
            if after is not None and not skip:
                try:
                    after()
                except Exception as e:  # the run is complete; a leftover copy is no error
                    log.warning("after ending a run: %s", e)
        elif kind == "flushed":
            with self._lock:
                done = self._flushes.pop(message[1], None)
            if done is not None:
                done.set()
        elif kind == "closed":
            self._closed_ack.set()

    def _died(self) -> None:
        self._process.join(1)
        code = self._process.exitcode
        self._record(
            None,
            f"the MLflow writer process ended (exit code {code}) before the driver closed it; writes may be missing",
        )
        self._gone.set()
        with self._lock:
            waiting, self._flushes = list(self._flushes.values()), {}
        for done in waiting:  # nobody waits forever on a writer that is gone
            done.set()
