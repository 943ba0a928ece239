"""The ``dab`` command line.

Importing this module is cheap: no FastAPI, no Ray; torch loads only when a spec is expanded.
Exit codes: 0 success, 2 a mistake in the spec or the command line (message on stderr).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from workers.spec import SpecError, SweepSuite, load_spec
from workers.spec import preview as preview_spec

app = typer.Typer(
    name="dab",
    help="DAB Sweeps: run the Differentiable Approximation Bridges paper's experiment grids.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_SPEC_ERROR = 2


@app.callback()
def main() -> None:
    """DAB Sweeps: the experiment grids of the DAB paper as sweeps."""


def _num(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "-"
    if x == int(x):
        return f"{int(x):,}"
    return f"{x:.2g}" if abs(x) < 1 else f"{x:,.{digits}f}"


def _paper(entries: list[dict[str, Any]]) -> str:
    out = []
    for p in entries:
        std = f" ± {p['std']:g}" if p["std"] is not None else ""
        out.append(f"{p['value']:g}{std}")
    return "; ".join(out)


def _console(stderr: bool = False) -> Console:
    # Piped output (CI logs, tests) gets room for the tables; a terminal keeps its own width.
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, highlight=False, width=None if stream.isatty() else 120)


def _seeds(seeds: list[int]) -> str:
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}..{seeds[-1]}"
    return ",".join(map(str, seeds))


def _cells_table(f: dict[str, Any]) -> Table:
    table = Table(
        title=f"{f['name']} ({f['experiment']}): {f['file']}", title_justify="left", box=box.SIMPLE_HEAD
    )
    table.add_column("#", justify="right")
    table.add_column("cell", overflow="fold")
    table.add_column("seeds")
    table.add_column("trials", justify="right")
    table.add_column(f"paper {f['metric']}", justify="right")
    for i, c in enumerate(f["cell_list"]):
        table.add_row(
            str(i), c["cell_key"] or "(params only)", _seeds(c["seeds"]), str(c["trials"]), _paper(c["paper"])
        )
    return table


def _files_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"{summary['name']}: {summary['source']}", title_justify="left", box=box.SIMPLE_HEAD)
    for col in (
        "file",
        "family",
        "cells",
        "seeds",
        "trials",
        "CPU/trial",
        "GPU/trial",
        "h/trial",
        "CPU-h",
        "GPU-h",
    ):
        table.add_column(col, justify="left" if col in ("file", "family") else "right", no_wrap=col == "file")
    for f in summary["files"]:
        r = f["resources"]
        per = r["per_trial"]
        table.add_row(
            f["file"],
            f["experiment"],
            str(f["cells"]),
            str(f["replicates"]),
            str(f["trials"]),
            _num(per["cpu"], 2),
            _num(per["gpu"], 2),
            _num(r["duration_hours"], 3),
            _num(r["cpu_hours"]),
            _num(r["gpu_hours"]),
        )
    t = summary["total"]
    table.add_section()
    table.add_row(
        "total",
        "",
        str(t["cells"]),
        "",
        str(t["trials"]),
        "",
        "",
        "",
        _num(t["cpu_hours"]),
        _num(t["gpu_hours"]),
        style="bold",
    )
    return table


@app.command()
def preview(
    spec: Annotated[Path, typer.Argument(help="a sweep spec or a suite (YAML or JSON)", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="print the preview as JSON")] = False,
) -> None:
    """Expand SPEC without running it: trials, cells, replicates and the resources requested."""
    err = _console(stderr=True)
    try:
        loaded = load_spec(spec)
        summary = preview_spec(loaded)
    except SpecError as e:
        err.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(EXIT_SPEC_ERROR) from None
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    out = _console()
    if not isinstance(loaded, SweepSuite):
        out.print(_cells_table(summary["files"][0]))
    out.print(_files_table(summary))
    t = summary["total"]
    line = f"{t['trials']:,} trials in {t['cells']:,} cells"
    if t["distinct_trials"] != t["trials"]:
        shared = t["trials"] - t["distinct_trials"]
        line += f"; {t['distinct_trials']:,} distinct ({shared:,} shared between files run once)"
    out.print(line)
    if t["files_without_duration"] and t["cpu_hours"] is not None:
        out.print(f"no duration estimate (not in the hours): {', '.join(t['files_without_duration'])}")


__all__ = ["app"]

if __name__ == "__main__":
    app()
