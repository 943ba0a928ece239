"""Replicates -> mean ± std rows."""

from __future__ import annotations

import math

import pytest

from workers.aggregate import aggregate, format_value


def test_mean_std_n_min_max_per_cell_in_first_appearance_order() -> None:
    rows = aggregate(
        [
            ("m=b", {"m": "b"}, 0, {"acc": 0.5}),
            ("m=a", {"m": "a"}, 0, {"acc": 0.9}),
            ("m=b", {"m": "b"}, 1, {"acc": 0.7}),
            ("m=b", {"m": "b"}, 2, {"acc": 0.6}),
            ("m=a", {"m": "a"}, 1, {"loss": 1.0}),  # no 'acc': left out of its cell
        ],
        "acc",
        paper={"m=a": 0.95},
    )
    assert [r.cell_key for r in rows] == ["m=b", "m=a"]
    b, a = rows
    assert (b.n, b.mean, b.min, b.max, b.seeds) == (3, pytest.approx(0.6), 0.5, 0.7, (0, 1, 2))
    assert b.std == pytest.approx(0.1)  # sample std (n-1): sqrt((0.01 + 0.01 + 0) / 2)
    assert (a.n, a.mean, a.std, a.paper, b.paper) == (1, 0.9, 0.0, 0.95, None)
    assert a.as_dict()["seeds"] == [0]


def test_empty_cell_and_formatting() -> None:
    (row,) = aggregate([("c", {}, 0, {})], "acc")
    assert row.n == 0 and math.isnan(row.mean)
    assert format_value(row.mean, row.std, percent=True) == "n/a"
    assert format_value(0.99312, 0.0025, percent=True) == "99.31 ± 0.25"
    assert format_value(1.23456, 0.1, percent=False) == "1.2346 ± 0.1000"
