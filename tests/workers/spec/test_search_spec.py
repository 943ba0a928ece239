"""A search's spec: its space, search and scheduler blocks, their errors, their count, and the
trials of a proposed configuration; property tests of the distributions and the seeded sampler."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.spec import SpecError, count_trials, expand, parse_spec
from workers.spec.expand import search_trials
from workers.spec.schema import MAX_STEPS
from workers.spec.search import Dist, decode, encode, optuna_space, parse_dist

BASE: dict[str, Any] = {
    "name": "s",
    "experiment": "sorting",
    "params": {"model": "signum-dense", "seq_len": 3, "steps": 100},
    "search": {"algorithm": "tpe", "num_samples": 6, "seed": 0},
    "space": {"lr": {"loguniform": [1e-4, 1e-2]}, "dense_hidden": {"choice": [[8], [16, 16]]}},
    "replicates": 3,
}


def spec_with(**changes: Any) -> dict[str, Any]:
    data = {**BASE, **changes}
    return {k: v for k, v in data.items() if v is not None}


def test_a_search_counts_configurations_times_seeds_and_has_no_trials_before_it_runs() -> None:
    spec = parse_spec(BASE)
    assert spec.is_search and spec.num_configs == 6 and count_trials(spec) == 18
    assert expand(spec) == []
    grid = parse_spec(
        spec_with(
            search={"algorithm": "grid"}, space={"lr": {"choice": [1e-3, 1e-2]}, "gamma": {"int": [1, 3]}}
        )
    )
    assert grid.num_configs == 6  # 2 x 3, every configuration once


def test_the_trials_of_a_configuration_are_its_seeds_configuration_major() -> None:
    spec = parse_spec(BASE)
    cells = [{"lr": 1e-3, "dense_hidden": [8]}, {"lr": 2e-3, "dense_hidden": [16, 16]}]
    trials = search_trials(spec, cells, first=4)
    assert [t.index for t in trials] == [12, 13, 14, 15, 16, 17]
    assert [t.seed for t in trials] == [0, 1, 2, 0, 1, 2]
    assert trials[0].config["lr"] == 1e-3 and trials[3].config["dense_hidden"] == [16, 16]
    assert len({t.trial_key for t in trials}) == 6
    assert [t.trial_key for t in search_trials(spec, cells, first=4)] == [t.trial_key for t in trials]
    # a grid sweep of the same values gives the same trial keys: a search can adopt a grid's runs
    grid = parse_spec(
        {k: v for k, v in BASE.items() if k not in ("search", "space")}
        | {"params": {**BASE["params"], "lr": 1e-3, "dense_hidden": [8]}}
    )
    assert {t.trial_key for t in expand(grid)} == {t.trial_key for t in trials[:3]}


@pytest.mark.parametrize(
    ("changes", "path", "words"),
    [
        ({"space": {"lr": {"normal": [0, 1]}}}, "space.lr.normal", "unknown distribution"),
        ({"space": {"lr": {"uniform": [1, 1]}}}, "space.lr.uniform[1]", "empty range"),
        ({"space": {"lr": {"uniform": [2, 1]}}}, "space.lr.uniform[1]", "empty range"),
        ({"space": {"lr": {"loguniform": [0, 1]}}}, "space.lr.loguniform[0]", "above 0"),
        ({"space": {"lr": {"uniform": [0, "x"]}}}, "space.lr.uniform[1]", "finite number"),
        ({"space": {"steps2": {"int": [1.5, 4]}}}, "space.steps2.int[0]", "integer"),
        ({"space": {"lr": {"choice": [1e-3]}}}, "space.lr.choice", "at least two"),
        ({"space": {"lr": {"choice": [1, 1.0]}}}, "space.lr.choice[1]", "duplicate"),
        ({"space": {"lr": {"uniform": [0, 1], "int": [0, 1]}}}, "space.lr", "one of"),
        ({"space": {}}, "space", "needs a space"),
        ({"space": {"seq_len": {"int": [3, 5]}}}, "space.seq_len", "also fixed in params"),
        ({"space": {"seed": {"int": [0, 5]}}}, "space.seed", "replicates"),
        ({"grid": {"gamma": [1, 2]}}, "grid", "grid sweeps"),
        ({"search": {"algorithm": "tpe"}}, "search.num_samples", "needs num_samples"),
        ({"search": {"algorithm": "bayes", "num_samples": 3}}, "search.algorithm", "random"),
        ({"search": {"algorithm": "grid"}}, "space.lr", "continuous"),
        (
            {"search": {"algorithm": "grid", "num_samples": 9}, "space": {"gamma": {"int": [1, 3]}}},
            "search.num_samples",
            "3 configurations",
        ),
        ({"scheduler": {"type": "hyperband"}}, "scheduler.type", "asha"),
        ({"scheduler": {"type": "asha", "min_samples": 2}}, "scheduler.min_samples", "median option"),
        ({"scheduler": {"type": "fifo", "grace_steps": 2}}, "scheduler.grace_steps", "fifo stops nothing"),
        (
            {"scheduler": {"type": "asha", "reduction_factor": 1}},
            "scheduler.reduction_factor",
            "greater than 1",
        ),
        ({"metric": "accuracy"}, "metric", "a metric its trials report"),
        ({"search": None}, "space", "sampled by a search"),
        ({"search": None, "space": None, "scheduler": {"type": "asha"}}, "scheduler", "search"),
        ({"search": {"algorithm": "random", "num_samples": 10_001}}, "search.num_samples", "10000"),
    ],
)
def test_a_wrong_search_is_refused_at_the_field(changes: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(SpecError) as e:
        expand(parse_spec(spec_with(**changes)))
    assert e.value.path == path, e.value
    assert words in str(e.value)


@pytest.mark.parametrize(
    ("space", "path"),
    [
        ({"dense_hidden": {"choice": [[8], [0]]}}, "space.dense_hidden.choice[1]"),
        ({"eval_every": {"int": [0, 5]}}, "space.eval_every.int[0]"),
        ({"lr": {"uniform": [-1, 1]}}, "space.lr.uniform[0]"),
        ({"steps": {"int": [10, MAX_STEPS + 1]}}, "space.steps.int[1]"),
        ({"nonexistent": {"int": [1, 2]}}, "space.nonexistent.int[0]"),
    ],
)
def test_a_range_past_what_the_family_allows_is_refused_before_anything_runs(
    space: dict[str, Any], path: str
) -> None:
    params = {k: v for k, v in BASE["params"].items() if k not in space}
    with pytest.raises(SpecError) as e:
        expand(parse_spec(spec_with(space=space, params=params)))
    assert e.value.path == path, e.value


def test_the_schemas_max_steps_is_dab_cores() -> None:
    from dab_core.config import MAX_STEPS as CORE

    assert MAX_STEPS == CORE


# --------------------------------------------------------------------------- properties

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def dists(draw: st.DrawFn) -> Dist:
    kind = draw(st.sampled_from(["uniform", "loguniform", "int", "choice"]))
    if kind == "choice":
        values = draw(
            st.lists(
                st.one_of(st.integers(-50, 50), st.text(max_size=4), st.lists(st.integers(1, 9), max_size=3)),
                min_size=2,
                max_size=6,
                unique_by=lambda v: repr(v),
            )
        )
        from workers.spec.expand import value_key

        if len({value_key(v) for v in values}) < len(values):
            values = [f"v{i}" for i in range(len(values))]
        return parse_dist({"choice": values}, ("space", "x"))
    if kind == "int":
        low = draw(st.integers(-1000, 1000))
        return parse_dist({"int": [low, low + draw(st.integers(1, 1000))]}, ("space", "x"))
    if kind == "loguniform":
        low = draw(st.floats(min_value=1e-8, max_value=1e3))
        return parse_dist(
            {"loguniform": [low, low * draw(st.floats(min_value=1.001, max_value=1e6))]}, ("space", "x")
        )
    low = draw(finite)
    high = low + draw(st.floats(min_value=1e-3, max_value=1e6))
    return parse_dist({"uniform": [low, high]}, ("space", "x"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dist=dists(), seed=st.integers(0, 2**32 - 1))
def test_every_sampled_value_lies_in_its_distribution(dist: Dist, seed: int) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    space = {"x": dist}
    for _ in range(5):
        trial = study.ask(fixed_distributions=optuna_space(space))
        cell = decode(space, trial.params)
        value = cell["x"]
        assert dist.contains(value), (dist, value)
        if dist.kind != "choice":
            assert dist.low <= value <= dist.high  # type: ignore[operator]
            assert isinstance(value, int) if dist.kind == "int" else isinstance(value, float)
            assert math.isfinite(value)
        assert encode(space, cell) == trial.params  # the searcher's record maps back
        study.tell(trial, 0.0)


@pytest.mark.parametrize("algorithm", ["random", "tpe", "grid"])
@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_the_same_search_seed_proposes_the_same_configurations(algorithm: str, seed: int) -> None:
    from workers.driver.search import DabSearch
    from workers.trainable import CELL, MEMBERS

    space = (
        {"lr": {"choice": [1e-3, 2e-3, 5e-3]}, "gamma": {"int": [1, 4]}}
        if algorithm == "grid"
        else {"lr": {"loguniform": [1e-4, 1e-2]}, "gamma": {"uniform": [1, 30]}}
    )
    data = parse_spec(
        spec_with(search={"algorithm": algorithm, "num_samples": 12, "seed": seed}, space=space)
    ).model_dump(mode="json")

    def proposals() -> list[Any]:
        searcher = DabSearch(data, "test_all_or_none", "max")
        out = []
        for i in range(12):
            config = searcher.suggest(f"t{i}")
            assert isinstance(config, dict)
            out.append(config[CELL])
            assert [m["seed"] for m in config[MEMBERS]] == [0, 1, 2]
            searcher.on_trial_complete(f"t{i}", {"test_all_or_none": 0.1 * (i % 3)})
        return out

    first = proposals()
    assert proposals() == first
    assert len({repr(sorted(c.items())) for c in first}) == 12  # none proposed twice
    for cell in first:
        assert 1e-4 <= cell["lr"] <= 1e-2 and 1 <= cell["gamma"] <= 30
