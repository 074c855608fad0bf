"""Idempotency-Key on every write of /v1 (POST, PUT, PATCH, DELETE): the HTTP side.

The dependency `idempotent` reads the header and fingerprints the request (method,
path, query and body); each write route then answers through `respond`, which tells the
service layer how its result becomes the response, so that the response can be stored
in the write's own transaction (src/services/idempotency.py has the guarantees). A
replay is the stored response, byte for byte, with `Idempotent-Replayed: true`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Request
from fastapi.responses import Response
from pydantic import BaseModel
from pydantic.json_schema import SkipJsonSchema

from src.services import idempotency
from src.services.idempotency import Reply

T = TypeVar("T")

KEY_MAX_LENGTH = 255  # any text a header can carry: a UUID is typical
JSON = "application/json"


async def _idempotent(
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
) -> None:
    if idempotency_key is None:
        idempotency.begin_request(None)
        return
    digest = hashlib.sha256()
    for part in (request.method, request.url.path, request.url.query):
        digest.update(part.encode() + b"\0")
    digest.update(await request.body())
    idempotency.begin_request(idempotency_key, digest.hexdigest())


IDEMPOTENT = Depends(_idempotent)


def reply(status_code: int, body: BaseModel | None, etag: str | None = None) -> Reply:
    return Reply(status_code, b"" if body is None else body.model_dump_json().encode(), etag)


def as_response(answer: Reply, *, replayed: bool = False) -> Response:
    headers = {"ETag": answer.etag} if answer.etag else {}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    if not answer.body:
        return Response(status_code=answer.status_code, headers=headers)
    return Response(answer.body, answer.status_code, headers=headers, media_type=JSON)


async def respond(call: Awaitable[T], render: Callable[[T], Reply]) -> Response:
    """The write's response: `render` of what `call` (the service) returns. Under an
    Idempotency-Key, the service stores that same response with the change."""
    idempotency.answer_with(render)
    try:
        result = await call
        return as_response(idempotency.stored_reply() or render(result))
    finally:
        idempotency.begin_request(None)  # the key is this request's only


async def replayed(request: Request, exc: idempotency.Replay) -> Response:
    """The exception handler of a replay: the stored response, marked as a replay."""
    return as_response(exc.reply, replayed=True)
