"""CareTeamService: every change to a patient's care team goes through here.

Guarantees:

- Each public write is one atomic unit of work: it sets the tenant, locks the patient,
  changes care_team_assignments, writes care_team_events, and commits; on any failure it
  rolls back and nothing of it remains.
- Writers of one (organization, patient) are serialised by a row lock on the patient
  (``SELECT ... FOR NO KEY UPDATE``), taken before care_team_assignments is touched, so
  concurrent assignments queue instead of colliding: the last to commit wins and exactly
  one primary remains. Operations over several patients take the locks in
  (organization_id, patient_id) order.
- The database enforces the rule itself (idx_unique_primary_provider_per_patient); a
  write refused by it surfaces as PrimaryProviderConflict, never as a driver error.
- Assigning a new primary never deletes the old one: it stays on the team as secondary.

`db` is an AsyncSession on the application engine (RLS applies); ids are uuid.UUID.
Logs carry ids only.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from src.metrics import ASSIGNMENTS, LOCK_WAIT
from src.models import EventType
from src.services.errors import (
    CareTeamError,
    PatientNotFound,
    ProviderAlreadyPrimary,
    ProviderInactive,
    ProviderNotOnCareTeam,
    ProviderReferenceNotFound,
)
from src.services.transaction import Sql, run_in_transaction

logger = logging.getLogger(__name__)

MAX_HISTORY_PAGE = 500


@dataclass(frozen=True)
class CareTeamMember:
    provider_id: uuid.UUID
    is_primary_provider: bool
    assigned_at: datetime.datetime


@dataclass(frozen=True)
class CareTeam:
    """A patient's care team: the primary first, then secondaries by assigned_at."""

    patient_id: uuid.UUID
    primary_provider_id: uuid.UUID | None
    members: list[CareTeamMember]
    # For the team a write returns: whether that write changed it (None for reads).
    changed: bool | None = None

    def has(self, provider_id: uuid.UUID) -> bool:
        return any(m.provider_id == provider_id for m in self.members)


@dataclass(frozen=True)
class CareTeamEventRecord:
    """One event. `id` is its number within the organization (care_team_events.seq:
    1, 2, 3, ... in commit order), never the table's internal identity."""

    id: int
    patient_id: uuid.UUID
    provider_id: uuid.UUID
    event_type: str
    previous_primary_provider_id: uuid.UUID | None
    actor: str
    reason: str | None
    occurred_at: datetime.datetime


# --- SQL ---------------------------------------------------------------------------
# Every statement filters on organization_id as well, although RLS already does: the
# indexes lead with it, and a mistake in one layer is caught by the other.


# The per-patient writer lock. NO KEY UPDATE, so it does not block the KEY SHARE locks
# that foreign key checks on care_team_assignments take.
LOCK_PATIENT = Sql(
    """
    SELECT id FROM patients
    WHERE organization_id = $1 AND id = $2
    FOR NO KEY UPDATE
""",
    "org",
    "patient",
)

# The lock above and the provider check in one round trip: the patient first, then
# the provider FOR SHARE (a concurrent deactivation waits until this write commits).
# Assigners only share provider locks, so the order cannot deadlock them.
LOCK_PATIENT_CHECK_PROVIDER = Sql(
    """
    SELECT (SELECT id FROM patients
            WHERE organization_id = $1 AND id = $2
            FOR NO KEY UPDATE) AS patient_id,
           (SELECT active FROM providers
            WHERE organization_id = $1 AND id = $3
            FOR SHARE) AS active
""",
    "org",
    "patient",
    "provider",
)

SELECT_ASSIGNMENT = Sql(
    """
    SELECT is_primary_provider FROM care_team_assignments
    WHERE organization_id = $1 AND patient_id = $2 AND provider_id = $3
""",
    "org",
    "patient",
    "provider",
)

