"""The MLflow store: the client, SQLite set-up (WAL, busy timeout) and the default artifact root.

`sqlite_pragmas` is the one place that says how this project's SQLite databases are opened:
the MLflow tracking store (through `configure_sqlite`) and the service's own database
(`service.db.session.make_engine`) both use it. MLflow 3.17 sets ``busy_timeout`` itself on
every session, but not WAL, and without WAL a writer blocks readers (the service, the MLflow
UI) and every commit pays a rollback-journal fsync.

Importing this module is cheap (no MLflow, Ray or SQLAlchemy until a function needs them), so
the service's database layer can import it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_BUSY_TIMEOUT_MS = 30_000


def sqlite_pragmas(dbapi_connection: Any, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> None:
    """Put one SQLite connection in WAL mode with ``synchronous=NORMAL`` and a busy timeout.

    Meant as a SQLAlchemy ``connect`` listener body (it takes the DBAPI connection) and usable on
    a plain `sqlite3.Connection`; any other connection (PostgreSQL's) is left alone. WAL lets
    readers go on while one process writes and is a persistent property of the file;
    ``synchronous=NORMAL`` is safe in WAL (a crash loses no committed transaction) and saves an
    fsync a commit; the busy timeout makes a writer wait for another instead of failing with
    "database is locked".

    Args:
        dbapi_connection: the DBAPI connection SQLAlchemy hands a ``connect`` listener.
        busy_timeout_ms: how long a statement waits for a lock held by another connection.
    """
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    finally:
        cursor.close()


def _main_database_file(dbapi_connection: sqlite3.Connection) -> Path | None:
    cursor = dbapi_connection.cursor()
    try:
        main = next((row[2] for row in cursor.execute("PRAGMA database_list") if row[1] == "main"), "")
    finally:
        cursor.close()
    return Path(main).resolve() if main else None


_sqlite_files: dict[str, int] = {}  # the stores configure_sqlite was called for -> busy timeout
_sqlite_lock = threading.Lock()


def sqlite_path(tracking_uri: str) -> str | None:
    """The database file of a ``sqlite:///`` URI (absolute with four slashes), else None."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri[len("sqlite:///") :].split("?", 1)[0]
    return None if path in ("", ":memory:") else path


def configure_sqlite(tracking_uri: str, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> None:
    """Make a ``sqlite:`` tracking store safe and fast for several writers; no-op otherwise.

    Switches the database file to WAL (so every later reader and writer gets it) and registers,
    once per process, a SQLAlchemy ``connect`` hook that applies `sqlite_pragmas` to every new
    connection to a file configured here. MLflow makes its own engines, so the hook listens on
    every `Engine`; other SQLite databases of the process (the service's, which sets the same
    pragmas on its own engine) are left alone. Measured here: create_run 25 -> 7 ms, log_batch
    of 36 values 45 -> 10 ms.
    """
    path = sqlite_path(tracking_uri)
    if path is None:
        return
    file = Path(path).resolve()
    file.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(file, timeout=busy_timeout_ms / 1000)) as conn:
        sqlite_pragmas(conn, busy_timeout_ms)
    with _sqlite_lock:
        first = not _sqlite_files
        _sqlite_files[str(file)] = int(busy_timeout_ms)
        if not first:
            return
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            if not isinstance(dbapi_connection, sqlite3.Connection):
                return
            main = _main_database_file(dbapi_connection)
            timeout = _sqlite_files.get(str(main)) if main else None
            if timeout is not None:
                sqlite_pragmas(dbapi_connection, timeout)

        event.listen(Engine, "connect", _on_connect)


def default_artifact_root(tracking_uri: str) -> str | None:
    """Where a sweep's artifacts go when no root is given.

    For a ``sqlite:`` store: ``artifacts/`` beside the database file (MLflow's own default is
    ``./mlruns`` in the current directory, which scatters artifacts wherever the driver was
    started). For a tracking server: None, so the server's artifact store decides.
    """
    path = sqlite_path(tracking_uri)
    if path is None:
        return None
    return Path(path).resolve().parent.joinpath("artifacts").as_uri()


def make_client(tracking_uri: str) -> MlflowClient:
    """An `MlflowClient` for `tracking_uri`, with a ``sqlite:`` store configured first."""
    from mlflow import MlflowClient

    configure_sqlite(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)
