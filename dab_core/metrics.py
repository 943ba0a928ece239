"""What a metric means, declared by the family that reports it (as torchmetrics declares
``higher_is_better``), so that nothing downstream guesses from a metric's name.

Each `dab_core.experiments.ExperimentFamily` carries a `MetricSet`: the metrics its trials
report, and which one a sweep optimises unless its spec names another. Workers, the service,
the CLI and the report read these declarations; a spec's ``metric``/``mode`` override them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["max", "min"]
Unit = Literal["fraction", "raw"]
Agg = Literal["final", "best"]


@dataclass(frozen=True)
class Metric:
    """One reported metric.

    Attributes:
        name: the key the trial reports (``test_accuracy``).
        mode: ``max`` when higher is better, ``min`` when lower is.
        unit: ``fraction`` (a value in [0, 1] that tables show as a percentage) or ``raw``.
        display: the name tables and figures print (default: `name`).
        agg: how a trial's value is read for tables: its ``final`` report, or its ``best``
            over the run's history (by `mode`).
        description: one line for the docs and the API.
    """

    name: str
    mode: Mode
    unit: Unit = "raw"
    display: str = ""
    agg: Agg = "final"
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a metric needs a name")
        if self.mode not in ("max", "min"):
            raise ValueError(f"metric {self.name!r}: mode is 'max' or 'min', got {self.mode!r}")
        if self.unit not in ("fraction", "raw"):
            raise ValueError(f"metric {self.name!r}: unit is 'fraction' or 'raw', got {self.unit!r}")
        if self.agg not in ("final", "best"):
            raise ValueError(f"metric {self.name!r}: agg is 'final' or 'best', got {self.agg!r}")

    @property
    def label(self) -> str:
        """The display name, with `` (%)`` for fractions."""
        return (self.display or self.name) + (" (%)" if self.unit == "fraction" else "")

    @property
    def scale(self) -> float:
        """What a stored value is multiplied by for display (100 for fractions)."""
        return 100.0 if self.unit == "fraction" else 1.0

    def better(self, values: Iterable[float]) -> float:
        """The best of `values` by this metric's mode."""
        return max(values) if self.mode == "max" else min(values)


#: Every family's training loop reports these (`dab_core.training.fit`).
COMMON_METRICS: tuple[Metric, ...] = (
    Metric("step", "max", description="optimiser steps done"),
    Metric(
        "samples_per_s", "max", display="samples/s", description="training throughput since the last report"
    ),
)


@dataclass(frozen=True)
class MetricSet:
    """A family's metrics and its default one. `get` answers for any name: a metric the family
    did not declare is raw and higher-is-better, and says so (``declared`` False)."""

    metrics: tuple[Metric, ...]
    default: str
    _by_name: dict[str, Metric] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, Metric] = {}
        for m in (*COMMON_METRICS, *self.metrics):
            by_name[m.name] = m  # a family may redeclare a common metric
        if self.default not in by_name:
            raise ValueError(
                f"default metric {self.default!r} is not declared; declared: {', '.join(by_name)}"
            )
        object.__setattr__(self, "_by_name", by_name)

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._by_name.values())

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def names(self) -> list[str]:
        return list(self._by_name)

    @property
    def default_metric(self) -> Metric:
        return self._by_name[self.default]

    def get(self, name: str) -> Metric:
        """The declaration of `name`, or an undeclared raw, higher-is-better one."""
        return self._by_name.get(name) or Metric(name, "max")

    def declared(self, name: str) -> bool:
        return name in self._by_name


def resolve(metrics: MetricSet, name: str, mode: Mode | None = None, agg: Agg | None = None) -> Metric:
    """`name`'s declaration with a spec's or a query's `mode` and `agg` applied over it."""
    m = metrics.get(name)
    if (mode is None or mode == m.mode) and (agg is None or agg == m.agg):
        return m
    return Metric(m.name, mode or m.mode, m.unit, m.display, agg or m.agg, m.description)


__all__ = ["COMMON_METRICS", "Agg", "Metric", "MetricSet", "Mode", "Unit", "resolve"]
