"""End-to-end fixtures: the service with its embedded Ray head and MLflow on SQLite, served over
real HTTP on a loopback port. Everything is real; the tests are marked slow."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from service.app import create_app
from service.core.config import Settings
from service.server import ThreadedServer

HERE = Path(__file__).resolve().parent
TINY = yaml.safe_load((HERE / "tiny.yaml").read_text())
TERMINAL = ("finished", "failed", "cancelled")


def tiny_spec(**params: Any) -> dict[str, Any]:
    spec = yaml.safe_load((HERE / "tiny.yaml").read_text())
    spec["params"].update(params)
    return spec  # type: ignore[no-any-return]


def wait_for(
    http: httpx.Client, sweep_id: str, until: Callable[[dict[str, Any]], bool], timeout_s: float = 300
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        s = http.get(f"/v1/sweeps/{sweep_id}").json()
        if until(s):
            return dict(s)
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"sweep {sweep_id} is still {s['state']} ({s.get('counts')}): {s.get('message')}"
            )
        time.sleep(0.5)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ThreadedServer, Settings, httpx.Client]]:
    settings = Settings(state_dir=tmp_path_factory.mktemp("dab"), poll_interval_s=0.5, ray_num_cpus=2)
    with ThreadedServer(create_app(settings)) as srv:
        srv.wait_healthy()
        with httpx.Client(base_url=srv.url, timeout=120) as http:
            yield srv, settings, http


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database (127.0.0.1:5432, or DAB_TEST_PG_URL's server), dropped after."""
    import os
    import uuid

    import psycopg2

    admin_url = os.environ.get("DAB_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        admin = psycopg2.connect(admin_url, connect_timeout=5)
    except psycopg2.OperationalError as e:
        pytest.skip(f"PostgreSQL is not reachable at {admin_url}: {e}")
    admin.autocommit = True
    name = f"dab_e2e_test_{uuid.uuid4().hex[:8]}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://", 1) + f"/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


@pytest.fixture(name="tiny_spec")
def _tiny_spec() -> Callable[..., dict[str, Any]]:
    return tiny_spec


@pytest.fixture(name="wait_for")
def _wait_for() -> Callable[..., dict[str, Any]]:
    return wait_for
