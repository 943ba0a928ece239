"""A suite's report of every paper table and figure its members cover (one module over 500 lines:
a section's layout drives its Markdown, JSON and PNG alike, so the three are built together).

It gives Markdown to paste into a paper's appendix, PNG figures and JSON data, each cell saying
how many of its trials have finished and what the others are doing.

Which table or figure a member gives is read from its trials' configs (the family, which config
fields vary from cell to cell, the dataset), never from file or sweep names:

* Table 1: a ``sorting`` member with two models or more; a row per T (``seq_len``) and a column
  per model in the paper's order (ELU-Dense, Signum-RNN, Signum-Dense), as the paper lays it out.
* Figure 3: a ``sorting`` member in which one model has several ``ponder_steps``: a line per T,
  ponder steps on x (only that model's cells).
* Figure 4 (one per dataset): a ``representation`` member with several ``bpp`` for a dataset: a
  line per variant, bpp on a log x axis; ``figure4_<dataset>``, the dataset's name without
  separators (``figure4_fashionmnist``, ``figure4_cifar10``).
* Figure 5: a ``representation`` member on ``imagenet`` at one bpp with several variants: a bar
  per variant.
* Table 2: a ``classification`` member on ``cifar10`` whose cells hold two or more of the
  paper's rows (Baseline for the ``identity`` estimator, else the hard function); rows in the
  paper's order, the functional form beside each.
* Figure 6 left / middle / right: a ``classification`` member on ``cifar10`` in which
  ``placement`` / ``dab_loss_to_input`` / ``estimator`` (with ``ste`` among its values) varies:
  a bar per value, a group per hard function. The paper plots these over training; a bar here
  is the value each run counts with (the per-sweep report has the curves).

A member can give several sections (a grid of models x ponder steps is Table 1 and Figure 3);
when two members give the same one, both are kept, the second with the member's file in its id
and title. Fields that vary besides a section's own axes are written into the row (series)
label, so no two cells share a point. A member's cells that no paper section shows (a user's own
sweep, a dataset the paper's figure does not have) get a generic section: the member's per-cell
results table (`service.results.to_markdown`) with the incomplete cells listed under it.

Every cell reads the member's metric as its family declares it, through `service.results`
(`compute_results`: n, mean, sample std, the paper's value from the spec's ``paper:``
entries), and says how complete it is: ``n`` values (trials with a FINISHED run, adopted runs
included) out of ``expected`` (the cell's seeds), ``missing`` as trial states (JSON keeps the
real states; Markdown groups pending and waiting as "not yet run"), and ``adopted``: how many
values are runs another sweep made (a trial shared between sweeps runs once), which the Markdown
marks ``[1]`` with a note naming that sweep. JSON values stay in stored units (fractions);
Markdown and PNG show fractions in percent. Figures are drawn with `service.report`'s drawers
(matplotlib Agg); a figure without any finished point is listed, without a PNG.
"""

from __future__ import annotations

import math
import operator
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

from service.report import (
    MODEL_NAMES,
    StepHistory,
    _bar_figure,
    _caption,
    _configs,
    _info,
    _line_figure,
    report_results,
)
from service.results import TrialRun, aggregation_text, declarations, label, run_value, to_markdown
from workers.aggregate import format_value
from workers.spec import SweepSpec, Trial
from workers.spec.expand import value_key

#: Table 1's columns, in the paper's order.
TABLE1_MODELS = ("elu-dense", "signum-rnn", "signum-dense")
#: Table 2's rows (and Figure 6's groups), in the paper's order: hard function -> its name there.
HARD_NAMES = {
    "signum": "Signum",
    "sort_rowcol": "Sort",
    "topk": "Topk",
    "kmeans": "K-Means",
    "sort": "Sort-1D",
}
TABLE2_ROWS = ("Baseline", "Signum", "Sort", "Topk", "K-Means")
DATASET_NAMES = {"fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10", "imagenet": "ImageNet"}
ESTIMATOR_NAMES = {"dab": "DAB", "ste": "STE", "identity": "Baseline (identity)"}
#: A section's place in the paper (sections of one rank keep the suite's member order).
RANKS = {
    "table1": 0,
    "figure3": 1,
    "figure4": 2,
    "figure5": 3,
    "table2": 4,
    "figure6_left": 5,
    "figure6_middle": 6,
    "figure6_right": 7,
}
GENERIC_RANK = 8
NO_POINTS = "no finished trials yet"

