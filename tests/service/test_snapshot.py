"""The snapshot the reconciler writes into a sweep's row, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.snapshot import (
    empty_counts,
    eta_of,
    finished_runs_of,
    last_error_of,
    progress_of,
    snapshot_fields,
    waiting_of,
)

PLAN = [["a", 0, "c1", 0, 100], ["b", 1, "c2", 0, 100], ["c", 2, "c1", 1, 100], ["d", 3, "c2", 1, 100]]
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_progress_counts_done_trials_and_steps_of_the_others() -> None:
    trials = {
        "a": {"state": "finished"},
        "b": {"state": "failed"},
        "c": {"state": "running", "last_step": 25},
        "d": {"state": "pending", "last_step": None},
    }
    assert progress_of(PLAN, trials) == pytest.approx((1 + 1 + 0.25) / 4)
    assert progress_of(PLAN, {"a": {"state": "running", "last_step": 500}}) == pytest.approx(0.25)  # capped
    assert progress_of([], {}) == 0.0


def test_eta_only_while_running_with_some_progress() -> None:
    started = NOW - timedelta(seconds=100)
    assert eta_of("running", started, NOW, 0.25) == pytest.approx(300.0)
    assert eta_of("running", started, NOW, 0.0) is None
    assert eta_of("finished", started, NOW, 0.5) is None
    assert eta_of("running", None, NOW, 0.5) is None


def test_last_error_prefers_a_failed_trial_and_names_it() -> None:
    trials = {"a": {"state": "retrying", "error": "OOM"}, "b": {"state": "failed", "error": "NaN loss"}}
    assert last_error_of(trials) == "trial b (failed): NaN loss"
    assert last_error_of({"a": {"state": "retrying", "error": "OOM"}}) == "trial a (retrying): OOM"
    assert last_error_of({"a": {"state": "finished", "error": None}}) is None


def test_snapshot_fields_keep_only_the_rows_fields() -> None:
    status = {
        "counts": {"total": 4, "running": 1, "pending": 3},
        "trials": {
            "a": {
                "state": "running",
                "last_step": 50,
                "attempts": 1,
                "pid": 123,
                "starts": [{}],
                "placement": {"node": "10.0.0.2", "device": "cpu"},
                "nodes": ["10.0.0.1", "10.0.0.2"],
            }
        },
    }
    fields = snapshot_fields(status, PLAN, state="running", started_at=NOW - timedelta(seconds=10), now=NOW)
    assert fields["trials"] == {
        "a": {
            "state": "running",
            "attempts": 1,
            "last_step": 50,
            "run_id": None,
            "error": None,
            "placement": {"node": "10.0.0.2", "device": "cpu"},
            "nodes": ["10.0.0.1", "10.0.0.2"],
            "adopted_from": None,
            "stopped_at": None,
        }
    }
    assert fields["counts"] == status["counts"] and fields["progress"] == 0.125
    assert fields["eta_s"] == pytest.approx(70.0) and fields["last_error"] is None
    none = snapshot_fields(None, PLAN, state="queued", started_at=None, now=NOW)
    assert none["counts"] == empty_counts(4) and none["counts"]["pending"] == 4 and none["progress"] == 0.0


def test_finished_and_waiting_trials_of_a_snapshot() -> None:
    trials = {
        "a": {"state": "finished", "run_id": "r1"},
        "b": {"state": "skipped", "run_id": "r2"},
        "c": {"state": "adopted", "run_id": "r3", "adopted_from": "other"},
        "d": {"state": "waiting", "adopted_from": "owner"},
        "e": {"state": "finished", "run_id": None},
    }
    # what the sweep finished itself (adopted runs are their owner's)
    assert finished_runs_of(trials) == {"a": "r1", "b": "r2"}
    assert waiting_of(trials) == {"d": "owner"}
    # adopted trials are done for progress; waiting ones are not
    plan = [[k, i, "", 0, 10] for i, k in enumerate(trials)]
    assert progress_of(plan, trials) == pytest.approx(4 / 5)


def test_a_searchs_plan_grows_from_its_status_and_progress_counts_its_whole_budget() -> None:
    from service.snapshot import search_plan_of

    def trial(index: int, state: str, last_step: int | None, cell: dict[str, Any]) -> dict[str, Any]:
        return {
            "index": index,
            "cell_key": f"lr={cell['lr']}",
            "seed": index % 2,
            "steps": 100,
            "state": state,
            "last_step": last_step,
            "cell": cell,
            "stopped_at": None,
        }

    status = {
        "search": True,
        "counts": {"total": 4, "finished": 2, "running": 2},
        "trials": {
            "k2": trial(2, "running", 50, {"lr": 0.1}),
            "k0": trial(0, "finished", 100, {"lr": 0.01}),
            "k1": trial(1, "finished", 30, {"lr": 0.01}),
            "k3": trial(3, "running", 50, {"lr": 0.1}),
        },
    }
    plan = search_plan_of(status)
    assert plan is not None and [row[0] for row in plan] == ["k0", "k1", "k2", "k3"]  # proposal order
    assert plan[2] == ["k2", 2, "lr=0.1", 0, 100, {"lr": 0.1}]
    fields = snapshot_fields(status, plan, state="running", started_at=NOW, now=NOW, total=10)
    assert fields["progress"] == pytest.approx(
        (2 + 0.5 + 0.5) / 10
    )  # of the budget of 10, not the 4 proposed
    assert fields["counts"]["total"] == 10 and fields["counts"]["pending"] == 6
    assert search_plan_of({"trials": {}}) is None  # a grid's status: no plan from it
    assert search_plan_of({"search": True, "trials": {}}) == []
