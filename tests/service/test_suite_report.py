"""`service.suite_report` on the paper's own suite (configs/paper.yaml, expanded, never run) and
hand-made runs (no Ray, no MLflow): which sections the members give, Table 1's layout and paper
values, incomplete and adopted cells, Figure 4's points per dataset, and the generic section."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.suite_report import Member, SuiteReport, build_suite_report, figure_series
from tests.service.fake_runs import FakeRuns, spec_and_trials
from workers.spec import SweepSpec, SweepSuite, Trial, expand, load_spec

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PNG = b"\x89PNG\r\n\x1a\n"
PAPER_SECTIONS = [
    "table1",
    "figure3",
    "figure4_fashionmnist",
    "figure4_cifar10",
    "figure5",
    "table2",
    "figure6_left",
    "figure6_middle",
    "figure6_right",
]

#: (file, trial) -> the trial's state in its sweep; "finished" gives it a FINISHED run with a value.
Outcome = Callable[[str, Trial], str]


def value_of(trial: Trial) -> float:
    """A value that differs by cell and seed, so that means and stds are worth checking."""
    return 0.3 + 0.01 * (trial.index % 37) + 0.002 * trial.seed


def history_of(spec: SweepSpec, trial: Trial) -> list[float]:
    """Sorting reads each run's best (a peak the last value falls from); the others the last."""
    v = value_of(trial)
    return [v - 0.2, v, v - 0.1] if spec.experiment == "sorting" else [v - 0.1, v]


def sweep_id(file: str) -> str:
    return "sw-" + Path(file).stem


def build(
    specs: Sequence[tuple[str, SweepSpec]], outcome: Outcome = lambda f, t: "finished"
) -> tuple[list[Member], FakeRuns]:
    """Members as the service would hand them over: a trial two members share runs once, in the
    first member that has it, and the later ones adopt that run."""
    fake = FakeRuns()
    owner: dict[str, str] = {}
    members = []
    for file, spec in specs:
        trials = expand(spec)
        states: dict[str, str] = {}
        adopted: dict[str, str] = {}
        for t in trials:
            if t.trial_key in owner:
                states[t.trial_key], adopted[t.trial_key] = "adopted", owner[t.trial_key]
                continue
            owner[t.trial_key] = sweep_id(file)
            state = outcome(file, t)
            if state in ("finished", "running", "failed"):
                status = {"finished": "FINISHED", "running": "RUNNING", "failed": "FAILED"}[state]
                fake.add(t, status, **{spec.resolved_metric: history_of(spec, t)})
            if state != "pending":  # a missing key is pending
                states[t.trial_key] = state
        members.append(Member(file, sweep_id(file), "running", spec, trials, fake.runs, states, adopted))
    return members, fake


@pytest.fixture(scope="module")
def paper_specs() -> list[tuple[str, SweepSpec]]:
    suite = load_spec(CONFIGS / "paper.yaml")
    assert isinstance(suite, SweepSuite)
    return suite.specs


def report_of(members: Sequence[Member], fake: FakeRuns) -> SuiteReport:
    return build_suite_report("su-1", "paper", "the whole paper", members, fake.history)


def section(report: SuiteReport, sid: str) -> dict[str, Any]:
    return next(s for s in report.data["sections"] if s["id"] == sid)


def cell_at(sec: dict[str, Any], row: str, column: Any) -> dict[str, Any]:
    r = next(r for r in sec["rows"] if r["label"] == row)
    return next(c for c in r["cells"] if c["column"] == column)


def trials_of(members: Sequence[Member], file: str, cell_key: str) -> list[Trial]:
    m = next(m for m in members if m.file == file)
    return [t for t in m.trials if t.cell_key == cell_key]


