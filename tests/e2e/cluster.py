"""A multi-process "cluster" on one machine, for topology tests: S3, PostgreSQL, MLflow and a
Ray cluster of separate nodes, each component a real process of its own on loopback.

Not a test module: `tests/e2e/test_cluster_topology.py` is its self-test, and scenario tests
use it as::

    with cluster_topology(env={"PYTHONPATH": ...}) as c:
        c.s3.endpoint_url, c.s3.bucket, c.s3.env(), c.s3.list_keys("mlflow/")
        c.mlflow.tracking_uri            # artifacts proxied into s3://<bucket>/mlflow
        c.service_db_url                 # an empty PostgreSQL database for the service
        c.ray.jobs_address, c.ray.token  # http://127.0.0.1:<dashboard>, its Bearer token
        c.ray.wait_for_nodes(3); c.ray.kill_node("node_b"); c.ray.restart_head()

The pieces:

* `Harness`: the root dir (``/tmp/dabc-XXXXXXXX``, short: Ray puts unix sockets under it and
  a socket path has 107 bytes), the port allocator and the record of every process started.
  Closing it kills whatever is left, removes the root, and raises if a process survived.
* `Proc`: one component's process, in a session of its own (``start_new_session``) with its
  output in ``<root>/logs/<name>.log`` and a tag in its environment (``DAB_HARNESS_TAG``)
  that every process it starts inherits: that tag is how its processes are found (with the
  leader's descendants) and all SIGKILLed and checked dead (never ``ray stop``, which stops
  every Ray on the machine).
* `S3Server`: ``moto_server`` on a free port with one bucket and fixed fake credentials.
* `MlflowServer`: ``mlflow server`` (uvicorn, one worker) on a PostgreSQL database from
  `tests.pg.fresh_pg_database`, ``--serve-artifacts`` into ``s3://<bucket>/mlflow``;
  telemetry and the job runner (which would leave a temp dir in /dev/shm) are off.
* `RayCluster`: a head (``ray start --head --block``, 1 CPU, no GPU, dashboard with the jobs
  API) and worker nodes (``ray start --address=... --block``, 4 CPUs and 2 (fake) GPUs each,
  a custom resource named after the node), token auth on every node like
  `service.ray_jobs.EmbeddedRayHead`, every port explicit and kept across restarts.

What Ray 2.60 does here (measured on 2 cores; the self-test prints its own timings):

* Temp dir per node: ``--temp-dir`` is honoured per node. Each node keeps its sockets, logs
  and session dir under its own dir (``<root>/head``, ``<root>/node_a``, ...); the session
  *name* is the head's, shared by all nodes.
* Node IPs: ``ray start`` rewrites ``--node-ip-address=127.0.0.1`` (and ``localhost``) to the
  machine's routable address (``resolve_ip_for_localhost``: 192.0.2.2 here, which is also
  what `EmbeddedRayHead`'s head registers as). Other loopback addresses are kept, so the head
  is 127.0.0.2 and the workers 127.0.0.3, 127.0.0.4: tasks see those as their node IP and
  Ray has a ``node:<ip>`` resource per node. They are "hosts" to Ray only: GCS, raylet and
  object manager listen on all interfaces, so ports must still differ machine-wide, and do.
* Ray's worker processes make a process group of their own (so a process-group kill misses
  them) but stay in the session of their node's ``ray start``, keep its environment, and
  rename themselves (``ray::IDLE``, ``ray::where``): a command-line search misses them.
* A node is alive in the GCS a little before its ``ray start`` has finished starting (it
  polls the GCS for its own node, then prints "Ray runtime started"); kill the head in
  between and that ``ray start`` gives up after 30 s, SIGTERMs its raylet and leaves the
  node's DashboardAgent and RuntimeEnvAgent behind as orphans (parent: init) holding their
  ports. The harness waits for that line after every start.
* A SIGKILLed worker node is DEAD in the GCS 11-12 s later (the GCS's health checks).
* Head loss, no GCS fault tolerance (the default, as in docker-compose.yml): the worker
  raylets keep trying the GCS for ``RAY_gcs_rpc_server_reconnect_timeout_s`` (60 s), then
  exit ("Failed to connect to GCS within 60 seconds"; measured 61-62 s), and their ``ray
  start --block`` kills the rest of the node and exits (in one early trial the node's two
  agents outlived it as orphans all the same). A fresh head at the same address
  within that window does not save them: it has another cluster id (its answers are
  "WrongClusterID"), and the raylet still aborts at about the 60 s mark ("GCS returned an
  authentication error. This may happen when GCS is not backed by a DB and restarted";
  measured 60 s, the fresh head up after 8-13 s). A worker node never re-joins by itself,
  so `RayCluster.restart_head` kills the worker nodes that were running and starts them
  again (same ports, same temp dirs) after the fresh head: about 11 s in all here.
* Head loss with GCS fault tolerance (``RayCluster(gcs_ft=True)``: a ``redis-server`` of the
  harness, ``RAY_REDIS_ADDRESS`` on the head): the worker raylets survive (same pids, same
  node ids) and re-join the fresh head as soon as it is up ("The GCS has restarted.
  Resubscribing to pubsub" in their raylet.out, which `restart_head` waits for: the node
  table, kept in Redis, shows them ALIVE throughout). The old head stays in it as DEAD next
  to the new one. A one-machine gotcha: ``ray start --head`` then refuses to start ("Ray is
  trying to start at ..., but is already running") because it sees a raylet on this machine
  started with its GCS address (a surviving worker's); removing the head's
  ``<temp dir>/ray_current_cluster`` skips that check.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

try:
    import psutil
except ImportError:  # not a dependency of the project: Ray vendors one, put on sys.path by `import ray`
    # isort: off
    import ray  # noqa: F401
    import psutil
    # isort: on

VENV_BIN = Path(sys.executable).parent
#: The environment variable every process of a harness inherits: ``<root>/<component>``.
TAG_VAR = "DAB_HARNESS_TAG"
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _bin(name: str) -> str:
    path = VENV_BIN / name
    return str(path) if path.exists() else name


def wait_until(what: str, check: Callable[[], Any], timeout_s: float, interval_s: float = 0.25) -> Any:
    """Poll `check` until it returns something truthy, and return that; an exception counts as
    not yet. TimeoutError naming `what` (and the last answer) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = check()
        except Exception as e:
            last = e
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout_s:.0f} s (last: {last!r})")
        time.sleep(interval_s)