# Demote every primary but :provider (normally at most one; before the unique index
# exists there may be several), recording one primary_demoted event each; returns the
# demoted providers.
DEMOTE_OTHERS = Sql(
    """
    WITH demoted AS (
        UPDATE care_team_assignments SET is_primary_provider = false
        WHERE organization_id = $1 AND patient_id = $2 AND is_primary_provider
          AND provider_id <> $3
        RETURNING organization_id, patient_id, provider_id
    )
    INSERT INTO care_team_events
        (organization_id, patient_id, provider_id, event_type,
         previous_primary_provider_id, actor, reason, occurred_at)
    SELECT organization_id, patient_id, provider_id, $6,
           provider_id, $4, $5, clock_timestamp()
    FROM demoted
    RETURNING provider_id
""",
    "org",
    "patient",
    "provider",
    "actor",
    "reason",
    "event_type",
)

# Make :provider primary (adding it to the team if needed) and record primary_assigned;
# a provider that already is primary is left alone (no event). Returns it if promoted.
# clock_timestamp(), not now(): a writer that waited for the lock records when it
# actually changed the team, so "latest assigned_at" means "last to commit".
PROMOTE_AND_RECORD = Sql(
    """
    WITH promoted AS (
        INSERT INTO care_team_assignments
            (organization_id, patient_id, provider_id, is_primary_provider, assigned_at)
        VALUES ($1, $2, $3, true, clock_timestamp())
        ON CONFLICT (organization_id, patient_id, provider_id)
        DO UPDATE SET is_primary_provider = true, assigned_at = clock_timestamp()
        WHERE NOT care_team_assignments.is_primary_provider
        RETURNING organization_id, patient_id, provider_id
    )
    INSERT INTO care_team_events
        (organization_id, patient_id, provider_id, event_type,
         previous_primary_provider_id, actor, reason, occurred_at)
    SELECT organization_id, patient_id, provider_id, $7,
           $4, $5, $6, clock_timestamp()
    FROM promoted
    RETURNING provider_id
""",
    "org",
    "patient",
    "provider",
    "previous_primary",
    "actor",
    "reason",
    "event_type",
)

INSERT_SECONDARY = Sql(
    """
    INSERT INTO care_team_assignments
        (organization_id, patient_id, provider_id, is_primary_provider, assigned_at)
    VALUES ($1, $2, $3, false, clock_timestamp())
""",
    "org",
    "patient",
    "provider",
)

DELETE_ASSIGNMENT = Sql(
    """
    DELETE FROM care_team_assignments
    WHERE organization_id = $1 AND patient_id = $2 AND provider_id = $3
    RETURNING is_primary_provider
""",
    "org",
    "patient",
    "provider",
)

INSERT_EVENT = Sql(
    """
    INSERT INTO care_team_events
        (organization_id, patient_id, provider_id, event_type,
         previous_primary_provider_id, actor, reason, occurred_at)
    VALUES ($1, $2, $3, $4,
            $5, $6, $7, clock_timestamp())
""",
    "org",
    "patient",
    "provider",
    "event_type",
    "previous_primary",
    "actor",
    "reason",
)

# The patient row comes back even with an empty team, so "no such patient" and
# "no members" are told apart in one round trip.
SELECT_TEAM = Sql(
    """
    SELECT p.id AS patient_id, a.provider_id, a.is_primary_provider, a.assigned_at
    FROM patients AS p
    LEFT JOIN care_team_assignments AS a
        ON a.organization_id = p.organization_id AND a.patient_id = p.id
    WHERE p.organization_id = $1 AND p.id = $2
    ORDER BY a.is_primary_provider DESC, a.assigned_at, a.provider_id
""",
    "org",
    "patient",
)

SELECT_PATIENT_PRIMARY = Sql(
    """
    SELECT p.id, a.provider_id
    FROM patients AS p
    LEFT JOIN care_team_assignments AS a
        ON a.organization_id = p.organization_id AND a.patient_id = p.id
       AND a.is_primary_provider
    WHERE p.organization_id = $1 AND p.id = $2
""",
    "org",
    "patient",
)

SELECT_PATIENT = Sql(
    "SELECT id FROM patients WHERE organization_id = $1 AND id = $2", "org", "patient"
)

