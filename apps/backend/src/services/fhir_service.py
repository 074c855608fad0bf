"""What the FHIR R4 view reads: care teams as their periods, and the current primaries
of patients. Read-only; every method is one transaction under the organization's tenant
(RLS applies), like every other read.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass
from typing import Any

from asyncpg import Range
from sqlalchemy.ext.asyncio import AsyncSession

from src.services.care_team_service import CareTeamPeriodRecord
from src.services.transaction import Sql, run_transaction

FIRST = uuid.UUID(int=0)


@dataclass(frozen=True)
class CareTeamFilter:
    """A CareTeam search: every condition given must hold."""

    patient: uuid.UUID | None = None
    statuses: frozenset[str] = frozenset()  # {"active", "inactive"}: either
    participant: uuid.UUID | None = None
    # Teams with a participant whose period overlaps [start, end).
    during: tuple[datetime.datetime, datetime.datetime] | None = None


# The patients that have or had a care team (a period), with the search's conditions, in
# patient id order after a cursor. `active`: a period still open.
SEARCH_TEAMS = Sql(
    """
    SELECT patient_id, bool_or(upper_inf(valid)) AS active
    FROM care_team_periods
    WHERE organization_id = $1 AND patient_id > $2
      AND ($3::uuid IS NULL OR patient_id = $3)
    GROUP BY patient_id
    HAVING ($4::uuid IS NULL OR bool_or(provider_id = $4))
       AND ($5::tstzrange IS NULL OR bool_or(valid && $5))
       AND (cardinality($6::text[]) = 0
            OR (bool_or(upper_inf(valid)) AND 'active' = ANY ($6))
            OR (NOT bool_or(upper_inf(valid)) AND 'inactive' = ANY ($6)))
    ORDER BY patient_id
    LIMIT $7
""",
    "org",
    "after",
    "patient",
    "participant",
    "during",
    "statuses",
    "limit",
)
PERIODS_OF = Sql(
    """
    SELECT patient_id, provider_id, role, lower(valid) AS valid_from, upper(valid) AS valid_to,
           start_reason, end_reason
    FROM care_team_periods
    WHERE organization_id = $1 AND patient_id = ANY ($2::uuid[])
    ORDER BY patient_id, lower(valid), provider_id
""",
    "org",
    "patients",
)
PRIMARIES_OF = Sql(
    """
    SELECT patient_id, provider_id FROM care_team_assignments
    WHERE organization_id = $1 AND patient_id = ANY ($2::uuid[]) AND is_primary_provider
""",
    "org",
    "patients",
)


@dataclass(frozen=True)
class TeamRecord:
    """A patient's longitudinal care team: every period of it, oldest first."""

    patient_id: uuid.UUID
    active: bool
    periods: list[CareTeamPeriodRecord]


def _range(during: tuple[datetime.datetime, datetime.datetime] | None) -> Range | None:
    if during is None:
        return None
    return Range(during[0], during[1], lower_inc=True, upper_inc=False)


def _without_patient(row: Any) -> dict[str, Any]:
    fields = dict(row)
    del fields["patient_id"]
    return fields


class FhirService:
    """Reads for the FHIR view."""

    @staticmethod
    async def search_care_teams(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        where: CareTeamFilter,
        limit: int,
        after: uuid.UUID | None = None,
    ) -> list[TeamRecord]:
        """Care teams (one per patient that has or had one) matching `where`, in patient
        id order after `after`, at most `limit`, each with all its periods."""

        async def work(driver: Any) -> list[TeamRecord]:
            rows = await SEARCH_TEAMS.fetch(
                driver,
                {
                    "org": organization_id,
                    "after": after or FIRST,
                    "patient": where.patient,
                    "participant": where.participant,
                    "during": _range(where.during),
                    "statuses": sorted(where.statuses),
                    "limit": limit,
                },
            )
            ids = [r["patient_id"] for r in rows]
            periods: dict[uuid.UUID, list[CareTeamPeriodRecord]] = {i: [] for i in ids}
            if ids:
                for p in await PERIODS_OF.fetch(driver, {"org": organization_id, "patients": ids}):
                    periods[p["patient_id"]].append(CareTeamPeriodRecord(**_without_patient(p)))
            return [
                TeamRecord(r["patient_id"], r["active"], periods[r["patient_id"]]) for r in rows
            ]

        return await run_transaction(
            db,
            operation="search_care_teams",
            organization_id=organization_id,
            work=work,
            read_only=True,
        )

    @staticmethod
    async def care_team(
        *, db: AsyncSession, organization_id: uuid.UUID, patient_id: uuid.UUID
    ) -> TeamRecord | None:
        """The patient's care team, all its periods (None: it never had one, or the
        patient is unknown here). One statement."""

        async def work(driver: Any) -> TeamRecord | None:
            rows = await PERIODS_OF.fetch(
                driver, {"org": organization_id, "patients": [patient_id]}
            )
            if not rows:
                return None
            periods = [CareTeamPeriodRecord(**_without_patient(r)) for r in rows]
            return TeamRecord(patient_id, any(p.valid_to is None for p in periods), periods)

        return await run_transaction(
            db,
            operation="read_care_team",
            organization_id=organization_id,
            work=work,
            read_only=True,
        )

    @staticmethod
    async def primaries_of(
        *, db: AsyncSession, organization_id: uuid.UUID, patients: list[uuid.UUID]
    ) -> dict[uuid.UUID, uuid.UUID]:
        """The current primary provider of each of these patients that has one."""
        if not patients:
            return {}

        async def work(driver: Any) -> dict[uuid.UUID, uuid.UUID]:
            rows = await PRIMARIES_OF.fetch(driver, {"org": organization_id, "patients": patients})
            return {r["patient_id"]: r["provider_id"] for r in rows}

        return await run_transaction(
            db,
            operation="primaries_of",
            organization_id=organization_id,
            work=work,
            read_only=True,
        )