# ---------------------------------------------------------------------------------------------
# ports, processes, the harness


class Ports:
    """Free TCP ports for one harness, none handed out twice.

    They are taken below the kernel's ephemeral range (32768-60999 here), so that an outgoing
    connection cannot take one between the pick and the bind, nor while a component is down to
    be restarted on the same port. A port counts as free when it binds on 0.0.0.0, which fails
    when anything listens on it on any address (127.0.0.x included)."""

    LOW, HIGH = 15000, 32000

    def __init__(self) -> None:
        self.given: set[int] = set()

    @staticmethod
    def _bindable(port: int) -> bool:
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                return False
        return True

    def block(self, n: int) -> list[int]:
        """`n` consecutive free ports (a Ray node's worker port range)."""
        for _ in range(1000):
            base = random.randrange(self.LOW, self.HIGH - n)
            ports = list(range(base, base + n))
            if not self.given.intersection(ports) and all(self._bindable(p) for p in ports):
                self.given.update(ports)
                return ports
        raise RuntimeError(f"no block of {n} free ports in [{self.LOW}, {self.HIGH})")

    def one(self) -> int:
        return self.block(1)[0]


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie is not)."""
    try:
        return _running(psutil.Process(pid))
    except psutil.Error:
        return False


def _tagged(tag: str) -> list[psutil.Process]:
    """The processes whose environment has ``DAB_HARNESS_TAG=<tag>`` (or starts with `tag` and
    a ``/``): everything a component starts inherits it, whatever its session or parent."""
    found = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            value = p.environ().get(TAG_VAR, "") if p.pid != os.getpid() else ""
            if value == tag or value.startswith(f"{tag}/"):
                found.append(p)
    return found


def _describe(p: psutil.Process) -> str:
    try:
        return f"{p.pid} {' '.join(p.cmdline())[:150]}"
    except psutil.Error:
        return str(p.pid)


def _sigkill(procs: Sequence[psutil.Process]) -> None:
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(procs, timeout=10)


class Proc:
    """One component's process, started in a session of its own, its output in a log file.

    Its processes are those that inherited its tag (`TAG_VAR`, unique to the component) and the
    leader's descendants. The tag, not the session, is what finds them all: Ray's workers make
    a process group of their own but stay in the session, agents orphaned by a dead raylet are
    re-parented to init, and both keep the environment; a session id could name a stranger
    once the leader's pid is reused (pid_max is 32768 here)."""

    def __init__(self, name: str, cmd: Sequence[str], env: Mapping[str, str], log: Path, tag: str) -> None:
        self.name = name
        self.log = log
        self.tag = tag
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            out.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
            out.flush()
            self.log_offset = out.tell()
            self.popen = subprocess.Popen(
                list(cmd),
                env={**env, TAG_VAR: tag},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=log.parent.parent,
            )
        self.pid = self.popen.pid

    def processes(self) -> list[psutil.Process]:
        procs = {p.pid: p for p in _tagged(self.tag)}
        if not self.exited():  # only then is the pid still ours
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(self.pid)
                procs.update((p.pid, p) for p in [root, *root.children(recursive=True)])
        return [p for p in procs.values() if _running(p)]

    def output(self) -> str:
        """What this start of the component wrote to its log so far."""
        try:
            with open(self.log, "rb") as f:
                f.seek(self.log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self, grace_s: float = 0) -> list[int]:
        """SIGTERM every process of the component first when `grace_s`, then SIGKILL what is
        left, until none is alive. Returns the pids signalled."""
        procs = self.processes()
        pids = {p.pid for p in procs}
        if grace_s:
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    p.terminate()
            psutil.wait_procs(procs, timeout=grace_s)
        for _ in range(3):  # collected again after each round: a dying parent may fork once more
            _sigkill(procs)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=0.1)
            procs = self.processes()
            if not procs:
                return sorted(pids)
            pids.update(p.pid for p in procs)
        raise RuntimeError(f"{self.name}: still alive after SIGKILL: {[p.pid for p in procs]}")


