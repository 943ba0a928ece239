"""The hot reads' fast path: GETs answered from the response cache before routing.

``GET /v1/sweeps/{id}`` and ``GET /v1/sweeps/{id}/results`` are what dashboards, notebooks
and ``dab run`` poll. Their handlers render through `AppState.responses` under a key made of
the request target (`read_key`). `CachedReads`, an ASGI middleware in front of the router,
answers a request whose key the cache already holds with that same body, and so skips
FastAPI's routing, parameter validation and dependency resolution: about three quarters of a
cached request's CPU (docs/service.md, Benchmark).

Everything else goes to the app as before: a key not rendered yet, a bad query (never cached:
only a handler's successful answers are), a missing or wrong token (the app answers 401/403),
any other method or route.
"""

from __future__ import annotations

import hmac
import re
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

_HOT = re.compile(r"/v1/sweeps/([^/]+)(/results)?")
ROUTE_PATHS = {"sweep": "/v1/sweeps/{sweep_id}", "results": "/v1/sweeps/{sweep_id}/results"}


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def read_key(scope: Scope, route: str, sweep_id: str) -> tuple[Any, ...]:
    """The response-cache key of a hot read: everything its body depends on (the links in
    a sweep's detail are built from the scheme, host and root path; the query selects the
    metrics and format). The sweep id is second, where `ResponseCache.invalidate` looks."""
    return (
        route,
        sweep_id,
        scope.get("scheme"),
        _header(scope, b"host"),
        scope.get("root_path", ""),
        scope.get("query_string", b""),
    )


def token_matches(expected: str, credentials: str) -> bool:
    """The bearer token compared in constant time (deps.require_token uses it too)."""
    return hmac.compare_digest(credentials.encode(), expected.encode())


def token_ok(expected: str | None, authorization: bytes | None) -> bool:
    """The app's rule for a raw Authorization header: open when no token is set, else
    ``Bearer <the token>`` (scheme case-insensitive, as HTTPBearer reads it)."""
    if expected is None:
        return True
    scheme, _, credentials = (authorization or b"").decode("latin-1").partition(" ")
    return scheme.lower() == "bearer" and token_matches(expected, credentials)


class CachedReads:
    """Answers a hot GET from the response cache, when it holds the body (see the module)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            match = _HOT.fullmatch(scope["path"])
            state = getattr(scope["app"].state, "dab", None) if match else None
            if match and state is not None:
                route = "results" if match.group(2) else "sweep"
                token = state.settings.api_token
                if token_ok(token.get_secret_value() if token else None, _header(scope, b"authorization")):
                    hit = state.responses.peek(read_key(scope, route, match.group(1)))
                    if hit is not None:
                        body, media_type = hit
                        scope["dab.route"] = ROUTE_PATHS[route]  # for the telemetry's label
                        await send(
                            {
                                "type": "http.response.start",
                                "status": 200,
                                "headers": [
                                    (b"content-type", media_type.encode()),
                                    (b"content-length", str(len(body)).encode()),
                                ],
                            }
                        )
                        await send({"type": "http.response.body", "body": body})
                        return
        await self.app(scope, receive, send)


__all__ = ["CachedReads", "read_key", "token_matches", "token_ok"]