#: Trial states grouped in the Markdown text; the JSON keeps the states themselves.
_STATE_WORDS = {
    "pending": "not yet run",
    "waiting": "not yet run",
    "finished": "finished without a value",
    "skipped": "skipped without a value",
    "adopted": "adopted, not finished",
}
_WORD_ORDER = ("not yet run", "running", "retrying", "failed", "killed")


@dataclass(frozen=True)
class Member:
    """One member sweep of a suite, with what MLflow and the sweep's status hold for it.

    Attributes:
        file: the spec file as the suite lists it, e.g. ``table1_sorting.yaml``.
        state: the sweep's state (queued, running, waiting, cancelling, finished, failed,
            cancelled).
        trials: ``expand(spec)``.
        runs: trial_key -> its MLflow run, runs adopted from other sweeps included; only a
            FINISHED run counts as a value.
        trial_states: trial_key -> the trial's state in this sweep (pending, waiting, running,
            retrying, finished, skipped, adopted, failed, killed); a missing key is pending.
        adopted: trial_key -> the id of the sweep whose run this sweep adopted.
    """

    file: str
    sweep_id: str
    state: str
    spec: SweepSpec
    trials: list[Trial]
    runs: Mapping[str, TrialRun]
    trial_states: Mapping[str, str]
    adopted: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SuiteReport:
    """Markdown, figures (file name -> PNG bytes) and the JSON-able data of a suite's report."""

    markdown: str
    figures: dict[str, bytes]
    data: dict[str, Any]


# --------------------------------------------------------------------------- member data


@dataclass
class _Data:
    """A member's results for its own metric, and which of its trials have a value."""

    member: Member
    results: dict[str, Any]
    metric: str
    info: dict[str, Any]
    configs: dict[str, dict[str, Any]]  # cell_key -> its first trial's config
    by_cell: dict[str, list[Trial]]
    valued: set[str]  # trial keys with a value (a FINISHED run that reported the metric)
    stats: dict[str, dict[str, Any]]  # cell_key -> its n, mean, std, paper (`compute_results`)


def _memo(history: StepHistory) -> StepHistory:
    """`history` read once per (run, metric): a run adopted by several members is one run."""
    cache: dict[tuple[str, str], list[tuple[float, float]]] = {}

    def read(run_id: str, metric: str) -> list[tuple[float, float]]:
        if (run_id, metric) not in cache:
            cache[(run_id, metric)] = history(run_id, metric)
        return cache[(run_id, metric)]

    return read


def _member_data(m: Member, history: StepHistory) -> _Data:
    results = report_results(m.spec, m.trials, m.runs, history)
    metric = m.spec.resolved_metric
    decl = declarations(m.spec, [metric])[metric]
    by_cell: dict[str, list[Trial]] = {}
    for t in m.trials:
        by_cell.setdefault(t.cell_key, []).append(t)
    valued = {t.trial_key for t in m.trials if run_value(m.runs.get(t.trial_key), decl, history) is not None}
    stats = {c["cell_key"]: c["metrics"][metric] for c in results["cells"]}
    return _Data(m, results, metric, _info(results, metric), _configs(m.trials), by_cell, valued, stats)


def _is_adopted(m: Member, key: str) -> bool:
    return key in m.adopted or m.trial_states.get(key) == "adopted"


