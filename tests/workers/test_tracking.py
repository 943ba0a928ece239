"""The MLflow side on its own: params, the store set-up, finding runs again, the writer thread.

Real MLflow (SQLite stores under tmp_path); no Ray is started here.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from workers.tracking import (
    FINISHED,
    KILLED,
    MAX_PARAM_VALUE,
    PARENT,
    TAG_ROLE,
    TAG_SWEEP_ID,
    TAG_TRIAL_KEY,
    MlflowWriter,
    Report,
    RunSpec,
    SweepTracker,
    configure_sqlite,
    flatten_params,
    result_metrics,
    trial_run_spec,
    truncate,
)


def _spec(key: str, sweep_id: str = "sw", **params: str) -> RunSpec:
    return RunSpec(
        run_name=f"trial {key}",
        tags={TAG_SWEEP_ID: sweep_id, TAG_ROLE: "trial", TAG_TRIAL_KEY: key},
        params={"lr": "0.01", **params},
        config={"lr": 0.01},
    )


def _run_id(writer: MlflowWriter, key: str) -> str:
    run_id = writer.run_id(key)
    assert run_id is not None, f"no run for {key}"
    return run_id


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_flatten_params_dots_nested_keys_and_cuts_long_values() -> None:
    long = "x" * (MAX_PARAM_VALUE + 500)
    params, truncated = flatten_params(
        {
            "lr": 0.001,
            "hard_params": {"eps": 0.5, "deep": {"k": 3}},
            "hidden": [16, 16],
            "none": None,
            "note": long,
        }
    )
    assert params["lr"] == "0.001"
    assert params["hard_params.eps"] == "0.5"
    assert params["hard_params.deep.k"] == "3"
    assert params["hidden"] == "[16, 16]"
    assert params["none"] == "None"
    assert len(params["note"]) == MAX_PARAM_VALUE
    assert params["note"].endswith(f"[{MAX_PARAM_VALUE + 500} chars, sha256 {params['note'][-13:-1]}]")
    assert truncated == ["note"]
    assert flatten_params({"hard_params": {}})[0] == {"hard_params": "{}"}


def test_truncate_keeps_short_values_whole() -> None:
    assert truncate("abc", 10) == ("abc", False)
    cut, was_cut = truncate("a" * 100, 60)
    assert was_cut and len(cut) == 60 and cut.startswith("a" * 10)


def test_result_metrics_keeps_the_trials_numbers_only() -> None:
    result = {
        "step": 10.0,
        "train_loss": 1.5,
        "flag": True,
        "training_iteration": 1,
        "time_total_s": 0.3,
        "pid": 123,
        "hostname": "h",
        "config": {"trial_key": "k"},
        "done": False,
        "timestamp": 1,
        "checkpoint_dir_name": "checkpoint_000000",
    }
    assert result_metrics(result) == {"step": 10.0, "train_loss": 1.5, "flag": 1.0}


def test_configure_sqlite_sets_wal_and_fast_commits(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/sub/m.db"
    configure_sqlite(uri)
    assert sqlite3.connect(tmp_path / "sub" / "m.db").execute("PRAGMA journal_mode").fetchone() == ("wal",)
    from sqlalchemy import create_engine, text

    with create_engine(uri).connect() as conn:  # every SQLAlchemy connection gets the pragmas
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30_000
    configure_sqlite("http://127.0.0.1:5000")  # not SQLite: nothing to do, no error
    other = tmp_path / "service.db"  # another SQLite database of the process: left alone
    with create_engine(f"sqlite:///{other}").connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "delete"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL, SQLite's default


def test_tracker_finds_its_experiment_and_parent_again(tracking_uri: str) -> None:
    first = SweepTracker(tracking_uri, "sweep-a")
    exp = first.ensure_experiment()
    parent = first.ensure_parent({"dab.spec_name": "a"}, run_name="a")
    client = first.client
    client.set_terminated(parent, KILLED)

    second = SweepTracker(tracking_uri, "sweep-a")  # a restarted driver
    assert second.ensure_experiment() == exp
    assert second.ensure_parent({"dab.spec_name": "a2"}, run_name="a") == parent
    run = client.get_run(parent)
    assert run.info.status == "RUNNING"
    assert run.data.tags["dab.spec_name"] == "a2"
    assert run.data.tags[TAG_ROLE] == "sweep" and run.data.tags[TAG_SWEEP_ID] == "sweep-a"
    assert client.get_experiment(exp).name == "dab/sweep-a"
    assert (
        client.get_experiment(exp).artifact_location
        == (Path(tracking_uri[10:]).parent / "artifacts" / "sweep-a").as_uri()
    )
    other = SweepTracker(tracking_uri, "sweep-b")
    assert other.ensure_experiment() != exp
    assert other.ensure_parent({}, run_name="b") != parent


def test_child_runs_reports_last_step_and_prefers_the_finished_duplicate(tracking_uri: str) -> None:
    tracker = SweepTracker(tracking_uri, "sw")
    exp = tracker.ensure_experiment()
    client = tracker.client
    tags = {TAG_SWEEP_ID: "sw", TAG_ROLE: "trial"}
    killed = client.create_run(exp, tags={**tags, TAG_TRIAL_KEY: "k1"}).info.run_id
    client.log_metric(killed, "step", 30, step=30)
    client.set_terminated(killed, KILLED)
    finished = client.create_run(exp, tags={**tags, TAG_TRIAL_KEY: "k1"}).info.run_id
    client.log_metric(finished, "step", 10, step=10)
    client.log_metric(finished, "step", 20, step=20)
    client.set_terminated(finished, FINISHED)
    running = client.create_run(exp, tags={**tags, TAG_TRIAL_KEY: "k2"}).info.run_id
    client.create_run(exp, tags={TAG_SWEEP_ID: "other", TAG_ROLE: "trial", TAG_TRIAL_KEY: "k3"})

    runs = tracker.child_runs()
    assert set(runs) == {"k1", "k2"}
    assert (runs["k1"].run_id, runs["k1"].status, runs["k1"].last_step) == (finished, FINISHED, 20.0)
    assert runs["k1"].duplicates == [killed]
    assert (runs["k2"].run_id, runs["k2"].status, runs["k2"].last_step) == (running, "RUNNING", None)

    assert tracker.end_interrupted(runs) == [running]
    assert client.get_run(running).info.status == KILLED
    assert client.get_run(finished).info.status == FINISHED
    assert runs["k2"].status == KILLED


def test_writer_creates_runs_batches_metrics_and_ends_runs(tracking_uri: str) -> None:
    tracker = SweepTracker(tracking_uri, "sw")
    exp = tracker.ensure_experiment()
    parent = tracker.ensure_parent({}, run_name="sw")
    writer = MlflowWriter(tracker.client, exp, {PARENT: parent}, linger_s=0.05).start()
    writer.open_run("k1", _spec("k1", **{"note": "n"}), {"dab.attempts": "1"})
    # 150 reports x 7 metrics: over MLflow's 1,000 values a batch, so it takes two batches.
    reports = [
        Report(
            step,
            1_700_000_000_000 + step,
            {"step": float(step), **{f"m{i}": step * 0.5 + i for i in range(6)}},
        )
        for step in range(1, 151)
    ]
    writer.log_reports("k1", reports[:75])
    writer.log_reports("k1", reports[75:])
    writer.set_tags("k1", {"dab.note": "a tag after the metrics"})
    writer.terminate("k1", FINISHED)
    writer.set_tags(PARENT, {"dab.note": "parent is addressable too"})
    assert writer.flush(timeout=60)
    assert writer.close(timeout=60)
    assert writer.errors == []

    client = tracker.client
    run = client.get_run(_run_id(writer, "k1"))
    assert run.info.status == FINISHED
    assert run.info.run_name == "trial k1"
    assert run.data.params == {"lr": "0.01", "note": "n"}
    assert run.data.tags[TAG_TRIAL_KEY] == "k1" and run.data.tags["dab.attempts"] == "1"
    assert run.data.tags["dab.note"] == "a tag after the metrics"
    assert _history(client, run.info.run_id, "step") == [(s, float(s)) for s in range(1, 151)]
    assert _history(client, run.info.run_id, "m3") == [(s, s * 0.5 + 3) for s in range(1, 151)]
    assert client.get_run(parent).data.tags["dab.note"] == "parent is addressable too"


def test_writer_reopens_an_existing_run_instead_of_making_a_second(tracking_uri: str) -> None:
    tracker = SweepTracker(tracking_uri, "sw")
    exp = tracker.ensure_experiment()
    client = tracker.client
    first = MlflowWriter(client, exp, linger_s=0.01).start()
    first.open_run("k1", _spec("k1"))
    first.log_reports("k1", [Report(10, 1, {"step": 10.0})])
    first.terminate("k1", KILLED)
    assert first.close(timeout=30)
    run_id = _run_id(first, "k1")

    # A restarted driver knows the run (found by tag at start-up) and continues it.
    known = MlflowWriter(client, exp, {"k1": run_id}, linger_s=0.01).start()
    known.open_run("k1", _spec("k1"), {"dab.attempts": "2"})
    known.log_reports("k1", [Report(20, 2, {"step": 20.0})])
    assert known.flush(timeout=30)
    assert client.get_run(run_id).info.status == "RUNNING"
    known.terminate("k1", FINISHED)
    assert known.close(timeout=30)
    assert known.errors == []

    runs = client.search_runs([exp], f"tags.`{TAG_TRIAL_KEY}` = 'k1'")
    assert [r.info.run_id for r in runs] == [run_id]
    assert _history(client, run_id, "step") == [(10, 10.0), (20, 20.0)]
    run = client.get_run(run_id)
    assert run.data.params == {"lr": "0.01"}  # logged once, with the first metrics
    assert run.data.tags["dab.attempts"] == "2" and run.info.status == FINISHED


def test_writer_logs_a_truncated_config_whole_as_an_artifact(tracking_uri: str, tmp_path: Path) -> None:
    from workers.spec import Trial

    config = {"experiment": "sorting", "lr": 0.1, "seed": 7, "note": "y" * 7000}
    trial = Trial(
        index=3, cell={"lr": 0.1}, cell_key="lr=0.1", replicate=1, seed=7, config=config, trial_key="kk"
    )
    tracker = SweepTracker(tracking_uri, "sw")
    exp = tracker.ensure_experiment()
    parent = tracker.ensure_parent({}, run_name="sw")
    spec = trial_run_spec(trial, sweep_id="sw", parent_run_id=parent, family="sorting")
    assert spec.truncated == ("note",)
    assert spec.tags["mlflow.parentRunId"] == parent
    assert spec.tags["dab.cell"] == '{"lr": 0.1}' and spec.tags["dab.seed"] == "7"
    assert spec.run_name == "0003 lr=0.1 seed=7"
    writer = MlflowWriter(tracker.client, exp, linger_s=0.01).start()
    writer.open_run("kk", spec)
    assert writer.close(timeout=30) and writer.errors == []
    run_id = _run_id(writer, "kk")
    assert len(tracker.client.get_run(run_id).data.params["note"]) == MAX_PARAM_VALUE
    path = tracker.client.download_artifacts(run_id, "config.json", str(tmp_path))
    assert json.loads(Path(path).read_text())["note"] == "y" * 7000


def test_writer_logs_many_params_without_metrics(tracking_uri: str) -> None:
    tracker = SweepTracker(tracking_uri, "sw")
    exp = tracker.ensure_experiment()
    writer = MlflowWriter(tracker.client, exp, linger_s=0.01).start()
    many = {f"p{i:03d}": str(i) for i in range(250)}  # over MLflow's 100 params a batch
    writer.open_run("k1", _spec("k1", **many))
    writer.terminate("k1", FINISHED)  # params go out before the end, even with no metrics
    assert writer.close(timeout=30) and writer.errors == []
    assert tracker.client.get_run(_run_id(writer, "k1")).data.params == {"lr": "0.01", **many}


def test_writer_records_a_failed_write_and_carries_on(tracking_uri: str) -> None:
    tracker = SweepTracker(tracking_uri, "sw")
    exp = tracker.ensure_experiment()
    writer = MlflowWriter(tracker.client, exp, linger_s=0.01).start()
    writer.terminate("never-opened", FINISHED)  # no run: an error, not a dead thread
    writer.open_run("k1", _spec("k1"))
    writer.terminate("k1", FINISHED)
    assert writer.close(timeout=30)
    assert len(writer.errors) == 1 and "never-opened" in writer.errors[0]
    assert tracker.client.get_run(_run_id(writer, "k1")).info.status == FINISHED


def test_writer_keeps_tunes_loop_free(tracking_uri: str) -> None:
    tracker = SweepTracker(tracking_uri, "sw")
    exp = tracker.ensure_experiment()
    writer = MlflowWriter(tracker.client, exp, linger_s=0.2).start()
    t0 = time.perf_counter()
    for i in range(20):
        writer.open_run(f"k{i}", _spec(f"k{i}"))
        writer.log_reports(f"k{i}", [Report(s, s, {"step": float(s), "loss": 1.0 / s}) for s in (10, 20, 30)])
        writer.terminate(f"k{i}", FINISHED)
    enqueue_s = time.perf_counter() - t0
    assert writer.close(timeout=60)
    assert enqueue_s < 0.05, f"enqueueing 80 operations took {enqueue_s:.3f} s"
    runs = tracker.client.search_runs([exp], "", max_results=100)
    assert len(runs) == 20 and {r.info.status for r in runs} == {FINISHED}


@pytest.mark.parametrize("uri", ["sqlite:////abs/dir/m.db", "sqlite:///rel.db"])
def test_default_artifact_root_is_beside_a_sqlite_store(uri: str) -> None:
    from workers.tracking import default_artifact_root

    root = default_artifact_root(uri)
    assert root is not None and root.startswith("file://") and root.endswith("/artifacts")
    assert default_artifact_root("https://mlflow.example") is None
