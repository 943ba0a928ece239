"""Training-step cost of a cell's R seeds trained as one stacked model, against R separate runs.

Compares, on Signum-Dense (the authors' demo: T -> 128 -> 128 -> 256 -> DAB bridge -> T*T,
approximator 256 -> 128 -> 128 -> 256), estimator ``dab``, at R = 1, 5, 10 seeds:

* separate: R `SortingTask`s stepped one after the other as `fit_group` steps them (each
  member's ``task.train_step(step)`` through the timed steps, then the next member's);
* stacked: the same R members as one `dab_core.stacked.StackedTasks` (``vmap`` over
  ``functional_call`` of the stacked parameters, one Adam), as `fit_stacked` steps them.

Two sizes: batch 1024 (the paper's), where the arithmetic dominates, and batch 128, where the
per-step launch and Python overhead does (what stacking saves). Both ways draw each member's
batches from its own task (fresh sequences, ``train_size`` 0), so the data cost is the same;
evaluation is not timed. All cases are measured in one run in alternating rounds (the order of
the two ways flips every round), after a warm-up, so drifts of a shared machine hit both alike.

Prints, per size and R, ms per member-step (one optimiser step of one seed) of each way (the
median over rounds), and the ratio separate/stacked (> 1: stacking is faster) with its min and
max over rounds.

    python bench/stacked_seeds.py [--device cpu|cuda] [--threads 2] [--rounds 5] [--steps 10]
                                  [--seeds 1 5 10] [--seq-len 10] [--batches 1024 128]

Measured on this project's 2-core CPU machine (2 threads, defaults, 25 s; ratio median [min,
max] over 5 rounds): batch 1024 is compute-bound and stacking does not pay (R=1 0.78, R=5
0.91, R=10 0.95: the batched GEMMs are a little slower than R plain ones, and the traceable DAB
form runs one more approximator forward, about 6% of a step here); at batch 128 it does (R=1
0.67, R=5 1.50, R=10 1.80). Not measured on a GPU yet (``--device cuda``), where the launch
overhead stacking removes is larger.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from dab_core.experiments import parse_config
from dab_core.stacked import StackedTasks
from dab_core.training import Task, build_task


def tasks_of(size: dict[str, Any], seeds: int, device: str, threads: int) -> list[Task]:
    base = {
        "experiment": "sorting",
        "model": "signum-dense",
        "estimator": "dab",
        "steps": 10**6,
        "train_size": 0,
        "test_size": 16,
        "device": device,
        "num_threads": threads,
        # eager both ways: the stacked step is not compiled, and compile: auto would compile
        # the separate ones (these trials are long); compiled against eager is dab_overhead.py's
        "compile": "off",
        **size,
    }
    return [build_task(parse_config({**base, "seed": s})) for s in range(seeds)]


class Case:
    """One (size, R): both ways built once, each stepping on from where it stopped."""

    def __init__(self, size: dict[str, Any], seeds: int, device: str, threads: int) -> None:
        self.seeds = seeds
        self.separate = tasks_of(size, seeds, device, threads)
        self.stacked = StackedTasks(tasks_of(size, seeds, device, threads))
        self.step = {"separate": 0, "stacked": 0}

    def run(self, way: str, steps: int) -> None:
        start = self.step[way]
        if way == "stacked":
            for s in range(start, start + steps):
                self.stacked.train_step(s)
        else:  # fit_group's order: each member through the steps, then the next member
            for task in self.separate:
                for s in range(start, start + steps):
                    task.train_step(s)
        self.step[way] = start + steps


def timed(fn: Callable[[], None], sync: Callable[[], None]) -> float:
    sync()
    began = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - began


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 5, 10], help="the R to measure")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10, help="timed steps per way, case and round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--seq-len", type=int, default=10)
    p.add_argument("--batches", type=int, nargs="+", default=[1024, 128], help="the batch sizes to measure")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    torch.set_num_threads(a.threads)
    sizes = {f"T={a.seq_len} batch {b}": {"seq_len": a.seq_len, "batch_size": b} for b in a.batches}
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)

    cases = {(name, r): Case(size, r, a.device, a.threads) for name, size in sizes.items() for r in a.seeds}
    for case in cases.values():
        for way in ("separate", "stacked"):
            case.run(way, a.warmup)
    times: dict[tuple[str, int], dict[str, list[float]]] = {k: {"separate": [], "stacked": []} for k in cases}
    for rnd in range(a.rounds):
        ways = ("separate", "stacked") if rnd % 2 == 0 else ("stacked", "separate")
        for key, case in cases.items():
            for way in ways:
                seconds = timed(lambda case=case, way=way: case.run(way, a.steps), sync)
                times[key][way].append(seconds / (a.steps * case.seeds) * 1e3)  # ms per member-step

    rows = []
    for (name, r), t in times.items():
        ratios = [sep / st for sep, st in zip(t["separate"], t["stacked"], strict=True)]
        rows.append(
            {
                "size": name,
                "seeds": r,
                "separate_ms": round(statistics.median(t["separate"]), 3),
                "stacked_ms": round(statistics.median(t["stacked"]), 3),
                "ratio": round(statistics.median(ratios), 2),
                "ratio_min": round(min(ratios), 2),
                "ratio_max": round(max(ratios), 2),
            }
        )
    if a.json:
        print(json.dumps({"device": a.device, "threads": a.threads, "rounds": a.rounds, "rows": rows}))
        return
    where = torch.cuda.get_device_name() if a.device == "cuda" else f"cpu, {a.threads} threads"
    print(f"Signum-Dense (dab), {where}; {a.rounds} rounds x {a.steps} timed steps; ms per member-step")
    print(f"  {'size':<16} {'R':>3} {'separate':>9} {'stacked':>9} {'sep/stacked':>12} {'[min, max]':>13}")
    for row in rows:
        print(
            f"  {row['size']:<16} {row['seeds']:>3} {row['separate_ms']:>9.3f} {row['stacked_ms']:>9.3f} "
            f"{row['ratio']:>12.2f}   [{row['ratio_min']:.2f}, {row['ratio_max']:.2f}]"
        )


if __name__ == "__main__":
    main()
