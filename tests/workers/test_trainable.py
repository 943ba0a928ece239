"""The trainable: resources, report history in checkpoints, and one real Tune run of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from workers.trainable import (
    HISTORY_FILE,
    TRIAL_KEY,
    make_trainable,
    read_checkpoint_history,
    read_history,
    resolve_resources,
)


def test_gpu_fractions_are_kept_where_the_cluster_has_gpus() -> None:
    resources, notes = resolve_resources({"cpu": 1, "gpu": 0.25, "memory": None}, {"CPU": 16, "GPU": 1})
    assert resources == {"cpu": 1.0, "gpu": 0.25}
    assert notes == []


def test_gpu_request_is_dropped_with_a_note_on_a_cpu_cluster() -> None:
    resources, notes = resolve_resources({"cpu": 0.5, "gpu": 0.25}, {"CPU": 2})
    assert resources == {"cpu": 0.5}
    assert notes == ["resources.gpu=0.25 dropped: the Ray cluster has no GPU"]


def test_memory_in_bytes_and_a_cpu_default() -> None:
    resources, _ = resolve_resources({"memory": 2 * 2**30}, {"CPU": 2, "memory": 8 * 2**30})
    assert resources == {"memory": 2.0 * 2**30, "cpu": 1.0}


@pytest.mark.parametrize(
    ("requested", "message"),
    [
        ({"cpu": 4}, "resources.cpu=4 per trial exceeds the whole cluster's 2"),
        ({"cpu": -1}, "resources.cpu must be a finite number >= 0"),
        ({"cpu": 1, "memory": 64 * 2**30}, "resources.memory="),
    ],
)
def test_impossible_requests_fail_instead_of_pending_forever(
    requested: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        resolve_resources(requested, {"CPU": 2, "memory": 8 * 2**30})


def test_history_round_trip_through_a_tune_checkpoint(tmp_path: Path) -> None:
    from ray import tune

    history = [
        {"step": 10.0, "loss": 2.0, "_time_ms": 1.0},
        {"step": 20.0, "loss": float("nan"), "_time_ms": 2.0},
    ]
    (tmp_path / HISTORY_FILE).write_text(json.dumps(history))
    read = read_checkpoint_history(tune.Checkpoint.from_directory(str(tmp_path)))
    assert [e["step"] for e in read] == [10.0, 20.0]
    assert read[1]["loss"] != read[1]["loss"]  # NaN survives
    assert read_history(tmp_path) == read
    assert read_history(tmp_path / "missing") == []
    assert read_checkpoint_history(None) == []


class _Results:
    """A Tune callback that keeps what each trial reported (a real callback, not a mock)."""

    def __new__(cls) -> Any:
        from ray import tune

        class Recorder(tune.Callback):
            def __init__(self) -> None:
                self.steps: dict[str, list[float]] = {}
                self.keys: dict[str, set[str]] = {}

            def on_trial_result(
                self, iteration: int, trials: list[Any], trial: Any, result: dict, **info: Any
            ) -> None:
                key = trial.config[TRIAL_KEY]
                self.steps.setdefault(key, []).append(result["step"])
                self.keys.setdefault(key, set()).update(result)

        return Recorder()


@pytest.mark.slow
def test_trainable_under_tune(
    ray_address: str, tmp_path: Path, tiny: dict[str, Any], sorting_metrics: set[str]
) -> None:
    """One Tune run, three trials: one trains (reports, checkpoints, history), one is outside
    ``run_keys`` and returns at once, one has a bad config and fails before any compute."""
    from ray import tune

    from dab_core.training import CHECKPOINT_FILE

    good = {"experiment": "sorting", "seed": 0, **tiny}
    bad = {**good, "seed": 1, "lr": -1.0}
    table = {"good": good, "done-elsewhere": {**good, "seed": 2}, "bad": bad}
    trainable = make_trainable(table, {"cpu": 0.5}, run_keys={"good", "bad"})
    recorder = _Results()
    tuner = tune.Tuner(
        trainable,
        param_space={TRIAL_KEY: tune.grid_search(list(table))},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(
            name="t",
            storage_path=str(tmp_path),
            callbacks=[recorder],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=0,
        ),
    )
    grid = tuner.fit()
    results = {(grid[i].config or {})[TRIAL_KEY]: grid[i] for i in range(len(grid))}

    # The trial config Tune holds is the key alone: the configs went through with_parameters.
    assert {k: r.config for k, r in results.items()} == {k: {TRIAL_KEY: k} for k in table}

    ok = results["good"]
    assert ok.error is None
    assert recorder.steps["good"] == [10.0, 20.0, 30.0, 40.0]
    assert sorting_metrics <= recorder.keys["good"]
    kept = sorted(p.name for p in Path(ok.path).iterdir() if p.name.startswith("checkpoint_"))
    assert kept == ["checkpoint_000002", "checkpoint_000003"]  # CheckpointConfig(num_to_keep=2)
    assert ok.checkpoint is not None
    final = Path(ok.checkpoint.path)
    assert final.name == "checkpoint_000003"
    import torch

    assert torch.load(final / CHECKPOINT_FILE, weights_only=False)["step"] == 40
    history = read_history(final)
    assert [e["step"] for e in history] == [10.0, 20.0, 30.0, 40.0]
    assert history[-1]["test_all_or_none"] == (ok.metrics or {})["test_all_or_none"]

    assert results["done-elsewhere"].error is None
    assert "done-elsewhere" not in recorder.steps  # returned without reporting or training

    failed = results["bad"]
    assert failed.error is not None and "lr" in str(failed.error)
    assert "bad" not in recorder.steps


def test_a_checkpoint_tune_names_but_deleted_falls_back_to_the_newest_whole_one(tmp_path: Path) -> None:
    """Tune's saved state can name a checkpoint its num_to_keep already deleted (a driver lost
    in between): the restore takes the trial's newest whole checkpoint instead."""
    from ray import tune

    from workers.trainable import existing_checkpoint

    trial = tmp_path / "trial_0"
    for n, files in [
        (3, ["trial.pt", "dab_history.json"]),
        (4, ["trial.pt", "dab_history.json"]),
        (5, ["trial.pt"]),
    ]:
        d = trial / f"checkpoint_{n:06d}"
        d.mkdir(parents=True)
        for f in files:
            (d / f).write_text("x")
    named = tune.Checkpoint(str(trial / "checkpoint_000001"))  # deleted by Tune
    found = existing_checkpoint(named)
    assert found.path == str(trial / "checkpoint_000004")  # 5 is partial (no history): skipped
    here = tune.Checkpoint(str(trial / "checkpoint_000003"))
    assert existing_checkpoint(here) is here  # it exists: Tune's choice stands
    for d in trial.iterdir():
        (d / "trial.pt").unlink()
    assert existing_checkpoint(named) is None  # nothing whole: the trial starts over
