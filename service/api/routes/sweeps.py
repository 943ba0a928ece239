"""The sweeps API: submit, preview, list, get, trials, cancel, results, report."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from service.api.deps import ReadsDep, StateDep
from service.api.http import IdempotencyKey, Priority, conditional
from service.api.schemas import (
    ReportPublic,
    ResultsPublic,
    SweepDetail,
    SweepPublic,
    SweepsPublic,
    SweepState,
    TrialsPublic,
    TrialState,
)
from service.queries import as_public
from service.specs import check_spec
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


@router.post("", status_code=202, response_model=SweepPublic, openapi_extra=_SPEC_BODY)
async def submit_sweep(
    request: Request,
    response: Response,
    state: StateDep,
    priority: Priority = 0,
    idempotency_key: IdempotencyKey = None,
) -> SweepPublic:
    """Submit a sweep: validated, expanded, stored and queued; its driver is submitted as a Ray
    Job when a driver slot is free (at once, if one is)."""
    body = await request.body()
    checked = await run_in_threadpool(check_spec, body, request.headers.get("content-type"), state.settings)
    sweep, created = await run_in_threadpool(state.manager.create, checked, idempotency_key, priority)
    response.headers["Location"] = f"/v1/sweeps/{sweep.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return as_public(sweep)


@router.post("/preview", openapi_extra=_SPEC_BODY)
async def preview_sweep(request: Request, state: StateDep) -> dict[str, Any]:
    """What the spec expands to, without running it: trials, cells, replicates, resources, and
    how many of its trials this service has finished already (they would be adopted)."""
    body = await request.body()
    checked = await run_in_threadpool(check_spec, body, request.headers.get("content-type"), state.settings)
    summary = await run_in_threadpool(preview_spec, checked.spec)
    done = await run_in_threadpool(state.manager.finished_elsewhere, [t.trial_key for t in checked.trials])
    summary["total"]["already_finished"] = done
    summary["total"]["to_run"] = summary["total"]["distinct_trials"] - done
    summary["limits"]["max_trials_per_sweep"] = state.settings.max_trials_per_sweep
    return summary


@router.get("", response_model=SweepsPublic)
def list_sweeps(
    reads: ReadsDep,
    state: Annotated[list[SweepState] | None, Query(description="only sweeps in these states")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> SweepsPublic:
    return reads.sweeps(state, limit, offset)


@router.get("/{sweep_id}", response_model=SweepDetail)
async def get_sweep(sweep_id: str, request: Request, reads: ReadsDep) -> Response:
    """State, trials by state, progress, ETA, last error and links (MLflow experiment included),
    as the reconciler last wrote them (``snapshot_at``)."""
    sweep = reads.sweep(sweep_id)
    detail = reads.detail(sweep, str(request.base_url))
    stamp = f"{sweep.id}-{sweep.updated_at.timestamp()}-{request.base_url}"
    return conditional(request, detail.model_dump_json().encode(), "application/json", _hash(stamp))


def _hash(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


@router.get("/{sweep_id}/trials", response_model=TrialsPublic)
def list_trials(
    sweep_id: str,
    reads: ReadsDep,
    trial_state: Annotated[list[TrialState] | None, Query(alias="state")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> TrialsPublic:
    """Per trial: state, attempts, steps done, latest metrics and its MLflow run."""
    return reads.trials(sweep_id, trial_state, limit, offset)


@router.post("/{sweep_id}/cancel", status_code=202, response_model=SweepPublic)
def cancel_sweep(sweep_id: str, state: StateDep) -> SweepPublic:
    """Stop the sweep's Ray job; its driver ends every open run KILLED."""
    return as_public(state.manager.cancel(sweep_id))


@router.get(
    "/{sweep_id}/results",
    response_model=ResultsPublic,
    responses={200: {"content": {"text/csv": {}, "text/markdown": {}}}},
)
def get_results(
    sweep_id: str,
    request: Request,
    reads: ReadsDep,
    metric: Annotated[
        list[str] | None,
        Query(description="metrics to aggregate (default: the spec's)", max_length=50),
    ] = None,
    agg: Annotated[
        Literal["final", "best"] | None,
        Query(description="each run's last value, or its best (default: as each metric declares)"),
    ] = None,
    reference: Annotated[
        str | None,
        Query(description="cell_key the p-values compare against (default: the first cell)", max_length=2000),
    ] = None,
    include_stopped: Annotated[
        bool,
        Query(
            description="a search: also the configurations its scheduler stopped early (default: left out)"
        ),
    ] = False,
    format: Annotated[Literal["json", "csv", "markdown"], Query()] = "json",
) -> Response:
    """Per cell: n, mean, std, min, max of the chosen metrics, the paper's value, Welch's p."""
    from service.results import to_csv, to_markdown

    body = reads.results(sweep_id, metric, agg, reference, include_stopped)
    if format == "csv":
        return conditional(request, to_csv(json.loads(body)).encode(), "text/csv; charset=utf-8")
    if format == "markdown":
        return conditional(request, to_markdown(json.loads(body)).encode(), "text/markdown; charset=utf-8")
    return conditional(request, body.encode(), "application/json")


@router.get(
    "/{sweep_id}/report", response_model=ReportPublic, responses={200: {"content": {"text/markdown": {}}}}
)
def get_report(
    sweep_id: str,
    request: Request,
    reads: ReadsDep,
    format: Annotated[Literal["json", "markdown"], Query()] = "json",
) -> Response:
    """Paper-style tables (Markdown) and figures (PNG). Stored, and logged on the parent run,
    once the sweep has ended; computed from MLflow (and written nowhere) while it runs."""
    if format == "markdown":
        return conditional(
            request, reads.report(sweep_id)["markdown"].encode(), "text/markdown; charset=utf-8"
        )
    body = reads.report_public(sweep_id, str(request.base_url)).model_dump_json().encode()
    return conditional(request, body, "application/json")


@router.get("/{sweep_id}/report/figures/{name}", responses={200: {"content": {"image/png": {}}}})
def get_report_figure(sweep_id: str, name: str, request: Request, reads: ReadsDep) -> Response:
    return conditional(request, reads.figure(sweep_id, name), "image/png")
