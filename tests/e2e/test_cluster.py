"""The cluster path as processes, end to end over HTTP: no shared disk, GPU packing, node loss and
head loss in one sweep.

The topology (`tests.e2e.cluster`): an S3 server (moto), ``mlflow server`` on PostgreSQL with its
artifacts in that S3, a Ray head and two worker nodes started as separate ``ray start``
processes with their own temp dirs (each worker declares 2 logical GPUs: Ray schedules GPUs as
resources, so packing is testable without one), and the service as ``dab serve`` under uvicorn
with its database on PostgreSQL, sweeps in ``s3://<bucket>/sweeps``, talking to the head's jobs
API. One sweep of 8 trials asking ``gpu: 0.5`` goes through three phases:

1. **packing**: at most four trials at once on a node (2 GPUs / 0.5), each with the GPU id Ray
   gave it as its ``CUDA_VISIBLE_DEVICES``, recorded on its MLflow run; these nodes have no
   CUDA, so each trial says so on its run and in its state and trains on the CPU (``device:
   auto``, see `workers.trainable.placement`);
2. **node loss**: every process of one worker node is SIGKILLed; its trials resume on the other
   node from their checkpoints in S3;
3. **head loss**: every process of the head (GCS, jobs API, the driver) is SIGKILLed and a fresh
   head started at the same address (the worker nodes, which cannot re-join a GCS that lost
   its state, are restarted with it); the service finds its driver job unknown, resubmits it,
   and the driver restores the Tune experiment from S3.

The sweep then ends with exactly one FINISHED MLflow run per trial and every report step once,
and nothing of the sweep is on local disk. The recovery times are printed (``-s``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.cluster import Cluster, cluster_topology, wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STEPS, EVERY = 1200, 40
SPEC: dict[str, Any] = {
    "name": "cluster",
    "experiment": "sorting",
    "description": "the cluster test: 8 tiny sorting trials packed two to a GPU",
    "params": {
        "model": "signum-dense",
        "seq_len": 3,
        "steps": STEPS,
        "eval_every": EVERY,
        "checkpoint_every": EVERY,
        "batch_size": 32,
        "train_size": 0,
        "test_size": 64,
        "dense_hidden": [8, 8],
        "approximator_hidden": [8],
        "num_threads": 1,
    },
    "grid": {"lr": [0.001, 0.002, 0.003, 0.005]},
    "replicates": 2,
    "resources": {"cpu": 0.5, "gpu": 0.5},
    "limits": {"max_failures": 4},
}
API_TOKEN = "cluster-test-token"


def _service(c: Cluster) -> tuple[Any, httpx.Client]:
    port = c.h.ports.one()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAB_", "RAY_", "AWS_", "MLFLOW_"))}
    env.update(
        c.s3.env(),
        PYTHONPATH=str(REPO),
        DAB_STATE_DIR=str(c.h.root / "service"),
        DAB_DATABASE_URL=c.service_db_url,
        DAB_RAY_ADDRESS=c.ray.jobs_address,
        DAB_RAY_AUTH_TOKEN=c.ray.token,
        DAB_MLFLOW_TRACKING_URI=c.mlflow.tracking_uri,
        DAB_STORAGE_URI=f"s3://{c.s3.bucket}/sweeps",
        DAB_S3_ENDPOINT_URL=c.s3.endpoint_url,
        DAB_DRIVER_PYTHON=sys.executable,
        DAB_POLL_INTERVAL_S="1",
        DAB_API_TOKEN=API_TOKEN,
    )
    proc = c.h.spawn(
        "service", [str(Path(sys.executable).with_name("dab")), "serve", "--port", str(port)], env
    )
    http = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30
    )

    def ready() -> bool:
        assert not proc.exited(), proc.tail()
        try:
            return http.get("/healthz").json().get("status") == "ok"
        except httpx.HTTPError:
            return False

    wait_until("the service ready", ready, 120, 0.5)
    return proc, http


def _trials(http: httpx.Client, sweep_id: str) -> list[dict[str, Any]]:
    return list(http.get(f"/v1/sweeps/{sweep_id}/trials", params={"limit": 100}).json()["data"])


class Watch:
    """Polls the sweep's trials over HTTP and keeps the most trials seen running per node."""

    def __init__(self, http: httpx.Client, sweep_id: str) -> None:
        self.http, self.sweep_id = http, sweep_id
        self.most_per_node: Counter[str] = Counter()
        self.last: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        self.last = _trials(self.http, self.sweep_id)
        running = Counter(t["nodes"][-1] for t in self.last if t["state"] == "running" and t["nodes"])
        for node, n in running.items():
            self.most_per_node[node] = max(self.most_per_node[node], n)
        return self.last

    def until(self, what: str, check: Callable[[list[dict[str, Any]]], Any], timeout_s: float) -> Any:
        return wait_until(what, lambda: check(self.poll()), timeout_s, 0.5)


