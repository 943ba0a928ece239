"""Results of a sweep: its trials' runs as MLflow holds them, aggregated per cell.

MLflow is the record of trials: a trial counts in the results when its run is FINISHED. What a
metric means comes from its family's declaration (`dab_core.metrics`, through
`dab_core.experiments.metrics_of`), never from its name: its direction (``mode``), its unit
(fractions are shown as percentages), its display name and how a run's value is read
(``agg``): the ``final`` value it logged, or its ``best`` over the run's history (max or min by
the mode). The spec's ``mode`` overrides the declaration for the spec's own metric; a query's
``agg`` overrides every metric's. For each chosen metric and cell the results give n, mean,
sample std (n-1), min and max over the cell's seeds (`workers.aggregate`), next to the paper's
value where the spec gives one, and ``metric_info`` says what each metric's numbers are.

Significance: each cell's values are compared with a reference cell's (the `reference`
parameter; default the first cell) by Welch's two-sided t-test (`scipy.stats.ttest_ind` with
``equal_var=False``: no assumption of equal variances, which seeds of different models do not
have). The p-value is null where either cell has fewer than two values or both have no
variance. With few seeds (the paper used 5) read it as a hint, not a verdict, and remember that
comparing many cells with one reference multiplies the chance of a small p by luck.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workers.aggregate import CellSummary, aggregate, format_value
from workers.spec import SweepSpec, Trial, paper_values

if TYPE_CHECKING:  # dab_core imports torch: importing the results must not
    from dab_core.metrics import Agg, Metric

#: ``history(run_id, metric)``: the run's logged values of `metric`, in step order, either as
#: values or as ``(step, value)`` pairs (the report's form).
History = Callable[[str, str], Sequence[float] | Sequence[tuple[float, float]]]


@dataclass(frozen=True)
class TrialRun:
    """A trial's MLflow run: its status and latest metrics."""

    run_id: str
    trial_key: str
    cell_key: str
    seed: int | None
    status: str
    metrics: dict[str, float]
    start_time: int | None
    end_time: int | None
    adopted_from: str | None = None  # the sweep whose run this is, when this sweep adopted it
    stopped_at: float | None = None  # a search's scheduler stopped its configuration at this step


def trial_run_of(r: Any, key: str, adopted_from: str | None = None) -> TrialRun:
    """An MLflow run (as `MlflowClient` returns it) of trial `key` as a `TrialRun`."""
    from workers.tracking import TAG_CELL_KEY, TAG_SEED, TAG_STOPPED_AT

    tags = r.data.tags
    seed = tags.get(TAG_SEED)
    stopped = tags.get(TAG_STOPPED_AT)
    return TrialRun(
        run_id=r.info.run_id,
        trial_key=key,
        cell_key=tags.get(TAG_CELL_KEY, ""),
        seed=int(seed) if seed and seed.lstrip("-").isdigit() else None,
        status=r.info.status,
        metrics=dict(r.data.metrics),
        start_time=r.info.start_time,
        end_time=r.info.end_time,
        adopted_from=adopted_from,
        stopped_at=float(stopped) if stopped and stopped.isdigit() else None,
    )


def trial_runs(client: Any, experiment_id: str, sweep_id: str) -> dict[str, TrialRun]:
    """trial_key -> its run (FINISHED first, then the one furthest along, as the driver picks)."""
    from workers.tracking import ROLE_TRIAL, TAG_ROLE, TAG_SWEEP_ID, TAG_TRIAL_KEY

    rank = {"FINISHED": 0, "RUNNING": 1, "KILLED": 2, "FAILED": 3}
    out: dict[str, TrialRun] = {}
    token = None
    flt = f"tags.`{TAG_ROLE}` = '{ROLE_TRIAL}' and tags.`{TAG_SWEEP_ID}` = '{sweep_id}'"
    while True:
        page = client.search_runs([experiment_id], flt, max_results=5000, page_token=token)
        for r in page:
            key = r.data.tags.get(TAG_TRIAL_KEY)
            if not key:
                continue
            run = trial_run_of(r, key)
            old = out.get(key)
            if old is None or (rank.get(run.status, 4), -run.metrics.get("step", 0)) < (
                rank.get(old.status, 4),
                -old.metrics.get("step", 0),
            ):
                out[key] = run
        token = page.token
        if not token:
            return out


def _p_value(a: Sequence[float], b: Sequence[float]) -> float | None:
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    with_var = any(x != a[0] for x in a) or any(x != b[0] for x in b)
    if not with_var:
        return None
    p = float(stats.ttest_ind(list(a), list(b), equal_var=False).pvalue)
    return None if math.isnan(p) else p


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def declarations(spec: SweepSpec, metrics: Sequence[str], agg: Agg | None = None) -> dict[str, Metric]:
    """Each of `metrics` as these results read it: its family's declaration, with the spec's
    ``mode`` over it for the spec's own metric and `agg` (when given) over every one's agg."""
    from dab_core.experiments import metrics_of
    from dab_core.metrics import resolve

    declared = metrics_of(spec.experiment)
    if not all(metrics):
        from service.core.errors import InvalidRequestError

        raise InvalidRequestError(
            f"a metric name is empty; {spec.experiment} declares: {', '.join(declared.names())}",
            field="metric",
        )
    return {
        name: resolve(declared, name, mode=spec.mode if name == spec.metric else None, agg=agg)
        for name in metrics
    }


