"""Property tests of sweep specs (hypothesis): trial counts, trial keys, and single-field
mutations of a valid spec."""

from __future__ import annotations

import copy
import itertools
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.spec import SpecError, count_cells, count_trials, expand, parse_spec

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Sorting fields that take any value in a range with no cross-field rule (train_size is 0).
AXES = {
    "seq_len": st.integers(2, 100),
    "batch_size": st.integers(1, 4096),
    "test_size": st.integers(1, 10**6),
    "eval_every": st.integers(1, 10**6),
    "gamma": st.floats(0, 100, allow_nan=False),
    "lr": st.floats(1e-6, 1.0, allow_nan=False),
}
BASE_PARAMS = {"model": "elu-dense", "steps": 10, "train_size": 0, "seq_len": 4}


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid sorting spec with 1-3 axes, excludes over them and includes beside them."""
    names = draw(st.lists(st.sampled_from(sorted(AXES)), min_size=1, max_size=3, unique=True))
    grid = {
        n: draw(st.lists(AXES[n], min_size=1, max_size=4, unique_by=lambda v: json.dumps(float(v))))
        for n in names
    }
    excludes = []
    for _ in range(draw(st.integers(0, 3))):
        keys = draw(st.lists(st.sampled_from(names), min_size=1, max_size=len(names), unique=True))
        ex = {k: draw(st.sampled_from(grid[k])) for k in keys}
        if ex not in excludes:
            excludes.append(ex)
    # includes differ from every product cell in `steps`, and from each other
    includes = [{**{n: grid[n][0] for n in names}, "steps": 11 + j} for j in range(draw(st.integers(0, 3)))]
    replicates: int | list[int] = draw(
        st.one_of(st.integers(1, 3), st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=3, unique=True))
    )
    params = {k: v for k, v in BASE_PARAMS.items() if k not in grid}
    return {
        "name": "prop",
        "experiment": "sorting",
        "params": params,
        "grid": grid,
        "exclude": excludes,
        "include": includes,
        "replicates": replicates,
    }


def brute_force_count(spec: dict[str, Any]) -> int:
    grid = spec["grid"]
    cells = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    kept = [c for c in cells if not any(all(c[k] == v for k, v in ex.items()) for ex in spec["exclude"])]
    r = spec["replicates"]
    return (len(kept) + len(spec["include"])) * (r if isinstance(r, int) else len(r))


@FAST
@given(specs())
def test_count_is_product_times_replicates_plus_includes_minus_excludes(data: dict[str, Any]) -> None:
    spec = parse_spec(data)
    trials = expand(spec)
    r = len(spec.seeds)
    assert count_trials(spec) == len(trials) == brute_force_count(data)
    assert count_cells(spec) * r == len(trials)
    assert len({t.cell_key for t in trials}) == count_cells(spec)
    assert all(sum(1 for t in trials if t.cell_key == ck) == r for ck in {t.cell_key for t in trials})


def shuffled(value: Any, rng: random.Random) -> Any:
    """The same JSON value with every mapping's keys in a random order."""
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {k: shuffled(value[k], rng) for k in keys}
    if isinstance(value, list):
        return [shuffled(v, rng) for v in value]
    return value


@FAST
@given(specs(), st.randoms(use_true_random=False))
def test_keys_are_unique_and_independent_of_key_order(data: dict[str, Any], rng: random.Random) -> None:
    trials = expand(parse_spec(data))
    keys = [t.trial_key for t in trials]
    assert len(set(keys)) == len(keys)
    again = expand(parse_spec(shuffled(copy.deepcopy(data), rng)))
    assert {(t.cell_key, t.seed): t.trial_key for t in again} == {
        (t.cell_key, t.seed): t.trial_key for t in trials
    }
    assert [t.trial_key for t in expand(parse_spec(data))] == keys  # deterministic order


# ------------------------------------------------------------------------------- mutations

VALID: dict[str, Any] = {
    "name": "mutations",
    "experiment": "sorting",
    "description": "a valid spec with every kind of field",
    "params": {
        "steps": 10,
        "train_size": 0,
        "test_size": 16,
        "batch_size": 8,
        "hard": "signum",
        "hard_params": {"eps": 0.5},
        "gamma": 10.0,
        "lr": 0.001,
        "dab_loss": "l2",
    },
    "grid": {"model": ["signum-dense", "elu-dense"], "seq_len": [3, 4]},
    "include": [{"model": "signum-rnn", "seq_len": 3, "ponder_steps": 1}],
    "exclude": [{"model": "elu-dense", "seq_len": 4}],
    "replicates": 2,
    "resources": {"cpu": 1, "gpu": 0.5, "memory_gb": 2},
    "metric": "test_all_or_none",
    "mode": "max",
    "limits": {"max_concurrent": 2, "max_failures": 1, "max_trials": 100},
    "duration_hours": 0.5,
    "paper": [
        {
            "match": {"model": "signum-dense", "seq_len": 3},
            "value": 0.9,
            "std": 0.01,
            "metric": "m",
            "source": "T1",
        }
    ],
}

