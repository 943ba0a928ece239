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

Every table and figure reads the sweep's metric as its family declares it (`dab_core.metrics`):
its display name, its unit (fractions in percent) and its aggregation, so that Table 1 and
Figure 3 read each run's maximum all-or-none accuracy, as the paper reports them ("The mean and
standard deviation of the maximum test all-or-none accuracy are reported over 5 runs", Figure
3's caption). Each table and figure says which aggregation it read.

The data a figure is drawn from is returned by its ``*_series`` function, so tests read the
numbers rather than the pixels. Figures are drawn with matplotlib's Agg backend (no display).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from service.results import aggregation_text, compute_results, label, to_markdown
from workers.spec import SweepSpec, Trial

MODEL_NAMES = {"signum-rnn": "Signum-RNN", "signum-dense": "Signum-Dense", "elu-dense": "ELU-Dense"}

#: ``history(run_id, metric)``: the run's ``(step, value)`` pairs of `metric`, sorted by step.
StepHistory = Callable[[str, str], list[tuple[float, float]]]
#: label -> ``(x, mean, std)`` points, in display units.
Series = dict[str, list[tuple[float, float, float]]]


def _info(results: Mapping[str, Any], metric: str) -> dict[str, Any]:
    return dict(results["metric_info"][metric])


def _scale(info: Mapping[str, Any]) -> float:
    return 100.0 if info["unit"] == "fraction" else 1.0


def _fmt(m: Mapping[str, Any], info: Mapping[str, Any]) -> str:
    if not m or m.get("mean") is None:
        return "n/a"
    s = _scale(info)
    spec = ".2f" if info["unit"] == "fraction" else ".4g"
    text = f"{m['mean'] * s:{spec}} ± {(m['std'] or 0) * s:{spec}}"
    if m.get("paper"):
        text += f" (paper {m['paper']['value'] * s:g})"
    return text


def _caption(results: Mapping[str, Any], metric: str) -> str:
    info = _info(results, metric)
    return f"{label(info)}, {aggregation_text(info)}, mean ± std over seeds"


def _by_cell(results: Mapping[str, Any], metric: str) -> dict[str, dict[str, Any]]:
    return {c["cell_key"]: c["metrics"].get(metric, {}) for c in results["cells"]}


def _configs(trials: Sequence[Trial]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for t in trials:
        out.setdefault(t.cell_key, t.config)
    return out


def table1_rows(spec: SweepSpec, trials: Sequence[Trial], results: Mapping[str, Any]) -> str | None:
    """Table 1 (sorting): a row per model (and ponder steps), a column per T."""
    if spec.experiment != "sorting":
        return None
    metric = spec.resolved_metric
    info = _info(results, metric)
    cfg = _configs(trials)
    stats = _by_cell(results, metric)
    ts = sorted({c["seq_len"] for c in cfg.values()})
    models: dict[str, dict[int, dict[str, Any]]] = {}
    for key, c in cfg.items():
        name = MODEL_NAMES.get(c["model"], c["model"])
        if c.get("ponder_steps"):
            name += f" (ponder {c['ponder_steps']})"
        models.setdefault(name, {})[c["seq_len"]] = stats.get(key, {})
    lines = [
        f"Table 1: {_caption(results, metric)} (paper's value where known)",
        "",
        "| model | " + " | ".join(f"T={t}" for t in ts) + " |",
        "|---|" + "---|" * len(ts),
    ]
    for name, row in models.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(row.get(t, {}), info) for t in ts) + " |")
    return "\n".join(lines)


def table2_rows(spec: SweepSpec, trials: Sequence[Trial], results: Mapping[str, Any]) -> str | None:
    """Table 2 (classification): a row per cell, Baseline for the identity estimator."""
    if spec.experiment != "classification":
        return None
    metric = spec.resolved_metric
    info = _info(results, metric)
    cfg = _configs(trials)
    stats = _by_cell(results, metric)
    lines = [
        f"Table 2: {_caption(results, metric)} (paper's value where known)",
        "",
        f"| hard function | estimator | placement | {info['display']} |",
        "|---|---|---|---|",
    ]
    for key, c in cfg.items():
        name = "Baseline" if c.get("estimator") == "identity" else str(c.get("hard"))
        lines.append(
            f"| {name} | {c.get('estimator')} | {c.get('placement')} | {_fmt(stats.get(key, {}), info)} |"
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


def _line_figure(title: str, xlabel: str, ylabel: str, series: Series, xscale: str = "linear") -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.set_xscale(xscale)
    for name, pts in series.items():
        if pts:
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                yerr=[p[2] for p in pts],
                marker="o",
                capsize=3,
                label=name,
            )
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def _series(
    trials: Sequence[Trial],
    results: Mapping[str, Any],
    metric: str,
    x: str,
    line: Callable[[dict[str, Any]], str],
) -> Series:
    s = _scale(_info(results, metric))
    stats = _by_cell(results, metric)
    out: Series = {}
    for key, c in _configs(trials).items():
        m = stats.get(key, {})
        if m.get("mean") is not None and not math.isnan(m["mean"]):
            out.setdefault(line(c), []).append((float(c[x]), m["mean"] * s, (m["std"] or 0) * s))
    return {k: sorted(v) for k, v in out.items()}


