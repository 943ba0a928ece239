"""The search section of a sweep's report: the configurations a search proposed, ranked by the
sweep metric, with Welch's p of each against the best, each searched field's importance, and
a figure per field. Pure functions of the spec and `service.results.compute_results`'s output
(no MLflow, no Ray). Welch's two-sided t-test is scipy's (`scipy.stats.ttest_ind` with
``equal_var=False``, through `service.results`, so that the p here reads as the results table's);
importance is Optuna's fANOVA evaluator (`optuna.importance.FanovaImportanceEvaluator`, seeded),
the library the search already samples with, run over an in-memory study of one trial per
compared configuration (its mean over seeds), so no importance model is kept here. Figures are
matplotlib's Agg (`service.report`'s helpers); each figure's numbers come from `param_series`.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from service.report import _plt, _png
from service.results import _info, _p_value, _scale, aggregation_text, label
from workers.aggregate import format_value
from workers.spec import SweepSpec
from workers.spec.search import Dist, encode, optuna_space

#: What the figures call a configuration the scheduler stopped before its budget.
STOPPED_LABEL = "stopped early (last value)"


def _stats(cell: Mapping[str, Any], metric: str) -> dict[str, Any]:
    return dict(cell.get("metrics", {}).get(metric) or {})


def _has_value(m: Mapping[str, Any]) -> bool:
    mean = m.get("mean")
    return (m.get("n") or 0) >= 1 and mean is not None and math.isfinite(mean)


def _ranked(
    spec: SweepSpec, results: Mapping[str, Any], include_stopped: bool
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(cell, its metric stats) of every compared configuration, best first (ties: in order)."""
    metric = spec.resolved_metric
    rows = [
        (c, m)
        for c in results["cells"]
        if _has_value(m := _stats(c, metric)) and (include_stopped or not c.get("stopped"))
    ]
    sign = -1.0 if spec.resolved_mode == "max" else 1.0
    return sorted(rows, key=lambda r: sign * r[1]["mean"])


def _importance(
    space: Mapping[str, Dist], ranked: Sequence[tuple[dict[str, Any], dict[str, Any]]], mode: str
) -> tuple[dict[str, float] | None, str]:
    if not space:
        return None, "the spec searches no fields"
    if len(ranked) < 2:
        return None, f"fANOVA needs at least 2 compared configurations, got {len(ranked)}"
    if len({m["mean"] for _, m in ranked}) < 2:
        return None, "every compared configuration has the same mean: no field explains a difference"
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    dists = optuna_space(space)
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
            for c, m in ranked:
                study.add_trial(
                    optuna.trial.create_trial(
                        params=encode(space, c["cell"]), distributions=dists, value=float(m["mean"])
                    )
                )
            found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as e:
        return None, f"fANOVA failed: {e}"
    finally:
        optuna.logging.set_verbosity(level)
    shares = {k: float(found.get(k, 0.0)) for k in space}
    if not all(math.isfinite(v) for v in shares.values()):
        return None, "fANOVA gave no finite importance"
    return shares, ""


def search_summary(
    spec: SweepSpec, results: Mapping[str, Any], *, top: int = 5, include_stopped: bool = False
) -> dict[str, Any]:
    """The configurations ranked by the mean of the sweep metric, in its mode's direction.

    Ranked: configurations with at least one value and (unless `include_stopped`) none of their
    seeds' runs stopped early. Each of the `top` best has ``p_vs_best``, Welch's two-sided p of
    its values against rank 1's (None for rank 1, or where either has fewer than two values or
    neither has variance). ``importance`` is fANOVA's share of each searched field (they sum
    to about 1; None with ``importance_note`` saying why).
    """
    metric, mode = spec.resolved_metric, spec.resolved_mode
    ranked = _ranked(spec, results, include_stopped)
    best_values = ranked[0][1].get("values", []) if ranked else []
    best = []
    for i, (c, m) in enumerate(ranked[: max(top, 0)]):
        best.append(
            {
                "rank": i + 1,
                "cell_key": c["cell_key"],
                "cell": dict(c["cell"]),
                "n": m["n"],
                "mean": m["mean"],
                "std": m.get("std"),
                "values": list(m.get("values", [])),
                "p_vs_best": None if i == 0 else _p_value(m.get("values", []), best_values),
            }
        )
    runner_up = _p_value(ranked[1][1].get("values", []), best_values) if len(ranked) > 1 else None
    importance, note = _importance(spec.distributions, ranked, mode)
    return {
        "metric": metric,
        "mode": mode,
        "fields": list(spec.distributions),
        "include_stopped": include_stopped,
        "configurations": len(results["cells"]),
        "compared": len(ranked),
        "stopped": sum(1 for c in results["cells"] if c.get("stopped")),
        "best": best,
        "runner_up_p": runner_up,
        "importance": importance,
        "importance_note": note if importance is None else "",
    }


