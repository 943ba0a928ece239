"""Reading spec text (YAML or JSON) into plain data and a map from field paths to lines.

Private: `workers.spec` is the public face. Two things PyYAML does not do by itself are done
here: duplicate keys are errors (PyYAML silently keeps the last one), and numbers such as
``1e-4`` are floats as in YAML 1.2 and JSON (PyYAML's YAML 1.1 rules read them as strings,
which would turn ``lr: 1e-4`` into a type error).
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from workers._spec_common import FieldPath, SpecError, format_path, line_of

#: Composed YAML nodes visited per document; aliases can make a small text a huge tree
#: ("billion laughs"), so the walk stops here with an error instead of exhausting memory.
MAX_NODES = 200_000


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


class _DuplicateKey(ValueError):
    pass


def size_error(size: int, limit: int, source: str) -> SpecError:
    return SpecError(
        f"the spec is {size:,} bytes; the limit is {limit:,} bytes (MAX_SPEC_BYTES). "
        "A spec describes a grid, not its trials: use grid axes instead of listing cells",
        source=source,
    )


def read_document(
    text: str | bytes, *, source: str, content_type: str | None, max_bytes: int
) -> tuple[Any, dict[FieldPath, int]]:
    """Parse spec text; return (data, lines) where ``lines[path]`` is the 1-based line of a field.

    JSON is chosen by `content_type` (``application/json``), a ``.json`` source, or text that
    starts with ``{`` and parses as JSON; everything else is YAML. Raises `SpecError`.
    """
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise size_error(size, max_bytes, source)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise SpecError(f"the spec is not UTF-8 text (byte {e.start})", source=source) from None
    json_declared = bool(content_type and "json" in content_type.lower()) or source.lower().endswith(".json")
    if json_declared or text.lstrip().startswith("{"):
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicates)
        except _DuplicateKey as e:
            _compose(text, source)  # finds the duplicate again, with its line and path
            raise SpecError(f"duplicate key {e.args[0]!r}", source=source) from None
        except json.JSONDecodeError as e:
            if json_declared:
                raise SpecError(
                    f"invalid JSON: {e.msg} (column {e.colno})", source=source, line=e.lineno
                ) from None
            # Flow-style YAML (``{name: x, ...}``) is not JSON: read it as YAML, and if that
            # fails too, the JSON message is the one that helps a JSON author.
            try:
                return _compose(text, source)
            except SpecError:
                raise SpecError(
                    f"invalid JSON: {e.msg} (column {e.colno})", source=source, line=e.lineno
                ) from None
        try:
            _, lines = _compose(text, source)
        except SpecError:
            lines = {}  # valid JSON that YAML 1.1 cannot read: data without line numbers
        return data, lines
    return _compose(text, source)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _compose(text: str, source: str) -> tuple[Any, dict[FieldPath, int]]:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError("the spec is empty", source=source)
        lines: dict[FieldPath, int] = {}
        _walk(loader, node, (), lines, [0], source)
        return loader.construct_document(node), lines
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = " ".join(s for s in (e.context, e.problem) if s)
        raise SpecError(
            f"invalid YAML: {what}", source=source, line=mark.line + 1 if mark else None
        ) from None
    except yaml.YAMLError as e:
        raise SpecError(f"invalid YAML: {e}", source=source) from None
    finally:
        loader.dispose()


def _walk(
    loader: _Loader,
    node: yaml.Node,
    path: FieldPath,
    lines: dict[FieldPath, int],
    count: list[int],
    source: str,
) -> None:
    count[0] += 1
    if count[0] > MAX_NODES:
        raise SpecError(
            f"the spec has more than {MAX_NODES:,} values once YAML aliases are expanded", source=source
        )
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                _walk(loader, value_node, path, lines, count, source)
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
            _walk(loader, value_node, child, lines, count, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = (*path, i)
            lines.setdefault(child, item.start_mark.line + 1)
            _walk(loader, item, child, lines, count, source)


__all__ = ["MAX_NODES", "line_of", "read_document", "size_error"]
