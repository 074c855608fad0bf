"""Request dependencies: the database session and the authenticated organization."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from src.api.errors import unauthorized
from src.db import Database
from src.services.organization_service import OrganizationService

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer ctk_...`")


def database_of(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    """An application-role session for the request (RLS applies)."""
    async with database_of(request).sessionmaker() as session:
        yield session


DB = Annotated[AsyncSession, Depends(get_db)]


class Caller:
    """Who is calling: the organization (tenant) and the key, from the API key only."""

    def __init__(self, organization_id: uuid.UUID, api_key_id: uuid.UUID) -> None:
        self.organization_id = organization_id
        self.api_key_id = api_key_id

    @property
    def actor(self) -> str:
        return f"api_key:{self.api_key_id}"


async def get_caller(
    request: Request,
    db: DB,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The tenant is decided by the key, never by the path or the body. Raises a 401."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise unauthorized()
    found = await OrganizationService.authenticate(db=db, api_key=credentials.credentials)
    if found is None:
        raise unauthorized()
    request.state.organization_id = str(found.organization_id)
    return Caller(found.organization_id, found.api_key_id)


CurrentCaller = Annotated[Caller, Depends(get_caller)]
