"""Run a sweep's trials on this machine without Ray, and print its results table.

    python -m workers.local SPEC [--jobs N] [--state-dir DIR]

This is the direct path (`make run` uses it until the service routes the quickstart through
REST). Trials run in ``--jobs`` worker processes, each with its share of the cores. Every
finished trial's metrics and its latest checkpoint are kept under
``<state dir>/local/<sweep name>/<trial_key>/``, written atomically, so a run that is killed
and started again skips finished trials and resumes unfinished ones from their checkpoints.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from workers.aggregate import aggregate, markdown_table
from workers.spec import SpecError, SweepSpec, Trial, expand, load_spec, paper_values

RESULT_FILE = "result.json"
CHECKPOINT_DIR = "checkpoint"


def _write_json_atomic(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _keep_checkpoint(src: str, trial_dir: Path) -> None:
    """Replace the trial's kept checkpoint with `src`, never leaving it half-written."""
    staging = Path(tempfile.mkdtemp(dir=trial_dir, prefix=".ckpt-"))
    shutil.copytree(src, staging, dirs_exist_ok=True)
    final = trial_dir / CHECKPOINT_DIR
    old = trial_dir / ".ckpt-old"
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def _run_one(config: dict[str, Any], trial_dir: str, threads: int) -> dict[str, float]:
    """Worker-process body: train one trial, keeping checkpoints and the final metrics."""
    import torch

    from dab_core import run_trial

    if config.get("num_threads") is None:
        torch.set_num_threads(threads)
    tdir = Path(trial_dir)
    ckpt = tdir / CHECKPOINT_DIR

    def report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        if checkpoint_dir is not None:
            _keep_checkpoint(checkpoint_dir, tdir)

    final = run_trial(config, report=report, checkpoint_dir=str(ckpt) if ckpt.is_dir() else None)
    _write_json_atomic(tdir / RESULT_FILE, {"config": config, "metrics": final})
    return final


def run_sweep(
    spec: SweepSpec, state_dir: Path, jobs: int, out: Any = sys.stdout
) -> dict[str, dict[str, float]]:
    """Run every trial of `spec` not finished yet; returns the final metrics per trial key."""
    trials = expand(spec)
    root = state_dir / "local" / spec.name
    results: dict[str, dict[str, float]] = {}
    todo: list[Trial] = []
    for t in trials:
        tdir = root / t.trial_key
        tdir.mkdir(parents=True, exist_ok=True)
        done = tdir / RESULT_FILE
        if done.is_file():
            results[t.trial_key] = json.loads(done.read_text())["metrics"]
        else:
            todo.append(t)
    print(
        f"{spec.name}: {len(trials)} trials, {len(results)} already finished, running {len(todo)} "
        f"with {jobs} at a time",
        file=out,
        flush=True,
    )
    threads = max(1, (os.cpu_count() or 1) // jobs)
    start = time.perf_counter()

    def finished(i: int, t: Trial, metrics: dict[str, float]) -> None:
        results[t.trial_key] = metrics
        value = metrics.get(spec.metric or "", float("nan"))
        elapsed = time.perf_counter() - start
        print(
            f"  [{i}/{len(todo)}] {t.cell_key} seed={t.seed}: {spec.metric}={value:.4f} ({elapsed:.0f} s)",
            file=out,
            flush=True,
        )

    if jobs == 1:  # in this process: no worker start-up to pay
        for i, t in enumerate(todo, 1):
            finished(i, t, _run_one(t.config, str(root / t.trial_key), threads))
        return results
    ctx = mp.get_context("spawn")  # a clean torch per worker, no forked thread pools
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = {pool.submit(_run_one, t.config, str(root / t.trial_key), threads): t for t in todo}
        for i, fut in enumerate(cf.as_completed(futures), 1):
            finished(i, futures[fut], fut.result())
    return results


def results_table(spec: SweepSpec, results: dict[str, dict[str, float]]) -> str:
    trials = expand(spec)
    metric = spec.metric or "test_all_or_none"
    paper: dict[str, float] = {}
    for t in trials:
        for pv in paper_values(spec, t.config):
            if (pv.metric or metric) == metric:
                paper.setdefault(t.cell_key, pv.value * 100 if _is_fraction(metric) else pv.value)
    rows = aggregate(
        ((t.cell_key, t.cell, t.seed, results.get(t.trial_key, {})) for t in trials), metric, paper
    )
    return markdown_table(rows, percent=_is_fraction(metric))


def _is_fraction(metric: str) -> bool:
    return any(word in metric for word in ("accuracy", "all_or_none", "per_position"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m workers.local", description=__doc__.split("\n\n")[0])
    p.add_argument("spec", type=Path)
    p.add_argument(
        "--jobs", type=int, default=None, help="trials at a time (default: the spec's max_concurrent, else 1)"
    )
    p.add_argument("--state-dir", type=Path, default=Path(os.environ.get("DAB_STATE_DIR", ".dab")))
    a = p.parse_args(argv)
    try:
        spec = load_spec(a.spec)
        if not isinstance(spec, SweepSpec):
            print(f"error: {a.spec} is a suite; run its member specs one at a time", file=sys.stderr)
            return 2
        expand(spec)  # every trial config is validated before anything runs
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    jobs = a.jobs or spec.limits.max_concurrent or 1
    results = run_sweep(spec, a.state_dir, jobs)
    print()
    print(results_table(spec, results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
