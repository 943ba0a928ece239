"""Per-step cost of each gradient estimator, as ratios to ``dab``, measured in one run.

One step is the bridge alone: forward on a ``(batch, width)`` input that requires grad, then
backward with a fixed upstream gradient (for ``dab`` the DAB loss is added, as in training).
No optimiser and no surrounding model, so the ratios are an upper bound on what an estimator
adds to a whole training step. ``dab`` uses the default dense approximator for ``in_shape``
(width -> 128 -> 128 -> width, the authors' demo at width 256). Each row is the median of
``--repeats`` timed steps after ``--warmup`` untimed ones; the rows interleave (one step of
each estimator per round) so that drift of a shared machine spreads over all of them.

    python bench/estimators_cost.py [--batch 1024] [--width 256] [--repeats 30] [--threads 1]

Prints a Markdown table per hard function (signum; bernoulli, the only one ``gumbel``
serves). Asserts nothing: benchmarks print, tests do not time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from dab_core import DAB

ROWS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "signum": [
        ("dab", {}),
        ("ste", {}),
        ("elu", {}),
        ("tanh", {}),
        ("identity", {}),
        ("perturbed", {}),
        ("perturbed", {"antithetic": False}),
        ("perturbed", {"samples": 1}),
        ("blackbox", {}),
    ],
    "bernoulli": [
        ("dab", {}),
        ("ste", {}),
        ("perturbed", {}),
        ("blackbox", {}),
        ("gumbel", {}),
    ],
}


def step(bridge: DAB, x: torch.Tensor, g: torch.Tensor) -> float:
    start = time.perf_counter()
    xr = x.detach().requires_grad_(True)
    out = bridge(xr)
    loss = (out * g).sum()
    if bridge.dab_loss is not None:
        loss = loss + bridge.dab_loss
    loss.backward()
    return time.perf_counter() - start


def measure(hard: str, batch: int, width: int, repeats: int, warmup: int) -> list[tuple[str, str, float]]:
    torch.manual_seed(0)
    x = torch.randn(batch, width)
    g = torch.randn(batch, width) / batch  # the size of a batch-mean loss's gradient
    bridges = [
        (name, params, DAB(hard, estimator=name, estimator_params=params, in_shape=width))
        for name, params in ROWS[hard]
    ]
    times: list[list[float]] = [[] for _ in bridges]
    for r in range(warmup + repeats):
        for i, (_, _, bridge) in enumerate(bridges):
            t = step(bridge, x, g)
            if r >= warmup:
                times[i].append(t)
    return [
        (name, ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults", statistics.median(ts))
        for (name, params, _), ts in zip(bridges, times, strict=True)
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(
        f"bridge forward+backward, batch ({a.batch}, {a.width}), CPU, {a.threads} thread(s), "
        f"median of {a.repeats}, torch {torch.__version__}"
    )
    for hard in ROWS:
        rows = measure(hard, a.batch, a.width, a.repeats, a.warmup)
        ref = rows[0][2]
        print(f"\n{hard}\n")
        print("| estimator | params | ms/step | / dab |")
        print("|---|---|---:|---:|")
        for name, params, t in rows:
            print(f"| {name} | {params} | {t * 1e3:.2f} | {t / ref:.2f} |")


if __name__ == "__main__":
    main()
