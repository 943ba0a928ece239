"""Request parameters and responses that the sweeps and suites routers share."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import Header, Query, Request, Response

Priority = Annotated[
    int,
    Query(
        ge=-1000, le=1000, description="queued sweeps start highest priority first, then in submission order"
    ),
]

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        pattern=r"^[\x21-\x7e]+$",
        description="the same key and body return the same sweep or suite; another body is a 409",
    ),
]


def conditional(request: Request, body: bytes, media_type: str, etag: str | None = None) -> Response:
    """`body` with an ETag (its hash unless given); 304 when the client already holds it."""
    tag = f'"{etag or hashlib.blake2b(body, digest_size=12).hexdigest()}"'
    headers = {"ETag": tag, "Cache-Control": "no-cache"}  # always revalidate: cheap, never stale
    if tag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


__all__ = ["IdempotencyKey", "Priority", "conditional"]
