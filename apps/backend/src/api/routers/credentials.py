"""The organization's API keys and SMART clients, managed by its administrator: every
route needs `careteam/admin` (src/api/route_scopes.py), which no default key has; the
database checks the caller again (src/services/credential_admin_service.py).

A new key's secret is in the 201 answer only. So these creations take no
Idempotency-Key (a replay would have to keep the secret to answer it again): one sent is
422, and a client unsure whether its POST was made lists the keys (or clients) to see.
Revoking is idempotent by itself (204 each time)."""

from __future__ import annotations

import datetime
import uuid
from typing import Annotated, cast

from fastapi import APIRouter, Query, Request, Response, status

from src.api.deps import caller_of, session_of
from src.api.errors import CREATED_HEADERS, link, links, problem_responses
from src.api.fields import Uuid
from src.api.paging import CursorParam, cursors_of, list_key, open_cursor
from src.api.routing import StrictRoute
from src.api.schemas import (
    ApiKeyCreate,
    ApiKeyIssuedOut,
    ApiKeyListOut,
    ApiKeyOut,
    ClientCreate,
    ClientListOut,
    ClientOut,
)
from src.services.credential_admin_service import MAX_PAGE, CredentialAdminService, Position
from src.services.errors import (
    ApiKeyNotFound,
    InvalidArgument,
    InvalidCursor,
    OutcomeUnknown,
    SmartClientNotFound,
)
from src.services.smart_service import RegisteredClient
from src.values import Cursors

router = APIRouter(prefix="/v1", tags=["keys and clients"], route_class=StrictRoute)

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="At most this many items")]
KEYS, CLIENTS = "api_keys", "smart_clients"
IDEMPOTENCY_KEY = "idempotency-key"


class IdempotencyKeyRefused(InvalidArgument):
    location = "header"

    def __init__(self) -> None:
        super().__init__(
            "this operation takes no Idempotency-Key (its answer is not kept): list the "
            "organization's keys or clients to see whether an earlier request made one",
            field="Idempotency-Key",
        )


def _no_idempotency_key(request: Request) -> None:
    if IDEMPOTENCY_KEY in request.headers:
        raise IdempotencyKeyRefused()


def _after(cursors: Cursors, kind: str, cursor: str | None) -> Position | None:
    if cursor is None:
        return None
    created_at, last_id = open_cursor(cursors, list_key(kind), cursor, datetime.datetime, uuid.UUID)
    return cast(datetime.datetime, created_at), cast(uuid.UUID, last_id)


def _client_out(client: RegisteredClient, keys: int) -> ClientOut:
    return ClientOut(
        client_id=client.id,
        name=client.name,
        jwks_url=client.jwks_url,
        keys=keys,
        scopes=list(client.scopes),
        created_at=client.created_at,
        revoked_at=None,
    )


# --- API keys ---------------------------------------------------------------------------------


@router.post(
    "/api-keys",
    status_code=status.HTTP_201_CREATED,
    response_model=ApiKeyIssuedOut,
    responses={
        201: {**links(RevokeApiKey=link("revokeApiKey", key_id="id")), **CREATED_HEADERS},
        **problem_responses(InvalidArgument, OutcomeUnknown),
    },
)
async def create_api_key(request: Request, body: ApiKeyCreate) -> Response:
    """A new key of your organization with the scopes given (default `system/*.cruds`),
    shown once in this answer. An administrator may give `careteam/admin` too: that key
    is another administrator's."""
    _no_idempotency_key(request)
    db, caller = session_of(request), caller_of(request)
    issued = await CredentialAdminService.issue_key(
        db=db, organization_id=caller.organization_id, name=body.name, scopes=body.scopes
    )
    assert issued.created_at is not None
    out = ApiKeyIssuedOut(
        id=issued.id,
        key=issued.key,
        name=issued.name,
        scopes=list(issued.scopes),
        created_at=issued.created_at,
    )
    return Response(
        out.model_dump_json(),
        status_code=201,
        media_type="application/json",
        headers={"Location": f"/v1/api-keys/{issued.id}"},
    )


