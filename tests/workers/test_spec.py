"""Sweep specs: schema, loading with file:line errors, expansion, limits, and the paper's configs.

The property tests (counts, keys, single-field mutations) are in test_spec_properties.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from workers.spec import (
    MAX_SPEC_BYTES,
    MAX_TRIALS,
    SpecError,
    SweepSpec,
    SweepSuite,
    canonical_json,
    count_cells,
    count_trials,
    expand,
    load_spec,
    paper_values,
    parse_spec,
    preview,
)

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


def small(**changes: Any) -> dict[str, Any]:
    """A valid sorting spec with tiny trials; `changes` replace top-level fields."""
    spec: dict[str, Any] = {
        "name": "small",
        "experiment": "sorting",
        "params": {"steps": 10, "seq_len": 4, "train_size": 0, "test_size": 16, "batch_size": 8},
        "grid": {"model": ["signum-dense", "elu-dense"], "lr": [1e-3, 1e-4]},
        "replicates": 2,
    }
    spec.update(changes)
    return spec


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


# ------------------------------------------------------------------------------- expansion


def test_expand_resolves_validates_and_orders_trials() -> None:
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
    digest = hashlib.sha256(json.dumps(t.config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert t.trial_key == digest[:20]
    assert len({t.trial_key for t in trials}) == 8


def test_explicit_seeds_and_default_metric() -> None:
    spec = parse_spec(small(replicates=[7, 3]))
    assert spec.metric == "test_all_or_none" and spec.mode == "max"
    assert spec.seeds == [7, 3]
    trials = expand(spec)
    assert [t.seed for t in trials] == [7] * 4 + [3] * 4
    assert [t.replicate for t in trials] == [0] * 4 + [1] * 4
    # the same seed gives the same key whether it comes from a count or a list
    by_count = {(t.cell_key, t.seed): t.trial_key for t in expand(parse_spec(small(replicates=8)))}
    assert all(by_count[(t.cell_key, t.seed)] == t.trial_key for t in trials)


def test_include_exclude_and_cells_without_grid() -> None:
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


def test_dotted_keys_set_nested_fields() -> None:
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


def test_keys_ignore_key_order_and_number_spelling() -> None:
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


def test_trial_keys_are_stable_across_processes() -> None:
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


def test_duplicate_trials_are_refused_naming_both_cells() -> None:
    spec = parse_spec(small(include=[{"model": "elu-dense", "lr": 0.001}]))
    with pytest.raises(SpecError) as e:
        expand(spec)
    assert e.value.path == "include[0]"
    assert "lr=0.001,model=elu-dense" in str(e.value) and "same trial" in str(e.value)


def test_paper_values_match_cells() -> None:
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


def test_a_dumped_spec_parses_back_to_the_same_trials() -> None:
    spec = load_spec(CONFIGS / "table1_sorting.yaml")
    assert isinstance(spec, SweepSpec)
    again = parse_spec(json.dumps(spec.model_dump(mode="json")))
    assert again.model_dump() == spec.model_dump()
    assert [t.trial_key for t in expand(again)] == [t.trial_key for t in expand(spec)]


def test_preview_totals_resources() -> None:
    spec = parse_spec(small(resources={"cpu": 2, "gpu": 0.25, "memory_gb": 3}, duration_hours=1.5))
    f = preview(spec)["files"][0]
    assert (f["trials"], f["cells"], f["replicates"]) == (8, 4, 2)
    r = f["resources"]
    assert (r["cpu"], r["gpu"], r["cpu_hours"], r["gpu_hours"]) == (16, 2, 24, 3)
    assert sum(c["trials"] for c in f["cell_list"]) == 8
    assert preview(parse_spec(small()))["files"][0]["resources"]["cpu_hours"] is None
    json.dumps(preview(spec))


# ------------------------------------------------------------------------------- errors


def test_yaml_error_names_file_line_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.yaml",
        """
        name: bad
        experiment: sorting
        params:
          steps: 10
          seq_len: 5
        grid:
          model: [signum-dense, elu-dense, signum-dnese]
        """,
    )
    spec = load_spec(path)
    with pytest.raises(SpecError) as e:
        expand(spec)  # type: ignore[arg-type]
    err = e.value
    assert (err.source, err.line, err.path) == (str(path), 7, "grid.model[2]")
    assert str(err).startswith(f"{path}:7: grid.model[2]: unknown model 'signum-dnese'; known: ")
    assert "elu-dense, signum-dense, signum-rnn" in str(err) and "did you mean 'signum-dense'" in str(err)
    assert "[in trial cell model=signum-dnese]" in str(err)


@pytest.mark.parametrize(
    ("text", "line", "path", "needle"),
    [
        (
            "name: x\nexperiment: sorting\ngrdi: {}\nparams: {steps: 1, seq_len: 5}\n",
            3,
            "grdi",
            "did you mean 'grid'",
        ),
        (
            "name: x\nexperiment: sorting\nparams:\n  steps: 1\n  seq_len: '5'\n  model: elu-dense\n",
            5,
            "params.seq_len",
            "valid integer",
        ),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5, model: elu-dense, sequence: 3}\n",
            3,
            "params.sequence",
            "unknown field 'sequence'",
        ),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5, model: signum-dense, hard: sgn}\n",
            3,
            "params.hard",
            "unknown hard function 'sgn'",
        ),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5, model: signum-dense, hard_params: {epsilon: 1}}\n",
            3,
            "params.hard_params.epsilon",
            "unknown parameter 'epsilon'",
        ),
        ("name: x\nexperiment: sortin\nparams: {steps: 1}\n", 2, "experiment", "did you mean 'sorting'"),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5}\nparams: {}\n",
            4,
            "params",
            "duplicate key 'params'",
        ),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5}\ngrid:\n  model: [elu-dense]\n  steps: [2]\n",
            6,
            "grid.steps",
            "also fixed in params",
        ),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5, seed: 3}\n",
            3,
            "params.seed",
            "replicates",
        ),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5}\ngrid: {model: elu-dense}\n",
            4,
            "grid.model",
            "list of values",
        ),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5}\ngrid: {model: [elu-dense, elu-dense]}\n",
            4,
            "grid.model[1]",
            "duplicate value",
        ),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5}\ngrid:\n  model: [elu-dense]\nexclude:\n  - {model: signum-rnn}\n",
            7,
            "exclude[0].model",
            "remove nothing",
        ),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5, model: elu-dense}\nreplicates: [0, 1, 1]\n",
            4,
            "replicates[2]",
            "listed twice",
        ),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5, model: elu-dense}\nresources: {gpu: 1.5}\n",
            4,
            "resources.gpu",
            "whole GPUs",
        ),
        (
            "name: x\nexperiment: sorting\nparams: {steps: 1, seq_len: 5, model: elu-dense}\nmode: maximum\n",
            4,
            "mode",
            "unknown mode 'maximum'",
        ),
        (
            "name: x\nexperiment: sorting\nparams:\n  steps: 1\n  seq_len: 5\n  gamma: .nan\n  model: elu-dense\n",
            6,
            "params.gamma",
            "NaN",
        ),
        ("name: x\nexperiment: sorting\nparams: [steps, 1]\n", 3, "params", "valid dictionary"),
        (
            "name: x\nexperiment: sorting\nparams:\n  steps: 1\n  model: elu-dense\n",
            3,
            "params",
            "missing required field 'seq_len'",
        ),
    ],
)
def test_errors_name_line_and_path(
    tmp_path: Path, text: str, line: int | None, path: str, needle: str
) -> None:
    file = write(tmp_path, "spec.yaml", text)
    with pytest.raises(SpecError) as e:
        spec = load_spec(file)
        expand(spec)  # type: ignore[arg-type]
    err = e.value
    assert err.path == path, str(err)
    assert err.line == (line if line is not None else err.line), str(err)
    if line is not None:
        assert str(err).startswith(f"{file}:{line}: {path}: "), str(err)
    assert needle in str(err)
    assert "\n" not in str(err)
    assert err.to_dict()["details"][0]["path"] == path


def test_spec_errors_pickle_with_their_location() -> None:
    err = SpecError("bad", path="grid.model[2]", source="x.yaml", line=7, cell="model=x")
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.source, back.line, back.cell, str(back)) == (
        err.path,
        err.source,
        7,
        "model=x",
        str(err),
    )


def test_model_level_errors_blame_the_swept_field() -> None:
    spec = parse_spec(
        small(grid={"model": ["signum-dense", "signum-rnn"], "ponder_steps": [0, 2]}, replicates=1)
    )
    with pytest.raises(SpecError) as e:
        expand(spec)
    assert e.value.path == "grid.ponder_steps[1]"
    assert e.value.cell == "model=signum-dense,ponder_steps=2"
    assert "ponder_steps applies to model 'signum-rnn' only" in str(e.value)


def test_json_text_and_json_errors(tmp_path: Path) -> None:
    good = json.dumps(small())
    assert parse_spec(good, content_type="application/json").name == "small"
    assert parse_spec(good.encode()).name == "small"
    bad = '{"name": "x",\n "experiment": "sorting",\n "params": {"steps": 1 "lr": 2}}'
    with pytest.raises(SpecError) as e:
        parse_spec(bad, source="body.json")
    assert (e.value.line, e.value.source) == (3, "body.json") and "invalid JSON" in str(e.value)
    # the same text without a JSON hint is still reported as JSON (it starts with "{")
    with pytest.raises(SpecError, match="invalid JSON"):
        parse_spec(bad)
    with pytest.raises(SpecError, match="duplicate key 'name'") as e:
        parse_spec('{"name": "x",\n"name": "y"}')
    assert e.value.line == 2
    # flow-style YAML that is not JSON still reads as YAML
    assert parse_spec("{name: flow, experiment: sorting, params: {steps: 1, seq_len: 5}}").name == "flow"
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(small(grid={"model": ["elu-dense", "signum-dens"]}), indent=2))
    with pytest.raises(SpecError) as e:
        expand(load_spec(path))  # type: ignore[arg-type]
    assert e.value.path == "grid.model[1]" and e.value.line is not None
    assert json.loads(path.read_text().splitlines()[e.value.line - 1].strip().rstrip(",")) == "signum-dens"


def test_yaml_numbers_are_json_numbers() -> None:
    spec = parse_spec("name: x\nexperiment: sorting\nparams: {lr: 1e-4, steps: 2E1, seq_len: 5}\n")
    assert spec.params["lr"] == 1e-4 and isinstance(spec.params["lr"], float)


def test_values_are_not_coerced() -> None:
    for bad in ({"replicates": "2"}, {"replicates": True}, {"name": 5}, {"resources": {"cpu": "1"}}):
        with pytest.raises(SpecError) as e:
            parse_spec(small(**bad))
        assert e.value.path == next(iter(bad)) + (".cpu" if "resources" in bad else "")


def test_suite_refused_by_parse_spec_and_cycles(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="suite"):
        parse_spec({"name": "s", "include": ["a.yaml"]})
    write(tmp_path, "a.yaml", "name: a\ninclude: [b.yaml]\n")
    write(tmp_path, "b.yaml", "name: b\ninclude: [a.yaml]\n")
    with pytest.raises(SpecError, match="cycle") as e:
        load_spec(tmp_path / "a.yaml")
    assert e.value.path == "include[0]"
    write(tmp_path, "c.yaml", "name: c\ninclude:\n  - d.yaml\n  - nowhere.yaml\n")
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(small(name="d")))
    with pytest.raises(SpecError, match="no such spec file") as e:
        load_spec(tmp_path / "c.yaml")
    assert (e.value.path, e.value.line) == ("include[1]", 4)
    with pytest.raises(SpecError, match="no such spec file"):
        load_spec(tmp_path / "missing.yaml")


def test_nested_suites_flatten(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "one.yaml").write_text(yaml.safe_dump(small(name="one")))
    (tmp_path / "two.json").write_text(json.dumps(small(name="two", replicates=1)))
    write(sub, "inner.yaml", "name: inner\ninclude: [one.yaml]\n")
    write(tmp_path, "outer.yaml", "name: outer\ninclude: [sub/inner.yaml, two.json]\n")
    suite = load_spec(tmp_path / "outer.yaml")
    assert isinstance(suite, SweepSuite)
    assert [(f, s.name) for f, s in suite.specs] == [("sub/one.yaml", "one"), ("two.json", "two")]
    summary = preview(suite)
    assert summary["kind"] == "suite"
    assert [(f["file"], f["trials"]) for f in summary["files"]] == [("sub/one.yaml", 8), ("two.json", 4)]
    # the 4 trials of two.json are the seed-0 trials of one.yaml: same configs, same keys
    assert summary["total"]["trials"] == 12 and summary["total"]["distinct_trials"] == 8


# ------------------------------------------------------------------------------- limits


def test_a_megabyte_spec_is_refused_before_parsing(tmp_path: Path) -> None:
    text = "name: big\nexperiment: sorting\ndescription: " + "x" * (1 << 20) + "\n"
    for data in (text, text.encode()):
        with pytest.raises(SpecError, match=r"bytes; the limit is 262,144 bytes \(MAX_SPEC_BYTES\)"):
            parse_spec(data)
    path = tmp_path / "big.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match="MAX_SPEC_BYTES") as e:
        load_spec(path)
    assert e.value.source == str(path)
    with pytest.raises(SpecError, match="MAX_SPEC_BYTES"):
        parse_spec(small(description="x" * MAX_SPEC_BYTES))


def test_a_million_trials_is_refused_without_expanding() -> None:
    grid = {"seq_len": list(range(2, 102)), "batch_size": list(range(1, 101))}
    with pytest.raises(SpecError) as e:
        parse_spec(small(grid=grid, params={"steps": 1, "model": "elu-dense"}, replicates=100))
    assert e.value.path == "grid"
    assert "1,000,000 trials (grid 100 x 100 = 10,000 cells, x 100 replicates)" in str(e.value)
    assert f"the limit is {MAX_TRIALS:,}" in str(e.value)
    # 40 axes of 40 values: 40**40 trials. Only arithmetic can refuse this in finite time.
    huge = {f"hard_params.p{i}": list(range(40)) for i in range(40)}
    start = time.perf_counter()
    with pytest.raises(SpecError, match="MAX_TRIALS"):
        parse_spec(small(grid=huge))
    assert time.perf_counter() - start < 30  # a generous bound: expanding would never end


def test_trial_limit_boundary_and_spec_cap() -> None:
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


def test_yaml_alias_bombs_are_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]"
        for i in range(1, 9)
    ]
    with pytest.raises(SpecError, match="aliases"):
        parse_spec("\n".join(["name: x", "experiment: sorting", "description:", *("  " + x for x in lines)]))


# ------------------------------------------------------------------------------- the configs

EXPECTED = {
    "table1_sorting.yaml": 45,
    "fig3_pondering.yaml": 110,
    "fig4_fashionmnist.yaml": 210,
    "fig4_cifar10.yaml": 210,
    "fig5_imagenet.yaml": 30,
    "table2_cifar10.yaml": 25,
    "fig6_placement.yaml": 20,
    "fig6_emd.yaml": 10,
    "fig6_ste.yaml": 10,
}


@pytest.fixture(scope="module")
def paper_preview() -> dict[str, Any]:
    suite = load_spec(CONFIGS / "paper.yaml")
    assert isinstance(suite, SweepSuite)
    return preview(suite)


def test_paper_suite_counts(paper_preview: dict[str, Any]) -> None:
    counts = {f["file"]: f["trials"] for f in paper_preview["files"]}
    assert counts == EXPECTED
    assert paper_preview["total"]["trials"] == sum(EXPECTED.values()) == 670 >= 600
    # shared trials: Fig 3's 5-ponder cells = Table 1's Signum-RNN T=5/10 cells (10), Fig 6-left
    # block 4 = Table 2 Signum (5), Fig 6-middle unconditioned = Table 2 Sort (5)
    assert paper_preview["total"]["distinct_trials"] == 650
    assert all(f["replicates"] == 5 for f in paper_preview["files"])


def test_paper_header_arithmetic_matches_the_configs(paper_preview: dict[str, Any]) -> None:
    header = (CONFIGS / "paper.yaml").read_text()
    documented = dict(re.findall(r"^#\s+(\S+\.yaml)\s.*=\s+(\d+)$", header, flags=re.M))
    assert {k: int(v) for k, v in documented.items()} == EXPECTED
    assert re.search(r"^#\s+total\s+670$", header, flags=re.M)
    docs = (ROOT / "docs" / "configs.md").read_text()
    for name, n in EXPECTED.items():
        assert re.search(rf"{re.escape(name)}.*\b{n}\b", docs), name


@pytest.mark.parametrize("path", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_config_validates_and_states_what_it_reproduces(path: str) -> None:
    loaded = load_spec(CONFIGS / path)
    text = (CONFIGS / path).read_text()
    assert text.startswith("#"), "a config opens with a header comment"
    header = text[: text.index("\nname:")]
    if isinstance(loaded, SweepSuite):
        return
    trials = expand(loaded)
    assert len(trials) == count_trials(loaded)
    for word in ("Trials:", "Cost:", "paper"):
        assert word in header, f"{path}: the header says nothing about {word!r}"
    if path in EXPECTED:
        assert "Choices the paper leaves open" in header
        assert loaded.duration_hours is not None
        assert re.search(rf"=\s*{len(trials)}\b", header), "the header's trial arithmetic"


def test_quickstart_is_four_small_trials() -> None:
    spec = load_spec(CONFIGS / "quickstart.yaml")
    assert isinstance(spec, SweepSpec)
    trials = expand(spec)
    assert len(trials) == 4
    assert {t.config["model"] for t in trials} == {"signum-dense", "elu-dense"}
    assert {t.config["seq_len"] for t in trials} == {5} and spec.seeds == [0, 1]
    assert all(t.config["steps"] * t.config["batch_size"] <= 5_000_000 for t in trials)
    assert spec.resources.gpu == 0 and (spec.limits.max_concurrent or 1) <= 2


def test_import_is_cheap() -> None:
    code = "import sys, workers.spec; print(sorted(m for m in ('torch', 'fastapi', 'ray', 'mlflow', 'dab_core') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_canonical_json_is_compact_sorted_and_finite() -> None:
    assert canonical_json({"b": 1, "a": [1.5, "é"]}) == '{"a":[1.5,"é"],"b":1}'
    with pytest.raises(ValueError):
        canonical_json({"a": float("nan")})
