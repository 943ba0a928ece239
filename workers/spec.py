"""Sweep specs: the schema, loading (YAML or JSON), expansion into trials, and preview.

A spec names an experiment family, fixed `params`, `grid` axes whose cartesian product gives
the cells, `include`/`exclude` cells, and `replicates` (seeds). `expand` turns it into an
ordered list of `Trial`, each with its fully resolved, validated config and a content hash
(`trial_key`) that is the same on any machine for the same config: a later sweep can skip the
trials a former one already finished. The format is documented in ``docs/configs.md``.

This module imports neither FastAPI nor Ray, and imports `dab_core` (hence torch) only when a
spec is expanded, so the service, the workers and the CLI can all import it cheaply.

Rules beyond the field types:

* Values are not coerced: ``"5"`` where an integer is expected is an error, as in typed JSON.
* A field is either fixed (``params``) or swept (a ``grid`` axis), never both; ``include``
  cells may override ``params``. Grid, include and exclude keys may be dotted paths into
  nested config fields (``hard_params.eps``). ``experiment`` and ``seed`` are set by the
  spec itself (top-level ``experiment``, ``replicates``), never in params or cells.
* Cells: the grid's product in axis order (values in list order), minus every product cell
  that an ``exclude`` entry matches (an exclude lists some axes and one value each), then the
  ``include`` cells in their order. A spec without grid axes has one cell (params alone)
  when it has no includes, and exactly its includes otherwise.
* Trials: every cell times every seed; ordered replicate-major (seed 0 of every cell, then
  seed 1, ...) so that a sweep stopped early holds whole replicates of the grid.
* Limits: `MAX_SPEC_BYTES` of spec text, `MAX_TRIALS` trials (or ``limits.max_trials`` if
  lower), counted arithmetically before anything is expanded.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from workers._spec_common import (
    TRIAL_KEY_LENGTH,
    FieldPath,
    SpecError,
    canonical_json,
    cell_key_of,
    find_non_finite,
    format_path,
    line_of,
    literal_known,
    short_repr,
    suggest,
    trial_key_of,
    value_key,
)
from workers._spec_expand import Trial, expand, paper_values
from workers._spec_load import read_document, size_error

#: Largest spec accepted, in bytes of text (a JSON body or a YAML file). The paper's largest
#: spec is under 8 KiB: a spec describes a grid, it does not list trials.
MAX_SPEC_BYTES = 256 * 1024
#: Most trials one sweep (or one suite) may expand to. The paper's grid is 670; 10,000 keeps
#: expansion and validation around a second and Ray Tune's experiment state small. Split a
#: larger study into several sweeps. ``limits.max_trials`` can only lower it.
MAX_TRIALS = 10_000
#: Most replicates (seeds) per cell, and the most grid axes.
MAX_REPLICATES = 1_000
MAX_GRID_AXES = 64

Mode = Literal["max", "min"]

#: The metric a family's sweeps optimise by default, and its direction.
DEFAULT_METRICS: dict[str, tuple[str, Mode]] = {
    "sorting": ("test_all_or_none", "max"),
    "classification": ("test_accuracy", "max"),
    "representation": ("test_ms_ssim", "max"),
}

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_RESERVED = {
    "experiment": "the family is the spec's top-level 'experiment'",
    "seed": "seeds come from 'replicates' (a count, or a list of seeds)",
}
_EXCLUDE_COUNT_BUDGET = 200_000


class _FieldError(ValueError):
    """Raised inside validators: a message and a path relative to the model being validated."""

    def __init__(self, path: FieldPath, message: str) -> None:
        super().__init__(message)
        self.rel_path = path
        self.message = message


# --------------------------------------------------------------------------- the schema


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Resources(_Strict):
    """What one trial asks the cluster for."""

    cpu: float = Field(default=1.0, gt=0, le=1024, description="CPU cores per trial (fractions allowed)")
    gpu: float = Field(
        default=0.0, ge=0, le=64, description="GPUs per trial: a fraction of one, or whole GPUs"
    )
    memory_gb: float | None = Field(default=None, gt=0, le=100_000, description="memory per trial in GiB")

    @model_validator(mode="after")
    def _whole_gpus_above_one(self) -> Resources:
        if self.gpu > 1 and not float(self.gpu).is_integer():
            raise _FieldError(("gpu",), f"a trial takes a fraction of one GPU or whole GPUs, got {self.gpu}")
        return self


class Limits(_Strict):
    """How the sweep runs (Ray Tune's TuneConfig and FailureConfig) and how large it may be."""

    max_concurrent: int | None = Field(default=None, ge=1, le=100_000, description="trials running at once")
    max_failures: int = Field(
        default=2, ge=0, le=100, description="retries of a failed trial (from its checkpoint)"
    )
    max_trials: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TRIALS,
        description=f"refuse the spec above this many trials (<= {MAX_TRIALS})",
    )


