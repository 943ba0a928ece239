"""`workers.tracking.writer`: the thread that owns every MLflow write of a sweep.

Real MLflow (SQLite stores under tmp_path); no Ray is started here.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
    trial_run_spec,
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


class _GatedClient:
    """A real client whose calls from any thread but the test's wait until `gate` is set.

    Records which thread made each call: the test's own calls would be the enqueueing side
    touching MLflow, which it must never do.
    """

    def __init__(self, real: MlflowClient) -> None:
        self.real = real
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.caller_calls: list[str] = []
        self.writer_calls: list[str] = []
        self._caller = threading.get_ident()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.real, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() == self._caller:
                self.caller_calls.append(name)
            else:
                self.writer_calls.append(name)
                self.entered.set()
                assert self.gate.wait(60), "the test never opened the gate"
            return method(*args, **kwargs)

        return call


def test_writer_keeps_tunes_loop_free(tracking_uri: str) -> None:
    """Enqueueing makes no MLflow call and does not wait for one: the writer thread is held
    inside its first call while all 80 operations are enqueued."""
    tracker = SweepTracker(tracking_uri, "sw")
    exp = tracker.ensure_experiment()
    gated = _GatedClient(tracker.client)
    writer = MlflowWriter(gated, exp, linger_s=0.01).start()  # type: ignore[arg-type]
    writer.open_run("k0", _spec("k0"))
    assert gated.entered.wait(30), "the writer thread never called MLflow"
    for i in range(20):
        if i:
            writer.open_run(f"k{i}", _spec(f"k{i}"))
        writer.log_reports(f"k{i}", [Report(s, s, {"step": float(s), "loss": 1.0 / s}) for s in (10, 20, 30)])
        writer.terminate(f"k{i}", FINISHED)
    # Every enqueue returned while the thread is still held in its first call.
    assert gated.writer_calls == ["create_run"] and not gated.gate.is_set()
    assert gated.caller_calls == []
    gated.gate.set()
    assert writer.close(timeout=60) and writer.errors == []
    assert gated.caller_calls == []
    runs = tracker.client.search_runs([exp], "", max_results=100)
    assert len(runs) == 20 and {r.info.status for r in runs} == {FINISHED}
    assert {r.data.metrics["step"] for r in runs} == {30.0}


class _CountingClient:
    """A real client that records each call's name and, for ``log_batch``, what it carried."""

    def __init__(self, real: MlflowClient) -> None:
        self.real = real
        self.calls: list[str] = []
        self.batches: list[tuple[int, int, int]] = []  # (params, tags, metrics) a log_batch
        self._returned = threading.Condition()  # notified as each call returns

    def wait_for_calls(self, *expected: str) -> bool:
        """Block until the calls made so far are `expected` (each one returned); False if
        that did not happen within a minute (a hang guard, not a measurement)."""
        with self._returned:
            return self._returned.wait_for(lambda: self.calls == list(expected), timeout=60)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.real, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            finally:  # recorded once it returned: a test waiting on `calls` sees it done
                if name == "log_batch":
                    self.batches.append(
                        (
                            len(kwargs.get("params") or []),
                            len(kwargs.get("tags") or []),
                            len(kwargs.get("metrics") or []),
                        )
                    )
                with self._returned:
                    self.calls.append(name)
                    self._returned.notify_all()

        return call


