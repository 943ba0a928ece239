"""`workers.tracking.process`: the MLflow writer in a child process.

Real MLflow (SQLite stores under tmp_path), a real spawned child; Ray only for a real
`Checkpoint` travelling to the child as the callback sends it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from mlflow import MlflowClient

from workers.tracking import (
    FINISHED,
    PARENT,
    TAG_ROLE,
    TAG_SWEEP_ID,
    TAG_TRIAL_KEY,
    Report,
    RunSpec,
    SweepTracker,
)
from workers.tracking.callback import artifact_source
from workers.tracking.process import ProcessWriter


def _spec(key: str) -> RunSpec:
    return RunSpec(
        run_name=f"trial {key}",
        tags={TAG_SWEEP_ID: "sw", TAG_ROLE: "trial", TAG_TRIAL_KEY: key},
        params={"lr": "0.01"},
        config={"lr": 0.01},
    )


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its new parent) counts as gone.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def _driver(tmp_path: Path, source: str) -> subprocess.Popen[str]:
    """A driver process running `source` (dedented), its stdout piped."""
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)


def test_the_child_writes_runs_in_order_and_runs_after_in_the_driver_once_the_run_ended(
    tracking_uri: str, tmp_path: Path
) -> None:
    from ray.train import Checkpoint

    tracker = SweepTracker(tracking_uri, "sw")
    exp = tracker.ensure_experiment()
    parent = tracker.ensure_parent({}, run_name="sw")
    client = tracker.client
    writer = ProcessWriter(tracking_uri, exp, {PARENT: parent}, linger_s=0.05, hold_s=3600).start()
    assert writer.run_id(PARENT) == parent
    assert writer.flush(timeout=120)  # the child is up and reading
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "state.pt").write_text("weights")
    seen: list[str] = []

    def after() -> None:  # runs here, in the driver, once the run is FINISHED
        seen.append(client.get_run(writer.run_id("k1") or "").info.status)

    writer.open_run("k1", _spec("k1"), {"dab.attempts": "1"})
    reports = [Report(s, 1_700_000_000_000 + s, {"step": float(s), "loss": 1.0 / s}) for s in range(1, 151)]
    writer.log_reports("k1", reports[:75])
    writer.log_reports("k1", reports[75:])
    writer.set_tags("k1", {"dab.node": "n1"})
    time.sleep(0.5)
    assert writer.run_id("k1") is None  # the child holds the run's creation (hold_s)
    # What the callback sends for a real Ray Checkpoint, pickled to the child.
    source = artifact_source(Checkpoint.from_directory(str(ckpt)))
    writer.log_artifacts("k1", source, "checkpoint")
    writer.terminate("k1", FINISHED, after=after)
    writer.set_tags(PARENT, {"dab.note": "parent"})
    assert writer.flush(timeout=120)
    assert seen == [FINISHED]  # flush returns after what it waited for, `after` included
    run_id = writer.run_id("k1")
    assert run_id is not None
    assert writer.close(timeout=120) and writer.errors == []
    assert writer._process.exitcode == 0  # a clean exit after its acknowledgement

    run = client.get_run(run_id)
    assert run.info.status == FINISHED and run.data.params == {"lr": "0.01"}
    assert run.data.tags["dab.node"] == "n1" and run.data.tags["dab.attempts"] == "1"
    assert _history(client, run_id, "step") == [(s, float(s)) for s in range(1, 151)]
    assert [a.path for a in client.list_artifacts(run_id, "checkpoint")] == ["checkpoint/state.pt"]
    assert client.get_run(parent).data.tags["dab.note"] == "parent"
    assert not writer._process.is_alive()


def test_failed_writes_and_unsendable_values_are_errors_and_the_writer_carries_on(tracking_uri: str) -> None:
    tracker = SweepTracker(tracking_uri, "sw")
    exp = tracker.ensure_experiment()
    writer = ProcessWriter(tracking_uri, exp, linger_s=0.01).start()
    ran: list[str] = []
    writer.terminate("never-opened", FINISHED, after=lambda: ran.append("never-opened"))  # no run
    writer.log_artifacts("k1", lambda: None, "x")  # type: ignore[arg-type,return-value]  # a lambda does not pickle
    writer.open_run("k1", _spec("k1"))
    writer.terminate("k1", FINISHED, after=lambda: ran.append("k1"))
    assert writer.close(timeout=120)
    assert len(writer.errors) == 2, writer.errors
    assert any("never-opened" in e for e in writer.errors)
    assert any("could not be sent" in e and "'k1'" in e for e in writer.errors)
    assert ran == []  # both keys had a failed write: their `after` never runs
    assert writer.failed_keys == {"never-opened", "k1"}
    assert tracker.client.get_run(writer.run_id("k1") or "").info.status == FINISHED


def test_the_child_ignores_sigterm_and_a_child_killed_is_an_error_not_a_hang(tracking_uri: str) -> None:
    tracker = SweepTracker(tracking_uri, "sw")
    exp = tracker.ensure_experiment()
    writer = ProcessWriter(tracking_uri, exp, linger_s=0.01).start()
    pid = writer._process.pid
    assert pid is not None
    writer.open_run("k1", _spec("k1"))
    assert writer.flush(timeout=120)
    # A Ray job stop or a terminal's Ctrl-C reaches the whole group: the child keeps going.
    os.kill(pid, signal.SIGTERM)
    os.kill(pid, signal.SIGINT)
    writer.log_reports("k1", [Report(10, 1, {"step": 10.0})])
    assert writer.flush(timeout=120)
    run_id = writer.run_id("k1") or ""
    assert _history(tracker.client, run_id, "step") == [(10, 10.0)]

    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while not writer.errors and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(writer.errors) == 1 and "writer process ended" in writer.errors[0]
    # Told at once, not after the timeouts: the writer knows the child is gone, so a flush
    # is refused before it waits, and no flush is left waiting on an answer.
    assert writer._gone.is_set()
    assert writer.flush(timeout=None) is False
    assert writer._flushes == {}
    assert writer.close(timeout=None) is False


def test_the_child_exits_when_the_driver_is_sigkilled(tracking_uri: str, tmp_path: Path) -> None:
    tracker = SweepTracker(tracking_uri, "sw")
    exp = tracker.ensure_experiment()
    driver = _driver(
        tmp_path,
        f"""
        import sys, time
        from workers.tracking.process import ProcessWriter
        writer = ProcessWriter({tracking_uri!r}, {exp!r}).start()
        print(writer._process.pid, flush=True)
        time.sleep(600)
        """,
    )
    try:
        assert driver.stdout is not None
        child = int(driver.stdout.readline())
        assert _alive(child)
        driver.kill()
        driver.wait(30)
        deadline = time.monotonic() + 30
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the writer outlived its driver"
    finally:
        driver.kill()


def test_a_driver_exiting_without_close_writes_what_is_queued_and_does_not_hang(
    tracking_uri: str, tmp_path: Path
) -> None:
    """multiprocessing joins its children at exit and the child ignores SIGTERM, so a driver
    that never called `close` (an error before it) once waited for it forever. Now the writer
    closes itself at exit: what was queued, held included, is written, and both processes end."""
    tracker = SweepTracker(tracking_uri, "sw")
    exp = tracker.ensure_experiment()
    driver = _driver(
        tmp_path,
        f"""
        from workers.tracking.process import ProcessWriter
        from workers.tracking.runs import RunSpec
        from workers.tracking.writer import Report
        if __name__ == "__main__":  # the spawned child imports this file too
            spec = RunSpec("trial k1", {{"dab.trial_key": "k1", "dab.sweep_id": "sw"}}, {{"lr": "0.1"}}, {{}})
            writer = ProcessWriter({tracking_uri!r}, {exp!r}, linger_s=0.01, hold_s=3600).start()
            assert writer.flush(timeout=120)  # the child is up: it ignores SIGTERM now
            writer.open_run("k1", spec)
            writer.log_reports("k1", [Report(10, 1, {{"step": 10.0}})])
            print(writer._process.pid, flush=True)
            raise SystemExit(3)
        """,
    )
    try:
        assert driver.stdout is not None
        child = int(driver.stdout.readline())
        assert driver.wait(120) == 3
        assert not _alive(child)
    finally:
        driver.kill()
    runs = tracker.client.search_runs([exp], "tags.`dab.trial_key` = 'k1'")
    assert len(runs) == 1 and runs[0].data.params == {"lr": "0.1"}
    assert _history(tracker.client, runs[0].info.run_id, "step") == [(10, 10.0)]
