"""The sweep spec's schema: `SweepSpec`, `SweepSuite`, `Resources`, `Limits`, `Search`,
`Scheduler`, `Execution`, `PaperValue`, and the rules beyond field types (see `workers.spec`). (Over 500
lines: every rule across a spec's fields sits beside the models it checks, so one file says
what a valid spec is.) Validators raise `FieldError` with a
path relative to what they validate; `workers.spec.errors.spec_error` turns pydantic's errors
into a `SpecError`.

Validate through `workers.spec.parse_spec` / `load_spec`: they first check that the document
is plain JSON (string keys, finite numbers, bounded depth), which these models then assume.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from workers.spec.count import count_formula, count_trials
from workers.spec.errors import FieldError, FieldPath, short_repr, suggest
from workers.spec.expand import value_key
from workers.spec.search import Dist, grid_size, parse_space

if TYPE_CHECKING:
    from dab_core.experiments import ExperimentFamily

#: Most trials one sweep (or one suite) may expand to. The paper's grid is 670; 10,000 keeps
#: expansion and validation around a second and Ray Tune's experiment state small. Split a
#: larger study into several sweeps. ``limits.max_trials`` can only lower it.
MAX_TRIALS = 10_000
#: Most replicates (seeds) per cell, and the most grid axes.
MAX_REPLICATES = 1_000
MAX_GRID_AXES = 64
#: `dab_core.config.MAX_STEPS`, not imported: importing dab_core imports torch, and this package
#: is imported by the service and the CLI without it (a test keeps the two equal).
MAX_STEPS = 100_000_000

Mode = Literal["max", "min"]

_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_RESERVED = {
    "experiment": "the family is the spec's top-level 'experiment'",
    "seed": "seeds come from 'replicates' (a count, or a list of seeds)",
}


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
            raise FieldError(("gpu",), f"a trial takes a fraction of one GPU or whole GPUs, got {self.gpu}")
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


class Search(_Strict):
    """How a search proposes configurations from the spec's ``space``.

    ``random`` and ``tpe`` are Optuna's RandomSampler and TPESampler (seeded with `seed`),
    driven by Ray Tune's `OptunaSearch`; ``grid`` is Optuna's GridSampler over a space of
    ``choice`` and ``int`` fields (every configuration once, in the sampler's seeded order).
    """

    algorithm: Literal["random", "tpe", "grid"] = Field(description="random | tpe | grid")
    num_samples: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TRIALS,
        description="configurations to try (each trained with every seed); grid: default all",
    )
    seed: int = Field(
        default=0, ge=0, le=2**32 - 1, description="the sampler's seed: same seed, same proposals"
    )


class Scheduler(_Strict):
    """Early stopping of a search's configurations (Ray Tune's schedulers, on ``step``).

    A configuration is one Tune trial that trains every seed, so a scheduler judges the mean
    over seeds at each report and stops or keeps the configuration as a whole.
    """

    type: Literal["fifo", "asha", "median"] = Field(default="fifo", description="fifo | asha | median")
    grace_steps: int | None = Field(
        default=None,
        ge=1,
        le=MAX_STEPS,
        description="steps before a configuration can be stopped (default: its first report)",
    )
    reduction_factor: float | None = Field(
        default=None, gt=1, le=100, description="asha: 1/reduction_factor of each rung goes on (default 3)"
    )
    min_samples: int | None = Field(
        default=None, ge=1, le=1000, description="median: configurations to compare against (default 3)"
    )

    @model_validator(mode="after")
    def _options_of_type(self) -> Scheduler:
        if self.type == "fifo" and self.grace_steps is not None:
            raise FieldError(("grace_steps",), "fifo stops nothing: grace_steps is for asha or median")
        if self.reduction_factor is not None and self.type != "asha":
            raise FieldError(("reduction_factor",), f"reduction_factor is an asha option, not {self.type}'s")
        if self.min_samples is not None and self.type != "median":
            raise FieldError(("min_samples",), f"min_samples is a median option, not {self.type}'s")
        return self


class Execution(_Strict):
    """How a sweep's trials run; results do not depend on it beyond float rounding, so a trial's
    identity (its key, what a resubmission skips) does not either."""

    seeds: Literal["separate", "stacked"] = Field(
        default="separate",
        description="separate: one Tune trial per seed; stacked: a cell's seeds train in one "
        "process as one vmapped model (dab_core.stacked; the sorting family's dense models)",
    )


class PaperValue(_Strict):
    """A number the paper reports for the cells that `match` selects.

    `match` maps config fields (dotted paths allowed) to values; a cell matches when its
    resolved config has all of them. `value` is in the metric's own units (accuracies as
    fractions: the paper's 99.3% is 0.993).
    """

    match: dict[str, Any] = Field(default_factory=dict)
    value: float
    std: float | None = Field(default=None, ge=0)
    metric: str | None = Field(default=None, min_length=1, description="default: the spec's metric")
    source: str = Field(default="", max_length=200, description="where in the paper, e.g. 'Table 1'")


class SweepSpec(_Strict):
    """One sweep: a family, fixed params, grid axes, cells, seeds, resources and limits.

    Without ``metric``, a sweep optimises its family's default metric (declared in
    `dab_core.metrics`); without ``mode``, in the direction the family declares for that
    metric (``max`` for a metric it does not declare). Both are filled in by validation.
    """

    name: str = Field(pattern=_NAME_PATTERN, description="letters, digits, '.', '_' or '-'")
    experiment: str = Field(pattern=_NAME_PATTERN, description="experiment family (registry name)")
    description: str = Field(default="", max_length=20_000)
    params: dict[str, Any] = Field(default_factory=dict, description="config fields fixed for all trials")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="axes: field -> values")
    include: list[dict[str, Any]] = Field(default_factory=list, description="cells added to the product")
    exclude: list[dict[str, Any]] = Field(default_factory=list, description="product cells removed")
    replicates: int | list[int] = Field(default=1, description="a count n (seeds 0..n-1) or a list of seeds")
    resources: Resources = Field(default_factory=lambda: Resources.model_validate({}))
    metric: str | None = Field(
        default=None, min_length=1, description="reported metric to optimise (default: the family's)"
    )
    mode: Mode | None = Field(
        default=None, description="max or min (default: the metric's declared direction)"
    )
    limits: Limits = Field(default_factory=lambda: Limits.model_validate({}))
    duration_hours: float | None = Field(
        default=None, gt=0, description="estimated hours per trial (preview's totals)"
    )
    paper: list[PaperValue] = Field(default_factory=list, description="the paper's numbers per cell")
    search: Search | None = Field(
        default=None, description="sample configurations from space instead of a grid"
    )
    space: dict[str, Any] = Field(default_factory=dict, description="a search's fields -> distributions")
    scheduler: Scheduler | None = Field(
        default=None, description="early stopping of a search's configurations"
    )
    execution: Execution = Field(default_factory=lambda: Execution.model_validate({}))

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
    def is_search(self) -> bool:
        return self.search is not None

    @property
    def distributions(self) -> dict[str, Dist]:
        """The space's distributions (validated with the spec)."""
        return parse_space(self.space)

    @property
    def num_configs(self) -> int:
        """Configurations of a search: ``num_samples``, or a grid search's whole grid."""
        assert self.search is not None
        return self.search.num_samples or (grid_size(self.distributions) or 0)

    @property
    def resolved_metric(self) -> str:
        """The metric the sweep optimises (the spec's, or the family's default)."""
        assert self.metric is not None  # filled by validation
        return self.metric

    @property
    def resolved_mode(self) -> Mode:
        """The direction it is optimised in (the spec's, or the metric's declared one)."""
        assert self.mode is not None  # filled by validation
        return self.mode

    @model_validator(mode="before")
    @classmethod
    def _default_metric(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or not isinstance(data.get("experiment"), str):
            return data
        if data.get("metric") is not None and data.get("mode") is not None:
            return data
        found = _family(data["experiment"])
        if found is None:
            return data  # the after-validator names the unknown family
        data = dict(data)
        if data.get("metric") is None:
            data["metric"] = found.metrics.default
        if data.get("mode") is None and isinstance(data["metric"], str):
            data["mode"] = found.metrics.get(data["metric"]).mode
        return data

    @field_validator("replicates", mode="before")
    @classmethod
    def _replicates(cls, value: Any) -> Any:
        expected = f"a count from 1 to {MAX_REPLICATES} (seeds 0..n-1) or a non-empty list of seeds"
        if isinstance(value, int) and not isinstance(value, bool):
            if not 1 <= value <= MAX_REPLICATES:
                raise FieldError((), f"expected {expected}, got {value}")
            return value
        if isinstance(value, list) and value:
            if len(value) > MAX_REPLICATES:
                raise FieldError((), f"at most {MAX_REPLICATES} seeds, got {len(value)}")
            seen: dict[int, int] = {}
            for i, s in enumerate(value):
                if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**63:
                    raise FieldError((i,), f"a seed is an integer from 0 to 2**63-1, got {short_repr(s)}")
                if s in seen:
                    raise FieldError((i,), f"seed {s} is listed twice (also at [{seen[s]}])")
                seen[s] = i
            return value
        raise FieldError((), f"expected {expected}, got {short_repr(value)}")

    @field_validator("grid", mode="before")
    @classmethod
    def _axes_are_lists(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            for k, v in value.items():
                if not isinstance(v, list):
                    raise FieldError(
                        (str(k),),
                        f"an axis is a non-empty list of values, got {short_repr(v)} "
                        "(a value fixed for all trials goes in params)",
                    )
        return value

    @model_validator(mode="after")
    def _semantics(self) -> SweepSpec:
        family_of(self.experiment)
        _check_params(self.params)
        _check_grid(self.grid, self.params)
        _check_cells(self.include, "include")
        _check_excludes(self.exclude, self.grid)
        _check_paper(self.paper)
        _check_search(self)
        n = count_trials(self)
        limit = min(MAX_TRIALS, self.limits.max_trials or MAX_TRIALS)
        if n > limit:
            which = "limits.max_trials" if limit < MAX_TRIALS else "MAX_TRIALS, the service's limit"
            raise FieldError(
                ("grid",) if self.grid else ("search", "num_samples") if self.search else (),
                f"the spec expands to {n:,} trials ({count_formula(self)}); the limit is {limit:,} "
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
                raise FieldError((i,), "empty file name")
            if f in seen:
                raise FieldError((i,), f"{f!r} is listed twice (also at [{seen[f]}])")
            seen[f] = i
        return files


# --------------------------------------------------------------------------- the family


def _family(name: str) -> ExperimentFamily | None:
    from dab_core.experiments import experiments

    return experiments.lookup(name) if name in experiments else None


def family_of(name: str) -> ExperimentFamily:
    """The experiment family registered as `name`; FieldError at ``experiment`` listing the
    known families otherwise."""
    from dab_core.experiments import experiments
    from dab_core.registry import UnknownNameError

    try:
        return experiments.lookup(name)
    except UnknownNameError as e:
        raise FieldError(
            ("experiment",),
            f"unknown experiment family {name!r}; known: {', '.join(e.known)}{suggest(name, e.known)}",
        ) from None


# --------------------------------------------------------------------------- spec checks


def _key_error(key: str) -> str | None:
    if not isinstance(key, str) or not _KEY.match(key):
        return f"{short_repr(key)} is not a field name (letters, digits and '_', dotted for nested fields)"
    head = key.split(".")[0]
    if head in _RESERVED:
        return f"{head!r} cannot be set here: {_RESERVED[head]}"
    return None


def _check_params(params: Mapping[str, Any]) -> None:
    for k in params:
        head = k.split(".")[0]
        if head in _RESERVED:
            raise FieldError(("params", k), f"{head!r} cannot be set in params: {_RESERVED[head]}")
        if "." in k:
            raise FieldError(
                ("params", k), "params is the nested config itself: write nested fields as mappings"
            )


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
        raise FieldError(("grid",), f"at most {MAX_GRID_AXES} axes, got {len(grid)}")
    for k, values in grid.items():
        err = _key_error(k)
        if err:
            raise FieldError(("grid", k), err)
        if not values:
            raise FieldError(("grid", k), "an axis needs at least one value")
        if _has_path(params, k.split(".")):
            raise FieldError(
                ("grid", k), f"also fixed in params.{k}: a field is either fixed (params) or swept (grid)"
            )
        seen: dict[str, int] = {}
        for i, v in enumerate(values):
            vk = value_key(v)
            if vk in seen:
                raise FieldError(("grid", k, i), f"duplicate value {short_repr(v)} (also at [{seen[vk]}])")
            seen[vk] = i
    clash = _prefix_clash(list(grid))
    if clash:
        raise FieldError(("grid", clash[1]), f"overlaps axis {clash[0]!r}: one field cannot be swept twice")


def _check_cells(cells: Sequence[Mapping[str, Any]], where: str) -> None:
    seen: dict[str, int] = {}
    for j, cell in enumerate(cells):
        if not cell:
            raise FieldError((where, j), "an empty cell: list the fields that make this cell")
        for k in cell:
            err = _key_error(k)
            if err:
                raise FieldError((where, j, k), err)
        clash = _prefix_clash(list(cell))
        if clash:
            raise FieldError((where, j, clash[1]), f"overlaps {clash[0]!r} in the same cell")
        ck = value_key(cell)
        if ck in seen:
            raise FieldError((where, j), f"the same cell as {where}[{seen[ck]}]")
        seen[ck] = j


def _check_excludes(excludes: Sequence[Mapping[str, Any]], grid: Mapping[str, list[Any]]) -> None:
    """Excludes name grid axes. Whether their values are on the axes is checked when the spec
    is expanded, after the grid's own values: a wrong grid value is the mistake to report,
    not the exclude it leaves without a match."""
    _check_cells(excludes, "exclude")
    for j, ex in enumerate(excludes):
        for k in ex:
            if k not in grid:
                axes = ", ".join(grid) or "none"
                raise FieldError(
                    ("exclude", j, k),
                    f"{k!r} is not a grid axis (axes: {axes}); an exclude removes cells of the grid's product",
                )


def _check_search(spec: SweepSpec) -> None:
    """The rules of `search`, `space` and `scheduler` beyond their field types."""
    if spec.search is None:
        if spec.space:
            raise FieldError(
                ("space",), "a space is sampled by a search: add search: {algorithm: random | tpe | grid}"
            )
        if spec.scheduler is not None and spec.scheduler.type != "fifo":
            raise FieldError(
                ("scheduler",),
                "a scheduler stops a search's configurations (every seed of one together); "
                "for a grid, write it as search: {algorithm: grid} with choice fields in space",
            )
        return
    for name in ("grid", "include", "exclude", "paper"):
        if getattr(spec, name):
            raise FieldError(
                (name,),
                f"a search samples its configurations from space: {name!r} is for grid sweeps "
                "(fixed values go in params, listed ones in space as a choice)",
            )
    if not spec.space:
        raise FieldError(
            ("space",),
            "a search needs a space: config fields -> distributions, e.g. lr: {loguniform: [1.0e-5, 1.0e-2]}",
        )
    for k in spec.space:
        err = _key_error(k)
        if err:
            raise FieldError(("space", k), err)
        if _has_path(spec.params, k.split(".")):
            raise FieldError(
                ("space", k),
                f"also fixed in params.{k}: a field is either fixed (params) or searched (space)",
            )
    clash = _prefix_clash(list(spec.space))
    if clash:
        raise FieldError(("space", clash[1]), f"overlaps {clash[0]!r}: one field cannot be searched twice")
    space = parse_space(spec.space)
    size = grid_size(space)
    if spec.search.algorithm == "grid":
        if size is None:
            ranged = next(k for k, d in space.items() if d.size is None)
            raise FieldError(
                ("space", ranged),
                f"a grid search takes choice and int fields; {ranged!r} is a continuous range",
            )
        if spec.search.num_samples is not None and spec.search.num_samples > size:
            raise FieldError(
                ("search", "num_samples"), f"the grid has {size:,} configurations, fewer than num_samples"
            )
    elif spec.search.num_samples is None:
        raise FieldError(
            ("search", "num_samples"),
            f"a {spec.search.algorithm} search needs num_samples: how many configurations to try",
        )
    family = family_of(spec.experiment)
    declared = [m.name for m in family.metrics]
    if spec.metric not in declared:
        raise FieldError(
            ("metric",),
            f"a search optimises a metric its trials report: {spec.metric!r} is not one of "
            f"{', '.join(declared)}{suggest(spec.metric, declared)}",
        )


def _check_paper(entries: Sequence[PaperValue]) -> None:
    for j, entry in enumerate(entries):
        for k in entry.match:
            if not isinstance(k, str) or not _KEY.match(k) or k.split(".")[0] == "seed":
                raise FieldError(("paper", j, "match", k), f"{short_repr(k)} is not a config field to match")


__all__ = [
    "MAX_GRID_AXES",
    "MAX_REPLICATES",
    "MAX_TRIALS",
    "Limits",
    "Mode",
    "PaperValue",
    "Resources",
    "Scheduler",
    "Search",
    "SweepSpec",
    "SweepSuite",
    "family_of",
]
