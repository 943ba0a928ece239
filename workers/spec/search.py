"""A search's `space`: its distributions, how each maps to Optuna's, and the checks on it.

A space maps config fields (dotted paths allowed, as grid axes) to one distribution each::

    lr: {loguniform: [1.0e-5, 1.0e-2]}     # floats, log-uniform between the bounds
    gamma: {uniform: [0.1, 30]}            # floats, uniform between the bounds
    steps: {int: [1000, 8000]}             # integers, uniform, both bounds included
    approximator_hidden: {choice: [[64, 64], [128, 128]]}   # any JSON values

Optuna samples ``choice`` as the index of the value (its categorical distribution takes only
scalars; a layer list is not one): `Dist.decode` turns the index back into the value, and
`Dist.encode` a value into the index. Bounds are checked against the family's config at both
ends (`workers.spec.expand`), so a range that runs past what a field allows is refused before
anything runs, naming ``space.<field>.<kind>[i]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from workers.spec.errors import FieldError, short_repr, suggest
from workers.spec.expand import value_key

if TYPE_CHECKING:
    import optuna

DistKind = Literal["uniform", "loguniform", "int", "choice"]
DIST_KINDS: tuple[DistKind, ...] = ("uniform", "loguniform", "int", "choice")
#: Most searched fields; Optuna's TPE models each one, and a person tunes a handful.
MAX_SPACE_DIMS = 32
#: Most values of one ``choice``.
MAX_CHOICES = 1_000


@dataclass(frozen=True)
class Dist:
    """One searched field's distribution.

    Attributes:
        kind: ``uniform``, ``loguniform``, ``int`` or ``choice``.
        low, high: the bounds (both included) of the numeric kinds.
        choices: the values of a ``choice``.
    """

    kind: DistKind
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[Any, ...] = ()

    def optuna(self) -> optuna.distributions.BaseDistribution:
        """The distribution Optuna samples (a choice: the index of its value)."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(list(range(len(self.choices))))
        if self.kind == "int":
            return IntDistribution(int(self.low or 0), int(self.high or 0))
        return FloatDistribution(float(self.low or 0), float(self.high or 0), log=self.kind == "loguniform")

    def decode(self, sampled: Any) -> Any:
        """The config value of what Optuna sampled."""
        if self.kind == "choice":
            return self.choices[int(sampled)]
        if self.kind == "int":
            return int(sampled)
        return float(sampled)

    def encode(self, value: Any) -> Any:
        """What Optuna records for the config value `value` (a choice: its index)."""
        if self.kind == "choice":
            key = value_key(value)
            return next(i for i, c in enumerate(self.choices) if value_key(c) == key)
        return int(value) if self.kind == "int" else float(value)

    def contains(self, value: Any) -> bool:
        """Whether `value` is one this distribution can give."""
        if self.kind == "choice":
            return value_key(value) in {value_key(c) for c in self.choices}
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind == "int" and not isinstance(value, int):
            return False
        assert self.low is not None and self.high is not None
        return bool(self.low <= value <= self.high)

    def ends(self) -> list[tuple[int, Any]]:
        """(position in the spec's list, value) of the values that bound what it gives: both
        bounds of a range, every value of a choice. Checked against the family's config."""
        if self.kind == "choice":
            return list(enumerate(self.choices))
        return [(0, self.low), (1, self.high)]

    @property
    def size(self) -> int | None:
        """How many values it has (None: a continuum)."""
        if self.kind == "choice":
            return len(self.choices)
        if self.kind == "int":
            assert self.low is not None and self.high is not None
            return int(self.high) - int(self.low) + 1
        return None


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def parse_dist(raw: Any, at: tuple[str | int, ...]) -> Dist:
    """One distribution from the spec; FieldError at `at` (``("space", field)``) and below."""
    kinds = ", ".join(DIST_KINDS)
    if not isinstance(raw, Mapping) or len(raw) != 1:
        raise FieldError(at, f"a distribution is a mapping with one of {kinds}, e.g. {{uniform: [0.1, 1.0]}}")
    kind, args = next(iter(raw.items()))
    if kind not in DIST_KINDS:
        raise FieldError(
            (*at, str(kind)), f"unknown distribution {kind!r}; known: {kinds}{suggest(kind, DIST_KINDS)}"
        )
    where = (*at, kind)
    if kind == "choice":
        if not isinstance(args, list) or len(args) < 2:
            raise FieldError(
                where,
                f"a choice is a list of at least two values, got {short_repr(args)} (one value goes in params)",
            )
        if len(args) > MAX_CHOICES:
            raise FieldError(where, f"at most {MAX_CHOICES} values, got {len(args)}")
        seen: dict[str, int] = {}
        for i, v in enumerate(args):
            k = value_key(v)
            if k in seen:
                raise FieldError((*where, i), f"duplicate value {short_repr(v)} (also at [{seen[k]}])")
            seen[k] = i
        return Dist("choice", choices=tuple(args))
    if not isinstance(args, list) or len(args) != 2:
        raise FieldError(where, f"{kind} takes [low, high], got {short_repr(args)}")
    for i, v in enumerate(args):
        if not _number(v) or (kind == "int" and not isinstance(v, int)):
            expected = "an integer" if kind == "int" else "a finite number"
            raise FieldError((*where, i), f"expected {expected}, got {short_repr(v)}")
    low, high = args
    if not low < high:
        raise FieldError(
            (*where, 1), f"an empty range: high ({high}) must be above low ({low}) (one value goes in params)"
        )
    if kind == "loguniform" and low <= 0:
        raise FieldError((*where, 0), f"a loguniform range is above 0, got low {low}")
    return Dist(kind, low=low, high=high)


