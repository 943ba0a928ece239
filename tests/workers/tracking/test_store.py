"""`workers.tracking.store`: the SQLite set-up shared with the service's DB, the artifact root."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, text

from workers.tracking import configure_sqlite, default_artifact_root, make_client, sqlite_pragmas


def _pragmas(conn: Connection) -> tuple[object, ...]:
    """(journal_mode, synchronous, busy_timeout) of a connection."""
    return tuple(
        conn.execute(text(f"PRAGMA {p}")).scalar() for p in ("journal_mode", "synchronous", "busy_timeout")
    )


def test_configure_sqlite_sets_wal_and_fast_commits(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/sub/m.db"
    configure_sqlite(uri)
    assert sqlite3.connect(tmp_path / "sub" / "m.db").execute("PRAGMA journal_mode").fetchone() == ("wal",)

    with create_engine(uri).connect() as conn:  # every SQLAlchemy connection gets the pragmas
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30_000
    configure_sqlite("http://127.0.0.1:5000")  # not SQLite: nothing to do, no error
    other = tmp_path / "service.db"  # another SQLite database of the process: left alone
    with create_engine(f"sqlite:///{other}").connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "delete"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL, SQLite's default


def test_sqlite_pragmas_sets_wal_normal_and_the_busy_timeout(tmp_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / "a.db")) as conn:
        sqlite_pragmas(conn, busy_timeout_ms=1234)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (1,)
        assert conn.execute("PRAGMA busy_timeout").fetchone() == (1234,)
    sqlite_pragmas(object())  # not a SQLite connection (PostgreSQL's): left alone, no error


def test_the_service_db_and_the_tracking_store_get_the_same_settings(tmp_path: Path) -> None:
    """One helper for both: the service's engine and MLflow's own engine on its store."""
    from service.db.session import make_engine

    engine = make_engine(f"sqlite:///{tmp_path}/service/dab.db")
    with engine.connect() as conn:
        service = _pragmas(conn)
    assert service == ("wal", 1, 30_000)

    uri = f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    make_client(uri).search_experiments(max_results=1)  # MLflow makes its engine and schema
    from mlflow.store.db.utils import create_sqlalchemy_engine_with_retry

    with create_sqlalchemy_engine_with_retry(uri).connect() as conn:  # how MLflow's store connects
        assert _pragmas(conn) == service


@pytest.mark.parametrize("uri", ["sqlite:////abs/dir/m.db", "sqlite:///rel.db"])
def test_default_artifact_root_is_beside_a_sqlite_store(uri: str) -> None:
    root = default_artifact_root(uri)
    assert root is not None and root.startswith("file://") and root.endswith("/artifacts")
    assert default_artifact_root("https://mlflow.example") is None
