"""The sweep's machine-readable status file (``status.json`` in the sweep's location).

Private: written by the driver and its Tune callback, read by the service. It is replaced whole
(a local temp file + rename, or one object-storage PUT) within 0.2 s of a trial state change and
at most once a second for progress, so a reader always sees a whole file. A write costs
O(changed trials), not O(trials): each trial's JSON is kept and re-encoded only when the trial
changed (a 1,000-trial sweep re-encoded whole, with ``indent``, cost 30 ms a write on Tune's
event loop), and writes are spaced to at least 20 times the last one's duration, so a slow
store (object storage) never takes more than 5% of the loop. Shape::

    {"version": 1, "sweep_id": ..., "name": ..., "state": "running" | "finished" | "failed"
     | "interrupted" | "waiting", "driver_pid": ..., "started_at": ..., "updated_at": ..., "finished_at": ...,
     "tracking_uri": ..., "tune_experiment": ..., "resources": ...,
     "counts": {"total", "skipped", "pending", "running", "retrying", "finished", "failed",
                "killed", "adopted", "waiting"},
     "trials": {trial_key: {"index", "cell_key", "replicate", "seed", "state", "attempts",
                            "last_step", "run_id", "pid", "error", "starts": [{"attempt",
                            "from_step"}], "placement": {"node", "gpu_ids",
                            "cuda_visible_devices", "device", "device_note"}, "nodes",
                            "adopted_from", "stopped_at", "cell" (a search's)}},
     "skipped": [{"trial_key", "reason", "run_id"}],
     "notes": [...], "tracking_errors": [...]}

It holds no MLflow experiment or parent run id: a reader finds them from the sweep id
(`workers.tracking.find_sweep_ids`).

Trial states: ``pending`` (not started by this driver yet), ``running``, ``retrying`` (its
worker failed; Tune restarts it from its last checkpoint), ``finished``, ``failed`` (out of
retries), ``killed`` (the driver stopped first), ``skipped`` (already FINISHED in MLflow),
``adopted`` (another sweep of the service ran it: ``run_id`` is that sweep's run,
``adopted_from`` its id), ``waiting`` (another sweep is running it: ``adopted_from`` names it;
the driver ends ``waiting`` and the service starts it again when that sweep is done).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from workers._files import STATUS_FILE
from workers.storage import Location

STATES = ("pending", "running", "retrying", "finished", "failed", "killed", "skipped", "adopted", "waiting")
#: States in which a trial has its FINISHED run: its own, or one it adopted.
DONE_STATES = ("finished", "skipped", "adopted")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class SweepStatus:
    """In-memory sweep status with throttled whole-file writes to ``<sweep location>/status.json``."""

    def __init__(self, location: Location, header: Mapping[str, Any], min_interval_s: float = 1.0) -> None:
        self.file = location.child(STATUS_FILE)
        self.min_interval_s = min_interval_s
        previous = self.file.read_json() or {}
        self._previous_trials: dict[str, Any] = (
            previous.get("trials", {}) if isinstance(previous, dict) else {}
        )
        self.data: dict[str, Any] = {
            "version": 1,
            **header,
            "state": "running",
            "driver_pid": os.getpid(),
            "started_at": _now(),
            "updated_at": _now(),
            "finished_at": None,
            "counts": {},
            "trials": {},
            "skipped": [],
            "notes": [],
            "tracking_errors": [],
        }
        self._lock = threading.RLock()
        self._dirty = True
        self._state_changed = True
        self._last_write = 0.0
        self._last_write_s = 0.0  # how long the last write took
        self._fragments: dict[str, str] = {}  # trial_key -> its encoded '"key": {...}'
        self._changed: set[str] = set()  # trials whose fragment is out of date

    # -- set-up ---------------------------------------------------------------------------

    def add_trials(self, trials: Iterable[Any], runs: Mapping[str, Any], *, cells: bool = False) -> None:
        """Register the sweep's trials; `runs` maps trial_key -> its existing `ChildRun`.
        `cells`: keep each trial's cell too (a search's, which nothing else records: the
        service rebuilds the configurations it proposed from them)."""
        with self._lock:
            for trial in trials:
                key = trial.trial_key
                before = self._previous_trials.get(key, {})
                run = runs.get(key)
                self.data["trials"][key] = {
                    "index": trial.index,
                    "cell_key": trial.cell_key,
                    "replicate": trial.replicate,
                    "seed": trial.seed,
                    "state": "pending",
                    "attempts": int(before.get("attempts", 0)),
                    "last_step": run.last_step if run is not None else None,
                    "run_id": run.run_id if run is not None else None,
                    "pid": None,
                    "error": None,
                    "starts": list(before.get("starts", [])),
                    "placement": before.get("placement"),
                    "nodes": list(before.get("nodes", [])),
                    "adopted_from": None,
                    "stopped_at": None,
                    **({"cell": trial.cell, "steps": trial.config.get("steps")} if cells else {}),
                }
                self._changed.add(key)
            self._touch(True)

    def skip(self, key: str, reason: str, run_id: str | None) -> None:
        with self._lock:
            self.data["trials"][key]["state"] = "skipped"
            self.data["skipped"].append({"trial_key": key, "reason": reason, "run_id": run_id})
            self._touch(True, key)

    def adopt(self, key: str, run_id: str, from_sweep: str) -> None:
        with self._lock:
            t = self.data["trials"][key]
            t.update(state="adopted", run_id=run_id, adopted_from=from_sweep, error=None)
            self._touch(True, key)

    def wait(self, key: str, owner: str) -> None:
        with self._lock:
            t = self.data["trials"][key]
            t.update(state="waiting", adopted_from=owner)
            self._touch(True, key)

    def set(self, **fields: Any) -> None:
        with self._lock:
            self.data.update(fields)
            self._touch(True)

    def note(self, text: str) -> None:
        with self._lock:
            self.data["notes"].append(text)
            self._touch(True)

    # -- trial events ---------------------------------------------------------------------

    def attempts(self, key: str) -> int:
        with self._lock:
            return int(self.data["trials"][key]["attempts"])

    def started(self, key: str, *, from_step: float, run_id: str | None = None) -> None:
        with self._lock:
            t = self.data["trials"][key]
            t["attempts"] += 1
            t["state"] = "running"
            t["error"] = None
            t["pid"] = None  # the worker's pid comes with its first report
            t["starts"].append({"attempt": t["attempts"], "from_step": from_step, "at": _now()})
            if run_id:
                t["run_id"] = run_id
            self._touch(True, key)

    def progress(self, key: str, *, step: float, pid: Any = None, run_id: str | None = None) -> None:
        with self._lock:
            t = self.data["trials"][key]
            t["last_step"] = step if t["last_step"] is None else max(step, t["last_step"])
            if pid is not None:
                t["pid"] = pid
            if run_id and not t["run_id"]:
                t["run_id"] = run_id
            self._touch(False, key)

    def placed(self, key: str, where: Mapping[str, str]) -> bool:
        """Record where the trial runs (`workers.trainable.placement`); True when it changed.

        ``nodes`` lists every node the trial ran on, in order: a trial resumed elsewhere after
        its node was lost shows both.
        """
        with self._lock:
            t = self.data["trials"][key]
            if t.get("placement") == dict(where):
                return False
            t["placement"] = dict(where)
            node = where.get("node")
            if node and (not t["nodes"] or t["nodes"][-1] != node):
                t["nodes"].append(node)
            self._touch(True, key)
            return True

    def nodes(self, key: str) -> list[str]:
        with self._lock:
            return list(self.data["trials"][key]["nodes"])

    def retrying(self, key: str, *, error: str) -> None:
        self._end(key, "retrying", error)

    def failed(self, key: str, *, error: str) -> None:
        self._end(key, "failed", error)

    def finished(self, key: str, stopped_at: float | None = None) -> None:
        """`stopped_at`: the step a search's scheduler stopped the trial's configuration at."""
        with self._lock:
            self.data["trials"][key]["stopped_at"] = stopped_at
            self._changed.add(key)
        self._end(key, "finished", None)

    def stopped(self, key: str, *, state: str, error: str) -> None:
        self._end(key, state, error)

    def _end(self, key: str, state: str, error: str | None) -> None:
        with self._lock:
            t = self.data["trials"][key]
            t["state"] = state
            t["error"] = error
            self._touch(True, key)

    def set_run_ids(self, run_ids: Mapping[str, str | None]) -> None:
        with self._lock:
            for key, run_id in run_ids.items():
                if run_id and key in self.data["trials"] and self.data["trials"][key]["run_id"] != run_id:
                    self.data["trials"][key]["run_id"] = run_id
                    self._changed.add(key)
            self._touch(False)

    # -- queries and writing -----------------------------------------------------------------

    def states(self) -> dict[str, str]:
        with self._lock:
            return {k: t["state"] for k, t in self.data["trials"].items()}

    def _touch(self, state_changed: bool, key: str | None = None) -> None:
        self._dirty = True
        self._state_changed = self._state_changed or state_changed
        if key is not None:
            self._changed.add(key)

    def maybe_write(self) -> None:
        """Write a state change within 0.2 s, progress within `min_interval_s`; never sooner
        than 20 times the last write's duration after it (at most 5% of the caller's time)."""
        if not self._dirty:
            return
        since = time.monotonic() - self._last_write
        if since < 20 * self._last_write_s:
            return
        if since >= self.min_interval_s or (self._state_changed and since >= 0.2):
            self.write()

    def encode(self) -> bytes:
        """The file's content: the header, then ``trials`` one a line. Only the trials changed
        since the last call are encoded again."""
        with self._lock:
            trials = self.data["trials"]
            counts = Counter(t["state"] for t in trials.values())
            self.data["counts"] = {"total": len(trials), **{s: counts.get(s, 0) for s in STATES}}
            self.data["updated_at"] = _now()
            for key in self._changed | (trials.keys() - self._fragments.keys()):
                if key in trials:
                    self._fragments[key] = f"{json.dumps(key)}: {json.dumps(trials[key], default=str)}"
            self._changed.clear()
            head = json.dumps({k: v for k, v in self.data.items() if k != "trials"}, default=str)
            rows = ",\n  ".join(self._fragments[k] for k in trials)
            return f'{head[:-1]}, "trials": {{\n  {rows}\n}}}}\n'.encode()

    def write(self) -> None:
        with self._lock:
            t0 = time.monotonic()
            self.file.write_bytes(self.encode())
            self._dirty = False
            self._state_changed = False
            self._last_write = time.monotonic()
            self._last_write_s = self._last_write - t0


__all__ = ["DONE_STATES", "STATES", "SweepStatus"]
