"""`workers.tracking.callback`: what the Tune callback decides, with a recording writer.

No Ray is started and no MLflow store is touched: the writer and the status file are fakes
that record what the callback hands them (the real ones are tested beside this file and, with
Tune, in tests/workers/test_driver.py and test_faults.py).
"""

from __future__ import annotations

import pickle
from types import SimpleNamespace
from typing import Any

from ray.tune import Callback

from workers.tracking import (
    FAILED,
    KILLED,
    TAG_ROLE,
    TAG_TRIAL_KEY,
    RunSpec,
    TrackingCallback,
    result_metrics,
)
from workers.trainable import TRIAL_KEY


class _Writer:
    def __init__(self) -> None:
        self.ops: list[tuple[Any, ...]] = []

    def open_run(self, key: str, spec: RunSpec, tags: dict[str, str]) -> None:
        self.ops.append(("open", key, tags))

    def log_reports(self, key: str, reports: list[Any]) -> None:
        self.ops.append(("metrics", key, [r.step for r in reports]))

    def terminate(self, key: str, status: str, reason: str | None = None, after: Any = None) -> None:
        self.ops.append(("terminate", key, status))

    def run_id(self, key: str) -> str:
        return f"run-{key}"

    def set_tags(self, key: str, tags: dict[str, str]) -> None:
        self.ops.append(("tags", key, tags))


class _Status:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self._attempts = 0

    def attempts(self, key: str) -> int:
        return self._attempts

    def started(self, key: str, *, from_step: float, run_id: str | None = None) -> None:
        self._attempts += 1
        self.events.append(("started", key, from_step, run_id))

    def progress(self, key: str, *, step: float, pid: Any = None, run_id: str | None = None) -> None:
        self.events.append(("progress", key, step))

    def failed(self, key: str, *, error: str) -> None:
        self.events.append(("failed", key))

    def stopped(self, key: str, *, state: str, error: str) -> None:
        self.events.append(("stopped", key, state))


def _callback(last_steps: dict[str, float | None], token: str) -> tuple[TrackingCallback, _Writer, _Status]:
    writer, status = _Writer(), _Status()
    spec = RunSpec(run_name="k", tags={TAG_ROLE: "trial", TAG_TRIAL_KEY: "k"}, params={}, config={})
    callback = TrackingCallback(
        writer=writer,  # type: ignore[arg-type]
        status=status,  # type: ignore[arg-type]
        run_specs={"k": spec},
        last_steps=last_steps,
        token=token,
    )
    return callback, writer, status


def _trial(key: str = "k") -> Any:
    return SimpleNamespace(config={TRIAL_KEY: key}, checkpoint=None, error_file=None, status="RUNNING")


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


def test_reports_at_or_below_the_runs_last_step_are_dropped() -> None:
    """A restore rewinds to the last checkpoint Tune recorded: steps the run holds come again."""
    callback, writer, status = _callback({"k": 20.0}, token="t-drop")
    try:
        trial = _trial()
        callback.on_trial_start(0, [trial], trial)
        for step in (10, 20, 30, 30, 40):
            callback.on_trial_result(0, [trial], trial, {"step": float(step), "loss": 1.0})
        other = _trial("not-this-drivers")
        callback.on_trial_result(0, [other], other, {"step": 50.0})  # not one of its runs: ignored
        assert writer.ops == [
            ("open", "k", {"dab.attempts": "1"}),
            ("metrics", "k", [30]),
            ("metrics", "k", [40]),
        ]
        assert status.events[0] == ("started", "k", 0.0, "run-k")
    finally:
        callback.unregister()


def test_an_ended_run_is_not_written_again_and_stop_ends_only_open_runs() -> None:
    callback, writer, status = _callback({}, token="t-end")
    try:
        trial = _trial()
        callback.on_trial_start(0, [trial], trial)
        callback.on_trial_error(0, [trial], trial)
        callback.on_trial_result(0, [trial], trial, {"step": 10.0})
        assert writer.ops[1:] == [("terminate", "k", FAILED)]
        assert callback.stop(KILLED, "driver stopped") == []  # already ended FAILED
        assert ("failed", "k") in status.events
    finally:
        callback.unregister()

    callback, writer, status = _callback({}, token="t-stop")
    try:
        trial = _trial()
        callback.on_trial_start(0, [trial], trial)
        assert callback.stop(KILLED, "driver stopped") == ["k"]
        assert writer.ops[-1] == ("terminate", "k", KILLED)
        callback.on_trial_start(0, [trial], trial)  # stopped: opens nothing more
        assert [op for op in writer.ops if op[0] == "open"] == [("open", "k", {"dab.attempts": "1"})]
        assert status.events[-1] == ("stopped", "k", "killed")
    finally:
        callback.unregister()


