"""The Ray Tune callback that tracks every trial of a sweep in its own MLflow run, exactly once.

`TrackingCallback` runs on Tune's event loop, so it only decides and enqueues; the
`MlflowWriter` thread does the IO. It drops every report whose step a run already holds (a
restore rewinds to the last checkpoint recorded in Tune's experiment state and reports those
steps again), fills in from the checkpoint's report history the steps a killed driver reported
but never wrote, logs the final checkpoint and ends each run FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from workers.tracking.runs import (
    FAILED,
    FINISHED,
    KILLED,
    TAG_ATTEMPTS,
    TAG_STOPPED_AT,
    TAG_STOPPED_EARLY,
    RunSpec,
    truncate,
)
from workers.tracking.writer import MlflowWriter, Report, local_directory
from workers.trainable import (
    HISTORY_TIME_KEY,
    MEMBERS,
    PLACEMENT_KEYS,
    TRIAL_KEY,
    existing_checkpoint,
    member_values,
    read_checkpoint_history,
)

if TYPE_CHECKING:
    from workers._status import SweepStatus

log = logging.getLogger("workers.tracking")

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
        *PLACEMENT_KEYS,
    }
)


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
def _checkpoint_directory(checkpoint: Any, member: int | None = None) -> Iterator[str]:
    """The checkpoint's directory; a configuration's member `member`: its own part of it."""
    with checkpoint.as_directory() as directory, local_directory(directory, member) as part:
        yield part


def artifact_source(checkpoint: Any, member: int | None = None) -> Callable[[], Any]:
    """What the MLflow writer opens to log `checkpoint` as an artifact.

    A checkpoint on the local filesystem travels as its path (`local_directory`, as Ray's
    ``as_directory`` gives it), so the writer process never imports Ray to unpickle it: that
    import was about 0.6-1 s of the writer's CPU a sweep (measured beside the 2-4 s of its
    start-up, `bench/tracking_writer.py`'s set-up). Anything else (S3) is the checkpoint itself,
    which downloads it.
    """
    from pyarrow.fs import LocalFileSystem

    if isinstance(checkpoint.filesystem, LocalFileSystem):
        return functools.partial(local_directory, checkpoint.path, member)
    return functools.partial(_checkpoint_directory, checkpoint, member)


#: A Tune trial's MLflow runs: ``(trial_key, member index)``; the index is None for a lone
#: trial, and the seed's position for a search configuration's members.
Member = tuple[str, "int | None"]


def _values(values: Mapping[str, Any], member: int | None) -> Mapping[str, Any]:
    return values if member is None else member_values(values, member)


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
        discover: for a search: called with a configuration's Tune trial config the first time
            the callback meets it (proposed this session or restored); registers its members
            (their run specs in `run_specs`, their trials in the status).

    A search configuration's Tune trial has one MLflow run per seed (its members): every hook
    acts on each, with the member's own values (``m/<i>/...`` of the report). A configuration
    the scheduler stopped before its budget ends FINISHED with ``dab.stopped_early`` and the
    step it reached (``dab.stopped_at_step``).
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
        discover: Callable[[Mapping[str, Any]], None] | None = None,
        groups: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    ) -> None:
        self.writer = writer
        self.discover = discover
        self.groups = dict(groups or {})
        self.prune_checkpoints = prune_checkpoints
        self.status = status
        self.run_specs = dict(run_specs)
        self.last_steps: dict[str, float] = {k: v for k, v in last_steps.items() if v is not None}
        self.token = token
        self.ended: dict[str, str] = {}  # trial_key -> FINISHED / FAILED / KILLED, this session
        self.started: set[str] = set()
        self._tagged: set[str] = set()  # trials whose run has this attempt's placement tags
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

    def _member_list(self, trial: Any) -> Sequence[Mapping[str, Any]] | None:
        """A group trial's members: in its config (a search's configuration), or in `groups`
        under its key (a grid's stacked cell); None for a trial of one run."""
        config = trial.config
        if MEMBERS in config:
            return config[MEMBERS]  # type: ignore[no-any-return]
        return self.groups.get(str(config.get(TRIAL_KEY)))

    def _members(self, trial: Any) -> list[Member]:
        """The runs of a Tune trial this driver tracks (none: not one of this session's)."""
        members = self._member_list(trial)
        if members is None:
            key = trial.config.get(TRIAL_KEY)
            return [(key, None)] if key in self.run_specs else []
        keys = [str(m["trial_key"]) for m in members]
        if self.discover is not None and any(k not in self.run_specs for k in keys):
            self.discover(trial.config)
        return [(k, i) for i, k in enumerate(keys) if k in self.run_specs]

    def _budget(self, trial: Any, member: int | None) -> float | None:
        members = self._member_list(trial)
        if member is None or members is None:
            return None
        return float(members[member]["config"]["steps"])

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

    def _backfill(self, key: str, checkpoint: Any, member: int | None = None) -> float:
        """Write the steps the checkpoint's history holds and the run lacks; returns its step."""
        history = read_checkpoint_history(checkpoint)
        reports = []
        for entry in history:
            values = {k: float(v) for k, v in _values(entry, member).items() if k != HISTORY_TIME_KEY}
            step = _step_of(values)
            if step is not None:
                reports.append(
                    Report(int(step), int(entry.get(HISTORY_TIME_KEY, time.time() * 1000)), values)
                )
        written = self._log(key, reports)
        if written:
            log.info("trial %s: %d report(s) filled in from its checkpoint history", key, written)
        return max((r.step for r in reports), default=0)

    def _finish(self, key: str, trial: Any, member: int | None = None, last: bool = True) -> None:
        checkpoint = getattr(trial, "checkpoint", None)
        if checkpoint is not None:
            self._backfill(key, checkpoint, member)
            self.writer.log_artifacts(key, artifact_source(checkpoint, member), "checkpoint")
        budget = self._budget(trial, member)
        reached = self.last_steps.get(key)
        stopped_at = reached if budget is not None and reached is not None and reached < budget else None
        if stopped_at is not None:
            self.writer.set_tags(key, {TAG_STOPPED_EARLY: "true", TAG_STOPPED_AT: str(int(stopped_at))})
        prune = checkpoint is not None and self.prune_checkpoints and last
        self.writer.terminate(
            key, FINISHED, after=functools.partial(_prune_trial_checkpoints, trial) if prune else None
        )
        self.ended[key] = FINISHED
        self.status.finished(key, stopped_at=stopped_at)

    def _finish_all(self, members: list[Member], trial: Any) -> None:
        for n, (key, member) in enumerate(members):
            # the trial's checkpoints are pruned after its last run has its artifact
            self._finish(key, trial, member, last=n == len(members) - 1)

    # -- Tune hooks -----------------------------------------------------------------------

    def _reconcile(self, trials: list[Any]) -> None:
        # A restored experiment can hold trials Tune already counts as TERMINATED whose MLflow
        # run never got its end (the driver died in between): finish them from their final
        # checkpoint (history and artifact) instead of leaving them open.
        for trial in trials:
            members = [m for m in self._members(trial) if m[0] not in self.ended]
            if members and trial.status == "TERMINATED":
                with self._lock:
                    for key, _ in members:
                        self.writer.open_run(
                            key, self.run_specs[key], {TAG_ATTEMPTS: str(self.status.attempts(key))}
                        )
                    self._finish_all(members, trial)

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if not self._reconciled:
            self._reconciled = True
            self._reconcile(trials)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        members = self._members(trial)
        if not members:
            return
        with self._lock:
            if self._stopped:
                return
            # the checkpoint the trainable will restore: Tune's, or the newest whole one when
            # Tune's is gone (`existing_checkpoint`); its history fills the runs' gap
            restored = existing_checkpoint(trial.checkpoint) if trial.checkpoint is not None else None
            for key, member in members:
                self.started.add(key)
                self._tagged.discard(key)
                attempt = self.status.attempts(key) + 1
                self.writer.open_run(key, self.run_specs[key], {TAG_ATTEMPTS: str(attempt)})
                from_step = self._backfill(key, restored, member) if restored is not None else 0.0
                self.status.started(key, from_step=from_step, run_id=self.writer.run_id(key))

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        for key, member in self._members(trial):
            if key in self.ended:  # an ended run is not written to again
                continue
            values = result_metrics(_values(result, member))
            step = _step_of(values)
            if step is None:
                continue
            with self._lock:
                self._log(key, [Report(int(step), int(time.time() * 1000), values)])
                self.status.progress(key, step=step, pid=result.get("pid"), run_id=self.writer.run_id(key))
                self._placed(key, result)

    def _placed(self, key: str, result: Mapping[str, Any]) -> None:
        """Tag the run with where the trial runs: at each attempt's first report, and whenever it
        changed. Once per attempt even when unchanged: a driver killed just after a trial moved
        can leave the move in the status file but not yet on the run."""
        where = {k.removeprefix("dab_"): str(result[k]) for k in PLACEMENT_KEYS if k in result}
        if not where:
            return
        changed = self.status.placed(key, where)
        if not changed and key in self._tagged:
            return
        self._tagged.add(key)
        tags = {f"dab.{k}": v for k, v in where.items() if v or k != "device_note"}
        tags["dab.nodes"] = ",".join(self.status.nodes(key))
        self.writer.set_tags(key, tags)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        for key, _ in self._members(trial):
            self.status.retrying(key, error=_error_text(trial))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        members = self._members(trial)
        if not members:
            return
        with self._lock:
            error = _error_text(trial)
            for key, _ in members:
                self.writer.terminate(key, FAILED, reason=error)
                self.ended[key] = FAILED
                self.status.failed(key, error=error)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        members = [m for m in self._members(trial) if self.ended.get(m[0]) != FINISHED]
        if not members:
            return
        with self._lock:
            self._finish_all(members, trial)

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
