"""the read model: each sweep's snapshot (progress, ETA, last error, per-trial states), its
static trial plan, and the results and report stored once when it ends

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.add_column(sa.Column("plan", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("progress", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("eta_s", sa.Float(), nullable=True))
        batch.add_column(sa.Column("last_error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("trials", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("snapshot_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("results", sa.Text(), nullable=True))
        batch.add_column(sa.Column("results_runs", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("report", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("finalized_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        for name in (
            "finalized_at",
            "report",
            "results",
            "snapshot_at",
            "trials",
            "last_error",
            "eta_s",
            "progress",
            "plan",
        ):
            batch.drop_column(name)
