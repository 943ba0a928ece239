"""``execution.seeds: stacked`` end to end (real Ray Tune, real MLflow): a cell's pending seeds
train as one vmapped group trial, and MLflow still gets one run per seed, tagged as a separate
run would be, with the lone run's results; finished seeds are skipped, not trained again."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.workers.conftest import TINY
from workers.driver import run_sweep
from workers.spec import SpecError, expand, parse_spec

STEPS = [10, 20, 30, 40]


def _spec(name: str, seeds: list[int], execution: str, **extra: Any) -> tuple[Any, list[Any]]:
    spec = parse_spec(
        {
            "name": name,
            "experiment": "sorting",
            "params": {**TINY, **extra},
            "grid": {"lr": [0.001, 0.01]},
            "replicates": seeds,
            "resources": {"cpu": 0.5},
            "execution": {"seeds": execution},
        }
    )
    return spec, expand(spec)


def test_a_cell_that_cannot_be_stacked_is_refused_at_execution_seeds() -> None:
    with pytest.raises(SpecError) as e:
        _spec("rnn", [0, 1], "stacked", model="signum-rnn", rnn_hidden=8)
    assert e.value.path == "execution.seeds"
    assert "nn.LSTM" in e.value.message and "use execution.seeds: separate" in e.value.message
    with pytest.raises(SpecError) as e:
        _spec("perturbed", [0, 1], "stacked", estimator="perturbed")
    assert e.value.path == "execution.seeds" and "'perturbed'" in e.value.message
    with pytest.raises(SpecError) as e:
        parse_spec({"name": "x", "experiment": "sorting", "params": TINY, "execution": {"seeds": "fused"}})
    assert e.value.path == "execution.seeds" and "separate" in e.value.message


def test_execution_does_not_change_a_trials_identity() -> None:
    _, separate = _spec("a", [0, 1], "separate")
    _, stacked = _spec("a", [0, 1], "stacked")
    assert [t.trial_key for t in separate] == [t.trial_key for t in stacked]


@pytest.mark.slow
def test_stacked_seeds_make_one_run_per_seed_with_the_lone_runs_results(
    ray_address: str,
    tracking_uri: str,
    tmp_path: Path,
    mlflow_sweep: Callable[..., Any],
) -> None:
    from dab_core import run_trial

    sweep_dir = tmp_path / "sweep-stack"
    # seed 0 of both cells runs separately first; seeds 1 and 2 then train stacked, a group a cell
    spec0, trials0 = _spec("stack", [0], "separate")
    first = run_sweep(spec0, trials0, sweep_dir=sweep_dir, tracking_uri=tracking_uri)
    assert first.exit_code == 0 and len(first.finished) == 2
    spec, trials = _spec("stack", [0, 1, 2], "stacked")
    outcome = run_sweep(spec, trials, sweep_dir=sweep_dir, tracking_uri=tracking_uri)
    assert outcome.exit_code == 0 and outcome.state == "finished", outcome
    stacked_keys = sorted(t.trial_key for t in trials if t.seed > 0)
    assert sorted(outcome.ran) == sorted(outcome.finished) == stacked_keys
    assert sorted(outcome.skipped) == sorted(t.trial_key for t in trials0)
    [tune_dir] = [
        d for d in (sweep_dir / "tune").iterdir() if d.name != Path(first.tune_experiment or "").name
    ]
    trial_dirs = [d for d in tune_dir.iterdir() if d.is_dir()]
    assert len(trial_dirs) == 2  # one Tune trial a cell, holding its two pending seeds

    view = mlflow_sweep(tracking_uri, "sweep-stack")
    by_key = view.by_key()
    assert sorted(by_key) == sorted(t.trial_key for t in trials)
    assert view.statuses() == ["FINISHED"] * 7  # the parent and six runs, one a seed
    lone_tags = set(by_key[trials0[0].trial_key][0].data.tags)
    for trial in trials:
        [run] = by_key[trial.trial_key]
        tags = run.data.tags
        assert (tags["dab.seed"], tags["dab.replicate"]) == (str(trial.seed), str(trial.replicate))
        assert json.loads(tags["dab.cell"]) == trial.cell and tags["dab.cell_key"] == trial.cell_key
        assert view.steps(run)["test_all_or_none"] == STEPS
        if trial.seed == 0:
            continue
        # the tags a lone run has, and the one that says it trained stacked
        assert lone_tags <= set(tags), lone_tags - set(tags)
        assert tags["dab.execution"] == "stacked" and "dab.execution" not in lone_tags
        assert not any(k.startswith(("m/", "std/")) for k in run.data.metrics)  # its own values only
        lone = run_trial(trial.config)
        assert run.data.metrics["train_loss"] == pytest.approx(lone["train_loss"], rel=1e-4)
        assert run.data.metrics["test_per_position"] == pytest.approx(lone["test_per_position"], abs=1e-6)

    again = run_sweep(spec, trials, sweep_dir=sweep_dir, tracking_uri=tracking_uri)
    assert again.exit_code == 0 and again.ran == [] and len(again.skipped) == 6


@pytest.mark.slow
def test_a_stacked_sweep_whose_driver_is_killed_resumes_without_duplicates_or_gaps(
    tracking_uri: str,
    tmp_path: Path,
    driver_cli: Callable[..., Any],
    mlflow_sweep: Callable[..., Any],
    kill_driver_then_rerun: Callable[..., None],
) -> None:
    """SIGKILL the driver once one cell's group finished and the next trains; start it again:
    the groups resume from their checkpoints, each seed keeps one run with every step once."""
    import tempfile

    spec, _ = _spec("stack-kill", [0, 1], "stacked", steps=600, eval_every=20, checkpoint_every=60)
    data = spec.model_dump(mode="json")
    data["grid"] = {"lr": [0.001, 0.003, 0.01]}
    data["limits"] = {"max_concurrent": 1}
    sweep_dir = tmp_path / "stack-kill"
    ray_tmp = tempfile.mkdtemp(prefix="dabs", dir="/tmp")
    argv, env = driver_cli(data, sweep_dir, tracking_uri, ray_tmpdir=ray_tmp, extra=["--num-cpus", "2"])

    def runs() -> list[Any]:
        return list(mlflow_sweep(tracking_uri, "stack-kill").children)

    def mid_sweep() -> bool:
        # From status.json, as the service reads progress: MLflow lags it by the writer's
        # linger (and its hold, when one is set), and a group here trains in a few seconds.
        try:
            trials = json.loads((sweep_dir / "status.json").read_text())["trials"].values()
        except (OSError, ValueError, KeyError):
            return False
        finished = sum(t["state"] == "finished" for t in trials)
        return finished >= 2 and any(t["state"] == "running" and (t["last_step"] or 0) >= 100 for t in trials)

    def not_all_finished() -> None:
        assert sum(r.info.status == "FINISHED" for r in runs()) < 6

    kill_driver_then_rerun(
        argv, env, mid_sweep, "one group finished, the next at 100", ray_tmp, not_all_finished
    )

    view = mlflow_sweep(tracking_uri, "stack-kill")
    keys = [r.data.tags["dab.trial_key"] for r in view.children]
    assert len(keys) == len(set(keys)) == 6  # one run a seed: no duplicate, none lost
    assert all(r.info.status == "FINISHED" for r in view.children)
    assert all(r.data.tags["dab.execution"] == "stacked" for r in view.children)
    for run in view.children:  # every step once: the resumed groups have no gap and no repeat
        assert view.steps(run)["test_all_or_none"] == list(range(20, 601, 20))