def test_a_trials_params_tags_and_metrics_of_one_round_go_in_one_batch_and_all_land(
    tracking_uri: str, tmp_path: Path
) -> None:
    """What the callback sends for a short trial (open, reports, placement tags between them,
    the final checkpoint, the end) is written as create, one log_batch, the artifact, the end:
    nothing lost, the later value of a tag set twice wins, the artifact where MLflow says."""
    tracker = SweepTracker(tracking_uri, "sw")
    exp = tracker.ensure_experiment()
    counting = _CountingClient(tracker.client)
    # A long linger: the round is whole when the close wakes the thread.
    writer = MlflowWriter(counting, exp, linger_s=600).start()  # type: ignore[arg-type]
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "state.pt").write_text("weights")

    @contextlib.contextmanager
    def source() -> Iterator[str]:
        yield str(checkpoint)

    writer.open_run("k1", _spec("k1", note="n"), {"dab.attempts": "1"})
    writer.log_reports("k1", [Report(10, 1, {"step": 10.0, "loss": 1.0})])
    writer.set_tags("k1", {"dab.node": "10.0.0.1", "dab.device": "cpu"})
    writer.log_reports("k1", [Report(20, 2, {"step": 20.0, "loss": 0.5})])
    writer.set_tags("k1", {"dab.node": "10.0.0.2"})
    writer.log_reports("k1", [Report(30, 3, {"step": 30.0, "loss": 0.25})])
    writer.log_artifacts("k1", source, "checkpoint")
    writer.terminate("k1", FINISHED)
    assert writer.close(timeout=60) and writer.errors == []

    assert counting.calls == ["create_run", "log_batch", "set_terminated"]  # artifact: no get_run
    assert counting.batches == [(2, 2, 6)]
    client = tracker.client
    run = client.get_run(_run_id(writer, "k1"))
    assert run.info.status == FINISHED
    assert run.data.params == {"lr": "0.01", "note": "n"}
    assert run.data.tags["dab.node"] == "10.0.0.2" and run.data.tags["dab.device"] == "cpu"
    assert _history(client, run.info.run_id, "step") == [(10, 10.0), (20, 20.0), (30, 30.0)]
    assert _history(client, run.info.run_id, "loss") == [(10, 1.0), (20, 0.5), (30, 0.25)]
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/state.pt"]
    path = client.download_artifacts(run.info.run_id, "checkpoint/state.pt", str(tmp_path / "down"))
    assert Path(path).read_text() == "weights"


def test_a_held_run_is_created_with_the_tags_held_meanwhile_and_written_in_one_batch(
    tracking_uri: str,
) -> None:
    """With `hold_s`, a new run's creation, reports and tags wait across rounds; its end writes
    them: `create_run` carrying every tag (the later value of one set twice, keys cleaned as
    `log_batch` would), one `log_batch` with the params and every report, `set_terminated`.
    Two opens before the creation make one run, with the later open's tags."""
    tracker = SweepTracker(tracking_uri, "sw")
    exp = tracker.ensure_experiment()
    counting = _CountingClient(tracker.client)
    writer = MlflowWriter(counting, exp, linger_s=0.01, hold_s=3600).start()  # type: ignore[arg-type]
    writer.open_run("k1", _spec("k1", note="n"), {"dab.attempts": "1"})
    writer.open_run("k1", _spec("k1", note="n"), {"dab.attempts": "2"})
    for step, node in [(10, "10.0.0.1"), (20, "10.0.0.2"), (30, None)]:
        time.sleep(0.05)  # separate rounds: the linger is 10 ms
        writer.log_reports("k1", [Report(step, step, {"step": float(step), "loss": 1.0 / step})])
        if node is not None:
            writer.set_tags("k1", {"dab.node": node, "dab.where?": "cpu"})
    time.sleep(0.3)
    assert writer.run_id("k1") is None and counting.calls == []  # all of it held
    writer.terminate("k1", FINISHED)
    assert writer.close(timeout=60) and writer.errors == []

    assert counting.calls == ["create_run", "log_batch", "set_terminated"]
    assert counting.batches == [(2, 0, 6)]  # the params and 3 reports x 2 metrics; no tags
    client = tracker.client
    runs = client.search_runs([exp], f"tags.`{TAG_TRIAL_KEY}` = 'k1'")
    assert [r.info.run_id for r in runs] == [_run_id(writer, "k1")]
    run = runs[0]
    assert run.info.status == FINISHED and run.data.params == {"lr": "0.01", "note": "n"}
    assert run.data.tags["dab.attempts"] == "2" and run.data.tags["dab.node"] == "10.0.0.2"
    assert run.data.tags["dab.where_"] == "cpu"
    assert _history(client, run.info.run_id, "step") == [(10, 10.0), (20, 20.0), (30, 30.0)]


def test_a_held_creation_is_written_when_it_is_due_with_nothing_else_queued(tracking_uri: str) -> None:
    """A new run's held creation goes out `hold_s` after it was held, without a flush or
    another op: the thread wakes for it."""
    tracker = SweepTracker(tracking_uri, "sw")
    exp = tracker.ensure_experiment()
    counting = _CountingClient(tracker.client)
    writer = MlflowWriter(counting, exp, linger_s=0.01, hold_s=0.2).start()  # type: ignore[arg-type]
    writer.open_run("k1", _spec("k1"))
    writer.log_reports("k1", [Report(10, 1, {"step": 10.0})])
    assert counting.wait_for_calls("create_run", "log_batch"), counting.calls
    run_id = _run_id(writer, "k1")
    assert _history(tracker.client, run_id, "step") == [(10, 10.0)]
    assert tracker.client.get_run(run_id).info.status == "RUNNING"
    assert writer.close(timeout=60) and writer.errors == []


