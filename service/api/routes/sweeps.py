"""The sweeps API: submit, preview, list, get, trials, cancel, results, report."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import PlainTextResponse

from service import crud
from service.api.deps import SessionDep, StateDep
from service.api.fastpath import read_key
from service.api.schemas import (
    FigureLink,
    Links,
    ReportPublic,
    ResultsPublic,
    SweepDetail,
    SweepPublic,
    SweepsPublic,
    SweepState,
    TrialPublic,
    TrialsPublic,
    TrialState,
)
from service.core.errors import InvalidRequestError, NotFoundError
from service.db.models import TERMINAL_STATES, Sweep
from service.manager import elapsed_s
from service.results import compute_results, to_csv, to_markdown, trial_runs
from service.specs import check_spec
from workers.spec import SweepSpec
from workers.spec import preview as preview_spec

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"])  # the full path: /metrics labels by it


_SPEC_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "the sweep spec (docs/configs.md), as JSON or as YAML",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SweepSpec"}},
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


async def _body(request: Request) -> bytes:
    return await request.body()


def _public(sweep: Sweep) -> SweepPublic:
    return SweepPublic(
        id=sweep.id,
        name=sweep.name,
        experiment=sweep.experiment,
        state=sweep.state,  # type: ignore[arg-type]
        trial_count=sweep.trial_count,
        cell_count=sweep.cell_count,
        created_at=crud.as_utc(sweep.created_at),  # type: ignore[arg-type]
        started_at=crud.as_utc(sweep.started_at),
        finished_at=crud.as_utc(sweep.finished_at),
        message=sweep.message,
        counts=sweep.counts,
    )


@router.post("", status_code=202, response_model=SweepPublic, openapi_extra=_SPEC_BODY)
async def submit_sweep(
    request: Request,
    response: Response,
    state: StateDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=200,
            pattern=r"^[\x21-\x7e]+$",
            description="the same key and body return the same sweep; another body is a 409",
        ),
    ] = None,
) -> SweepPublic:
    """Submit a sweep: validated, expanded, stored, and its driver submitted as a Ray Job."""
    from starlette.concurrency import run_in_threadpool

    body = await _body(request)
    checked = await run_in_threadpool(check_spec, body, request.headers.get("content-type"), state.settings)
    sweep, created = await run_in_threadpool(state.manager.create, checked, idempotency_key)
    response.headers["Location"] = f"/v1/sweeps/{sweep.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return _public(sweep)


@router.post("/preview", openapi_extra=_SPEC_BODY)
async def preview_sweep(request: Request, state: StateDep) -> dict[str, Any]:
    """What the spec expands to, without running it: trials, cells, replicates, resources."""
    from starlette.concurrency import run_in_threadpool

    body = await _body(request)
    checked = await run_in_threadpool(check_spec, body, request.headers.get("content-type"), state.settings)
    summary = await run_in_threadpool(preview_spec, checked.spec)
    summary["limits"]["max_trials_per_sweep"] = state.settings.max_trials_per_sweep
    return summary


@router.get("", response_model=SweepsPublic)
def list_sweeps(
    session: SessionDep,
    state: Annotated[list[SweepState] | None, Query(description="only sweeps in these states")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> SweepsPublic:
    rows, count = crud.list_sweeps(session, states=state, limit=limit, offset=offset)
    return SweepsPublic(data=[_public(r) for r in rows], count=count)


def _progress(state: Any, sweep: Sweep, status: dict[str, Any] | None) -> tuple[float, dict[str, int] | None]:
    if status is None:
        return (1.0 if sweep.state == "finished" else 0.0), sweep.counts
    trials = status.get("trials", {})
    total = len(trials) or sweep.trial_count
    _, expanded = state.manager.trials.get(sweep.id, sweep.spec)
    steps = {t.trial_key: t.config.get("steps") for t in expanded}
    done = 0.0
    for key, t in trials.items():
        if t.get("state") in ("finished", "skipped", "failed"):
            done += 1
        elif t.get("last_step") and steps.get(key):
            done += min(1.0, float(t["last_step"]) / float(steps[key]))
    return (done / total if total else 0.0), status.get("counts") or sweep.counts


def _links(state: Any, sweep: Sweep, request_base: str) -> Links:
    base = f"{request_base}v1/sweeps/{sweep.id}"
    exp = sweep.mlflow_experiment_id
    ui = state.settings.mlflow_ui_url
    return Links(
        self=base,
        trials=f"{base}/trials",
        results=f"{base}/results",
        report=f"{base}/report",
        cancel=f"{base}/cancel",
        mlflow_experiment=f"{ui.rstrip('/')}/#/experiments/{exp}"
        if ui and exp
        else (f"experiment {exp}" if exp else None),
        mlflow_ui_command=state.settings.mlflow_ui_command(),
    )


#: How long a running sweep's answers may be served from the response cache (seconds).
ACTIVE_TTL_S = 1.0


def _json(model: Any) -> bytes:
    return (
        model.model_dump_json().encode() if hasattr(model, "model_dump_json") else json.dumps(model).encode()
    )


@router.get("/{sweep_id}", response_model=SweepDetail)
async def get_sweep(sweep_id: str, request: Request, state: StateDep) -> Response:
    """State, trials by state, progress, ETA, and links (MLflow experiment included)."""
    base = str(request.base_url)

    def compute() -> tuple[tuple[bytes, str], float | None]:
        with state.sessions() as session:
            sweep = crud.get_sweep(session, sweep_id)
        detail = _detail(state, sweep, base)
        return (_json(detail), "application/json"), (None if sweep.state in TERMINAL_STATES else ACTIVE_TTL_S)

    body, media = await state.responses.get(read_key(request.scope, "sweep", sweep_id), compute)
    return Response(body, media_type=media)


def _detail(state: Any, sweep: Sweep, base: str) -> SweepDetail:
    status = state.manager.status.read(sweep.sweep_dir)
    progress, counts = _progress(state, sweep, status)
    elapsed = elapsed_s(sweep.started_at, sweep.finished_at)
    eta = None
    if sweep.state == "running" and elapsed and 0 < progress < 1:
        eta = elapsed * (1 - progress) / progress
    exp_id = sweep.mlflow_experiment_id or (status or {}).get("experiment_id")
    parent = sweep.parent_run_id or (status or {}).get("parent_run_id")
    sweep.mlflow_experiment_id = exp_id
    detail = _public(sweep).model_dump()
    detail["counts"] = counts
    return SweepDetail(
        **detail,
        progress=round(progress, 4),
        eta_s=None if eta is None else round(eta, 1),
        elapsed_s=None if elapsed is None else round(elapsed, 1),
        ray_job_id=sweep.ray_job_id,
        job_attempts=sweep.job_attempts,
        mlflow_experiment_id=exp_id,
        parent_run_id=parent,
        tracking_uri=state.settings.tracking_uri,
        spec=sweep.spec,
        links=_links(state, sweep, base),
    )


def _runs(state: Any, sweep: Sweep, exp_id: str | None) -> dict[str, Any]:
    if not exp_id:
        return {}
    ttl = None if sweep.state in TERMINAL_STATES else 2.0
    return state.cache.get(
        ("runs", sweep.id, sweep.state),
        ttl,
        lambda: trial_runs(state.mlflow_client(), str(exp_id), sweep.id),
    )


def _experiment_id(state: Any, sweep: Sweep) -> str | None:
    if sweep.mlflow_experiment_id:
        return sweep.mlflow_experiment_id
    status = state.manager.status.read(sweep.sweep_dir)
    return (status or {}).get("experiment_id")


@router.get("/{sweep_id}/trials", response_model=TrialsPublic)
def list_trials(
    sweep_id: str,
    session: SessionDep,
    state: StateDep,
    trial_state: Annotated[list[TrialState] | None, Query(alias="state")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> TrialsPublic:
    """Per trial: state, attempts, steps done, latest metrics and its MLflow run."""
    sweep = crud.get_sweep(session, sweep_id)
    status = state.manager.status.read(sweep.sweep_dir) or {}
    _, trials = state.manager.trials.get(sweep.id, sweep.spec)
    runs = _runs(state, sweep, _experiment_id(state, sweep))
    st = status.get("trials", {})
    out = []
    for t in trials:
        s = st.get(t.trial_key, {})
        run = runs.get(t.trial_key)
        tstate = s.get("state") or ("finished" if run is not None and run.status == "FINISHED" else "pending")
        if trial_state and tstate not in trial_state:
            continue
        metrics = {
            k: v
            for k, v in (run.metrics if run else {}).items()
            if isinstance(v, float | int) and math.isfinite(v)
        }
        out.append(
            TrialPublic(
                trial_key=t.trial_key,
                index=t.index,
                cell_key=t.cell_key,
                seed=t.seed,
                state=tstate,  # type: ignore[arg-type]
                attempts=int(s.get("attempts") or 0),
                last_step=s.get("last_step"),
                steps=t.config.get("steps"),
                run_id=(run.run_id if run else None) or s.get("run_id"),
                run_status=run.status if run else None,
                metrics=metrics,
                error=s.get("error"),
            )
        )
    return TrialsPublic(data=out[offset : offset + limit], count=len(out))


@router.post("/{sweep_id}/cancel", status_code=202, response_model=SweepPublic)
def cancel_sweep(sweep_id: str, state: StateDep) -> SweepPublic:
    """Stop the sweep's Ray job; its driver ends every open run KILLED."""
    state.responses.invalidate(sweep_id)
    try:
        return _public(state.manager.cancel(sweep_id))
    finally:
        state.responses.invalidate(sweep_id)


