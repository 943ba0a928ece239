"""Fixtures for the Ray/MLflow tests of `workers`: a real local Ray, real MLflow stores.

* `ray_address`: one local Ray for the whole session (num_cpus=2, no dashboard), in this
  process, in a private ``RAY_TMPDIR`` so it never meets another Ray on the machine; shut
  down, and any process of it left behind killed by pid, at the end. Drivers run in-process
  use it as it is; drivers run as subprocesses join it by address, as on a cluster.
* `s3`: an S3 server on loopback (moto's server mode, `tests.s3`) with a fresh bucket; the
  session Ray's workers get its fake credentials in their environment, as a node would.
* `tracking_uri`: a fresh ``sqlite:`` MLflow store under tmp_path, copied from a template
  whose schema is created once per session (creating it costs seconds).
* `make_sweep`, `mlflow_sweep`, `driver_cli`: tiny sorting sweeps, a view of a sweep's runs
  in MLflow, and the driver's command line for subprocess runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.s3 import FAKE_AWS_ENV, S3Server, s3_server

REPO = Path(__file__).resolve().parents[2]

#: A sorting trial that runs in well under a second: 4 reports (steps 10..40).
TINY = {
    "model": "signum-dense",
    "seq_len": 3,
    "steps": 40,
    "eval_every": 10,
    "batch_size": 64,
    "train_size": 0,
    "test_size": 256,
    "dense_hidden": [16, 16],
    "approximator_hidden": [16],
    "num_threads": 1,
}

#: Everything a sorting trial reports, each at every report step.
SORTING_METRICS = {
    "step",
    "train_loss",
    "train_ce",
    "dab_loss",
    "test_all_or_none",
    "test_per_position",
    "samples_per_s",
}


def kill_processes_with_env(name: str, value: str) -> list[int]:
    """SIGKILL every process (but this one) started with ``name=value`` in its environment.

    Ray's processes (GCS, raylet, agents, workers) inherit the environment of the process that
    started the local Ray, so a private ``RAY_TMPDIR`` marks exactly ours.
    """
    needle = f"{name}={value}".encode()
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in env:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed


@pytest.fixture(scope="session")
def ray_tmpdir() -> Iterator[str]:
    # Short: Ray's Unix socket paths live under it (108-byte limit).
    path = tempfile.mkdtemp(prefix="dabr", dir="/tmp")
    yield path
    kill_processes_with_env("RAY_TMPDIR", path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_address(ray_tmpdir: str) -> Iterator[str]:
    """A local Ray for the session; its GCS address for drivers that join it."""
    import logging

    import ray

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", ray_tmpdir)
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        mp.setenv("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
        for name, value in FAKE_AWS_ENV.items():  # the trials' S3 credentials (`s3`), as on a node
            mp.setenv(name, value)
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
        try:
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    """An S3 server on loopback (moto) with a fresh bucket, for sweeps on object storage."""
    with s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def _mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow import MlflowClient

    from workers.tracking import configure_sqlite

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    uri = f"sqlite:///{path}"
    configure_sqlite(uri)
    MlflowClient(uri).search_experiments()  # creates the schema
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything into the main file
    return path


@pytest.fixture
def tracking_uri(tmp_path: Path, _mlflow_template: Path) -> str:
    """A fresh MLflow SQLite store (schema in place) under tmp_path."""
    (tmp_path / "mlflow").mkdir()
    shutil.copyfile(_mlflow_template, tmp_path / "mlflow" / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow/mlflow.db"


@pytest.fixture
def make_sweep() -> Callable[..., tuple[Any, list[Any]]]:
    """``make_sweep(name, replicates=2, grid=None, resources=None, limits=None, **params)``
    -> (SweepSpec, trials) of tiny sorting trials."""
    from workers.spec import expand, parse_spec

    def make(
        name: str,
        replicates: int | list[int] = 2,
        grid: dict[str, list[Any]] | None = None,
        resources: dict[str, Any] | None = None,
        limits: dict[str, Any] | None = None,
        **params: Any,
    ) -> tuple[Any, list[Any]]:
        data: dict[str, Any] = {
            "name": name,
            "experiment": "sorting",
            "params": {**TINY, **params},
            "replicates": replicates,
            "resources": resources or {"cpu": 0.5},
        }
        if grid:
            data["grid"] = grid
        if limits:
            data["limits"] = limits
        spec = parse_spec(data)
        return spec, expand(spec)

    return make


@dataclass
class SweepView:
    """A sweep as MLflow holds it: its experiment, parent runs and child runs."""

    client: Any
    experiment_id: str | None
    parents: list[Any]
    children: list[Any]

    def by_key(self) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for run in self.children:
            out.setdefault(run.data.tags["dab.trial_key"], []).append(run)
        return out

    def steps(self, run: Any) -> dict[str, list[int]]:
        """metric -> the steps of its whole history, in order (duplicates kept)."""
        return {
            key: [
                m.step
                for m in sorted(self.client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            ]
            for key in run.data.metrics
        }

    def statuses(self) -> list[str]:
        return sorted(r.info.status for r in [*self.parents, *self.children])


@pytest.fixture
def mlflow_sweep() -> Callable[[str, str], SweepView]:
    """``mlflow_sweep(tracking_uri, sweep_id)`` -> `SweepView`."""
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    from workers.tracking import find_experiment

    def view(uri: str, sweep_id: str) -> SweepView:
        client = MlflowClient(uri)
        exp = find_experiment(client, sweep_id)
        if exp is None:
            return SweepView(client, None, [], [])
        runs = client.search_runs([exp.experiment_id], "", run_view_type=ViewType.ALL, max_results=10_000)
        parents = [r for r in runs if r.data.tags.get("dab.role") == "sweep"]
        children = [r for r in runs if r.data.tags.get("dab.role") == "trial"]
        return SweepView(client, exp.experiment_id, parents, children)

    return view


@pytest.fixture
def driver_cli(tmp_path: Path) -> Callable[..., tuple[list[str], dict[str, str]]]:
    """``driver_cli(spec_data, sweep_dir, tracking_uri, ray_address=None, ray_tmpdir=None)``
    -> (argv, env) for ``python -m workers.driver``; the spec is written to tmp_path."""
    import json

    def cli(
        spec_data: dict[str, Any],
        sweep_dir: Path,
        uri: str,
        *,
        ray_address: str | None = None,
        ray_tmpdir: str | None = None,
        extra: list[str] | None = None,
    ) -> tuple[list[str], dict[str, str]]:
        spec_file = tmp_path / f"{spec_data['name']}.json"
        spec_file.write_text(json.dumps(spec_data))
        argv = [sys.executable, "-m", "workers.driver", str(spec_file), "--sweep-dir", str(sweep_dir)]
        argv += ["--tracking-uri", uri, "-v", "0", *(extra or [])]
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "DAB_RAY_ADDRESS")}
        env["PYTHONPATH"] = str(REPO)
        env["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
        if ray_address:
            argv += ["--ray-address", ray_address]
            env["RAY_AUTH_MODE"] = "token"  # the session Ray uses Ray 2.60's default token auth
        if ray_tmpdir:
            env["RAY_TMPDIR"] = ray_tmpdir
        return argv, env

    return cli


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def waiter() -> Callable[..., Any]:
    return wait_for


@pytest.fixture
def kill_env_processes() -> Callable[[str, str], list[int]]:
    return kill_processes_with_env


@pytest.fixture
def tiny() -> dict[str, Any]:
    """Sorting params of a trial that runs in well under a second (reports at 10..40)."""
    return dict(TINY)


@pytest.fixture
def sorting_metrics() -> set[str]:
    return set(SORTING_METRICS)


@pytest.fixture
def kill_driver_then_rerun(tmp_path: Path) -> Callable[..., None]:
    """``kill_driver_then_rerun(argv, env, until, what, ray_tmpdir, after_kill=None)``: start the
    driver CLI, SIGKILL it once ``until()`` holds (it must still be running then), call
    ``after_kill()``, run it again to the end (exit 0), and kill whatever the two left under
    `ray_tmpdir`. The drivers' output stays in tmp_path: ``driver-1.log``, ``driver-2.log``."""
    import subprocess

    def run(
        argv: list[str],
        env: dict[str, str],
        until: Callable[[], bool],
        what: str,
        ray_tmpdir: str,
        after_kill: Callable[[], None] | None = None,
    ) -> None:
        log_path = tmp_path / "driver-1.log"
        log = open(log_path, "w")
        try:
            first = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
            wait_for(lambda: until() or first.poll() is not None, 300, what)
            assert first.poll() is None, log_path.read_text()[-3000:]
            first.send_signal(signal.SIGKILL)
            first.wait()
            if after_kill is not None:
                after_kill()
            second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
            (tmp_path / "driver-2.log").write_text(second.stdout + second.stderr)
            assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        finally:
            log.close()
            kill_processes_with_env("RAY_TMPDIR", ray_tmpdir)
            shutil.rmtree(ray_tmpdir, ignore_errors=True)

    return run
