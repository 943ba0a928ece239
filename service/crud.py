"""Queries and updates of sweeps. Functions take a `Session` and commit what they change."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.core.errors import ConflictError, NotFoundError
from service.db.models import ACTIVE_STATES, TERMINAL_STATES, Sweep, utcnow


def get_sweep(session: Session, sweep_id: str) -> Sweep:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise NotFoundError(f"no sweep {sweep_id!r}", field="sweep_id")
    return sweep


def find_by_idempotency_key(session: Session, key: str) -> Sweep | None:
    return session.scalars(select(Sweep).where(Sweep.idempotency_key == key)).first()


def create_sweep(session: Session, sweep: Sweep) -> Sweep:
    """Insert `sweep`. A concurrent insert with the same idempotency key returns that sweep
    (same body) or raises ConflictError (another body)."""
    session.add(sweep)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        if sweep.idempotency_key is None:
            raise
        other = find_by_idempotency_key(session, sweep.idempotency_key)
        if other is None:
            raise
        if other.spec_hash != sweep.spec_hash:
            raise idempotency_conflict(other) from None
        return other
    return sweep


def idempotency_conflict(other: Sweep) -> ConflictError:
    return ConflictError(
        f"Idempotency-Key was already used for sweep {other.id} with a different spec",
        field="Idempotency-Key",
        sweep_id=other.id,
    )


def list_sweeps(
    session: Session, *, states: Sequence[str] | None, limit: int, offset: int
) -> tuple[list[Sweep], int]:
    query = select(Sweep)
    count = select(func.count()).select_from(Sweep)
    if states:
        query = query.where(Sweep.state.in_(states))
        count = count.where(Sweep.state.in_(states))
    rows = session.scalars(
        query.order_by(Sweep.created_at.desc(), Sweep.id).limit(limit).offset(offset)
    ).all()
    return list(rows), int(session.scalar(count) or 0)


def active_sweeps(session: Session) -> list[Sweep]:
    return list(
        session.scalars(select(Sweep).where(Sweep.state.in_(ACTIVE_STATES)).order_by(Sweep.created_at))
    )


def unfinalized_sweeps(session: Session) -> list[Sweep]:
    """Ended sweeps whose results and report are not stored yet (MLflow failed at the end)."""
    return list(
        session.scalars(
            select(Sweep)
            .where(Sweep.state.in_(TERMINAL_STATES), Sweep.finalized_at.is_(None))
            .order_by(Sweep.created_at)
        )
    )


def count_active(session: Session) -> int:
    return int(
        session.scalar(select(func.count()).select_from(Sweep).where(Sweep.state.in_(ACTIVE_STATES))) or 0
    )


def count_by_state(session: Session) -> dict[str, int]:
    rows = session.execute(select(Sweep.state, func.count()).group_by(Sweep.state)).all()
    return {state: int(n) for state, n in rows}


def update_sweep(session: Session, sweep_id: str, **fields: Any) -> Sweep:
    sweep = get_sweep(session, sweep_id)
    for k, v in fields.items():
        setattr(sweep, k, v)
    sweep.updated_at = utcnow()
    session.commit()
    return sweep


def as_utc(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes for timezone-aware columns: they are UTC."""
    if dt is None or dt.tzinfo is not None:
        return dt
    from datetime import UTC

    return dt.replace(tzinfo=UTC)


__all__ = [
    "active_sweeps",
    "as_utc",
    "count_active",
    "count_by_state",
    "create_sweep",
    "find_by_idempotency_key",
    "get_sweep",
    "idempotency_conflict",
    "list_sweeps",
    "unfinalized_sweeps",
    "update_sweep",
]
