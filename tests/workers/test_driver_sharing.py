"""The driver's side of shared trials (`service.sharing`): what ``shared.json`` names is adopted
(another sweep's FINISHED run becomes the trial's, nothing runs) or waited for (the driver ends
``waiting``, exit code 3, and a later run of it adopts the trial once its owner finished it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from workers._files import SHARED_FILE
from workers.driver import EXIT_WAITING, run_sweep
from workers.tracking import make_client

pytestmark = pytest.mark.slow


def _status(sweep_dir: Path) -> dict[str, Any]:
    return json.loads((sweep_dir / "status.json").read_text())  # type: ignore[no-any-return]


def test_adopted_and_waited_trials_are_not_run_and_a_second_round_adopts(
    ray_address: str,
    tracking_uri: str,
    tmp_path: Path,
    make_sweep: Callable[..., Any],
    mlflow_sweep: Callable[..., Any],
) -> None:
    # Sweep A runs seeds 0 and 1; sweep B holds seeds 0, 1, 2 of the same config.
    spec_a, trials_a = make_sweep("share-a", replicates=[0, 1])
    spec_b, trials_b = make_sweep("share-b", replicates=[0, 1, 2])
    k0, k1, k2 = (t.trial_key for t in trials_b)
    assert [t.trial_key for t in trials_a] == [k0, k1]  # the same config is the same trial
    a = run_sweep(spec_a, trials_a[:1], sweep_dir=tmp_path / "share-a", tracking_uri=tracking_uri)
    assert a.exit_code == 0
    run0 = mlflow_sweep(tracking_uri, "share-a").by_key()[k0][0].info.run_id

    # B adopts seed 0 (A finished it) and waits for seed 1 (A "is running" it): only seed 2 runs.
    b_dir = tmp_path / "share-b"
    b_dir.mkdir()
    (b_dir / SHARED_FILE).write_text(
        json.dumps({"adopt": {k0: {"run_id": run0, "sweep_id": "share-a"}}, "wait": {k1: "share-a"}})
    )
    b = run_sweep(spec_b, trials_b, sweep_dir=b_dir, tracking_uri=tracking_uri)
    assert (b.state, b.exit_code) == ("waiting", EXIT_WAITING)
    assert b.ran == [k2] and b.adopted == [k0] and b.waiting == [k1]
    status = _status(b_dir)
    assert status["state"] == "waiting"
    t0 = status["trials"][k0]
    assert (t0["state"], t0["run_id"], t0["adopted_from"]) == ("adopted", run0, "share-a")
    assert status["trials"][k1]["state"] == "waiting" and status["trials"][k1]["adopted_from"] == "share-a"
    assert status["counts"]["adopted"] == 1 and status["counts"]["waiting"] == 1
    view = mlflow_sweep(tracking_uri, "share-b")
    assert sorted(view.by_key()) == [k2]  # B made no run for what it adopted or waits for
    assert view.parents[0].info.status == "RUNNING"  # not ended: the sweep goes on
    assert view.parents[0].data.tags["dab.adopted_count"] == "1"
    assert view.parents[0].data.tags["dab.adopted"] == f"{k0}={run0}"
    client = make_client(tracking_uri)
    assert client.get_run(run0).data.tags["dab.adopted_by"] == "share-b"

    # A finishes seed 1; B's next round adopts it, runs nothing, and ends finished.
    a2 = run_sweep(spec_a, trials_a, sweep_dir=tmp_path / "share-a", tracking_uri=tracking_uri)
    assert a2.exit_code == 0 and a2.ran == [k1]
    run1 = mlflow_sweep(tracking_uri, "share-a").by_key()[k1][0].info.run_id
    (b_dir / SHARED_FILE).write_text(
        json.dumps(
            {
                "adopt": {
                    k0: {"run_id": run0, "sweep_id": "share-a"},
                    k1: {"run_id": run1, "sweep_id": "share-a"},
                },
                "wait": {},
            }
        )
    )
    b2 = run_sweep(spec_b, trials_b, sweep_dir=b_dir, tracking_uri=tracking_uri)
    assert (b2.state, b2.exit_code) == ("finished", 0)
    assert b2.ran == [] and b2.skipped == [k2] and sorted(b2.adopted) == sorted([k0, k1])
    view = mlflow_sweep(tracking_uri, "share-b")
    assert sorted(view.by_key()) == [k2] and view.parents[0].info.status == "FINISHED"
    assert client.get_run(run1).data.tags["dab.adopted_by"] == "share-b"


def test_a_run_to_adopt_that_is_not_finished_is_run_instead(
    ray_address: str,
    tracking_uri: str,
    tmp_path: Path,
    make_sweep: Callable[..., Any],
    mlflow_sweep: Callable[..., Any],
) -> None:
    """shared.json is the service's word at admission; the driver checks the run is still there
    and FINISHED (deleted or failed since: it runs the trial itself)."""
    spec, trials = make_sweep("adopt-gone", replicates=[0])
    client = make_client(tracking_uri)
    exp = client.create_experiment("elsewhere")
    failed = client.create_run(exp).info.run_id
    client.set_terminated(failed, "FAILED")
    sweep_dir = tmp_path / "adopt-gone"
    sweep_dir.mkdir()
    (sweep_dir / SHARED_FILE).write_text(
        json.dumps({"adopt": {trials[0].trial_key: {"run_id": failed, "sweep_id": "x"}}, "wait": {}})
    )
    out = run_sweep(spec, trials, sweep_dir=sweep_dir, tracking_uri=tracking_uri)
    assert out.exit_code == 0 and out.ran == [trials[0].trial_key] and out.adopted == []
    assert [r.info.status for r in mlflow_sweep(tracking_uri, "adopt-gone").children] == ["FINISHED"]