class Harness:
    """The root dir, the ports and the processes every component of one cluster shares."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="dabc-", dir="/tmp"))
        self.ports = Ports()
        self.procs: list[Proc] = []

    def spawn(self, name: str, cmd: Sequence[str], env: Mapping[str, str]) -> Proc:
        """Start a component's process, its log in ``<root>/logs/<name>.log``."""
        tag = f"{self.root}/{name}"
        proc = Proc(name, cmd, env, self.root / "logs" / f"{name}.log", tag)
        self.procs.append(proc)
        return proc

    def leftovers(self) -> list[psutil.Process]:
        """The processes of the harness still alive: those with its tag, and any whose command
        line names its root dir."""
        procs = {p.pid: p for p in _tagged(str(self.root))}
        for p in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if p.pid != os.getpid() and any(f"{self.root}/" in a for a in p.info["cmdline"] or ()):
                    procs[p.pid] = p
        return [p for p in procs.values() if _running(p)]

    def close(self, strict: bool = True) -> None:
        """Kill what is left and remove the root. RuntimeError if a process survived SIGKILL,
        or (`strict`) if any was left at all: each component stops its own."""
        left = self.leftovers()
        desc = {p.pid: _describe(p) for p in left}
        _sigkill(left)
        still = self.leftovers()
        shutil.rmtree(self.root, ignore_errors=True)
        if still:
            raise RuntimeError(f"processes of the harness survived SIGKILL: {[_describe(p) for p in still]}")
        if strict and left:
            raise RuntimeError(f"processes of the harness were left running: {list(desc.values())}")


