"""Loading specs: JSON and YAML text, line numbers, suites, and the limits on hostile input."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from workers.spec import (
    MAX_DEPTH,
    MAX_NODES,
    MAX_SPEC_BYTES,
    SpecError,
    SweepSpec,
    SweepSuite,
    canonical_json,
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


# ------------------------------------------------------------------------------- hostile input

DEEP = 100_000


def _deep_inputs() -> dict[str, Any]:
    """Each nested DEEP levels; the ones that fit in MAX_SPEC_BYTES must hit MAX_DEPTH."""
    deep_dict: dict[str, Any] = {}
    node = deep_dict
    for _ in range(DEEP):
        node["a"] = {}
        node = node["a"]
    return {
        "json list": ("[" * DEEP + "]" * DEEP, "application/json"),
        "json list, no hint": ("[" * DEEP + "]" * DEEP, None),
        "json object (40,000)": ('{"a":' * 40_000 + "1" + "}" * 40_000, "application/json"),
        "yaml flow list": ("[" * DEEP + "]" * DEEP, "application/yaml"),
        "yaml flow mapping (50,000)": ("{a: " * 50_000 + "1" + "}" * 50_000, "application/yaml"),
        "yaml block list": ("- " * DEEP + "x\n", "application/yaml"),
        "yaml block mapping": ("".join("  " * i + "a:\n" for i in range(400)), "application/yaml"),
        "a mapping": (deep_dict, None),
    }


@pytest.mark.parametrize("kind", sorted(_deep_inputs()))
def test_deep_nesting_is_refused_naming_the_limit(kind: str) -> None:
    data, content_type = _deep_inputs()[kind]
    with pytest.raises(SpecError) as e:
        parse_spec(data, content_type=content_type)
    assert f"nested deeper than {MAX_DEPTH} levels (MAX_DEPTH)" in str(e.value)
    assert "\n" not in str(e.value)


def test_deeper_than_the_size_limit_allows_is_refused_by_size() -> None:
    # {"a": at 100,000 levels is 600 kB: the size limit answers first, still a SpecError
    for text in ('{"a":' * DEEP + "1" + "}" * DEEP, "{a: " * DEEP + "1" + "}" * DEEP):
        with pytest.raises(SpecError, match="MAX_SPEC_BYTES"):
            parse_spec(text)


def test_nesting_at_the_limit_is_read() -> None:
    # MAX_DEPTH levels in all: the spec's mapping and MAX_DEPTH - 1 lists in description
    inner = "[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1)
    for text in (
        f"name: x\nexperiment: sorting\ndescription: {inner}\n",
        json.dumps({"name": "x", "experiment": "sorting", "description": json.loads(inner)}),
    ):
        with pytest.raises(SpecError) as e:
            parse_spec(text)
        assert e.value.path == "description" and "MAX_DEPTH" not in str(e.value)  # a type error, not depth
    with pytest.raises(SpecError, match="MAX_DEPTH"):
        parse_spec(f"name: x\nexperiment: sorting\ndescription: [{inner}]\n")


def test_recursive_and_deep_aliases_are_refused() -> None:
    for text in ("a: &a [*a]\n", "a: &a {b: *a}\n", "- &x [1, [2, *x]]\n"):
        with pytest.raises(SpecError, match="inside its own anchor"):
            parse_spec(text)
    # each alias is one level in the text and one more in the document: depth counts the latter
    chain = ["a0: &a0 [x]", *(f"a{i}: &a{i} [*a{i - 1}]" for i in range(1, 200))]
    with pytest.raises(SpecError, match=r"deeper than 64 levels \(MAX_DEPTH\)") as e:
        parse_spec("\n".join(chain) + "\n")
    assert e.value.line == MAX_DEPTH  # where the alias that went too deep is


def test_aliases_count_what_they_expand_to() -> None:
    # 10 ** 6 values from 600 bytes: refused while composing, with the limit in the message
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 6)]
    with pytest.raises(SpecError, match=rf"more than {MAX_NODES:,} values once YAML aliases are expanded"):
        parse_spec("\n".join(lines) + "\n")
    # aliases that stay under the limit are fine
    spec = parse_spec(
        "name: x\nexperiment: sorting\nparams: &p {steps: 10, seq_len: 4, model: elu-dense}\n"
        "include:\n  - *p\n"
    )
    assert spec.include == [spec.params]


def test_numbers_longer_than_python_converts_are_refused() -> None:
    digits = "1" * (sys.get_int_max_str_digits() + 1)
    for text in (f"name: x\nexperiment: sorting\nparams: {{steps: {digits}}}\n", f'{{"name": {digits}}}'):
        with pytest.raises(SpecError, match=r"more than 4,300 digits, Python's limit") as e:
            parse_spec(text)
        assert e.value.line in (None, 3)


def test_one_size_check_for_text_files_and_mappings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text_module = sys.modules["workers.spec.text"]
    sizes: list[int] = []
    real = text_module.check_size

    def counting(size: int, source: str) -> None:
        sizes.append(size)
        real(size, source)

    monkeypatch.setattr(text_module, "check_size", counting)
    monkeypatch.setattr(sys.modules["workers.spec.load"], "check_size", counting)
    parse_spec("name: x\nexperiment: sorting\n")
    assert sizes == [len("name: x\nexperiment: sorting\n")]
    sizes.clear()
    parse_spec({"name": "x", "experiment": "sorting"})
    assert sizes == [len(canonical_json({"experiment": "sorting", "name": "x"}))]
    sizes.clear()
    path = tmp_path / "x.yaml"
    path.write_text("name: x\nexperiment: sorting\n")
    load_spec(path)
    assert sizes == [path.stat().st_size] * 2  # the file's size before reading, then the text's


def test_a_suite_with_its_members_inline() -> None:
    """`parse_suite`: the REST form of a suite; its round trip from a suite file; every mistake
    names the member field."""
    from workers.spec import SpecError, count_trials, load_spec, parse_suite, suite_document

    paper = load_spec(ROOT / "configs" / "paper.yaml")
    doc = suite_document(paper)  # type: ignore[arg-type]
    again = parse_suite(doc)
    assert [f for f, _ in again.specs] == [f for f, _ in paper.specs]  # type: ignore[union-attr]
    assert sum(count_trials(s) for _, s in again.specs) == 670
    spec = {"name": "t", "experiment": "sorting", "params": {"steps": 10}}

    def error(d: dict[str, object]) -> SpecError:
        with pytest.raises(SpecError) as e:
            parse_suite(d)
        return e.value

    assert error({"name": "x", "members": [{"file": "a", "spec": spec}] * 2}).path == "members[1].file"
    assert error({"name": "x", "members": [{"file": "", "spec": spec}]}).path == "members[0].file"
    bad = {**spec, "replicates": 0}
    e = error({"name": "x", "members": [{"file": "a", "spec": spec}, {"file": "b", "spec": bad}]})
    assert e.path == "members[1].spec.replicates"
    assert error({"name": "x", "include": ["a.yaml"]}).path == "include"  # paths are not readable here
    assert error({"name": "x", "members": []}).path == "members"