def _results(
    state: Any, sweep: Sweep, metrics: list[str], agg: Literal["final", "best"] | None, reference: str | None
) -> tuple[SweepSpec, list[Any], dict[str, Any], dict[str, Any]]:
    spec, trials = state.manager.trials.get(sweep.id, sweep.spec)
    cells = {t.cell_key for t in trials}
    if reference is not None and reference not in cells:
        raise InvalidRequestError(
            f"reference {reference!r} is not a cell of this sweep; cells: {', '.join(sorted(cells))}",
            field="reference",
        )
    exp_id = _experiment_id(state, sweep)
    runs = _runs(state, sweep, exp_id)
    known = {k for r in runs.values() for k in r.metrics}
    unknown = [m for m in metrics if known and m not in known]
    if unknown:
        raise InvalidRequestError(
            f"no trial of this sweep reports {unknown[0]!r}; metrics: {', '.join(sorted(known))}",
            field="metric",
        )

    def history(run_id: str, metric: str) -> list[float]:
        return [m.value for m in state.mlflow_client().get_metric_history(run_id, metric)]

    ttl = None if sweep.state in TERMINAL_STATES else 2.0
    key = ("results", sweep.id, sweep.state, tuple(metrics), agg, reference)
    res = state.cache.get(
        key,
        ttl,
        lambda: compute_results(
            spec, trials, runs, metrics=metrics, agg=agg, reference=reference, history=history
        ),
    )
    return spec, trials, runs, res


