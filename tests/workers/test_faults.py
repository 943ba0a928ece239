"""Faults, for real: a trial's worker process SIGKILLed, the driver SIGKILLed and restarted,
the driver stopped with SIGTERM. Each ends with exactly one MLflow run per trial, every step of
every metric present once, and no run left RUNNING."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from workers.driver import SweepOutcome, run_sweep

# Long enough to be caught mid-way (several seconds of training), a checkpoint every 3 reports.
LONG = {"steps": 1200, "eval_every": 10, "checkpoint_every": 30, "batch_size": 256}
ALL_STEPS = list(range(10, 1201, 10))


def _status(sweep_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((sweep_dir / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _trial_past(sweep_dir: Path, step: int) -> tuple[str, dict[str, Any]] | None:
    status = _status(sweep_dir)
    if status is None:
        return None
    for key, trial in status["trials"].items():
        # well before the end: a trial this fast passes hundreds of steps between status writes
        if trial["state"] == "running" and trial["pid"] and step <= (trial["last_step"] or 0) < 900:
            return key, trial
    return None


def _assert_complete(view: Any, trials: list[Any], metrics: set[str]) -> None:
    """One parent and one FINISHED child per trial, each metric at every step exactly once."""
    assert len(view.parents) == 1 and view.parents[0].info.status == "FINISHED"
    by_key = view.by_key()
    assert sorted(by_key) == sorted(t.trial_key for t in trials)
    for key, runs in by_key.items():
        assert len(runs) == 1, f"trial {key} has {len(runs)} runs"
        assert runs[0].info.status == "FINISHED"
        assert runs[0].data.tags["mlflow.parentRunId"] == view.parents[0].info.run_id
        assert view.steps(runs[0]) == {m: ALL_STEPS for m in metrics}, f"trial {key}"


@pytest.mark.slow
def test_a_killed_trial_worker_resumes_from_its_checkpoint_in_the_same_run(
    ray_address: str,
    tracking_uri: str,
    tmp_path: Path,
    make_sweep: Callable[..., Any],
    mlflow_sweep: Callable[..., Any],
    sorting_metrics: set[str],
    waiter: Callable[..., Any],
) -> None:
    spec, trials = make_sweep("worker-kill", replicates=2, resources={"cpu": 1}, **LONG)
    sweep_dir = tmp_path / "sweep-wk"
    outcome: list[SweepOutcome] = []
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            outcome.append(run_sweep(spec, trials, sweep_dir=sweep_dir, tracking_uri=tracking_uri))
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=drive, name="driver")
    thread.start()
    key, victim = waiter(lambda: _trial_past(sweep_dir, 60), 240, "a trial past step 60")
    os.kill(victim["pid"], signal.SIGKILL)  # the Ray worker process running the trial
    thread.join(timeout=300)
    assert not thread.is_alive() and not errors, errors
    assert outcome[0].exit_code == 0

    entry = _status(sweep_dir)["trials"][key]  # type: ignore[index]
    assert entry["state"] == "finished" and entry["attempts"] == 2
    resumed_from = entry["starts"][1]["from_step"]
    # Retried from a checkpoint (every 30 steps), not from step 0: its step count continues.
    assert resumed_from >= 30 and resumed_from % 30 == 0
    view = mlflow_sweep(tracking_uri, "sweep-wk")
    _assert_complete(view, trials, sorting_metrics)
    assert view.by_key()[key][0].data.tags["dab.attempts"] == "2"


@pytest.mark.slow
def test_a_killed_driver_restarted_completes_the_sweep_without_duplicate_runs(
    tracking_uri: str,
    tmp_path: Path,
    tiny: dict[str, Any],
    make_sweep: Callable[..., Any],
    driver_cli: Callable[..., Any],
    mlflow_sweep: Callable[..., Any],
    sorting_metrics: set[str],
    waiter: Callable[..., Any],
    kill_env_processes: Callable[[str, str], list[int]],
) -> None:
    """The driver starts its own local Ray (no address), is SIGKILLed mid-sweep, and is started
    again at once, beside the agent processes the dead one's Ray leaves behind."""
    data = {
        "name": "driver-kill",
        "experiment": "sorting",
        "params": {**tiny, **LONG},
        "replicates": 2,
        "resources": {"cpu": 1},
    }
    _, trials = make_sweep("driver-kill", replicates=2, resources={"cpu": 1}, **LONG)
    sweep_dir = tmp_path / "sweep-dk"
    ray_tmp = tempfile.mkdtemp(prefix="dabk", dir="/tmp")  # its own Ray, apart from the session's
    argv, env = driver_cli(data, sweep_dir, tracking_uri, ray_tmpdir=ray_tmp, extra=["--num-cpus", "2"])
    log = open(tmp_path / "driver-1.log", "w")
    try:
        first = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        waiter(lambda: _trial_past(sweep_dir, 120) or first.poll() is not None, 240, "a trial past step 120")
        assert first.poll() is None, (tmp_path / "driver-1.log").read_text()[-3000:]
        first.send_signal(signal.SIGKILL)  # the driver only: its Ray's processes stay behind
        first.wait()
        before = _status(sweep_dir)
        assert before is not None and before["state"] == "running"
        view = mlflow_sweep(tracking_uri, "sweep-dk")
        assert "RUNNING" in view.statuses()  # what a killed driver leaves

        second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    finally:
        log.close()
        kill_env_processes("RAY_TMPDIR", ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    after = _status(sweep_dir)
    assert after is not None and after["state"] == "finished"
    assert after["tune_experiment"] == before["tune_experiment"]  # restored, not rebuilt
    starts = [t["starts"] for t in after["trials"].values()]
    assert any(s[-1]["from_step"] > 0 for s in starts), starts  # resumed from checkpoints
    _assert_complete(mlflow_sweep(tracking_uri, "sweep-dk"), trials, sorting_metrics)


@pytest.mark.slow
def test_sigterm_ends_every_run_killed_and_a_resubmission_finishes_them(
    ray_address: str,
    tracking_uri: str,
    tmp_path: Path,
    tiny: dict[str, Any],
    make_sweep: Callable[..., Any],
    driver_cli: Callable[..., Any],
    mlflow_sweep: Callable[..., Any],
    sorting_metrics: set[str],
    waiter: Callable[..., Any],
) -> None:
    """``ray job stop`` sends SIGTERM: the driver ends its runs KILLED before it goes."""
    data = {
        "name": "term",
        "experiment": "sorting",
        "params": {**tiny, **LONG},
        "replicates": 2,
        "resources": {"cpu": 1},
    }
    spec, trials = make_sweep("term", replicates=2, resources={"cpu": 1}, **LONG)
    sweep_dir = tmp_path / "sweep-term"
    argv, env = driver_cli(data, sweep_dir, tracking_uri, ray_address=ray_address)
    log = open(tmp_path / "driver.log", "w")
    with log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        waiter(lambda: _trial_past(sweep_dir, 60) or proc.poll() is not None, 240, "a trial past step 60")
        assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 128 + signal.SIGTERM, (tmp_path / "driver.log").read_text()[-3000:]

    view = mlflow_sweep(tracking_uri, "sweep-term")
    assert "RUNNING" not in view.statuses()
    assert view.parents[0].info.status == "KILLED"
    assert {r.info.status for r in view.children} == {"KILLED"}
    assert all("SIGTERM" in r.data.tags["dab.end_reason"] for r in view.children)
    status = _status(sweep_dir)
    assert status is not None and status["state"] == "interrupted"
    assert status["counts"]["killed"] == len(view.children) >= 1

    again = run_sweep(spec, trials, sweep_dir=sweep_dir, tracking_uri=tracking_uri)
    assert again.exit_code == 0 and again.restored
    _assert_complete(mlflow_sweep(tracking_uri, "sweep-term"), trials, sorting_metrics)