class PaperValue(_Strict):
    """A number the paper reports for the cells that `match` selects.

    `match` maps config fields (dotted paths allowed) to values; a cell matches when its
    resolved config has all of them. `value` is in the metric's own units (accuracies as
    fractions: the paper's 99.3% is 0.993).
    """

    match: dict[str, Any] = Field(default_factory=dict)
    value: float = Field(allow_inf_nan=False)
    std: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    metric: str | None = Field(default=None, min_length=1, description="default: the spec's metric")
    source: str = Field(default="", max_length=200, description="where in the paper, e.g. 'Table 1'")


class SweepSpec(_Strict):
    """One sweep: a family, fixed params, grid axes, cells, seeds, resources and limits."""

    name: str = Field(pattern=_NAME_PATTERN, description="letters, digits, '.', '_' or '-'")
    experiment: str = Field(pattern=_NAME_PATTERN, description="experiment family (registry name)")
    description: str = Field(default="", max_length=20_000)
    params: dict[str, Any] = Field(default_factory=dict, description="config fields fixed for all trials")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="axes: field -> values")
    include: list[dict[str, Any]] = Field(default_factory=list, description="cells added to the product")
    exclude: list[dict[str, Any]] = Field(default_factory=list, description="product cells removed")
    replicates: int | list[int] = Field(default=1, description="a count n (seeds 0..n-1) or a list of seeds")
    resources: Resources = Field(default_factory=lambda: Resources.model_validate({}))
    metric: str | None = Field(default=None, min_length=1, description="reported metric to optimise")
    mode: Mode | None = None
    limits: Limits = Field(default_factory=lambda: Limits.model_validate({}))
    duration_hours: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="estimated hours per trial (preview's totals)"
    )
    paper: list[PaperValue] = Field(default_factory=list, description="the paper's numbers per cell")

    _source: str = PrivateAttr("<spec>")
    _lines: dict[FieldPath, int] = PrivateAttr(default_factory=dict)

    @property
    def source(self) -> str:
        """The file this spec was read from, or ``"<spec>"``."""
        return self._source

    @property
    def seeds(self) -> list[int]:
        r = self.replicates
        return list(range(r)) if isinstance(r, int) else list(r)

    @property
    def resolved_metric(self) -> str:
        assert self.metric is not None  # filled by validation
        return self.metric

    @model_validator(mode="before")
    @classmethod
    def _default_metric(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("experiment"), str):
            default = DEFAULT_METRICS.get(data["experiment"])
            if default is not None and data.get("metric") is None:
                data = {**data, "metric": default[0]}
                if data.get("mode") is None:
                    data["mode"] = default[1]
            elif data.get("mode") is None and data.get("metric") is not None:
                data = {**data, "mode": "max"}
        return data

    @field_validator("replicates", mode="before")
    @classmethod
    def _replicates(cls, value: Any) -> Any:
        expected = f"a count from 1 to {MAX_REPLICATES} (seeds 0..n-1) or a non-empty list of seeds"
        if isinstance(value, int) and not isinstance(value, bool):
            if not 1 <= value <= MAX_REPLICATES:
                raise _FieldError((), f"expected {expected}, got {value}")
            return value
        if isinstance(value, list) and value:
            if len(value) > MAX_REPLICATES:
                raise _FieldError((), f"at most {MAX_REPLICATES} seeds, got {len(value)}")
            seen: dict[int, int] = {}
            for i, s in enumerate(value):
                if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63:
                    raise _FieldError((i,), f"a seed is an integer from 0 to 2**63-1, got {short_repr(s)}")
                if s in seen:
                    raise _FieldError((i,), f"seed {s} is listed twice (also at [{seen[s]}])")
                seen[s] = i
            return value
        raise _FieldError((), f"expected {expected}, got {short_repr(value)}")

    @field_validator("grid", mode="before")
    @classmethod
    def _axes_are_lists(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            for k, v in value.items():
                if not isinstance(v, list):
                    raise _FieldError(
                        (str(k),),
                        f"an axis is a non-empty list of values, got {short_repr(v)} "
                        "(a value fixed for all trials goes in params)",
                    )
        return value

    @model_validator(mode="after")
    def _semantics(self) -> SweepSpec:
        if self.metric is None:
            _known_family(self.experiment)  # a typo in the family is the better message
            raise _FieldError(
                ("metric",),
                f"required: experiment {self.experiment!r} has no default metric "
                f"(defaults exist for {', '.join(sorted(DEFAULT_METRICS))})",
            )
        _check_params(self.params)
        _check_grid(self.grid, self.params)
        _check_cells(self.include, "include")
        _check_excludes(self.exclude, self.grid)
        _check_paper(self.paper)
        n = count_trials(self)
        limit = min(MAX_TRIALS, self.limits.max_trials or MAX_TRIALS)
        if n > limit:
            which = "limits.max_trials" if limit < MAX_TRIALS else "MAX_TRIALS, the service's limit"
            raise _FieldError(
                ("grid",) if self.grid else (),
                f"the spec expands to {n:,} trials ({_count_formula(self)}); the limit is {limit:,} "
                f"({which}): split the study into several sweeps",
            )
        return self


class SweepSuite(_Strict):
    """A file that lists spec files (``include``, paths relative to the suite file).

    Load it with `load_spec`; `specs` then holds every listed spec (nested suites flattened),
    each with the path it was listed under.
    """

    name: str = Field(pattern=_NAME_PATTERN)
    description: str = Field(default="", max_length=20_000)
    include: list[str] = Field(min_length=1, description="spec (or suite) files, relative to this file")

    _source: str = PrivateAttr("<spec>")
    _members: list[tuple[str, SweepSpec]] = PrivateAttr(default_factory=list)

    @property
    def source(self) -> str:
        return self._source

    @property
    def specs(self) -> list[tuple[str, SweepSpec]]:
        """``(file as listed, spec)`` for every spec of the suite, in order."""
        return list(self._members)

    @field_validator("include")
    @classmethod
    def _unique_files(cls, files: list[str]) -> list[str]:
        seen: dict[str, int] = {}
        for i, f in enumerate(files):
            if not f.strip():
                raise _FieldError((i,), "empty file name")
            if f in seen:
                raise _FieldError((i,), f"{f!r} is listed twice (also at [{seen[f]}])")
            seen[f] = i
        return files


# --------------------------------------------------------------------------- spec checks


def _known_family(name: str) -> None:
    from dab_core.experiments import experiments

    if name not in experiments:
        known = experiments.names()
        raise _FieldError(
            ("experiment",),
            f"unknown experiment family {name!r}; known: {', '.join(known)}{suggest(name, known)}",
        )


def _key_error(key: str) -> str | None:
    if not isinstance(key, str) or not _KEY.match(key):
        return f"{short_repr(key)} is not a field name (letters, digits and '_', dotted for nested fields)"
    head = key.split(".")[0]
    if head in _RESERVED:
        return f"{head!r} cannot be set here: {_RESERVED[head]}"
    return None


def _check_json_values(value: Any, path: FieldPath) -> None:
    bad = find_non_finite(value, path)
    if bad is not None:
        raise _FieldError(bad, "NaN and infinity are not valid values")


def _check_params(params: Mapping[str, Any]) -> None:
    for k in params:
        head = k.split(".")[0]
        if head in _RESERVED:
            raise _FieldError(("params", k), f"{head!r} cannot be set in params: {_RESERVED[head]}")
        if "." in k:
            raise _FieldError(
                ("params", k), "params is the nested config itself: write nested fields as mappings"
            )
    _check_json_values(dict(params), ("params",))


def _has_path(tree: Mapping[str, Any], parts: Sequence[str]) -> bool:
    node: Any = tree
    for p in parts:
        if not isinstance(node, Mapping) or p not in node:
            return False
        node = node[p]
    return True


def _prefix_clash(keys: Sequence[str]) -> tuple[str, str] | None:
    parts = {k: tuple(k.split(".")) for k in keys}
    for a, b in itertools.permutations(keys, 2):
        pa, pb = parts[a], parts[b]
        if len(pa) < len(pb) and pb[: len(pa)] == pa:
            return a, b
    return None


def _check_grid(grid: Mapping[str, list[Any]], params: Mapping[str, Any]) -> None:
    if len(grid) > MAX_GRID_AXES:
        raise _FieldError(("grid",), f"at most {MAX_GRID_AXES} axes, got {len(grid)}")
    for k, values in grid.items():
        err = _key_error(k)
        if err:
            raise _FieldError(("grid", k), err)
        if not values:
            raise _FieldError(("grid", k), "an axis needs at least one value")
        if _has_path(params, k.split(".")):
            raise _FieldError(
                ("grid", k), f"also fixed in params.{k}: a field is either fixed (params) or swept (grid)"
            )
        seen: dict[str, int] = {}
        for i, v in enumerate(values):
            vk = value_key(v)
            if vk in seen:
                raise _FieldError(("grid", k, i), f"duplicate value {short_repr(v)} (also at [{seen[vk]}])")
            seen[vk] = i
        _check_json_values(values, ("grid", k))
    clash = _prefix_clash(list(grid))
    if clash:
        raise _FieldError(("grid", clash[1]), f"overlaps axis {clash[0]!r}: one field cannot be swept twice")


def _check_cells(cells: Sequence[Mapping[str, Any]], where: str) -> None:
    seen: dict[str, int] = {}
    for j, cell in enumerate(cells):
        if not cell:
            raise _FieldError((where, j), "an empty cell: list the fields that make this cell")
        for k in cell:
            err = _key_error(k)
            if err:
                raise _FieldError((where, j, k), err)
        clash = _prefix_clash(list(cell))
        if clash:
            raise _FieldError((where, j, clash[1]), f"overlaps {clash[0]!r} in the same cell")
        ck = value_key(cell)
        if ck in seen:
            raise _FieldError((where, j), f"the same cell as {where}[{seen[ck]}]")
        seen[ck] = j
        _check_json_values(dict(cell), (where, j))


def _check_excludes(excludes: Sequence[Mapping[str, Any]], grid: Mapping[str, list[Any]]) -> None:
    """Excludes name grid axes. Whether their values are on the axes is checked when the spec
    is expanded, after the grid's own values: a wrong grid value is the mistake to report,
    not the exclude it leaves without a match."""
    _check_cells(excludes, "exclude")
    for j, ex in enumerate(excludes):
        for k in ex:
            if k not in grid:
                axes = ", ".join(grid) or "none"
                raise _FieldError(
                    ("exclude", j, k),
                    f"{k!r} is not a grid axis (axes: {axes}); an exclude removes cells of the grid's product",
                )


def _check_paper(entries: Sequence[PaperValue]) -> None:
    for j, entry in enumerate(entries):
        for k in entry.match:
            if not isinstance(k, str) or not _KEY.match(k) or k.split(".")[0] == "seed":
                raise _FieldError(("paper", j, "match", k), f"{short_repr(k)} is not a config field to match")


# --------------------------------------------------------------------------- counting


def _box_of(
    ex: Mapping[str, Any], index: Mapping[str, int], values: Sequence[dict[str, int]]
) -> dict[int, int] | None:
    """An exclude as axis -> value index; None when a value is not on its axis (matches nothing)."""
    box = {}
    for k, v in ex.items():
        j = values[index[k]].get(value_key(v))
        if j is None:
            return None
        box[index[k]] = j
    return box


def _count_excluded(lengths: Sequence[int], boxes: list[dict[int, int]]) -> int:
    """How many cells of the product of `lengths` at least one box (axis -> value) matches.

    Counts the union by splitting on one axis at a time, with the values no remaining box
    names lumped together: exact, and cheap for any spec a person writes. A pathological set
    of excludes stops at a budget with an error rather than running for long.
    """
    budget = [_EXCLUDE_COUNT_BUDGET]
    n_axes = len(lengths)
    tail = [math.prod(lengths[i:]) for i in range(n_axes + 1)]

    def rec(i: int, live: list[dict[int, int]]) -> int:
        budget[0] -= 1
        if budget[0] < 0:
            raise _FieldError(
                ("exclude",), "too many overlapping excludes to count; list fewer, broader ones"
            )
        if not live:
            return 0
        if any(not b for b in live):
            return tail[i]  # a box with no constraint left matches every remaining cell
        named = {b[i] for b in live if i in b}
        if not named:
            return lengths[i] * rec(i + 1, live)
        free = [b for b in live if i not in b]
        total = 0
        for v in named:
            sub = {tuple(sorted((a, x) for a, x in b.items() if a != i)) for b in live if b.get(i, v) == v}
            total += rec(i + 1, [dict(t) for t in sub])
        others = lengths[i] - len(named)
        if others:
            total += others * rec(i + 1, free)
        return total

    return rec(0, boxes)


def _product_size(spec: SweepSpec) -> int:
    if not spec.grid:
        return 0 if spec.include else 1
    return math.prod(len(v) for v in spec.grid.values())


def _excluded(spec: SweepSpec) -> int:
    if not spec.exclude or not spec.grid:
        return 0
    keys = list(spec.grid)
    index = {k: i for i, k in enumerate(keys)}
    values = [{value_key(v): j for j, v in enumerate(spec.grid[k])} for k in keys]
    boxes = [b for b in (_box_of(ex, index, values) for ex in spec.exclude) if b is not None]
    return _count_excluded([len(spec.grid[k]) for k in keys], boxes)


def count_cells(spec: SweepSpec) -> int:
    """Cells of the sweep (product - excluded + included), computed without expanding."""
    return _product_size(spec) - _excluded(spec) + len(spec.include)


def count_trials(spec: SweepSpec) -> int:
    """Trials of the sweep (cells x replicates), computed without expanding."""
    return count_cells(spec) * len(spec.seeds)


def _count_formula(spec: SweepSpec) -> str:
    axes = " x ".join(str(len(v)) for v in spec.grid.values()) or "no axes"
    parts = [f"grid {axes} = {_product_size(spec):,} cells"]
    if spec.exclude:
        parts.append(f"- {_excluded(spec):,} excluded")
    if spec.include:
        parts.append(f"+ {len(spec.include):,} included")
    return f"{' '.join(parts)}, x {len(spec.seeds)} replicates"


# --------------------------------------------------------------------------- pydantic errors


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


_SPEC_MODELS: dict[str, type[BaseModel]] = {"resources": Resources, "limits": Limits}


def _model_at(root: type[BaseModel], path: FieldPath) -> type[BaseModel]:
    if root is SweepSpec and path:
        if path[0] in _SPEC_MODELS and len(path) == 1:
            return _SPEC_MODELS[str(path[0])]
        if path[0] == "paper" and len(path) == 2:
            return PaperValue
    return root


def _spec_error(
    e: ValidationError, data: Any, root: type[BaseModel], source: str, lines: Mapping[FieldPath, int]
) -> SpecError:
    details: list[dict[str, Any]] = []
    seen: set[str] = set()
    for err in e.errors(include_url=False):
        loc, kind, ctx = tuple(err["loc"]), err["type"], err.get("ctx") or {}
        cause = ctx.get("error")
        if isinstance(cause, _FieldError):
            path = (*_navigable(loc, data, keep_last=False), *cause.rel_path)
            message = cause.message
        else:
            path = _navigable(loc, data, keep_last=kind in ("missing", "extra_forbidden"))
            field = path[-1] if path else ""
            if kind == "extra_forbidden":
                known = list(_model_at(root, path[:-1]).model_fields)
                message = f"unknown key {field!r}; known: {', '.join(known)}{suggest(field, known)}"
            elif kind == "missing":
                message = "required field missing"
            elif kind == "literal_error":
                known = literal_known(str(ctx.get("expected", "")))
                message = f"unknown {field} {short_repr(err.get('input'))}; known: {', '.join(known)}"
                message += suggest(err.get("input"), known)
            elif isinstance(cause, Exception):
                message = str(cause)
            else:
                message = f"{err['msg']}, got {short_repr(err.get('input'))}"
        text = format_path(path)
        if text + message in seen:
            continue
        seen.add(text + message)
        details.append({"path": text, "line": line_of(lines, path), "message": message})
    first = details[0]
    return SpecError(first["message"], path=first["path"], source=source, line=first["line"], details=details)


# --------------------------------------------------------------------------- loading


def _is_suite(doc: Any) -> bool:
    inc = doc.get("include") if isinstance(doc, Mapping) else None
    return (
        isinstance(doc, Mapping)
        and "experiment" not in doc
        and isinstance(inc, list)
        and bool(inc)
        and all(isinstance(x, str) for x in inc)
    )


def _json_data(value: Any, path: FieldPath, source: str, lines: Mapping[FieldPath, int]) -> Any:
    """`value` as plain JSON data (tuples become lists); SpecError at the first other thing."""

    def fail(p: FieldPath, what: str) -> SpecError:
        return SpecError(what, path=p, source=source, line=line_of(lines, p))

    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise fail(path, "NaN and infinity are not valid values")
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise fail(path, f"keys are strings; got the key {short_repr(k)}")
            out[k] = _json_data(v, (*path, k), source, lines)
        return out
    if isinstance(value, list | tuple):
        return [_json_data(v, (*path, i), source, lines) for i, v in enumerate(value)]
    raise fail(path, f"not a JSON value: {short_repr(value)} ({type(value).__name__})")


def _document(
    data: Mapping[str, Any] | str | bytes, source: str, content_type: str | None
) -> tuple[dict[str, Any], dict[FieldPath, int]]:
    if isinstance(data, str | bytes):
        doc, lines = read_document(data, source=source, content_type=content_type, max_bytes=MAX_SPEC_BYTES)
    elif isinstance(data, Mapping):
        doc, lines = data, {}
    else:
        raise SpecError(
            f"a spec is a mapping or its YAML/JSON text, got {type(data).__name__}", source=source
        )
    if not isinstance(doc, Mapping):
        raise SpecError(f"a spec is a mapping of fields, got {type(doc).__name__}", source=source, line=1)
    doc = _json_data(doc, (), source, lines)
    if not isinstance(data, str | bytes):
        size = len(canonical_json(doc).encode("utf-8"))
        if size > MAX_SPEC_BYTES:
            raise size_error(size, MAX_SPEC_BYTES, source)
    return doc, lines


def _validate_spec(doc: dict[str, Any], source: str, lines: dict[FieldPath, int]) -> SweepSpec:
    try:
        spec = SweepSpec.model_validate(doc)
    except ValidationError as e:
        raise _spec_error(e, doc, SweepSpec, source, lines) from None
    spec._source = source
    spec._lines = lines
    return spec


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
            "this is a suite (a list of spec files under 'include'); load it from its file with load_spec",
            path="include",
            source=source,
            line=line_of(lines, ("include",)),
        )
    return _validate_spec(doc, source, lines)


