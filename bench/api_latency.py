"""API latency under load: p50 and p99 of ``GET /v1/sweeps/{id}`` and of the results route,
with 50 concurrent clients, while a sweep runs on the embedded Ray.

    python bench/api_latency.py [--clients 50] [--seconds 20] [--client auto|wrk|python] [--api-url URL]
                                [--pin] [--baseline GIT_REF] [--rounds N]

Without ``--api-url`` it starts ``dab serve`` (embedded Ray, MLflow on SQLite) under a temporary
state dir as a separate process (a client in the server's process would share its GIL), submits
a small sorting sweep that trains for a few minutes (one trial at a time: on a 2-core machine
the other core serves the API and the benchmark's own client; ``--trials-at-once 2`` saturates
both), waits until a trial reports, and then measures. Targets: p99 under 50 ms (sweep) and 250 ms (results). It prints numbers and the ratio
to each target; it asserts nothing (benchmarks here print, tests do not time).

The load comes from `wrk` (a C client, `apt install wrk`) when it is on the PATH: 50
connections, each sending its next request as soon as the last answer arrives (no think time,
so this is the service at saturation). Without wrk, or with ``--client python``, an asyncio
httpx client does the same; it costs far more CPU per request than the server does, and on a
2-core machine it takes the server's cycles, so its numbers measure the client as much as the
service (docs/service.md has both).

``--pin`` (Linux) gives the service a core of its own: the server process on CPU 0, and its
Ray head with everything the head starts (trials, the driver), this script and wrk on the
other CPUs. That is the deployment the targets assume (the API in a container with its own CPU);
without it the server shares two cores with training, Ray's daemons and the load generator.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
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


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def _seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if m is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def measure_wrk(url: str, path: str, clients: int, seconds: float, token: str | None) -> dict[str, float]:
    """Run wrk and read its report: requests, p50, p99, and non-2xx answers and socket errors."""
    cmd = ["wrk", "-t1", f"-c{clients}", f"-d{seconds:.0f}s", "--latency", "--timeout", "10s"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run([*cmd, url + path], capture_output=True, text=True, check=True).stdout
    pcts = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "requests": requests,
        "p50": _seconds(pcts["50"]),
        "p99": _seconds(pcts["99"]),
        "errors": (int(bad.group(1)) if bad else 0) + (sum(map(int, sock.groups())) if sock else 0),
    }


def _threads_of_group(pgid: int) -> list[int]:
    """Every thread of every process in process group `pgid`."""
    tids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.getpgid(int(entry.name)) == pgid:
                    tids += [int(t.name) for t in (entry / "task").iterdir()]
    return tids


def pin_ray_head(state_dir: Path, cpus: set[int]) -> int:
    """Move the embedded head's processes (all threads) to `cpus`; what they start inherits it."""
    head = json.loads((state_dir / "ray" / "head.json").read_text())["pid"]
    tids = _threads_of_group(head)
    for tid in tids:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(tid, cpus)
    return len(tids)