@contextlib.contextmanager
def harness() -> Iterator[Harness]:
    """A `Harness`, closed on exit (not strict when an exception is on its way out)."""
    h = Harness()
    try:
        yield h
    except BaseException:
        h.close(strict=False)
        raise
    h.close()


# ---------------------------------------------------------------------------------------------
# S3: moto's server mode


class S3Server:
    """moto's S3 in server mode (``moto_server``) on a loopback port, with one bucket."""

    def __init__(self, h: Harness, bucket: str = "dab-cluster") -> None:
        self.h = h
        self.port = h.ports.one()
        self.bucket = bucket
        self.proc: Proc | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What a process needs to reach this S3: fake credentials and the endpoint (boto3 reads
        AWS_ENDPOINT_URL_S3, MLflow MLFLOW_S3_ENDPOINT_URL; pyarrow wants endpoint_override)."""
        return {
            **FAKE_AWS,
            "AWS_REGION": FAKE_AWS["AWS_DEFAULT_REGION"],
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=FAKE_AWS["AWS_DEFAULT_REGION"],
            aws_access_key_id=FAKE_AWS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=FAKE_AWS["AWS_SECRET_ACCESS_KEY"],
        )

    def pyarrow_fs(self) -> Any:
        """A pyarrow S3FileSystem on this server; its credentials come from the environment."""
        from pyarrow import fs

        return fs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{self.port}", scheme="http", region=FAKE_AWS["AWS_DEFAULT_REGION"]
        )

    def list_keys(self, prefix: str = "") -> list[str]:
        keys: list[str] = []
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        for page in pages:
            keys.extend(obj["Key"] for obj in page.get("Contents", ()))
        return keys

    def start(self, timeout_s: float = 30) -> None:
        cmd = [_bin("moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]
        proc = self.proc = self.h.spawn("s3", cmd, {**os.environ, "PYTHONUNBUFFERED": "1"})

        def up() -> bool:
            if proc.exited():
                raise RuntimeError(f"moto_server exited: {proc.tail()}")
            return httpx.get(f"{self.endpoint_url}/moto-api/", timeout=2).status_code == 200

        wait_until("moto_server answering", up, timeout_s)
        self.client().create_bucket(Bucket=self.bucket)

    def stop(self) -> None:
        """Delete every object and the bucket, then stop the server."""
        if self.proc is None:
            return
        try:
            if not self.proc.exited():
                s3 = self.client()
                keys = self.list_keys()
                for i in range(0, len(keys), 1000):
                    batch = [{"Key": k} for k in keys[i : i + 1000]]
                    s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch})
                s3.delete_bucket(Bucket=self.bucket)
        finally:
            self.proc.kill(grace_s=5)
            self.proc = None


# ---------------------------------------------------------------------------------------------
# MLflow tracking server


class MlflowServer:
    """``mlflow server`` on a PostgreSQL backend store, proxying artifacts into the bucket."""

    def __init__(self, h: Harness, backend_uri: str, s3: S3Server, prefix: str = "mlflow") -> None:
        self.h = h
        self.port = h.ports.one()
        self.backend_uri = backend_uri
        self.s3 = s3
        self.artifacts_destination = f"s3://{s3.bucket}/{prefix}"
        self.proc: Proc | None = None

    @property
    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        """Start the server; `wait_ready` waits for it (it migrates its database first)."""
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
            **self.s3.env(),
            "PYTHONUNBUFFERED": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            # its job runner (huey) would leave a temp dir in /dev/shm behind
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        cmd = [
            _bin("mlflow"),
            "server",
            "--host=127.0.0.1",
            f"--port={self.port}",
            f"--backend-store-uri={self.backend_uri}",
            f"--artifacts-destination={self.artifacts_destination}",
            "--serve-artifacts",
            "--workers=1",
        ]
        self.proc = self.h.spawn("mlflow", cmd, env)

    def wait_ready(self, timeout_s: float = 120) -> None:
        proc = self.proc
        assert proc is not None, "spawn() first"

        def up() -> bool:
            if proc.exited():
                raise RuntimeError(f"mlflow server exited: {proc.tail()}")
            return httpx.get(f"{self.tracking_uri}/health", timeout=2).status_code == 200

        wait_until("mlflow server /health", up, timeout_s, interval_s=0.5)

    def start(self, timeout_s: float = 120) -> None:
        self.spawn()
        self.wait_ready(timeout_s)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill(grace_s=5)
            self.proc = None


# ---------------------------------------------------------------------------------------------
# Ray: a head and worker nodes, each a `ray start --block` of its own


@dataclass(frozen=True)
class WorkerSpec:
    """A worker node to be: its name (also a custom resource of 1 on it) and its IP."""

    name: str
    ip: str
    num_cpus: int = 4
    num_gpus: int = 2


DEFAULT_WORKERS = (WorkerSpec("node_a", "127.0.0.3"), WorkerSpec("node_b", "127.0.0.4"))


@dataclass
class RayNode:
    """One Ray node: its address, its own temp dir, the ports it keeps across restarts."""

    name: str
    ip: str
    temp_dir: Path
    ports: dict[str, int]
    worker_ports: list[int]
    num_cpus: int
    num_gpus: int
    head: bool = False
    proc: Proc | None = None
    starts: int = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and not self.proc.exited()


class RayCluster:
    """A Ray cluster of separate ``ray start --block`` processes: a head and worker nodes.

    `env` goes to every node (and so to every Ray worker and job driver): S3 credentials,
    PYTHONPATH and the like. `gcs_ft` backs the GCS with a Redis of the harness, so that
    worker nodes survive a head restart (see the module docstring)."""

    def __init__(
        self,
        h: Harness,
        *,
        env: Mapping[str, str] | None = None,
        workers: Sequence[WorkerSpec] = DEFAULT_WORKERS,
        head_ip: str = "127.0.0.2",
        head_cpus: int = 1,
        head_env: Mapping[str, str] | None = None,
        object_store_bytes: int = 128 * 1024**2,
        worker_port_count: int = 100,
        gcs_ft: bool = False,
    ) -> None:
        self.h = h
        self.env = dict(env or {})
        self.head_env = dict(head_env or {})
        self.object_store_bytes = object_store_bytes
        self.gcs_ft = gcs_ft
        self.redis_port = h.ports.one() if gcs_ft else None
        self.redis: Proc | None = None
        self.token = secrets.token_hex(32)
        self.token_file = h.root / "ray_token"
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token)
        self.gcs_port = h.ports.one()
        self.dashboard_port = h.ports.one()
        self.ray_client_port = h.ports.one()

        def node(name: str, ip: str, cpus: int, gpus: int, head: bool = False) -> RayNode:
            names = ("node_manager", "object_manager", "runtime_env_agent", "agent_listen", "agent_grpc")
            return RayNode(
                name=name,
                ip=ip,
                temp_dir=h.root / name,
                ports={k: h.ports.one() for k in (*names, "metrics_export")},
                worker_ports=h.ports.block(worker_port_count),
                num_cpus=cpus,
                num_gpus=gpus,
                head=head,
            )

        self.head = node("head", head_ip, head_cpus, 0, head=True)
        self.workers = {w.name: node(w.name, w.ip, w.num_cpus, w.num_gpus) for w in workers}

    # -- addresses

    @property
    def gcs_address(self) -> str:
        return f"{self.head.ip}:{self.gcs_port}"

    @property
    def jobs_address(self) -> str:
        """The jobs API (and dashboard): what DAB_RAY_ADDRESS names."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def nodes(self) -> list[RayNode]:
        return [self.head, *self.workers.values()]

    # -- starting

    def _node_env(self, node: RayNode) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(self.env)
        env.update(
            PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",  # `python` in an entrypoint is ours
            PYTHONUNBUFFERED="1",
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_file),
            RAY_USAGE_STATS_ENABLED="0",
        )
        if node.head:
            env.update(self.head_env)
            if self.redis_port:
                env.update(
                    RAY_REDIS_ADDRESS=f"127.0.0.1:{self.redis_port}",
                    RAY_external_storage_namespace="dab-cluster",
                )
        return env

    def _spawn(self, node: RayNode) -> None:
        if node.running:
            raise RuntimeError(f"Ray node {node.name} is running already")
        if node.proc is not None:  # exited by itself: its agents may linger on its ports
            node.proc.kill()
        p = node.ports
        cmd = [
            _bin("ray"),
            "start",
            "--block",
            f"--node-ip-address={node.ip}",
            f"--temp-dir={node.temp_dir}",
            f"--num-cpus={node.num_cpus}",
            f"--num-gpus={node.num_gpus}",
            f"--object-store-memory={self.object_store_bytes}",
            f"--node-manager-port={p['node_manager']}",
            f"--object-manager-port={p['object_manager']}",
            f"--runtime-env-agent-port={p['runtime_env_agent']}",
            f"--dashboard-agent-listen-port={p['agent_listen']}",
            f"--dashboard-agent-grpc-port={p['agent_grpc']}",
            f"--metrics-export-port={p['metrics_export']}",
            f"--min-worker-port={node.worker_ports[0]}",
            f"--max-worker-port={node.worker_ports[-1]}",
            "--disable-usage-stats",
        ]
        if node.head:
            cmd += [
                "--head",
                f"--port={self.gcs_port}",
                f"--ray-client-server-port={self.ray_client_port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
            ]
            # `ray start --head` refuses to start when this file names its address and a raylet
            # on this machine was started with that GCS address (with gcs_ft: the workers').
            (node.temp_dir / "ray_current_cluster").unlink(missing_ok=True)
        else:
            cmd += [f"--address={self.gcs_address}", f"--resources={json.dumps({node.name: 1})}"]
        node.temp_dir.mkdir(parents=True, exist_ok=True)
        node.proc = self.h.spawn(f"ray-{node.name}", cmd, self._node_env(node))
        node.starts += 1

    def _start_redis(self, timeout_s: float = 30) -> None:
        cmd = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.redis_port)]
        cmd += ["--save", "", "--appendonly", "no", "--dir", str(self.h.root)]
        proc = self.redis = self.h.spawn("redis", cmd, os.environ)

        def up() -> bool:
            if proc.exited():
                raise RuntimeError(f"redis-server exited: {proc.tail()}")
            with socket.create_connection(("127.0.0.1", self.redis_port or 0), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")

        wait_until("redis-server answering", up, timeout_s)

    def _wait_started(self, nodes: Sequence[RayNode], timeout_s: float) -> None:
        """Until each node's ``ray start`` says "Ray runtime started". That comes a little
        after the GCS lists the node alive (``ray start`` polls the GCS for its node first):
        kill the head in between and that ``ray start`` gives up after 30 s, SIGTERMs its
        raylet and leaves the node's agents behind."""

        def started() -> bool:
            for node in nodes:
                if not node.running:
                    raise RuntimeError(
                        f"Ray node {node.name} exited: {node.proc.tail() if node.proc else ''}"
                    )
            return all(
                node.proc is not None and "Ray runtime started" in node.proc.output() for node in nodes
            )

        wait_until(f"ray start of {[n.name for n in nodes]} done", started, timeout_s, interval_s=0.5)

    def _start_head(self, timeout_s: float) -> None:
        self._spawn(self.head)
        self._wait_started([self.head], timeout_s)

        def up() -> bool:
            r = httpx.get(f"{self.jobs_address}/api/jobs/", headers=self.headers, timeout=3)
            return r.status_code == 200

        wait_until("the Ray head's jobs API", up, timeout_s, interval_s=0.5)

    def _start_workers(self, nodes: Sequence[RayNode], timeout_s: float) -> None:
        for node in nodes:
            self._spawn(node)
        self._wait_started(nodes, timeout_s)
        want = {node.ip for node in nodes}
        wait_until(f"{sorted(want)} alive in the GCS", lambda: want <= self.alive_node_ips(), timeout_s, 0.5)

    def start(self, timeout_s: float = 120) -> None:
        """Start the head, then every worker node; wait until all are alive in the GCS."""
        if self.gcs_ft and self.redis is None:
            self._start_redis()
        self._start_head(timeout_s)
        self._start_workers(list(self.workers.values()), timeout_s)
        self.wait_for_nodes(len(self.nodes), timeout_s)

    def start_node(self, name: str, timeout_s: float = 90) -> None:
        """Start a worker node again (same ports, same temp dir); wait until it is alive."""
        self._start_workers([self.workers[name]], timeout_s)

    # -- state

    def node_table(self) -> list[dict[str, Any]]:
        """The GCS's node table (dead nodes included) through the dashboard's state API."""
        r = httpx.get(
            f"{self.jobs_address}/api/v0/nodes", params={"limit": 1000}, headers=self.headers, timeout=10
        )
        r.raise_for_status()
        body = r.json()
        if not body.get("result", False):
            raise RuntimeError(f"state API: {body.get('msg')}")
        return list(body["data"]["result"]["result"])

    def alive_nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.node_table() if n["state"] == "ALIVE"]

    def alive_node_ips(self) -> set[str]:
        return {n["node_ip"] for n in self.alive_nodes()}

    def resources(self) -> dict[str, float]:
        """The total resources of the alive nodes (``CPU``, ``GPU``, ``node_a``, ...)."""
        total: dict[str, float] = {}
        for n in self.alive_nodes():
            for k, v in n["resources_total"].items():
                total[k] = total.get(k, 0.0) + float(v)
        return total

    def wait_for_nodes(self, n: int, timeout_s: float = 90) -> list[dict[str, Any]]:
        """Until the GCS reports exactly `n` alive nodes; returns them."""
        return wait_until(  # type: ignore[no-any-return]
            f"{n} alive Ray nodes",
            lambda: nodes if len(nodes := self.alive_nodes()) == n else None,
            timeout_s,
            interval_s=0.5,
        )

    def job_client(self) -> Any:
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.jobs_address, headers=self.headers)

    def run_job(
        self, entrypoint: str, timeout_s: float = 120, env_vars: Mapping[str, str] | None = None
    ) -> tuple[str, str]:
        """Submit a Ray Job and wait for its end; returns (status, logs)."""
        client = self.job_client()
        runtime_env = {"env_vars": dict(env_vars)} if env_vars else None
        job_id = wait_until(  # a fresh head's job agent can take a few seconds to register
            "the job submitted",
            lambda: client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env),
            30,
            1,
        )
        terminal = {"SUCCEEDED", "FAILED", "STOPPED"}
        status = wait_until(
            f"job {job_id} ended",
            lambda: s if (s := str(client.get_job_status(job_id).value)) in terminal else None,
            timeout_s,
            interval_s=0.5,
        )
        return status, str(client.get_job_logs(job_id))

    # -- failures

    def kill_node(self, name: str) -> list[int]:
        """SIGKILL every process of a worker node (its ``ray start``, raylet, agents, workers),
        check none is left, and return their pids. The GCS sees the node dead ~11 s later."""
        node = self.workers[name]
        if node.proc is None:
            return []
        pids = node.proc.kill()
        node.proc = None
        return pids

    def kill_head(self) -> list[int]:
        """SIGKILL every process of the head (GCS, dashboard, raylet, job drivers); their pids."""
        if self.head.proc is None:
            return []
        pids = self.head.proc.kill()
        self.head.proc = None
        return pids

    def restart_head(self, timeout_s: float = 120) -> dict[str, list[int]]:
        """A fresh head at the same GCS and dashboard ports with the same token (killing the
        old one first if `kill_head` did not), with the worker nodes that were running before
        re-joined. Without `gcs_ft` they cannot re-join a GCS that lost its state, so they are
        restarted too; with it they re-join by themselves. Returns the pids killed per node."""
        rejoin = [n for n in self.workers.values() if n.proc is not None]
        seen = {n.name: self._gcs_restarts_seen(n) for n in rejoin}
        killed = {"head": self.kill_head()}
        if not self.gcs_ft:
            for node in rejoin:
                killed[node.name] = self.kill_node(node.name)
        self._start_head(timeout_s)
        if self.gcs_ft:
            # the node table (kept in Redis) says ALIVE all along: the raylet's log tells
            wait_until(
                "the worker raylets re-joined the fresh GCS",
                lambda: all(self._gcs_restarts_seen(n) > seen[n.name] for n in rejoin),
                timeout_s,
                interval_s=0.5,
            )
        else:
            self._start_workers(rejoin, timeout_s)
        return killed

    @staticmethod
    def _gcs_restarts_seen(node: RayNode) -> int:
        """How often this node's raylet logged that it re-joined a restarted GCS."""
        try:
            text = (node.temp_dir / "session_latest" / "logs" / "raylet.out").read_text(errors="replace")
        except OSError:
            return 0
        return text.count("The GCS has restarted. Resubscribing")

    # -- teardown

    def processes(self) -> list[psutil.Process]:
        procs = [n.proc for n in self.nodes if n.proc] + ([self.redis] if self.redis else [])
        return [p for proc in procs for p in proc.processes()]

    def stop(self) -> list[int]:
        """Kill every node (workers first) and the Redis; returns the pids killed."""
        pids: list[int] = []
        for node in [*self.workers.values(), self.head]:
            if node.proc is not None:
                pids += node.proc.kill()
                node.proc = None
        if self.redis is not None:
            pids += self.redis.kill()
            self.redis = None
        return pids


