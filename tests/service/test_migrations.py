"""Alembic migrations: an upgrade keeps old sweeps, and the migrations match the models."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from service.db.models import Base
from service.db.session import make_engine, upgrade


def test_upgrade_keeps_old_sweeps(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine, "0001")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO sweeps (id, name, experiment, state, spec, spec_hash, trial_count, cell_count, "
                "sweep_dir, job_attempts, created_at, updated_at) VALUES ('old1', 'old', 'sorting', 'finished', "
                "'{}', 'h', 4, 2, '/x', 1, :now, :now)"
            ),
            {"now": now},
        )
    upgrade(engine)  # to head
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT id, state, counts, progress, plan, results, finalized_at FROM sweeps")
        ).one()
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    # kept, with the read model's columns empty: the reconciler finalizes it on its first pass
    assert tuple(row) == ("old1", "finished", None, 0.0, None, None, None)
    assert version == "0003"
    upgrade(engine)  # again: nothing to do
    engine.dispose()


def test_migrations_match_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