def figure3_series(spec: SweepSpec, trials: Sequence[Trial], results: Mapping[str, Any]) -> Series | None:
    """Figure 3's points: per T, (ponder steps, mean, std) of the metric in display units;
    None unless the sweep is a sorting sweep over several ponder steps."""
    cfg = _configs(trials)
    if spec.experiment != "sorting" or len({c.get("ponder_steps") for c in cfg.values()}) < 2:
        return None
    return _series(trials, results, spec.resolved_metric, "ponder_steps", lambda c: f"T={c['seq_len']}")


def figure3(spec: SweepSpec, trials: Sequence[Trial], results: Mapping[str, Any]) -> bytes | None:
    series = figure3_series(spec, trials, results)
    if series is None:
        return None
    info = _info(results, spec.resolved_metric)
    return _line_figure(
        f"Figure 3: pondering ({aggregation_text(info)})", "ponder steps", label(info), series
    )


def figure4_series(spec: SweepSpec, trials: Sequence[Trial], results: Mapping[str, Any]) -> Series | None:
    """Figure 4's points: per variant, (bpp, mean, std); None unless a representation sweep
    over several bpp."""
    cfg = _configs(trials)
    if spec.experiment != "representation" or len({c.get("bpp") for c in cfg.values()}) < 2:
        return None
    return _series(trials, results, spec.resolved_metric, "bpp", lambda c: str(c.get("variant")))


def figure4(spec: SweepSpec, trials: Sequence[Trial], results: Mapping[str, Any]) -> bytes | None:
    series = figure4_series(spec, trials, results)
    if series is None:
        return None
    info = _info(results, spec.resolved_metric)
    dataset = next(iter(_configs(trials).values()), {}).get("dataset", "")
    return _line_figure(
        f"Figure 4: {dataset} ({aggregation_text(info)})", "bits per pixel", label(info), series
    )


def figure6_bars(
    spec: SweepSpec, trials: Sequence[Trial], results: Mapping[str, Any]
) -> list[tuple[str, float, float]] | None:
    """Figure 6's bars: (cell_key, mean, std) in display units; None unless a classification
    sweep over placement, estimator or dab_loss_to_input with a value in some cell."""
    axes = [a for a in ("placement", "estimator", "dab_loss_to_input") if a in spec.grid]
    if spec.experiment != "classification" or not axes:
        return None
    metric = spec.resolved_metric
    s = _scale(_info(results, metric))
    bars = [
        (c["cell_key"], c["metrics"][metric]["mean"] * s, (c["metrics"][metric]["std"] or 0) * s)
        for c in results["cells"]
        if c["metrics"].get(metric, {}).get("mean") is not None
    ]
    return bars or None


def figure6(spec: SweepSpec, trials: Sequence[Trial], results: Mapping[str, Any]) -> bytes | None:
    bars = figure6_bars(spec, trials, results)
    if bars is None:
        return None
    info = _info(results, spec.resolved_metric)
    axes = [a for a in ("placement", "estimator", "dab_loss_to_input") if a in spec.grid]
    return _bar_figure(f"Figure 6: {', '.join(axes)} ({aggregation_text(info)})", label(info), {"": bars})