def _cell(d: _Data, cell_key: str, column: Any) -> dict[str, Any]:
    """A table cell or figure point as the JSON holds it (stored units)."""
    m, trials, stats = d.member, d.by_cell[cell_key], d.stats[cell_key]
    missing = Counter(
        m.trial_states.get(t.trial_key, "pending") for t in trials if t.trial_key not in d.valued
    )
    adopted = Counter(
        m.adopted.get(t.trial_key, "")
        for t in trials
        if t.trial_key in d.valued and _is_adopted(m, t.trial_key)
    )
    return {
        "column": column,
        "cell_key": cell_key,
        "n": stats["n"],
        "expected": len(trials),
        "complete": stats["n"] == len(trials),
        "mean": stats["mean"],
        "std": stats["std"],
        "paper": stats["paper"],
        "missing": dict(missing),
        "adopted": sum(adopted.values()),
        "adopted_from": dict(adopted),  # sweep id ("" where the sweep did not say) -> values
    }


# --------------------------------------------------------------------------- layouts


@dataclass
class _Plan:
    """A paper section before its numbers: which cell sits at which row and column."""

    base_id: str
    kind: Literal["table", "figure"]
    title: str
    data: _Data
    row_title: str
    rows: list[str]
    columns: list[Any]
    points: dict[tuple[str, str], str]  # (row label, value_key(column)) -> cell_key
    column_text: Callable[[Any], str]
    details: dict[str, str] = field(default_factory=dict)  # row label -> e.g. its functional form
    detail_title: str = ""
    chart: Literal["line", "bar"] | None = None
    xlabel: str = ""
    xscale: str = "linear"


def _unique(values: Iterable[Any]) -> list[Any]:
    seen: dict[str, Any] = {}
    for v in values:
        seen.setdefault(value_key(v), v)
    return list(seen.values())


