"""API latency under load: p50 and p99 of ``GET /v1/sweeps/{id}`` and of the results route,
with 50 concurrent clients, while a sweep runs on the embedded Ray.

    python bench/api_latency.py [--clients 50] [--seconds 20] [--api-url URL]

Without ``--api-url`` it starts ``dab serve`` (embedded Ray, MLflow on SQLite) under a temporary
state dir as a separate process (a client in the server's process would share its GIL), submits
a small sorting sweep that trains for a few minutes (one trial at a time: on a 2-core machine
the other core serves the API and the benchmark's own client; ``--trials-at-once 2`` saturates
both), waits until a trial reports, and then measures. Targets: p99 under 50 ms (sweep) and 250 ms (results). It prints numbers and the ratio
to each target; it asserts nothing (benchmarks here print, tests do not time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SPEC = {
    "name": "bench-latency",
    "experiment": "sorting",
    "params": {
        "seq_len": 3,
        "steps": 100_000,
        "eval_every": 10,
        "batch_size": 32,
        "train_size": 0,
        "test_size": 100,
        "dense_hidden": [8, 8],
        "approximator_hidden": [8],
        "num_threads": 1,
    },
    "grid": {"model": ["signum-dense", "elu-dense"]},
    "replicates": 2,
    "resources": {"cpu": 1},
    "limits": {"max_concurrent": 1},
}
TARGETS = {"sweep": 0.050, "results": 0.250}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _client(
    http: httpx.AsyncClient, path: str, until: float, out: list[float], errors: list[int]
) -> None:
    while time.perf_counter() < until:
        t0 = time.perf_counter()
        r = await http.get(path)
        out.append(time.perf_counter() - t0)
        if r.status_code != 200:
            errors.append(r.status_code)


async def measure(url: str, path: str, clients: int, seconds: float) -> tuple[list[float], list[int]]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:
        await http.get(path)  # warm: the first call fills caches
        until = time.perf_counter() + seconds
        out: list[float] = []
        errors: list[int] = []
        await asyncio.gather(*(_client(http, path, until, out, errors) for _ in range(clients)))
    return out, errors


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--trials-at-once", type=int, default=1, help="the sweep's max_concurrent")
    p.add_argument("--api-url", default=None, help="measure a running service instead of starting one")
    a = p.parse_args()
    proc = None
    tmp = tempfile.TemporaryDirectory(prefix="dab-bench-")
    url = a.api_url
    try:
        if url is None:
            port = _free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("DAB_")}
            env.update(DAB_STATE_DIR=tmp.name, DAB_POLL_INTERVAL_S="1")
            proc = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("dab")),
                    "serve",
                    "--port",
                    str(port),
                    "--log-level",
                    "warning",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(Path(tmp.name) / "serve.log", "wb"),
            )
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 180
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/healthz", timeout=3).json()["status"] == "ok":
                        break
                if time.monotonic() > deadline or proc.poll() is not None:
                    print("the service did not start", file=sys.stderr)
                    return 1
                time.sleep(0.5)
        http = httpx.Client(base_url=url, timeout=60)
        sid = http.post(
            "/v1/sweeps", content=json.dumps(SPEC), headers={"Content-Type": "application/json"}
        ).json()["id"]
        deadline = time.monotonic() + 240
        while True:  # measure while trials train and report
            trials = http.get(f"/v1/sweeps/{sid}/trials").json()["data"]
            if any((t["last_step"] or 0) > 0 for t in trials):
                break
            if time.monotonic() > deadline:
                print("the sweep did not start training", file=sys.stderr)
                return 1
            time.sleep(1)
        print(f"sweep {sid} running; {a.clients} concurrent clients, {a.seconds:.0f} s per route")
        print(
            f"{'route':<38} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'target':>8} {'p99/target':>10}"
        )
        for name, path in (("sweep", f"/v1/sweeps/{sid}"), ("results", f"/v1/sweeps/{sid}/results")):
            lat, errors = asyncio.run(measure(url, path, a.clients, a.seconds))
            p50, p99 = pct(lat, 50), pct(lat, 99)
            label = "GET /v1/sweeps/{id}" + ("/results" if name == "results" else "")
            print(
                f"{label:<38} {len(lat):>8} {len(lat) / a.seconds:>7.0f} {p50 * 1e3:>8.1f} {p99 * 1e3:>8.1f} "
                f"{TARGETS[name] * 1e3:>8.0f} {p99 / TARGETS[name]:>10.2f}"
                + (f"  errors: {len(errors)}" if errors else "")
            )
        http.post(f"/v1/sweeps/{sid}/cancel")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
