"""Ray: the embedded head's lifecycle, and the jobs API client that runs sweep drivers.

The service never runs Tune itself: each sweep's driver (``python -m workers.driver``) is a
Ray Job. Ray 2.60's jobs API wants token auth (``RAY_AUTH_MODE=token``): the embedded head is
started with a token file under ``<state dir>/ray/auth_token`` and the client sends the token as
``Authorization: Bearer ...`` (what `JobSubmissionClient` does with ``headers=``; Ray's own
lookup of ``RAY_AUTH_TOKEN`` only runs when the client process is in token mode itself).

The embedded head is ``ray start --head --block`` in a session of its own, so it is stopped by
signalling that process group, never with ``ray stop`` (which stops every Ray on the machine).
A head left behind by a service that was SIGKILLed is found again through ``head.json`` and
adopted; a dead one is replaced, and the sweeps it ran are resubmitted by the reconciler.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from service.core.errors import UnavailableError

log = logging.getLogger("service.ray")

#: Seconds Ray waits between SIGTERM and SIGKILL when a job is stopped: the driver ends its
#: MLflow runs KILLED in that time (Ray's default is 3 s).
JOB_STOP_WAIT_S = 20
TERMINAL_JOB_STATES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


def free_ports(n: int) -> list[int]:
    """`n` distinct free loopback ports. The sockets stay bound until all are picked: picking
    them one at a time lets the kernel hand the same port out twice (seen here: Ray refused
    to start because its dashboard and object manager had been given one port)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class HeadInfo:
    pid: int
    gcs_port: int
    dashboard_port: int
    temp_dir: str

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"


