"""Reading spec text: YAML or JSON into plain data with the line of every field, within the
limits on what a document may be (size, depth, values once YAML aliases are expanded).

Hostile text is refused with a `SpecError` naming the limit, quickly, and never by running
out of stack: JSON's nesting is measured by a linear scan before `json.loads` (whose decoder
recurses), and YAML is composed here from PyYAML's event stream without recursion (PyYAML's
own composer recurses once per level), counting depth and aliased values as it goes.

Two things PyYAML does not do by itself are done here too: duplicate keys are errors (PyYAML
silently keeps the last one), and numbers such as ``1e-4`` are floats as in YAML 1.2 and JSON
(PyYAML's YAML 1.1 rules read them as strings, which would turn ``lr: 1e-4`` into a type error).
"""

from __future__ import annotations

import json
import math
import re
import sys
from typing import Any

import yaml

from workers.spec.errors import FieldPath, SpecError, format_path

#: Largest spec accepted, in bytes of text (a JSON body or a YAML file). The paper's largest
#: spec is under 8 KiB: a spec describes a grid, it does not list trials.
MAX_SPEC_BYTES = 256 * 1024
#: Deepest nesting of mappings and lists. A spec's deepest field is about 4 levels down
#: (``paper[0].match.hard_params.eps``); 64 leaves room and keeps every later step (pydantic,
#: canonical JSON) far from Python's recursion limit.
MAX_DEPTH = 64
#: Values per document once YAML aliases are expanded; aliases can make a small text a huge
#: tree ("billion laughs"), so composing stops here with an error instead of exhausting memory.
MAX_NODES = 200_000


def check_size(size: int, source: str) -> None:
    """Refuse a spec of more than MAX_SPEC_BYTES (text, a file, or a mapping's canonical JSON)."""
    if size > MAX_SPEC_BYTES:
        raise SpecError(
            f"the spec is {size:,} bytes; the limit is {MAX_SPEC_BYTES:,} bytes (MAX_SPEC_BYTES). "
            "A spec describes a grid, not its trials: use grid axes instead of listing cells",
            source=source,
        )


def depth_error(source: str, line: int | None) -> SpecError:
    return SpecError(
        f"the spec is nested deeper than {MAX_DEPTH} levels (MAX_DEPTH); a spec's fields are a few levels deep",
        source=source,
        line=line,
    )


def _digits_error(source: str, line: int | None) -> SpecError:
    return SpecError(
        f"a number has more than {sys.get_int_max_str_digits():,} digits, Python's limit "
        "(sys.get_int_max_str_digits)",
        source=source,
        line=line,
    )


# --------------------------------------------------------------------------- JSON


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)


def _check_json_depth(text: str, source: str) -> None:
    """Refuse JSON nested deeper than MAX_DEPTH, in one linear scan (strings skipped)."""
    depth = 0
    for m in _JSON_TOKEN.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise depth_error(source, text.count("\n", 0, m.start()) + 1)
        elif c in "]}":
            depth -= 1


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 / JSON floats (``1e-4``, ``2E5``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)

_INT_TAG = "tag:yaml.org,2002:int"


class _Open:
    """A collection being composed: its node, and what it holds so far once aliases are expanded."""

    __slots__ = ("key", "levels", "node", "values")

    def __init__(self, node: yaml.CollectionNode) -> None:
        self.node = node
        self.values = 1  # itself
        self.levels = 1  # itself
        self.key: yaml.Node | None = None  # a mapping's key waiting for its value


def _compose(loader: _Loader, source: str) -> yaml.Node | None:
    """The document's root node, from the event stream, without recursion.

    Refuses nesting deeper than MAX_DEPTH and more than MAX_NODES values once aliases are
    expanded (both computed per node, so an alias costs what its anchor holds, without
    walking it), aliases inside their own anchor (cycles), and integers longer than Python
    converts. Otherwise the same nodes as PyYAML's composer.
    """
    loader.get_event()  # stream start
    if loader.check_event(yaml.StreamEndEvent):
        loader.get_event()
        return None
    loader.get_event()  # document start
    anchors: dict[str, yaml.Node] = {}
    weight: dict[int, tuple[int, int]] = {}  # id(node) -> (values, levels), aliases expanded
    stack: list[_Open] = []
    open_ids: set[int] = set()
    int_digits = sys.get_int_max_str_digits() or math.inf
    total = 0  # values so far, aliases expanded
    while True:
        event = loader.get_event()
        line = event.start_mark.line + 1 if event.start_mark else None
        node: yaml.Node
        if isinstance(event, yaml.AliasEvent):
            if event.anchor not in anchors:
                raise yaml.composer.ComposerError(
                    None, None, f"found undefined alias {event.anchor!r}", event.start_mark
                )
            node = anchors[event.anchor]
            if id(node) in open_ids:
                raise SpecError(
                    f"the alias *{event.anchor} is inside its own anchor (a recursive structure)",
                    source=source,
                    line=line,
                )
            total += weight[id(node)][0]
        elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            done = stack.pop()
            node = done.node
            node.end_mark = event.end_mark
            open_ids.discard(id(node))
            weight[id(node)] = (done.values, done.levels)
        elif isinstance(event, yaml.ScalarEvent | yaml.SequenceStartEvent | yaml.MappingStartEvent):
            if event.anchor is not None and event.anchor in anchors:
                raise yaml.composer.ComposerError(
                    f"found duplicate anchor {event.anchor!r}; first occurrence",
                    anchors[event.anchor].start_mark,
                    "second occurrence",
                    event.start_mark,
                )
            tag = event.tag
            if isinstance(event, yaml.ScalarEvent):
                if tag is None or tag == "!":
                    tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
                if tag == _INT_TAG and len(event.value) > int_digits:
                    raise _digits_error(source, line)
                node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, style=event.style)
                weight[id(node)] = (1, 0)
                total += 1
            else:
                kind = yaml.SequenceNode if isinstance(event, yaml.SequenceStartEvent) else yaml.MappingNode
                if tag is None or tag == "!":
                    tag = loader.resolve(kind, None, event.implicit)
                if len(stack) >= MAX_DEPTH:
                    raise depth_error(source, line)
                collection = kind(tag, [], event.start_mark, None, flow_style=event.flow_style)
                if event.anchor is not None:
                    anchors[event.anchor] = collection
                stack.append(_Open(collection))
                open_ids.add(id(collection))
                total += 1
                continue
            if event.anchor is not None:
                anchors[event.anchor] = node
        else:  # pragma: no cover - the parser yields nothing else inside a document
            raise SpecError(f"unexpected YAML event {type(event).__name__}", source=source, line=line)
        if not stack:
            break
        values, levels = weight[id(node)]
        parent = stack[-1]
        if len(stack) + levels > MAX_DEPTH:  # an alias to a deep node
            raise depth_error(source, line)
        parent.values += values
        parent.levels = max(parent.levels, levels + 1)
        if total > MAX_NODES:
            raise SpecError(
                f"the spec has more than {MAX_NODES:,} values once YAML aliases are expanded (MAX_NODES)",
                source=source,
                line=line,
            )
        if isinstance(parent.node, yaml.SequenceNode):
            parent.node.value.append(node)
        elif parent.key is None:
            parent.key = node
        else:
            parent.node.value.append((parent.key, node))
            parent.key = None
    loader.get_event()  # document end
    if not loader.check_event(yaml.StreamEndEvent):
        event = loader.get_event()
        raise yaml.composer.ComposerError(
            "expected a single document in the stream",
            node.start_mark,
            "but found another document",
            event.start_mark,
        )
    loader.get_event()
    return node


