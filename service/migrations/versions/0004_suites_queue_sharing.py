"""suites, the queue (priority; the waiting state) and the trial owners that make a trial
shared by several sweeps run once

The trial owners are backfilled from the sweeps' snapshots: every trial a sweep reported
finished (with its run) becomes that sweep's, so a sweep submitted after the upgrade adopts it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "suites",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("description", sa.Text(), nullable=False, server_default=""),
        sa.Column("spec_hash", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True, unique=True),
        sa.Column("priority", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("trial_count", sa.Integer(), nullable=False),
        sa.Column("distinct_trials", sa.Integer(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.Column("finalized_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "trial_owners",
        sa.Column("trial_key", sa.String(64), primary_key=True),
        sa.Column("sweep_id", sa.String(32), nullable=False, index=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("sweeps") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("suite_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("member_index", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("member_file", sa.Text(), nullable=True))
        batch.add_column(sa.Column("wait_rounds", sa.Integer(), nullable=False, server_default="0"))
        batch.create_index("ix_sweeps_suite_id", ["suite_id"])
    _backfill_owners()


def _backfill_owners() -> None:
    conn = op.get_bind()
    sweeps = sa.table("sweeps", sa.column("id"), sa.column("trials"), sa.column("created_at"))
    owners = sa.table(
        "trial_owners",
        sa.column("trial_key"),
        sa.column("sweep_id"),
        sa.column("state"),
        sa.column("run_id"),
        sa.column("updated_at"),
    )
    seen: set[str] = set()
    rows = []
    now = datetime.now(UTC)
    for sweep_id, trials, _ in conn.execute(sa.select(sweeps).order_by(sweeps.c.created_at)):
        if isinstance(trials, str):
            trials = json.loads(trials)
        for key, t in (trials or {}).items():
            if key in seen or not isinstance(t, dict):
                continue
            if t.get("state") in ("finished", "skipped") and t.get("run_id"):
                seen.add(key)
                rows.append(
                    {
                        "trial_key": key,
                        "sweep_id": sweep_id,
                        "state": "finished",
                        "run_id": t["run_id"],
                        "updated_at": now,
                    }
                )
    if rows:
        op.bulk_insert(owners, rows)


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_index("ix_sweeps_suite_id")
        for name in ("wait_rounds", "member_file", "member_index", "suite_id", "priority"):
            batch.drop_column(name)
    op.drop_table("trial_owners")
    op.drop_table("suites")
