"""A search's saved Tune state whose files come from different saves (`workers.driver.search_state`):
the trials' state behind the searcher's, and the other way round, under a real Ray and MLflow."""

from __future__ import annotations

import glob
import json
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.workers.test_search import configs_of, search_spec, searcher_state
from workers.driver import run_sweep
from workers.driver.search_state import repair_saved_search, saved_trials
from workers.spec.expand import value_key
from workers.storage import open_location


def _experiment(sweep_dir: Path) -> Path:
    return sweep_dir / "tune" / "search"


def _newest(sweep_dir: Path, prefix: str) -> Path:
    return Path(max(glob.glob(str(_experiment(sweep_dir) / f"{prefix}*"))))


def _keep_trials(sweep_dir: Path, indexes: set[int]) -> None:
    """Rewrite the trials' state as an older save holds it: only configurations `indexes`."""
    path = _newest(sweep_dir, "experiment_state-")
    state = json.loads(path.read_text())
    state["trial_data"] = [
        entry for entry in state["trial_data"] if json.loads(entry[0])["config"]["dab_index"] in indexes
    ]
    path.write_text(json.dumps(state))


def _active_children(tracking_uri: str, sweep_id: str) -> list[Any]:
    from mlflow import MlflowClient

    from workers.tracking import find_experiment

    client = MlflowClient(tracking_uri)
    exp = find_experiment(client, sweep_id)
    assert exp is not None
    return client.search_runs([exp.experiment_id], "tags.`dab.role` = 'trial'", max_results=1000)


@pytest.mark.slow
def test_proposals_whose_trials_the_saved_state_lost_run_again_and_nothing_else_does(
    ray_address: str, tracking_uri: str, tmp_path: Path, mlflow_sweep: Callable[..., Any]
) -> None:
    """The failure CI saw once: a driver killed while its saved files came from different
    saves, the searcher's (6 configurations proposed) newer than the trials' (3). Without the
    repair the next driver exits 0 with 3 configurations' runs; with it, all 6 run."""
    from mlflow import MlflowClient

    spec = search_spec("lost", "tpe", limits={"max_concurrent": 2})
    sweep_dir = tmp_path / "search-lost"
    assert run_sweep(spec, [], sweep_dir=sweep_dir, tracking_uri=tracking_uri).exit_code == 0
    first = {r.data.tags["dab.trial_key"]: r for r in _active_children(tracking_uri, "search-lost")}
    assert len(first) == 12
    # the state a driver killed then leaves: trials of configurations 0-2 only, the searcher
    # and the generator's count at 6, and no MLflow runs for configurations 3-5
    _keep_trials(sweep_dir, {0, 1, 2})
    client = MlflowClient(tracking_uri)
    lost = {k for k, r in first.items() if int(r.data.tags["dab.config_index"]) >= 3}
    for key in lost:
        client.delete_run(first[key].info.run_id)
    assert len(_active_children(tracking_uri, "search-lost")) == 6

    outcome = run_sweep(spec, [], sweep_dir=sweep_dir, tracking_uri=tracking_uri)

    assert outcome.exit_code == 0, outcome
    runs = _active_children(tracking_uri, "search-lost")
    keys = [r.data.tags["dab.trial_key"] for r in runs]
    assert sorted(keys) == sorted(first)  # the same 12 trial keys: the same configurations
    assert all(r.info.status == "FINISHED" and r.data.metrics["step"] == 40 for r in runs)
    first_ids = {r.info.run_id for r in first.values()}
    again = {r.data.tags["dab.trial_key"] for r in runs if r.info.run_id not in first_ids}
    assert again == lost  # configurations 0-2 were not run again
    by_config = configs_of(mlflow_sweep(tracking_uri, "search-lost"))
    assert len(by_config) == 6
    state = searcher_state(sweep_dir)
    assert len(state["proposed"]) == 6 and state["replay"] == []  # no seventh configuration
    trials_file = _newest(sweep_dir, "experiment_state-").name
    assert sorted(saved_trials(open_location(str(_experiment(sweep_dir))), trials_file)) == [0, 1, 2, 3, 4, 5]
    status = json.loads((sweep_dir / "status.json").read_text())
    assert any("[3, 4, 5]" in note and "proposed again" in note for note in status["notes"]), status["notes"]


@pytest.mark.slow
def test_trials_the_saved_searcher_never_proposed_are_made_known_to_it(
    ray_address: str, tracking_uri: str, tmp_path: Path
) -> None:
    """The other way round: the searcher's file older than the trials' (4 proposals, 6 trials),
    and a limiter holding a trial that was not restored. The searcher learns the two, the count
    is the trials', the limiter lets go; a second repair changes nothing."""
    import ray.cloudpickle as cloudpickle

    spec = search_spec("ahead", "random", limits={"max_concurrent": 2})
    sweep_dir = tmp_path / "search-ahead"
    assert run_sweep(spec, [], sweep_dir=sweep_dir, tracking_uri=tracking_uri).exit_code == 0
    copy = tmp_path / "copy"
    shutil.copytree(_experiment(sweep_dir), copy)
    searcher_path = Path(max(glob.glob(str(copy / "searcher-state-*"))))
    generator_path = Path(max(glob.glob(str(copy / "search_gen_state-*"))))
    full = pickle.loads(searcher_path.read_bytes())
    keys = {value_key(c) for c in full["proposed"][:4]}
    old = dict(full, proposed=full["proposed"][:4], ids=full["ids"][:4], _proposed_keys=keys)
    searcher_path.write_bytes(pickle.dumps(old))
    generator = cloudpickle.loads(generator_path.read_bytes())
    generator["counter"] = 4
    generator["name:ConcurrencyLimiter"]["live_trials"] = {"gone0001"}
    generator["name:ConcurrencyLimiter"]["num_unfinished_live_trials"] = 1
    generator_path.write_bytes(cloudpickle.dumps(generator))

    notes = repair_saved_search(open_location(str(copy)))

    assert len(notes) == 1 and "[4, 5]" in notes[0]
    repaired = pickle.loads(searcher_path.read_bytes())
    assert repaired["proposed"] == full["proposed"] and repaired["ids"] == full["ids"]
    assert repaired["_proposed_keys"] == full["_proposed_keys"] and repaired["replay"] == []
    generator = cloudpickle.loads(generator_path.read_bytes())
    assert generator["counter"] == 6
    assert generator["name:ConcurrencyLimiter"]["live_trials"] == set()
    assert generator["name:ConcurrencyLimiter"]["num_unfinished_live_trials"] == 0
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    assert repair_saved_search(open_location(str(copy))) == []
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before
    # and the untouched original, consistent, is left as it is
    original = {p.name: p.read_bytes() for p in _experiment(sweep_dir).iterdir() if p.is_file()}
    assert repair_saved_search(open_location(str(_experiment(sweep_dir)))) == []
    assert {p.name: p.read_bytes() for p in _experiment(sweep_dir).iterdir() if p.is_file()} == original
    # a trials' file cut short (a copy killed midway) is Tune's to report: nothing is changed
    state_path = Path(max(glob.glob(str(copy / "experiment_state-*"))))
    state_path.write_bytes(state_path.read_bytes()[:100])
    generator_path.write_bytes(cloudpickle.dumps({**generator, "counter": 2}))
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()}
    assert repair_saved_search(open_location(str(copy))) == []
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.is_file()} == before
