"""`dab serve` as a process of its own (the embedded stack: Ray head, MLflow on SQLite), for
the tests that SIGKILL it and start it again."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from service.server import free_port

DAB = Path(sys.executable).with_name("dab")


def kill_head(state_dir: Path) -> None:
    """SIGKILL the embedded head's process group (it leads a session of its own)."""
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        pid = json.loads((state_dir / "ray" / "head.json").read_text())["pid"]
        os.killpg(pid, signal.SIGKILL)


class Service:
    def __init__(self, state_dir: Path, env: dict[str, str]) -> None:
        self.state_dir = state_dir
        self.env = env
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.state_dir.parent / f"serve-{time.time():.0f}.log", "ab")
        self.proc = subprocess.Popen(
            [str(DAB), "serve", "--port", str(self.port), "--log-level", "warning"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "dab serve exited"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=3).json()["status"] == "ok":
                    return
            time.sleep(0.5)
        raise TimeoutError("dab serve did not become healthy")

    def sigkill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        kill_head(self.state_dir)

    def restart(self) -> None:
        """SIGKILL the service and its embedded head (the whole stack), then start it again
        on a new port."""
        self.sigkill()
        kill_head(self.state_dir)
        time.sleep(1)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start()


def service_env(state_dir: Path, **settings: str) -> dict[str, str]:
    """This process's environment without DAB_/RAY_ variables, plus the embedded stack's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAB_", "RAY_"))}
    env.update(DAB_STATE_DIR=str(state_dir), DAB_POLL_INTERVAL_S="0.5", DAB_RAY_NUM_CPUS="2", **settings)
    return env
