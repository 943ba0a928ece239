"""The `dab` CLI: `dab preview SPEC [--json]`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from service.cli import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_preview_prints_cells_and_totals() -> None:
    result = runner.invoke(app, ["preview", str(ROOT / "configs" / "quickstart.yaml")])
    assert result.exit_code == 0, result.output
    assert "estimator=ste,model=signum-dense" in result.stdout and "model=elu-dense" in result.stdout
    assert "6 trials in 3 cells" in result.stdout
    assert "0.993 ± 0.0025" in result.stdout  # the paper's value for the cell


def test_preview_json_of_the_paper_suite() -> None:
    result = runner.invoke(app, ["preview", str(ROOT / "configs" / "paper.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["kind"] == "suite"
    assert summary["total"]["trials"] >= 600
    assert summary["total"]["trials"] == sum(f["trials"] for f in summary["files"])
    assert len(summary["files"]) == 9


def test_preview_suite_table_has_a_row_per_file() -> None:
    result = runner.invoke(app, ["preview", str(ROOT / "configs" / "paper.yaml")])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()]
    counts = {r[0]: int(r[4]) for r in rows if r and r[0].endswith(".yaml") and len(r) > 4}
    assert counts["table1_sorting.yaml"] == 45 and counts["fig3_pondering.yaml"] == 110
    assert "670 trials in 134 cells; 650 distinct" in result.stdout


def test_spec_errors_exit_2_with_the_location_on_stderr(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nexperiment: sorting\nparams: {steps: 1, seq_len: 5}\ngrid:\n  model: [elu-dense, signum-dnese]\n"
    )
    result = runner.invoke(app, ["preview", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:5: grid.model[1]: unknown model 'signum-dnese'" in result.stderr
    assert "[in trial cell model=signum-dnese]" in result.stderr  # not eaten as rich markup
    assert result.stdout == ""
    missing = runner.invoke(app, ["preview", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "no such spec file" in missing.stderr


def test_cli_import_is_cheap() -> None:
    code = "import sys, service.cli; print(sorted(m for m in ('torch', 'fastapi', 'ray', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------
# Client commands against the API served on a loopback port (no Ray: sweeps stay queued).

TINY = ROOT / "tests" / "e2e" / "tiny.yaml"


def _dab(api: object, *args: str, token: str | None = None) -> object:
    env = {"DAB_API_URL": api.server.url}  # type: ignore[attr-defined]
    if token is not None:
        env["DAB_API_TOKEN"] = token
    return runner.invoke(app, list(args), env=env)


def test_submit_status_cancel_results(api: object) -> None:
    r = _dab(api, "submit", str(TINY))
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    sid = r.stdout.strip()  # type: ignore[attr-defined]
    assert len(sid) == 16
    listed = _dab(api, "status")
    assert sid in listed.stdout and "tiny" in listed.stdout  # type: ignore[attr-defined]
    one = _dab(api, "status", sid)
    assert one.exit_code == 0 and "queued" in one.stdout and "MLflow UI" in one.stdout  # type: ignore[attr-defined]
    res = _dab(api, "results", sid, "--format", "csv")
    assert res.exit_code == 0  # type: ignore[attr-defined]
    assert res.stdout.splitlines()[0].startswith("cell,metric,n,expected,mean")  # type: ignore[attr-defined]
    assert "model=signum-dense,test_all_or_none,0,2" in res.stdout  # type: ignore[attr-defined]
    table = _dab(api, "results", sid)
    assert "model=elu-dense" in table.stdout and "0/2" in table.stdout  # type: ignore[attr-defined]
    c = _dab(api, "cancel", sid)
    assert c.exit_code == 0 and c.stdout.strip() == f"{sid}: cancelled"  # type: ignore[attr-defined]
    again = _dab(api, "cancel", sid)
    assert again.exit_code == 2 and "already cancelled" in again.stderr  # type: ignore[attr-defined]


def test_submit_the_paper_suite_previews_650_trials_then_cancel_it(api: object, tmp_path: Path) -> None:
    """`dab submit configs/paper.yaml`: the members travel inline as one suite, the service
    previews 650 distinct trials to run (670 listed), and `dab cancel` on it ends every member."""
    r = _dab(api, "submit", str(ROOT / "configs" / "paper.yaml"), "--priority", "3")
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    assert "9 members, 670 trials listed, 650 distinct, 0 finished already: 650 trials to run" in r.stdout  # type: ignore[attr-defined]
    suite_id = r.stdout.splitlines()[1].strip()  # type: ignore[attr-defined]
    assert len(suite_id) == 16 and "table1_sorting.yaml: queued (45 trials)" in r.stdout  # type: ignore[attr-defined]
    st = _dab(api, "status", suite_id)
    assert st.exit_code == 0 and f"paper suite {suite_id}: queued" in st.stdout  # type: ignore[attr-defined]
    assert "fig6_ste.yaml" in st.stdout and f"tags.`dab.suite_id` = '{suite_id}'" in st.stdout  # type: ignore[attr-defined]
    listed = _dab(api, "status")
    assert "suites (1)" in listed.stdout and "650 distinct of 670" in listed.stdout  # type: ignore[attr-defined]
    c = _dab(api, "cancel", suite_id)
    assert c.exit_code == 0 and c.stdout.splitlines()[0] == f"{suite_id}: cancelled"  # type: ignore[attr-defined]
    assert c.stdout.count(": cancelled") == 10  # type: ignore[attr-defined]  # the suite and its 9 members
    rep = _dab(api, "report", suite_id, "--out", str(tmp_path / "rep"))
    assert rep.exit_code == 0, rep.output  # type: ignore[attr-defined]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Table 1" in md and "not yet run" in md  # every cell is marked incomplete
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert len(data["sections"]) == 9


def test_exit_codes(serve: object, tmp_path: Path) -> None:
    api = serve(api_token="tok")  # type: ignore[operator]
    assert _dab(api, "status", token="wrong").exit_code == 4  # type: ignore[attr-defined]
    assert _dab(api, "status").exit_code == 4  # type: ignore[attr-defined]
    assert _dab(api, "status", "0123456789abcdef", token="tok").exit_code == 5  # type: ignore[attr-defined]
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nexperiment: sorting\nreplicates: -1\n")
    r = _dab(api, "submit", str(bad), token="tok")
    assert r.exit_code == 2 and "replicates" in r.stderr  # type: ignore[attr-defined]
    down = runner.invoke(app, ["status"], env={"DAB_API_URL": "http://127.0.0.1:9"})
    assert down.exit_code == 3 and "cannot reach" in down.stderr


def test_results_table_reads_units_and_names_from_the_results() -> None:
    from rich.console import Console

    from service.cli import _results_table

    def stats(mean: float, std: float) -> dict[str, object]:
        return {"n": 2, "mean": mean, "std": std, "min": mean - std, "max": mean + std, "p_value": None}

    res = {
        "agg": None,
        "metric_info": {
            "test_all_or_none": {
                "mode": "max",
                "unit": "fraction",
                "display": "all-or-none accuracy",
                "agg": "best",
            },
            "toy_error": {"mode": "min", "unit": "raw", "display": "toy error", "agg": "best"},
            "train_loss": {"mode": "min", "unit": "raw", "display": "train_loss", "agg": "final"},
        },
        "cells": [
            {
                "cell_key": "T=5",
                "expected": 2,
                "metrics": {
                    "test_all_or_none": {**stats(0.99, 0.005), "paper": {"value": 0.993, "std": 0.0025}},
                    "toy_error": {**stats(0.3, 0.0707), "paper": None},
                    "train_loss": {**stats(12.5, 0.25), "paper": None},
                },
            }
        ],
    }
    console = Console(width=200, record=True)
    console.print(_results_table(res))
    rows = [re.split(r"\s{2,}", line.strip()) for line in console.export_text().splitlines()]
    by_metric = {r[1]: r[2:] for r in rows if len(r) > 2 and r[0] == "T=5"}
    assert by_metric == {
        "all-or-none accuracy (%), run max": ["99.00 ± 0.50", "2/2", "98.5", "99.5", "99.3 ± 0.25"],
        "toy error, run min": ["0.3 ± 0.0707", "2/2", "0.2293", "0.3707"],  # raw: no %
        "train_loss, final": ["12.5 ± 0.25", "2/2", "12.25", "12.75"],
    }
    captioned = Console(width=120, record=True)
    captioned.print(_results_table(res, "at this budget [the paper's effect] does not show"))
    assert captioned.export_text().rstrip().endswith("at this budget [the paper's effect] does not show")