def test_the_paper_suite_gives_each_table_and_figure_in_the_papers_order(
    paper_specs: list[tuple[str, SweepSpec]],
) -> None:
    members, fake = build(paper_specs)
    report = report_of(members, fake)
    sections = report.data["sections"]
    assert [s["id"] for s in sections] == PAPER_SECTIONS  # no generic section: every cell is shown
    assert {s["id"]: s["member"] for s in sections}["figure6_middle"] == "fig6_emd.yaml"
    assert sorted(report.figures) == sorted(
        f"{sid}.png" for sid in PAPER_SECTIONS if sid.startswith("figure")
    )
    assert all(png.startswith(PNG) for png in report.figures.values())
    md = report.markdown
    headings = [line for line in md.splitlines() if line.startswith("## ")]
    assert [h.split(":")[0] for h in headings] == [
        "## Table 1",
        "## Figure 3",
        "## Figure 4 (FashionMNIST)",
        "## Figure 4 (CIFAR10)",
        "## Figure 5",
        "## Table 2",
        "## Figure 6 (left)",
        "## Figure 6 (middle)",
        "## Figure 6 (right)",
        "## Members",
    ]
    assert "![Figure 3](figure3.png)" in md and "![Figure 4 (CIFAR10)](figure4_cifar10.png)" in md
    assert "<" not in md  # no HTML
    assert json.loads(json.dumps(report.data)) == report.data
    # 670 trials, 650 distinct: the 20 shared ones are adopted by the later member and count once
    assert "9 members; 670 trials expected (650 distinct), 670 finished, 20 adopted, 0 failed." in md
    assert {m["file"]: m["adopted"] for m in report.data["members"]} == {
        "table1_sorting.yaml": 0,
        "fig3_pondering.yaml": 10,
        "fig4_fashionmnist.yaml": 0,
        "fig4_cifar10.yaml": 0,
        "fig5_imagenet.yaml": 0,
        "table2_cifar10.yaml": 0,
        "fig6_placement.yaml": 5,
        "fig6_emd.yaml": 5,
        "fig6_ste.yaml": 0,
    }
    t2 = section(report, "table2")
    assert [(r["label"], r["detail"]) for r in t2["rows"]] == [
        ("Baseline", "identity"),
        ("Signum", "signum"),
        ("Sort", "sort_rowcol"),
        ("Topk", "topk(k=512, reading=largest)"),
        ("K-Means", "kmeans(k=10)"),
    ]
    assert cell_at(t2, "Baseline", "test accuracy")["paper"] == {
        "value": 0.9287,
        "std": 0.0006,
        "source": "Table 2, Baseline",
    }
    right = section(report, "figure6_right")
    assert [r["label"] for r in right["rows"]] == ["Sort-1D"]
    assert [c["column"] for c in right["rows"][0]["cells"]] == ["dab", "ste"]
    assert [c["column"] for c in section(report, "figure6_left")["rows"][0]["cells"]] == [1, 2, 3, 4]
    assert [c["column"] for c in section(report, "figure6_middle")["rows"][0]["cells"]] == [False, True]


def test_table1_rows_columns_values_and_the_papers_numbers(paper_specs: list[tuple[str, SweepSpec]]) -> None:
    members, fake = build(paper_specs[:1])  # table1_sorting.yaml alone
    report = report_of(members, fake)
    t1 = section(report, "table1")
    assert (t1["kind"], t1["member"], t1["metric"], t1["agg"], t1["unit"], t1["figure"]) == (
        "table",
        "table1_sorting.yaml",
        "test_all_or_none",
        "best",
        "fraction",
        None,
    )
    assert [r["label"] for r in t1["rows"]] == ["T=5", "T=10", "T=15"]
    columns = ["ELU-Dense", "Signum-RNN (ponder 5)", "Signum-Dense"]  # the paper's column order
    assert all([c["column"] for c in r["cells"]] == columns for r in t1["rows"])

    model_of = {
        "ELU-Dense": "elu-dense",
        "Signum-RNN (ponder 5)": "signum-rnn",
        "Signum-Dense": "signum-dense",
    }
    paper = yaml.safe_load((CONFIGS / "table1_sorting.yaml").read_text())["paper"]
    expected_paper = {
        (p["match"]["model"], p["match"]["seq_len"]): {
            "value": p["value"],
            "std": p["std"],
            "source": "Table 1",
        }
        for p in paper
    }
    for r in t1["rows"]:
        seq_len = int(r["label"][2:])
        for c in r["cells"]:
            assert c["paper"] == expected_paper[(model_of[c["column"]], seq_len)]
            maxima = [
                max(history_of(members[0].spec, t))
                for t in trials_of(members, "table1_sorting.yaml", c["cell_key"])
            ]
            assert (c["n"], c["expected"], c["complete"], c["missing"], c["adopted"]) == (5, 5, True, {}, 0)
            assert c["mean"] == pytest.approx(statistics.fmean(maxima))  # each run's best, not its last
            assert c["std"] == pytest.approx(statistics.stdev(maxima))

    c = cell_at(t1, "T=10", "ELU-Dense")
    text = f"{c['mean'] * 100:.2f} ± {c['std'] * 100:.2f} (5/5); paper 0 ± 0"
    assert f"| T=10 | {text} |" in report.markdown
    assert "| length (T) | ELU-Dense | Signum-RNN (ponder 5) | Signum-Dense |" in report.markdown
    assert "Paper values: Table 1." in report.markdown
    assert "maximum over each run's evaluations" in t1["caption"] and "`table1_sorting.yaml`" in t1["caption"]


def test_an_incomplete_cell_says_what_is_missing(paper_specs: list[tuple[str, SweepSpec]]) -> None:
    target, empty = "model=elu-dense,seq_len=5", "model=signum-dense,seq_len=15"

    def outcome(file: str, t: Trial) -> str:
        if t.cell_key == target:
            return {3: "running", 4: "failed"}.get(t.seed, "finished")
        if t.cell_key == empty:
            return "waiting" if t.seed < 2 else "pending"
        return "finished"

    members, fake = build(paper_specs[:1], outcome)
    report = report_of(members, fake)
    t1 = section(report, "table1")
    c = cell_at(t1, "T=5", "ELU-Dense")
    values = [max(history_of(members[0].spec, t)) for t in trials_of(members, "table1_sorting.yaml", target)][
        :3
    ]
    assert (c["n"], c["expected"], c["complete"]) == (3, 5, False)
    assert c["missing"] == {"running": 1, "failed": 1}
    assert c["mean"] == pytest.approx(statistics.fmean(values)) and c["std"] == pytest.approx(
        statistics.stdev(values)
    )
    text = f"{c['mean'] * 100:.2f} ± {c['std'] * 100:.2f} (3/5; 1 running, 1 failed); paper 86.46 ± 4.7"
    assert f"| T=5 | {text} |" in report.markdown

    none = cell_at(t1, "T=15", "Signum-Dense")
    assert (none["n"], none["complete"], none["mean"], none["std"]) == (0, False, None, None)
    assert none["missing"] == {"waiting": 2, "pending": 3}  # the real states; the text groups them
    assert "| — (0/5; 5 not yet run); paper 79.8 ± 0.8 |" in report.markdown
    assert report.data["members"][0] == {
        "file": "table1_sorting.yaml",
        "sweep_id": "sw-table1_sorting",
        "state": "running",
        "trials": 45,
        "finished": 38,
        "adopted": 0,
        "failed": 1,
    }


