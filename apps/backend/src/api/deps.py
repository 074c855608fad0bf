"""Request dependencies: the database session, acting as the request's API key, and the
caller (the key's organization), which src/api/auth.py authenticated before routing."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from src.api.auth import CREDENTIAL_STATE, request_credential
from src.db import Database
from src.services import credentials
from src.services.credentials import Credential


def database_of(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


SESSION_STATE = "careteam_session"


async def get_db(request: Request) -> AsyncSession:
    """An application-role session for the request (RLS applies) that acts as its API
    key (credentials.act_as), if it has one. RequestContextMiddleware closes it once the
    response is sent. (A plain dependency: one with `yield` costs FastAPI about 0.07 ms
    of CPU per request; and `async`, as FastAPI runs a plain function in a thread.)"""
    state = request.scope["state"]
    session: AsyncSession | None = state.get(SESSION_STATE)
    if session is None:
        session = state[SESSION_STATE] = database_of(request).sessionmaker()
        credential = state.get(CREDENTIAL_STATE)
        if credential is not None:
            credentials.act_as(session, credential)
    return session


DB = Annotated[AsyncSession, Depends(get_db)]

# The caller: the organization (tenant) and the key, decided by the key only, never by
# the path or the body. `caller.organization_id`, `caller.actor`.
CurrentCaller = Annotated[Credential, Depends(request_credential)]
