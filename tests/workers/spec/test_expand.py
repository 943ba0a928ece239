"""Expanding specs into trials: order, resolved configs, cells, keys, duplicates, the paper's values."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from workers.spec import (
    SpecError,
    canonical_json,
    count_cells,
    count_trials,
    expand,
    paper_values,
    parse_spec,
    preview,
)

ROOT = Path(__file__).resolve().parents[3]
SmallSpec = Callable[..., dict[str, Any]]  # the `small` fixture (conftest.py)


def test_expand_resolves_validates_and_orders_trials(small: SmallSpec) -> None:
    spec = parse_spec(small())
    trials = expand(spec)
    assert len(trials) == count_trials(spec) == 8
    assert [t.index for t in trials] == list(range(8))
    # replicate-major: every cell's seed 0 first, then every cell's seed 1
    assert [t.seed for t in trials] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert [t.cell_key for t in trials[:4]] == [
        "lr=0.001,model=signum-dense",
        "lr=0.0001,model=signum-dense",
        "lr=0.001,model=elu-dense",
        "lr=0.0001,model=elu-dense",
    ]
    t = trials[5]
    assert t.cell == {"model": "signum-dense", "lr": 1e-4} and t.replicate == 1 and t.seed == 1
    # the config is the family's resolved config: defaults filled in, experiment and seed set
    assert t.config["experiment"] == "sorting" and t.config["seed"] == 1
    assert (
        t.config["gamma"] == 10.0
        and t.config["hard"] == "signum"
        and t.config["dense_hidden"] == [128, 128, 256]
    )
    assert json.loads(json.dumps(t.config)) == t.config
    what = {k: v for k, v in t.config.items() if k != "compile"}  # how it computes, not what
    assert t.config["compile"] == "auto"
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert t.trial_key == digest[:20]
    assert len({t.trial_key for t in trials}) == 8


def test_include_exclude_and_cells_without_grid(small: SmallSpec) -> None:
    spec = parse_spec(
        small(
            grid={"model": ["signum-dense", "elu-dense"], "seq_len": [4, 5, 6]},
            params={"steps": 10, "train_size": 0, "test_size": 16, "batch_size": 8},
            exclude=[{"model": "elu-dense"}, {"seq_len": 6}],
            include=[{"model": "signum-rnn", "seq_len": 4, "ponder_steps": 2}],
            replicates=1,
        )
    )
    # 2 x 3 = 6, minus the 3 elu-dense cells and signum-dense/6 (4 excluded), plus 1
    assert count_cells(spec) == 3
    cells = [t.cell_key for t in expand(spec)]
    assert cells == [
        "model=signum-dense,seq_len=4",
        "model=signum-dense,seq_len=5",
        "model=signum-rnn,ponder_steps=2,seq_len=4",
    ]
    # include cells may override params
    over = expand(parse_spec(small(include=[{"model": "elu-dense", "lr": 0.5, "steps": 20}], replicates=1)))
    assert over[-1].config["steps"] == 20 and over[0].config["steps"] == 10
    # no grid: one cell from params alone; with includes: exactly the includes
    params = {"steps": 10, "seq_len": 4, "model": "elu-dense", "train_size": 0}
    alone = parse_spec({"name": "a", "experiment": "sorting", "params": params})
    assert [t.cell_key for t in expand(alone)] == [""]
    listed = parse_spec(
        {
            "name": "b",
            "experiment": "sorting",
            "params": params,
            "include": [{"lr": 0.1}, {"lr": 0.2}],
            "replicates": 3,
        }
    )
    assert count_trials(listed) == 6 == len(expand(listed))


def test_dotted_keys_set_nested_fields(small: SmallSpec) -> None:
    spec = parse_spec(
        small(
            grid={"model": ["signum-dense"], "hard_params.eps": [0.25, 0.5]},
            params={"steps": 10, "seq_len": 4, "train_size": 0, "hard_params": {}},
            replicates=1,
        )
    )
    trials = expand(spec)
    assert [t.config["hard_params"] for t in trials] == [{"eps": 0.25}, {"eps": 0.5}]
    assert trials[0].cell_key == "hard_params.eps=0.25,model=signum-dense"


def test_keys_ignore_key_order_and_number_spelling(small: SmallSpec) -> None:
    a = small()
    b = json.loads(json.dumps(a))
    b = {k: b[k] for k in reversed(list(b))}
    b["params"] = {k: b["params"][k] for k in sorted(b["params"], reverse=True)}
    b["grid"] = {"lr": [0.001, 0.0001], "model": ["signum-dense", "elu-dense"]}
    ka = {(t.cell_key, t.seed): t.trial_key for t in expand(parse_spec(a))}
    kb = {(t.cell_key, t.seed): t.trial_key for t in expand(parse_spec(b))}
    assert ka == kb
    # 10 and 10.0 for a float field resolve to the same config and key
    c = small(params={**small()["params"], "gamma": 10})
    d = small(params={**small()["params"], "gamma": 10.0})
    assert [t.trial_key for t in expand(parse_spec(c))] == [t.trial_key for t in expand(parse_spec(d))]


KEY_SCRIPT = """
import json, sys
from workers.spec import expand, parse_spec
spec = parse_spec(json.loads(sys.argv[1]))
print(json.dumps([t.trial_key for t in expand(spec)]))
"""


def test_trial_keys_are_stable_across_processes(small: SmallSpec) -> None:
    spec = small(
        params={**small()["params"], "hard_params": {"eps": 0.3}},
        grid={"model": ["signum-dense"], "lr": [0.1, 1e-5]},
    )
    here = [t.trial_key for t in expand(parse_spec(spec))]
    for hash_seed in ("4242",):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", KEY_SCRIPT, json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            check=True,
        )
        assert json.loads(out.stdout) == here


def test_duplicate_trials_are_refused_naming_both_cells(small: SmallSpec) -> None:
    spec = parse_spec(small(include=[{"model": "elu-dense", "lr": 0.001}]))
    with pytest.raises(SpecError) as e:
        expand(spec)
    assert e.value.path == "include[0]"
    assert "lr=0.001,model=elu-dense" in str(e.value) and "same trial" in str(e.value)


def test_paper_values_match_cells(small: SmallSpec) -> None:
    spec = parse_spec(
        small(paper=[{"match": {"model": "elu-dense"}, "value": 0.5, "std": 0.1, "source": "Table 1"}])
    )
    trials = expand(spec)
    elu = next(t for t in trials if t.cell["model"] == "elu-dense")
    dense = next(t for t in trials if t.cell["model"] == "signum-dense")
    assert [p.value for p in paper_values(spec, elu.config)] == [0.5]
    assert paper_values(spec, dense.config) == []
    summary = preview(spec)
    papers = {c["cell_key"]: c["paper"] for c in summary["files"][0]["cell_list"]}
    assert papers["lr=0.001,model=elu-dense"] == [
        {"metric": "test_all_or_none", "value": 0.5, "std": 0.1, "source": "Table 1"}
    ]
    with pytest.raises(SpecError, match="matches no cell") as e:
        expand(parse_spec(small(paper=[{"match": {"model": "signum-rnn"}, "value": 1.0}])))
    assert e.value.path == "paper[0].match"
    with pytest.raises(SpecError, match="not a config field") as e:
        expand(parse_spec(small(paper=[{"match": {"modle": "elu-dense"}, "value": 1.0}])))
    assert e.value.path == "paper[0].match.modle"


def test_canonical_json_is_compact_sorted_and_finite() -> None:
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'
    with pytest.raises(ValueError):
        canonical_json({"a": float("nan")})


def test_expansion_validates_each_trial_once(small: SmallSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    from dab_core.experiments.sorting import SortingConfig

    validated: list[dict[str, Any]] = []
    real = SortingConfig.model_validate_json

    def counting(cls: type[SortingConfig], text: str, **kwargs: Any) -> Any:
        validated.append(json.loads(text))
        return real(text, **kwargs)

    monkeypatch.setattr(SortingConfig, "model_validate_json", classmethod(counting))
    spec = parse_spec(small())
    trials = expand(spec)
    assert len(validated) == len(trials) == count_trials(spec) == 8
    assert len({canonical_json(c) for c in validated}) == 8  # each distinct config once