# Leaves whose value is a registry or choice name: an unknown name must be refused too.
NAME_LEAVES = {
    ("experiment",),
    ("mode",),
    ("params", "hard"),
    ("params", "dab_loss"),
    ("grid", "model", 0),
    ("grid", "model", 1),
    ("include", 0, "model"),
    ("exclude", 0, "model"),
    ("paper", 0, "match", "model"),
}


def render(path: tuple[str | int, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def places(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    if path:
        yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from places(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from places(v, (*path, i))


PLACES = list(places(VALID))
MAPPINGS = [()] + [p for p, v in PLACES if isinstance(v, dict)]


def expected_path(path: tuple[str | int, ...]) -> str:
    # a match value is Any at the spec level; a wrong one makes the entry match no cell
    if path[:1] == ("paper",) and len(path) > 3 and path[2] == "match":
        return render(path[:3])
    return render(path)


def set_at(doc: dict[str, Any], path: tuple[str | int, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    node: Any = out
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return out


def assert_refused_at(doc: dict[str, Any], path: str) -> None:
    with pytest.raises(SpecError) as e:
        expand(parse_spec(doc))
    err = e.value
    assert err.path == path or err.path.startswith((path + "[", path + ".")), f"{path}: {err}"
    assert path in str(err)


def test_the_valid_spec_is_valid() -> None:
    assert len(expand(parse_spec(VALID))) == 2 * (2 * 2 - 1 + 1)


def seed_list(v: Any) -> bool:
    return (
        isinstance(v, list)
        and bool(v)
        and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63 for x in v)
        and len(set(v)) == len(v)
    )


def wrong_types(value: Any) -> st.SearchStrategy[Any]:
    """JSON values of a type the field at hand does not accept (ints are numbers too)."""
    scalars = st.one_of(
        st.text(max_size=8), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False)
    )
    containers = st.one_of(
        st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=5), scalars, max_size=3)
    )
    if isinstance(value, str):
        return st.one_of(
            st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), containers
        )
    if isinstance(value, bool | int | float):
        return st.one_of(st.text(max_size=8), st.booleans(), containers)
    if isinstance(value, list):
        return st.one_of(scalars, st.dictionaries(st.text(max_size=5), scalars, max_size=3))
    return st.one_of(scalars, st.lists(scalars, max_size=3))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_wrong_type_is_refused_naming_the_field(data: st.DataObject) -> None:
    path, value = data.draw(st.sampled_from(PLACES), label="field")
    values = wrong_types(value)
    if path == ("replicates",):
        values = values.filter(lambda v: not seed_list(v))  # a list of seeds is a valid replicates
    if path[:2] == ("params", "hard_params") and len(path) == 3:
        values = values.filter(lambda v: not isinstance(v, bool))  # hard_params values may be bools
    bad = data.draw(values, label="value")
    assert_refused_at(set_at(VALID, path, bad), expected_path(path))


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(NAME_LEAVES)), st.from_regex(r"[a-z][a-z0-9-]{2,12}", fullmatch=True))
def test_any_unknown_name_is_refused_naming_the_field(path: tuple[str | int, ...], name: str) -> None:
    from dab_core import DAB_LOSSES, experiments, hard_functions

    valid = {
        "max",
        "min",
        "elu-dense",
        "signum-dense",
        "signum-rnn",
        *DAB_LOSSES,
        *experiments,
        *hard_functions,
    }
    if name in valid:
        return
    assert_refused_at(set_at(VALID, path, name), expected_path(path))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(MAPPINGS), st.from_regex(r"zz_[a-z]{1,6}", fullmatch=True), st.integers(0, 3))
def test_any_unknown_key_is_refused_naming_it(at: tuple[str | int, ...], key: str, value: int) -> None:
    node: Any = VALID
    for p in at:
        node = node[p]
    new = set_at(VALID, (*at, key), [value] if at == ("grid",) else value) if at else {**VALID, key: value}
    assert_refused_at(new, render((*at, key)))


@pytest.mark.parametrize(("path", "value"), [(p, v) for p, v in PLACES], ids=[render(p) for p, _ in PLACES])
def test_every_field_refuses_a_wrong_type(path: tuple[str | int, ...], value: Any) -> None:
    # the exhaustive companion of the hypothesis test: one wrong value for every field
    bad = 12345 if isinstance(value, str) else "not-a-valid-value"
    assert_refused_at(set_at(VALID, path, bad), expected_path(path))
