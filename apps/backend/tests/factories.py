"""Small factories: each inserts one row through the given session and commits.

They run as whatever role the session has; under the application role they set the
tenant first, exactly as the service does, so RLS accepts the rows. Organizations are
made by the owner, as in production (the application role may not create them): the
session's `info["owner_engine"]` names the owner's engine (see `with_owner`).
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from src.db import Database
from src.services.transaction import SET_TENANT  # the service's own statement

__all__ = [
    "create_clinic",
    "create_organization",
    "create_patient",
    "create_provider",
    "set_tenant",
    "with_owner",
]


async def set_tenant(db: AsyncSession | AsyncConnection, org: uuid.UUID) -> None:
    """Set the tenant for the current transaction, with the service's own statement."""
    await db.execute(text(SET_TENANT.text), {"org": str(org)})


async def _insert(db: AsyncSession, org: uuid.UUID, sql: str, params: dict[str, Any]) -> uuid.UUID:
    await set_tenant(db, org)
    new_id: uuid.UUID = (await db.execute(text(sql), params)).scalar_one()
    await db.commit()
    return new_id


def with_owner(database: Database) -> Database:
    """`database`, whose sessions can make organizations for the factories."""
    database.sessionmaker.configure(info={"owner_engine": database.owner_engine})
    return database


async def create_organization(db: AsyncSession, *, name: str = "Test Clinic") -> uuid.UUID:
    owner: AsyncEngine = db.info["owner_engine"]
    async with owner.begin() as conn:
        org: uuid.UUID = (
            await conn.execute(
                text("INSERT INTO organizations (name) VALUES (:name) RETURNING id"),
                {"name": name},
            )
        ).scalar_one()
    return org


async def create_patient(
    db: AsyncSession,
    *,
    organization_id: uuid.UUID,
    first_name: str = "Pat",
    last_name: str = "Ient",
    dob: datetime.date = datetime.date(1980, 1, 1),
) -> uuid.UUID:
    return await _insert(
        db,
        organization_id,
        "INSERT INTO patients (organization_id, first_name, last_name, dob) "
        "VALUES (:org, :first, :last, :dob) RETURNING id",
        {"org": organization_id, "first": first_name, "last": last_name, "dob": dob},
    )


async def create_provider(
    db: AsyncSession,
    *,
    organization_id: uuid.UUID,
    first_name: str = "Dana",
    last_name: str = "Doctor",
    npi: str | None = None,
    active: bool = True,
) -> uuid.UUID:
    return await _insert(
        db,
        organization_id,
        "INSERT INTO providers (organization_id, first_name, last_name, npi, active) "
        "VALUES (:org, :first, :last, :npi, :active) RETURNING id",
        {
            "org": organization_id,
            "first": first_name,
            "last": last_name,
            "npi": npi,
            "active": active,
        },
    )


async def create_clinic(
    db: AsyncSession, *, providers: int = 3
) -> tuple[uuid.UUID, uuid.UUID, list[uuid.UUID]]:
    """An organization with one patient and `providers` active providers."""
    org = await create_organization(db)
    patient = await create_patient(db, organization_id=org)
    provider_ids = [await create_provider(db, organization_id=org) for _ in range(providers)]
    return org, patient, provider_ids
