"""The service's tables. MLflow is the record of trials; this database holds sweeps, suites and
which sweep owns each trial.

A sweep's row is its read model: what ``GET /v1/sweeps/{id}`` and the list answer is in the row
and nothing else. The reconciler (`service.reconciler`) writes the snapshot columns while the
sweep is active (state, counts, progress, ETA, ids, last error, per-trial states) and, once it
ends, the results and the report (``finalized_at``). The large columns are loaded only by the
queries that need them (``deferred``), so a list reads small rows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SWEEP_STATES = ("queued", "running", "waiting", "cancelling", "finished", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running", "waiting", "cancelling")
#: States in which a sweep holds one of the service's driver slots (DAB_MAX_ACTIVE_SWEEPS).
DRIVER_STATES = ("running", "cancelling")
#: `TrialOwner.state`: a sweep admitted to run the trial holds it (``claimed``), or its run is
#: FINISHED (``finished``, with the run's id): any later sweep adopts that run.
CLAIMED, OWNED_FINISHED = "claimed", "finished"
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
    # The static plan, written once at submission: [[trial_key, index, cell_key, seed, steps], ...].
    plan: Mapped[list[list[Any]] | None] = mapped_column(JSON, nullable=True, deferred=True)
    # The snapshot, written by the reconciler:
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    eta_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # trial_key -> {state, attempts, last_step, run_id, error}, as the driver last reported.
    trials: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, deferred=True)
    snapshot_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The default results (the spec's metric, its declared aggregation) as the JSON body the
    # API answers, and how many FINISHED runs they hold: the reconciler recomputes them when a
    # trial finishes (only FINISHED runs count, and a finished run's values never change), and
    # once more when the sweep ends.
    results: Mapped[str | None] = mapped_column(Text, nullable=True, deferred=True)
    results_runs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Written once when the sweep has ended: the report ({markdown, figures: {name: base64
    # PNG}, artifact_path}).
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, deferred=True)
    finalized_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The queue and suites: a queued sweep starts when a driver slot frees, highest priority
    # first, then in submission order. A suite's members name it.
    priority: Mapped[int] = mapped_column(Integer, default=0)
    suite_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    member_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    member_file: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Driver submissions that were a waiting sweep's next round, not a crash's resubmission:
    # `max_job_attempts` bounds job_attempts - wait_rounds.
    wait_rounds: Mapped[int] = mapped_column(Integer, default=0)

    __table_args__ = (Index("ix_sweeps_state_created", "state", "created_at"),)


class Suite(Base):
    """A submitted suite: its members are sweeps (``Sweep.suite_id``); its state is theirs."""

    __tablename__ = "suites"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    spec_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the members' specs and files
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True, nullable=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    trial_count: Mapped[int] = mapped_column(Integer)  # over the members, shared trials in each
    distinct_trials: Mapped[int] = mapped_column(Integer)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Once every member has ended: the suite's report ({markdown, figures, data,
    # artifact_path}) and the suite-level MLflow run it was logged to.
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, deferred=True)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    finalized_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class TrialOwner(Base):
    """Which sweep runs a trial (by its config hash), across every sweep of this service: the
    index that makes a shared trial run once (`service.sharing`)."""

    __tablename__ = "trial_owners"

    trial_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    sweep_id: Mapped[str] = mapped_column(String(32), index=True)
    state: Mapped[str] = mapped_column(String(16))  # CLAIMED | OWNED_FINISHED
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


__all__ = [
    "ACTIVE_STATES",
    "CLAIMED",
    "DRIVER_STATES",
    "OWNED_FINISHED",
    "SWEEP_STATES",
    "TERMINAL_STATES",
    "Base",
    "Suite",
    "Sweep",
    "TrialOwner",
    "utcnow",
]