def _status(c: Cluster, sweep_id: str) -> dict[str, Any]:
    import json

    body = c.s3.client().get_object(Bucket=c.s3.bucket, Key=f"sweeps/{sweep_id}/status.json")["Body"]
    return dict(json.loads(body.read()))


def test_one_sweep_through_packing_node_loss_and_head_loss() -> None:
    # Ray's node health checks as on a cluster, a little faster: the GCS declares a dead node
    # after ~11 s by default here (the harness measured it), fine for the test as it is.
    with cluster_topology(env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}) as c:
        left_behind = (c.h.root, c.s3.endpoint_url, [c.mlflow_db_url, c.service_db_url])
        print("\nstart-up (s):", {k: round(v, 1) for k, v in c.timings.items()})
        service, http = _service(c)
        node_a, node_b = (c.ray.workers[n].ip for n in ("node_a", "node_b"))
        try:
            r = http.post("/v1/sweeps", json=SPEC)
            assert r.status_code == 202, r.text
            sweep_id = r.json()["id"]
            watch = Watch(http, sweep_id)

            # 1. Packing: eight trials, four a node, each on the GPU Ray gave it.
            t0 = time.monotonic()
            watch.until(
                "8 trials running, 4 a node",
                lambda ts: (
                    Counter(t["nodes"][-1] for t in ts if t["state"] == "running" and t["nodes"])
                    == {node_a: 4, node_b: 4}
                ),
                300,
            )
            print(f"8 trials running after {time.monotonic() - t0:.1f} s")
            for t in watch.last:
                assert t["device"] == "cpu"
                assert "asked for a GPU" in t["note"] and "torch sees no CUDA" in t["note"], t["note"]

            # 2. Node loss: once node A's trials have a checkpoint past the first, kill the node.
            on_a = [t["trial_key"] for t in watch.last if t["nodes"] == [node_a]]
            assert len(on_a) == 4
            watch.until(
                "node A's trials checkpointed twice",
                lambda ts: all((t["last_step"] or 0) >= 2 * EVERY for t in ts if t["trial_key"] in on_a),
                300,
            )
            killed = c.ray.kill_node("node_a")
            t_kill = time.monotonic()
            print(
                f"node A: {len(killed)} processes SIGKILLed at steps",
                {t["trial_key"][:8]: t["last_step"] for t in watch.last if t["trial_key"] in on_a},
            )

            def moved(ts: list[dict[str, Any]]) -> list[dict[str, Any]]:
                return [t for t in ts if t["trial_key"] in on_a and t["nodes"][:2] == [node_a, node_b]]

            first_back = watch.until("a trial of node A reporting from node B", moved, 600)
            node_first = time.monotonic() - t_kill
            # Node B's own trials finish, and all four of node A's take their places.
            watch.until("all of node A's trials on node B", lambda ts: len(moved(ts)) == 4, 900)
            node_all = time.monotonic() - t_kill
            for t in watch.last:
                print("  trial", t["trial_key"][:8], t["state"], t["nodes"], t["last_step"], t["attempts"])
            print(
                f"node loss: the first trial of node A reported from node B {node_first:.1f} s after the "
                f"kill, all four {node_all:.1f} s after (once node B had room)"
            )
            assert watch.most_per_node[node_b] <= 4 and watch.most_per_node[node_a] <= 4

            # 3. Head loss: the whole head, driver included; a fresh head at the same address.
            status = _status(c, sweep_id)
            resumed = status["trials"][first_back[0]["trial_key"]]
            assert resumed["starts"][-1]["from_step"] >= 2 * EVERY  # from its checkpoint in S3, not 0
            before = {t["trial_key"]: t["last_step"] or 0 for t in watch.poll()}
            c.ray.kill_head()
            t_head = time.monotonic()
            c.ray.restart_head()
            c.ray.start_node("node_a")  # node A comes back too (a new node to Ray)
            c.ray.wait_for_nodes(3)
            print(f"head restarted with both nodes in {time.monotonic() - t_head:.1f} s")
            wait_until(
                "the service resubmitting the driver",
                lambda: (http.get(f"/v1/sweeps/{sweep_id}").json().get("message") or "").startswith(
                    "driver resubmitted (attempt 2)"
                ),
                180,
                0.5,
            )
            watch.until(
                "a trial past its step before the head was killed",
                lambda ts: any(
                    t["state"] == "running" and (t["last_step"] or 0) > before[t["trial_key"]]
                    for t in ts
                    if t["state"] == "running"
                ),
                600,
            )
            head_recovery = time.monotonic() - t_head
            print(f"head loss: trials progressing again {head_recovery:.1f} s after the kill")

            final = wait_until(
                "the sweep finished",
                lambda: (
                    s
                    if (s := http.get(f"/v1/sweeps/{sweep_id}").json())["state"] in ("finished", "failed")
                    else None
                ),
                900,
                1.0,
            )
            watch.poll()
            print(f"sweep {final['state']} {time.monotonic() - t0:.1f} s after submission")
            if final["state"] != "finished":
                _explain(c, http, sweep_id, service)
            assert final["state"] == "finished", final["message"]
            # The second driver counts the trials finished before the head went as skipped.
            counts = final["counts"]
            assert counts["finished"] + counts["skipped"] == 8 and counts["failed"] == 0, counts
            assert final["job_attempts"] == 2 and final["progress"] == 1.0

            _check_mlflow(c, sweep_id, on_a, node_a, node_b)
            _check_storage(c, sweep_id)
        finally:
            http.close()
            service.kill(grace_s=10)
    _check_teardown(*left_behind)


