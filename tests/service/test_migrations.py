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
    assert version == "0004"
    upgrade(engine)  # again: nothing to do
    engine.dispose()


def test_upgrade_backfills_trial_owners(db_url: str) -> None:
    """A trial an old sweep finished becomes that sweep's: a sweep submitted after the upgrade
    adopts its run instead of running it again."""
    engine = make_engine(db_url)
    upgrade(engine, "0003")
    now = datetime.now(UTC)
    trials = (
        '{"k1": {"state": "finished", "run_id": "r1"}, "k2": {"state": "failed", "run_id": "r2"},'
        ' "k3": {"state": "skipped", "run_id": "r3"}, "k4": {"state": "finished", "run_id": null}}'
    )
    with engine.begin() as conn:
        for sid, t in (("old1", trials), ("old2", '{"k1": {"state": "finished", "run_id": "r9"}}')):
            conn.execute(
                text(
                    "INSERT INTO sweeps (id, name, experiment, state, spec, spec_hash, trial_count, cell_count, "
                    "sweep_dir, job_attempts, created_at, updated_at, progress, trials) VALUES (:id, 'old', "
                    "'sorting', 'finished', '{}', 'h', 4, 2, '/x', 1, :now, :now, 1.0, :trials)"
                ),
                {"id": sid, "now": now, "trials": t},
            )
            now = now.replace(microsecond=(now.microsecond + 1) % 1_000_000)
    upgrade(engine)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT trial_key, sweep_id, state, run_id FROM trial_owners ORDER BY trial_key")
        ).all()
        member = conn.execute(
            text("SELECT priority, suite_id, wait_rounds FROM sweeps WHERE id = 'old1'")
        ).one()
    engine.dispose()
    # k1: the first sweep that finished it; k2 failed and k4 has no run: nobody's
    assert [tuple(r) for r in rows] == [("k1", "old1", "finished", "r1"), ("k3", "old1", "finished", "r3")]
    assert tuple(member) == (0, None, 0)


def test_migrations_match_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []
