"""`service.results` on tiny specs and hand-made runs (no Ray, no MLflow): Welch's p, final and
best values by the metrics' declarations, the spec's mode over them, CSV and Markdown."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterator
from typing import Any

import pytest
from scipy import stats

from service.results import compute_results, to_csv, to_markdown
from tests import toy_family
from tests.service.fake_runs import FakeRuns, by_cell, registered, spec_and_trials

SORTING = {
    "name": "tiny",
    "experiment": "sorting",
    "params": {"seq_len": 3, "steps": 30, "eval_every": 10, "dense_hidden": [8], "approximator_hidden": [8]},
    "grid": {"model": ["signum-dense", "elu-dense"]},
    "replicates": 3,
    "paper": [{"match": {"model": "signum-dense"}, "value": 0.993, "std": 0.0025, "source": "Table 1, T=5"}],
}
SIGNUM, ELU = "model=signum-dense", "model=elu-dense"


def _sorting(**over: Any) -> tuple[Any, list[Any], FakeRuns, dict[str, list[Any]]]:
    spec, trials = spec_and_trials({**SORTING, **over})
    return spec, trials, FakeRuns(), by_cell(trials)


def _welch_by_hand(a: list[float], b: list[float]) -> float:
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    t = (statistics.fmean(a) - statistics.fmean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    return float(2 * stats.t.sf(abs(t), df))


def test_welch_p_against_the_reference_cell() -> None:
    spec, trials, fake, cells = _sorting()
    a, b = [0.90, 0.92, 0.97], [0.80, 0.85, 0.83]
    for t, v in zip(cells[SIGNUM], a, strict=True):
        fake.add(t, test_all_or_none=[v])
    for t, v in zip(cells[ELU], b, strict=True):
        fake.add(t, test_all_or_none=[v])
    res = compute_results(spec, trials, fake.runs, metrics=["test_all_or_none"], history=fake.history)
    assert res["reference_cell"] == SIGNUM
    signum, elu = (c["metrics"]["test_all_or_none"] for c in res["cells"])
    assert signum["p_value"] is None  # the reference itself
    assert elu["p_value"] == pytest.approx(_welch_by_hand(b, a), rel=1e-9)
    assert elu["p_value"] == pytest.approx(0.0190, abs=1e-4)  # t = 4.07, df = 3.57
    assert (elu["n"], elu["mean"], elu["min"], elu["max"]) == (
        3,
        pytest.approx(statistics.fmean(b)),
        0.8,
        0.85,
    )
    assert elu["std"] == pytest.approx(statistics.stdev(b))
    assert elu["values"] == b and elu["seeds"] == [0, 1, 2]

    other = compute_results(
        spec, trials, fake.runs, metrics=["test_all_or_none"], reference=ELU, history=fake.history
    )
    assert other["reference_cell"] == ELU
    assert other["cells"][0]["metrics"]["test_all_or_none"]["p_value"] == pytest.approx(elu["p_value"])


def test_p_is_null_with_fewer_than_two_values_or_no_variance() -> None:
    spec, trials, fake, cells = _sorting()
    fake.add(cells[SIGNUM][0], test_all_or_none=[0.9])  # one value: n=1
    fake.add(cells[SIGNUM][1], status="FAILED", test_all_or_none=[0.95])  # not counted
    for t in cells[ELU]:
        fake.add(t, test_all_or_none=[0.8])
    res = compute_results(spec, trials, fake.runs, metrics=["test_all_or_none"], history=fake.history)
    signum, elu = (c["metrics"]["test_all_or_none"] for c in res["cells"])
    assert (signum["n"], signum["std"], res["cells"][0]["expected"]) == (1, 0.0, 3)
    assert elu["p_value"] is None

    for t in cells[SIGNUM]:
        fake.add(t, test_all_or_none=[0.9])
    res = compute_results(spec, trials, fake.runs, metrics=["test_all_or_none"], history=fake.history)
    assert res["cells"][1]["metrics"]["test_all_or_none"]["p_value"] is None  # 0.9s against 0.8s

    empty = compute_results(spec, trials, {}, metrics=["test_all_or_none"], history=fake.history)
    m = empty["cells"][0]["metrics"]["test_all_or_none"]
    assert (m["n"], m["mean"], m["std"], m["min"], m["max"], m["p_value"]) == (
        0,
        None,
        None,
        None,
        None,
        None,
    )


def _runs_falling_at_the_end(fake: FakeRuns, cells: dict[str, list[Any]]) -> None:
    """Each run's accuracy peaks before its last evaluation; its train_loss bottoms out before."""
    for cell, base in ((SIGNUM, 0.0), (ELU, 0.1)):
        for t in cells[cell]:
            fake.add(
                t,
                test_all_or_none=[0.5 + base, 0.9 + base - 0.01 * t.seed, 0.7 + base],
                train_loss=[1.0, 0.2 + 0.01 * t.seed, 0.4],
            )


