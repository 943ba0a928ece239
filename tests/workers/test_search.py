"""Searches under a real Ray and MLflow: Optuna proposing, seeds trained as one configuration,
the searcher told the mean over seeds, ASHA stopping configurations as wholes."""

from __future__ import annotations

import glob
import json
import pickle
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.workers.conftest import TINY
from workers.driver import run_sweep
from workers.spec import parse_spec
from workers.spec.search import encode

METRIC = "test_per_position"


def search_spec(name: str, algorithm: str, **extra: Any) -> Any:
    """A tiny sorting search of 6 configurations x 2 seeds; `extra` replaces top-level fields."""
    data: dict[str, Any] = {
        "name": name,
        "experiment": "sorting",
        "params": {k: v for k, v in TINY.items() if k not in ("lr", "dense_hidden")},
        "search": {"algorithm": algorithm, "num_samples": 6, "seed": 7},
        "space": {"lr": {"loguniform": [1e-4, 3e-2]}, "dense_hidden": {"choice": [[8], [16, 16]]}},
        "replicates": 2,
        "metric": METRIC,
        "resources": {"cpu": 0.5},
        **extra,
    }
    return parse_spec(data)


def searcher_state(sweep_dir: Path) -> dict[str, Any]:
    """The searcher as Tune last saved it with the experiment (`DabSearch.save`): what it was
    told. One file per driver session, named by the session's start (Tune syncs them all at
    once, so their mtimes are equal): the last name is the last session's."""
    paths = glob.glob(str(sweep_dir / "tune" / "search" / "searcher-state-*.pkl"))
    with open(max(paths), "rb") as f:
        return pickle.load(f)  # type: ignore[no-any-return]


def configs_of(view: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for run in view.children:
        out.setdefault(run.data.tags["dab.cell_key"], []).append(run)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["random", "tpe"])
def test_a_search_runs_six_configurations_of_two_seeds_and_tells_the_searcher_their_means(
    algorithm: str,
    ray_address: str,
    tracking_uri: str,
    tmp_path: Path,
    mlflow_sweep: Callable[..., Any],
) -> None:
    spec = search_spec(f"s-{algorithm}", algorithm)
    sweep_dir = tmp_path / f"search-{algorithm}"
    outcome = run_sweep(spec, [], sweep_dir=sweep_dir, tracking_uri=tracking_uri)
    assert outcome.exit_code == 0, outcome
    view = mlflow_sweep(tracking_uri, f"search-{algorithm}")
    assert len(view.children) == 12
    assert len({r.data.tags["dab.trial_key"] for r in view.children}) == 12
    assert all(r.info.status == "FINISHED" for r in view.children)
    by_config = configs_of(view)
    assert len(by_config) == 6 and all(len(runs) == 2 for runs in by_config.values())
    for runs in by_config.values():
        assert sorted(r.data.tags["dab.seed"] for r in runs) == ["0", "1"]
        assert len({r.data.tags["dab.config_index"] for r in runs}) == 1

    state = searcher_state(sweep_dir)
    study = state["_ot_study"]
    told = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    assert len(told) == 6
    space = spec.distributions
    for runs in by_config.values():
        cell = json.loads(runs[0].data.tags["dab.cell"])
        mean = statistics.fmean(r.data.metrics[METRIC] for r in runs)
        [match] = [t for t in told if t.params == encode(space, cell)]
        assert match.value == pytest.approx(mean, rel=1e-9, abs=1e-12)  # the mean, not one seed's
    # the seeds differ, so the mean is not any one seed's value
    assert any(len({r.data.metrics[METRIC] for r in runs}) == 2 for runs in by_config.values())
    assert len({json.dumps(t.params, sort_keys=True) for t in told}) == 6  # never proposed twice
    status = json.loads((sweep_dir / "status.json").read_text())
    assert status["state"] == "finished" and len(status["trials"]) == 12
    assert all(t["state"] == "finished" and t["cell"] for t in status["trials"].values())


def _rungs(view: Any) -> dict[str, set[int]]:
    """configuration -> the last steps its seeds' runs reached."""
    out: dict[str, set[int]] = {}
    for run in view.children:
        out.setdefault(run.data.tags["dab.config_index"], set()).add(int(run.data.metrics["step"]))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["asha", "median"])
