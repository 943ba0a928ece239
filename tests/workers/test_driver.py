"""The sweep driver end to end: real Ray Tune, real MLflow.

In-process runs use the session's local Ray; the CLI runs join it by address, as a driver
joins a cluster.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.workers.conftest import TINY
from workers.driver import SweepDirError, main, run_sweep
from workers.tracking import find_sweep_ids, git_commit, make_client, package_version

STEPS = [10, 20, 30, 40]


def _status(sweep_dir: Path) -> dict[str, Any]:
    return json.loads((sweep_dir / "status.json").read_text())


def _tune_checkpoints(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in (sweep_dir / "tune").glob("*/*/checkpoint_*"))


@pytest.mark.slow
def test_four_trial_sweep_makes_one_parent_and_four_finished_children(
    ray_address: str,
    tracking_uri: str,
    tmp_path: Path,
    make_sweep: Callable[..., Any],
    mlflow_sweep: Callable[..., Any],
    sorting_metrics: set[str],
) -> None:
    spec, trials = make_sweep("four", replicates=2, grid={"lr": [0.001, 0.01]})
    sweep_dir = tmp_path / "sweep-four"
    outcome = run_sweep(spec, trials, sweep_dir=sweep_dir, tracking_uri=tracking_uri)

    assert outcome.exit_code == 0 and outcome.state == "finished"
    assert sorted(outcome.ran) == sorted(outcome.finished) == sorted(t.trial_key for t in trials)
    assert outcome.skipped == [] and outcome.failed == [] and outcome.tracking_errors == []
    assert outcome.sweep_id == "sweep-four"  # the sweep directory's name by default

    view = mlflow_sweep(tracking_uri, "sweep-four")
    assert len(view.parents) == 1
    parent = view.parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["dab.spec_name"] == "four"
    assert parent.data.tags["dab.trial_count"] == "4"
    assert parent.data.tags["dab.count.finished"] == "4"
    assert parent.data.tags["dab.skipped_count"] == "0"
    assert parent.data.tags["dab.metric"] == "test_all_or_none" and parent.data.tags["dab.mode"] == "max"

    by_key = view.by_key()
    assert sorted(by_key) == sorted(t.trial_key for t in trials)
    for trial in trials:
        [run] = by_key[trial.trial_key]  # exactly one run per trial
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["dab.sweep_id"] == "sweep-four"
        assert tags["dab.role"] == "trial"
        assert json.loads(tags["dab.cell"]) == trial.cell
        assert tags["dab.cell_key"] == trial.cell_key
        assert tags["dab.seed"] == str(trial.seed) and tags["dab.replicate"] == str(trial.replicate)
        assert tags["dab.family"] == "sorting"
        assert tags["dab.version"] == package_version()
        assert tags["dab.git_commit"] == git_commit() != ""
        assert tags["dab.attempts"] == "1"
        assert run.data.params["lr"] == str(trial.config["lr"])
        assert run.data.params["seed"] == str(trial.seed)
        assert run.data.params["dense_hidden"] == "[16, 16]"
        assert run.data.params["hard_params"] == "{}"
        # Every metric, every report step, once.
        assert view.steps(run) == {metric: STEPS for metric in sorting_metrics}
        assert run.data.metrics["step"] == 40.0
        artifacts = {a.path for a in view.client.list_artifacts(run.info.run_id, "checkpoint")}
        assert artifacts == {"checkpoint/trial.pt", "checkpoint/dab_history.json", "checkpoint/artifacts"}
        plots = {a.path for a in view.client.list_artifacts(run.info.run_id, "checkpoint/artifacts")}
        assert plots == {
            "checkpoint/artifacts/per_position_accuracy.png",
            "checkpoint/artifacts/per_position_accuracy.json",
        }

    status = _status(sweep_dir)
    assert status["state"] == "finished"
    assert status["counts"] == {
        "total": 4,
        "pending": 0,
        "running": 0,
        "retrying": 0,
        "finished": 4,
        "failed": 0,
        "killed": 0,
        "skipped": 0,
        "adopted": 0,
        "waiting": 0,
    }
    for trial in trials:
        entry = status["trials"][trial.trial_key]
        assert entry["state"] == "finished" and entry["attempts"] == 1 and entry["last_step"] == 40
        assert entry["run_id"] == by_key[trial.trial_key][0].info.run_id
        assert (entry["cell_key"], entry["seed"], entry["index"]) == (trial.cell_key, trial.seed, trial.index)
    # The ids are MLflow's: derived from the sweep id, kept in no file of the sweep directory.
    assert "experiment_id" not in status and "parent_run_id" not in status
    assert status["sweep_id"] == "sweep-four"
    assert not (sweep_dir / "sweep.json").exists()
    ids = find_sweep_ids(view.client, "sweep-four")
    assert ids == (view.experiment_id, parent.info.run_id) == (outcome.experiment_id, outcome.parent_run_id)
    # A finished trial's final checkpoint is in MLflow: Tune's copies are gone.
    assert _tune_checkpoints(sweep_dir) == []


@pytest.mark.slow
def test_resubmitting_runs_nothing_and_a_new_seed_runs_only_its_trials(
    ray_address: str,
    tracking_uri: str,
    tmp_path: Path,
    make_sweep: Callable[..., Any],
    mlflow_sweep: Callable[..., Any],
) -> None:
    sweep_dir = tmp_path / "sweep-grow"
    spec, trials = make_sweep("grow", replicates=[0, 1])
    first = run_sweep(spec, trials, sweep_dir=sweep_dir, tracking_uri=tracking_uri, checkpoints_to_keep=1)
    assert first.exit_code == 0 and len(first.finished) == 2
    run_ids = {
        k: runs[0].info.run_id for k, runs in mlflow_sweep(tracking_uri, "sweep-grow").by_key().items()
    }
    tune_dirs = sorted((sweep_dir / "tune").iterdir())
    assert len(tune_dirs) == 1

    again = run_sweep(spec, trials, sweep_dir=sweep_dir, tracking_uri=tracking_uri)
    assert again.exit_code == 0 and again.state == "finished"
    assert (again.experiment_id, again.parent_run_id) == (first.experiment_id, first.parent_run_id)
    assert again.ran == [] and again.finished == []
    assert sorted(again.skipped) == sorted(run_ids)
    assert again.tune_experiment is None  # nothing was handed to Tune
    assert sorted((sweep_dir / "tune").iterdir()) == tune_dirs
    status = _status(sweep_dir)
    assert status["counts"]["skipped"] == 2 and status["counts"]["finished"] == 0
    assert sorted(status["skipped"], key=lambda s: s["trial_key"]) == [
        {"trial_key": k, "reason": "already has a FINISHED MLflow run", "run_id": run_ids[k]}
        for k in sorted(run_ids)
    ]
    view = mlflow_sweep(tracking_uri, "sweep-grow")
    assert len(view.parents) == 1 and len(view.children) == 2
    assert view.parents[0].data.tags["dab.skipped_count"] == "2"
    assert sorted(view.parents[0].data.tags["dab.skipped"].split(",")) == sorted(run_ids)
    assert view.statuses() == ["FINISHED"] * 3

    spec3, trials3 = make_sweep("grow", replicates=[0, 1, 2])
    new_key = next(t.trial_key for t in trials3 if t.seed == 2)
    grown = run_sweep(spec3, trials3, sweep_dir=sweep_dir, tracking_uri=tracking_uri)
    assert grown.exit_code == 0
    assert grown.ran == [new_key] and grown.finished == [new_key]
    assert sorted(grown.skipped) == sorted(run_ids)
    assert not grown.restored  # the old Tune experiment was not built for the new trial
    new_dirs = sorted(set((sweep_dir / "tune").iterdir()) - set(tune_dirs))
    assert len(new_dirs) == 1
    assert json.loads((new_dirs[0] / "dab_trials.json").read_text())["trial_keys"] == [new_key]
    view = mlflow_sweep(tracking_uri, "sweep-grow")
    assert len(view.parents) == 1
    by_key = view.by_key()
    assert sorted(by_key) == sorted([*run_ids, new_key])
    assert all(len(runs) == 1 for runs in by_key.values())
    assert {k: by_key[k][0].info.run_id for k in run_ids} == run_ids  # old runs untouched
    assert view.steps(by_key[new_key][0])["test_all_or_none"] == STEPS
    assert view.statuses() == ["FINISHED"] * 4


@pytest.mark.slow
def test_a_trial_tune_finished_but_mlflow_never_ended_is_finished_from_its_checkpoint(
    ray_address: str,
    tracking_uri: str,
    tmp_path: Path,
    make_sweep: Callable[..., Any],
    mlflow_sweep: Callable[..., Any],
    sorting_metrics: set[str],
) -> None:
    """A driver that died after Tune recorded a trial TERMINATED but before its run was ended:
    the restore does not train it again; the run is ended FINISHED from the final checkpoint."""
    sweep_dir = tmp_path / "sweep-end"
    spec, trials = make_sweep("end", replicates=2)
    first = run_sweep(spec, trials, sweep_dir=sweep_dir, tracking_uri=tracking_uri, prune_checkpoints=False)
    assert first.exit_code == 0
    view = mlflow_sweep(tracking_uri, "sweep-end")
    victim = trials[0].trial_key
    run_id = view.by_key()[victim][0].info.run_id
    view.client.update_run(run_id, status="RUNNING")  # what a SIGKILL at that moment leaves

    again = run_sweep(spec, trials, sweep_dir=sweep_dir, tracking_uri=tracking_uri)
    assert again.exit_code == 0
    assert again.ran == [victim] and again.finished == [victim] and again.restored
    assert again.skipped == [trials[1].trial_key]
    status = _status(sweep_dir)
    assert status["trials"][victim]["attempts"] == 1  # not trained again
    assert len(status["trials"][victim]["starts"]) == 1
    view = mlflow_sweep(tracking_uri, "sweep-end")
    [run] = view.by_key()[victim]
    assert run.info.run_id == run_id and run.info.status == "FINISHED"
    assert view.steps(run) == {m: STEPS for m in sorting_metrics}
    assert view.statuses() == ["FINISHED"] * 3
    # Its checkpoints left Tune's storage once it was FINISHED, and so did the other trial's,
    # which the first run (prune_checkpoints=False, as a driver killed before it pruned) left:
    # the second driver skipped that trial and deleted them.
    assert _tune_checkpoints(sweep_dir) == []


@pytest.mark.slow
@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="the failing trial asks for CUDA on a machine without it"
)
def test_a_failing_trial_ends_failed_and_the_driver_exits_1(
    ray_address: str,
    tracking_uri: str,
    tmp_path: Path,
    make_sweep: Callable[..., Any],
    mlflow_sweep: Callable[..., Any],
) -> None:
    spec, trials = make_sweep(
        "fails", replicates=1, grid={"device": ["cpu", "cuda"]}, limits={"max_failures": 0}
    )
    sweep_dir = tmp_path / "sweep-fails"
    outcome = run_sweep(spec, trials, sweep_dir=sweep_dir, tracking_uri=tracking_uri)
    cpu, cuda = (next(t.trial_key for t in trials if t.config["device"] == d) for d in ("cpu", "cuda"))
    assert outcome.exit_code == 1 and outcome.state == "failed"
    assert outcome.finished == [cpu] and outcome.failed == [cuda]

    view = mlflow_sweep(tracking_uri, "sweep-fails")
    by_key = view.by_key()
    assert by_key[cpu][0].info.status == "FINISHED"
    assert by_key[cuda][0].info.status == "FAILED"
    assert "cuda" in by_key[cuda][0].data.tags["dab.end_reason"].lower()
    assert view.parents[0].info.status == "FAILED"
    status = _status(sweep_dir)
    assert status["state"] == "failed"
    assert status["trials"][cuda]["state"] == "failed" and "cuda" in status["trials"][cuda]["error"].lower()


def test_the_cli_refuses_a_suite_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.yaml").write_text(
        "name: a\nexperiment: sorting\nparams: {model: signum-dense, seq_len: 3, steps: 10}\n"
    )
    (tmp_path / "suite.yaml").write_text("name: s\ninclude: [a.yaml]\n")
    code = main(
        [
            str(tmp_path / "suite.yaml"),
            "--sweep-dir",
            str(tmp_path / "sw"),
            "--tracking-uri",
            "sqlite:///x.db",
        ]
    )
    assert code == 2
    assert "is a suite (a)" in capsys.readouterr().err
    assert not (tmp_path / "sw").exists()


def test_a_restarted_driver_finds_its_experiment_and_parent_from_the_sweep_id_alone(
    tracking_uri: str, tmp_path: Path, make_sweep: Callable[..., Any]
) -> None:
    """No Ray: a sweep with nothing to run still makes (then finds) its experiment and parent."""
    spec, _ = make_sweep("ids", replicates=1)
    sweep_dir = tmp_path / "sweep-ids"
    client = make_client(tracking_uri)
    assert find_sweep_ids(client, "sweep-ids") == (None, None)

    first = run_sweep(spec, [], sweep_dir=sweep_dir, tracking_uri=tracking_uri)
    assert first.state == "finished" and first.sweep_id == "sweep-ids"  # the directory's name
    assert find_sweep_ids(client, "sweep-ids") == (first.experiment_id, first.parent_run_id)
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["driver.lock", "status.json"]  # no sweep.json
    status = _status(sweep_dir)
    assert "experiment_id" not in status and "parent_run_id" not in status
    assert status["sweep_id"] == "sweep-ids" and status["counts"]["total"] == 0

    again = run_sweep(spec, [], sweep_dir=sweep_dir, tracking_uri=tracking_uri, sweep_id="sweep-ids")
    assert (again.experiment_id, again.parent_run_id) == (first.experiment_id, first.parent_run_id)
    assert not (sweep_dir / "sweep.json").exists()
    exp = client.get_experiment_by_name(f"dab/{spec.name} (sweep-ids)")  # the spec's name, for people
    assert exp is not None and exp.experiment_id == first.experiment_id
    assert exp.tags["dab.sweep_id"] == "sweep-ids"
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    parents = client.search_runs([exp.experiment_id], "tags.`dab.role` = 'sweep'")
    assert [r.info.run_id for r in parents] == [first.parent_run_id]
    assert parents[0].info.status == "FINISHED"


def test_a_sweep_directory_refuses_another_sweep_id(
    tracking_uri: str, tmp_path: Path, make_sweep: Callable[..., Any], capsys: pytest.CaptureFixture[str]
) -> None:
    spec, _ = make_sweep("own", replicates=1)
    sweep_dir = tmp_path / "dir"
    run_sweep(spec, [], sweep_dir=sweep_dir, tracking_uri=tracking_uri, sweep_id="abc")
    with pytest.raises(SweepDirError, match="belongs to sweep 'abc', not 'dir'"):
        run_sweep(spec, [], sweep_dir=sweep_dir, tracking_uri=tracking_uri)  # default: the dir's name
    (tmp_path / "own.yaml").write_text(
        "name: own\nexperiment: sorting\nparams: {model: signum-dense, seq_len: 3, steps: 10}\n"
    )
    argv = [str(tmp_path / "own.yaml"), "--sweep-dir", str(sweep_dir), "--tracking-uri", tracking_uri]
    assert main([*argv, "--sweep-id", "xyz"]) == 2
    assert "belongs to sweep 'abc', not 'xyz'" in capsys.readouterr().err
    assert find_sweep_ids(make_client(tracking_uri), "xyz") == (None, None)  # nothing was created


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def mlflow_server(tmp_path: Path, tracking_uri: str) -> Iterator[str]:
    """A real ``mlflow server`` on a free port (SQLite backend, artifacts proxied)."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            tracking_uri,
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=open(tmp_path / "mlflow-server.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow server did not start: {(tmp_path / 'mlflow-server.log').read_text()[-2000:]}"
                )
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_cli_joins_a_cluster_by_address_and_tracks_to_an_http_server(
    ray_address: str,
    mlflow_server: str,
    tmp_path: Path,
    tiny: dict[str, Any],
    driver_cli: Callable[..., Any],
    mlflow_sweep: Callable[..., Any],
) -> None:
    spec = {
        "name": "remote",
        "experiment": "sorting",
        "params": tiny,
        "replicates": 2,
        "resources": {"cpu": 0.5},
    }
    sweep_dir = tmp_path / "sweep-remote"
    argv, env = driver_cli(spec, sweep_dir, mlflow_server, ray_address=ray_address)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "sweep sweep-remote: finished; ran 2, skipped 0, finished 2" in done.stdout

    view = mlflow_sweep(mlflow_server, "sweep-remote")
    assert len(view.parents) == 1 and len(view.children) == 2
    assert view.statuses() == ["FINISHED"] * 3
    for run in view.children:
        assert view.steps(run)["train_loss"] == STEPS
        assert {a.path for a in view.client.list_artifacts(run.info.run_id, "checkpoint")} == {
            "checkpoint/trial.pt",
            "checkpoint/dab_history.json",
            "checkpoint/artifacts",
        }
    # The artifacts went through the server, into its artifact store.
    assert len(list((tmp_path / "server-artifacts").rglob("trial.pt"))) == 2


