"""The spec's schema: no coercion, default metrics from the family, trial counts and limits by arithmetic."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

import pytest

from workers.spec import (
    MAX_TRIALS,
    SpecError,
    SweepSpec,
    count_cells,
    count_trials,
    expand,
    parse_spec,
)

SmallSpec = Callable[..., dict[str, Any]]  # the `small` fixture (conftest.py)


def test_explicit_seeds_and_default_metric(small: SmallSpec) -> None:
    spec = parse_spec(small(replicates=[7, 3]))
    assert spec.metric == "test_all_or_none" and spec.mode == "max"
    assert spec.seeds == [7, 3]
    trials = expand(spec)
    assert [t.seed for t in trials] == [7] * 4 + [3] * 4
    assert [t.replicate for t in trials] == [0] * 4 + [1] * 4
    # the same seed gives the same key whether it comes from a count or a list
    by_count = {(t.cell_key, t.seed): t.trial_key for t in expand(parse_spec(small(replicates=8)))}
    assert all(by_count[(t.cell_key, t.seed)] == t.trial_key for t in trials)


def test_values_are_not_coerced(small: SmallSpec) -> None:
    for bad in ({"replicates": "2"}, {"replicates": True}, {"name": 5}, {"resources": {"cpu": "1"}}):
        with pytest.raises(SpecError) as e:
            parse_spec(small(**bad))
        assert e.value.path == next(iter(bad)) + (".cpu" if "resources" in bad else "")


def test_a_million_trials_is_refused_without_expanding(
    small: SmallSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    expand_module = importlib.import_module("workers.spec.expand")  # `workers.spec.expand` is the function
    cells_made: list[int] = []
    real = expand_module._iter_cells

    def counting(spec: SweepSpec) -> Any:
        cells_made.append(1)
        return real(spec)

    monkeypatch.setattr(expand_module, "_iter_cells", counting)
    grid = {"seq_len": list(range(2, 102)), "batch_size": list(range(1, 101))}
    with pytest.raises(SpecError) as e:
        parse_spec(small(grid=grid, params={"steps": 1, "model": "elu-dense"}, replicates=100))
    assert e.value.path == "grid"
    assert "1,000,000 trials (grid 100 x 100 = 10,000 cells, x 100 replicates)" in str(e.value)
    assert f"the limit is {MAX_TRIALS:,}" in str(e.value)
    # 40 axes of 40 values: 40**40 trials. Only arithmetic can refuse this in finite time:
    # the count comes before any cell is made.
    huge = {f"hard_params.p{i}": list(range(40)) for i in range(40)}
    with pytest.raises(SpecError, match="MAX_TRIALS") as e:
        parse_spec(small(grid=huge))
    assert f"{2 * 40**40:,} trials" in str(e.value)  # small() has 2 replicates
    assert cells_made == []
    expand(parse_spec(small()))
    assert cells_made == [1]  # the counter does see an expansion


def test_trial_limit_boundary_and_spec_cap(small: SmallSpec) -> None:
    grid = {"seq_len": list(range(2, 102)), "batch_size": list(range(1, 101))}
    base = small(grid=grid, params={"steps": 1, "model": "elu-dense"}, replicates=1)
    assert count_trials(parse_spec(base)) == MAX_TRIALS  # exactly the limit is allowed
    with pytest.raises(SpecError, match="10,001 trials"):
        parse_spec({**base, "include": [{"seq_len": 2, "batch_size": 200}]})
    with pytest.raises(SpecError, match=r"the limit is 7 \(limits.max_trials\)"):
        parse_spec(small(limits={"max_trials": 7}))
    with pytest.raises(SpecError) as e:
        parse_spec(small(limits={"max_trials": MAX_TRIALS + 1}))
    assert e.value.path == "limits.max_trials"


def test_excludes_are_counted_exactly_without_expanding() -> None:
    # 30 axes of 10 values with overlapping partial excludes; the product is 10**30
    grid = {f"hard_params.p{i}": list(range(10)) for i in range(30)}
    excludes = [{"hard_params.p0": 0}, {"hard_params.p1": 1}, {"hard_params.p0": 0, "hard_params.p1": 1}]
    spec = SweepSpec.model_construct(grid=grid, exclude=excludes, include=[], replicates=1)
    # |p0=0 or p1=1| = 10**29 + 10**29 - 10**28
    assert count_cells(spec) == 10**30 - (2 * 10**29 - 10**28)


# ------------------------------------------------------------------------------- default metric


def test_the_default_metric_and_mode_come_from_the_familys_declaration(
    small: SmallSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dab_core.experiments import experiments, metrics_of
    from dab_core.metrics import Metric, MetricSet

    for family in ("sorting", "classification", "representation"):
        spec = parse_spec({"name": "x", "experiment": family})
        declared = metrics_of(family)
        assert spec.metric == spec.resolved_metric == declared.default
        assert spec.mode == spec.resolved_mode == declared.default_metric.mode
    # a metric without a mode takes the declared direction; an undeclared metric is "max"
    assert parse_spec(small(metric="train_loss")).resolved_mode == "min"
    assert parse_spec(small(metric="my_metric")).resolved_mode == "max"
    assert parse_spec(small(metric="train_loss", mode="max")).resolved_mode == "max"
    # the declaration is what counts: redeclare sorting's metrics and the default follows
    family = experiments.lookup("sorting")
    redeclared = MetricSet((Metric("test_loss", "min"),), default="test_loss")
    monkeypatch.setitem(experiments._items, "sorting", dataclasses.replace(family, metrics=redeclared))
    spec = parse_spec(small())
    assert (spec.metric, spec.mode) == ("test_loss", "min")


def test_an_unknown_family_is_named_at_experiment(small: SmallSpec) -> None:
    for changes in ({}, {"metric": "test_accuracy"}, {"metric": "test_accuracy", "mode": "max"}):
        with pytest.raises(SpecError) as e:
            parse_spec(small(experiment="sortnig", **changes))
        assert e.value.path == "experiment"
        assert "unknown experiment family 'sortnig'; known: classification, representation, sorting" in str(
            e.value
        )
        assert "did you mean 'sorting'" in str(e.value)
