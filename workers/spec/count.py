"""Counting a spec's cells and trials by arithmetic, before anything is expanded: a spec of
40**40 trials is refused at once (`workers.spec.schema` checks the count against the limit)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from workers.spec.errors import FieldError
from workers.spec.expand import value_key

if TYPE_CHECKING:
    from workers.spec.schema import SweepSpec

#: Steps of the exclude-union count before it gives up (a pathological set of excludes).
EXCLUDE_COUNT_BUDGET = 200_000


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
    budget = [EXCLUDE_COUNT_BUDGET]
    n_axes = len(lengths)
    tail = [math.prod(lengths[i:]) for i in range(n_axes + 1)]

    def rec(i: int, live: list[dict[int, int]]) -> int:
        budget[0] -= 1
        if budget[0] < 0:
            raise FieldError(("exclude",), "too many overlapping excludes to count; list fewer, broader ones")
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


def product_size(spec: SweepSpec) -> int:
    """Cells of the grid's product (1 for no grid and no includes: params alone)."""
    if not spec.grid:
        return 0 if spec.include else 1
    return math.prod(len(v) for v in spec.grid.values())


def excluded(spec: SweepSpec) -> int:
    """Product cells that at least one exclude removes."""
    if not spec.exclude or not spec.grid:
        return 0
    keys = list(spec.grid)
    index = {k: i for i, k in enumerate(keys)}
    values = [{value_key(v): j for j, v in enumerate(spec.grid[k])} for k in keys]
    boxes = [b for b in (_box_of(ex, index, values) for ex in spec.exclude) if b is not None]
    return _count_excluded([len(spec.grid[k]) for k in keys], boxes)


def count_cells(spec: SweepSpec) -> int:
    """Cells of the sweep (product - excluded + included), computed without expanding; a
    search's configurations (at most: a search can end before its budget)."""
    if spec.search is not None:
        return spec.num_configs
    return product_size(spec) - excluded(spec) + len(spec.include)


def count_trials(spec: SweepSpec) -> int:
    """Trials of the sweep (cells x replicates), computed without expanding."""
    return count_cells(spec) * len(spec.seeds)


def count_formula(spec: SweepSpec) -> str:
    """The arithmetic of `count_trials`, for messages: ``grid 100 x 100 = 10,000 cells, x 100 replicates``."""
    if spec.search is not None:
        return f"{spec.num_configs:,} {spec.search.algorithm} configurations, x {len(spec.seeds)} replicates"
    axes = " x ".join(str(len(v)) for v in spec.grid.values()) or "no axes"
    parts = [f"grid {axes} = {product_size(spec):,} cells"]
    if spec.exclude:
        parts.append(f"- {excluded(spec):,} excluded")
    if spec.include:
        parts.append(f"+ {len(spec.include):,} included")
    return f"{' '.join(parts)}, x {len(spec.seeds)} replicates"


__all__ = ["count_cells", "count_formula", "count_trials", "excluded", "product_size"]