@pytest.mark.slow
def test_a_sweep_on_object_storage_keeps_its_state_there(
    ray_address: str,
    tracking_uri: str,
    tmp_path: Path,
    s3: Any,
    make_sweep: Callable[..., Any],
    mlflow_sweep: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Status, Tune's experiment and the trials' checkpoints go to S3 through pyarrow (the
    filesystem Tune itself uses); nothing of the sweep is written to a local directory."""
    from workers._files import TUNE_DIR
    from workers.driver.tuner import _restorable
    from workers.storage import ENDPOINT_ENV, open_location

    monkeypatch.setenv(ENDPOINT_ENV, s3.endpoint_url)  # as the service passes it to its driver job
    monkeypatch.chdir(tmp_path)
    spec, trials = make_sweep("objects", replicates=2)
    uri = f"s3://{s3.bucket}/sweeps/objects-1"
    before = set(tmp_path.rglob("*"))
    outcome = run_sweep(spec, trials, sweep_dir=uri, tracking_uri=tracking_uri, sweep_id="objects-1")
    assert outcome.state == "finished" and sorted(outcome.finished) == sorted(t.trial_key for t in trials)

    location = open_location(uri)
    status = location.child("status.json").read_json()
    assert status["state"] == "finished" and status["counts"]["finished"] == 2
    keys = s3.keys("sweeps/objects-1/")
    [experiment] = location.child(TUNE_DIR).dirs()
    assert f"sweeps/objects-1/tune/{experiment}/dab_trials.json" in keys
    assert any(k.startswith(f"sweeps/objects-1/tune/{experiment}/experiment_state") for k in keys)
    # Each trial checkpointed into the bucket and the copy went once it was an MLflow artifact.
    assert not [k for k in keys if "/checkpoint_" in k]
    # The experiment can be restored from the bucket (what a driver on a new head does).
    found = _restorable(location.child(TUNE_DIR), {t.trial_key for t in trials})
    assert found is not None and found.uri == f"{uri}/tune/{experiment}"

    view = mlflow_sweep(tracking_uri, "objects-1")
    for run in view.children:
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        assert tags["dab.device"] == "cpu" and tags["dab.gpu_ids"] == "" and "dab.device_note" not in tags
        assert tags["dab.node"] == tags["dab.nodes"] != ""
        entry = status["trials"][tags["dab.trial_key"]]
        assert entry["nodes"] == [tags["dab.node"]] and entry["placement"]["device"] == "cpu"
        checkpoint = {a.path for a in view.client.list_artifacts(run.info.run_id, "checkpoint")}
        assert "checkpoint/trial.pt" in checkpoint

    # The driver's CLI reads the spec from the bucket (as the service submits it); a second
    # run finds every trial FINISHED and runs nothing.
    location.child("spec.json").write_json(
        {
            "name": "objects",
            "experiment": "sorting",
            "params": TINY,
            "replicates": 2,
            "resources": {"cpu": 0.5},
        }
    )
    code = main(
        [f"{uri}/spec.json", "--sweep-dir", uri, "--tracking-uri", tracking_uri, "--sweep-id", "objects-1"]
    )
    assert code == 0
    again = location.child("status.json").read_json()
    assert again["counts"]["skipped"] == 2 and again["counts"]["finished"] == 0
    assert len(mlflow_sweep(tracking_uri, "objects-1").children) == 2
    # Nothing of the sweep landed on local disk (the MLflow store is the test's own).
    new = {p for p in set(tmp_path.rglob("*")) - before if "mlflow" not in p.parts}
    assert new == set()


@pytest.mark.slow
def test_a_running_trial_keeps_its_newest_checkpoints(
    ray_address: str,
    tracking_uri: str,
    tmp_path: Path,
    make_sweep: Callable[..., Any],
) -> None:
    """`checkpoints_to_keep` reaches Tune: with pruning off, each trial ends with its newest N."""
    spec, trials = make_sweep("keep", replicates=2, steps=80, eval_every=10)
    sweep_dir = tmp_path / "sweep-keep"
    outcome = run_sweep(
        spec,
        trials,
        sweep_dir=sweep_dir,
        tracking_uri=tracking_uri,
        prune_checkpoints=False,
        checkpoints_to_keep=2,
    )
    assert outcome.exit_code == 0
    by_trial: dict[str, list[str]] = {}
    for p in _tune_checkpoints(sweep_dir):
        by_trial.setdefault(p.parent.name, []).append(p.name)
    assert len(by_trial) == 2
    for names in by_trial.values():  # 8 checkpoints each (steps 10..80): the last two are left
        assert names == ["checkpoint_000006", "checkpoint_000007"], names
