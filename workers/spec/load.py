"""Loading specs: a document (text, or a mapping) checked to be plain JSON and validated
into a `SweepSpec`, a suite file with every spec it lists (`parse_spec`, `load_spec`), or a
suite whose member specs travel inline, as the REST API takes it (`parse_suite`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from workers.spec.count import count_trials
from workers.spec.errors import FieldPath, SpecError, format_path, line_of, short_repr, spec_error
from workers.spec.expand import canonical_json
from workers.spec.schema import MAX_TRIALS, SweepSpec, SweepSuite
from workers.spec.text import MAX_DEPTH, MAX_SPEC_BYTES, check_size, depth_error, read_document

_Doc = TypeVar("_Doc", SweepSpec, SweepSuite)


def plain_json(value: Any, source: str, lines: Mapping[FieldPath, int], path: FieldPath = ()) -> Any:
    """`value` as plain JSON data (tuples become lists): the one check that a document has
    string keys, finite numbers and at most MAX_DEPTH levels; SpecError at the first other thing."""

    def fail(p: FieldPath, what: str) -> SpecError:
        return SpecError(what, path=p, source=source, line=line_of(lines, p))

    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise fail(path, "NaN and infinity are not valid values")
        return value
    if isinstance(value, Mapping | list | tuple) and len(path) >= MAX_DEPTH:
        raise depth_error(source, line_of(lines, path))
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise fail(path, f"keys are strings; got the key {short_repr(k)}")
            out[k] = plain_json(v, source, lines, (*path, k))
        return out
    if isinstance(value, list | tuple):
        return [plain_json(v, source, lines, (*path, i)) for i, v in enumerate(value)]
    raise fail(path, f"not a JSON value: {short_repr(value)} ({type(value).__name__})")


def _document(
    data: Mapping[str, Any] | str | bytes, source: str, content_type: str | None
) -> tuple[dict[str, Any], dict[FieldPath, int]]:
    if isinstance(data, str | bytes):
        doc, lines = read_document(data, source=source, content_type=content_type)
    elif isinstance(data, Mapping):
        doc, lines = data, {}
    else:
        raise SpecError(
            f"a spec is a mapping or its YAML/JSON text, got {type(data).__name__}", source=source
        )
    if not isinstance(doc, Mapping):
        raise SpecError(f"a spec is a mapping of fields, got {type(doc).__name__}", source=source, line=1)
    doc = plain_json(doc, source, lines)
    if not isinstance(data, str | bytes):
        check_size(len(canonical_json(doc).encode("utf-8")), source)
    return doc, lines


def _is_suite(doc: Any) -> bool:
    inc = doc.get("include") if isinstance(doc, Mapping) else None
    return (
        isinstance(doc, Mapping)
        and "experiment" not in doc
        and isinstance(inc, list)
        and bool(inc)
        and all(isinstance(x, str) for x in inc)
    )


def _validate(model: type[_Doc], doc: dict[str, Any], source: str, lines: dict[FieldPath, int]) -> _Doc:
    try:
        out = model.model_validate(doc)
    except ValidationError as e:
        raise spec_error(e, model=model, data=doc, source=source, lines=lines) from None
    out._source = source
    if isinstance(out, SweepSpec):
        out._lines = lines
    return out


def parse_spec(
    data: Mapping[str, Any] | str | bytes, source: str = "<spec>", content_type: str | None = None
) -> SweepSpec:
    """Validate a spec given as a mapping or as YAML/JSON text (not a suite).

    Args:
        data: the spec; text is JSON when `content_type` says so, when `source` ends in
            ``.json``, or when it starts with ``{`` and parses as JSON; YAML otherwise.
        source: the name errors give for where the spec came from.
        content_type: e.g. ``"application/json"`` or ``"application/yaml"``.

    Returns:
        The validated spec. Trial configs are validated by `expand`.

    Raises:
        SpecError: naming the field path (and the line, for text).
    """
    doc, lines = _document(data, source, content_type)
    if _is_suite(doc):
        raise SpecError(
            "this is a suite (a list of spec files under 'include'), not a sweep: submit it with "
            "`dab submit <suite file>`, or POST it to /v1/suites with each member inline",
            path="include",
            source=source,
            line=line_of(lines, ("include",)),
        )
    if "members" in doc and "experiment" not in doc:
        raise SpecError(
            "this is a suite (members: [{file, spec}]), not a sweep: POST it to /v1/suites",
            path="members",
            source=source,
            line=line_of(lines, ("members",)),
        )
    return _validate(SweepSpec, doc, source, lines)


#: Members a suite may list (the paper's is nine).
MAX_SUITE_MEMBERS = 100
_SUITE_FIELDS = {"name", "description", "members"}


def parse_suite(
    data: Mapping[str, Any] | str | bytes, source: str = "<suite>", content_type: str | None = None
) -> SweepSuite:
    """Validate a suite with its members inline: ``{"name", "description", "members": [{"file",
    "spec"}, ...]}``, each ``spec`` a sweep spec (``file`` names it, as the suite file listed it).

    Raises:
        SpecError: naming the field path (``members[2].spec.grid.model``) and line.
    """
    doc, lines = _document(data, source, content_type)

    def fail(path: FieldPath, what: str) -> SpecError:
        return SpecError(what, path=path, source=source, line=line_of(lines, path))

    if _is_suite(doc):
        raise fail(
            ("include",),
            "a suite file's 'include' lists paths, which the service cannot read: send each "
            "member inline as members: [{file, spec}] (`dab submit` on the suite file does)",
        )
    unknown = sorted(set(doc) - _SUITE_FIELDS)
    if unknown:
        raise fail((unknown[0],), f"unknown field; a suite has: {', '.join(sorted(_SUITE_FIELDS))}")
    members = doc.get("members")
    if not isinstance(members, list) or not members:
        raise fail(("members",), "a non-empty list of {file, spec} is required")
    if len(members) > MAX_SUITE_MEMBERS:
        raise fail(("members",), f"{len(members)} members; a suite has at most {MAX_SUITE_MEMBERS}")
    files: list[str] = []
    specs: list[SweepSpec] = []
    for i, m in enumerate(members):
        if not isinstance(m, Mapping) or set(m) != {"file", "spec"}:
            got = sorted(m) if isinstance(m, Mapping) else type(m).__name__
            raise fail(("members", i), f"each member is {{file, spec}}; got {got}")
        if not isinstance(m["file"], str) or not m["file"].strip():
            raise fail(("members", i, "file"), "a file name (a non-empty string) is required")
        if m["file"] in files:
            raise fail(
                ("members", i, "file"), f"{m['file']!r} is listed twice (also at [{files.index(m['file'])}])"
            )
        if not isinstance(m["spec"], Mapping):
            raise fail(("members", i, "spec"), "a sweep spec (a mapping) is required")
        try:
            spec = _validate(SweepSpec, dict(m["spec"]), f"{source} {m['file']}", {})
        except SpecError as e:
            prefix = format_path(("members", i, "spec"))
            sub = f"{prefix}.{e.path}" if e.path and not e.path.startswith("[") else f"{prefix}{e.path}"
            raise SpecError(
                e.message,
                path=sub,
                source=source,
                line=line_of(lines, ("members", i, "spec")),
                cell=e.cell,
            ) from None
        files.append(m["file"])
        specs.append(spec)
    suite = _validate(
        SweepSuite,
        {"name": doc.get("name"), "description": doc.get("description", ""), "include": files},
        source,
        {},
    )
    total = sum(count_trials(s) for s in specs)
    if total > MAX_TRIALS:
        raise fail(
            ("members",), f"the suite expands to {total:,} trials; the limit is {MAX_TRIALS:,} (MAX_TRIALS)"
        )
    suite._members = list(zip(files, specs, strict=True))
    return suite


def suite_document(suite: SweepSuite) -> dict[str, Any]:
    """The inline form of a loaded suite (what `parse_suite` takes, and the CLI sends)."""
    return {
        "name": suite.name,
        "description": suite.description,
        "members": [{"file": f, "spec": s.model_dump(mode="json")} for f, s in suite.specs],
    }


def load_spec(path: str | Path) -> SweepSpec | SweepSuite:
    """Load a spec or a suite from a YAML or JSON file (a suite loads every file it lists).

    Raises:
        SpecError: naming the file, line and field path.
    """
    return _load(Path(path), str(path), ())


def _read(path: Path, source: str) -> bytes:
    try:
        check_size(path.stat().st_size, source)  # before reading a file of any size
        with path.open("rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)  # the file may have grown since stat
    except FileNotFoundError:
        raise SpecError("no such spec file", source=source) from None
    except IsADirectoryError:
        raise SpecError("is a directory, not a spec file", source=source) from None
    except OSError as e:
        raise SpecError(f"cannot read the spec file: {e.strerror or e}", source=source) from None
    return raw  # read_document refuses it if it is over the limit


def _load(path: Path, source: str, stack: tuple[Path, ...]) -> SweepSpec | SweepSuite:
    raw = _read(path, source)
    content_type = "application/json" if path.suffix.lower() == ".json" else None
    doc, lines = _document(raw, source, content_type)
    if not _is_suite(doc):
        return _validate(SweepSpec, doc, source, lines)
    suite = _validate(SweepSuite, doc, source, lines)
    here = path.resolve()
    members: list[tuple[str, SweepSpec]] = []
    for i, name in enumerate(suite.include):
        child = path.parent / name
        where = {"path": ("include", i), "source": source, "line": line_of(lines, ("include", i))}
        if child.resolve() in (*stack, here):
            raise SpecError(f"{name!r} includes itself (a cycle of suites)", **where)  # type: ignore[arg-type]
        if not child.is_file():
            raise SpecError(f"no such spec file {str(child)!r}", **where)  # type: ignore[arg-type]
        loaded = _load(child, str(child), (*stack, here))
        if isinstance(loaded, SweepSuite):
            prefix = str(Path(name).parent)
            members.extend((m if prefix == "." else f"{prefix}/{m}", s) for m, s in loaded.specs)
        else:
            members.append((name, loaded))
    total = sum(count_trials(s) for _, s in members)
    if total > MAX_TRIALS:
        raise SpecError(
            f"the suite expands to {total:,} trials; the limit is {MAX_TRIALS:,} (MAX_TRIALS)",
            path="include",
            source=source,
            line=line_of(lines, ("include",)),
        )
    suite._members = members
    return suite


__all__ = ["MAX_SUITE_MEMBERS", "load_spec", "parse_spec", "parse_suite", "plain_json", "suite_document"]