SELECT_HISTORY = Sql(
    """
    SELECT seq AS id, patient_id, provider_id, event_type, previous_primary_provider_id,
           actor, reason, occurred_at
    FROM care_team_events
    WHERE organization_id = $1 AND patient_id = $2
      AND (CAST($3 AS bigint) IS NULL OR seq < CAST($3 AS bigint))
    ORDER BY seq DESC
    LIMIT $4
""",
    "org",
    "patient",
    "before_id",
    "limit",
)


async def _read_team(driver: Any, org: uuid.UUID, patient: uuid.UUID) -> CareTeam:
    rows = await SELECT_TEAM.fetch(driver, {"org": org, "patient": patient})
    if not rows:
        raise PatientNotFound(patient)
    members = [
        CareTeamMember(row["provider_id"], row["is_primary_provider"], row["assigned_at"])
        for row in rows
        if row["provider_id"] is not None
    ]
    primary = next((m.provider_id for m in members if m.is_primary_provider), None)
    return CareTeam(patient_id=patient, primary_provider_id=primary, members=members)


@dataclass
class _PatientWrite:
    """The steps of one write to one patient's team, inside its transaction.

    Internal: it never commits; the public method around it does. `driver` is the
    current attempt's asyncpg connection (run_in_transaction hands it to the work).
    """

    org: uuid.UUID
    patient: uuid.UUID
    actor: str
    reason: str | None
    driver: Any = None

    def params(self, provider: uuid.UUID | None = None) -> dict[str, Any]:
        return {"org": self.org, "patient": self.patient, "provider": provider}

    async def lock_patient(self) -> None:
        """The per-patient writer lock; also proves the patient is in this organization."""
        started = time.perf_counter()
        found = await LOCK_PATIENT.fetchval(self.driver, self.params())
        LOCK_WAIT.observe(time.perf_counter() - started)
        if found is None:
            raise PatientNotFound(self.patient)

    async def lock_patient_check_provider(self, provider: uuid.UUID) -> None:
        """The patient lock and the provider check, in one round trip."""
        started = time.perf_counter()
        row = await LOCK_PATIENT_CHECK_PROVIDER.fetchrow(self.driver, self.params(provider))
        LOCK_WAIT.observe(time.perf_counter() - started)
        if row["patient_id"] is None:
            raise PatientNotFound(self.patient)
        if row["active"] is None:
            raise ProviderReferenceNotFound(provider)
        if not row["active"]:
            raise ProviderInactive(provider)

    async def changed_providers(
        self,
        statement: Sql,
        event_type: EventType,
        provider: uuid.UUID,
        previous_primary: uuid.UUID | None = None,
    ) -> list[uuid.UUID]:
        """Run a change-with-event statement; the providers it changed."""
        params = {
            **self.event_params(provider, previous_primary),
            "event_type": event_type.value,
        }
        rows = await statement.fetch(self.driver, params)
        return [r["provider_id"] for r in rows]

    async def scalar(self, statement: Sql, provider: uuid.UUID | None = None) -> Any:
        return await statement.fetchval(self.driver, self.params(provider))

    async def execute(self, statement: Sql, provider: uuid.UUID) -> None:
        await statement.execute(self.driver, self.params(provider))

    def event_params(
        self, provider: uuid.UUID, previous_primary: uuid.UUID | None
    ) -> dict[str, Any]:
        return {
            **self.params(provider),
            "previous_primary": previous_primary,
            "actor": self.actor,
            "reason": self.reason,
        }

    async def record(
        self,
        event_type: EventType,
        provider: uuid.UUID,
        previous_primary: uuid.UUID | None = None,
    ) -> None:
        """Append the event, in the same transaction as the change it records."""
        params = {**self.event_params(provider, previous_primary), "event_type": event_type.value}
        await INSERT_EVENT.execute(self.driver, params)

    async def team(self) -> CareTeam:
        return await _read_team(self.driver, self.org, self.patient)

    async def team_if(self, driver: Any, in_place: Callable[[CareTeam], bool]) -> CareTeam | None:
        """The `verify` of a write whose COMMIT was lost: the team if `in_place` finds the
        change there, else None (the write runs again)."""
        self.driver = driver
        team = await self.team()
        return team if in_place(team) else None