def test_final_and_best_by_mode_and_the_declared_agg() -> None:
    spec, trials, fake, cells = _sorting()
    _runs_falling_at_the_end(fake, cells)
    metrics = ["test_all_or_none", "train_loss"]

    def means(res: dict[str, Any]) -> dict[str, list[float]]:
        return {m: [c["metrics"][m]["mean"] for c in res["cells"]] for m in metrics}

    final = compute_results(spec, trials, fake.runs, metrics=metrics, agg="final", history=fake.history)
    assert means(final) == {
        "test_all_or_none": [pytest.approx(0.7), pytest.approx(0.8)],
        "train_loss": [pytest.approx(0.4), pytest.approx(0.4)],
    }
    best = compute_results(spec, trials, fake.runs, metrics=metrics, agg="best", history=fake.history)
    assert means(best) == {  # max for the max metric, min for the min one
        "test_all_or_none": [pytest.approx(0.89), pytest.approx(0.99)],
        "train_loss": [pytest.approx(0.21), pytest.approx(0.21)],
    }
    assert best["cells"][0]["metrics"]["test_all_or_none"]["values"] == pytest.approx([0.9, 0.89, 0.88])
    assert best["cells"][0]["metrics"]["train_loss"]["values"] == pytest.approx([0.2, 0.21, 0.22])
    assert {m: i["agg"] for m, i in best["metric_info"].items()} == {
        "test_all_or_none": "best",
        "train_loss": "best",
    }

    # No agg: each metric's declaration (test_all_or_none: best, by the paper; train_loss: final).
    declared = compute_results(spec, trials, fake.runs, metrics=metrics, history=fake.history)
    assert declared["agg"] is None and best["agg"] == "best"
    assert means(declared) == {
        "test_all_or_none": means(best)["test_all_or_none"],
        "train_loss": means(final)["train_loss"],
    }
    assert declared["metric_info"] == {
        "test_all_or_none": {
            "mode": "max",
            "unit": "fraction",
            "display": "all-or-none accuracy",
            "agg": "best",
        },
        "train_loss": {"mode": "min", "unit": "raw", "display": "train_loss", "agg": "final"},
    }
    with pytest.raises(ValueError, match="history"):
        compute_results(spec, trials, fake.runs, metrics=metrics)


def test_plain_value_histories_are_read_too() -> None:
    spec, trials, fake, cells = _sorting()
    _runs_falling_at_the_end(fake, cells)

    def values_only(run_id: str, metric: str) -> list[float]:  # the results route's form
        return [v for _, v in fake.history(run_id, metric)]

    a = compute_results(spec, trials, fake.runs, metrics=["test_all_or_none"], history=values_only)
    b = compute_results(spec, trials, fake.runs, metrics=["test_all_or_none"], history=fake.history)
    assert a == b and a["cells"][0]["metrics"]["test_all_or_none"]["max"] == pytest.approx(0.9)


def test_the_spec_mode_overrides_the_declaration_for_its_metric() -> None:
    spec, trials, fake, cells = _sorting(metric="test_all_or_none", mode="min")
    _runs_falling_at_the_end(fake, cells)
    res = compute_results(
        spec, trials, fake.runs, metrics=["test_all_or_none", "train_loss"], history=fake.history
    )
    assert res["metric_info"]["test_all_or_none"]["mode"] == "min"
    assert res["cells"][0]["metrics"]["test_all_or_none"]["values"] == pytest.approx([0.5, 0.5, 0.5])
    # Only the spec's own metric: train_loss keeps its declared direction.
    spec2, trials2, _, _ = _sorting(metric="train_loss", mode="max")
    res2 = compute_results(
        spec2,
        trials2,
        fake.runs,
        metrics=["test_all_or_none", "train_loss"],
        agg="best",
        history=fake.history,
    )
    assert res2["metric_info"]["train_loss"]["mode"] == "max"
    assert res2["metric_info"]["test_all_or_none"]["mode"] == "max"
    assert res2["cells"][0]["metrics"]["train_loss"]["values"] == pytest.approx([1.0, 1.0, 1.0])
    assert res2["cells"][0]["metrics"]["test_all_or_none"]["values"] == pytest.approx([0.9, 0.89, 0.88])