def _bar_figure(
    title: str, ylabel: str, groups: Mapping[str, Sequence[tuple[str, float, float]]], xlabel: str = ""
) -> bytes:
    """Bars of (category, mean, std) with one-std error bars; several groups side by side per
    category (a legend names them)."""
    plt = _plt()
    categories: list[str] = []
    for bars in groups.values():
        for b in bars:
            if b[0] not in categories:
                categories.append(b[0])
    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / max(len(groups), 1)
    for i, (name, bars) in enumerate(groups.items()):
        ax.bar(
            [categories.index(b[0]) - 0.4 + width * (i + 0.5) for b in bars],
            [b[1] for b in bars],
            width=width,
            yerr=[b[2] for b in bars],
            capsize=4,
            label=name or None,
        )
    ax.set_xticks(range(len(categories)), categories, rotation=20, ha="right")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(axis="y", alpha=0.3)
    if len(groups) > 1:
        ax.legend()
    return _png(fig)


def curve_series(
    spec: SweepSpec,
    trials: Sequence[Trial],
    runs: Mapping[str, Any],
    history: StepHistory,
    info: Mapping[str, Any],
) -> dict[str, list[tuple[float, float]]]:
    """Per cell: (step, mean over the cell's finished seeds) of the sweep metric, display units."""
    s = _scale(info)
    by_cell: dict[str, dict[float, list[float]]] = {}
    for t in trials:
        run = runs.get(t.trial_key)
        if run is None or run.status != "FINISHED":
            continue
        for step, value in history(run.run_id, spec.resolved_metric):
            by_cell.setdefault(t.cell_key, {}).setdefault(step, []).append(value * s)
    return {
        cell: [(x, sum(points[x]) / len(points[x])) for x in sorted(points)]
        for cell, points in by_cell.items()
    }


def curves(
    spec: SweepSpec,
    trials: Sequence[Trial],
    runs: Mapping[str, Any],
    history: StepHistory,
    info: Mapping[str, Any],
) -> bytes | None:
    """The sweep metric against the step: mean over the cell's finished seeds."""
    series = curve_series(spec, trials, runs, history, info)
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for cell, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=cell or "(params only)")
    ax.set(title=f"{spec.name}: learning curves", xlabel="step", ylabel=label(info))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _png(fig)


def report_results(
    spec: SweepSpec, trials: Sequence[Trial], runs: Mapping[str, Any], history: StepHistory
) -> dict[str, Any]:
    """The results the report's tables and figures read: the sweep metric, by its declared agg."""
    return compute_results(spec, trials, runs, metrics=[spec.resolved_metric], history=history)


def build_report(
    sweep_id: str,
    spec: SweepSpec,
    trials: Sequence[Trial],
    runs: Mapping[str, Any],
    history: StepHistory,
) -> tuple[str, dict[str, bytes]]:
    """The sweep's report.

    Args:
        runs: trial_key -> its `service.results.TrialRun`.
        history: (run_id, metric) -> the run's (step, value) pairs, sorted by step.

    Returns:
        (Markdown, {figure file name: PNG bytes}).
    """
    results = report_results(spec, trials, runs, history)
    metric = spec.resolved_metric
    info = _info(results, metric)
    figures: dict[str, bytes] = {}
    for name, fig in (
        ("figure3.png", figure3(spec, trials, results)),
        ("figure4.png", figure4(spec, trials, results)),
        ("figure6.png", figure6(spec, trials, results)),
        ("curves.png", curves(spec, trials, runs, history, info)),
    ):
        if fig is not None:
            figures[name] = fig
    parts = [f"# {spec.name} (sweep {sweep_id})", ""]
    if spec.description:
        parts += [spec.description, ""]
    for table in (table1_rows(spec, trials, results), table2_rows(spec, trials, results)):
        if table:
            parts += [table, ""]
    parts += [f"## Results per cell ({label(info)}, {aggregation_text(info)})", ""]
    parts += [to_markdown(results).strip(), ""]
    parts += [results["significance"] + ".", ""]
    if spec.search is not None:  # the search's own section and a figure per searched field
        from service.search_report import search_figures, search_markdown, search_summary

        every = compute_results(spec, trials, runs, metrics=[metric], history=history, include_stopped=True)
        figures.update(search_figures(spec, every))
        parts += [search_markdown(search_summary(spec, every), every).strip(), ""]
    if figures:
        parts += ["## Figures", ""]
        for n in figures:
            read = "each step's value" if n == "curves.png" else aggregation_text(info)
            parts += [f"![{n}]({n})", "", f"{n}: {label(info)}, {read}, mean over seeds.", ""]
    return "\n".join(parts), figures


__all__ = [
    "build_report",
    "curve_series",
    "curves",
    "figure3",
    "figure3_series",
    "figure4",
    "figure4_series",
    "figure6",
    "figure6_bars",
    "report_results",
    "table1_rows",
    "table2_rows",
]
