"""The suites API: submit (members inline), preview, list, get, cancel, report."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from service.api.deps import StateDep
from service.api.http import IdempotencyKey, Priority, conditional
from service.api.schemas import SuitePublic, SuiteReportPublic, SuitesPublic
from service.specs import check_suite

router = APIRouter(prefix="/v1/suites", tags=["suites"])

_SUITE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "a suite: {name, description, members: [{file, spec}]}, each spec a sweep spec "
        "(docs/configs.md); JSON or YAML. `dab submit suite.yaml` resolves a suite file's include "
        "paths and sends this.",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["name", "members"],
                    "properties": {
                        "name": {"type": "string"},
                        "description": {"type": "string"},
                        "members": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["file", "spec"],
                                "properties": {
                                    "file": {"type": "string"},
                                    "spec": {"$ref": "#/components/schemas/SweepSpec"},
                                },
                            },
                        },
                    },
                }
            },
            "application/yaml": {"schema": {"type": "string"}},
        },
    }
}


@router.post("", status_code=202, response_model=SuitePublic, openapi_extra=_SUITE_BODY)
async def submit_suite(
    request: Request,
    response: Response,
    state: StateDep,
    priority: Priority = 0,
    idempotency_key: IdempotencyKey = None,
) -> SuitePublic:
    """Submit a suite: every member validated, stored and queued as a sweep in one transaction;
    they start as driver slots free, and a trial two members share runs once."""
    body = await request.body()
    checked = await run_in_threadpool(check_suite, body, request.headers.get("content-type"), state.settings)
    suite, created = await run_in_threadpool(
        state.manager.create_suite,
        checked.suite.name,
        checked.suite.description,
        checked.members,
        checked.spec_hash,
        idempotency_key,
        priority,
    )
    response.headers["Location"] = f"/v1/suites/{suite.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return await run_in_threadpool(state.manager.suites.get, suite.id, str(request.base_url))


@router.post("/preview", openapi_extra=_SUITE_BODY)
async def preview_suite(request: Request, state: StateDep) -> dict[str, Any]:
    """What the suite expands to, without running it: per member and in total, with the trials
    two members share counted once and those this service has finished already."""
    from workers.spec import preview

    body = await request.body()
    checked = await run_in_threadpool(check_suite, body, request.headers.get("content-type"), state.settings)
    summary = await run_in_threadpool(preview, checked.suite)
    done = await run_in_threadpool(state.manager.finished_elsewhere, checked.trial_keys)
    summary["total"]["already_finished"] = done
    summary["total"]["to_run"] = summary["total"]["distinct_trials"] - done
    summary["limits"]["max_trials_per_sweep"] = state.settings.max_trials_per_sweep
    return summary


@router.get("", response_model=SuitesPublic)
def list_suites(
    request: Request,
    state: StateDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> SuitesPublic:
    return state.manager.suites.list(limit, offset, str(request.base_url))


@router.get("/{suite_id}", response_model=SuitePublic)
def get_suite(suite_id: str, request: Request, state: StateDep) -> SuitePublic:
    """State, progress and counts from the members, and each member."""
    return state.manager.suites.get(suite_id, str(request.base_url))


@router.post("/{suite_id}/cancel", status_code=202, response_model=SuitePublic)
def cancel_suite(suite_id: str, request: Request, state: StateDep) -> SuitePublic:
    """Cancel every member that has not ended: queued ones never start, running ones stop."""
    state.manager.cancel_suite(suite_id)
    return state.manager.suites.get(suite_id, str(request.base_url))


@router.get(
    "/{suite_id}/report",
    response_model=SuiteReportPublic,
    responses={200: {"content": {"text/markdown": {}}}},
)
def get_suite_report(
    suite_id: str,
    request: Request,
    state: StateDep,
    format: Annotated[Literal["json", "markdown"], Query()] = "json",
) -> Response:
    """Every paper table and figure the members cover, beside the paper's numbers, with n per
    cell and incomplete cells marked. Stored and logged to the suite's MLflow run once every
    member has ended; computed from MLflow while they run."""
    suites = state.manager.suites
    if format == "markdown":
        return conditional(
            request, suites.report(suite_id)["markdown"].encode(), "text/markdown; charset=utf-8"
        )
    body = suites.report_public(suite_id, str(request.base_url)).model_dump_json().encode()
    return conditional(request, body, "application/json")


@router.get("/{suite_id}/report/figures/{name}", responses={200: {"content": {"image/png": {}}}})
def get_suite_figure(suite_id: str, name: str, request: Request, state: StateDep) -> Response:
    from service.core.errors import NotFoundError

    figures = state.manager.suites.report(suite_id)["figures"]
    if name not in figures:
        raise NotFoundError(
            f"no figure {name!r} in this suite's report; figures: {', '.join(figures) or 'none'}",
            field="name",
        )
    return conditional(request, figures[name], "image/png")
