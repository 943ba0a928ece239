"""The ``dab`` command line.

One module over 400 lines because it is one Typer app: each command is a short function, and
the shared printing (tables, progress, errors to exit codes) sits beside the commands that use it.

Importing this module is cheap: no FastAPI, no Ray; torch loads only when a spec is expanded.
Exit codes: 0 success; 1 the sweep ended failed or cancelled; 2 a mistake in the spec, the command
line or the request (message on stderr); 3 the service cannot be reached or failed (5xx, 429);
4 a missing or wrong token; 5 no such sweep; 130 interrupted.
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
        first = summary["files"][0]
        out.print(_search_text(first["search"]) if "search" in first else _cells_table(first))
    out.print(_files_table(summary))
    t = summary["total"]
    searched = any("search" in f for f in summary["files"])
    line = f"{'at most ' if searched else ''}{t['trials']:,} trials in {t['cells']:,} cells"
    if t["distinct_trials"] != t["trials"]:
        shared = t["trials"] - t["distinct_trials"]
        line += f"; {t['distinct_trials']:,} distinct ({shared:,} shared between files run once)"
    if searched and t["cpu_hours"] is not None:
        line += f"; at most {t['cpu_hours']:,.1f} CPU-hours and {t['gpu_hours']:,.1f} GPU-hours"
    out.print(line)
    if searched:
        out.print("(a search's budget: a scheduler stops configurations early, so it costs at most this)")
    if t["files_without_duration"] and t["cpu_hours"] is not None:
        out.print(f"no duration estimate (not in the hours): {', '.join(t['files_without_duration'])}")


def _search_text(search: dict[str, Any]) -> str:
    """A search's budget and space, for `dab preview`."""
    scheduler = search["scheduler"]
    options = ", ".join(f"{k} {v}" for k, v in scheduler.items() if k != "type" and v is not None)
    lines = [
        f"search: {search['algorithm']} (seed {search['seed']}), at most {search['max_configurations']:,} "
        f"configurations, {search['max_trials']:,} trials; scheduler {scheduler['type']}"
        + (f" ({options})" if options else ""),
    ]
    for name, dist in search["space"].items():
        ((kind, args),) = dist.items()
        lines.append(f"  {name}: {kind} {json.dumps(args)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Client commands: they talk to the service over REST (--api-url, DAB_API_URL; DAB_API_TOKEN).

EXIT_OK = 0
EXIT_SWEEP_FAILED = 1  # the sweep ended failed or cancelled
EXIT_API = 3  # the service cannot be reached, or answered 5xx/429
EXIT_AUTH = 4  # 401/403
EXIT_NOT_FOUND = 5
EXIT_SETTINGS = 2  # `dab serve`: a DAB_* setting it cannot start with
EXIT_INTERRUPTED = 130
TERMINAL = ("finished", "failed", "cancelled")

ApiUrl = Annotated[
    str, typer.Option("--api-url", envvar="DAB_API_URL", help="the service's base URL (env DAB_API_URL)")
]
DEFAULT_API_URL = "http://127.0.0.1:8000"


class ApiClient:
    """A thin client of the REST API that turns its errors into messages and exit codes."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 60.0) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)
        self.base_url = base_url

    def request(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        err = _console(stderr=True)
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            err.print(
                f"[bold red]error:[/] cannot reach the service at {escape(self.base_url)}: {escape(str(e))}"
            )
            raise typer.Exit(EXIT_API) from None
        if r.status_code >= 400:
            try:
                body = r.json()
                message = body.get("message") or str(body)
            except ValueError:
                message = r.text[:500]
            err.print(f"[bold red]error ({r.status_code}):[/] {escape(str(message))}", soft_wrap=True)
            code = r.status_code
            if code in (401, 403):
                raise typer.Exit(EXIT_AUTH)
            if code == 404:
                raise typer.Exit(EXIT_NOT_FOUND)
            if code >= 500 or code == 429:
                raise typer.Exit(EXIT_API)
            raise typer.Exit(EXIT_SPEC_ERROR)
        return r

    def json(self, method: str, path: str, **kw: Any) -> Any:
        return self.request(method, path, **kw).json()

    def kind_of(self, some_id: str) -> str:
        """``sweeps`` or ``suites``: which resource `some_id` names (a 404 from both exits)."""
        import httpx

        try:
            r = self.http.get(f"/v1/sweeps/{some_id}")
        except httpx.HTTPError:
            r = None
        if r is not None and r.status_code == 404:
            self.request("GET", f"/v1/suites/{some_id}")  # exits with its error if not a suite
            return "suites"
        return "sweeps"


def _client(api_url: str) -> ApiClient:
    import os

    return ApiClient(api_url, os.environ.get("DAB_API_TOKEN") or None)


def _spec_body(spec: Path) -> tuple[bytes, str]:
    err = _console(stderr=True)
    try:
        data = spec.read_bytes()
    except OSError as e:
        err.print(f"[bold red]error:[/] {escape(str(spec))}: {escape(e.strerror or str(e))}")
        raise typer.Exit(EXIT_SPEC_ERROR) from None
    kind = "application/json" if spec.suffix.lower() == ".json" else "application/yaml"
    return data, kind


def _counts_text(counts: dict[str, int] | None) -> str:
    if not counts:
        return ""
    keys = ("finished", "running", "retrying", "pending", "failed", "killed", "skipped")
    return ", ".join(f"{counts[k]} {k}" for k in keys if counts.get(k))


def _wait(api: ApiClient, sweep_id: str, poll_s: float = 1.0) -> dict[str, Any]:
    """Poll the sweep with a progress bar until it ends; returns its last state."""
    import time

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    out = _console()
    if not out.is_terminal:  # logs and pipes: a line whenever something changes
        last = None
        while True:
            s = api.json("GET", f"/v1/sweeps/{sweep_id}")
            line = f"{s['name']}: {s['state']} {s['progress'] * 100:.0f}% {_counts_text(s.get('counts'))}"
            if line != last:
                out.print(line)
                last = line
            if s["state"] in TERMINAL:
                return dict(s)
            time.sleep(poll_s)
    with Progress(
        TextColumn("[bold]{task.fields[name]}[/]"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=out,
        transient=False,
    ) as bar:
        task = bar.add_task("sweep", total=1.0, name=sweep_id, info="")
        while True:
            s = api.json("GET", f"/v1/sweeps/{sweep_id}")
            eta = f", ETA {s['eta_s']:.0f} s" if s.get("eta_s") else ""
            info = f"{s['state']}: {_counts_text(s.get('counts'))}{eta}"
            bar.update(task, completed=s["progress"], name=s["name"], info=info)
            if s["state"] in TERMINAL:
                return dict(s)
            time.sleep(poll_s)


def _metric_text(res: dict[str, Any], metric: str) -> tuple[str, float]:
    """A metric's display name and how its runs were read, and its display scale, from the
    results' ``metric_info`` (the family's declaration, sent by the service)."""
    info = (res.get("metric_info") or {}).get(metric) or {}
    pct = info.get("unit") == "fraction"
    agg = info.get("agg") or res.get("agg") or "final"
    read = "final" if agg == "final" else "run " + ("max" if info.get("mode", "max") == "max" else "min")
    return escape(f"{info.get('display') or metric}{' (%)' if pct else ''}, {read}"), 100.0 if pct else 1.0


def _results_table(res: dict[str, Any], caption: str | None = None) -> Table:
    table = Table(
        title="results (mean ± std over seeds of each run's value: its final one, or its max or min)",
        title_justify="left",
        caption=escape(caption) if caption else None,
        caption_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for col in ("cell", "metric", "mean ± std", "n", "min", "max", "paper", "p (Welch)"):
        table.add_column(col, justify="left" if col in ("cell", "metric") else "right")
    for c in res["cells"]:
        for metric, m in c["metrics"].items():
            name, s = _metric_text(res, metric)
            f = ".2f" if s != 1.0 else ".4g"
            mean = "n/a" if m["mean"] is None else f"{m['mean'] * s:{f}} ± {(m['std'] or 0) * s:{f}}"
            paper = ""
            if m.get("paper"):
                paper = f"{m['paper']['value'] * s:g}" + (
                    f" ± {m['paper']['std'] * s:g}" if m["paper"]["std"] is not None else ""
                )
            table.add_row(
                escape(c["cell_key"]) or "(params only)",
                name,
                mean,
                f"{m['n']}/{c['expected']}",
                "" if m["min"] is None else f"{m['min'] * s:.4g}",
                "" if m["max"] is None else f"{m['max'] * s:.4g}",
                paper,
                "" if m["p_value"] is None else f"{m['p_value']:.3g}",
            )
    return table


def _show_results(api: ApiClient, sweep_id: str) -> None:
    """The results table, captioned with the spec's description (what its budget shows)."""
    res = api.json("GET", f"/v1/sweeps/{sweep_id}/results")
    spec = api.json("GET", f"/v1/sweeps/{sweep_id}").get("spec") or {}
    _console().print(_results_table(res, spec.get("description") or None))