# ---------------------------------------------------------------------------------------------
# all together


@contextlib.contextmanager
def s3_server(h: Harness, bucket: str = "dab-cluster") -> Iterator[S3Server]:
    s3 = S3Server(h, bucket)
    try:
        s3.start()
        yield s3
    finally:
        s3.stop()


@contextlib.contextmanager
def ray_cluster(h: Harness, **kwargs: Any) -> Iterator[RayCluster]:
    ray = RayCluster(h, **kwargs)
    try:
        ray.start()
        yield ray
    finally:
        ray.stop()


@dataclass
class Cluster:
    """Everything `cluster_topology` started; `timings` is seconds per start-up step."""

    h: Harness
    s3: S3Server
    mlflow: MlflowServer
    ray: RayCluster
    mlflow_db_url: str
    service_db_url: str
    timings: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def cluster_topology(
    *, env: Mapping[str, str] | None = None, db_prefix: str = "dab_cluster", **ray_kwargs: Any
) -> Iterator[Cluster]:
    """S3, two PostgreSQL databases (MLflow's, the service's), MLflow and a Ray cluster whose
    nodes get `env` plus the S3 variables. Torn down in reverse on exit, whatever happened:
    Ray, MLflow, the bucket and S3, the databases, and last the harness, which raises if a
    process of it is left. `ray_kwargs` go to `RayCluster`."""
    from tests.pg import fresh_pg_database

    with contextlib.ExitStack() as stack:
        h = stack.enter_context(harness())
        timings: dict[str, float] = {}
        t = time.monotonic()
        mlflow_db = stack.enter_context(fresh_pg_database(f"{db_prefix}_mlflow"))
        service_db = stack.enter_context(fresh_pg_database(f"{db_prefix}_service"))
        timings["databases"] = time.monotonic() - t
        t = time.monotonic()
        s3 = stack.enter_context(s3_server(h))
        timings["s3"] = time.monotonic() - t
        t = time.monotonic()
        mlflow = MlflowServer(h, mlflow_db, s3)
        stack.callback(mlflow.stop)
        mlflow.spawn()  # it migrates its database while Ray starts
        ray = stack.enter_context(ray_cluster(h, env={**s3.env(), **(env or {})}, **ray_kwargs))
        timings["ray"] = time.monotonic() - t
        mlflow.wait_ready()
        timings["mlflow (in parallel with ray)"] = time.monotonic() - t
        yield Cluster(h, s3, mlflow, ray, mlflow_db, service_db, timings)
