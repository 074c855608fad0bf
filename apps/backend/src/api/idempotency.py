"""Idempotency-Key on every write of /v1 (POST, PUT, PATCH, DELETE): the HTTP side.

The dependency `Idempotency` reads the header and fingerprints the request as it was
understood: its method, path, query parameters (in order of name) and parsed JSON body
(re-written canonically), so that the same request written with other whitespace or
member order is the same request. The service takes the key as a parameter, claims it
and stores its own result with the change (src/services/idempotency.py); the HTTP layer
renders that result the same way every time, so a replay is answered with the first
response, marked `Idempotent-Replayed: true`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.responses import Response
from pydantic import BaseModel
from pydantic.json_schema import SkipJsonSchema

from src.services.idempotency import IdempotencyKey
from src.values import is_uuid_text

KEY_MAX_LENGTH = 255  # any text a header can carry: a UUID is typical
JSON = "application/json"


def _ids_in_one_case(body: object) -> object:
    """The body with its ids (`*_id` members holding a UUID) in lower case: a UUID is
    the same whatever the case of its digits (RFC 9562 section 4)."""
    if not isinstance(body, dict):
        return body
    return {
        name: value.lower() if name.endswith("_id") and is_uuid_text(value) else value
        for name, value in body.items()
    }


async def fingerprint(request: Request) -> str:
    """What makes two requests the same request: method, path, query, parsed body (ids
    in the path and the body compared in lower case: /v1's paths are lower case but for
    their ids)."""
    query = sorted(request.query_params.multi_items())
    body = await request.body()
    parsed = None if not body else _ids_in_one_case(await request.json())
    canonical = json.dumps(
        [request.method, request.url.path.lower(), query, parsed],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


async def _idempotency_key(
    request: Request,
    idempotency_key: Annotated[
        str | SkipJsonSchema[None],
        Header(
            min_length=1,
            max_length=KEY_MAX_LENGTH,
            description="Send the same key again to retry this very request safely: it "
            "executes once, and a retry gets the first response (24 hours). A new request "
            "needs a new key (409 idempotency_key_reused otherwise).",
        ),
    ] = None,
) -> IdempotencyKey | None:
    if idempotency_key is None:
        return None
    return IdempotencyKey(idempotency_key, await fingerprint(request))


# A write route's `idempotency` parameter: the request's key, or None without one.
Idempotency = Annotated[IdempotencyKey | None, Depends(_idempotency_key)]


@dataclass(frozen=True)
class Reply:
    """A write's response: status, JSON body, ETag, and for a 201 the Location of what
    it created (a path: RFC 9110 allows a relative reference)."""

    status_code: int
    body: bytes
    etag: str | None = None
    location: str | None = None


def reply(
    status_code: int,
    body: BaseModel | None,
    etag: str | None = None,
    *,
    location: str | None = None,
) -> Reply:
    data = b"" if body is None else body.model_dump_json().encode()
    return Reply(status_code, data, etag, location if status_code == 201 else None)


def as_response(answer: Reply, *, replayed: bool = False) -> Response:
    headers = {"ETag": answer.etag} if answer.etag else {}
    if answer.location:
        headers["Location"] = answer.location
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    if not answer.body:
        return Response(status_code=answer.status_code, headers=headers)
    return Response(answer.body, answer.status_code, headers=headers, media_type=JSON)


def respond(answer: Reply, idempotency: IdempotencyKey | None) -> Response:
    """A write's response; marked as a replay when the service answered with the result
    stored under the request's key."""
    return as_response(answer, replayed=idempotency is not None and idempotency.replayed)