def parse_space(raw: Mapping[str, Any]) -> dict[str, Dist]:
    """Every distribution of a spec's ``space``; FieldError naming ``space.<field>...``."""
    if len(raw) > MAX_SPACE_DIMS:
        raise FieldError(("space",), f"at most {MAX_SPACE_DIMS} searched fields, got {len(raw)}")
    return {k: parse_dist(v, ("space", k)) for k, v in raw.items()}


def grid_size(space: Mapping[str, Dist]) -> int | None:
    """Configurations of a space whose fields all have finitely many values (None otherwise)."""
    sizes = [d.size for d in space.values()]
    return None if any(s is None for s in sizes) else math.prod(s for s in sizes if s is not None)


def optuna_space(space: Mapping[str, Dist]) -> dict[str, optuna.distributions.BaseDistribution]:
    """The space as Optuna's distributions (what `OptunaSearch` and the importance evaluator take)."""
    return {k: d.optuna() for k, d in space.items()}


def decode(space: Mapping[str, Dist], sampled: Mapping[str, Any]) -> dict[str, Any]:
    """The cell (config field -> value) of what Optuna sampled, in the space's order."""
    return {k: d.decode(sampled[k]) for k, d in space.items()}


def encode(space: Mapping[str, Dist], cell: Mapping[str, Any]) -> dict[str, Any]:
    """Optuna's params for a cell (the inverse of `decode`)."""
    return {k: d.encode(cell[k]) for k, d in space.items()}


def grid_values(space: Mapping[str, Dist]) -> dict[str, Sequence[Any]]:
    """For Optuna's GridSampler: every value (a choice's indices) of each field."""
    out: dict[str, Sequence[Any]] = {}
    for k, d in space.items():
        if d.kind == "choice":
            out[k] = list(range(len(d.choices)))
        elif d.kind == "int":
            out[k] = list(range(int(d.low or 0), int(d.high or 0) + 1))
        else:
            raise ValueError(f"space.{k}: a {d.kind} range has no grid")
    return out


__all__ = [
    "DIST_KINDS",
    "MAX_CHOICES",
    "MAX_SPACE_DIMS",
    "Dist",
    "decode",
    "encode",
    "grid_size",
    "grid_values",
    "optuna_space",
    "parse_dist",
    "parse_space",
]
