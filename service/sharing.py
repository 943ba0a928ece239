"""Shared trials run once: which sweep of this service runs each trial, by its config hash.

A trial's key (`workers.spec.trial_key_of`: the hash of its resolved config) is the same in
every sweep that holds the same config. The `TrialOwner` table maps each key to the one sweep
that runs it:

* When a sweep is admitted (its driver is about to be submitted), `plan_shares` looks up each
  of its keys. A key nobody holds, or one held by a sweep that has ended without finishing it,
  becomes this sweep's (``claimed``). A key whose run is FINISHED in another sweep is
  **adopted**: the driver records that run as the trial's (an MLflow link; nothing is copied
  or run). A key another active sweep has claimed is **waited for**: the driver does not run
  it, and the sweep goes ``waiting`` when the rest is done; it is admitted again once the
  owner has finished the trial (then adopted) or ended without it (then claimed and run).
* The reconciler marks a key ``finished`` with its run when the owner's driver reports the
  trial finished (`record_finished`), and an ended sweep releases the keys it claimed but did
  not finish (`release`).

What the driver is told travels in the sweep's location as ``shared.json``
(`workers._files.SHARED_FILE`): ``{"adopt": {key: {"run_id", "sweep_id"}}, "wait": {key:
sweep_id}}``. All of this runs under the manager's submit lock in one service process, so two
admissions never race for a key; the primary key on ``trial_key`` would refuse it anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.db.models import ACTIVE_STATES, CLAIMED, OWNED_FINISHED, Sweep, TrialOwner, utcnow

#: Keys per IN (...) query: well under SQLite's and PostgreSQL's bound-parameter limits.
_CHUNK = 500


@dataclass
class Shares:
    """What a sweep's driver is told at admission (``shared.json``)."""

    adopt: dict[str, dict[str, str]] = field(default_factory=dict)  # key -> {run_id, sweep_id}
    wait: dict[str, str] = field(default_factory=dict)  # key -> the sweep that runs it

    def to_json(self) -> dict[str, Any]:
        return {"adopt": self.adopt, "wait": self.wait}


def _chunks(keys: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(keys), _CHUNK):
        yield keys[i : i + _CHUNK]


def owners(session: Session, keys: Sequence[str]) -> dict[str, TrialOwner]:
    out: dict[str, TrialOwner] = {}
    for chunk in _chunks(list(keys)):
        for row in session.scalars(select(TrialOwner).where(TrialOwner.trial_key.in_(chunk))):
            out[row.trial_key] = row
    return out


def _active(session: Session, sweep_ids: Iterable[str]) -> set[str]:
    ids = sorted(set(sweep_ids))
    if not ids:
        return set()
    return set(session.scalars(select(Sweep.id).where(Sweep.id.in_(ids), Sweep.state.in_(ACTIVE_STATES))))


def plan_shares(session: Session, sweep_id: str, keys: Sequence[str]) -> Shares:
    """Claim, adopt or wait for each of the sweep's `keys` (see the module docstring); commits."""
    found = owners(session, keys)
    active = _active(session, (o.sweep_id for o in found.values() if o.state == CLAIMED))
    shares = Shares()
    now = utcnow()
    for key in keys:
        owner = found.get(key)
        if owner is None:
            session.add(TrialOwner(trial_key=key, sweep_id=sweep_id, state=CLAIMED, updated_at=now))
        elif owner.sweep_id == sweep_id:
            continue  # its own: claimed, or finished by an earlier driver (the driver skips it)
        elif owner.state == OWNED_FINISHED and owner.run_id:
            shares.adopt[key] = {"run_id": owner.run_id, "sweep_id": owner.sweep_id}
        elif owner.sweep_id in active:
            shares.wait[key] = owner.sweep_id
        else:  # claimed by a sweep that ended without finishing it: this one runs it
            owner.sweep_id, owner.state, owner.run_id, owner.updated_at = sweep_id, CLAIMED, None, now
    session.commit()
    return shares


def waits_resolved(session: Session, sweep_id: str, wait: Mapping[str, str]) -> bool:
    """True when no other active sweep still holds a key this sweep waits for."""
    found = owners(session, list(wait))
    holders = {o.sweep_id for o in found.values() if o.state == CLAIMED and o.sweep_id != sweep_id}
    return not _active(session, holders)


def record_finished(session: Session, sweep_id: str, finished: Mapping[str, str]) -> int:
    """Mark the keys this sweep's driver reported finished (key -> run id) as its finished runs;
    commits. A key another sweep owns already is left alone. Returns how many rows changed."""
    found = owners(session, list(finished))
    now = utcnow()
    changed = 0
    for key, run_id in finished.items():
        owner = found.get(key)
        if owner is None:
            session.add(
                TrialOwner(
                    trial_key=key, sweep_id=sweep_id, state=OWNED_FINISHED, run_id=run_id, updated_at=now
                )
            )
        elif owner.sweep_id == sweep_id and (owner.state != OWNED_FINISHED or owner.run_id != run_id):
            owner.state, owner.run_id, owner.updated_at = OWNED_FINISHED, run_id, now
        else:
            continue
        changed += 1
    if changed:
        session.commit()
    return changed


def release(session: Session, sweep_id: str) -> int:
    """An ended sweep gives up the keys it claimed and did not finish; commits."""
    result = session.execute(
        delete(TrialOwner).where(TrialOwner.sweep_id == sweep_id, TrialOwner.state == CLAIMED)
    )
    session.commit()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def finished_count(session: Session, keys: Sequence[str]) -> int:
    """How many of `keys` have a FINISHED run in some sweep of this service (a preview's
    "already done")."""
    return sum(1 for o in owners(session, keys).values() if o.state == OWNED_FINISHED)


__all__ = [
    "Shares",
    "finished_count",
    "owners",
    "plan_shares",
    "record_finished",
    "release",
    "waits_resolved",
]