def _values(hist: Sequence[float] | Sequence[tuple[float, float]]) -> list[float]:
    out = []
    for h in hist:
        v = float(h[-1]) if isinstance(h, tuple | list) else float(h)
        if math.isfinite(v):
            out.append(v)
    return out


def run_value(run: TrialRun | None, metric: Metric, history: History | None) -> float | None:
    """The value a run counts with for `metric` (its final one, or its best by the metric's
    mode over its history); None unless the run is FINISHED and reported the metric."""
    if run is None or run.status != "FINISHED" or metric.name not in run.metrics:
        return None
    if metric.agg == "best":
        if history is None:
            raise ValueError(f"{metric.name!r} is read as each run's best: its history is needed")
        values = _values(history(run.run_id, metric.name))
        if values:
            return metric.better(values)
    return run.metrics[metric.name]  # no history logged: the final value is all there is


def metric_info(metric: Metric) -> dict[str, Any]:
    """What a metric's numbers in the results are (the JSON's ``metric_info`` entry)."""
    return {
        "mode": metric.mode,
        "unit": metric.unit,
        "display": metric.display or metric.name,
        "agg": metric.agg,
    }


def aggregation_text(info: Mapping[str, Any]) -> str:
    """How a run's value was read, in words: ``final value`` or ``maximum (minimum) over each
    run's evaluations``."""
    if info.get("agg") == "best":
        return f"{'maximum' if info.get('mode', 'max') == 'max' else 'minimum'} over each run's evaluations"
    return "final value"


def compute_results(
    spec: SweepSpec,
    trials: Sequence[Trial],
    runs: Mapping[str, TrialRun],
    *,
    metrics: Sequence[str],
    agg: Agg | None = None,
    reference: str | None = None,
    history: History | None = None,
    include_stopped: bool = False,
) -> dict[str, Any]:
    """Per cell and metric: n, mean, std, min, max, seeds, the paper's value and Welch's p.

    A search's configuration whose runs its scheduler stopped early (``stopped`` of them) did
    not train its budget: it is left out unless `include_stopped`, and ``stopped_cells`` says
    how many were left out, so only configurations that completed are compared by default.

    Args:
        metrics: the metric names to aggregate.
        agg: ``final`` or ``best`` for every metric; None reads each metric by its declared agg.
        reference: the cell_key p-values compare against (default: the first cell).
        history: (run_id, metric) -> the run's logged values (or (step, value) pairs), needed
            for every metric read as ``best``.

    Returns:
        ``{"metrics", "agg" (the given agg or None), "metric_info": {name: {mode, unit,
        display, agg}}, "reference_cell", "cells": [{cell_key, cell, expected, adopted: {seed:
        sweep id whose run it adopted}, stopped, metrics: {name: {n, mean, std, min, max, values,
        seeds, paper, p_value}}}], "significance", "stopped_cells", "include_stopped"}``.
    """
    decl = declarations(spec, metrics, agg)
    stopped: dict[str, int] = {}
    for t in trials:
        run = runs.get(t.trial_key)
        if run is not None and run.stopped_at is not None:
            stopped[t.cell_key] = stopped.get(t.cell_key, 0) + 1
    left_out = 0 if include_stopped else len(stopped)
    if left_out:
        trials = [t for t in trials if t.cell_key not in stopped]
    cells: dict[str, dict[str, Any]] = {}
    for t in trials:
        c = cells.setdefault(
            t.cell_key, {"cell_key": t.cell_key, "cell": t.cell, "config": t.config, "expected": 0}
        )
        c["expected"] += 1
    adopted: dict[str, dict[str, str]] = {}  # cell -> {seed: the sweep whose run it adopted}
    for t in trials:
        run = runs.get(t.trial_key)
        if run is not None and run.adopted_from and run.status == "FINISHED":
            adopted.setdefault(t.cell_key, {})[str(t.seed)] = run.adopted_from
    per_metric: dict[str, list[CellSummary]] = {}
    for name, metric in decl.items():
        rows = []
        for t in trials:
            value = run_value(runs.get(t.trial_key), metric, history)
            rows.append((t.cell_key, t.cell, t.seed, {} if value is None else {name: value}))
        per_metric[name] = aggregate(rows, name)
    ref = reference if reference is not None else next(iter(cells), None)
    out_cells = []
    for key, c in cells.items():
        entry: dict[str, Any] = {
            "cell_key": key,
            "cell": c["cell"],
            "expected": c["expected"],
            "adopted": adopted.get(key, {}),
            "stopped": stopped.get(key, 0),
            "metrics": {},
        }
        for name, summaries in per_metric.items():
            summary = next(s for s in summaries if s.cell_key == key)
            ref_summary = next((s for s in summaries if s.cell_key == ref), None)
            paper = next(
                (p for p in paper_values(spec, c["config"]) if (p.metric or spec.metric) == name), None
            )
            d = summary.as_dict()
            entry["metrics"][name] = {
                "n": d["n"],
                "mean": _num(d["mean"]),
                "std": _num(d["std"]) if d["n"] else None,
                "min": _num(d["min"]),
                "max": _num(d["max"]),
                "values": list(summary.values),
                "seeds": d["seeds"],
                "paper": None
                if paper is None
                else {"value": paper.value, "std": paper.std, "source": paper.source},
                "p_value": None
                if ref_summary is None or key == ref
                else _p_value(summary.values, ref_summary.values),
            }
        out_cells.append(entry)
    return {
        "metrics": list(metrics),
        "agg": agg,
        "metric_info": {name: metric_info(m) for name, m in decl.items()},
        "reference_cell": ref,
        "cells": out_cells,
        "significance": "p_value: Welch's two-sided t-test of the cell's values against the reference cell's",
        "stopped_cells": left_out,
        "include_stopped": include_stopped,
    }


