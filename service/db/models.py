"""The service's tables. MLflow is the record of trials; this database holds sweeps."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SWEEP_STATES = ("queued", "running", "cancelling", "finished", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running", "cancelling")
TERMINAL_STATES = ("finished", "failed", "cancelled")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Sweep(Base):
    """One submitted sweep: its spec, where it runs, and its state."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    experiment: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the validated spec as JSON data
    spec_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the spec's canonical JSON
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    trial_count: Mapped[int] = mapped_column(Integer)
    cell_count: Mapped[int] = mapped_column(Integer)
    sweep_dir: Mapped[str] = mapped_column(Text)
    ray_job_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    job_attempts: Mapped[int] = mapped_column(Integer, default=0)
    mlflow_experiment_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    parent_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    counts: Mapped[dict[str, int] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (Index("ix_sweeps_state_created", "state", "created_at"),)


__all__ = ["ACTIVE_STATES", "SWEEP_STATES", "TERMINAL_STATES", "Base", "Sweep", "utcnow"]