@router.get(
    "/{sweep_id}/results",
    response_model=ResultsPublic,
    responses={200: {"content": {"text/csv": {}, "text/markdown": {}}}},
)
async def get_results(
    sweep_id: str,
    request: Request,
    state: StateDep,
    metric: Annotated[
        list[str] | None,
        Query(description="metrics to aggregate (default: the spec's)", max_length=50),
    ] = None,
    agg: Annotated[
        Literal["final", "best"] | None,
        Query(description="each run's last value, or its best (default: each metric's declared agg)"),
    ] = None,
    reference: Annotated[
        str | None,
        Query(description="cell_key the p-values compare against (default: the first cell)", max_length=2000),
    ] = None,
    format: Annotated[Literal["json", "csv", "markdown"], Query()] = "json",
) -> Response:
    """Per cell: n, mean, std, min, max of the chosen metrics, the paper's value, Welch's p."""

    def compute() -> tuple[tuple[bytes, str], float | None]:
        with state.sessions() as session:
            sweep = crud.get_sweep(session, sweep_id)
        _, _, _, res = _results(state, sweep, metric or [spec_metric(sweep)], agg, reference)
        ttl = None if sweep.state in TERMINAL_STATES else ACTIVE_TTL_S
        if format == "csv":
            return (to_csv(res).encode(), "text/csv; charset=utf-8"), ttl
        if format == "markdown":
            return (to_markdown(res).encode(), "text/markdown; charset=utf-8"), ttl
        return (_json({"sweep_id": sweep.id, "state": sweep.state, **res}), "application/json"), ttl

    body, media = await state.responses.get(read_key(request.scope, "results", sweep_id), compute)
    return Response(body, media_type=media)


