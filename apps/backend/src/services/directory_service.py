"""Patients and providers of one organization: create, read, (de)activate.

Every method is one transaction under the organization's tenant (RLS applies). Another
organization's ids are answered exactly like ids that do not exist.
"""

from __future__ import annotations

import datetime
import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from src.services.errors import PatientNotFound, ProviderNotFound
from src.services.transaction import unit_of_work

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PatientRecord:
    id: uuid.UUID
    first_name: str | None
    last_name: str | None
    dob: datetime.date | None
    created_at: datetime.datetime


@dataclass(frozen=True)
class ProviderRecord:
    id: uuid.UUID
    first_name: str | None
    last_name: str | None
    npi: str | None
    active: bool
    created_at: datetime.datetime


PATIENT_COLUMNS = "id, first_name, last_name, dob, created_at"
PROVIDER_COLUMNS = "id, first_name, last_name, npi, active, created_at"


class DirectoryService:
    """The organization's patients and providers."""

    @staticmethod
    async def create_patient(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        first_name: str,
        last_name: str,
        dob: datetime.date,
    ) -> PatientRecord:
        async with unit_of_work(db, operation="create_patient", organization_id=organization_id):
            row = (
                await db.execute(
                    text(
                        "INSERT INTO patients (organization_id, first_name, last_name, dob) "
                        f"VALUES (:org, :first, :last, :dob) RETURNING {PATIENT_COLUMNS}"
                    ),
                    {"org": organization_id, "first": first_name, "last": last_name, "dob": dob},
                )
            ).one()
        logger.info("patient created organization_id=%s patient_id=%s", organization_id, row.id)
        return PatientRecord(**row._asdict())

    @staticmethod
    async def get_patient(
        *, db: AsyncSession, organization_id: uuid.UUID, patient_id: uuid.UUID
    ) -> PatientRecord:
        """Raises PatientNotFound."""
        async with unit_of_work(db, operation="get_patient", organization_id=organization_id):
            row = (
                await db.execute(
                    text(
                        f"SELECT {PATIENT_COLUMNS} FROM patients "
                        "WHERE organization_id = :org AND id = :id"
                    ),
                    {"org": organization_id, "id": patient_id},
                )
            ).first()
        if row is None:
            raise PatientNotFound(patient_id)
        return PatientRecord(**row._asdict())

    @staticmethod
    async def create_provider(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        first_name: str,
        last_name: str,
        npi: str | None = None,
    ) -> ProviderRecord:
        async with unit_of_work(db, operation="create_provider", organization_id=organization_id):
            row = (
                await db.execute(
                    text(
                        "INSERT INTO providers (organization_id, first_name, last_name, npi) "
                        f"VALUES (:org, :first, :last, :npi) RETURNING {PROVIDER_COLUMNS}"
                    ),
                    {"org": organization_id, "first": first_name, "last": last_name, "npi": npi},
                )
            ).one()
        logger.info("provider created organization_id=%s provider_id=%s", organization_id, row.id)
        return ProviderRecord(**row._asdict())

    @staticmethod
    async def get_provider(
        *, db: AsyncSession, organization_id: uuid.UUID, provider_id: uuid.UUID
    ) -> ProviderRecord:
        """Raises ProviderNotFound."""
        async with unit_of_work(db, operation="get_provider", organization_id=organization_id):
            row = (
                await db.execute(
                    text(
                        f"SELECT {PROVIDER_COLUMNS} FROM providers "
                        "WHERE organization_id = :org AND id = :id"
                    ),
                    {"org": organization_id, "id": provider_id},
                )
            ).first()
        if row is None:
            raise ProviderNotFound(provider_id)
        return ProviderRecord(**row._asdict())

    @staticmethod
    async def set_provider_active(
        *, db: AsyncSession, organization_id: uuid.UUID, provider_id: uuid.UUID, active: bool
    ) -> ProviderRecord:
        """Activate or deactivate a provider. Inactive providers cannot join care teams;
        those already on one stay there. Raises ProviderNotFound."""
        async with unit_of_work(
            db, operation="set_provider_active", organization_id=organization_id
        ):
            row = (
                await db.execute(
                    text(
                        "UPDATE providers SET active = :active "
                        f"WHERE organization_id = :org AND id = :id RETURNING {PROVIDER_COLUMNS}"
                    ),
                    {"org": organization_id, "id": provider_id, "active": active},
                )
            ).first()
            if row is None:
                raise ProviderNotFound(provider_id)
        logger.info(
            "provider active=%s organization_id=%s provider_id=%s",
            active,
            organization_id,
            provider_id,
        )
        return ProviderRecord(**row._asdict())
