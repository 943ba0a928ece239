"""The MLflow writer process alone, under the operations `bench/orchestration.py`'s trials send:
its CPU a trial and its MLflow requests a trial, with and without `hold_s`, in one run.

No Ray: the operations are replayed in real time at the pace the orchestration benchmark's
trials keep on these 2 cores (8 at a time, about 1.2 s each): open, three reports 0.3 s apart
with the placement tags after the first, the final checkpoint as an artifact, the end. The
writer's CPU is its child process's (``RUSAGE_CHILDREN`` once it is joined), start-up included;
the requests are counted on an in-process `MlflowWriter` fed the same operations.

    python bench/tracking_writer.py [--trials 300] [--hold 0 3]

Prints, for each hold, the CPU a trial over ABBA runs, and the ratio against the first hold.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

CONCURRENT = 8
TRIAL_S = 1.2
REPORT_EVERY_S = 0.3


def _schedule(keys: list[str]) -> list[tuple[float, int, str]]:
    """(time, event, key): 0 open, 1-3 a report (1 with the placement tags), 4 artifact and end."""
    events = []
    for i, key in enumerate(keys):
        start = (i // CONCURRENT) * TRIAL_S + (i % CONCURRENT) * TRIAL_S / CONCURRENT
        events.append((start, 0, key))
        events += [(start + n * REPORT_EVERY_S, n, key) for n in (1, 2, 3)]
        events.append((start + 3 * REPORT_EVERY_S + 0.1, 4, key))
    return sorted(events)


def _replay(writer: Any, specs: dict[str, Any], source: Any) -> None:
    from workers.tracking.writer import Report

    def values(step: int) -> dict[str, float]:
        return {"step": float(step), "train_loss": 1.0 / step, "test_accuracy": 0.3, "time_total_s": 1.2}

    placement = {"dab.node": "10.0.0.1", "dab.device": "cpu", "dab.nodes": "10.0.0.1"}
    t0 = time.perf_counter()
    for at, event, key in _schedule(list(specs)):
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if event == 0:
            writer.open_run(key, specs[key], {"dab.attempts": "1"})
        elif event < 4:
            writer.log_reports(key, [Report(10 * event, int(time.time() * 1000), values(10 * event))])
            if event == 1:
                writer.set_tags(key, placement)
        else:
            writer.log_artifacts(key, source, "checkpoint")
            writer.terminate(key, "FINISHED")


def _setup(work: Path, n: int) -> tuple[str, Any, str, str, dict[str, Any], Any]:
    """A fresh SQLite store with the sweep's experiment and parent run, the trials' run specs
    and a checkpoint source: (uri, tracker, experiment id, parent run id, specs, source)."""
    from orchestration import make_spec
    from ray.train import Checkpoint

    from workers.tracking import SweepTracker, configure_sqlite, trial_run_spec
    from workers.tracking.callback import artifact_source

    work.mkdir(parents=True)
    uri = f"sqlite:///{work}/mlflow.db"
    configure_sqlite(uri)
    tracker = SweepTracker(uri, work.name, name="writer-bench")
    exp = tracker.ensure_experiment()
    parent = tracker.ensure_parent({}, run_name=work.name)
    _, trials = make_spec("writer-bench", n)
    specs = {
        t.trial_key: trial_run_spec(t, sweep_id=work.name, parent_run_id=parent, family="sorting")
        for t in trials
    }
    checkpoint = work / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "model.pt").write_bytes(os.urandom(20_000))
    (checkpoint / "dab_history.json").write_text("[]")
    source = artifact_source(Checkpoint.from_directory(str(checkpoint)))  # as the callback sends it
    return uri, tracker, exp, parent, specs, source


def _check(tracker: Any, exp: str, n: int) -> None:
    runs = tracker.client.search_runs([exp], "tags.`dab.role` = 'trial'", max_results=10_000)
    assert len(runs) == n, len(runs)
    assert all(r.info.status == "FINISHED" and r.data.metrics.get("step") == 30 for r in runs)


def cpu_per_trial(work: Path, n: int, hold_s: float) -> float:
    """The writer process's CPU (ms) a trial, start-up included."""
    from workers.tracking.process import ProcessWriter
    from workers.tracking.writer import PARENT

    uri, tracker, exp, parent, specs, source = _setup(work, n)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    writer = ProcessWriter(uri, exp, {PARENT: parent}, linger_s=1.0, hold_s=hold_s).start()
    _replay(writer, specs, source)
    assert writer.close(timeout=300) and not writer.errors, writer.errors[:3]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    _check(tracker, exp, n)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return cpu / n * 1000


def requests_per_trial(work: Path, n: int, hold_s: float) -> dict[str, float]:
    """MLflow requests a trial, counted on an in-process writer fed the same operations."""
    from workers.tracking.writer import PARENT, MlflowWriter

    _, tracker, exp, parent, specs, source = _setup(work, n)
    calls: Counter[str] = Counter()
    client = tracker.client

    class Counting:
        def __getattr__(self, name: str) -> Any:
            attr = getattr(client, name)
            if not callable(attr):
                return attr

            def call(*args: Any, **kwargs: Any) -> Any:
                calls[name] += 1
                return attr(*args, **kwargs)

            return call

    writer = MlflowWriter(Counting(), exp, {PARENT: parent}, linger_s=1.0, hold_s=hold_s).start()  # type: ignore[arg-type]
    _replay(writer, specs, source)
    assert writer.close(timeout=300) and not writer.errors, writer.errors[:3]
    _check(tracker, exp, n)
    return {name: count / n for name, count in sorted(calls.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--hold", type=float, nargs="+", default=[0.0, 3.0], help="hold_s values to compare")
    parser.add_argument("--count-trials", type=int, default=40, help="trials for the request count")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    work = Path(tempfile.mkdtemp(prefix="dab-bench-writer-"))
    try:
        requests = {h: requests_per_trial(work / f"count-{h}", args.count_trials, h) for h in args.hold}
        cpu: dict[float, list[float]] = {h: [] for h in args.hold}
        order = [*args.hold, *reversed(args.hold)]  # ABBA
        for i, hold in enumerate(order):
            cpu[hold].append(cpu_per_trial(work / f"cpu-{i}", args.trials, hold))
            print(
                f"  hold_s={hold:g}: {cpu[hold][-1]:.1f} ms writer CPU a trial ({args.trials} trials)",
                flush=True,
            )
        base = statistics.fmean(cpu[args.hold[0]])
        print(
            f"\n| hold_s | writer CPU a trial (runs) | ratio | MLflow requests a trial ({args.count_trials} trials) |"
        )
        print("|---|---|---|---|")
        for hold in args.hold:
            mean = statistics.fmean(cpu[hold])
            runs = ", ".join(f"{c:.1f}" for c in cpu[hold])
            calls = ", ".join(f"{k} {v:.2f}" for k, v in requests[hold].items())
            print(f"| {hold:g} s | {mean:.1f} ms ({runs}) | {mean / base:.3f} | {calls} |")
        print("(CPU a trial includes the process's start-up, about 3 s a sweep: 10 ms a trial at 300)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
