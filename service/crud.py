"""Queries and updates of sweeps and suites. Functions take a `Session` and commit what they
change."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.core.errors import ConflictError, NotFoundError
from service.db.models import ACTIVE_STATES, TERMINAL_STATES, Suite, Sweep, utcnow


def get_sweep(session: Session, sweep_id: str) -> Sweep:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise NotFoundError(f"no sweep {sweep_id!r}", field="sweep_id")
    return sweep


def find_by_idempotency_key(session: Session, key: str) -> Sweep | None:
    return session.scalars(select(Sweep).where(Sweep.idempotency_key == key)).first()


_Keyed = TypeVar("_Keyed", Sweep, Suite)


def _insert_once(
    session: Session,
    row: _Keyed,
    rows: Sequence[Any],
    find: Callable[[Session, str], _Keyed | None],
    conflict: Callable[[_Keyed], ConflictError],
) -> _Keyed:
    """Insert `row` (and `rows` with it, in one transaction). When a concurrent insert took
    the same idempotency key first: that row if it has the same spec hash, else `conflict`."""
    session.add(row)
    session.add_all(rows)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        if row.idempotency_key is None:
            raise
        other = find(session, row.idempotency_key)
        if other is None:
            raise
        if other.spec_hash != row.spec_hash:
            raise conflict(other) from None
        return other
    return row


def create_sweep(session: Session, sweep: Sweep) -> Sweep:
    """Insert `sweep`. A concurrent insert with the same idempotency key returns that sweep
    (same body) or raises ConflictError (another body)."""
    return _insert_once(session, sweep, (), find_by_idempotency_key, idempotency_conflict)


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


def count_in_states(session: Session, states: Sequence[str]) -> int:
    return int(session.scalar(select(func.count()).select_from(Sweep).where(Sweep.state.in_(states))) or 0)


def admission_order(session: Session) -> list[Sweep]:
    """Sweeps that may be started, in the order they are: queued ones without a driver yet and
    waiting ones, highest priority first, then in submission order (a suite's members in the
    order it lists them)."""
    return list(
        session.scalars(
            select(Sweep)
            .where(((Sweep.state == "queued") & Sweep.ray_job_id.is_(None)) | (Sweep.state == "waiting"))
            .order_by(Sweep.priority.desc(), Sweep.created_at, Sweep.member_index, Sweep.id)
        )
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


# -- suites ----------------------------------------------------------------------------------


def get_suite(session: Session, suite_id: str) -> Suite:
    suite = session.get(Suite, suite_id)
    if suite is None:
        raise NotFoundError(f"no suite {suite_id!r}", field="suite_id")
    return suite


def find_suite_by_idempotency_key(session: Session, key: str) -> Suite | None:
    return session.scalars(select(Suite).where(Suite.idempotency_key == key)).first()


def suite_idempotency_conflict(other: Suite) -> ConflictError:
    return ConflictError(
        f"Idempotency-Key was already used for suite {other.id} with different members",
        field="Idempotency-Key",
        suite_id=other.id,
    )


def create_suite(session: Session, suite: Suite, members: Sequence[Sweep]) -> Suite:
    """Insert `suite` and its member sweeps in one transaction. A concurrent insert with the
    same idempotency key returns that suite (same members) or raises ConflictError."""
    return _insert_once(session, suite, members, find_suite_by_idempotency_key, suite_idempotency_conflict)


def suite_members(session: Session, suite_id: str) -> list[Sweep]:
    return members_of_suites(session, [suite_id]).get(suite_id, [])


def members_of_suites(session: Session, suite_ids: Sequence[str]) -> dict[str, list[Sweep]]:
    """suite id -> its member sweeps in listed order, for many suites in one query."""
    out: dict[str, list[Sweep]] = {}
    if not suite_ids:
        return out
    query = (
        select(Sweep).where(Sweep.suite_id.in_(list(suite_ids))).order_by(Sweep.suite_id, Sweep.member_index)
    )
    for sweep in session.scalars(query):
        out.setdefault(str(sweep.suite_id), []).append(sweep)
    return out


def list_suites(session: Session, *, limit: int, offset: int) -> tuple[list[Suite], int]:
    rows = session.scalars(
        select(Suite).order_by(Suite.created_at.desc(), Suite.id).limit(limit).offset(offset)
    ).all()
    return list(rows), int(session.scalar(select(func.count()).select_from(Suite)) or 0)


def update_suite(session: Session, suite_id: str, **fields: Any) -> Suite:
    suite = get_suite(session, suite_id)
    for k, v in fields.items():
        setattr(suite, k, v)
    suite.updated_at = utcnow()
    session.commit()
    return suite


def unfinalized_suites(session: Session) -> list[str]:
    """Suites without a stored report whose members have all ended."""
    open_ids = select(Sweep.suite_id).where(Sweep.suite_id.is_not(None), Sweep.state.in_(ACTIVE_STATES))
    return list(
        session.scalars(
            select(Suite.id)
            .where(Suite.finalized_at.is_(None), Suite.id.not_in(open_ids))
            .order_by(Suite.created_at)
        )
    )


def as_utc(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes for timezone-aware columns: they are UTC."""
    if dt is None or dt.tzinfo is not None:
        return dt
    from datetime import UTC

    return dt.replace(tzinfo=UTC)


__all__ = [
    "active_sweeps",
    "admission_order",
    "as_utc",
    "count_active",
    "count_by_state",
    "count_in_states",
    "create_suite",
    "create_sweep",
    "find_by_idempotency_key",
    "find_suite_by_idempotency_key",
    "get_suite",
    "get_sweep",
    "idempotency_conflict",
    "list_suites",
    "list_sweeps",
    "members_of_suites",
    "suite_idempotency_conflict",
    "suite_members",
    "unfinalized_suites",
    "unfinalized_sweeps",
    "update_suite",
    "update_sweep",
]