# --- the service ---------------------------------------------------------------------


class CareTeamService:
    """Stateless operations on care teams; each public method is one transaction.

    Writes are retried only when they certainly did not commit, or, when the connection
    was lost during COMMIT, after checking that the change is not already in place
    (see run_in_transaction): every write here is idempotent in its effect.
    """

    @staticmethod
    async def assign_primary_provider(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        patient_id: uuid.UUID,
        provider_id: uuid.UUID,
        actor: str = "system",
        reason: str | None = None,
    ) -> CareTeam:
        """Make `provider_id` the patient's primary provider; return the team after it.

        Locks the patient, demotes the current primary to secondary (it stays on the
        team), makes the provider primary (adding it to the team if needed), and records
        primary_demoted / primary_assigned events; commits. Idempotent: assigning the
        current primary changes nothing and writes no event.
        Raises PatientNotFound, ProviderReferenceNotFound (the provider is unknown here),
        ProviderInactive, PrimaryProviderConflict
        (a writer that bypassed the lock), DatabaseUnavailable, DatabaseError.
        """
        write = _PatientWrite(organization_id, patient_id, actor, reason)
        changes: list[Any] = [None, False]  # previous primary, whether anything changed

        async def work(driver: Any) -> CareTeam:
            write.driver = driver
            await write.lock_patient_check_provider(provider_id)
            demoted = await write.changed_providers(
                DEMOTE_OTHERS, EventType.PRIMARY_DEMOTED, provider_id
            )
            previous = demoted[0] if demoted else None
            promoted = await write.changed_providers(
                PROMOTE_AND_RECORD, EventType.PRIMARY_ASSIGNED, provider_id, previous
            )
            changes[:] = [previous, bool(demoted or promoted)]
            return await write.team()

        def verify(driver: Any) -> Awaitable[CareTeam | None]:
            return write.team_if(driver, lambda team: team.primary_provider_id == provider_id)

        try:
            team = await run_in_transaction(
                db,
                operation="assign_primary_provider",
                organization_id=organization_id,
                patient_id=patient_id,
                work=work,
                verify=verify,
            )
        except CareTeamError as err:
            ASSIGNMENTS.labels(outcome=err.code).inc()
            raise
        ASSIGNMENTS.labels(outcome="changed" if changes[1] else "unchanged").inc()
        logger.info(
            "primary provider assigned organization_id=%s patient_id=%s provider_id=%s "
            "previous_primary_provider_id=%s",
            organization_id,
            patient_id,
            provider_id,
            changes[0],
            extra={"event": "primary_assigned", "changed": changes[1]},
        )
        return team

    @staticmethod
    async def add_secondary_provider(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        patient_id: uuid.UUID,
        provider_id: uuid.UUID,
        actor: str = "system",
        reason: str | None = None,
    ) -> CareTeam:
        """Add `provider_id` to the patient's team as a secondary; return the team
        (`changed` says whether it was added now).

        Never touches the primary: if the provider is the primary, raises
        ProviderAlreadyPrimary. Adding a provider that is already a secondary changes
        nothing. Raises PatientNotFound, ProviderReferenceNotFound, ProviderInactive too.
        """
        write = _PatientWrite(organization_id, patient_id, actor, reason)

        async def work(driver: Any) -> CareTeam:
            write.driver = driver
            await write.lock_patient_check_provider(provider_id)
            is_primary = await write.scalar(SELECT_ASSIGNMENT, provider_id)
            if is_primary:
                raise ProviderAlreadyPrimary(patient_id, provider_id)
            if is_primary is None:
                await write.execute(INSERT_SECONDARY, provider_id)
                await write.record(EventType.SECONDARY_ADDED, provider_id)
            return dataclasses.replace(await write.team(), changed=is_primary is None)

        async def verify(driver: Any) -> CareTeam | None:
            # The COMMIT was lost and the provider is on the team: this write added it.
            team = await write.team_if(driver, lambda team: team.has(provider_id))
            return None if team is None else dataclasses.replace(team, changed=True)

        team = await run_in_transaction(
            db,
            operation="add_secondary_provider",
            organization_id=organization_id,
            patient_id=patient_id,
            work=work,
            verify=verify,
        )
        logger.info(
            "secondary provider added organization_id=%s patient_id=%s provider_id=%s",
            organization_id,
            patient_id,
            provider_id,
            extra={"event": "secondary_added"},
        )
        return team

    @staticmethod
    async def remove_provider(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        patient_id: uuid.UUID,
        provider_id: uuid.UUID,
        actor: str = "system",
        reason: str | None = None,
    ) -> CareTeam:
        """Take `provider_id` off the patient's team; return the team after it.

        Removing the primary leaves the patient without one (the diagnostic reports it).
        Raises PatientNotFound, or ProviderNotOnCareTeam if the provider is not on it.
        """
        write = _PatientWrite(organization_id, patient_id, actor, reason)

        async def work(driver: Any) -> CareTeam:
            write.driver = driver
            await write.lock_patient()
            was_primary = await write.scalar(DELETE_ASSIGNMENT, provider_id)
            if was_primary is None:
                raise ProviderNotOnCareTeam(patient_id, provider_id)
            previous_primary = provider_id if was_primary else None
            await write.record(EventType.PROVIDER_REMOVED, provider_id, previous_primary)
            return await write.team()

        def verify(driver: Any) -> Awaitable[CareTeam | None]:
            return write.team_if(driver, lambda team: not team.has(provider_id))

        team = await run_in_transaction(
            db,
            operation="remove_provider",
            organization_id=organization_id,
            patient_id=patient_id,
            work=work,
            verify=verify,
        )
        logger.info(
            "provider removed organization_id=%s patient_id=%s provider_id=%s",
            organization_id,
            patient_id,
            provider_id,
            extra={"event": "provider_removed"},
        )
        return team

    @staticmethod
    async def get_primary_provider(
        *, db: AsyncSession, organization_id: uuid.UUID, patient_id: uuid.UUID
    ) -> uuid.UUID | None:
        """The patient's primary provider id, or None. Raises PatientNotFound."""

        async def work(driver: Any) -> uuid.UUID | None:
            params = {"org": organization_id, "patient": patient_id}
            rows = await SELECT_PATIENT_PRIMARY.fetch(driver, params)
            if not rows:
                raise PatientNotFound(patient_id)
            primary: uuid.UUID | None = rows[0]["provider_id"]
            return primary

        return await run_in_transaction(
            db,
            operation="get_primary_provider",
            organization_id=organization_id,
            patient_id=patient_id,
            work=work,
            read_only=True,
        )

    @staticmethod
    async def get_care_team(
        *, db: AsyncSession, organization_id: uuid.UUID, patient_id: uuid.UUID
    ) -> CareTeam:
        """The patient's whole care team, primary first. Raises PatientNotFound."""
        return await run_in_transaction(
            db,
            operation="get_care_team",
            organization_id=organization_id,
            patient_id=patient_id,
            work=lambda driver: _read_team(driver, organization_id, patient_id),
            read_only=True,
        )

    @staticmethod
    async def get_care_team_history(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        patient_id: uuid.UUID,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[CareTeamEventRecord]:
        """The patient's care team events, newest first.

        Page with `limit` (1..MAX_HISTORY_PAGE) and `before_id` (the last id of the
        previous page; ids are numbers within the organization). Raises PatientNotFound.
        """
        limit = max(1, min(limit, MAX_HISTORY_PAGE))
        params = {"org": organization_id, "patient": patient_id}

        async def work(driver: Any) -> list[CareTeamEventRecord]:
            if await SELECT_PATIENT.fetchval(driver, params) is None:
                raise PatientNotFound(patient_id)
            rows = await SELECT_HISTORY.fetch(
                driver, {**params, "before_id": before_id, "limit": limit}
            )
            return [CareTeamEventRecord(**dict(row)) for row in rows]

        return await run_in_transaction(
            db,
            operation="get_care_team_history",
            organization_id=organization_id,
            patient_id=patient_id,
            work=work,
            read_only=True,
        )