@router.get(
    "/api-keys",
    response_model=ApiKeyListOut,
    responses=problem_responses(InvalidCursor),
)
async def list_api_keys(
    request: Request, *, limit: Limit = 50, cursor: CursorParam = None
) -> ApiKeyListOut:
    """Your organization's API keys, oldest first, `limit` at a time: never a secret or
    its hash, never a SMART access token (clients are listed apart)."""
    db, caller = session_of(request), caller_of(request)
    cursors = await cursors_of(request)
    found = await CredentialAdminService.list_keys(
        db=db,
        organization_id=caller.organization_id,
        limit=limit + 1,
        after=_after(cursors, KEYS, cursor),
    )
    page = found[:limit]
    more = len(found) > limit
    return ApiKeyListOut(
        items=[ApiKeyOut.model_validate(k, from_attributes=True) for k in page],
        next_cursor=cursors.seal(list_key(KEYS), page[-1].created_at, page[-1].id)
        if more
        else None,
    )


@router.delete(
    "/api-keys/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(ApiKeyNotFound, OutcomeUnknown),
)
async def revoke_api_key(request: Request, key_id: Uuid) -> Response:
    """Revoke a key of your organization: it stops working at once, in every server
    process. 204 again for a key revoked before. Your own key may be revoked: this
    answer is its last; its next request is 401."""
    db, caller = session_of(request), caller_of(request)
    await CredentialAdminService.revoke_key(
        db=db, organization_id=caller.organization_id, key_id=key_id
    )
    return Response(status_code=204)


# --- SMART clients ------------------------------------------------------------------------------


@router.post(
    "/clients",
    status_code=status.HTTP_201_CREATED,
    response_model=ClientOut,
    responses={
        201: {
            **links(RevokeClient=link("revokeClient", client_id="client_id")),
            **CREATED_HEADERS,
        },
        **problem_responses(InvalidArgument, OutcomeUnknown),
    },
)
async def register_client(request: Request, body: ClientCreate) -> Response:
    """Register a SMART Backend Services client of your organization with its public
    keys (`jwks`) or the https URL of its set (`jwks_url`, on a public host), and the
    scopes it may be granted (`careteam/admin` included: its tokens are then an
    administrator's), by the rules of `careteam client register` (and stricter ones for
    the URL). Its `client_id` is the assertion's iss."""
    _no_idempotency_key(request)
    db, caller = session_of(request), caller_of(request)
    client = await CredentialAdminService.register_client(
        db=db,
        organization_id=caller.organization_id,
        name=body.name,
        scopes=body.scopes,
        jwks=body.jwks,
        jwks_url=body.jwks_url,
    )
    keys = 0 if body.jwks is None else len(body.jwks.get("keys", []))
    return Response(
        _client_out(client, keys).model_dump_json(),
        status_code=201,
        media_type="application/json",
        headers={"Location": f"/v1/clients/{client.id}"},
    )


@router.get(
    "/clients",
    response_model=ClientListOut,
    responses=problem_responses(InvalidCursor),
)
async def list_clients(
    request: Request, *, limit: Limit = 50, cursor: CursorParam = None
) -> ClientListOut:
    """Your organization's SMART clients, oldest first, `limit` at a time (never a key)."""
    db, caller = session_of(request), caller_of(request)
    cursors = await cursors_of(request)
    found = await CredentialAdminService.list_clients(
        db=db,
        organization_id=caller.organization_id,
        limit=limit + 1,
        after=_after(cursors, CLIENTS, cursor),
    )
    page = found[:limit]
    more = len(found) > limit
    return ClientListOut(
        items=[
            ClientOut(
                client_id=c.id,
                name=c.name,
                jwks_url=c.jwks_url,
                keys=c.keys,
                scopes=c.scopes,
                created_at=c.created_at,
                revoked_at=c.revoked_at,
            )
            for c in page
        ],
        next_cursor=cursors.seal(list_key(CLIENTS), page[-1].created_at, page[-1].id)
        if more
        else None,
    )


@router.delete(
    "/clients/{client_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(SmartClientNotFound, OutcomeUnknown),
)
async def revoke_client(request: Request, client_id: Uuid) -> Response:
    """Revoke a SMART client of your organization and every token it holds: they stop
    working at once, in every server process. 204 again for a client revoked before."""
    db, caller = session_of(request), caller_of(request)
    await CredentialAdminService.revoke_client(
        db=db, organization_id=caller.organization_id, client_id=client_id
    )
    return Response(status_code=204)
