"""Paper-style report of a sweep: Table 1 / Table 2 rows as Markdown and Figures 3, 4 and 6 as
PNG, whichever the sweep reproduces, plus the learning curves of every sweep.

Which parts a sweep gets is read from its trials' configs, not from its name:

* Table 1 rows: a ``sorting`` sweep; a row per model, a column per T (seq_len).
* Table 2 rows: a ``classification`` sweep on CIFAR10; a row per hard function (Baseline for
  the identity estimator).
* Figure 3: a ``sorting`` sweep with several ``ponder_steps``: accuracy against ponder steps,
  a line per T, error bars of one std over seeds.
* Figure 4: a ``representation`` sweep with several ``bpp``: the metric against bpp, a line
  per variant.
* Figure 6: a ``classification`` sweep that varies ``placement``, ``estimator`` or
  ``dab_loss_to_input``: a bar per cell with one std.
* ``curves.png`` (every sweep): the sweep metric against the step, mean over seeds per cell.

Figures are drawn with matplotlib's Agg backend (no display) and logged, with the Markdown, as
artifacts of the sweep's parent run under ``report/``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from service.results import is_fraction
from workers.spec import SweepSpec, Trial

MODEL_NAMES = {"signum-rnn": "Signum-RNN", "signum-dense": "Signum-Dense", "elu-dense": "ELU-Dense"}


def _fmt(m: Mapping[str, Any], pct: bool) -> str:
    if not m or m.get("mean") is None:
        return "n/a"
    s = 100.0 if pct else 1.0
    text = f"{m['mean'] * s:.2f} ± {(m['std'] or 0) * s:.2f}"
    if m.get("paper"):
        text += f" (paper {m['paper']['value'] * s:g})"
    return text


def _by_cell(results: Mapping[str, Any], metric: str) -> dict[str, dict[str, Any]]:
    return {c["cell_key"]: c["metrics"].get(metric, {}) for c in results["cells"]}


def _configs(trials: Sequence[Trial]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for t in trials:
        out.setdefault(t.cell_key, t.config)
    return out


def table1_rows(spec: SweepSpec, trials: Sequence[Trial], results: Mapping[str, Any]) -> str | None:
    if spec.experiment != "sorting":
        return None
    metric, pct = spec.resolved_metric, is_fraction(spec.resolved_metric)
    cfg = _configs(trials)
    stats = _by_cell(results, metric)
    ts = sorted({c["seq_len"] for c in cfg.values()})
    models: dict[str, dict[int, dict[str, Any]]] = {}
    for key, c in cfg.items():
        label = MODEL_NAMES.get(c["model"], c["model"])
        if c.get("ponder_steps"):
            label += f" (ponder {c['ponder_steps']})"
        models.setdefault(label, {})[c["seq_len"]] = stats.get(key, {})
    unit = " (%)" if pct else ""
    lines = [
        f"Table 1: {metric}{unit}, mean ± std over seeds (paper's value where known)",
        "",
        "| model | " + " | ".join(f"T={t}" for t in ts) + " |",
        "|---|" + "---|" * len(ts),
    ]
    for label, row in models.items():
        lines.append(f"| {label} | " + " | ".join(_fmt(row.get(t, {}), pct) for t in ts) + " |")
    return "\n".join(lines)


def table2_rows(spec: SweepSpec, trials: Sequence[Trial], results: Mapping[str, Any]) -> str | None:
    if spec.experiment != "classification":
        return None
    metric, pct = spec.resolved_metric, is_fraction(spec.resolved_metric)
    cfg = _configs(trials)
    stats = _by_cell(results, metric)
    lines = [
        f"Table 2: {metric}{' (%)' if pct else ''}, mean ± std over seeds (paper's value where known)",
        "",
        "| hard function | estimator | placement | accuracy |",
        "|---|---|---|---|",
    ]
    for key, c in cfg.items():
        label = "Baseline" if c.get("estimator") == "identity" else str(c.get("hard"))
        lines.append(
            f"| {label} | {c.get('estimator')} | {c.get('placement')} | {_fmt(stats.get(key, {}), pct)} |"
        )
    return "\n".join(lines)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _line_figure(
    title: str, xlabel: str, ylabel: str, series: Mapping[str, list[tuple[float, float, float]]]
) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in series.items():
        pts = sorted(p for p in pts if not math.isnan(p[1]))
        if pts:
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                yerr=[p[2] for p in pts],
                marker="o",
                capsize=3,
                label=label,
            )
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def figure3(spec: SweepSpec, trials: Sequence[Trial], results: Mapping[str, Any]) -> bytes | None:
    cfg = _configs(trials)
    if spec.experiment != "sorting" or len({c.get("ponder_steps") for c in cfg.values()}) < 2:
        return None
    metric, s = spec.resolved_metric, 100.0 if is_fraction(spec.resolved_metric) else 1.0
    stats = _by_cell(results, metric)
    series: dict[str, list[tuple[float, float, float]]] = {}
    for key, c in cfg.items():
        m = stats.get(key, {})
        if m.get("mean") is not None:
            series.setdefault(f"T={c['seq_len']}", []).append(
                (c["ponder_steps"], m["mean"] * s, (m["std"] or 0) * s)
            )
    return _line_figure("Figure 3: pondering", "ponder steps", metric, series)


def figure4(spec: SweepSpec, trials: Sequence[Trial], results: Mapping[str, Any]) -> bytes | None:
    cfg = _configs(trials)
    if spec.experiment != "representation" or len({c.get("bpp") for c in cfg.values()}) < 2:
        return None
    metric = spec.resolved_metric
    stats = _by_cell(results, metric)
    series: dict[str, list[tuple[float, float, float]]] = {}
    for key, c in cfg.items():
        m = stats.get(key, {})
        if m.get("mean") is not None:
            series.setdefault(str(c.get("variant")), []).append((c["bpp"], m["mean"], m["std"] or 0))
    return _line_figure(f"Figure 4: {c.get('dataset', '')}", "bits per pixel", metric, series)


def figure6(spec: SweepSpec, trials: Sequence[Trial], results: Mapping[str, Any]) -> bytes | None:
    axes = [a for a in ("placement", "estimator", "dab_loss_to_input") if a in spec.grid]
    if spec.experiment != "classification" or not axes:
        return None
    metric, s = spec.resolved_metric, 100.0 if is_fraction(spec.resolved_metric) else 1.0
    cells = [c for c in results["cells"] if c["metrics"].get(metric, {}).get("mean") is not None]
    if not cells:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [c["cell_key"] for c in cells]
    means = [c["metrics"][metric]["mean"] * s for c in cells]
    stds = [(c["metrics"][metric]["std"] or 0) * s for c in cells]
    ax.bar(range(len(cells)), means, yerr=stds, capsize=4)
    ax.set_xticks(range(len(cells)), labels, rotation=20, ha="right")
    ax.set(title=f"Figure 6: {', '.join(axes)}", ylabel=metric)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def curves(
    spec: SweepSpec,
    trials: Sequence[Trial],
    runs: Mapping[str, Any],
    history: Callable[[str, str], list[tuple[float, float]]],
) -> bytes | None:
    """The sweep metric against the step: mean over the cell's finished seeds."""
    metric = spec.resolved_metric
    by_cell: dict[str, dict[float, list[float]]] = {}
    for t in trials:
        run = runs.get(t.trial_key)
        if run is None or run.status != "FINISHED":
            continue
        for step, value in history(run.run_id, metric):
            by_cell.setdefault(t.cell_key, {}).setdefault(step, []).append(value)
    if not by_cell:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for cell, points in by_cell.items():
        steps = sorted(points)
        ax.plot(
            steps, [sum(points[x]) / len(points[x]) for x in steps], marker=".", label=cell or "(params only)"
        )
    ax.set(title=f"{spec.name}: learning curves", xlabel="step", ylabel=metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def build_report(
    sweep_id: str,
    spec: SweepSpec,
    trials: Sequence[Trial],
    runs: Mapping[str, Any],
    results: Mapping[str, Any],
    results_markdown: str,
    history: Callable[[str, str], list[tuple[float, float]]],
) -> tuple[str, dict[str, bytes]]:
    """(Markdown, {figure file name: PNG bytes})."""
    figures: dict[str, bytes] = {}
    for name, fig in (
        ("figure3.png", figure3(spec, trials, results)),
        ("figure4.png", figure4(spec, trials, results)),
        ("figure6.png", figure6(spec, trials, results)),
        ("curves.png", curves(spec, trials, runs, history)),
    ):
        if fig is not None:
            figures[name] = fig
    parts = [f"# {spec.name} (sweep {sweep_id})", ""]
    if spec.description:
        parts += [spec.description, ""]
    for table in (table1_rows(spec, trials, results), table2_rows(spec, trials, results)):
        if table:
            parts += [table, ""]
    parts += ["## Results per cell", "", results_markdown.strip(), ""]
    parts += [results["significance"] + ".", ""]
    if figures:
        parts += ["## Figures", ""] + [f"![{n}]({n})" for n in figures] + [""]
    return "\n".join(parts), figures


__all__ = ["build_report", "curves", "figure3", "figure4", "figure6", "table1_rows", "table2_rows"]
