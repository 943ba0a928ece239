"""`service.search_report` on a real search spec and hand-built results (no Ray, no MLflow):
ranking in both directions, stopped configurations out by default, Welch's p as scipy's,
fANOVA's importance, the per-field series, the PNGs and the Markdown."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import pytest
from scipy import stats

from service.search_report import (
    STOPPED_LABEL,
    param_series,
    search_figures,
    search_markdown,
    search_summary,
)
from workers.spec import parse_spec

PNG = b"\x89PNG"
SEARCH: dict[str, Any] = {
    "name": "s",
    "experiment": "sorting",
    "params": {"model": "signum-dense", "seq_len": 3, "steps": 100},
    "search": {"algorithm": "tpe", "num_samples": 6},
    "space": {"lr": {"loguniform": [1e-4, 1e-2]}, "dense_hidden": {"choice": [[8], [16]]}},
    "replicates": 3,
}
INFO = {
    "test_all_or_none": {"mode": "max", "unit": "fraction", "display": "all-or-none accuracy", "agg": "best"},
    "train_loss": {"mode": "min", "unit": "raw", "display": "train_loss", "agg": "final"},
}


def _spec(**over: Any) -> Any:
    return parse_spec({**SEARCH, **over})


def _cell(
    lr: float, hidden: list[int], values: Sequence[float], metric: str, stopped: int = 0
) -> dict[str, Any]:
    vals = list(values)
    n = len(vals)
    return {
        "cell_key": f"lr={lr:g},dense_hidden={hidden}",
        "cell": {"lr": lr, "dense_hidden": hidden},
        "expected": 3,
        "adopted": {},
        "stopped": stopped,
        "metrics": {
            metric: {
                "n": n,
                "mean": statistics.fmean(vals) if n else None,
                "std": statistics.stdev(vals) if n > 1 else None,
                "min": min(vals) if n else None,
                "max": max(vals) if n else None,
                "values": vals,
                "seeds": list(range(n)),
                "p_value": None,
                "paper": None,
            }
        },
    }


def _results(cells: list[dict[str, Any]], metric: str = "test_all_or_none") -> dict[str, Any]:
    return {"metrics": [metric], "metric_info": {metric: INFO[metric]}, "cells": cells}


A = [0.90, 0.92, 0.97]  # best
B = [0.80, 0.85, 0.83]
C = [0.60, 0.70, 0.65]


def _three(stopped_best: float | None = None) -> dict[str, Any]:
    cells = [
        _cell(1e-3, [8], B, "test_all_or_none"),
        _cell(1e-2, [16], C, "test_all_or_none"),
        _cell(3e-3, [16], A, "test_all_or_none"),
    ]
    if stopped_best is not None:  # a stopped configuration whose last value beats every other
        cells.append(
            _cell(2e-4, [8], [stopped_best] * 2 + [stopped_best - 0.01], "test_all_or_none", stopped=3)
        )
    return _results(cells)


def test_ranks_by_mean_highest_first_for_a_max_metric() -> None:
    spec = _spec()
    assert (spec.resolved_metric, spec.resolved_mode) == ("test_all_or_none", "max")
    s = search_summary(spec, _three())
    assert (s["metric"], s["mode"], s["configurations"], s["compared"], s["stopped"]) == (
        "test_all_or_none",
        "max",
        3,
        3,
        0,
    )
    assert [b["rank"] for b in s["best"]] == [1, 2, 3]
    assert [b["values"] for b in s["best"]] == [A, B, C]
    assert s["best"][0]["cell"] == {"lr": 3e-3, "dense_hidden": [16]}
    assert s["best"][0]["mean"] == pytest.approx(statistics.fmean(A))
    assert len(search_summary(spec, _three(), top=2)["best"]) == 2


def test_ranks_lowest_first_for_a_min_metric() -> None:
    spec = _spec(metric="train_loss")
    assert spec.resolved_mode == "min"
    res = _results(
        [
            _cell(1e-3, [8], [0.5, 0.6], "train_loss"),
            _cell(1e-2, [16], [0.1, 0.2], "train_loss"),
            _cell(3e-3, [16], [0.9, 1.0], "train_loss"),
        ],
        "train_loss",
    )
    s = search_summary(spec, res)
    assert s["mode"] == "min"
    assert [b["mean"] for b in s["best"]] == pytest.approx([0.15, 0.55, 0.95])


def test_stopped_configurations_are_out_unless_asked_for() -> None:
    spec = _spec()
    res = _three(stopped_best=0.99)
    s = search_summary(spec, res)
    assert (s["configurations"], s["compared"], s["stopped"]) == (4, 3, 1)
    assert all(b["cell"]["lr"] != 2e-4 for b in s["best"])
    s = search_summary(spec, res, include_stopped=True)
    assert (s["compared"], s["stopped"]) == (4, 1)
    assert s["best"][0]["cell"]["lr"] == 2e-4


def test_configurations_without_a_value_are_not_ranked() -> None:
    res = _three()
    res["cells"].append(_cell(5e-4, [8], [], "test_all_or_none"))
    s = search_summary(_spec(), res)
    assert (s["configurations"], s["compared"]) == (4, 3)


def test_p_vs_best_is_scipys_welch() -> None:
    s = search_summary(_spec(), _three())
    assert s["best"][0]["p_vs_best"] is None
    for b, other in zip(s["best"][1:], (B, C), strict=True):
        expected = stats.ttest_ind(other, A, equal_var=False).pvalue
        assert b["p_vs_best"] == pytest.approx(float(expected), rel=1e-12)
    assert s["runner_up_p"] == pytest.approx(float(stats.ttest_ind(B, A, equal_var=False).pvalue))
    assert s["best"][1]["p_vs_best"] == pytest.approx(0.0190, abs=1e-4)


def test_p_is_none_with_fewer_than_two_values_or_no_variance() -> None:
    res = _results(
        [
            _cell(3e-3, [16], [0.95], "test_all_or_none"),
            _cell(1e-3, [8], B, "test_all_or_none"),
        ]
    )
    s = search_summary(_spec(), res)
    assert s["best"][1]["p_vs_best"] is None and s["runner_up_p"] is None
    flat = _results(
        [_cell(3e-3, [16], [0.9, 0.9], "test_all_or_none"), _cell(1e-3, [8], [0.8, 0.8], "test_all_or_none")]
    )
    assert search_summary(_spec(), flat)["runner_up_p"] is None


def test_importance_goes_to_the_field_that_determines_the_metric() -> None:
    lrs = [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 3e-4]
    cells = []
    for i, lr in enumerate(lrs):
        v = 0.5 + 0.1 * math.log10(lr / 1e-4)  # only lr matters
        cells.append(_cell(lr, [8] if i % 2 else [16], [v - 0.01, v, v + 0.01], "test_all_or_none"))
    s = search_summary(_spec(), _results(cells))
    imp = s["importance"]
    assert imp is not None and set(imp) == {"lr", "dense_hidden"}
    assert imp["lr"] > imp["dense_hidden"]
    assert sum(imp.values()) == pytest.approx(1.0, abs=1e-6)
    assert s["importance_note"] == ""
    assert search_summary(_spec(), _results(cells))["importance"] == imp  # seeded: the same shares


def test_importance_needs_two_configurations() -> None:
    s = search_summary(_spec(), _results([_cell(1e-3, [8], A, "test_all_or_none")]))
    assert s["importance"] is None
    assert "at least 2" in s["importance_note"]


def test_param_series_values_and_choice_indices() -> None:
    series = param_series(_spec(), _three(stopped_best=0.99))
    assert set(series) == {"lr", "dense_hidden"}
    lr = series["lr"]
    assert [p["x"] for p in lr] == [2e-4, 1e-3, 3e-3, 1e-2]  # sorted by value
    assert [p["stopped"] for p in lr] == [True, False, False, False]
    assert [p["best"] for p in lr] == [False, False, True, False]  # the best completed one
    assert lr[2]["mean"] == pytest.approx(100 * statistics.fmean(A))  # percent
    assert lr[2]["std"] == pytest.approx(100 * statistics.stdev(A))
    assert lr[2]["n"] == 3
    hidden = {p["cell_key"]: p["x"] for p in series["dense_hidden"]}
    assert sorted(hidden.values()) == [0, 0, 1, 1]  # [8] -> 0, [16] -> 1
    assert hidden["lr=0.003,dense_hidden=[16]"] == 1
    assert len(param_series(_spec(), _three(stopped_best=0.99), include_stopped=False)["lr"]) == 3


def test_one_png_per_searched_field() -> None:
    spec = _spec(space={**SEARCH["space"], "hard_params.eps": {"uniform": [0.1, 0.5]}})
    res = _three(stopped_best=0.99)
    for c, d in zip(res["cells"], (0.1, 0.2, 0.3, 0.4), strict=True):
        c["cell"]["hard_params.eps"] = d
    figs = search_figures(spec, res)
    assert set(figs) == {"search_lr.png", "search_dense_hidden.png", "search_hard_params_eps.png"}
    assert all(png.startswith(PNG) for png in figs.values())


def test_markdown_table_in_percent() -> None:
    res = _three(stopped_best=0.99)
    s = search_summary(_spec(), res)
    md = search_markdown(s, res)
    assert md.startswith("## Search\n")
    assert "| rank | lr | dense_hidden | all-or-none accuracy (%): mean ± std | n | p vs best |" in md
    mean, std = 100 * statistics.fmean(A), 100 * statistics.stdev(A)
    assert f"| 1 | 0.003 | [16] | {mean:.2f} ± {std:.2f} | 3 |  |" in md
    p2 = s["best"][1]["p_vs_best"]
    assert (
        f"| 2 | 0.001 | [8] | {100 * statistics.fmean(B):.2f} ± {100 * statistics.stdev(B):.2f} | 3 | {p2:.3g} |"
        in md
    )
    assert f"Best vs runner-up: p = {s['runner_up_p']:.3g}." in md
    assert "3 of 4 configurations compared; 1 stopped early (not ranked)." in md
    assert "Importance (fANOVA" in md
    order = [line.split(":")[0][2:] for line in md.splitlines() if line.startswith("- ")]
    imp = s["importance"]
    assert order == sorted(imp, key=lambda k: -imp[k])


def test_markdown_says_why_importance_is_missing() -> None:
    res = _results([_cell(1e-3, [8], [0.5], "test_all_or_none")])
    md = search_markdown(search_summary(_spec(), res), res)
    assert "Importance (fANOVA): n/a: fANOVA needs at least 2 compared configurations" in md
    assert "Best vs runner-up: p n/a" in md
    assert STOPPED_LABEL == "stopped early (last value)"
