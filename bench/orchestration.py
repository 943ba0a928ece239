"""Cost of our driver's tracking: N trivial trials through `workers.driver.run_sweep` with MLflow
on, against bare `Tuner.fit` of the same trials without any logging, in one run.

Both sides run the same trials (sorting, Signum-Dense with 16-unit layers, T=3, 30 steps, a
report and a checkpoint every 10 steps: three reports per trial), the same trainable
(`workers.trainable.make_trainable`), the same resources (0.25 CPU a trial), the same
``TuneConfig(reuse_actors=True)`` and ``CheckpointConfig(num_to_keep=2)``, on the same local Ray
(started once, num_cpus=2). Bare Tune has no callbacks and Tune's default JSON/CSV/TensorBoard
loggers off. Ours is the whole driver path after ``ray.init``: the MLflow experiment and parent
run, a child run per trial with tags and params, every metric with its step, the final
checkpoint as an artifact, status.json, runs ended FINISHED, and the checks that make a
resubmission skip finished trials.

The MLflow store is SQLite (WAL) with its schema created before timing (creating it costs about
4 s once per store, and a service's store exists long before a sweep). The measurements
alternate bare / ours / ours / bare (ABBA) so that a drift in the machine's load, which two
other people share here, falls on both sides; the load average is printed with each.

    python bench/orchestration.py [--trials 50 200 1000] [--repeats 1] [--with-ray-mlflow]

One row of the table per trial count (each its own ABBA block): bare and ours wall time (mean
and each run), the ratio, the driver process's CPU seconds on both sides, and the mean load
average over the row's runs.

``--with-ray-mlflow`` also times Ray's own ``MLflowLoggerCallback`` on bare Tune (the anchor).
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TRIAL_PARAMS = {
    "model": "signum-dense",
    "seq_len": 3,
    "steps": 30,
    "eval_every": 10,
    "batch_size": 64,
    "train_size": 0,
    "test_size": 256,
    "dense_hidden": [16, 16],
    "approximator_hidden": [16],
    "num_threads": 1,
}


def make_spec(name: str, n: int) -> tuple[Any, list[Any]]:
    from workers.spec import expand, parse_spec

    spec = parse_spec(
        {
            "name": name,
            "experiment": "sorting",
            "params": TRIAL_PARAMS,
            "replicates": n,
            "resources": {"cpu": 0.25},
            "limits": {"max_failures": 0},
        }
    )
    return spec, expand(spec)


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def driver_cpu() -> float:
    """CPU seconds this (driver) process has used: Tune's loop and our callback (and the
    MLflow writer thread under ``DAB_MLFLOW_WRITER=thread``; by default it is a process).

    The trials' own CPU is spent in Ray's worker processes and is the same on both sides, so
    this is the part of the cost that logging can add, and it does not depend on how loaded
    the shared machine is.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def writer_cpu() -> float:
    """CPU seconds of this process's reaped children: on our side, the MLflow writer process
    (`workers.tracking.process`, joined when the sweep ends); Ray's own processes are not
    reaped before `ray.shutdown`, so they do not count here."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_bare(trials: list[Any], root: Path, callbacks: list[Any] | None = None) -> float:
    from ray import tune

    from workers.trainable import TRIAL_KEY, make_trainable, trial_dirname, trial_name

    keys = [t.trial_key for t in trials]
    trainable = make_trainable({t.trial_key: t.config for t in trials}, {"cpu": 0.25}, run_keys=keys)
    tuner = tune.Tuner(
        trainable,
        param_space={TRIAL_KEY: tune.grid_search(keys)},
        tune_config=tune.TuneConfig(
            reuse_actors=True, trial_name_creator=trial_name, trial_dirname_creator=trial_dirname
        ),
        run_config=tune.RunConfig(
            name="bare",
            storage_path=str(root),
            callbacks=callbacks or [],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=0,
        ),
    )
    t0 = time.perf_counter()
    results = tuner.fit()
    seconds = time.perf_counter() - t0
    assert not results.errors, results.errors
    assert all((results[i].metrics or {}).get("step") == 30 for i in range(len(results))), "unfinished"
    return seconds


def time_ours(spec: Any, trials: list[Any], sweep_dir: Path, uri: str) -> float:
    from mlflow import MlflowClient

    from workers.driver import run_sweep
    from workers.tracking import find_experiment

    t0 = time.perf_counter()
    outcome = run_sweep(spec, trials, sweep_dir=sweep_dir, tracking_uri=uri, sweep_id=sweep_dir.name)
    seconds = time.perf_counter() - t0
    assert outcome.exit_code == 0 and len(outcome.finished) == len(trials), outcome
    client = MlflowClient(uri)
    exp = find_experiment(client, sweep_dir.name)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], "tags.`dab.role` = 'trial'", max_results=10_000)
    assert len(runs) == len(trials) and all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.metrics.get("step") == 30 for r in runs)
    return seconds


def _measure(n: int, repeats: int, work: Path, uri: str, with_ray_mlflow: bool) -> dict[str, Any]:
    """One row of the table: `n` trials, ABBA blocks of bare and ours (and Ray's callback)."""
    wall: dict[str, list[float]] = {"bare": [], "ours": []}
    cpu: dict[str, list[float]] = {"bare": [], "ours": []}
    child: dict[str, list[float]] = {"bare": [], "ours": []}
    loads: list[float] = []
    order = ["bare", "ours", "ours", "bare"] * repeats
    for i, side in enumerate(order):
        before, cpu0, child0 = load(), driver_cpu(), writer_cpu()
        loads.append(os.getloadavg()[0])
        if side == "bare":
            _, trials = make_spec(f"bare{n}-{i}", n)
            seconds = time_bare(trials, work / f"bare{n}-{i}")
        else:
            spec, trials = make_spec(f"ours{n}-{i}", n)
            seconds = time_ours(spec, trials, work / f"sweep{n}-{i}", uri)
        wall[side].append(seconds)
        cpu[side].append(driver_cpu() - cpu0)
        child[side].append(writer_cpu() - child0)
        loads.append(os.getloadavg()[0])
        print(
            f"  {side:4s} {n} trials: {seconds:6.1f} s wall, {cpu[side][-1]:5.1f} s driver CPU,"
            f" {child[side][-1]:5.1f} s writer process CPU"
            f"   ({before} -> {load()})",
            flush=True,
        )
    row: dict[str, Any] = {
        "trials": n,
        "wall": wall,
        "cpu": cpu,
        "child": child,
        "load": statistics.fmean(loads),
    }
    if with_ray_mlflow:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        _, trials = make_spec(f"raymlflow{n}", n)
        before, cpu0 = load(), driver_cpu()
        seconds = time_bare(
            trials,
            work / f"raymlflow{n}",
            callbacks=[
                MLflowLoggerCallback(tracking_uri=uri, experiment_name=f"ray-mlflow-{n}", save_artifact=False)
            ],
        )
        row["ray_mlflow"] = (seconds, driver_cpu() - cpu0)
        print(
            f"  ray-mlflow {n} trials: {seconds:6.1f} s wall, {row['ray_mlflow'][1]:5.1f} s driver"
            f" CPU   ({before} -> {load()})",
            flush=True,
        )
    return row


def _print_table(rows: list[dict[str, Any]]) -> None:
    print()
    print(
        "| trials | bare wall s (runs) | ours wall s (runs) | ratio ours/bare | driver CPU s bare | "
        "driver CPU s ours | writer process CPU s ours | load avg |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        wall, cpu = row["wall"], row["cpu"]
        b, o = statistics.fmean(wall["bare"]), statistics.fmean(wall["ours"])
        cb, co = statistics.fmean(cpu["bare"]), statistics.fmean(cpu["ours"])
        runs = {side: ", ".join(f"{x:.1f}" for x in wall[side]) for side in wall}
        print(
            f"| {row['trials']} | {b:.1f} ({runs['bare']}) | {o:.1f} ({runs['ours']}) | **{o / b:.3f}** | "
            f"{cb:.1f} | {co:.1f} | {statistics.fmean(row['child']['ours']):.1f} | {row['load']:.1f} |"
        )
    for row in rows:
        if "ray_mlflow" in row:
            seconds, c = row["ray_mlflow"]
            b = statistics.fmean(row["wall"]["bare"])
            print(
                f"Ray MLflowLoggerCallback, {row['trials']} trials: {seconds:.1f} s, ratio {seconds / b:.3f};"
                f" driver CPU {c:.1f} s"
            )
    print(f"target: ratio <= 1.10; machine load at the end: {load()} ({os.cpu_count()} cores)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--trials",
        type=int,
        nargs="+",
        default=[50],
        help="one row of the table per count: --trials 50 200 1000",
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="ABBA blocks: each side runs 2 x repeats times per row"
    )
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--with-ray-mlflow", action="store_true", help="also time Ray's MLflowLoggerCallback")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    # Tune's own loggers are off on both sides: ResultGrid then warns that it finds no result.json.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)

    import ray

    from workers.tracking import configure_sqlite

    work = Path(tempfile.mkdtemp(prefix="dab-bench-orch-"))
    try:
        uri = f"sqlite:///{work}/mlflow.db"
        t0 = time.perf_counter()
        configure_sqlite(uri)
        from mlflow import MlflowClient

        MlflowClient(uri).search_experiments()  # creates the schema
        print(
            f"MLflow SQLite schema created in {time.perf_counter() - t0:.1f} s (once per store; not timed below)"
        )

        t0 = time.perf_counter()
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level=logging.WARNING)
        print(f"local Ray started in {time.perf_counter() - t0:.1f} s (num_cpus={args.num_cpus})")

        # Warm-up (not timed): worker processes, imports, page cache.
        _, warm = make_spec("warmup", 8)
        time_bare(warm, work / "warmup")

        rows = []
        for n in args.trials:
            rows.append(_measure(n, args.repeats, work, uri, args.with_ray_mlflow))
            _print_table(rows)  # so far: a long run's first rows survive an interruption
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
