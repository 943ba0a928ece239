"""Dependencies as `Annotated` aliases, and the bearer-token check."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service.api.fastpath import token_matches
from service.cache import ResponseCache, TTLCache
from service.core.config import Settings
from service.core.errors import ForbiddenError, NotAuthenticatedError
from service.manager import SweepManager


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    manager: SweepManager
    cache: TTLCache = field(default_factory=TTLCache)
    responses: ResponseCache = field(default_factory=ResponseCache)
    mlflow: Any = None
    start_ray: bool = True
    telemetry: Any = None

    def mlflow_client(self) -> Any:
        if self.mlflow is None:
            from workers.tracking import make_client

            self.mlflow = make_client(self.settings.tracking_uri)
        return self.mlflow


async def get_state(request: Request) -> AppState:  # async: no threadpool hop per request
    return request.app.state.dab  # type: ignore[no-any-return]


StateDep = Annotated[AppState, Depends(get_state)]


def get_db(state: StateDep) -> Iterator[Session]:
    with state.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]

_bearer = HTTPBearer(auto_error=False, description="DAB_API_TOKEN, when the service sets one")


async def require_token(
    state: StateDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """401 without a bearer token, 403 with a wrong one; open when DAB_API_TOKEN is unset."""
    expected = state.settings.api_token
    if expected is None:
        return
    if credentials is None:
        raise NotAuthenticatedError(
            "a bearer token is required (Authorization: Bearer <DAB_API_TOKEN>)", field="Authorization"
        )
    if not token_matches(expected.get_secret_value(), credentials.credentials):
        raise ForbiddenError("the bearer token is not valid", field="Authorization")
