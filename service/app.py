"""The ASGI app: `create_app(settings)` builds it; its lifespan owns the database, the embedded
Ray head and the reconciler thread.

    uvicorn --factory service.app:create_app      # or: dab serve --host --port
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import AppState, require_token
from service.api.routes import health, suites, sweeps
from service.core.config import Settings
from service.core.errors import PayloadTooLargeError, error_response, install_error_handlers
from service.db.session import make_engine, session_factory, upgrade
from service.manager import SweepManager
from workers.spec import SweepSpec

log = logging.getLogger("service")


@dataclass
class Telemetry:
    registry: Any
    requests: Any
    latency: Any
    sweeps: Any

    @classmethod
    def create(cls) -> Telemetry:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        registry = CollectorRegistry()  # one per app: tests build several apps in one process
        return cls(
            registry=registry,
            requests=Counter(
                "dab_http_requests", "HTTP requests", ["method", "route", "status"], registry=registry
            ),
            latency=Histogram(
                "dab_http_request_seconds",
                "HTTP request latency",
                ["method", "route"],
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                registry=registry,
            ),
            sweeps=Gauge("dab_sweeps", "sweeps by state", ["state"], registry=registry),
        )


class BodyLimitMiddleware:
    """Refuses (413) a request body over `limit` bytes, by Content-Length or as it streams."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLargeError(
            f"the request body is over {self.limit:,} bytes (DAB_MAX_BODY_BYTES)", field="body"
        )
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    if int(value) > self.limit:
                        await error_response(413, too_large.to_dict())(scope, receive, send)
                        return
                except ValueError:
                    pass
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await error_response(413, too_large.to_dict())(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class TelemetryMiddleware:
    def __init__(self, app: ASGIApp, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.telemetry.requests.labels(scope["method"], path, str(status)).inc()
            self.telemetry.latency.labels(scope["method"], path).observe(time.perf_counter() - start)


def freeze_heap() -> None:
    """Move every object alive now out of the garbage collector's view (`gc.freeze`).

    The service imports MLflow, SQLAlchemy, FastAPI and Ray's client: some 290,000 long-lived
    objects that every full collection walks again, a 130 ms stall of the event loop measured
    here (gc.callbacks). The reconciler's allocations set off such collections while clients
    poll, and they were the hot reads' p99 (docs/service.md, Benchmark: with and without).
    Called once the heavy imports are done, and again after Ray's client is imported.
    """
    gc.collect()
    gc.freeze()


def create_app(settings: Settings | None = None, *, start_ray: bool = True) -> FastAPI:
    """The service. `start_ray=False` runs the API and the database only (sweeps stay queued)."""
    settings = settings or Settings()
    telemetry = Telemetry.create()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.state_path.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.db_url)
        upgrade(engine)
        sessions = session_factory(engine)
        manager = SweepManager(settings, sessions)
        state = AppState(
            settings=settings,
            engine=engine,
            sessions=sessions,
            manager=manager,
            start_ray=start_ray,
            telemetry=telemetry,
        )
        app.state.dab = state
        import mlflow.tracking  # noqa: F401  (the reads need it: imported before freezing)

        freeze_heap()
        stop = threading.Event()
        threads: list[threading.Thread] = []
        if start_ray:

            def run() -> None:
                # A cluster's head may come up after the service (or be restarting): keep trying,
                # with /healthz saying why meanwhile. The embedded head fails for reasons a
                # retry does not cure (missing packages, no free port): once is enough.
                delay = 1.0
                while True:
                    try:
                        manager.start()
                        break
                    except Exception:
                        if settings.embedded or stop.wait(delay):
                            return
                        delay = min(delay * 2, 30.0)
                freeze_heap()  # again, with Ray's client imported
                manager.reconcile_all()  # at start: every unfinished sweep against its job
                manager.run_reconciler(stop)

            t = threading.Thread(target=run, name="dab-reconciler", daemon=True)
            t.start()
            threads.append(t)
        try:
            yield
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=settings.ray_start_timeout_s + 30)
            manager.shutdown()
            engine.dispose()
            gc.unfreeze()  # collectable again (tests run many apps in one process)

    app = FastAPI(
        title="DAB Sweeps",
        version="0.1.0",
        description="Sweeps of the DAB paper's experiment grids on Ray Tune, tracked in MLflow; "
        "results as paper tables (mean ± std over seeds).",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(sweeps.router, dependencies=[Depends(require_token)])
    app.include_router(suites.router, dependencies=[Depends(require_token)])
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(TelemetryMiddleware, telemetry=telemetry)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            spec_schema = SweepSpec.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in spec_schema.pop("$defs", {}).items():
                schema["components"]["schemas"].setdefault(name, sub)
            schema["components"]["schemas"]["SweepSpec"] = spec_schema
            schema["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "DAB_API_TOKEN, when set"}
            }
            for path, ops in schema["paths"].items():
                if path.startswith("/v1/"):
                    for op in ops.values():
                        op["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


__all__ = ["create_app"]
