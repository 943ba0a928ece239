"""The service's domain exceptions, and their mapping to HTTP, in one place.

    DabError (500: a bug)
    ├── InvalidSpecError      422  the spec is wrong (wraps workers.spec.SpecError: path, line)
    ├── InvalidRequestError   422  a query parameter or header is wrong
    ├── UnsupportedMediaError 415  a body that is neither JSON nor YAML
    ├── PayloadTooLargeError  413  a body over DAB_MAX_BODY_BYTES
    ├── NotAuthenticatedError 401  no bearer token
    ├── ForbiddenError        403  a wrong bearer token
    ├── NotFoundError         404  no such sweep (or report figure)
    ├── ConflictError         409  an Idempotency-Key reused with another body; a state change
    │                              that the sweep's state does not allow
    ├── TooManySweepsError    429  DAB_MAX_QUEUED_SWEEPS sweeps are queued already
    └── UnavailableError      503  Ray or MLflow cannot be reached

Every error body is JSON: ``{"error": code, "message": text, "field": path or null, ...}``.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from workers.spec import SpecError

log = logging.getLogger("service.errors")


class DabError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, field: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.extra = extra
        self.headers: dict[str, str] = {}

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, "field": self.field, **self.extra}


class InvalidSpecError(DabError):
    status_code, code = 422, "invalid_spec"

    @classmethod
    def from_spec_error(cls, e: SpecError) -> InvalidSpecError:
        d = e.to_dict()
        return cls(
            d["message"], field=d["path"] or None, line=d["line"], cell=d["cell"], details=d["details"]
        )


class InvalidRequestError(DabError):
    status_code, code = 422, "invalid_request"


class UnsupportedMediaError(DabError):
    status_code, code = 415, "unsupported_media_type"


class PayloadTooLargeError(DabError):
    status_code, code = 413, "payload_too_large"


class NotAuthenticatedError(DabError):
    status_code, code = 401, "not_authenticated"

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.headers = {"WWW-Authenticate": "Bearer"}


class ForbiddenError(DabError):
    status_code, code = 403, "forbidden"


class NotFoundError(DabError):
    status_code, code = 404, "not_found"


class ConflictError(DabError):
    status_code, code = 409, "conflict"


class TooManySweepsError(DabError):
    status_code, code = 429, "too_many_sweeps"


class UnavailableError(DabError):
    status_code, code = 503, "unavailable"


def error_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or str(loc[-1] if loc else "")


def install_error_handlers(app: FastAPI) -> None:
    """Map the tree above, FastAPI's validation errors and stray HTTP errors to JSON bodies."""

    @app.exception_handler(DabError)
    async def _dab(_: Request, e: DabError) -> JSONResponse:
        if e.status_code >= 500:
            log.error("%s: %s", e.code, e.message)
        return error_response(e.status_code, e.to_dict(), e.headers or None)

    @app.exception_handler(SpecError)
    async def _spec(_: Request, e: SpecError) -> JSONResponse:
        err = InvalidSpecError.from_spec_error(e)
        return error_response(err.status_code, err.to_dict())

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        details = [
            {"field": _field(tuple(err.get("loc", ()))), "message": str(err.get("msg", ""))} for err in errors
        ]
        first = details[0] if details else {"field": None, "message": "invalid request"}
        return error_response(
            422,
            {
                "error": "invalid_request",
                "message": f"{first['field']}: {first['message']}",
                "field": first["field"],
                "details": details,
            },
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return error_response(
            e.status_code,
            {"error": code, "message": str(e.detail), "field": None},
            dict(e.headers) if e.headers else None,
        )

    @app.exception_handler(Exception)
    async def _bug(_: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error (a bug): %s", e)
        return error_response(
            500, {"error": "internal_error", "message": f"internal error: {type(e).__name__}", "field": None}
        )


__all__ = [
    "ConflictError",
    "DabError",
    "ForbiddenError",
    "InvalidRequestError",
    "InvalidSpecError",
    "NotAuthenticatedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "TooManySweepsError",
    "UnavailableError",
    "UnsupportedMediaError",
    "install_error_handlers",
]
