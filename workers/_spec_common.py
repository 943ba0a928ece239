"""Shared pieces of sweep specs (private; the public names are re-exported by `workers.spec`):
`SpecError`, field paths, canonical JSON, and the keys of values, cells and trials."""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

#: Digits of the sha256 hex digest kept in a trial key (80 bits: collisions are negligible).
TRIAL_KEY_LENGTH = 20

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


def canonical_json(obj: Any) -> str:
    """The canonical JSON text of a JSON value: sorted keys, no spaces, UTF-8 as is.

    Python's float repr is the shortest round-tripping form on every platform, so equal
    configs give equal text on any machine. Non-finite numbers are refused (not JSON).
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def find_non_finite(value: Any, path: FieldPath = ()) -> FieldPath | None:
    """The path of the first NaN or infinity inside a JSON-like value, if any."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, Mapping):
        for k, v in value.items():
            found = find_non_finite(v, (*path, k))
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = find_non_finite(v, (*path, i))
            if found is not None:
                return found
    return None


def normal_value(value: Any) -> Any:
    """JSON value with integral floats as ints, so 5 and 5.0 compare equal (bools stay bools)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {k: normal_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normal_value(v) for v in value]
    return value


def value_key(value: Any) -> str:
    """A string equal for equal JSON values (``5 == 5.0``; ``true != 1``)."""
    return canonical_json(normal_value(value))


def trial_key_of(config: Mapping[str, Any]) -> str:
    """The content key of a resolved trial config: sha256 of its canonical JSON, shortened."""
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()[:TRIAL_KEY_LENGTH]


_BARE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]*$")


def cell_key_of(cell: Mapping[str, Any]) -> str:
    """A short readable key of a cell, independent of key order: ``model=signum-dense,seq_len=5``.

    Strings are written bare when that is unambiguous, everything else as canonical JSON.
    """

    def fmt(v: Any) -> str:
        if isinstance(v, str) and _BARE.match(v) and v not in ("true", "false", "null"):
            return v
        return canonical_json(v)

    return ",".join(f"{k}={fmt(cell[k])}" for k in sorted(cell))


def suggest(word: Any, known: Sequence[str]) -> str:
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


def literal_known(expected: str) -> list[str]:
    return re.findall(r"'([^']*)'", expected) or [expected]
