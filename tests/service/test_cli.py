"""The `dab` CLI: `dab preview SPEC [--json]`."""

from __future__ import annotations

import json
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
    assert "model=signum-dense" in result.stdout and "model=elu-dense" in result.stdout
    assert "4 trials in 2 cells" in result.stdout
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
