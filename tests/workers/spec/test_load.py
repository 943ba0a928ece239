"""Loading specs: JSON and YAML text, line numbers, suites, and the limits on hostile input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from workers.spec import (
    MAX_SPEC_BYTES,
    SpecError,
    SweepSpec,
    SweepSuite,
    expand,
    load_spec,
    parse_spec,
    preview,
)

ROOT = Path(__file__).resolve().parents[3]
CONFIGS = ROOT / "configs"
SmallSpec = Callable[..., dict[str, Any]]  # the `small` fixture (conftest.py)
WriteFile = Callable[[Path, str, str], Path]  # the `write` fixture


def test_json_text_and_json_errors(tmp_path: Path, small: SmallSpec) -> None:
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


def test_suite_refused_by_parse_spec_and_cycles(tmp_path: Path, small: SmallSpec, write: WriteFile) -> None:
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


def test_nested_suites_flatten(tmp_path: Path, small: SmallSpec, write: WriteFile) -> None:
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


def test_a_megabyte_spec_is_refused_before_parsing(tmp_path: Path, small: SmallSpec) -> None:
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


def test_yaml_alias_bombs_are_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]"
        for i in range(1, 9)
    ]
    with pytest.raises(SpecError, match="aliases"):
        parse_spec("\n".join(["name: x", "experiment: sorting", "description:", *("  " + x for x in lines)]))


def test_a_dumped_spec_parses_back_to_the_same_trials() -> None:
    spec = load_spec(CONFIGS / "table1_sorting.yaml")
    assert isinstance(spec, SweepSpec)
    again = parse_spec(json.dumps(spec.model_dump(mode="json")))
    assert again.model_dump() == spec.model_dump()
    assert [t.trial_key for t in expand(again)] == [t.trial_key for t in expand(spec)]