def test_paper_values_csv_and_markdown_in_declared_units() -> None:
    spec, trials, fake, cells = _sorting()
    for t, v in zip(cells[SIGNUM], [0.99, 0.995, 0.985], strict=True):
        fake.add(t, test_all_or_none=[0.5, v], train_loss=[2.0, 1.5])
    for t, v in zip(cells[ELU], [0.9, 0.92, 0.94], strict=True):
        fake.add(t, test_all_or_none=[0.5, v], train_loss=[2.0, 1.25])
    res = compute_results(
        spec, trials, fake.runs, metrics=["test_all_or_none", "train_loss"], history=fake.history
    )
    signum, elu = res["cells"]
    assert signum["metrics"]["test_all_or_none"]["paper"] == {
        "value": 0.993,
        "std": 0.0025,
        "source": "Table 1, T=5",
    }
    assert elu["metrics"]["test_all_or_none"]["paper"] is None
    assert signum["metrics"]["train_loss"]["paper"] is None  # the paper value is the spec metric's

    rows = list(csv.DictReader(io.StringIO(to_csv(res))))
    assert [(r["cell"], r["metric"]) for r in rows] == [
        (SIGNUM, "test_all_or_none"),
        (SIGNUM, "train_loss"),
        (ELU, "test_all_or_none"),
        (ELU, "train_loss"),
    ]
    acc, loss = rows[0], rows[1]
    assert (acc["n"], acc["expected"], acc["unit"], acc["display"], acc["agg"]) == (
        "3",
        "3",
        "%",
        "all-or-none accuracy",
        "best",
    )
    assert float(acc["mean"]) == pytest.approx(99.0) and float(acc["min"]) == pytest.approx(98.5)
    assert (float(acc["paper"]), float(acc["paper_std"])) == (pytest.approx(99.3), pytest.approx(0.25))
    assert (loss["mean"], loss["std"], loss["unit"], loss["agg"], loss["paper"]) == (
        "1.5",
        "0.0",
        "raw",
        "final",
        "",
    )
    assert float(rows[2]["p_value"]) == pytest.approx(
        _welch_by_hand([0.9, 0.92, 0.94], [0.99, 0.995, 0.985]), rel=1e-3
    )

    md = to_markdown(res)
    acc_table, loss_table = md.strip().split("\n\n")
    lines = acc_table.splitlines()
    assert lines[0] == (
        "| cell | all-or-none accuracy (%), maximum over each run's evaluations: mean ± std | n | min | max "
        f"| paper | p vs {SIGNUM} |"
    )
    assert lines[2] == f"| {SIGNUM} | 99.00 ± 0.50 | 3/3 | 98.5 | 99.5 | 99.3 ± 0.25 |  |"
    assert lines[3].startswith(f"| {ELU} | 92.00 ± 2.00 | 3/3 | 90 | 94 |  | 0.0")
    loss_lines = loss_table.splitlines()
    assert loss_lines[0].startswith("| cell | train_loss, final value: mean ± std |")
    assert loss_lines[2] == f"| {SIGNUM} | 1.5000 ± 0.0000 | 3/3 | 1.5 | 1.5 |  |  |"
    assert "%" not in loss_table


@pytest.fixture
def toy() -> Iterator[Any]:
    with registered(toy_family.NAME, toy_family.FAMILY) as family:
        yield family


TOY = {
    "name": "toy",
    "experiment": "toy",
    "params": {"steps": 4, "eval_every": 1},
    "grid": {"offset": [0.0, 2.0]},
    "replicates": 2,
    # no metric, no mode: both come from the toy family's declaration
}


def _toy_runs(trials: list[Any]) -> FakeRuns:
    fake = FakeRuns()
    for t in trials:
        off, seed = t.config["offset"], t.seed
        fake.add(t, toy_error=[off + 0.1 * seed + e for e in toy_family.ERRORS])
    return fake


def test_a_toy_family_gets_its_own_metric_lower_is_better_and_raw(toy: Any) -> None:
    spec, trials = spec_and_trials(TOY)
    fake = _toy_runs(trials)
    res = compute_results(spec, trials, fake.runs, metrics=["toy_error"], history=fake.history)
    assert res["metric_info"] == {
        "toy_error": {"mode": "min", "unit": "raw", "display": "toy error", "agg": "best"}
    }
    for cell, off in zip(res["cells"], (0.0, 2.0), strict=True):
        m = cell["metrics"]["toy_error"]
        want = [toy_family.expected(off, s, "best") for s in (0, 1)]
        assert m["values"] == pytest.approx(want) and m["mean"] == pytest.approx(statistics.fmean(want))
    final = compute_results(spec, trials, fake.runs, metrics=["toy_error"], agg="final", history=fake.history)
    assert final["cells"][0]["metrics"]["toy_error"]["values"] == pytest.approx([0.75, 0.85])

    md = to_markdown(res)
    assert "toy error, minimum over each run's evaluations: mean ± std" in md and "%" not in md
    assert "| offset=0.0 | 0.3000 ± 0.0707 | 2/2 | 0.25 | 0.35 |" in md
    assert "| offset=2.0 | 2.3000 ± 0.0707 | 2/2 | 2.25 | 2.35 |" in md
    rows = list(csv.DictReader(io.StringIO(to_csv(res))))
    assert [(r["mean"], r["unit"], r["display"]) for r in rows] == [
        (repr(statistics.fmean([0.25, 0.35])), "raw", "toy error"),
        (repr(statistics.fmean([2.25, 2.35])), "raw", "toy error"),
    ]


def test_an_empty_metric_name_is_a_request_error() -> None:
    from service.core.errors import InvalidRequestError

    spec, trials, fake, _ = _sorting()
    with pytest.raises(InvalidRequestError, match="test_all_or_none") as e:
        compute_results(spec, trials, fake.runs, metrics=[""], history=fake.history)
    assert e.value.field == "metric" and e.value.status_code == 422