def test_once_a_run_exists_its_reports_are_not_held(tracking_uri: str) -> None:
    """Only a creation is held: a run that exists (created here, or found at start-up) gets
    each round's reports and tags at the end of the round, however long `hold_s`."""
    tracker = SweepTracker(tracking_uri, "sw")
    exp = tracker.ensure_experiment()
    found = tracker.client.create_run(exp, tags={TAG_TRIAL_KEY: "k2"}).info.run_id
    counting = _CountingClient(tracker.client)
    writer = MlflowWriter(counting, exp, {"k2": found}, linger_s=0.01, hold_s=3600).start()  # type: ignore[arg-type]
    writer.open_run("k1", _spec("k1"))
    writer.log_reports("k1", [Report(10, 1, {"step": 10.0})])
    assert writer.flush(timeout=60)  # writes the held creation
    assert counting.calls == ["create_run", "log_batch"]
    run_id = _run_id(writer, "k1")
    writer.log_reports("k1", [Report(20, 2, {"step": 20.0})])
    writer.set_tags("k2", {"dab.node": "n2"})
    # One batch each, at the end of the round: no flush, and nothing waits for the hold.
    assert counting.wait_for_calls("create_run", "log_batch", "log_batch", "log_batch"), counting.calls
    assert _history(tracker.client, run_id, "step") == [(10, 10.0), (20, 20.0)]
    assert tracker.client.get_run(found).data.tags["dab.node"] == "n2"
    assert writer.close(timeout=60) and writer.errors == []


@pytest.mark.parametrize("hold_s", [0.0, 3600.0])
def test_flush_does_not_wait_for_the_linger(tracking_uri: str, hold_s: float) -> None:
    """An enqueue does not wake the lingering thread, a flush does: what was queued is written
    when flush returns, however long the linger and the hold."""
    tracker = SweepTracker(tracking_uri, "sw")
    exp = tracker.ensure_experiment()
    writer = MlflowWriter(tracker.client, exp, linger_s=3600, hold_s=hold_s).start()
    writer.open_run("k1", _spec("k1"))
    writer.log_reports("k1", [Report(10, 1, {"step": 10.0})])
    assert writer.flush(timeout=120)
    run_id = _run_id(writer, "k1")
    assert _history(tracker.client, run_id, "step") == [(10, 10.0)]
    writer.log_reports("k1", [Report(20, 2, {"step": 20.0})])
    writer.terminate("k1", FINISHED)
    assert writer.close(timeout=120) and writer.errors == []
    assert tracker.client.get_run(run_id).info.status == FINISHED
    assert _history(tracker.client, run_id, "step") == [(10, 10.0), (20, 20.0)]


def test_a_run_reopened_by_a_later_driver_logs_its_artifacts_through_mlflow(
    tracking_uri: str, tmp_path: Path
) -> None:
    """A run this writer did not create (found at start-up) has no known artifact location:
    its artifacts go through `MlflowClient.log_artifacts`, to the same place."""
    tracker = SweepTracker(tracking_uri, "sw")
    exp = tracker.ensure_experiment()
    run_id = tracker.client.create_run(exp, tags={TAG_TRIAL_KEY: "k1"}).info.run_id
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "state.pt").write_text("w2")

    @contextlib.contextmanager
    def source() -> Iterator[str]:
        yield str(checkpoint)

    writer = MlflowWriter(tracker.client, exp, {"k1": run_id}, linger_s=0.01).start()
    writer.open_run("k1", _spec("k1"))
    writer.log_artifacts("k1", source, "checkpoint")
    writer.terminate("k1", FINISHED)
    assert writer.close(timeout=60) and writer.errors == []
    assert [a.path for a in tracker.client.list_artifacts(run_id, "checkpoint")] == ["checkpoint/state.pt"]
    assert tracker.client.get_run(run_id).info.status == FINISHED
