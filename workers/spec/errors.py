"""Errors of sweep specs: `SpecError`, field paths, and the one translator from a pydantic
`ValidationError` (of the spec itself, or of a trial config it resolves to) to a `SpecError`.

Locations come from structure, never from reading messages: pydantic's ``loc``, and the
attributes of the exceptions validators raise (`FieldError.rel_path` here;
`dab_core.config.ConfigError.fields`, `dab_core.hard.HardParamError.param`,
`dab_core.registry.UnknownNameError.name` in the library). Rewording a message moves nothing.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError

#: A place in a spec document: mapping keys (str) and list indices (int), from the root.
FieldPath = tuple[str | int, ...]


def format_path(path: Sequence[str | int]) -> str:
    """``("grid", "model", 2)`` -> ``"grid.model[2]"``; ``("include", 0, "seq_len")`` ->
    ``"include[0].seq_len"``. The root is the empty string."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def line_of(lines: Mapping[FieldPath, int], path: Sequence[str | int]) -> int | None:
    """The line of `path` in its document, or of its nearest ancestor written there."""
    p = tuple(path)
    while p:
        if p in lines:
            return lines[p]
        p = p[:-1]
    return None


class SpecError(ValueError):
    """A mistake in a sweep spec, found before any compute.

    Attributes:
        message: what is wrong, in words (without the location).
        path: the field path in the spec, e.g. ``"grid.model[2]"`` ("" for the whole spec).
        source: the file the spec came from, or ``"<spec>"``.
        line: the line of `path` in `source` (1-based), when known.
        cell: the readable key of the trial cell the mistake was found in, if any.
        details: every problem found, as JSON-able dicts ``{path, line, message}``; the first
            is the one the attributes above describe.

    ``str(error)`` is one line: ``source:line: path: message [in cell ...]``.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Sequence[str | int] = "",
        source: str = "<spec>",
        line: int | None = None,
        cell: str | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        self.message = message
        self.path = path if isinstance(path, str) else format_path(path)
        self.source = source
        self.line = line
        self.cell = cell
        self.details = details or [{"path": self.path, "line": line, "message": message}]
        super().__init__(message)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, for an HTTP 422 body."""
        return {
            "error": "invalid_spec",
            "message": str(self),
            "source": self.source,
            "path": self.path,
            "line": self.line,
            "cell": self.cell,
            "details": self.details,
        }

    def __str__(self) -> str:
        where = self.source + (f":{self.line}" if self.line is not None else "")
        text = f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"
        if self.cell is not None:
            text += f" [in trial cell {self.cell or '(no grid)'}]"
        if len(self.details) > 1:
            text += f" (and {len(self.details) - 1} more problem{'s' if len(self.details) > 2 else ''})"
        return text


class FieldError(ValueError):
    """Raised inside the spec's validators: a message and a path relative to the value being
    validated (the model, or the field of a field validator)."""

    def __init__(self, path: FieldPath, message: str) -> None:
        super().__init__(message)
        self.rel_path = path
        self.message = message


