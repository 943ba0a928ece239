"""Fixtures of the service tests: the database (SQLite and PostgreSQL), and the API served
over real HTTP on a loopback port (without Ray: sweeps stay queued; tests/e2e runs Ray)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.core.config import Settings
from service.server import ThreadedServer
from tests.pg import fresh_pg_database

ROOT = Path(__file__).resolve().parents[2]
TINY = (ROOT / "tests" / "e2e" / "tiny.yaml").read_text()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    with fresh_pg_database("dab_service_test") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test that uses it runs once on SQLite and once on PostgreSQL (emptied after)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'service.db'}"
        return
    url = request.getfixturevalue("pg_url")
    yield url
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        for table in ("sweeps", "suites", "trial_owners", "alembic_version"):
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
    engine.dispose()


def make_settings(tmp_path: Path, db_url: str, **kw: Any) -> Settings:
    return Settings(
        state_dir=tmp_path / "state",
        database_url=db_url,
        data_dirs=[tmp_path / "data"],
        **kw,
    )


class Api:
    """httpx against a served app, plus the settings it runs with."""

    def __init__(self, server: ThreadedServer, settings: Settings) -> None:
        self.server = server
        self.settings = settings
        token = settings.api_token.get_secret_value() if settings.api_token else None
        self.http = httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"} if token else {}, timeout=60
        )

    def submit(
        self, body: str = TINY, content_type: str = "application/yaml", **headers: str
    ) -> httpx.Response:
        return self.http.post(
            "/v1/sweeps", content=body.encode(), headers={"Content-Type": content_type, **headers}
        )


@pytest.fixture
def serve(tmp_path: Path, db_url: str) -> Iterator[Any]:
    """``serve(**settings)`` starts the API (no Ray) on a loopback port; stopped at teardown."""
    servers: list[ThreadedServer] = []

    def start(**kw: Any) -> Api:
        settings = make_settings(tmp_path, db_url, **kw)
        srv = ThreadedServer(create_app(settings, start_ray=False)).start()
        servers.append(srv)
        return Api(srv, settings)

    yield start
    for srv in servers:
        srv.stop()


@pytest.fixture
def api(serve: Any) -> Api:
    return serve()  # type: ignore[no-any-return]
