"""The hot reads' fast path (service/api/fastpath.py): as an ASGI unit against a recording
inner app, and over real HTTP, where a cached answer must be the handler's answer, and the
token, bad queries and cancel must behave exactly as without it."""

from __future__ import annotations

import asyncio
import re
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr

from service.api.fastpath import CachedReads, read_key, token_ok
from service.cache import ResponseCache
from tests.service.conftest import Api


def _scope(
    path: str, method: str = "GET", query: bytes = b"", auth: bytes | None = None, state: Any = None
) -> dict[str, Any]:
    headers = [(b"host", b"testserver")] + ([(b"authorization", auth)] if auth is not None else [])
    app = SimpleNamespace(state=SimpleNamespace(dab=state) if state is not None else SimpleNamespace())
    return {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": query,
        "headers": headers,
        "scheme": "http",
        "root_path": "",
        "app": app,
    }


class Inner:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls.append(scope["path"])
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b"inner"})


def _call(mw: CachedReads, scope: dict[str, Any]) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    asyncio.run(mw(scope, receive, send))
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]


def _state(token: str | None = None) -> Any:
    cache = ResponseCache()
    settings = SimpleNamespace(api_token=SecretStr(token) if token else None)
    return SimpleNamespace(settings=settings, responses=cache)


def _fill(state: Any, scope: dict[str, Any], route: str, sweep_id: str, body: bytes, media: str) -> None:
    async def go() -> None:
        await state.responses.get(read_key(scope, route, sweep_id), lambda: ((body, media), 60.0))

    asyncio.run(go())


def test_a_cached_body_is_answered_without_the_app() -> None:
    inner, state = Inner(), _state()
    mw = CachedReads(inner)
    scope = _scope("/v1/sweeps/abc")
    assert _call(mw, scope)[0] == 418 and inner.calls == ["/v1/sweeps/abc"]  # nothing cached: the app
    _fill(state, scope, "sweep", "abc", b'{"id":"abc"}', "application/json")
    status, headers, body = _call(mw, _scope("/v1/sweeps/abc", state=state))
    assert (status, body) == (200, b'{"id":"abc"}') and len(inner.calls) == 1
    assert headers == {b"content-type": b"application/json", b"content-length": b"12"}

    q = b"format=csv"
    _fill(state, _scope("/v1/sweeps/abc/results", query=q), "results", "abc", b"a,b\n", "text/csv")
    assert _call(mw, _scope("/v1/sweeps/abc/results", query=q, state=state))[2] == b"a,b\n"
    # another query, another method, another route, another host: all go to the app
    for scope in (
        _scope("/v1/sweeps/abc/results", query=b"format=markdown", state=state),
        _scope("/v1/sweeps/abc", method="POST", state=state),
        _scope("/v1/sweeps/abc/trials", state=state),
        _scope("/v1/sweeps/abc/", state=state),
        {**_scope("/v1/sweeps/abc", state=state), "headers": [(b"host", b"elsewhere")]},
    ):
        assert _call(mw, scope)[0] == 418
    assert len(inner.calls) == 6


def test_the_token_is_checked_before_a_cached_answer() -> None:
    inner, state = Inner(), _state(token="s3cret")
    mw = CachedReads(inner)
    _fill(state, _scope("/v1/sweeps/abc"), "sweep", "abc", b"{}", "application/json")
    assert _call(mw, _scope("/v1/sweeps/abc", auth=b"Bearer s3cret", state=state))[0] == 200
    assert _call(mw, _scope("/v1/sweeps/abc", auth=b"bearer s3cret", state=state))[0] == 200
    for auth in (None, b"Bearer s3cre7", b"Basic czNjcmV0", b"Bearer", b"s3cret"):
        assert _call(mw, _scope("/v1/sweeps/abc", auth=auth, state=state))[0] == 418  # the app says 401/403
    assert len(inner.calls) == 5


@pytest.mark.parametrize(
    ("expected", "header", "ok"),
    [
        (None, None, True),
        ("t", None, False),
        ("t", b"Bearer t", True),
        ("t", b"BEARER t", True),
        ("t", b"Bearer tt", False),
        ("t", b"Token t", False),
        ("t", b"Bearer ", False),
    ],
)
def test_token_rule(expected: str | None, header: bytes | None, ok: bool) -> None:
    assert token_ok(expected, header) is ok


def _count(api: Api, route: str) -> float:
    m = re.search(
        rf'dab_http_requests_total{{method="GET",route="{re.escape(route)}",status="200"}} (\S+)',
        api.http.get("/metrics").text,
    )
    return float(m.group(1)) if m else 0.0


def test_over_http_cached_answers_equal_the_handlers_and_errors_still_come(serve: Any) -> None:
    api = serve(api_token="s3cret")
    sid = api.submit().json()["id"]
    first = api.http.get(f"/v1/sweeps/{sid}")
    again = [api.http.get(f"/v1/sweeps/{sid}") for _ in range(5)]
    assert all(r.status_code == 200 and r.content == first.content for r in again)
    assert first.json()["links"]["self"].startswith(api.server.url)
    assert api.http.get(f"/v1/sweeps/{sid}", headers={"Authorization": ""}).status_code == 401
    assert api.http.get(f"/v1/sweeps/{sid}", headers={"Authorization": "Bearer x"}).status_code == 403
    assert _count(api, "/v1/sweeps/{sweep_id}") == 6  # the fast path's answers are counted too

    md = api.http.get(f"/v1/sweeps/{sid}/results", params={"format": "markdown"})
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
    assert api.http.get(f"/v1/sweeps/{sid}/results", params={"format": "markdown"}).text == md.text
    bad = api.http.get(f"/v1/sweeps/{sid}/results", params={"format": "markdown", "agg": "nope"})
    assert bad.status_code == 422 and bad.json()["field"] == "agg"
    assert api.http.get("/v1/sweeps/nosuchsweep").status_code == 404
    assert api.http.get("/v1/sweeps/nosuchsweep").status_code == 404  # errors are never cached

    api.http.post(f"/v1/sweeps/{sid}/cancel")
    assert api.http.get(f"/v1/sweeps/{sid}").json()["state"] == "cancelled"