def spec_metric(sweep: Sweep) -> str:
    return str(sweep.spec.get("metric") or "")


@router.get(
    "/{sweep_id}/report", response_model=ReportPublic, responses={200: {"content": {"text/markdown": {}}}}
)
def get_report(
    sweep_id: str,
    request: Request,
    session: SessionDep,
    state: StateDep,
    format: Annotated[Literal["json", "markdown"], Query()] = "json",
) -> Any:
    """Paper-style tables (Markdown) and figures (PNG), also logged on the parent run."""
    sweep = crud.get_sweep(session, sweep_id)
    report = _report(state, sweep)
    if format == "markdown":
        return PlainTextResponse(report["markdown"], media_type="text/markdown")
    base = f"{request.base_url}v1/sweeps/{sweep.id}/report/figures"
    return ReportPublic(
        sweep_id=sweep.id,
        markdown=report["markdown"],
        figures=[FigureLink(name=n, url=f"{base}/{n}") for n in report["figures"]],
        artifact_path=report["artifact_path"],
    )


@router.get("/{sweep_id}/report/figures/{name}", responses={200: {"content": {"image/png": {}}}})
def get_report_figure(sweep_id: str, name: str, session: SessionDep, state: StateDep) -> Response:
    sweep = crud.get_sweep(session, sweep_id)
    figures = _report(state, sweep)["figures"]
    if name not in figures:
        raise NotFoundError(
            f"no figure {name!r} in this sweep's report; figures: {', '.join(figures) or 'none'}",
            field="name",
        )
    return Response(figures[name], media_type="image/png")


def _report(state: Any, sweep: Sweep) -> dict[str, Any]:
    from service.report import build_report

    def compute() -> dict[str, Any]:
        spec, trials = state.manager.trials.get(sweep.id, sweep.spec)
        runs = _runs(state, sweep, _experiment_id(state, sweep))

        def history(run_id: str, metric: str) -> list[tuple[float, float]]:
            hist = state.mlflow_client().get_metric_history(run_id, metric)
            return sorted((float(m.step), m.value) for m in hist)

        markdown, figures = build_report(sweep.id, spec, trials, runs, history)
        artifact_path = None
        parent = sweep.parent_run_id or (state.manager.status.read(sweep.sweep_dir) or {}).get(
            "parent_run_id"
        )
        if parent and sweep.state in TERMINAL_STATES:
            with tempfile.TemporaryDirectory() as tmp:
                d = Path(tmp)
                (d / "report.md").write_text(markdown)
                for n, png in figures.items():
                    (d / n).write_bytes(png)
                state.mlflow_client().log_artifacts(parent, str(d), "report")
            artifact_path = f"runs:/{parent}/report"
        return {"markdown": markdown, "figures": figures, "artifact_path": artifact_path}

    ttl = None if sweep.state in TERMINAL_STATES else 5.0
    return state.cache.get(("report", sweep.id, sweep.state), ttl, compute)  # type: ignore[no-any-return]