def _read_yaml(text: str, source: str) -> tuple[Any, dict[FieldPath, int]]:
    loader = _Loader(text)
    try:
        node = _compose(loader, source)
        if node is None:
            raise SpecError("the spec is empty", source=source)
        lines: dict[FieldPath, int] = {}
        _walk(loader, node, (), lines, source)
        return loader.construct_document(node), lines
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = " ".join(s for s in (e.context, e.problem) if s)
        raise SpecError(
            f"invalid YAML: {what}", source=source, line=mark.line + 1 if mark else None
        ) from None
    except yaml.YAMLError as e:
        raise SpecError(f"invalid YAML: {e}", source=source) from None
    except ValueError as e:
        if isinstance(e, SpecError):
            raise
        raise SpecError(f"invalid YAML value: {e}", source=source) from None  # e.g. a date like 2024-13-01
    finally:
        loader.dispose()


def _walk(
    loader: _Loader, node: yaml.Node, path: FieldPath, lines: dict[FieldPath, int], source: str
) -> None:
    """Record the line of every field, refusing duplicate and non-scalar keys. Recursion is
    safe here: `_compose` bounded the depth (aliases included) and the size."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                _walk(loader, value_node, path, lines, source)
                continue
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise SpecError(
                    "a key must be a plain scalar",
                    path=path,
                    source=source,
                    line=key_node.start_mark.line + 1,
                )
            line = key_node.start_mark.line + 1
            if key in seen:
                raise SpecError(
                    f"duplicate key {key!r} (first at line {seen[key]})",
                    path=format_path((*path, str(key))),
                    source=source,
                    line=line,
                )
            seen[key] = line
            child = (*path, key if isinstance(key, str) else str(key))
            lines.setdefault(child, line)
            _walk(loader, value_node, child, lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = (*path, i)
            lines.setdefault(child, item.start_mark.line + 1)
            _walk(loader, item, child, lines, source)


def read_document(
    text: str | bytes, *, source: str, content_type: str | None
) -> tuple[Any, dict[FieldPath, int]]:
    """Parse spec text; return (data, lines) where ``lines[path]`` is the 1-based line of a field.

    JSON is chosen by `content_type` (``application/json``), a ``.json`` source, or text that
    starts with ``{`` and parses as JSON; everything else is YAML. Raises `SpecError`.
    """
    check_size(len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass")), source)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise SpecError(f"the spec is not UTF-8 text (byte {e.start})", source=source) from None
    json_declared = bool(content_type and "json" in content_type.lower()) or source.lower().endswith(".json")
    if not (json_declared or text.lstrip().startswith("{")):
        return _read_yaml(text, source)
    _check_json_depth(text, source)
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey as e:
        _read_yaml(text, source)  # finds the duplicate again, with its line and path
        raise SpecError(f"duplicate key {e.args[0]!r}", source=source) from None
    except json.JSONDecodeError as e:
        if json_declared:
            raise SpecError(
                f"invalid JSON: {e.msg} (column {e.colno})", source=source, line=e.lineno
            ) from None
        # Flow-style YAML (``{name: x, ...}``) is not JSON: read it as YAML, and if that
        # fails too, the JSON message is the one that helps a JSON author.
        try:
            return _read_yaml(text, source)
        except SpecError:
            raise SpecError(
                f"invalid JSON: {e.msg} (column {e.colno})", source=source, line=e.lineno
            ) from None
    except ValueError:  # an integer longer than Python converts
        raise _digits_error(source, None) from None
    try:
        _, lines = _read_yaml(text, source)
    except SpecError:
        lines = {}  # valid JSON that YAML 1.1 cannot read: data without line numbers
    return data, lines


__all__ = ["MAX_DEPTH", "MAX_NODES", "MAX_SPEC_BYTES", "check_size", "depth_error", "read_document"]
