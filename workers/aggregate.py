"""Replicate seeds -> paper-style rows: mean ± std (sample std, n-1) per cell of a sweep."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CellSummary:
    """One cell of a sweep (a grid point), aggregated over its replicate seeds."""

    cell_key: str
    cell: dict[str, Any]
    metric: str
    values: tuple[float, ...]
    paper: float | None = None
    seeds: tuple[int, ...] = field(default=())

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        """Sample standard deviation (n-1); 0 for a single value."""
        return statistics.stdev(self.values) if self.n > 1 else 0.0

    @property
    def min(self) -> float:
        return min(self.values) if self.values else math.nan

    @property
    def max(self) -> float:
        return max(self.values) if self.values else math.nan

    def as_dict(self) -> dict[str, Any]:
        return {
            "cell_key": self.cell_key,
            "cell": self.cell,
            "metric": self.metric,
            "n": self.n,
            "mean": self.mean,
            "std": self.std,
            "min": self.min,
            "max": self.max,
            "paper": self.paper,
            "seeds": list(self.seeds),
        }


def aggregate(
    results: Iterable[tuple[str, Mapping[str, Any], int, Mapping[str, float]]],
    metric: str,
    paper: Mapping[str, float] | None = None,
) -> list[CellSummary]:
    """Group per-trial results by cell, in order of first appearance.

    Args:
        results: ``(cell_key, cell, seed, metrics)`` per finished trial.
        metric: the metric to aggregate; trials without it are left out of their cell.
        paper: the paper's value per cell key, where known.
    """
    cells: dict[str, tuple[Mapping[str, Any], list[float], list[int]]] = {}
    for cell_key, cell, seed, metrics in results:
        _, values, seeds = cells.setdefault(cell_key, (cell, [], []))
        if metric in metrics and metrics[metric] is not None:
            values.append(float(metrics[metric]))
            seeds.append(seed)
    return [
        CellSummary(key, dict(cell), metric, tuple(values), (paper or {}).get(key), tuple(seeds))
        for key, (cell, values, seeds) in cells.items()
    ]


def format_value(mean: float, std: float, percent: bool) -> str:
    if math.isnan(mean):
        return "n/a"
    scale = 100.0 if percent else 1.0
    digits = 2 if percent else 4
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


__all__ = ["CellSummary", "aggregate", "format_value"]
