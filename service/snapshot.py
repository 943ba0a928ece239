"""A sweep's snapshot: what the reconciler writes into its row from the driver's status.

Pure functions of (the driver's status, the sweep's static plan, the clock): tested without
Ray or MLflow. The plan is written once at submission (`plan_of`); the status is the driver's
``status.json`` (`workers._status`). Reads never compute any of this: they read the row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from workers._status import DONE_STATES, STATES

#: Trial states that count as done for progress.
_DONE = (*DONE_STATES, "failed")
#: The per-trial fields the row keeps (the status file has more: pids, start history).
_TRIAL_FIELDS = (
    "state",
    "attempts",
    "last_step",
    "run_id",
    "error",
    "placement",
    "nodes",
    "adopted_from",
    "stopped_at",
)

#: ``[trial_key, index, cell_key, seed, steps]``; a search's rows add the cell (its searched
#: values), from which `service.queries.Reads.expansion` rebuilds the configurations' trials.
PlanRow = list[Any]


def plan_of(trials: Sequence[Any]) -> list[PlanRow]:
    """The static plan of an expanded sweep: one row per trial, in expansion order."""
    return [[t.trial_key, t.index, t.cell_key, t.seed, t.config.get("steps")] for t in trials]


def search_plan_of(status: Mapping[str, Any]) -> list[PlanRow] | None:
    """A search's plan from its driver's status: a row per trial of every configuration its
    searcher proposed so far, in proposal order (None: not a search's status). A search has no
    static plan: the reconciler stores this one, which grows as the search runs."""
    trials = status.get("trials") or {}
    rows = [
        [key, t.get("index"), t.get("cell_key"), t.get("seed"), t.get("steps"), t["cell"]]
        for key, t in trials.items()
        if isinstance(t, Mapping) and isinstance(t.get("cell"), Mapping)
    ]
    if not rows and not status.get("search"):
        return None
    return sorted(rows, key=lambda r: int(r[1] or 0))


def empty_counts(total: int) -> dict[str, int]:
    """The counts of a sweep no driver has reported on yet, shaped as the driver's."""
    return {"total": total, **dict.fromkeys(STATES, 0), "pending": total}


def progress_of(
    plan: Sequence[PlanRow], trials: Mapping[str, Mapping[str, Any]], total: int | None = None
) -> float:
    """0..1: trials done (finished, skipped, adopted or failed) plus the fraction of steps of the
    others, over `total` trials (default: the plan's; a search's budget is larger than its plan
    until it has proposed every configuration)."""
    count = max(len(plan), total or 0)
    if not count:
        return 0.0
    done = 0.0
    for key, _index, _cell, _seed, steps, *_ in plan:
        t = trials.get(key) or {}
        if t.get("state") in _DONE:
            done += 1.0
        elif t.get("last_step") and steps:
            done += min(1.0, float(t["last_step"]) / float(steps))
    return done / count


def last_error_of(trials: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The error of a failed trial (else of a retrying one), naming the trial."""
    for wanted in ("failed", "retrying"):
        for key, t in trials.items():
            if t.get("state") == wanted and t.get("error"):
                return f"trial {key} ({wanted}): {t['error']}"[:4000]
    return None


def eta_of(state: str, started_at: datetime | None, now: datetime, progress: float) -> float | None:
    """Seconds left, from the rate so far; None unless running with some progress."""
    if state != "running" or started_at is None or not 0 < progress < 1:
        return None
    elapsed = (now - started_at).total_seconds()
    return round(elapsed * (1 - progress) / progress, 1)


def snapshot_fields(
    status: Mapping[str, Any] | None,
    plan: Sequence[PlanRow],
    *,
    state: str,
    started_at: datetime | None,
    now: datetime,
    total: int | None = None,
) -> dict[str, Any]:
    """The row's snapshot columns from the driver's status (None: no status yet); `total`: the
    sweep's trial count (a search's budget), when it is more than the plan's rows."""
    if status is None:
        trials: dict[str, dict[str, Any]] = {}
        counts = empty_counts(max(len(plan), total or 0))
    else:
        trials = {
            key: {f: t.get(f) for f in _TRIAL_FIELDS}
            for key, t in (status.get("trials") or {}).items()
            if isinstance(t, Mapping)
        }
        counts = dict(status.get("counts") or empty_counts(len(plan)))
        if total and counts.get("total", 0) < total:  # a search: the configurations not proposed yet
            counts["pending"] = int(counts.get("pending", 0)) + total - int(counts.get("total", 0))
            counts["total"] = total
    progress = round(progress_of(plan, trials, total), 4)
    return {
        "trials": trials,
        "counts": counts,
        "progress": progress,
        "eta_s": eta_of(state, started_at, now, progress),
        "last_error": last_error_of(trials),
    }


def finished_runs_of(trials: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """trial_key -> run id of the trials this sweep finished itself (not the adopted ones):
    what `service.sharing.record_finished` records as this sweep's."""
    return {
        key: str(t["run_id"])
        for key, t in trials.items()
        if t.get("state") in ("finished", "skipped") and t.get("run_id")
    }


def waiting_of(trials: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """trial_key -> the sweep it waits for, of the trials another sweep is running."""
    return {key: str(t.get("adopted_from") or "") for key, t in trials.items() if t.get("state") == "waiting"}


__all__ = [
    "empty_counts",
    "eta_of",
    "finished_runs_of",
    "last_error_of",
    "plan_of",
    "progress_of",
    "search_plan_of",
    "snapshot_fields",
    "waiting_of",
]