def test_a_scheduler_stops_configurations_as_wholes(
    scheduler: str,
    ray_address: str,
    tracking_uri: str,
    tmp_path: Path,
    mlflow_sweep: Callable[..., Any],
) -> None:
    options = {"reduction_factor": 3} if scheduler == "asha" else {"min_samples": 1}
    spec = search_spec(
        f"stop-{scheduler}",
        "random",
        params={**{k: v for k, v in TINY.items() if k != "lr"}, "steps": 60, "eval_every": 10},
        space={"lr": {"loguniform": [1e-6, 3e-2]}},
        scheduler={"type": scheduler, "grace_steps": 10, **options},
        limits={"max_concurrent": 1 if scheduler == "median" else 2},
    )
    outcome = run_sweep(spec, [], sweep_dir=tmp_path / f"stop-{scheduler}", tracking_uri=tracking_uri)
    assert outcome.exit_code == 0, outcome
    view = mlflow_sweep(tracking_uri, f"stop-{scheduler}")
    assert len(view.children) == 12 and all(r.info.status == "FINISHED" for r in view.children)
    rungs = _rungs(view)
    assert len(rungs) == 6
    assert all(len(steps) == 1 for steps in rungs.values()), rungs  # both seeds stop at one step
    stopped = {i for i, steps in rungs.items() if steps != {60}}
    assert stopped, f"{scheduler} stopped nothing: {rungs}"
    assert len(stopped) < 6  # and kept some to the end
    for run in view.children:
        i, step = run.data.tags["dab.config_index"], int(run.data.metrics["step"])
        if i in stopped:
            assert run.data.tags["dab.stopped_early"] == "true"
            assert run.data.tags["dab.stopped_at_step"] == str(step)
        else:
            assert "dab.stopped_early" not in run.data.tags
    status = json.loads((tmp_path / f"stop-{scheduler}" / "status.json").read_text())
    assert {t["stopped_at"] for t in status["trials"].values()} - {None} == {
        float(s) for i in stopped for s in rungs[i]
    }


@pytest.mark.slow
def test_a_search_whose_driver_is_killed_resumes_without_duplicates_or_losses(
    tracking_uri: str,
    tmp_path: Path,
    driver_cli: Callable[..., Any],
    mlflow_sweep: Callable[..., Any],
    kill_driver_then_rerun: Callable[..., None],
) -> None:
    """SIGKILL the driver once two configurations finished and others run; start it again:
    the searcher and the scheduler resume from their saved state."""
    import tempfile

    params = {
        **{k: v for k, v in TINY.items() if k not in ("lr", "dense_hidden")},
        "steps": 600,
        "eval_every": 20,
        "checkpoint_every": 60,
    }
    spec = search_spec(
        "kill",
        "tpe",
        params=params,
        space={"lr": {"loguniform": [1e-4, 3e-2]}, "dense_hidden": {"choice": [[8], [16, 16]]}},
        scheduler={"type": "asha", "grace_steps": 100, "reduction_factor": 2},
        limits={"max_concurrent": 2},
        resources={"cpu": 1},
    )
    sweep_dir = tmp_path / "search-kill"
    ray_tmp = tempfile.mkdtemp(prefix="dabs", dir="/tmp")
    argv, env = driver_cli(
        spec.model_dump(mode="json"), sweep_dir, tracking_uri, ray_tmpdir=ray_tmp, extra=["--num-cpus", "2"]
    )

    def finished_runs() -> int:
        view = mlflow_sweep(tracking_uri, "search-kill")
        return sum(r.info.status == "FINISHED" for r in view.children)

    def some_runs_left() -> None:  # the kill landed mid-search: not every run had finished
        # (not "fewer than 12 runs": with the writer's 1 s linger, a run's FINISHED arrives up
        # to 1 s late, and ASHA may have started every configuration by then)
        assert finished_runs() < 12

    kill_driver_then_rerun(
        argv, env, lambda: finished_runs() >= 4, "two configurations finished", ray_tmp, some_runs_left
    )

    view = mlflow_sweep(tracking_uri, "search-kill")
    keys = [r.data.tags["dab.trial_key"] for r in view.children]
    status = json.loads((sweep_dir / "status.json").read_text())
    seen = {k: (t["state"], t["attempts"]) for k, t in status["trials"].items()}
    rerun = (tmp_path / "driver-2.log").read_text()[-2000:]
    # no duplicate run, none lost (on failure: what the rerun saw and printed)
    assert len(keys) == len(set(keys)) == 12, f"runs {sorted(keys)}; status {seen}; rerun:\n{rerun}"
    assert all(r.info.status == "FINISHED" for r in view.children)
    assert len(view.parents) == 1 and view.parents[0].info.status == "FINISHED"
    by_config = configs_of(view)
    assert len(by_config) == 6 and all(len(v) == 2 for v in by_config.values())
    for run in view.children:  # every step once: the resumed runs have no gap and no repeat
        steps = view.steps(run)[METRIC]
        assert steps == list(range(20, int(run.data.metrics["step"]) + 1, 20)), steps
    study = searcher_state(sweep_dir)["_ot_study"]
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    assert len(complete) == 6
    assert len({json.dumps(t.params, sort_keys=True) for t in complete}) == 6  # none proposed twice
    space = spec.distributions
    cells = {
        json.dumps(encode(space, json.loads(v[0].data.tags["dab.cell"])), sort_keys=True)
        for v in by_config.values()
    }
    assert cells == {json.dumps(t.params, sort_keys=True) for t in complete}  # the runs are the study's
