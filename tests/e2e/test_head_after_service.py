"""A service on a cluster whose Ray head is not up yet (or is restarting) keeps trying to connect:
/healthz says why meanwhile, a sweep submitted then waits queued, and once the head answers the
service connects and runs it (`service.app`, the reconciler thread's start-up loop)."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.core.config import Settings
from service.server import ThreadedServer
from tests.e2e.cluster import RayCluster, harness, wait_until
from tests.e2e.conftest import tiny_spec

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_the_service_connects_once_the_head_comes_up(tmp_path: Path) -> None:
    with harness() as h:
        # Only a head: the tiny sweep's trials fit its CPU. Not started yet.
        ray = RayCluster(h, workers=(), head_cpus=2, env={"PYTHONPATH": str(REPO)})
        settings = Settings(
            state_dir=tmp_path / "state",
            ray_address=ray.jobs_address,
            ray_auth_token=ray.token,
            # one machine: the head's driver job reads what the service writes here
            storage_uri=str(tmp_path / "sweeps"),
            storage_shared=True,
            driver_python=sys.executable,
            poll_interval_s=0.5,
        )
        try:
            with (
                ThreadedServer(create_app(settings)) as srv,
                httpx.Client(base_url=srv.url, timeout=60) as http,
            ):
                health = wait_until(
                    "/healthz degraded",
                    lambda: (r := http.get("/healthz")).status_code == 503 and r.json(),
                    60,
                    0.5,
                )
                assert health["status"] == "degraded" and "cannot reach the Ray jobs API" in health["detail"]
                r = http.post("/v1/sweeps", json=tiny_spec(steps=20))
                assert r.status_code == 202, r.text
                sweep_id = r.json()["id"]
                assert http.get(f"/v1/sweeps/{sweep_id}").json()["state"] == "queued"

                ray.start()  # the head comes up after the service
                wait_until("/healthz ok", lambda: http.get("/healthz").json()["status"] == "ok", 120, 0.5)
                final = wait_until(
                    "the sweep ended",
                    lambda: (
                        s
                        if (s := http.get(f"/v1/sweeps/{sweep_id}").json())["state"] in ("finished", "failed")
                        else None
                    ),
                    300,
                    1.0,
                )
                assert final["state"] == "finished", final.get("message")
                assert final["counts"]["finished"] == 4 and final["job_attempts"] == 1
        finally:
            ray.stop()