def short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def suggest(word: Any, known: Sequence[Any]) -> str:
    """`` (did you mean 'x'?)`` for the closest known name, or nothing."""
    close = difflib.get_close_matches(str(word), [str(k) for k in known], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def get_path(tree: Any, parts: Sequence[str | int]) -> tuple[bool, Any]:
    """``(True, value)`` at `parts` inside nested mappings and lists, else ``(False, None)``."""
    node: Any = tree
    for p in parts:
        if isinstance(node, Mapping) and p in node:
            node = node[p]
        elif isinstance(node, list) and isinstance(p, int) and 0 <= p < len(node):
            node = node[p]
        else:
            return False, None
    return True, node


# --------------------------------------------------------------------------- types at a path


def _members(annotation: Any) -> Iterator[Any]:
    """The alternatives of an annotation: Annotated and unions unwrapped."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        yield from _members(get_args(annotation)[0])
    elif origin is typing.Union or origin is types.UnionType:
        for arg in get_args(annotation):
            yield from _members(arg)
    else:
        yield annotation


def _annotation_at(model: type[BaseModel], path: FieldPath) -> Any:
    """The declared type of the value at `path` inside `model` (None when unknown)."""
    annotation: Any = model
    for part in path:
        step = None
        for a in _members(annotation):
            origin = get_origin(a)
            if isinstance(a, type) and issubclass(a, BaseModel) and isinstance(part, str):
                field = a.model_fields.get(part)
                step = field.annotation if field is not None else None
            elif isinstance(part, int) and origin in (list, tuple):
                step = get_args(a)[0]
            elif isinstance(part, str) and origin is dict:
                step = get_args(a)[1]
            if step is not None:
                break
        if step is None:
            return None
        annotation = step
    return annotation


def known_keys(model: type[BaseModel], path: FieldPath) -> list[str]:
    """The field names of the model at `path` (empty when the value there is no model)."""
    for a in _members(_annotation_at(model, path)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return list(a.model_fields)
    return []


def literal_choices(model: type[BaseModel], path: FieldPath) -> list[str]:
    """The values a Literal field at `path` accepts (empty when it is not one)."""
    return [
        str(v) for a in _members(_annotation_at(model, path)) if get_origin(a) is Literal for v in get_args(a)
    ]


# --------------------------------------------------------------------------- the translator


@dataclass(frozen=True)
class Issue:
    """One problem, located in the document that was validated (a spec, or a trial config).

    Attributes:
        path: where the problem is, as far as the document goes.
        message: what is wrong.
        kind: pydantic's error type (``missing``, ``value_error``, ...).
        blame: for a rule over several fields, their paths (the one to blame first).
        name: the unknown registry name the problem is about, if any.
    """

    path: FieldPath
    message: str
    kind: str = "value_error"
    blame: tuple[FieldPath, ...] = ()
    name: str | None = None


def _navigable(loc: Sequence[Any], data: Any, keep_last: bool) -> FieldPath:
    """The part of a pydantic `loc` that names places in `data` (drops union-member tags)."""
    out: list[str | int] = []
    node = data
    for i, part in enumerate(loc):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            if keep_last and i == len(loc) - 1 and isinstance(part, str | int):
                out.append(part)
            break
        out.append(part)
    return tuple(out)


def issue_of_exception(exc: BaseException, at: FieldPath, data: Any) -> Issue:
    """An exception a validator raised (or let through), located from its attributes.

    `at` is where pydantic says it was raised; `data` is the document. A `FieldError` is
    relative to `at`; dab_core's `ConfigError` names fields from the config's root; a hard
    function's `HardParamError`, or an `UnknownNameError`, that names a key of the mapping at
    `at` points at that key.
    """
    from_lib = _library_errors()
    if isinstance(exc, FieldError):
        return Issue((*at, *exc.rel_path), exc.message)
    message = str(exc)
    blame: tuple[FieldPath, ...] = ()
    name: str | None = None
    key: Any = None
    if from_lib is not None:
        config_error, hard_param_error, unknown_name_error = from_lib
        if isinstance(exc, config_error):
            blame = exc.fields
        if isinstance(exc, hard_param_error):
            key = exc.param
        if isinstance(exc, unknown_name_error):
            name = key = exc.name if isinstance(exc.name, str) else None
            message += suggest(exc.name, exc.known)
    ok, node = get_path(data, at)
    if ok and isinstance(node, Mapping) and isinstance(key, str) and key in node:
        at = (*at, key)
    return Issue(at, message, "value_error", blame, name)


def _library_errors() -> tuple[type[Any], type[Any], type[Any]] | None:
    """dab_core's structured exceptions, if dab_core is imported (it is whenever a trial
    config was validated; a spec's own validation never raises them)."""
    import sys

    if "dab_core.config" not in sys.modules:
        return None
    from dab_core.config import ConfigError
    from dab_core.hard import HardParamError
    from dab_core.registry import UnknownNameError

    return ConfigError, HardParamError, UnknownNameError


def issue_of(err: Mapping[str, Any], model: type[BaseModel], data: Any, owner: str | None) -> Issue:
    """One entry of ``ValidationError.errors()`` as an `Issue` of `data` (validated by `model`).

    `owner` is None for a spec document, or the experiment family of a trial config.
    """
    loc, kind, ctx = tuple(err["loc"]), err["type"], err.get("ctx") or {}
    cause = ctx.get("error")
    at = _navigable(loc, data, keep_last=kind in ("missing", "extra_forbidden"))
    if isinstance(cause, BaseException):
        return issue_of_exception(cause, at, data)
    field = next((p for p in reversed(at or loc) if isinstance(p, str)), "")
    value = err.get("input")
    if kind == "extra_forbidden":
        known = known_keys(model, at[:-1])
        hint = f"; known: {', '.join(known)}{suggest(field, known)}" if known else ""
        if owner is None:
            return Issue(at, f"unknown key {field!r}{hint}", kind)
        return Issue(at, f"unknown field {field!r} for experiment {owner!r}{hint}", kind)
    if kind == "missing":
        if owner is None:
            return Issue(at, "required field missing", kind)
        return Issue(
            at,
            f"missing required field {format_path(at)!r} of experiment {owner!r}: set it in params or the grid",
            kind,
        )
    if kind == "literal_error":
        known = literal_choices(model, at)
        listed = (
            f"known: {', '.join(known)}{suggest(value, known)}"
            if known
            else f"expected {ctx.get('expected')}"
        )
        return Issue(at, f"unknown {field} {short_repr(value)}; {listed}", kind)
    return Issue(at, f"{err['msg']}, got {short_repr(value)}", kind)


def spec_error(
    e: ValidationError,
    *,
    model: type[BaseModel],
    data: Any,
    source: str,
    lines: Mapping[FieldPath, int],
    place: Callable[[Issue], FieldPath] | None = None,
    owner: str | None = None,
    cell: str | None = None,
) -> SpecError:
    """THE translator: a pydantic ValidationError of `data` (validated by `model`) as a SpecError.

    Args:
        place: maps an issue of `data` to its path in the spec (a trial config's value to the
            spec field it came from); identity for the spec document itself.
        owner: the experiment family when `data` is a trial config (the messages say so).
        cell: the trial cell `data` belongs to.
    """
    details: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for err in e.errors(include_url=False):
        issue = issue_of(err, model, data, owner)
        path = place(issue) if place is not None else issue.path
        text = format_path(path)
        if (text, issue.message) in seen:
            continue
        seen.add((text, issue.message))
        details.append({"path": text, "line": line_of(lines, path), "message": issue.message})
    first = details[0]
    return SpecError(
        first["message"], path=first["path"], source=source, line=first["line"], cell=cell, details=details
    )


__all__ = [
    "FieldError",
    "FieldPath",
    "Issue",
    "SpecError",
    "format_path",
    "get_path",
    "issue_of",
    "issue_of_exception",
    "known_keys",
    "line_of",
    "literal_choices",
    "short_repr",
    "spec_error",
    "suggest",
]
