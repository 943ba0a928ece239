"""`service.sharing` on both databases: claim, adopt, wait, take over a stale claim, release."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service import sharing
from service.db.models import Sweep, TrialOwner
from service.db.session import make_engine, upgrade


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    upgrade(engine)
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def _sweep(s: Session, sweep_id: str, state: str) -> None:
    s.add(
        Sweep(
            id=sweep_id,
            name=sweep_id,
            experiment="sorting",
            state=state,
            spec={},
            spec_hash="h",
            trial_count=1,
            cell_count=1,
            sweep_dir="/x",
            job_attempts=0,
        )
    )
    s.commit()


def _owners(s: Session) -> dict[str, tuple[str, str, Any]]:
    return {o.trial_key: (o.sweep_id, o.state, o.run_id) for o in s.query(TrialOwner)}


def test_claim_adopt_wait_and_take_over(sessions: sessionmaker[Session]) -> None:
    with sessions() as s:
        for sid, state in (("a", "running"), ("b", "running"), ("gone", "failed"), ("c", "queued")):
            _sweep(s, sid, state)
        assert sharing.plan_shares(s, "a", ["k1", "k2"]).to_json() == {"adopt": {}, "wait": {}}
        assert sharing.record_finished(s, "a", {"k1": "run-1"}) == 1
        assert sharing.record_finished(s, "a", {"k1": "run-1"}) == 0  # nothing changed
        s.add(TrialOwner(trial_key="k3", sweep_id="gone", state="claimed"))
        s.commit()
        shares = sharing.plan_shares(s, "b", ["k1", "k2", "k3", "k4"])
        # k1: a finished it (adopt); k2: a runs it (wait); k3: its claimant ended (b takes it)
        assert shares.adopt == {"k1": {"run_id": "run-1", "sweep_id": "a"}}
        assert shares.wait == {"k2": "a"}
        assert _owners(s) == {
            "k1": ("a", "finished", "run-1"),
            "k2": ("a", "claimed", None),
            "k3": ("b", "claimed", None),
            "k4": ("b", "claimed", None),
        }
        assert not sharing.waits_resolved(s, "b", shares.wait)
        # b cannot record a run for a trial a owns
        assert sharing.record_finished(s, "b", {"k2": "run-b"}) == 0
        # a ends without finishing k2: released, so b's wait is over and b claims it next time
        assert sharing.release(s, "a") == 1
        assert sharing.waits_resolved(s, "b", shares.wait)
        again = sharing.plan_shares(s, "b", ["k1", "k2", "k3", "k4"])
        assert again.adopt == shares.adopt and again.wait == {}
        assert _owners(s)["k2"] == ("b", "claimed", None)
        assert sharing.finished_count(s, ["k1", "k2", "nope"]) == 1


def test_many_keys_are_looked_up_in_chunks(sessions: sessionmaker[Session]) -> None:
    keys = [f"k{i:05d}" for i in range(1200)]  # over the 500-key chunk, on both databases
    with sessions() as s:
        _sweep(s, "a", "running")
        sharing.plan_shares(s, "a", keys)
        assert sharing.record_finished(s, "a", {k: f"r{k}" for k in keys}) == 1200
        assert sharing.finished_count(s, keys) == 1200