class EmbeddedRayHead:
    """A local Ray head for the embedded stack, owned by the service that started it."""

    def __init__(
        self,
        state_dir: Path,
        *,
        num_cpus: int | None = None,
        nice: int = 0,
        gcs_port: int = 0,
        dashboard_port: int = 0,
        start_timeout_s: float = 90.0,
    ) -> None:
        self.dir = state_dir / "ray"
        self.num_cpus = num_cpus or os.cpu_count() or 1
        self.nice = nice
        self.gcs_port = gcs_port
        self.dashboard_port = dashboard_port
        self.start_timeout_s = start_timeout_s
        self.info: HeadInfo | None = None
        self.adopted = False
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def token_file(self) -> Path:
        return self.dir / "auth_token"

    @property
    def head_file(self) -> Path:
        return self.dir / "head.json"

    def token(self) -> str:
        """The head's auth token, generated once and kept (0600) under the state dir."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.token_file.is_file() or not self.token_file.read_text().strip():
            fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return self.token_file.read_text().strip()

    @property
    def address(self) -> str:
        assert self.info is not None, "the head is not started"
        return self.info.address

    def _temp_dir(self) -> str:
        # Ray puts unix sockets under its temp dir: keep the path short (108-byte limit).
        digest = hashlib.sha256(str(self.dir.resolve()).encode()).hexdigest()[:10]
        return f"/tmp/dab-ray-{digest}"

    def _responds(self, info: HeadInfo, token: str) -> bool:
        try:
            r = httpx.get(
                f"{info.address}/api/jobs/", headers={"Authorization": f"Bearer {token}"}, timeout=3
            )
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    def start(self) -> str:
        """Start the head (or adopt the live one a previous service left); returns the address."""
        from ray._private.utils import get_dashboard_dependency_error

        missing = get_dashboard_dependency_error()
        if missing is not None:  # ray[tune] alone has no jobs API
            raise UnavailableError(
                f"Ray's jobs API needs the dashboard packages ({missing}): pip install 'ray[default]'"
            )
        token = self.token()
        previous = _read_head(self.head_file)
        if previous is not None and _alive(previous.pid):
            if self._responds(previous, token):
                log.info("adopting the embedded Ray head left running (pid %d)", previous.pid)
                self.info, self.adopted = previous, True
                return previous.address
            log.warning("embedded Ray head pid %d does not answer; replacing it", previous.pid)
            _kill_group(previous.pid, timeout_s=10)
        self.head_file.unlink(missing_ok=True)
        ports = free_ports(9)
        info = HeadInfo(
            pid=0,
            gcs_port=self.gcs_port or ports[0],
            dashboard_port=self.dashboard_port or ports[1],
            temp_dir=self._temp_dir(),
        )
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.token_file),
            RAY_USAGE_STATS_ENABLED="0",
            RAY_JOB_STOP_WAIT_TIME_S=str(JOB_STOP_WAIT_S),
            # the driver's Tune/torch: one thread per trial unless a trial config says otherwise
            OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
        )
        ray_bin = Path(sys.executable).with_name("ray")
        # Trials are batch work and the service is interactive: with the head niced, its
        # workers (which inherit it) yield the CPU to the API whenever both want it.
        cmd = [
            *(["nice", "-n", str(self.nice)] if self.nice else []),
            str(ray_bin) if ray_bin.exists() else "ray",
            "start",
            "--head",
            "--block",
            f"--port={info.gcs_port}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={info.dashboard_port}",
            "--include-dashboard=true",
            # every port free and our own: another Ray on the machine holds Ray's defaults
            f"--node-manager-port={ports[2]}",
            f"--object-manager-port={ports[3]}",
            f"--ray-client-server-port={ports[4]}",
            f"--dashboard-agent-listen-port={ports[5]}",
            f"--dashboard-agent-grpc-port={ports[6]}",
            f"--metrics-export-port={ports[7]}",
            f"--runtime-env-agent-port={ports[8]}",
            f"--num-cpus={self.num_cpus}",
            "--num-gpus=0",
            f"--temp-dir={info.temp_dir}",
            "--disable-usage-stats",
        ]
        log_file = open(self.dir / "head.log", "ab")
        self._proc = subprocess.Popen(
            cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.dir
        )
        log_file.close()
        info.pid = self._proc.pid
        self.head_file.write_text(json.dumps(info.__dict__))
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = (self.dir / "head.log").read_text(errors="replace")[-2000:]
                self.head_file.unlink(missing_ok=True)
                raise UnavailableError(f"the embedded Ray head exited ({self._proc.returncode}): {tail}")
            if self._responds(info, token):
                self.info = info
                log.info(
                    "embedded Ray head up at %s (pid %d, %d CPUs)", info.address, info.pid, self.num_cpus
                )
                return info.address
            time.sleep(0.5)
        self.stop()
        raise UnavailableError(f"the embedded Ray head did not answer within {self.start_timeout_s:.0f} s")

    def stop(self) -> None:
        """Stop the head: SIGTERM to its process group, SIGKILL what is left after 8 s."""
        pid = self.info.pid if self.info else (self._proc.pid if self._proc else None)
        if pid is not None:
            _kill_group(pid, timeout_s=8)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=1)
        self.head_file.unlink(missing_ok=True)
        self.info = None


def _read_head(path: Path) -> HeadInfo | None:
    try:
        return HeadInfo(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _kill_group(pid: int, timeout_s: float) -> None:
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    if pgid != pid:  # only a group this head leads (it was started in a session of its own)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


class RayJobs:
    """The jobs API of a Ray cluster (synchronous: call it from a worker thread)."""

    def __init__(self, address: str, token: str | None) -> None:
        if "://" not in address:
            address = f"http://{address}"
        if address.startswith("ray://"):
            raise ValueError(
                "DAB_RAY_ADDRESS is the jobs API (http://head:8265), not a ray:// client address"
            )
        self.address = address
        self.token = token
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
            try:
                self._client = JobSubmissionClient(self.address, headers=headers)
            except Exception as e:
                raise UnavailableError(f"cannot reach the Ray jobs API at {self.address}: {e}") from e
        return self._client

    def submit(
        self, entrypoint: str, submission_id: str, metadata: dict[str, str], env: dict[str, str] | None = None
    ) -> str:
        runtime_env = {"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(JOB_STOP_WAIT_S), **(env or {})}}
        last: Exception | None = None
        for attempt in range(10):  # a fresh head's job agent can take a few seconds to register
            try:
                return str(
                    self.client().submit_job(
                        entrypoint=entrypoint,
                        submission_id=submission_id,
                        metadata=metadata,
                        runtime_env=runtime_env,
                    )
                )
            except RuntimeError as e:
                if "already exists" in str(e):
                    return submission_id
                last = e
                time.sleep(min(0.5 * (attempt + 1), 3))
        raise UnavailableError(f"cannot submit the sweep's driver to Ray at {self.address}: {last}")

    def status(self, job_id: str) -> str | None:
        """The job's status name (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED), None if unknown."""
        try:
            return str(self.client().get_job_status(job_id).value)
        except RuntimeError as e:
            if "does not exist" in str(e) or "404" in str(e):
                return None
            raise UnavailableError(f"Ray jobs API: {e}") from e

    def info(self, job_id: str) -> Any | None:
        try:
            return self.client().get_job_info(job_id)
        except RuntimeError:
            return None

    def stop(self, job_id: str) -> bool:
        try:
            return bool(self.client().stop_job(job_id))
        except RuntimeError as e:
            if "does not exist" in str(e):
                return False
            raise UnavailableError(f"Ray jobs API: {e}") from e

    def logs(self, job_id: str) -> str:
        try:
            return str(self.client().get_job_logs(job_id))
        except RuntimeError:
            return ""


__all__ = ["JOB_STOP_WAIT_S", "TERMINAL_JOB_STATES", "EmbeddedRayHead", "HeadInfo", "RayJobs"]