def _check_teardown(root: Path, s3_endpoint: str, db_urls: list[str]) -> None:
    """No process (the harness raises on its way out if one is left), no database, no S3."""
    import psycopg2

    from tests.pg import PG_ADMIN_URL

    assert not root.exists()
    names = [u.rsplit("/", 1)[1] for u in db_urls]
    with contextlib.closing(psycopg2.connect(PG_ADMIN_URL, connect_timeout=5)) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (names,))
        assert cur.fetchall() == []
    with pytest.raises(httpx.HTTPError):  # the S3 server (and its bucket) are gone
        httpx.get(s3_endpoint, timeout=2)


def _explain(c: Cluster, http: httpx.Client, sweep_id: str, service: Any) -> None:
    """Print what a failed sweep left: its row, its trials' errors, the service's log tail."""
    print("sweep:", http.get(f"/v1/sweeps/{sweep_id}").json())
    for t in _trials(http, sweep_id):
        if t["error"]:
            print("trial", t["trial_key"][:12], t["state"], t["error"][-1500:])
    print("service log:", service.tail(6000))
    with contextlib.suppress(Exception):
        for job in c.ray.job_client().list_jobs():
            print(
                "job",
                job.submission_id,
                job.status,
                c.ray.job_client().get_job_logs(job.submission_id)[-6000:],
            )


def _check_mlflow(c: Cluster, sweep_id: str, on_a: list[str], node_a: str, node_b: str) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import ViewType

    client = MlflowClient(c.mlflow.tracking_uri)
    exp = client.search_experiments(filter_string=f"tags.`dab.sweep_id` = '{sweep_id}'")[0]
    runs = client.search_runs([exp.experiment_id], "tags.`dab.role` = 'trial'", run_view_type=ViewType.ALL)
    by_key = Counter(r.data.tags["dab.trial_key"] for r in runs)
    assert len(by_key) == 8 and set(by_key.values()) == {1}, by_key  # one run per trial
    want = list(range(EVERY, STEPS + 1, EVERY))
    for run in runs:
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "test_all_or_none"))
        assert steps == want, (tags["dab.trial_key"], steps)  # no step missing, none twice
        assert tags["dab.cuda_visible_devices"] == tags["dab.gpu_ids"] in ("0", "1")
        assert tags["dab.device"] == "cpu" and "torch sees no CUDA" in tags["dab.device_note"]
        if tags["dab.trial_key"] in on_a:  # resumed on node B before the head went
            entry = _status(c, sweep_id)["trials"][tags["dab.trial_key"]]
            assert tags["dab.nodes"].split(",")[:2] == [node_a, node_b], (tags, entry)
        # The final checkpoint went through the tracking server into S3.
        assert any(a.path == "checkpoint" for a in client.list_artifacts(run.info.run_id))
    assert any(k.startswith("mlflow/") and k.endswith("/trial.pt") for k in c.s3.list_keys("mlflow/"))


def _check_storage(c: Cluster, sweep_id: str) -> None:
    keys = c.s3.list_keys(f"sweeps/{sweep_id}/")
    assert f"sweeps/{sweep_id}/spec.json" in keys and f"sweeps/{sweep_id}/status.json" in keys
    assert any(k.startswith(f"sweeps/{sweep_id}/tune/") and "experiment_state" in k for k in keys)
    left = [k for k in keys if "/checkpoint_" in k]
    assert not left, "\n".join(left)  # each final checkpoint is MLflow's now
    # The service's state dir holds its own files at most: nothing of the sweep.
    state = c.h.root / "service"
    held = sorted(str(p.relative_to(state)) for p in state.rglob("*")) if state.exists() else []
    assert not [p for p in held if sweep_id in p or p.startswith("sweeps")], held