def _end_code(state: str) -> int:
    return EXIT_OK if state == "finished" else EXIT_SWEEP_FAILED


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Run the service (settings from DAB_* environment variables; embedded Ray by default)."""
    import logging

    import uvicorn
    from pydantic import ValidationError

    from service.app import create_app
    from service.core.config import Settings

    try:
        settings = Settings()
    except ValidationError as e:  # a setting the service cannot start with: say which and why
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"])
            name = f"DAB_{where.upper()}: " if where else ""
            typer.echo(f"error: {name}{err['msg'].removeprefix('Value error, ')}", err=True)
        raise typer.Exit(EXIT_SETTINGS) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)


@app.command()
def submit(
    spec: Annotated[
        Path, typer.Argument(help="a sweep spec, or a suite file (YAML or JSON)", show_default=False)
    ],
    wait: Annotated[
        bool, typer.Option("--wait", help="follow progress until the sweep ends; then print results")
    ] = False,
    idempotency_key: Annotated[
        str | None, typer.Option(help="the same key and spec give the same sweep")
    ] = None,
    priority: Annotated[
        int, typer.Option(help="queued sweeps start highest priority first, then in submission order")
    ] = 0,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> None:
    """Submit SPEC to the service; prints the sweep id (exit 0), or follows it with --wait.

    A suite file (``include:`` a list of spec files) is sent as one suite: its members are
    read here and travel inline; the service previews what it will run, then queues them all.
    """
    api = _client(api_url)
    headers: dict[str, str] = {}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    params = {"priority": priority} if priority else {}
    suite = _as_suite(spec)
    if suite is not None:
        _submit_suite(api, suite, headers, params, wait)
        return
    body, kind = _spec_body(spec)
    sweep = api.json(
        "POST", "/v1/sweeps", content=body, headers={"Content-Type": kind, **headers}, params=params
    )
    typer.echo(sweep["id"])
    if wait:
        try:
            final = _wait(api, sweep["id"])
        except KeyboardInterrupt:
            _console(stderr=True).print(f"stopped waiting; the sweep goes on: dab status {sweep['id']}")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        _show_results(api, sweep["id"])
        raise typer.Exit(_end_code(final["state"]))


def _as_suite(path: Path) -> SweepSuite | None:
    """The suite `path` holds, with every member loaded; None for a sweep spec (or a file that
    does not load: the service's answer then says what is wrong with it)."""
    try:
        loaded = load_spec(path)
    except SpecError as e:
        if "include" in str(e.path) or "a suite" in e.message:
            _console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
            raise typer.Exit(EXIT_SPEC_ERROR) from None
        return None
    return loaded if isinstance(loaded, SweepSuite) else None


def _submit_suite(
    api: ApiClient, suite: SweepSuite, headers: dict[str, str], params: dict[str, Any], wait: bool
) -> None:
    from workers.spec import suite_document

    out = _console()
    doc = suite_document(suite)
    pre = api.json("POST", "/v1/suites/preview", json=doc)
    t = pre["total"]
    out.print(
        f"suite {escape(suite.name)}: {len(doc['members'])} members, {t['trials']} trials listed, "
        f"{t['distinct_trials']} distinct, {t['already_finished']} finished already: "
        f"[bold]{t['to_run']} trials to run[/]"
    )
    got = api.json("POST", "/v1/suites", json=doc, headers=headers, params=params)
    typer.echo(got["id"])
    for m in got["members"]:
        out.print(f"  {m['sweep_id']} {escape(m['file'])}: {m['state']} ({m['trial_count']} trials)")
    if wait:
        final = _wait_suite(api, got["id"])
        raise typer.Exit(_end_code(final["state"]))


def _wait_suite(api: ApiClient, suite_id: str, poll_s: float = 2.0) -> dict[str, Any]:
    """Poll the suite, a line whenever its state or members change, until every member ended."""
    import time

    out = _console()
    last = None
    while True:
        s = api.json("GET", f"/v1/suites/{suite_id}")
        line = f"{s['name']}: {s['state']} {s['progress'] * 100:.0f}% " + ", ".join(
            f"{m['file']} {m['state']}" for m in s["members"]
        )
        if line != last:
            out.print(escape(line))
            last = line
        if s["state"] in TERMINAL:
            return dict(s)
        time.sleep(poll_s)


@app.command()
def status(
    sweep_id: Annotated[
        str | None, typer.Argument(help="a sweep id (default: list sweeps)", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON")] = False,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> None:
    """A sweep's (or suite's) state, progress and links; without an id, the latest of both."""
    api = _client(api_url)
    out = _console()
    if sweep_id is not None and api.kind_of(sweep_id) == "suites":
        _suite_status(api, sweep_id, as_json)
        return
    if sweep_id is None:
        page = api.json("GET", "/v1/sweeps", params={"limit": 50})
        if as_json:
            typer.echo(json.dumps(page, indent=2))
            return
        table = Table(title=f"sweeps ({page['count']})", title_justify="left", box=box.SIMPLE_HEAD)
        for col in ("id", "name", "state", "trials", "created"):
            table.add_column(col)
        for s in page["data"]:
            table.add_row(
                s["id"],
                s["name"],
                s["state"],
                _counts_text(s.get("counts")) or str(s["trial_count"]),
                s["created_at"][:19],
            )
        out.print(table)
        suites = api.json("GET", "/v1/suites", params={"limit": 20})
        if suites["count"]:
            st = Table(title=f"suites ({suites['count']})", title_justify="left", box=box.SIMPLE_HEAD)
            for col in ("id", "name", "state", "members", "trials", "created"):
                st.add_column(col)
            for u in suites["data"]:
                st.add_row(
                    u["id"],
                    u["name"],
                    u["state"],
                    str(len(u["members"])),
                    f"{u['distinct_trials']} distinct of {u['trial_count']}",
                    u["created_at"][:19],
                )
            out.print(st)
        return
    s = api.json("GET", f"/v1/sweeps/{sweep_id}")
    if as_json:
        typer.echo(json.dumps(s, indent=2))
        return
    out.print(f"[bold]{escape(s['name'])}[/] {s['id']}: {s['state']} ({s['progress'] * 100:.0f}%)")
    out.print(f"trials: {s['trial_count']} in {s['cell_count']} cells; {_counts_text(s.get('counts'))}")
    if s.get("eta_s"):
        out.print(f"ETA: {s['eta_s']:.0f} s")
    if s.get("message"):
        out.print(f"message: {escape(s['message'])}")
    out.print(
        f"MLflow experiment: {s.get('mlflow_experiment_id')} ({s['links'].get('mlflow_experiment') or ''})"
    )
    out.print(f"MLflow UI: {s['links']['mlflow_ui_command']}", soft_wrap=True)


def _suite_status(api: ApiClient, suite_id: str, as_json: bool) -> None:
    s = api.json("GET", f"/v1/suites/{suite_id}")
    if as_json:
        typer.echo(json.dumps(s, indent=2))
        return
    out = _console()
    out.print(f"[bold]{escape(s['name'])}[/] suite {s['id']}: {s['state']} ({s['progress'] * 100:.0f}%)")
    out.print(
        f"trials: {s['trial_count']} listed, {s['distinct_trials']} distinct; {_counts_text(s.get('counts'))}"
    )
    table = Table(box=box.SIMPLE_HEAD)
    for col in ("member", "sweep", "state", "trials", "message"):
        table.add_column(col)
    for m in s["members"]:
        table.add_row(
            escape(m["file"]),
            m["sweep_id"],
            m["state"],
            _counts_text(m.get("counts")) or str(m["trial_count"]),
            escape(m.get("message") or ""),
        )
    out.print(table)
    out.print(f"MLflow: runs with {escape(s['links']['mlflow_runs_filter'])}", soft_wrap=True)


@app.command()
def cancel(
    sweep_id: Annotated[str, typer.Argument(help="a sweep or a suite id", show_default=False)],
    api_url: ApiUrl = DEFAULT_API_URL,
) -> None:
    """Cancel a sweep (its Ray job stops and its runs end KILLED), or every member of a suite."""
    api = _client(api_url)
    kind = api.kind_of(sweep_id)
    s = api.json("POST", f"/v1/{kind}/{sweep_id}/cancel")
    typer.echo(f"{s['id']}: {s['state']}")
    for m in s.get("members", []):
        typer.echo(f"  {m['sweep_id']} {m['file']}: {m['state']}")


@app.command()
def results(
    sweep_id: Annotated[str, typer.Argument(show_default=False)],
    metric: Annotated[
        list[str] | None, typer.Option(help="metric(s) to aggregate (default: the spec's)")
    ] = None,
    agg: Annotated[
        str | None, typer.Option(help="final or best value of each run (default: each metric's declared)")
    ] = None,
    reference: Annotated[str | None, typer.Option(help="cell the p-values compare against")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, json, csv or markdown")] = "table",
    api_url: ApiUrl = DEFAULT_API_URL,
) -> None:
    """Per cell: mean ± std, n, min, max, the paper's value and Welch's p against a reference."""
    if fmt not in ("table", "json", "csv", "markdown"):
        _console(stderr=True).print(
            f"[bold red]error:[/] --format is table, json, csv or markdown, not {escape(fmt)!r}"
        )
        raise typer.Exit(EXIT_SPEC_ERROR)
    params: dict[str, Any] = {"format": "json" if fmt == "table" else fmt}
    if agg:
        params["agg"] = agg
    if metric:
        params["metric"] = metric
    if reference:
        params["reference"] = reference
    r = _client(api_url).request("GET", f"/v1/sweeps/{sweep_id}/results", params=params)
    if fmt == "table":
        _console().print(_results_table(r.json()))
    else:
        typer.echo(r.text.rstrip("\n"))


@app.command()
def report(
    sweep_id: Annotated[str, typer.Argument(show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="directory for report.md and the figures")] = Path(
        "report"
    ),
    api_url: ApiUrl = DEFAULT_API_URL,
) -> None:
    """Write the paper-style report (Markdown tables, PNG figures) of a sweep, or of a whole
    suite (every paper table and figure its members cover, plus report.json), to --out."""
    api = _client(api_url)
    kind = api.kind_of(sweep_id)
    rep = api.json("GET", f"/v1/{kind}/{sweep_id}/report", timeout=300)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(rep["markdown"], encoding="utf-8")
    if "data" in rep:
        (out / "report.json").write_text(json.dumps(rep["data"], indent=2), encoding="utf-8")
    for fig in rep["figures"]:
        (out / fig["name"]).write_bytes(
            api.request("GET", f"/v1/{kind}/{sweep_id}/report/figures/{fig['name']}").content
        )
    typer.echo(f"wrote {out / 'report.md'} and {len(rep['figures'])} figure(s)")
    if rep.get("artifact_path"):
        typer.echo(f"logged to MLflow: {rep['artifact_path']}")


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="a sweep spec (YAML or JSON)", show_default=False)],
    new: Annotated[bool, typer.Option("--new", help="a new sweep even if this spec ran before")] = False,
) -> None:
    """One shot: start the embedded stack, submit SPEC over REST, show progress, print results.

    Running the same spec again returns the same sweep (its Idempotency-Key is the spec's hash):
    a finished one prints its table at once; an interrupted one resumes where it stopped.
    """
    import hashlib
    import uuid

    from service.app import create_app
    from service.core.config import Settings
    from service.server import ThreadedServer

    body, kind = _spec_body(spec)
    try:  # spec mistakes before anything starts
        loaded = load_spec(spec)
    except SpecError as e:
        _console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(EXIT_SPEC_ERROR) from None
    if isinstance(loaded, SweepSuite):
        _console(stderr=True).print(
            "[bold red]error:[/] a suite: start the service (dab serve) and `dab submit` it, "
            "which queues its members and runs a trial they share once"
        )
        raise typer.Exit(EXIT_SPEC_ERROR)
    out = _console()
    settings = Settings()
    srv = ThreadedServer(create_app(settings))
    out.print(f"starting the embedded stack under {settings.state_path} (Ray, MLflow on SQLite) ...")
    api = ApiClient(srv.url, settings.api_token.get_secret_value() if settings.api_token else None)
    code = EXIT_OK
    try:
        srv.start()
        try:
            srv.wait_healthy(settings.ray_start_timeout_s + 60)
        except (RuntimeError, TimeoutError) as e:
            _console(stderr=True).print(
                f"[bold red]error:[/] the embedded stack did not start: {escape(str(e))}"
            )
            raise typer.Exit(EXIT_API) from None
        key = uuid.uuid4().hex if new else "dab-run-" + hashlib.sha256(body).hexdigest()[:32]
        sweep = api.json(
            "POST", "/v1/sweeps", content=body, headers={"Content-Type": kind, "Idempotency-Key": key}
        )
        out.print(
            f"sweep {sweep['id']} ({sweep['name']}): {sweep['trial_count']} trials in {sweep['cell_count']} cells"
        )
        final = _wait(api, sweep["id"])
        if final.get("message") and final["state"] != "finished":
            out.print(f"{final['state']}: {escape(final['message'])}")
        _show_results(api, sweep["id"])
        out.print(f"MLflow UI on the same store:\n  {final['links']['mlflow_ui_command']}", soft_wrap=True)
        code = _end_code(final["state"])
    except KeyboardInterrupt:
        _console(stderr=True).print("interrupted: stopping (run the same command again to resume the sweep)")
        code = EXIT_INTERRUPTED
    finally:
        srv.stop()
    raise typer.Exit(code)


__all__ = ["app"]

if __name__ == "__main__":
    app()
