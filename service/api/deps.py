"""Dependencies as `Annotated` aliases, and the bearer-token check."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.core.config import Settings
from service.core.errors import ForbiddenError, NotAuthenticatedError
from service.manager import SweepManager
from service.queries import Reads


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    manager: SweepManager
    start_ray: bool = True
    telemetry: Any = None

    @property
    def reads(self) -> Reads:
        return self.manager.reads


async def get_state(request: Request) -> AppState:  # async: no threadpool hop per request
    return request.app.state.dab  # type: ignore[no-any-return]


StateDep = Annotated[AppState, Depends(get_state)]


async def get_reads(request: Request) -> Reads:  # one dependency level: the hot routes use it
    return request.app.state.dab.reads  # type: ignore[no-any-return]


ReadsDep = Annotated[Reads, Depends(get_reads)]


def get_db(state: StateDep) -> Iterator[Session]:
    with state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]


def token_matches(expected: str, credentials: str) -> bool:
    """The bearer token compared in constant time."""
    return hmac.compare_digest(credentials.encode(), expected.encode())


async def require_token(request: Request) -> None:
    """401 without a bearer token, 403 with a wrong one; open when DAB_API_TOKEN is unset.

    Reads the header itself (as HTTPBearer would: scheme case-insensitive) rather than through
    FastAPI's security dependency, a third of the hot reads' dependency cost; the OpenAPI
    schema declares the scheme (`service.app`).
    """
    expected = request.app.state.dab.settings.api_token
    if expected is None:
        return
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials:
        raise NotAuthenticatedError(
            "a bearer token is required (Authorization: Bearer <DAB_API_TOKEN>)", field="Authorization"
        )
    if not token_matches(expected.get_secret_value(), credentials):
        raise ForbiddenError("the bearer token is not valid", field="Authorization")
