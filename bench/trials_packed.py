"""Trials packed onto one device: k sorting trials training at once, in k processes, against one.

A sweep's trials are small (Signum-Dense is about 160,000 parameters); one alone leaves most of
a GPU idle, so Ray can place several on one device (``resources: {gpu: 0.5}`` packs two). This
measures what packing buys: for each k, k processes build the same Signum-Dense T=10 trial
(batch 1024, fresh batches on the device), warm up, wait at a barrier, then each times the same
number of steps. It prints each k's aggregate samples/s (all k trials together) and its ratio to
k = 1, and the slowest process's ms/step (what one trial of a packed sweep sees).

On the CPU the processes share the cores (``--threads`` each), which is the dry run of
bench/gpu_check.sh; the figures that matter are the GPU's.

    python bench/trials_packed.py [--device cuda] [--per-device 1 2 4] [--steps 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _trial(rank: int, a: dict[str, Any], barrier: Any, results: Any) -> None:
    import torch

    from dab_core.experiments.sorting import SortingConfig, SortingTask

    torch.set_num_threads(a["threads"])
    cfg = SortingConfig(
        experiment="sorting",
        model="signum-dense",
        seq_len=a["seq_len"],
        steps=10**6,
        seed=rank,
        train_size=0,
        test_size=16,
        batch_size=a["batch"],
        device=a["device"],
        compile=a["compile"],
    )
    task = SortingTask(cfg, torch.device(a["device"]))
    sync = torch.cuda.synchronize if a["device"] == "cuda" else (lambda: None)
    for s in range(a["warmup"]):
        task.train_step(s)
    sync()
    barrier.wait()
    start = time.perf_counter()
    for s in range(a["warmup"], a["warmup"] + a["steps"]):
        task.train_step(s)
    sync()
    results.put((rank, time.perf_counter() - start))


def measure(k: int, a: dict[str, Any]) -> dict[str, float]:
    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    barrier = ctx.Barrier(k)
    results = ctx.Queue()
    procs = [ctx.Process(target=_trial, args=(r, a, barrier, results)) for r in range(k)]
    for p in procs:
        p.start()
    seconds = [results.get(timeout=600)[1] for _ in procs]
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise SystemExit(f"a packed trial process exited with {p.exitcode}")
    samples = a["steps"] * a["batch"]
    return {
        "trials": k,
        "aggregate_samples_per_s": round(sum(samples / s for s in seconds)),
        "slowest_ms_per_step": round(max(seconds) / a["steps"] * 1e3, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda")
    p.add_argument("--per-device", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--seq-len", type=int, default=10)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--compile", default="off", choices=("off", "default", "reduce-overhead"))
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device")
    args = {k: getattr(a, k) for k in ("device", "seq_len", "batch", "steps", "warmup", "threads", "compile")}
    rows = [measure(k, args) for k in a.per_device]
    base = rows[0]["aggregate_samples_per_s"]
    for row in rows:
        row["aggregate_over_first"] = round(row["aggregate_samples_per_s"] / base, 2)
    if a.json:
        print(json.dumps(rows))
        return
    print(
        f"Signum-Dense T={a.seq_len}, batch {a.batch}, {a.device}, compile {a.compile}, {a.steps} steps each"
    )
    print("| trials on the device | aggregate samples/s | vs first row | slowest trial ms/step |")
    print("|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['trials']} | {row['aggregate_samples_per_s']:,} | {row['aggregate_over_first']:.2f}x "
            f"| {row['slowest_ms_per_step']:.2f} |"
        )


if __name__ == "__main__":
    main()