def param_series(
    spec: SweepSpec, results: Mapping[str, Any], include_stopped: bool = True
) -> dict[str, list[dict[str, Any]]]:
    """Per searched field: a point per configuration with a value, sorted by x.

    ``x`` is the field's value (a ``choice``: the index of its value); ``mean`` and ``std`` are
    in display units (fractions ×100; std None with one value); ``stopped`` whether any of its
    seeds stopped early; ``best`` whether it is the summary's rank 1 (completed configurations
    only).
    """
    metric = spec.resolved_metric
    s = _scale(_info(results, metric))
    ranked = _ranked(spec, results, include_stopped=False)
    best_key = ranked[0][0]["cell_key"] if ranked else None
    out: dict[str, list[dict[str, Any]]] = {}
    for field, dist in spec.distributions.items():
        pts = []
        for c in results["cells"]:
            m = _stats(c, metric)
            stopped = bool(c.get("stopped"))
            if not _has_value(m) or (stopped and not include_stopped) or field not in c["cell"]:
                continue
            std = m.get("std")
            pts.append(
                {
                    "x": dist.encode(c["cell"][field]),
                    "mean": m["mean"] * s,
                    "std": None if std is None else std * s,
                    "n": m["n"],
                    "stopped": stopped,
                    "best": c["cell_key"] == best_key,
                    "cell_key": c["cell_key"],
                }
            )
        out[field] = sorted(pts, key=lambda p: p["x"])
    return out


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _field_figure(
    spec: SweepSpec, field: str, dist: Dist, pts: Sequence[Mapping[str, Any]], info: Mapping[str, Any]
) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    if dist.kind == "loguniform":
        ax.set_xscale("log")
    for stopped, style in (
        (False, {"fmt": "o", "color": "C0", "label": "completed"}),
        (True, {"fmt": "o", "color": "grey", "mfc": "none", "label": STOPPED_LABEL}),
    ):
        group = [p for p in pts if p["stopped"] == stopped]
        if group:
            ax.errorbar(
                [p["x"] for p in group],
                [p["mean"] for p in group],
                yerr=[p["std"] or 0.0 for p in group],
                capsize=3,
                **style,
            )
    for p in pts:
        if p["best"]:
            ax.plot([p["x"]], [p["mean"]], marker="*", ms=16, color="C3", ls="none", label="best")
    if dist.kind == "choice":
        ax.set_xticks(range(len(dist.choices)), [_text(c) for c in dist.choices], rotation=20, ha="right")
    ax.set(
        title=f"{spec.name}: {field} ({aggregation_text(info)})",
        xlabel=field,
        ylabel=label(info),
    )
    ax.grid(alpha=0.3)
    if pts:
        ax.legend(fontsize=8)
    return _png(fig)


def search_figures(spec: SweepSpec, results: Mapping[str, Any]) -> dict[str, bytes]:
    """``search_<field>.png`` (dots as ``_``) per searched field: the metric against the field,
    one std over seeds as error bars, stopped configurations hollow grey, the best starred."""
    info = _info(results, spec.resolved_metric)
    series = param_series(spec, results, include_stopped=True)
    return {
        f"search_{field.replace('.', '_')}.png": _field_figure(spec, field, dist, series[field], info)
        for field, dist in spec.distributions.items()
    }


def search_markdown(summary: Mapping[str, Any], results: Mapping[str, Any]) -> str:
    """``## Search``: the best configurations (rank, each field, mean ± std, n, p vs best),
    the runner-up's p, how many were compared and stopped early, and the fields' importance."""
    info = _info(results, summary["metric"])
    pct = info.get("unit") == "fraction"
    fields: list[str] = list(summary.get("fields") or [])
    for b in summary["best"]:
        fields += [k for k in b["cell"] if k not in fields]
    direction = "highest" if summary["mode"] == "max" else "lowest"
    lines = [
        "## Search",
        "",
        f"Best configurations by {label(info)}, {aggregation_text(info)} ({direction} mean over seeds "
        "first); p: Welch's two-sided t-test against rank 1.",
        "",
        "| rank | " + " | ".join(fields) + f" | {label(info)}: mean ± std | n | p vs best |",
        "|---|" + "---|" * len(fields) + "---|---|---|",
    ]
    for b in summary["best"]:
        cells = [_text(b["cell"][f]) if f in b["cell"] else "" for f in fields]
        value = format_value(b["mean"], b["std"] or 0.0, pct)
        p = "" if b["p_vs_best"] is None else f"{b['p_vs_best']:.3g}"
        lines.append(f"| {b['rank']} | " + " | ".join(cells) + f" | {value} | {b['n']} | {p} |")
    runner = summary["runner_up_p"]
    lines += [
        "",
        "Best vs runner-up: "
        + (
            f"p = {runner:.3g}."
            if runner is not None
            else "p n/a (no runner-up, fewer than two values, or no variance)."
        ),
        "",
        f"{summary['compared']} of {summary['configurations']} configurations compared; "
        f"{summary['stopped']} stopped early"
        + (" (ranked by their last value)." if summary["include_stopped"] else " (not ranked)."),
        "",
    ]
    importance = summary["importance"]
    if importance is None:
        lines.append(f"Importance (fANOVA): n/a: {summary['importance_note']}.")
    else:
        lines += ["Importance (fANOVA, share of the variance of the mean):", ""]
        lines += [f"- {k}: {v:.3f}" for k, v in sorted(importance.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines) + "\n"


__all__ = ["STOPPED_LABEL", "param_series", "search_figures", "search_markdown", "search_summary"]