def measure_python(url: str, path: str, clients: int, seconds: float) -> dict[str, float]:
    lat, errors = asyncio.run(measure(url, path, clients, seconds))
    return {"requests": len(lat), "p50": pct(lat, 50), "p99": pct(lat, 99), "errors": len(errors)}


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def _start_server(
    tree: Path | None, state_dir: str, server_cpu: set[int]
) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAB_")}
    env.update(DAB_STATE_DIR=state_dir, DAB_POLL_INTERVAL_S="1")
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("dab")), "serve", "--port", str(port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(Path(state_dir) / "serve.log", "wb"),
        preexec_fn=(lambda: os.sched_setaffinity(0, server_cpu)) if server_cpu else None,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=3).json()["status"] == "ok":
                return proc, url
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"the service did not start (log: {state_dir}/serve.log)")
        time.sleep(0.5)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def measure_service(
    url: str, token: str | None, clients: int, seconds: float, client: str, max_concurrent: int
) -> dict[str, dict[str, float]]:
    """Submit the training sweep, wait for a report, load both routes; cancel the sweep."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx.Client(base_url=url, timeout=60, headers=headers)
    spec = {**SPEC, "limits": {"max_concurrent": max_concurrent}}
    sid = http.post(
        "/v1/sweeps", content=json.dumps(spec), headers={"Content-Type": "application/json"}
    ).json()["id"]
    deadline = time.monotonic() + 240
    while True:  # measure while trials train and report
        trials = http.get(f"/v1/sweeps/{sid}/trials").json()["data"]
        if any((t["last_step"] or 0) > 0 for t in trials):
            break
        if time.monotonic() > deadline:
            raise RuntimeError("the sweep did not start training")
        time.sleep(1)
    out = {}
    for name, path in (("sweep", f"/v1/sweeps/{sid}"), ("results", f"/v1/sweeps/{sid}/results")):
        http.get(path)  # warm: the first call fills what caches there are
        if client == "wrk":
            out[name] = measure_wrk(url, path, clients, seconds, token)
        else:
            out[name] = measure_python(url, path, clients, seconds)
    http.post(f"/v1/sweeps/{sid}/cancel")
    return out


def _row(label: str, route: str, m: dict[str, float], seconds: float) -> str:
    path = "GET /v1/sweeps/{id}" + ("/results" if route == "results" else "")
    return (
        f"{label:<14} {path:<30} {m['requests'] / seconds:>7.0f} {m['p50'] * 1e3:>8.1f} "
        f"{m['p99'] * 1e3:>8.1f} {TARGETS[route] * 1e3:>7.0f} {m['p99'] / TARGETS[route]:>10.2f}"
        + (f"  errors: {m['errors']}" if m["errors"] else "")
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--trials-at-once", type=int, default=1, help="the sweep's max_concurrent")
    p.add_argument("--api-url", default=None, help="measure a running service instead of starting one")
    p.add_argument("--client", choices=("auto", "wrk", "python"), default="auto", help="auto: wrk if found")
    p.add_argument("--pin", action="store_true", help="the server on CPU 0, everything else on the rest")
    p.add_argument(
        "--baseline",
        action="append",
        default=[],
        help="a git ref to measure too, in the same run (repeatable)",
    )
    p.add_argument("--rounds", type=int, default=1, help="with --baseline: alternations of the two")
    a = p.parse_args()
    if a.pin and (a.api_url or not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2):
        print("--pin needs Linux, two CPUs or more, and the service started here", file=sys.stderr)
        return 2
    if a.baseline and a.api_url:
        print("--baseline starts both services itself: drop --api-url", file=sys.stderr)
        return 2
    server_cpu = {min(os.sched_getaffinity(0))} if a.pin else set()
    others = os.sched_getaffinity(0) - server_cpu if a.pin else set()
    client = a.client if a.client != "auto" else ("wrk" if shutil.which("wrk") else "python")
    if client == "wrk" and not shutil.which("wrk"):
        print("wrk is not on the PATH (apt install wrk), or use --client python", file=sys.stderr)
        return 2
    if a.pin:
        os.sched_setaffinity(0, others)  # this script, and wrk, which inherits it
    token = os.environ.get("DAB_API_TOKEN") if a.api_url else None
    worktrees: dict[str, Path] = {}
    for ref in a.baseline:
        worktrees[ref] = Path(tempfile.mkdtemp(prefix="dab-bench-baseline-"))
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(worktrees[ref]), ref],
            check=True,
            capture_output=True,
        )
    one_round: list[tuple[str, Path | None]] = [*worktrees.items(), ("current", None)]
    runs = [r for _ in range(a.rounds if worktrees else 1) for r in one_round]
    print(
        f"{a.clients} concurrent clients ({client}), {a.seconds:.0f} s per route, a sorting sweep training"
        + (f"; server pinned to CPU {sorted(server_cpu)}, Ray and load on {sorted(others)}" if a.pin else "")
    )
    print(
        f"{'server':<14} {'route':<30} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'target':>7} {'p99/target':>10}"
    )
    p99: dict[tuple[str, str], list[float]] = {}
    try:
        for label, tree in runs:
            if a.api_url:
                results = measure_service(a.api_url, token, a.clients, a.seconds, client, a.trials_at_once)
            else:
                with tempfile.TemporaryDirectory(prefix="dab-bench-", ignore_cleanup_errors=True) as state:
                    proc, url = _start_server(tree, state, server_cpu)
                    try:
                        if a.pin:
                            pin_ray_head(Path(state), others)
                        results = measure_service(url, None, a.clients, a.seconds, client, a.trials_at_once)
                    finally:
                        _stop(proc)
            for route, m in results.items():
                print(_row(label, route, m, a.seconds), flush=True)
                p99.setdefault((label, route), []).append(m["p99"])
        for ref in worktrees:
            for route in ("sweep", "results"):
                before = statistics.median(p99[(ref, route)])
                after = statistics.median(p99[("current", route)])
                print(
                    f"p99 current/{ref} {route}: {after / before:.2f} ({after * 1e3:.1f} vs {before * 1e3:.1f} ms)"
                )
    finally:
        for tree in worktrees.values():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
