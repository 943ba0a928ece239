"""Serving the app from a thread on a free loopback port: what `dab run` does, and what tests do."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

import httpx
import uvicorn


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ThreadedServer:
    """``with ThreadedServer(app) as srv:`` serves `app` at ``srv.url`` until the block ends
    (the app's lifespan runs: the embedded Ray head is stopped on the way out)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=self.port, log_level="warning", timeout_graceful_shutdown=5)
        )
        self.thread = threading.Thread(target=self.server.run, name="dab-service", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.05)
        return self

    def wait_healthy(self, timeout_s: float = 180.0) -> dict[str, Any]:
        """Wait until /healthz says ok (Ray up); raise if it says degraded or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            body = httpx.get(f"{self.url}/healthz", timeout=5).json()
            if body["status"] == "ok":
                return dict(body)
            if body["status"] == "degraded":
                raise RuntimeError(f"the service is degraded: {body.get('detail')}")
            time.sleep(0.5)
        raise TimeoutError("the service did not become healthy")

    def stop(self, timeout_s: float = 120.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


__all__ = ["ThreadedServer", "free_port"]