def _varying(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The config fields (seed aside) whose values differ between `configs`."""
    keys = sorted(set().union(*configs) - {"seed"}) if configs else []
    return [k for k in keys if len({value_key(c.get(k)) for c in configs}) > 1]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if _is_number(v):
        return f"{v:g}"
    return v if isinstance(v, str) else value_key(v)


Rank = Callable[[Mapping[str, Any]], tuple[Any, ...]]


def _plan(
    d: _Data,
    base_id: str,
    kind: Literal["table", "figure"],
    title: str,
    cfgs: Mapping[str, Mapping[str, Any]],
    row_of: Callable[[Mapping[str, Any]], str],
    col_of: Callable[[Mapping[str, Any]], Any],
    row_title: str,
    column_text: Callable[[Any], str],
    row_rank: Rank | None = None,
    col_rank: Rank | None = None,
    **kw: Any,
) -> _Plan:
    """Lay `cfgs` (cell_key -> config) out in rows and columns. Rows keep the cells' order
    unless `row_rank` orders them; columns are sorted when numeric, else in the cells' order,
    unless `col_rank` orders them. Fields that tell apart two cells at one point are added to
    the row labels of those cells."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for c in cfgs.values():
        groups.setdefault((row_of(c), value_key(col_of(c))), []).append(c)
    extras = sorted({f for cs in groups.values() if len(cs) > 1 for f in _varying(cs)})

    def row(c: Mapping[str, Any]) -> str:
        if len(groups[(row_of(c), value_key(col_of(c)))]) < 2:
            return row_of(c)  # alone at its point: its plain label
        more = ", ".join(f"{k}={_fmt_value(c.get(k))}" for k in extras)
        return f"{row_of(c)} ({more})" if more else row_of(c)

    rows: dict[str, tuple[Any, ...]] = {}
    cols: dict[str, tuple[tuple[Any, ...], Any]] = {}
    points: dict[tuple[str, str], str] = {}
    for i, (key, c) in enumerate(cfgs.items()):
        r, v = row(c), col_of(c)
        if (r, value_key(v)) in points:  # values that print alike ("1" and 1): the cell key differs
            r = f"{r} [{key}]"
        rows.setdefault(r, ((row_rank(c) if row_rank else ()), i))
        natural = (0, float(v)) if _is_number(v) else (1, i)
        cols.setdefault(value_key(v), ((col_rank(c) if col_rank else natural), v))
        points[(r, value_key(v))] = key
    return _Plan(
        base_id,
        kind,
        title,
        d,
        row_title,
        sorted(rows, key=lambda r: rows[r]),
        [v for _, v in sorted(cols.values(), key=lambda x: x[0])],
        points,
        column_text,
        **kw,
    )


def _model_name(c: Mapping[str, Any]) -> str:
    name = MODEL_NAMES.get(c["model"], c["model"])
    return f"{name} (ponder {c['ponder_steps']})" if c.get("ponder_steps") else name


def _paper_rank(order: Sequence[str], name: str) -> tuple[int, ...]:
    return (order.index(name) if name in order else len(order),)


def _sorting(d: _Data) -> list[_Plan]:
    cfgs = d.configs
    models = _unique(c["model"] for c in cfgs.values())
    out = []
    if len(models) >= 2:
        out.append(
            _plan(
                d,
                "table1",
                "table",
                "Table 1: sequence sorting, per length T and model",
                cfgs,
                row_of=lambda c: f"T={c['seq_len']}",
                col_of=_model_name,
                row_title="length (T)",
                column_text=str,
                row_rank=lambda c: (c["seq_len"],),
                col_rank=lambda c: (*_paper_rank(TABLE1_MODELS, c["model"]), c.get("ponder_steps", 0)),
            )
        )
    pondering = [
        m
        for m in models
        if len(_unique(c.get("ponder_steps", 0) for c in cfgs.values() if c["model"] == m)) > 1
    ]
    if pondering:
        several = len(pondering) > 1
        out.append(
            _plan(
                d,
                "figure3",
                "figure",
                "Figure 3: effect of pondering",
                {k: c for k, c in cfgs.items() if c["model"] in pondering},
                row_of=lambda c: (
                    (f"{MODEL_NAMES.get(c['model'], c['model'])}, " if several else "") + f"T={c['seq_len']}"
                ),
                col_of=lambda c: c.get("ponder_steps", 0),
                row_title="series",
                column_text=lambda v: f"ponder {v}",
                row_rank=lambda c: (c["model"], c["seq_len"]),
                chart="line",
                xlabel="ponder steps",
            )
        )
    return out


def _representation(d: _Data) -> list[_Plan]:
    out = []
    for ds in _unique(c["dataset"] for c in d.configs.values()):
        cfgs = {k: c for k, c in d.configs.items() if c["dataset"] == ds}
        name = DATASET_NAMES.get(ds, ds)
        if len(_unique(c["bpp"] for c in cfgs.values())) > 1:
            out.append(
                _plan(
                    d,
                    f"figure4_{re.sub(r'[^a-z0-9]', '', ds.lower())}",
                    "figure",
                    f"Figure 4 ({name}): representations over bits per pixel",
                    cfgs,
                    row_of=lambda c: str(c["variant"]),
                    col_of=lambda c: c["bpp"],
                    row_title="variant",
                    column_text=lambda v: f"bpp {v:g}",
                    chart="line",
                    xlabel="bits per pixel",
                    xscale="log",
                )
            )
        elif ds == "imagenet" and len(_unique(c["variant"] for c in cfgs.values())) > 1:
            out.append(
                _plan(
                    d,
                    "figure5",
                    "figure",
                    "Figure 5: ImageNet representations at one bit budget",
                    cfgs,
                    row_of=lambda c: f"bpp {c['bpp']:g}",
                    col_of=lambda c: c["variant"],
                    row_title="series",
                    column_text=str,
                    chart="bar",
                    xlabel="variant",
                )
            )
    return out


def _hard_name(c: Mapping[str, Any]) -> str:
    return HARD_NAMES.get(c["hard"], str(c["hard"]))


def _table2_row(c: Mapping[str, Any]) -> str:
    """Which of Table 2's rows a cell is, whatever its estimator: Baseline, or its hard function."""
    return "Baseline" if c.get("estimator") == "identity" else _hard_name(c)


def _row_name(c: Mapping[str, Any]) -> str:
    """Table 2's name of a classification cell: Baseline for the identity, else its hard
    function (with its estimator unless DAB)."""
    if c.get("estimator") == "identity":
        return "Baseline"
    name = _hard_name(c)
    return name if c.get("estimator") == "dab" else f"{name} ({c.get('estimator')})"


def _form(c: Mapping[str, Any]) -> str:
    if c.get("estimator") == "identity":
        return "identity"
    params = ", ".join(f"{k}={_fmt_value(v)}" for k, v in sorted((c.get("hard_params") or {}).items()))
    return f"{c['hard']}({params})" if params else str(c["hard"])


#: Figure 6's panels: section id, the axis on x, title, a column's text, x label.
_FIGURE6: tuple[tuple[str, str, str, Callable[[Any], str], str], ...] = (
    ("figure6_left", "placement", "Figure 6 (left): layer placement", lambda v: f"block {v}",
     "ResNet18 block the hard function follows"),
    ("figure6_middle", "dab_loss_to_input", "Figure 6 (middle): conditioning of the preceding layer",
     lambda v: f"DAB loss to the input: {'on' if v else 'off'}", "DAB loss reaches the hard function's input"),
    ("figure6_right", "estimator", "Figure 6 (right): DAB against the straight-through estimator",
     lambda v: ESTIMATOR_NAMES.get(v, str(v)), "estimator"),
)  # fmt: skip


def _classification(d: _Data) -> list[_Plan]:
    cfgs = {k: c for k, c in d.configs.items() if c.get("dataset") == "cifar10"}
    if not cfgs:
        return []
    axes = _varying(list(cfgs.values()))
    out = []
    for sid, axis, title, text, xlabel in _FIGURE6:
        if axis not in axes or (axis == "estimator" and "ste" not in {c["estimator"] for c in cfgs.values()}):
            continue
        out.append(
            _plan(
                d,
                sid,
                "figure",
                title,
                cfgs,
                # a group per hard function; against the estimator, the hard function alone
                row_of=_row_name if axis != "estimator" else _hard_name,
                col_of=operator.itemgetter(axis),
                row_title="hard function",
                column_text=text,
                chart="bar",
                xlabel=xlabel,
            )
        )
    if len(_unique(_table2_row(c) for c in cfgs.values())) > 1:
        display = label(d.info)
        plan = _plan(
            d,
            "table2",
            "table",
            "Table 2: CIFAR10 classification with a hard function after a residual block",
            cfgs,
            row_of=_row_name,
            col_of=lambda c: d.info["display"],
            row_title="row",
            column_text=lambda v: display,
            row_rank=lambda c: _paper_rank(TABLE2_ROWS, _row_name(c)),
        )
        firsts = {r: k for (r, _), k in plan.points.items()}
        plan.details = {r: _form(cfgs[k]) for r, k in firsts.items()}
        plan.detail_title = "functional form"
        out.append(plan)
    return out


_FAMILIES: dict[str, Callable[[_Data], list[_Plan]]] = {
    "sorting": _sorting,
    "representation": _representation,
    "classification": _classification,
}


# --------------------------------------------------------------------------- rendering


def _missing_text(missing: Mapping[str, int]) -> str:
    words: Counter[str] = Counter()
    for state, n in missing.items():
        words[_STATE_WORDS.get(state, state)] += n
    order = sorted(words, key=lambda w: (_WORD_ORDER.index(w) if w in _WORD_ORDER else len(_WORD_ORDER), w))
    return ", ".join(f"{words[w]} {w}" for w in order)


def _paper_text(paper: Mapping[str, Any] | None, scale: float) -> str:
    if not paper:
        return ""
    std = "" if paper.get("std") is None else f" ± {paper['std'] * scale:g}"
    return f"; paper {paper['value'] * scale:g}{std}"


def cell_text(cell: Mapping[str, Any], unit: str, marker: str = "") -> str:
    """A cell as the Markdown shows it: ``88.10 ± 1.20 (3/5; 1 running, 1 failed); paper 92.4``,
    ``88.10 (1/5; ...)`` for a single value (no spread to show), ``— (0/5; 5 not yet run)``
    without any; fractions in percent."""
    pct = unit == "fraction"
    mean = math.nan if cell["mean"] is None else cell["mean"]
    if cell["n"] > 1:
        text = format_value(mean, cell["std"] or 0.0, pct)
    elif cell["n"] == 1:  # one value has no spread to show: no "± 0"
        text = format_value(mean, 0.0, pct).split(" ± ")[0]
    else:
        text = "—"
    count = f"{cell['n']}/{cell['expected']}"
    if cell["missing"]:
        count += "; " + _missing_text(cell["missing"])
    return f"{text} ({count}){marker}{_paper_text(cell['paper'], 100.0 if pct else 1.0)}"


def figure_series(section: Mapping[str, Any]) -> dict[str, list[tuple[Any, float, float]]]:
    """A figure section's drawn points: series label -> (x, mean, std) in display units, for
    the points with at least one finished value (what its PNG shows)."""
    scale = 100.0 if section["unit"] == "fraction" else 1.0
    out: dict[str, list[tuple[Any, float, float]]] = {}
    for row in section["rows"]:
        pts = [
            (c["column"], c["mean"] * scale, (c["std"] or 0.0) * scale)
            for c in row["cells"]
            if c["n"] and c["mean"] is not None
        ]
        if pts:
            out[row["label"]] = pts
    return out


def _draw(plan: _Plan, section: Mapping[str, Any]) -> bytes | None:
    series = figure_series(section)
    if not series:
        return None
    title = f"{section['title']}\n{aggregation_text(plan.data.info)}"
    ylabel = label(plan.data.info)
    if plan.chart == "line":
        lines = {k: [(float(x), m, s) for x, m, s in pts] for k, pts in series.items()}
        return _line_figure(title, plan.xlabel, ylabel, lines, xscale=plan.xscale)
    bars = {k: [(plan.column_text(x), m, s) for x, m, s in pts] for k, pts in series.items()}
    return _bar_figure(title, ylabel, bars if len(bars) > 1 else {"": next(iter(bars.values()))}, plan.xlabel)


def _esc(text: str) -> str:
    return text.replace("|", "\\|")


def _sources(cells: Iterable[Mapping[str, Any]]) -> str:
    found = _unique(c["paper"].get("source") or "the spec's paper entries" for c in cells if c["paper"])
    return f" Paper values: {'; '.join(found)}." if found else ""


def _origin(d: _Data) -> str:
    m = d.member
    return f"From `{m.file}` (sweep `{m.sweep_id}`, {m.state})."


class _Notes:
    """The adopted-runs notes of one section, numbered ``[1]``, ``[2]``, ..."""

    def __init__(self, files: Mapping[str, str]) -> None:
        self.files = files
        self.lines: list[str] = []

    def marker(self, where: str, cell: Mapping[str, Any]) -> str:
        if not cell["adopted"]:
            return ""
        n = len(self.lines) + 1
        sweeps = ", ".join(
            f"sweep `{s}`" + (f" ({self.files[s]})" if s in self.files else "") if s else "another sweep"
            for s in cell["adopted_from"]
        )
        self.lines.append(
            f"[{n}] {where}: {cell['adopted']} of its {cell['n']} values are runs adopted from {sweeps}; "
            "a trial shared between sweeps runs once."
        )
        return f" [{n}]"


def _section(d: _Data, sid: str, kind: str, title: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A section's JSON: what it is, whose numbers, and its rows (caption and figure set later)."""
    return {
        "id": sid,
        "kind": kind,
        "title": title,
        "member": d.member.file,
        "sweep_id": d.member.sweep_id,
        "metric": d.metric,
        "display": label(d.info),
        "agg": d.info["agg"],
        "unit": d.info["unit"],
        "figure": None,
        "note": None,
        "rows": rows,
    }


def _plan_section(
    plan: _Plan, sid: str, title: str, files: Mapping[str, str]
) -> tuple[dict[str, Any], list[str]]:
    d = plan.data
    rows_json: list[dict[str, Any]] = []
    for r in plan.rows:
        cells = [
            _cell(d, plan.points[(r, value_key(v))], v)
            for v in plan.columns
            if (r, value_key(v)) in plan.points
        ]
        rows_json.append({"label": r, "detail": plan.details.get(r), "cells": cells})
    section = _section(d, sid, plan.kind, title, rows_json)
    all_cells = [c for row in rows_json for c in row["cells"]]
    caption = (
        f"{_caption(d.results, d.metric)}; each cell: values of finished trials out of its seeds. "
        f"{_origin(d)}{_sources(all_cells)}"
    )
    md = [f"## {title}", ""]
    if plan.kind == "figure":
        caption += " Error bars: one std."
        if not figure_series(section):
            section["note"] = NO_POINTS
            md += [f"*{NO_POINTS[0].upper()}{NO_POINTS[1:]}: no figure.*", ""]
        else:
            section["figure"] = f"{sid}.png"
            md += [f"![{title.split(':')[0]}]({sid}.png)", ""]
    section["caption"] = caption
    md += [caption, ""]
    notes = _Notes(files)
    head = [plan.row_title] + ([plan.detail_title] if plan.details else [])
    head += [plan.column_text(v) for v in plan.columns]
    md += ["| " + " | ".join(_esc(h) for h in head) + " |", "|" + "---|" * len(head)]
    for row in rows_json:
        by_col = {value_key(c["column"]): c for c in row["cells"]}
        line = [row["label"]] + ([row["detail"] or ""] if plan.details else [])
        for v in plan.columns:
            c = by_col.get(value_key(v))
            where = f"{row['label']}, {plan.column_text(v)}"
            line.append("" if c is None else cell_text(c, d.info["unit"], notes.marker(where, c)))
        md.append("| " + " | ".join(_esc(x) for x in line) + " |")
    md.append("")
    if notes.lines:
        md += [*notes.lines, ""]
    return section, md


def _generic_section(d: _Data, sid: str, files: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    m = d.member
    title = f"{m.spec.name}: results per cell ({m.file})"
    rows: list[dict[str, Any]] = [
        {"label": key or "(params only)", "detail": None, "cells": [_cell(d, key, d.info["display"])]}
        for key in d.by_cell
    ]
    caption = (
        f"{_caption(d.results, d.metric)}; n: values of finished trials out of the cell's seeds. "
        f"{_origin(d)}{_sources([r['cells'][0] for r in rows])}"
    )
    section = {**_section(d, sid, "table", title, rows), "caption": caption}
    md = [f"## {title}", "", caption, "", to_markdown(d.results).strip(), ""]
    notes = _Notes(files)
    incomplete = []
    for r in rows:
        c = r["cells"][0]
        marker = notes.marker(r["label"], c)
        if not c["complete"] or marker:
            incomplete.append(f"- {r['label']}: {cell_text(c, d.info['unit'], marker)}")
    if incomplete:
        md += ["Incomplete or adopted cells:", "", *incomplete, ""]
    if notes.lines:
        md += [*notes.lines, ""]
    return section, md


def _member_row(d: _Data) -> dict[str, Any]:
    m = d.member
    keys = [t.trial_key for t in m.trials]
    return {
        "file": m.file,
        "sweep_id": m.sweep_id,
        "state": m.state,
        "trials": len(keys),
        "finished": sum(1 for k in keys if (r := m.runs.get(k)) is not None and r.status == "FINISHED"),
        "adopted": sum(1 for k in keys if _is_adopted(m, k)),
        "failed": sum(1 for k in keys if m.trial_states.get(k) == "failed"),
    }


def _kind_of(section_id: str) -> str:
    """The RANKS key of a section id (``figure4_cifar10`` -> ``figure4``)."""
    return "figure4" if section_id.startswith("figure4_") else section_id


def _slug(file: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", PurePosixPath(file).stem.lower()).strip("_") or "member"


def build_suite_report(
    suite_id: str, name: str, description: str, members: Sequence[Member], history: StepHistory
) -> SuiteReport:
    """The suite's report: a section per paper table or figure its members cover, in the
    paper's order, a generic section per member cell set no paper section shows, and the
    members table.

    Args:
        history: (run_id, metric) -> the run's (step, value) pairs, sorted by step (each
            (run, metric) is read once).

    Returns:
        Markdown, {figure file name: PNG bytes}, and the JSON-able data.
    """
    history = _memo(history)
    datas = [_member_data(m, history) for m in members]
    files = {m.sweep_id: m.file for m in members}
    ordered: list[tuple[int, int, _Plan | _Data]] = []
    for i, d in enumerate(datas):
        plans = _FAMILIES.get(d.member.spec.experiment, lambda _: [])(d)
        ordered += [(RANKS[_kind_of(p.base_id)], i, p) for p in plans]
        shown = {k for p in plans for k in p.points.values()}
        if set(d.by_cell) - shown:
            ordered.append((GENERIC_RANK, i, d))
    ordered.sort(key=lambda x: (x[0], x[1]))

    sections: list[dict[str, Any]] = []
    figures: dict[str, bytes] = {}
    body: list[str] = []
    used: set[str] = set()
    for _, _, item in ordered:
        if isinstance(item, _Data):
            sid = f"results_{_slug(item.member.file)}"
            sid = sid if sid not in used else f"{sid}_{len(used)}"
            section, md = _generic_section(item, sid, files)
        else:
            sid, title = item.base_id, item.title
            if sid in used:  # a second member giving the same table: both kept, by file
                sid, title = f"{sid}_{_slug(item.data.member.file)}", f"{title} ({item.data.member.file})"
            section, md = _plan_section(item, sid, title, files)
            if section["figure"]:
                png = _draw(item, section)
                if png is not None:
                    figures[section["figure"]] = png
        used.add(sid)
        sections.append(section)
        body += md

    rows = [_member_row(d) for d in datas]
    total = sum(r["trials"] for r in rows)
    distinct = len({t.trial_key for m in members for t in m.trials})
    summary = (
        f"{len(members)} members; {total} trials expected ({distinct} distinct), "
        f"{sum(r['finished'] for r in rows)} finished, {sum(r['adopted'] for r in rows)} adopted, "
        f"{sum(r['failed'] for r in rows)} failed."
    )
    head = [f"# {name} (suite {suite_id})", ""]
    if description:
        head += [description, ""]
    head += [summary, ""]
    table = [
        "## Members",
        "",
        "| file | sweep id | state | trials | finished | adopted | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    table += [
        f"| {_esc(r['file'])} | {r['sweep_id']} | {r['state']} | {r['trials']} | {r['finished']} | "
        f"{r['adopted']} | {r['failed']} |"
        for r in rows
    ]
    markdown = "\n".join([*head, *body, *table, ""])
    data = {"suite_id": suite_id, "name": name, "summary": summary, "members": rows, "sections": sections}
    return SuiteReport(markdown, figures, data)


__all__ = [
    "HARD_NAMES",
    "NO_POINTS",
    "RANKS",
    "TABLE1_MODELS",
    "TABLE2_ROWS",
    "Member",
    "SuiteReport",
    "build_suite_report",
    "cell_text",
    "figure_series",
]