def test_adopted_runs_are_counted_and_named(paper_specs: list[tuple[str, SweepSpec]]) -> None:
    # Table 1's Signum-RNN T=5 cell is Figure 3's 5-ponder T=5 cell: run by table1, adopted by fig3
    def outcome(file: str, t: Trial) -> str:
        c = t.config
        shared = c["model"] == "signum-rnn" and c["seq_len"] == 5 and c["ponder_steps"] == 5
        return "running" if shared and t.seed == 0 else "finished"

    members, fake = build(paper_specs[:2], outcome)
    report = report_of(members, fake)
    f3 = section(report, "figure3")
    shared = cell_at(f3, "T=5", 5)
    assert shared["adopted"] == 4 and shared["adopted_from"] == {"sw-table1_sorting": 4}
    assert shared["missing"] == {"adopted": 1}  # adopted, but the run it adopted is still running
    assert (shared["n"], shared["complete"]) == (4, False)
    assert cell_at(f3, "T=10", 5)["adopted"] == 5 and cell_at(f3, "T=5", 4)["adopted"] == 0
    t1_cell = cell_at(section(report, "table1"), "T=5", "Signum-RNN (ponder 5)")
    assert (t1_cell["adopted"], t1_cell["mean"]) == (0, pytest.approx(shared["mean"]))  # one run, two sweeps

    md = report.markdown
    fig3_md = md[md.index("## Figure 3") : md.index("## Members")]
    assert (
        f"{shared['mean'] * 100:.2f} ± {shared['std'] * 100:.2f} (4/5; 1 adopted, not finished) [1]"
        in fig3_md
    )
    assert (
        "[1] T=5, ponder 5: 4 of its 4 values are runs adopted from sweep `sw-table1_sorting` (table1_sorting.yaml)"
        in fig3_md
    )
    assert "[2] T=10, ponder 5: 5 of its 5 values" in fig3_md and "[3]" not in fig3_md
    assert "| fig3_pondering.yaml | sw-fig3_pondering | running | 110 | 109 | 10 | 0 |" in md


def test_figure4_gives_a_png_per_dataset_of_the_hand_computed_points(
    paper_specs: list[tuple[str, SweepSpec]],
) -> None:
    fig4 = [(f, s) for f, s in paper_specs if f.startswith("fig4_")]
    members, fake = build(
        fig4, lambda f, t: "failed" if t.seed == 4 and t.config["bpp"] == 1.0 else "finished"
    )
    report = report_of(members, fake)
    assert sorted(report.figures) == ["figure4_cifar10.png", "figure4_fashionmnist.png"]
    assert report.figures["figure4_cifar10.png"].startswith(PNG)
    assert report.figures["figure4_cifar10.png"] != report.figures["figure4_fashionmnist.png"]
    for file, sid in (
        ("fig4_fashionmnist.yaml", "figure4_fashionmnist"),
        ("fig4_cifar10.yaml", "figure4_cifar10"),
    ):
        sec = section(report, sid)
        assert (sec["figure"], sec["member"], sec["unit"]) == (f"{sid}.png", file, "raw")
        series = figure_series(sec)
        variants = ["dab-bernoulli", "dab-binary", "dab-signum", "bernoulli-vae", "gumbel-vae", "threshold"]
        assert list(series) == variants == [r["label"] for r in sec["rows"]]
        for row in sec["rows"]:
            assert [x for x, _, _ in series[row["label"]]] == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
            for (bpp, mean, std), cell in zip(series[row["label"]], row["cells"], strict=True):
                trials = trials_of(members, file, cell["cell_key"])
                assert {(t.config["variant"], t.config["bpp"]) for t in trials} == {(row["label"], bpp)}
                finals = [value_of(t) for t in trials if not (bpp == 1.0 and t.seed == 4)]
                assert len(finals) == (4 if bpp == 1.0 else 5) == cell["n"]
                assert mean == pytest.approx(statistics.fmean(finals))  # MS-SSIM is raw: no percent
                assert std == pytest.approx(statistics.stdev(finals))
        assert cell_at(sec, "threshold", 1.0)["missing"] == {"failed": 1}


