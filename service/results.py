"""Results of a sweep: its trials' runs as MLflow holds them, aggregated per cell.

MLflow is the record of trials: a trial counts in the results when its run is FINISHED. For
each chosen metric and cell the results give n, mean, sample std (n-1), min and max over the
cell's seeds (`workers.aggregate`), of each run's final value (the last one it logged) or its
best (max or min over the run's history, by the metric's mode), next to the paper's value where
the spec gives one.

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
from typing import Any

from workers.aggregate import CellSummary, aggregate, format_value
from workers.spec import SweepSpec, Trial, paper_values

FRACTION_WORDS = ("accuracy", "all_or_none", "per_position", "ms_ssim")
LOWER_IS_BETTER = ("loss", "error", "displacement", "bpp_actual", "mse")


def is_fraction(metric: str) -> bool:
    return any(w in metric for w in FRACTION_WORDS)


def metric_mode(metric: str, spec: SweepSpec) -> str:
    if metric == spec.metric and spec.mode:
        return spec.mode
    return "min" if any(w in metric for w in LOWER_IS_BETTER) else "max"


@dataclass(frozen=True)
class TrialRun:
    run_id: str
    trial_key: str
    cell_key: str
    seed: int | None
    status: str
    metrics: dict[str, float]
    start_time: int | None
    end_time: int | None


def trial_runs(client: Any, experiment_id: str, sweep_id: str) -> dict[str, TrialRun]:
    """trial_key -> its run (FINISHED first, then the one furthest along, as the driver picks)."""
    from workers.tracking import ROLE_TRIAL, TAG_CELL_KEY, TAG_ROLE, TAG_SEED, TAG_SWEEP_ID, TAG_TRIAL_KEY

    rank = {"FINISHED": 0, "RUNNING": 1, "KILLED": 2, "FAILED": 3}
    out: dict[str, TrialRun] = {}
    token = None
    flt = f"tags.`{TAG_ROLE}` = '{ROLE_TRIAL}' and tags.`{TAG_SWEEP_ID}` = '{sweep_id}'"
    while True:
        page = client.search_runs([experiment_id], flt, max_results=5000, page_token=token)
        for r in page:
            tags = r.data.tags
            key = tags.get(TAG_TRIAL_KEY)
            if not key:
                continue
            seed = tags.get(TAG_SEED)
            run = TrialRun(
                run_id=r.info.run_id,
                trial_key=key,
                cell_key=tags.get(TAG_CELL_KEY, ""),
                seed=int(seed) if seed and seed.lstrip("-").isdigit() else None,
                status=r.info.status,
                metrics=dict(r.data.metrics),
                start_time=r.info.start_time,
                end_time=r.info.end_time,
            )
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


def compute_results(
    spec: SweepSpec,
    trials: Sequence[Trial],
    runs: Mapping[str, TrialRun],
    *,
    metrics: Sequence[str],
    agg: str,
    reference: str | None,
    history: Callable[[str, str], list[float]] | None = None,
) -> dict[str, Any]:
    """Per cell and metric: n, mean, std, min, max, seeds, the paper's value and Welch's p.

    Args:
        history: (run_id, metric) -> the run's values of that metric, for ``agg="best"``.
    """
    cells: dict[str, dict[str, Any]] = {}
    for t in trials:
        c = cells.setdefault(
            t.cell_key, {"cell_key": t.cell_key, "cell": t.cell, "config": t.config, "expected": 0}
        )
        c["expected"] += 1
    per_metric: dict[str, list[CellSummary]] = {}
    for metric in metrics:
        mode = metric_mode(metric, spec)
        rows = []
        for t in trials:
            run = runs.get(t.trial_key)
            values: dict[str, float] = {}
            if run is not None and run.status == "FINISHED" and metric in run.metrics:
                if agg == "best" and history is not None:
                    hist = [v for v in history(run.run_id, metric) if math.isfinite(v)]
                    if hist:
                        values[metric] = max(hist) if mode == "max" else min(hist)
                else:
                    values[metric] = run.metrics[metric]
            rows.append((t.cell_key, t.cell, t.seed, values))
        per_metric[metric] = aggregate(rows, metric)
    ref = reference if reference is not None else next(iter(cells), None)
    out_cells = []
    for key, c in cells.items():
        entry: dict[str, Any] = {"cell_key": key, "cell": c["cell"], "expected": c["expected"], "metrics": {}}
        for metric, summaries in per_metric.items():
            summary = next(s for s in summaries if s.cell_key == key)
            ref_summary = next((s for s in summaries if s.cell_key == ref), None)
            paper = next(
                (p for p in paper_values(spec, c["config"]) if (p.metric or spec.metric) == metric), None
            )
            d = summary.as_dict()
            entry["metrics"][metric] = {
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
        "reference_cell": ref,
        "cells": out_cells,
        "significance": "p_value: Welch's two-sided t-test of the cell's values against the reference cell's",
    }


def to_csv(results: Mapping[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["cell", "metric", "n", "expected", "mean", "std", "min", "max", "paper", "paper_std", "p_value"]
    )
    for c in results["cells"]:
        for metric, m in c["metrics"].items():
            paper = m["paper"] or {}
            w.writerow(
                [
                    c["cell_key"],
                    metric,
                    m["n"],
                    c["expected"],
                    *("" if m[k] is None else repr(m[k]) for k in ("mean", "std", "min", "max")),
                    "" if paper.get("value") is None else repr(paper["value"]),
                    "" if paper.get("std") is None else repr(paper["std"]),
                    "" if m["p_value"] is None else f"{m['p_value']:.4g}",
                ]
            )
    return buf.getvalue()


def to_markdown(results: Mapping[str, Any]) -> str:
    """A Markdown table per metric: cell, mean ± std, n, min, max, paper, p (Welch)."""
    out = []
    for metric in results["metrics"]:
        pct = is_fraction(metric)
        scale = 100.0 if pct else 1.0
        unit = " (%)" if pct else ""
        lines = [
            f"| cell | {metric}{unit} ({results['agg']}) mean ± std | n | min | max | paper | p vs {results['reference_cell']} |",
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
            lines.append(
                f"| {c['cell_key'] or '(params only)'} | {value} | {m['n']}/{c['expected']} | {lo} | {hi} | {paper} | {p} |"
            )
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


__all__ = [
    "TrialRun",
    "compute_results",
    "is_fraction",
    "metric_mode",
    "to_csv",
    "to_markdown",
    "trial_runs",
]