def load_spec(path: str | Path) -> SweepSpec | SweepSuite:
    """Load a spec or a suite from a YAML or JSON file (a suite loads every file it lists).

    Raises:
        SpecError: naming the file, line and field path.
    """
    return _load(Path(path), str(path), ())


def _read(path: Path, source: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise size_error(size, MAX_SPEC_BYTES, source)
        with path.open("rb") as f:
            raw = f.read(MAX_SPEC_BYTES + 1)
    except FileNotFoundError:
        raise SpecError("no such spec file", source=source) from None
    except IsADirectoryError:
        raise SpecError("is a directory, not a spec file", source=source) from None
    except OSError as e:
        raise SpecError(f"cannot read the spec file: {e.strerror or e}", source=source) from None
    if len(raw) > MAX_SPEC_BYTES:
        raise size_error(len(raw), MAX_SPEC_BYTES, source)
    return raw


def _load(path: Path, source: str, stack: tuple[Path, ...]) -> SweepSpec | SweepSuite:
    raw = _read(path, source)
    content_type = "application/json" if path.suffix.lower() == ".json" else None
    doc, lines = _document(raw, source, content_type)
    if not _is_suite(doc):
        return _validate_spec(doc, source, lines)
    try:
        suite = SweepSuite.model_validate(doc)
    except ValidationError as e:
        raise _spec_error(e, doc, SweepSuite, source, lines) from None
    suite._source = source
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


# --------------------------------------------------------------------------- preview


def _file_preview(file: str, spec: SweepSpec) -> dict[str, Any]:
    trials = expand(spec)
    cells: dict[str, dict[str, Any]] = {}
    for t in trials:
        c = cells.setdefault(
            t.cell_key,
            {
                "cell_key": t.cell_key,
                "cell": t.cell,
                "trials": 0,
                "seeds": [],
                "trial_keys": [],
                "paper": [
                    {
                        "metric": p.metric or spec.resolved_metric,
                        "value": p.value,
                        "std": p.std,
                        "source": p.source,
                    }
                    for p in paper_values(spec, t.config)
                ],
            },
        )
        c["trials"] += 1
        c["seeds"].append(t.seed)
        c["trial_keys"].append(t.trial_key)
    n, res, hours = len(trials), spec.resources, spec.duration_hours
    return {
        "file": file,
        "name": spec.name,
        "experiment": spec.experiment,
        "description": spec.description,
        "metric": spec.resolved_metric,
        "mode": spec.mode,
        "trials": n,
        "cells": len(cells),
        "replicates": len(spec.seeds),
        "seeds": spec.seeds,
        "resources": {
            "per_trial": res.model_dump(),
            "cpu": n * res.cpu,
            "gpu": n * res.gpu,
            "duration_hours": hours,
            "cpu_hours": n * res.cpu * hours if hours is not None else None,
            "gpu_hours": n * res.gpu * hours if hours is not None else None,
        },
        "limits": spec.limits.model_dump(),
        "cell_list": list(cells.values()),
    }


def preview(spec: SweepSpec | SweepSuite) -> dict[str, Any]:
    """A JSON-able summary of what running `spec` would request, without running anything.

    Returns:
        ``{"kind", "name", "source", "files": [per file: trials, cells, replicates,
        resources, cell_list, ...], "total": {trials, distinct_trials, cells, cpu, gpu,
        cpu_hours, gpu_hours, files_without_duration}, "limits": {...}}``. Trials that two files
        share (same trial_key) are counted in each file's ``trials`` and once in
        ``distinct_trials``: a run skips the second.

    Raises:
        SpecError: from expanding any of the specs.
    """
    members = spec.specs if isinstance(spec, SweepSuite) else [(spec.source, spec)]
    files = [_file_preview(f, s) for f, s in members]
    keys = {k for f in files for c in f["cell_list"] for k in c["trial_keys"]}
    timed = [f for f in files if f["resources"]["duration_hours"] is not None]
    return {
        "kind": "suite" if isinstance(spec, SweepSuite) else "spec",
        "name": spec.name,
        "source": spec.source,
        "description": spec.description,
        "files": files,
        "total": {
            "trials": sum(f["trials"] for f in files),
            "distinct_trials": len(keys),
            "cells": sum(f["cells"] for f in files),
            "cpu": sum(f["resources"]["cpu"] for f in files),
            "gpu": sum(f["resources"]["gpu"] for f in files),
            "cpu_hours": sum(f["resources"]["cpu_hours"] for f in timed) if timed else None,
            "gpu_hours": sum(f["resources"]["gpu_hours"] for f in timed) if timed else None,
            "files_without_duration": [f["file"] for f in files if f not in timed],
        },
        "limits": {"max_trials": MAX_TRIALS, "max_spec_bytes": MAX_SPEC_BYTES},
    }


__all__ = [
    "DEFAULT_METRICS",
    "MAX_GRID_AXES",
    "MAX_REPLICATES",
    "MAX_SPEC_BYTES",
    "MAX_TRIALS",
    "TRIAL_KEY_LENGTH",
    "Limits",
    "PaperValue",
    "Resources",
    "SpecError",
    "SweepSpec",
    "SweepSuite",
    "Trial",
    "canonical_json",
    "cell_key_of",
    "count_cells",
    "count_trials",
    "expand",
    "load_spec",
    "paper_values",
    "parse_spec",
    "preview",
    "trial_key_of",
]
