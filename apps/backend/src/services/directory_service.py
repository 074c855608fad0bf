"""Patients and providers of one organization: create, read, (de)activate.

Every method is one transaction under the organization's tenant (RLS applies). Another
organization's ids are answered exactly like ids that do not exist.
"""

from __future__ import annotations

import datetime
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from src.services.errors import PatientNotFound, ProviderNotFound
from src.services.transaction import Sql, run_in_transaction

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

INSERT_PATIENT = Sql(
    "INSERT INTO patients (organization_id, first_name, last_name, dob) "
    f"VALUES ($1, $2, $3, $4) RETURNING {PATIENT_COLUMNS}",
    "org",
    "first_name",
    "last_name",
    "dob",
)
SELECT_PATIENT = Sql(
    f"SELECT {PATIENT_COLUMNS} FROM patients WHERE organization_id = $1 AND id = $2", "org", "id"
)
INSERT_PROVIDER = Sql(
    "INSERT INTO providers (organization_id, first_name, last_name, npi) "
    f"VALUES ($1, $2, $3, $4) RETURNING {PROVIDER_COLUMNS}",
    "org",
    "first_name",
    "last_name",
    "npi",
)
SELECT_PROVIDER = Sql(
    f"SELECT {PROVIDER_COLUMNS} FROM providers WHERE organization_id = $1 AND id = $2", "org", "id"
)
SET_PROVIDER_ACTIVE = Sql(
    "UPDATE providers SET active = $1 "
    f"WHERE organization_id = $2 AND id = $3 RETURNING {PROVIDER_COLUMNS}",
    "active",
    "org",
    "id",
)


async def _one_row(
    db: AsyncSession,
    operation: str,
    organization_id: uuid.UUID,
    statement: Sql,
    params: dict[str, Any],
    *,
    read_only: bool = False,
) -> Any:
    """The statement's single row as a dict (or None), in one transaction under the tenant."""

    async def work(driver: Any) -> Any:
        row = await statement.fetchrow(driver, {"org": organization_id, **params})
        return None if row is None else dict(row)

    # A create whose COMMIT is lost cannot be checked (its id is unknown): without a
    # `verify`, that rare case raises OutcomeUnknown instead of creating a duplicate.
    return await run_in_transaction(
        db, operation=operation, organization_id=organization_id, work=work, read_only=read_only
    )


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
        row = await _one_row(
            db,
            "create_patient",
            organization_id,
            INSERT_PATIENT,
            {"first_name": first_name, "last_name": last_name, "dob": dob},
        )
        logger.info("patient created organization_id=%s patient_id=%s", organization_id, row["id"])
        return PatientRecord(**row)

    @staticmethod
    async def get_patient(
        *, db: AsyncSession, organization_id: uuid.UUID, patient_id: uuid.UUID
    ) -> PatientRecord:
        """Raises PatientNotFound."""
        row = await _one_row(
            db, "get_patient", organization_id, SELECT_PATIENT, {"id": patient_id}, read_only=True
        )
        if row is None:
            raise PatientNotFound(patient_id)
        return PatientRecord(**row)

    @staticmethod
    async def create_provider(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        first_name: str,
        last_name: str,
        npi: str | None = None,
    ) -> ProviderRecord:
        row = await _one_row(
            db,
            "create_provider",
            organization_id,
            INSERT_PROVIDER,
            {"first_name": first_name, "last_name": last_name, "npi": npi},
        )
        logger.info(
            "provider created organization_id=%s provider_id=%s", organization_id, row["id"]
        )
        return ProviderRecord(**row)

    @staticmethod
    async def get_provider(
        *, db: AsyncSession, organization_id: uuid.UUID, provider_id: uuid.UUID
    ) -> ProviderRecord:
        """Raises ProviderNotFound."""
        row = await _one_row(
            db,
            "get_provider",
            organization_id,
            SELECT_PROVIDER,
            {"id": provider_id},
            read_only=True,
        )
        if row is None:
            raise ProviderNotFound(provider_id)
        return ProviderRecord(**row)

    @staticmethod
    async def set_provider_active(
        *, db: AsyncSession, organization_id: uuid.UUID, provider_id: uuid.UUID, active: bool
    ) -> ProviderRecord:
        """Activate or deactivate a provider. Inactive providers cannot join care teams;
        those already on one stay there. Raises ProviderNotFound."""
        row = await _one_row(
            db,
            "set_provider_active",
            organization_id,
            SET_PROVIDER_ACTIVE,
            {"id": provider_id, "active": active},
        )
        if row is None:
            raise ProviderNotFound(provider_id)
        logger.info(
            "provider active=%s organization_id=%s provider_id=%s",
            active,
            organization_id,
            provider_id,
        )
        return ProviderRecord(**row)
