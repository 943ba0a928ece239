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
from tests.pg import fresh_pg_database

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
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    with fresh_pg_database("dab_e2e_test") as url:
        yield url


@pytest.fixture(name="tiny_spec")
def _tiny_spec() -> Callable[..., dict[str, Any]]:
    return tiny_spec


@pytest.fixture(name="wait_for")
def _wait_for() -> Callable[..., dict[str, Any]]:
    return wait_for
