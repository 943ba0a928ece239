"""Self-test of the multi-process cluster harness (tests/e2e/cluster.py): S3 through pyarrow,
MLflow artifacts proxied into the bucket, a Ray cluster of three `ray start` processes with 4
(fake) GPUs that survives losing a worker node and its head, and a teardown that leaves no
process, database or temp dir behind. Each step prints how long it took (run with -s)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.e2e.cluster import Cluster, RayCluster, WorkerSpec, alive, cluster_topology, harness
from tests.pg import PG_ADMIN_URL

pytestmark = pytest.mark.slow

MARK = "from-the-harness"  # an env variable every node gets, checked in the tasks

# The job's driver: tasks taking half a GPU, all eight at once (so both GPUs of both workers),
# each telling where it ran; with DAB_JOB_BUCKET one task per worker node writes to S3 through
# pyarrow with the credentials its node was started with.
JOB = """
import json, os, time, ray
ray.init()

@ray.remote(num_cpus=0.5, num_gpus=0.5)
def where(i):
    time.sleep(1)
    return dict(i=i, ip=ray.util.get_node_ip_address(), cuda=os.environ.get("CUDA_VISIBLE_DEVICES"),
                mark=os.environ.get("DAB_CLUSTER_MARK"))

def put(node):
    from pyarrow import fs
    s3 = fs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL_S3"].split("://")[1],
                         scheme="http", region=os.environ["AWS_DEFAULT_REGION"])
    with s3.open_output_stream(f"{os.environ['DAB_JOB_BUCKET']}/from-ray/{node}.txt") as f:
        f.write(ray.util.get_node_ip_address().encode())
    return node

tasks = ray.get([where.remote(i) for i in range(int(os.environ.get("DAB_JOB_TASKS", "8")))])
nodes = [k for k in ray.cluster_resources() if k.startswith("node_")]
put = ray.remote(num_cpus=0)(put)
puts = ray.get([put.options(resources={n: 0.01}).remote(n) for n in nodes]) if "DAB_JOB_BUCKET" in os.environ else []
print("RESULT " + json.dumps(dict(resources=ray.cluster_resources(), tasks=tasks, puts=puts)))
"""
ENTRYPOINT = f"python -c {shlex.quote(JOB)}"


class Steps:
    """Times each step, printing as it goes and a summary at the end."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.monotonic()
        try:
            yield
        finally:
            self.times[name] = time.monotonic() - t
            print(f"[{self.title}] {name}: {self.times[name]:.1f} s", flush=True)

    def summary(self) -> None:
        print(f"\n[{self.title}] timings (s): " + json.dumps({k: round(v, 1) for k, v in self.times.items()}))


def run_job(ray: RayCluster, **env: str) -> dict[str, Any]:
    status, logs = ray.run_job(ENTRYPOINT, env_vars=env or None)
    assert status == "SUCCEEDED", logs[-4000:]
    lines = [line for line in logs.splitlines() if line.startswith("RESULT ")]
    assert lines, logs[-4000:]
    return dict(json.loads(lines[-1].removeprefix("RESULT ")))


def databases(prefix: str) -> set[str]:
    with contextlib.closing(psycopg2.connect(PG_ADMIN_URL, connect_timeout=5)) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (f"{prefix}%",))
        return {row[0] for row in cur.fetchall()}


@pytest.fixture(scope="class")
def steps() -> Iterator[Steps]:
    s = Steps("topology")
    yield s
    s.summary()


@pytest.fixture(scope="class")
def topo(steps: Steps) -> Iterator[Cluster]:
    """The whole topology, shared by `TestTopology` and torn down after it (before the
    GCS fault tolerance test starts a cluster of its own)."""
    prefix = f"dab_cluster_{os.getpid()}"
    with contextlib.ExitStack() as stack:
        with steps("start everything"):
            c = stack.enter_context(cluster_topology(env={"DAB_CLUSTER_MARK": MARK}, db_prefix=prefix))
        print(f"[topology] start-up (s): {json.dumps({k: round(v, 1) for k, v in c.timings.items()})}")
        assert databases(prefix) == {c.mlflow_db_url.rsplit("/", 1)[1], c.service_db_url.rsplit("/", 1)[1]}
        yield c
        teardown = time.monotonic()
    steps.times["teardown"] = time.monotonic() - teardown
    print(f"[topology] teardown: {steps.times['teardown']:.1f} s")
    assert not c.h.root.exists()
    assert not c.h.leftovers()
    assert not databases(prefix)


def assert_full_cluster(result: dict[str, Any], ray: RayCluster) -> None:
    res = result["resources"]
    assert (res["GPU"], res["CPU"]) == (4.0, 9.0), res
    worker_ips = {n.ip for n in ray.workers.values()}
    tasks = result["tasks"]
    assert {t["ip"] for t in tasks} == worker_ips  # the head has no GPU
    # 8 tasks of half a GPU at once: each GPU of each worker holds two
    assert sorted((t["ip"], t["cuda"]) for t in tasks) == sorted(
        (ip, gpu) for ip in worker_ips for gpu in ("0", "1") for _ in range(2)
    )
    assert {t["mark"] for t in tasks} == {MARK}


