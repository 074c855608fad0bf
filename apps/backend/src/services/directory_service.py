"""Patients and providers of one organization: create, read, (de)activate.

Every method is one transaction under the organization's tenant (RLS applies). Another
organization's ids are answered exactly like ids that do not exist.
"""

from __future__ import annotations

import datetime
import enum
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from src.services.errors import (
    InvalidArgument,
    PatientNotFound,
    ProviderHasPatients,
    ProviderNotFound,
)
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
    panel_capacity: int | None
    panel_size: int  # the patients it is the primary provider of now
    created_at: datetime.datetime


class Unchanged(enum.Enum):
    """An argument left as it is (where None is a value: no capacity)."""

    UNCHANGED = "unchanged"


UNCHANGED = Unchanged.UNCHANGED


PATIENT_COLUMNS = "id, first_name, last_name, dob, created_at"
PROVIDER_COLUMNS = (
    "id, first_name, last_name, npi, active, panel_capacity, created_at, "
    "(SELECT count(*) FROM care_team_assignments AS a "
    "WHERE a.organization_id = providers.organization_id AND a.provider_id = providers.id "
    "AND a.is_primary_provider) AS panel_size"
)

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
LOCK_PROVIDER = Sql(
    "SELECT active FROM providers WHERE organization_id = $1 AND id = $2 FOR NO KEY UPDATE",
    "org",
    "id",
)
# The panel size is read in a statement of its own, after the lock: a statement that
# waited for the lock would see the panel as it was when the statement began.
PANEL_SIZE = Sql(
    "SELECT count(*) FROM care_team_assignments "
    "WHERE organization_id = $1 AND provider_id = $2 AND is_primary_provider",
    "org",
    "id",
)
UPDATE_PROVIDER = Sql(
    "UPDATE providers SET active = coalesce($3, active), "
    "panel_capacity = CASE WHEN $4 THEN $5 ELSE panel_capacity END "
    f"WHERE organization_id = $1 AND id = $2 RETURNING {PROVIDER_COLUMNS}",
    "org",
    "id",
    "active",
    "set_capacity",
    "capacity",
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
    async def update_provider(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        provider_id: uuid.UUID,
        active: bool | None = None,
        panel_capacity: int | Unchanged | None = UNCHANGED,
    ) -> ProviderRecord:
        """Change what is given: `active` (inactive providers cannot join care teams;
        those already on one stay there), `panel_capacity` (None: no limit; below the
        panel's size it only stops new assignments). Deactivating a provider who is
        still some patient's primary is refused (ProviderHasPatients, with the count):
        transfer the panel first. The provider's row is locked first, so no assignment to
        it can slip in between the check and the change. Raises ProviderNotFound,
        ProviderHasPatients, InvalidArgument."""
        if isinstance(panel_capacity, int) and panel_capacity < 0:
            raise InvalidArgument("panel_capacity must be 0 or more", field="panel_capacity")

        async def work(driver: Any) -> ProviderRecord:
            params = {"org": organization_id, "id": provider_id}
            current = await LOCK_PROVIDER.fetchrow(driver, params)
            if current is None:
                raise ProviderNotFound(provider_id)
            if active is False and current["active"]:
                patients = int(await PANEL_SIZE.fetchval(driver, params))
                if patients:
                    raise ProviderHasPatients(provider_id, patients)
            set_capacity = panel_capacity is not UNCHANGED
            row = await UPDATE_PROVIDER.fetchrow(
                driver,
                {
                    **params,
                    "active": active,
                    "set_capacity": set_capacity,
                    "capacity": panel_capacity if set_capacity else None,
                },
            )
            return ProviderRecord(**dict(row))

        record = await run_in_transaction(
            db, operation="update_provider", organization_id=organization_id, work=work
        )
        logger.info(
            "provider updated organization_id=%s provider_id=%s active=%s",
            organization_id,
            provider_id,
            record.active,
        )
        return record
