"""What a route needs of its request: the database session, acting as the request's API
key, and the caller (the key's organization), which src/api/auth.py authenticated
before routing. Plain functions the routes call, not FastAPI dependencies."""

from __future__ import annotations

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from src.api.auth import credential_of
from src.api.errors import CREDENTIAL_STATE
from src.db import Database
from src.services import credentials
from src.services.credentials import Credential


def database_of(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


SESSION_STATE = "careteam_session"


def session_of(request: Request) -> AsyncSession:
    """The request's application-role session (RLS applies), acting as its API key
    (credentials.act_as) if it has one; made on first use, closed by
    RequestContextMiddleware once the response is sent. Routes call it (and caller_of)
    rather than declare them as dependencies: FastAPI's resolution of these two cost a
    care-team read about a twentieth of its CPU (docs/PERFORMANCE.md)."""
    state = request.scope["state"]
    session: AsyncSession | None = state.get(SESSION_STATE)
    if session is None:
        session = state[SESSION_STATE] = database_of(request).sessionmaker()
        credential = state.get(CREDENTIAL_STATE)
        if credential is not None:
            credentials.act_as(session, credential)
    return session


def caller_of(request: Request) -> Credential:
    """The caller: the organization (tenant) and the key, decided by the key only (never
    by the path or the body), as Authentication found it. `caller.organization_id`,
    `caller.actor`."""
    return credential_of(request.scope)