class TestTopology:
    """S3, MLflow, the databases and the Ray cluster of one `cluster_topology`."""

    def test_s3_roundtrip_through_pyarrow(self, topo: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
        for k, v in topo.s3.env().items():  # pyarrow takes the credentials from the environment
            monkeypatch.setenv(k, v)
        fs = topo.s3.pyarrow_fs()
        with fs.open_output_stream(f"{topo.s3.bucket}/roundtrip/hello.txt") as f:
            f.write(b"hello from pyarrow")
        with fs.open_input_stream(f"{topo.s3.bucket}/roundtrip/hello.txt") as f:
            assert f.read() == b"hello from pyarrow"
        assert topo.s3.list_keys("roundtrip/") == ["roundtrip/hello.txt"]

    def test_mlflow_artifacts_land_in_the_bucket(self, topo: Cluster, tmp_path: Path) -> None:
        from mlflow import MlflowClient

        client = MlflowClient(topo.mlflow.tracking_uri)
        run = client.create_run(client.create_experiment("topology"))
        (tmp_path / "note.txt").write_text("an artifact")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"), artifact_path="notes")
        keys = topo.s3.list_keys("mlflow/")
        assert any(k.endswith(f"{run.info.run_id}/artifacts/notes/note.txt") for k in keys), keys
        back = client.download_artifacts(run.info.run_id, "notes/note.txt", str(tmp_path / "back"))
        assert Path(back).read_text() == "an artifact"

    def test_service_database_is_empty_and_reachable(self, topo: Cluster) -> None:
        dsn = topo.service_db_url.replace("postgresql+psycopg2://", "postgresql://", 1)
        with contextlib.closing(psycopg2.connect(dsn, connect_timeout=5)) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
            assert cur.fetchone() == (0,)

    def test_ray_cluster_survives_a_worker_and_its_head(self, topo: Cluster, steps: Steps) -> None:
        ray = topo.ray
        nodes = ray.wait_for_nodes(3)
        assert {n["node_ip"] for n in nodes} == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}
        assert (ray.resources()["GPU"], ray.resources()["CPU"]) == (4.0, 9.0)
        # every node keeps its sockets and logs under its own temp dir
        for node in ray.nodes:
            assert list(node.temp_dir.glob("session_*/sockets/raylet")), node.name

        with steps("job on 3 nodes"):
            result = run_job(ray, DAB_JOB_BUCKET=topo.s3.bucket)
        print("[topology] tasks:", [(t["ip"], t["cuda"]) for t in result["tasks"]])
        assert_full_cluster(result, ray)
        assert sorted(result["puts"]) == ["node_a", "node_b"]
        assert sorted(topo.s3.list_keys("from-ray/")) == ["from-ray/node_a.txt", "from-ray/node_b.txt"]

        node_b = ray.workers["node_b"]
        assert node_b.proc is not None
        before = {p.pid: p.name() for p in node_b.proc.processes()}
        assert "raylet" in before.values(), before
        with steps("kill node_b"):
            pids = ray.kill_node("node_b")
        assert set(before) <= set(pids) and not any(alive(p) for p in pids)
        with steps("GCS sees 2 nodes"):
            nodes = ray.wait_for_nodes(2)
        assert {n["node_ip"] for n in nodes} == {"127.0.0.2", "127.0.0.3"}
        assert ray.resources()["GPU"] == 2.0

        with steps("kill the head"):
            head_pids = ray.kill_head()
        assert head_pids and not any(alive(p) for p in head_pids)
        with steps("restart the head (node_a restarted with it)"):
            killed = ray.restart_head()
        assert set(killed) == {"head", "node_a"}  # node_b was down already: it stays down
        assert {n["node_ip"] for n in ray.alive_nodes()} == {"127.0.0.2", "127.0.0.3"}
        with steps("start node_b again"):
            ray.start_node("node_b")
        with steps("job on the restarted cluster"):
            result = run_job(ray)
        assert_full_cluster(result, ray)


def test_head_restart_with_gcs_fault_tolerance() -> None:
    """With the GCS in Redis, a worker node lives through the head's loss and re-joins."""
    steps = Steps("gcs-ft")
    with harness() as h:
        ray = RayCluster(h, workers=[WorkerSpec("node_a", "127.0.0.3")], gcs_ft=True)
        try:
            with steps("start redis, head, node_a"):
                ray.start()
            worker = ray.workers["node_a"]
            assert worker.proc is not None
            before = {p.pid for p in worker.proc.processes()}
            with steps("kill + restart the head"):
                killed = ray.restart_head()
            assert set(killed) == {"head"}
            assert worker.starts == 1 and before <= {p.pid for p in worker.proc.processes()}
            with steps("job after the restart"):
                result = run_job(ray, DAB_JOB_TASKS="4")
            assert {t["ip"] for t in result["tasks"]} == {"127.0.0.3"}
            states = sorted((n["node_ip"], n["state"]) for n in ray.node_table())
            assert states == [("127.0.0.2", "ALIVE"), ("127.0.0.2", "DEAD"), ("127.0.0.3", "ALIVE")]
        finally:
            with steps("teardown"):
                ray.stop()
    assert not h.root.exists()
    steps.summary()
