"""`workers._status`: the status file is the in-memory status, whole, after every write.

The file is assembled from each trial's JSON kept from earlier writes (only changed trials
are encoded again): these tests fail if any change reached the memory but not the file.
No Ray, no MLflow.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from workers._status import STATES, SweepStatus
from workers.storage import open_location


def _trial(i: int) -> Any:
    return SimpleNamespace(
        trial_key=f"k{i:03d}",
        index=i,
        cell_key=f"c{i % 3}",
        replicate=i % 2,
        seed=i,
        cell={"lr": i},
        config={},
    )


def _file(path: Path) -> dict[str, Any]:
    return json.loads((path / "status.json").read_text())


def _memory(status: SweepStatus) -> dict[str, Any]:
    return json.loads(json.dumps(status.data, default=str))


def test_every_write_holds_every_change_of_every_trial(tmp_path: Path) -> None:
    location = open_location(tmp_path / "sweep")
    status = SweepStatus(location, {"sweep_id": "s", "name": "n"})
    trials = [_trial(i) for i in range(40)]
    status.add_trials(trials[:30], {})
    status.write()
    assert _file(tmp_path / "sweep") == _memory(status)
    rng = random.Random(0)
    keys = [t.trial_key for t in trials[:30]]
    operations = [
        lambda k: status.started(k, from_step=rng.choice([0.0, 10.0]), run_id=f"r-{k}"),
        lambda k: status.progress(k, step=float(rng.randrange(100)), pid=rng.randrange(9999)),
        lambda k: status.placed(k, {"node": rng.choice(["a", "b"]), "device": "cpu"}),
        lambda k: status.retrying(k, error="worker died"),
        lambda k: status.failed(k, error="out of retries"),
        lambda k: status.finished(k, stopped_at=rng.choice([None, 20.0])),
        lambda k: status.stopped(k, state="killed", error="driver stopped"),
        lambda k: status.set_run_ids({k: f"other-{rng.randrange(3)}"}),
    ]
    for n in range(400):
        operations[rng.randrange(len(operations))](rng.choice(keys))
        if n == 100:
            status.skip(keys[0], "already has a FINISHED MLflow run", "r0")
            status.adopt(keys[1], "r1", "other-sweep")
            status.wait(keys[2], "other-sweep")
        if n == 200:  # a search registers trials as it meets them
            status.add_trials(trials[30:], {}, cells=True)
            keys += [t.trial_key for t in trials[30:]]
        if n == 300:
            status.note("a note")
            status.set(state="interrupted")
        if rng.random() < 0.3:
            status.write()
            on_disk = _file(tmp_path / "sweep")
            assert on_disk == _memory(status)
            assert on_disk["counts"]["total"] == len(keys)
            assert sum(on_disk["counts"][s] for s in STATES) == len(keys)
    status.write()
    assert _file(tmp_path / "sweep") == _memory(status)
    assert list(_file(tmp_path / "sweep")["trials"]) == keys  # in the sweep's order


def test_a_new_driver_carries_attempts_and_starts_over_from_the_file(tmp_path: Path) -> None:
    location = open_location(tmp_path / "sweep")
    before = SweepStatus(location, {"sweep_id": "s"})
    before.add_trials([_trial(0)], {})
    before.started("k000", from_step=0.0)
    before.write()
    after = SweepStatus(location, {"sweep_id": "s"})
    after.add_trials([_trial(0)], {})
    after.write()
    entry = _file(tmp_path / "sweep")["trials"]["k000"]
    assert entry["attempts"] == 1 and len(entry["starts"]) == 1 and entry["state"] == "pending"


def test_an_empty_sweep_writes_whole_json(tmp_path: Path) -> None:
    status = SweepStatus(open_location(tmp_path / "sweep"), {"sweep_id": "s"})
    status.write()
    data = _file(tmp_path / "sweep")
    assert data["trials"] == {} and data["counts"]["total"] == 0 and data["sweep_id"] == "s"