def test_a_restored_tuner_gets_the_live_callback_back_by_its_token() -> None:
    callback, _, _ = _callback({}, token="t-pickle")
    try:
        assert pickle.loads(pickle.dumps(callback)) is callback
        # A Tune experiment pickled by the single-module workers.tracking of earlier versions.
        old = b"cworkers.tracking\n_restore_callback\n(Vt-pickle\ntR."
        assert pickle.loads(old) is callback
    finally:
        callback.unregister()
    gone = pickle.loads(pickle.dumps(callback))  # no live tracker: a callback that logs nothing
    assert type(gone) is Callback


def test_placement_is_tagged_at_each_attempt_and_on_every_move(tmp_path: Any) -> None:
    """The status file may hold a move the run never got (a driver killed right after it): the
    next driver tags the run at the attempt's first report even when nothing changed."""
    from workers._status import SweepStatus
    from workers.storage import open_location

    location = open_location(tmp_path / "sweep")
    where_b = {
        "dab_node": "10.0.0.2",
        "dab_gpu_ids": "1",
        "dab_cuda_visible_devices": "1",
        "dab_device": "cpu",
        "dab_device_note": "",
    }
    trial_def = SimpleNamespace(trial_key="k", index=0, cell_key="c", replicate=0, seed=1)
    before = SweepStatus(location, {"sweep_id": "s"})
    before.add_trials([trial_def], {})
    before.placed(
        "k",
        {"node": "10.0.0.1", "gpu_ids": "0", "cuda_visible_devices": "0", "device": "cpu", "device_note": ""},
    )
    before.placed("k", {k.removeprefix("dab_"): v for k, v in where_b.items()})
    before.write()  # ... and the driver dies before its writer tags the run

    status = SweepStatus(location, {"sweep_id": "s"})
    status.add_trials([trial_def], {})
    writer = _Writer()
    spec = RunSpec(run_name="k", tags={TAG_ROLE: "trial", TAG_TRIAL_KEY: "k"}, params={}, config={})
    callback = TrackingCallback(
        writer=writer, status=status, run_specs={"k": spec}, last_steps={}, token="t-place"
    )  # type: ignore[arg-type]
    try:
        trial = _trial()
        callback.on_trial_start(0, [trial], trial)
        callback.on_trial_result(0, [trial], trial, {"step": 10.0, **where_b})  # unchanged
        callback.on_trial_result(0, [trial], trial, {"step": 20.0, **where_b})
        callback.on_trial_result(0, [trial], trial, {"step": 30.0, **where_b, "dab_node": "10.0.0.3"})
        tags = [op[2] for op in writer.ops if op[0] == "tags"]
        assert [t["dab.nodes"] for t in tags] == ["10.0.0.1,10.0.0.2", "10.0.0.1,10.0.0.2,10.0.0.3"]
        assert tags[0]["dab.cuda_visible_devices"] == tags[0]["dab.gpu_ids"] == "1"
        assert "dab.device_note" not in tags[0]  # empty: not set
        assert status.data["trials"]["k"]["nodes"] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    finally:
        callback.unregister()


def test_a_local_checkpoint_reaches_the_writer_process_as_a_path_without_ray(tmp_path: Any) -> None:
    """The writer process unpickles the artifact source: a local checkpoint's must not import
    Ray there (about a second of its CPU a sweep); an S3 one is the checkpoint, to download."""
    import subprocess
    import sys

    from pyarrow.fs import S3FileSystem
    from ray.train import Checkpoint

    from workers.tracking.callback import _checkpoint_directory, artifact_source
    from workers.tracking.writer import local_directory

    (tmp_path / "member-1").mkdir()
    source = artifact_source(Checkpoint.from_directory(str(tmp_path)), 1)
    assert source.func is local_directory  # type: ignore[attr-defined]
    with source() as directory:
        assert directory == f"{tmp_path}/member-1"
    child = (
        "import pickle, sys\n"
        "source = pickle.loads(sys.stdin.buffer.read())\n"
        "with source() as d:\n"
        "    print(d, 'ray' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", child], input=pickle.dumps(source), capture_output=True, check=True
    )
    assert out.stdout.decode().split() == [f"{tmp_path}/member-1", "False"]
    remote = Checkpoint("bucket/ckpt", filesystem=S3FileSystem(endpoint_override="127.0.0.1:1"))
    assert artifact_source(remote).func is _checkpoint_directory  # type: ignore[attr-defined]