def _info(results: Mapping[str, Any], metric: str) -> dict[str, Any]:
    info = results.get("metric_info", {}).get(metric)
    return (
        dict(info) if info else {"mode": "max", "unit": "raw", "display": metric, "agg": results.get("agg")}
    )


def _scale(info: Mapping[str, Any]) -> float:
    return 100.0 if info.get("unit") == "fraction" else 1.0


def label(info: Mapping[str, Any]) -> str:
    """A metric's display name, with `` (%)`` for fractions."""
    return str(info.get("display")) + (" (%)" if info.get("unit") == "fraction" else "")


def to_csv(results: Mapping[str, Any]) -> str:
    """One row per cell and metric; fractions in percent (``unit`` says ``%``), raw values as is."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "cell",
            "metric",
            "n",
            "expected",
            "mean",
            "std",
            "min",
            "max",
            "paper",
            "paper_std",
            "p_value",
            "unit",
            "display",
            "agg",
        ]
    )
    for c in results["cells"]:
        for metric, m in c["metrics"].items():
            info = _info(results, metric)
            s = _scale(info)

            def num(x: float | None, s: float = s) -> str:
                return "" if x is None else repr(x) if s == 1.0 else f"{x * s:.12g}"

            paper = m["paper"] or {}
            w.writerow(
                [
                    c["cell_key"],
                    metric,
                    m["n"],
                    c["expected"],
                    *(num(m[k]) for k in ("mean", "std", "min", "max")),
                    num(paper.get("value")),
                    num(paper.get("std")),
                    "" if m["p_value"] is None else f"{m['p_value']:.4g}",
                    "%" if s != 1.0 else "raw",
                    info["display"],
                    info["agg"],
                ]
            )
    return buf.getvalue()


def to_markdown(results: Mapping[str, Any]) -> str:
    """A Markdown table per metric: cell, mean ± std, n, min, max, paper, p (Welch); fractions
    in percent, under the metric's display name and how each run's value was read."""
    out = []
    for metric in results["metrics"]:
        info = _info(results, metric)
        pct = info.get("unit") == "fraction"
        scale = _scale(info)
        lines = [
            f"| cell | {label(info)}, {aggregation_text(info)}: mean ± std | n | min | max | paper | p vs {results['reference_cell']} |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in results["cells"]:
            m = c["metrics"][metric]
            mean = math.nan if m["mean"] is None else m["mean"]
            value = format_value(mean, m["std"] or 0.0, pct)
            lo = "n/a" if m["min"] is None else f"{m['min'] * scale:.4g}"
            hi = "n/a" if m["max"] is None else f"{m['max'] * scale:.4g}"
            paper = ""
            if m["paper"]:
                paper = f"{m['paper']['value'] * scale:g}"
                if m["paper"]["std"] is not None:
                    paper += f" ± {m['paper']['std'] * scale:g}"
            p = "" if m["p_value"] is None else f"{m['p_value']:.3g}"
            n = f"{m['n']}/{c['expected']}"
            if c.get("adopted"):
                n += f" ({len(c['adopted'])} adopted)"
            if c.get("stopped"):
                n += " (stopped early)"
            lines.append(
                f"| {c['cell_key'] or '(params only)'} | {value} | {n} | {lo} | {hi} | {paper} | {p} |"
            )
        out.append("\n".join(lines))
    if results.get("stopped_cells"):
        out.append(
            f"{results['stopped_cells']} configuration(s) stopped early by the scheduler are not shown "
            "(include_stopped=true shows them at the step they reached)."
        )
    return "\n\n".join(out) + "\n"


__all__ = [
    "History",
    "TrialRun",
    "aggregation_text",
    "compute_results",
    "declarations",
    "label",
    "metric_info",
    "run_value",
    "to_csv",
    "to_markdown",
    "trial_run_of",
    "trial_runs",
]
