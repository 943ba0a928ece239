"""``/healthz`` and ``/metrics`` (Prometheus text)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from service import crud
from service.api.deps import StateDep
from service.api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
def healthz(state: StateDep) -> JSONResponse:
    """ok: the database answers and Ray is connected; starting: Ray is not up yet; degraded:
    Ray failed to start or the database does not answer (503)."""
    try:
        with state.sessions() as s:
            s.execute(text("SELECT 1"))
    except Exception as e:
        return JSONResponse(
            Health(status="degraded", detail=f"database: {type(e).__name__}").model_dump(), 503
        )
    m = state.manager
    if m.start_error:
        return JSONResponse(Health(status="degraded", detail=m.start_error).model_dump(), 503)
    if not state.start_ray:
        return JSONResponse(Health(status="ok", detail="Ray is not started (API only)").model_dump(), 200)
    if not m.ready.is_set():
        return JSONResponse(Health(status="starting", detail="Ray is starting").model_dump(), 200)
    return JSONResponse(Health(status="ok", ray=m.jobs.address if m.jobs else None).model_dump(), 200)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(state: StateDep) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    with state.sessions() as s:
        by_state = crud.count_by_state(s)
    telemetry = state.telemetry
    for name in ("queued", "running", "cancelling", "finished", "failed", "cancelled"):
        telemetry.sweeps.labels(state=name).set(by_state.get(name, 0))
    return Response(generate_latest(telemetry.registry), media_type=CONTENT_TYPE_LATEST)