def test_fractions_stay_fractions_in_json_and_percent_in_the_figure(
    paper_specs: list[tuple[str, SweepSpec]],
) -> None:
    members, fake = build([(f, s) for f, s in paper_specs if f == "fig6_placement.yaml"])
    report = report_of(members, fake)
    sec = section(report, "figure6_left")
    ((label, points),) = figure_series(sec).items()
    assert label == "Signum" and [p[0] for p in points] == [1, 2, 3, 4]
    for (_, mean, std), cell in zip(points, sec["rows"][0]["cells"], strict=True):
        assert 0 < cell["mean"] < 1 and mean == pytest.approx(100 * cell["mean"])
        assert std == pytest.approx(100 * cell["std"])
    assert report.figures["figure6_left.png"].startswith(PNG)


def test_a_figure_without_finished_points_is_listed_without_a_png(
    paper_specs: list[tuple[str, SweepSpec]],
) -> None:
    members, fake = build(
        [(f, s) for f, s in paper_specs if f == "fig5_imagenet.yaml"], lambda f, t: "pending"
    )
    report = report_of(members, fake)
    sec = section(report, "figure5")
    assert (sec["figure"], sec["note"]) == (None, "no finished trials yet") and report.figures == {}
    assert [c["column"] for c in sec["rows"][0]["cells"]][:2] == ["dab-bernoulli", "dab-binary"]
    assert all(c["missing"] == {"pending": 5} for c in sec["rows"][0]["cells"])
    assert "*No finished trials yet: no figure.*" in report.markdown
    assert "| bpp 0.001 | — (0/5; 5 not yet run) |" in report.markdown


def test_a_member_of_no_paper_table_gets_its_results_table_and_duplicates_are_kept(
    paper_specs: list[tuple[str, SweepSpec]],
) -> None:
    own, _ = spec_and_trials(
        {
            "name": "my-sweep",
            "experiment": "sorting",
            "params": {"model": "signum-dense", "seq_len": 4, "steps": 30, "eval_every": 10},
            "grid": {"lr": [0.001, 0.0001]},
            "replicates": 2,
        }
    )
    quick = load_spec(CONFIGS / "quickstart.yaml")
    assert isinstance(quick, SweepSpec)
    specs = [paper_specs[0], ("own/my_sweep.yaml", own), ("quickstart.yaml", quick)]
    members, fake = build(specs, lambda f, t: "failed" if f.startswith("own") and t.seed == 1 else "finished")
    report = report_of(members, fake)
    assert [s["id"] for s in report.data["sections"]] == ["table1", "table1_quickstart", "results_my_sweep"]
    dup = section(report, "table1_quickstart")
    # two Signum-Dense cells at T=5 (DAB and STE): the estimator tells their rows apart
    assert dup["title"].endswith("(quickstart.yaml)")
    assert [r["label"] for r in dup["rows"]] == ["T=5 (estimator=dab)", "T=5 (estimator=ste)", "T=5"]
    dab = cell_at(dup, "T=5 (estimator=dab)", "Signum-Dense")
    assert dab["paper"]["source"] == "Table 1, T=5, full budget"
    assert cell_at(dup, "T=5 (estimator=ste)", "Signum-Dense")["paper"] is None
    assert cell_at(dup, "T=5", "ELU-Dense")["paper"]["value"] == 0.8646

    generic = section(report, "results_my_sweep")
    assert (generic["kind"], generic["member"]) == ("table", "own/my_sweep.yaml")
    assert [r["label"] for r in generic["rows"]] == ["lr=0.001", "lr=0.0001"]
    c = generic["rows"][0]["cells"][0]
    best = max(history_of(own, expand(own)[0]))  # seed 0 of lr=0.001: the only value
    assert (c["n"], c["expected"], c["missing"], c["mean"]) == (1, 2, {"failed": 1}, pytest.approx(best))
    md = report.markdown
    assert "## my-sweep: results per cell (own/my_sweep.yaml)" in md
    assert f"| lr=0.001 | {best * 100:.2f} ± 0.00 | 1/2 |" in md  # results.to_markdown's table
    assert f"- lr=0.001: {best * 100:.2f} (1/2; 1 failed)" in md  # and what it leaves unsaid
