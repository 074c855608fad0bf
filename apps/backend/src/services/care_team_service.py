"""CareTeamService: every change to a patient's care team goes through here.

Guarantees:

- Each public write is one atomic unit of work, one statement: careteam_change_team
  (sql/functions/careteam_change_team/) sets the tenant, claims the Idempotency-Key if
  any, locks the patient, and runs the change function (careteam_assign_primary,
  careteam_add_secondary, careteam_remove_member), which changes care_team_assignments
  and writes care_team_events; the trigger on the assignments keeps care_team_periods in
  step (careteam_keep_periods, careteam_change_period); it commits where the statement
  ends. On any failure it rolls back and nothing of it remains.
- Writers of one (organization, patient) are serialised by a row lock on the patient
  (``SELECT ... FOR NO KEY UPDATE``), taken before care_team_assignments is touched, so
  concurrent assignments queue instead of colliding: the last to commit wins and exactly
  one primary remains. A primary assignment then locks its provider (after the patient,
  as every writer does), so a panel's capacity holds under any concurrency.
- The database enforces the rule itself (idx_unique_primary_provider_per_patient), and
  through time (exclusion constraints on care_team_periods); a write refused by the
  index surfaces as PrimaryProviderConflict, never as a driver error.
- Assigning a new primary never deletes the old one: it stays on the team as secondary.
- Every write takes a reason from ChangeReason (default `other`) and an optional note of
  at most NOTE_MAX_LENGTH characters, stored on its events and periods. A note may hold
  health information: it is never logged.

`db` is an AsyncSession on the application engine (RLS applies); ids are uuid.UUID.
Logs carry ids only.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from src.metrics import ASSIGNMENTS, LOCK_WAIT
from src.models import NOTE_MAX_LENGTH, ChangeReason, PeriodRole
from src.services.errors import (
    CareTeamError,
    InvalidArgument,
    InvalidCursor,
    PatientNotFound,
    Subject,
    page_limit,
)
from src.services.idempotency import IdempotencyKey
from src.services.transaction import Sql, run_statement, run_transaction

logger = logging.getLogger(__name__)

MAX_HISTORY_PAGE = 500
PRIMARY = PeriodRole.PRIMARY.value
MAX_PERIODS_PAGE = 500


@dataclass(frozen=True)
class CareTeamMember:
    provider_id: uuid.UUID
    is_primary_provider: bool
    assigned_at: datetime.datetime
    since: datetime.datetime | None = None  # when its current role began
    first_name: str | None = None
    last_name: str | None = None
    active: bool = True

    @property
    def role(self) -> PeriodRole:
        return PeriodRole.PRIMARY if self.is_primary_provider else PeriodRole.SECONDARY


@dataclass(frozen=True)
class CareTeam:
    """A patient's care team: the primary first, then secondaries by assigned_at."""

    patient_id: uuid.UUID
    primary_provider_id: uuid.UUID | None
    members: list[CareTeamMember]
    # For the team a write returns: whether that write changed it (None for reads).
    changed: bool | None = None
    # The team's version, its ETag: the number of the patient's last care team event (0:
    # none), which every change of the team makes larger, and the sum of its members'
    # record versions, which a change of a member's name or `active` makes larger. None
    # for a team as of an instant.
    version: tuple[int, int] | None = None

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
    note: str | None
    occurred_at: datetime.datetime


@dataclass(frozen=True)
class CareTeamPeriodRecord:
    """When `provider_id` held `role` on the patient's team: [valid_from, valid_to), open
    (valid_to None) while it lasts."""

    provider_id: uuid.UUID
    role: str
    valid_from: datetime.datetime
    valid_to: datetime.datetime | None
    start_reason: str
    end_reason: str | None


# --- SQL ---------------------------------------------------------------------------
# Every statement filters on organization_id as well, although RLS already does: the
# indexes lead with it, and a mistake in one layer is caught by the other.

# A care team change, in one statement that is its own transaction, with or without an
# Idempotency-Key: careteam_change_team (sql/functions/careteam_change_team/v1.sql) sets
# the tenant and checks the session's API key ($9), claims the key ($11, with the
# request's fingerprint $12) or answers with its stored result (`replayed`), checks the
# team's version when the caller names one ($8), runs the change ($1: assign_primary,
# add_secondary or remove_member, through careteam_assign_primary, careteam_add_secondary
# and careteam_remove_member), stores the result under the key, and returns the team
# after it as SELECT_TEAM reads it, each row with the change's outcome. Its events carry
# $10, the write's id.
WRITE = Sql(
    """
    SELECT replayed, changed, previous_primary, patient_id, provider_id,
           is_primary_provider, assigned_at, since, first_name, last_name, active,
           provider_version, version
    FROM careteam_change_team($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
""",
    "op",
    "org",
    "patient",
    "provider",
    "actor",
    "reason",
    "note",
    "if_version",
    "key",
    "write_id",
    "idempotency_key",
    "fingerprint",
)

# The current team: careteam_care_team (sql/functions/careteam_care_team/) sets the
# tenant, checks the session's API key when it acts as one (key_hash_of), and reads the
# patient row with its members (names, `active`, `since`: the start of the open period)
# and the team's version. The patient row comes back even with an empty team, so "no
# such patient" and "no members" are told apart in the same round trip. One statement:
# a read runs it alone, in an implicit transaction.
SELECT_TEAM = Sql(
    """
    SELECT patient_id, provider_id, is_primary_provider, assigned_at, since, first_name,
           last_name, active, provider_version, version
    FROM careteam_care_team($1, $2, $3)
""",
    "org",
    "patient",
    "key",
)

# The team as it stood at $3: careteam_care_team_as_of
# (sql/functions/careteam_care_team_as_of/v1.sql) sets the tenant, checks the key like SELECT_TEAM,
# and reads the periods that held then (assigned_at and since: the period's start;
# version NULL). One statement too.
SELECT_TEAM_AS_OF = Sql(
    """
    SELECT patient_id, provider_id, is_primary_provider, assigned_at, since, first_name,
           last_name, active, provider_version, version
    FROM careteam_care_team_as_of($1, $2, $3, $4)
""",
    "org",
    "patient",
    "as_of",
    "key",
)

# The organization's events after a number, in number order: the numbers are given in
# commit order with no gaps (migration 20261128_event_sequence), so a reader that
# resumes after the last number it saw skips and repeats nothing.
SELECT_FEED = Sql(
    """
    SELECT seq AS id, patient_id, provider_id, event_type, previous_primary_provider_id,
           actor, reason, note, occurred_at
    FROM care_team_events
    WHERE organization_id = $1 AND seq > $2
    ORDER BY seq
    LIMIT $3
""",
    "org",
    "after",
    "limit",
)

# The organization's last event number (0: none yet).
SELECT_HEAD = Sql(
    "SELECT coalesce((SELECT last_seq FROM care_team_event_sequences "
    "WHERE organization_id = $1), 0)",
    "org",
)

SELECT_PATIENT = Sql(
    "SELECT id FROM patients WHERE organization_id = $1 AND id = $2", "org", "patient"
)

SELECT_HISTORY = Sql(
    """
    SELECT seq AS id, patient_id, provider_id, event_type, previous_primary_provider_id,
           actor, reason, note, occurred_at
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

# Oldest first, by (start, provider): unique for a patient, since one provider's periods
# never overlap.
SELECT_PERIODS = Sql(
    """
    SELECT provider_id, role, lower(valid) AS valid_from, upper(valid) AS valid_to,
           start_reason, end_reason
    FROM care_team_periods
    WHERE organization_id = $1 AND patient_id = $2
      AND (CAST($3 AS timestamptz) IS NULL
           OR (lower(valid), provider_id) > (CAST($3 AS timestamptz), CAST($4 AS uuid)))
    ORDER BY lower(valid), provider_id
    LIMIT $5
""",
    "org",
    "patient",
    "after_from",
    "after_provider",
    "limit",
)


def _members(rows: list[Any]) -> list[CareTeamMember]:
    return [
        CareTeamMember(
            provider_id=row["provider_id"],
            is_primary_provider=row["is_primary_provider"],
            assigned_at=row["assigned_at"],
            since=row["since"],
            first_name=row["first_name"],
            last_name=row["last_name"],
            active=row["active"],
        )
        for row in rows
        if row["provider_id"] is not None
    ]


async def _read_team(
    driver: Any,
    org: uuid.UUID,
    patient: uuid.UUID,
    as_of: datetime.datetime | None,
    *,
    key_hash: str | None,
) -> CareTeam:
    """The team, now or at `as_of`, in one statement that checks `key_hash` (the
    session's API key, if any) itself."""
    params = {"org": org, "patient": patient, "key": key_hash}
    if as_of is None:
        rows = await SELECT_TEAM.fetch(driver, params)
    else:
        rows = await SELECT_TEAM_AS_OF.fetch(driver, {**params, "as_of": as_of})
    if not rows:
        raise PatientNotFound(patient)
    return _team(patient, rows)


def _team(patient: uuid.UUID, rows: list[Any]) -> CareTeam:
    """The team in the rows SELECT_TEAM, SELECT_TEAM_AS_OF or WRITE return."""
    members = _members(rows)
    primary = next((m.provider_id for m in members if m.is_primary_provider), None)
    seq = rows[0]["version"]
    members_version = sum(r["provider_version"] or 0 for r in rows)
    return CareTeam(
        patient_id=patient,
        primary_provider_id=primary,
        members=members,
        version=None if seq is None else (seq, members_version),
    )


def change_reason(reason: ChangeReason | str | None, note: str | None) -> tuple[str, str | None]:
    """The reason (default `other`) and note as stored; InvalidArgument if either breaks
    its rule."""
    if reason is None:
        reason = ChangeReason.OTHER
    try:
        value = ChangeReason(reason).value
    except ValueError:
        known = ", ".join(r.value for r in ChangeReason)
        raise InvalidArgument(f"reason must be one of {known}", field="reason") from None
    if note is not None and len(note) > NOTE_MAX_LENGTH:
        raise InvalidArgument(f"note must be at most {NOTE_MAX_LENGTH} characters", field="note")
    return value, note


@dataclass
class _PatientWrite:
    """One change to one patient's team: careteam_change_team, which returns the team
    after it. Internal: the public method around it runs it with run_statement."""

    org: uuid.UUID
    patient: uuid.UUID
    provider: uuid.UUID
    actor: str
    reason: str
    note: str | None
    if_version: tuple[int, ...] | None = None  # the team's version the caller expects

    @classmethod
    def of(
        cls,
        org: uuid.UUID,
        patient: uuid.UUID,
        provider: uuid.UUID,
        *,
        actor: str,
        reason: ChangeReason | str | None,
        note: str | None,
        if_version: tuple[int, ...] | None = None,
    ) -> _PatientWrite:
        """The write, its reason and note checked (InvalidArgument)."""
        return cls(org, patient, provider, actor, *change_reason(reason, note), if_version)

    async def run(
        self, db: AsyncSession, op: str, operation: str, idempotency: IdempotencyKey | None
    ) -> tuple[CareTeam, uuid.UUID | None]:
        """Run it (`op`: assign_primary, add_secondary, remove_member; `operation`: the
        service method, for logs) as its own transaction: the team after it, `changed`
        set, and the previous primary careteam_change_team reports.

        One statement, sent alone, with or without an Idempotency-Key (`idempotency`:
        the key and the request's fingerprint; `idempotency.replayed` is set when the
        answer is the result stored by the request first sent with it). A connection
        lost before the answer leaves unknown whether it ran: it is sent again, with the
        same write id and key, and careteam_change_team, finding the key's stored result
        or that id on the events under the patient's lock, changes nothing more (a write
        that changes nothing records no event, and running it again is as harmless).
        Its time starts with the patient's lock, so its tail is mostly lock waits
        (careteam_patient_lock_wait_seconds: the whole statement).
        """
        params = {
            "op": op,
            "org": self.org,
            "patient": self.patient,
            "provider": self.provider,
            "actor": self.actor,
            "reason": self.reason,
            "note": self.note,
            "if_version": None if self.if_version is None else list(self.if_version),
            "write_id": uuid.uuid4(),
            "idempotency_key": None if idempotency is None else idempotency.key,
            "fingerprint": None if idempotency is None else idempotency.fingerprint,
        }

        async def statement(driver: Any, key_hash: str | None) -> list[Any]:
            started = time.perf_counter()
            try:
                return await WRITE.fetch(driver, {**params, "key": key_hash})
            finally:
                LOCK_WAIT.observe(time.perf_counter() - started)

        rows = await run_statement(
            db,
            operation=operation,
            organization_id=self.org,
            subject=Subject(patient_id=self.patient, provider_id=self.provider),
            statement=statement,
        )
        if idempotency is not None and rows[0]["replayed"]:
            idempotency.replayed = True
        team = dataclasses.replace(_team(self.patient, rows), changed=rows[0]["changed"])
        return team, rows[0]["previous_primary"]


def _outcome(team: CareTeam, idempotency: IdempotencyKey | None) -> str:
    """What a write did, for its log line: changed, unchanged (the team already was so),
    or replayed (an Idempotency-Key's stored answer; nothing ran)."""
    if idempotency is not None and idempotency.replayed:
        return "replayed"
    return "changed" if team.changed else "unchanged"


# --- the service ---------------------------------------------------------------------


class CareTeamService:
    """Stateless operations on care teams; each public method is one transaction.

    Writes are retried only when they certainly did not commit, or, when the connection
    was lost during COMMIT, after checking that the change is not already in place
    (see run_transaction): every write here is idempotent in its effect.

    Every write takes `if_version`: the team's `version` as the caller read it. Then,
    under the patient's lock, the write goes ahead only if the team is still at that
    version; otherwise it raises PreconditionFailed and changes nothing (If-Match).
    """

    @staticmethod
    async def assign_primary_provider(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        patient_id: uuid.UUID,
        provider_id: uuid.UUID,
        actor: str = "system",
        reason: ChangeReason | str | None = None,
        note: str | None = None,
        if_version: tuple[int, ...] | None = None,
        idempotency: IdempotencyKey | None = None,
    ) -> CareTeam:
        """Make `provider_id` the patient's primary provider; return the team after it.

        Locks the patient, then the provider; demotes the current primary to secondary
        (it stays on the team), makes the provider primary (adding it to the team if
        needed), and records primary_demoted / primary_assigned events; commits.
        Idempotent: assigning the current primary changes nothing and writes no event.
        Raises PatientNotFound, ProviderReferenceNotFound (the provider is unknown here),
        ProviderInactive, PanelFull (its capacity is reached), PrimaryProviderConflict (a
        writer that bypassed the lock), InvalidArgument, DatabaseBusy,
        DatabaseUnavailable, DatabaseError.
        """
        write = _PatientWrite.of(
            organization_id,
            patient_id,
            provider_id,
            actor=actor,
            reason=reason,
            note=note,
            if_version=if_version,
        )
        try:
            team, previous = await write.run(
                db, "assign_primary", "assign_primary_provider", idempotency
            )
        except CareTeamError as err:
            ASSIGNMENTS.labels(outcome=err.code).inc()
            raise
        ASSIGNMENTS.labels(outcome="changed" if team.changed else "unchanged").inc()
        outcome = _outcome(team, idempotency)
        logger.info(
            "primary provider assign: %s organization_id=%s patient_id=%s provider_id=%s "
            "previous_primary_provider_id=%s",
            outcome,
            organization_id,
            patient_id,
            provider_id,
            previous if outcome == "changed" else None,
            extra={"event": "primary_assigned", "changed": outcome == "changed"},
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
        reason: ChangeReason | str | None = None,
        note: str | None = None,
        if_version: tuple[int, ...] | None = None,
        idempotency: IdempotencyKey | None = None,
    ) -> CareTeam:
        """Add `provider_id` to the patient's team as a secondary; return the team
        (`changed` says whether it was added now).

        Never touches the primary: if the provider is the primary, raises
        ProviderAlreadyPrimary. Adding a provider that is already a secondary changes
        nothing. Raises PatientNotFound, ProviderReferenceNotFound, ProviderInactive,
        InvalidArgument too.
        """
        write = _PatientWrite.of(
            organization_id,
            patient_id,
            provider_id,
            actor=actor,
            reason=reason,
            note=note,
            if_version=if_version,
        )

        team, _ = await write.run(db, "add_secondary", "add_secondary_provider", idempotency)
        outcome = _outcome(team, idempotency)
        logger.info(
            "secondary provider add: %s organization_id=%s patient_id=%s provider_id=%s",
            outcome,
            organization_id,
            patient_id,
            provider_id,
            extra={"event": "secondary_added", "changed": outcome == "changed"},
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
        reason: ChangeReason | str | None = None,
        note: str | None = None,
        if_version: tuple[int, ...] | None = None,
        idempotency: IdempotencyKey | None = None,
    ) -> CareTeam:
        """Take `provider_id` off the patient's team; return the team after it.

        Removing the primary leaves the patient without one (the diagnostic reports it).
        Raises PatientNotFound, ProviderNotOnCareTeam, InvalidArgument.
        """
        write = _PatientWrite.of(
            organization_id,
            patient_id,
            provider_id,
            actor=actor,
            reason=reason,
            note=note,
            if_version=if_version,
        )

        team, _ = await write.run(db, "remove_member", "remove_provider", idempotency)
        outcome = _outcome(team, idempotency)
        logger.info(
            "provider remove: %s organization_id=%s patient_id=%s provider_id=%s",
            outcome,
            organization_id,
            patient_id,
            provider_id,
            extra={"event": "provider_removed", "changed": outcome == "changed"},
        )
        return team

    @staticmethod
    async def get_primary_provider(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        patient_id: uuid.UUID,
        as_of: datetime.datetime | None = None,
    ) -> uuid.UUID | None:
        """The patient's primary provider id (at `as_of`, or now), or None.
        Raises PatientNotFound."""
        team = await CareTeamService.get_care_team(
            db=db, organization_id=organization_id, patient_id=patient_id, as_of=as_of
        )
        return team.primary_provider_id

    @staticmethod
    async def get_care_team(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        patient_id: uuid.UUID,
        as_of: datetime.datetime | None = None,
    ) -> CareTeam:
        """The patient's care team, primary first: now, or as it stood at `as_of` (a
        timezone-aware instant). Raises PatientNotFound."""
        if as_of is not None and as_of.tzinfo is None:
            raise InvalidArgument("as_of must be an instant with its offset", field="as_of")
        return await run_statement(
            db,
            operation="get_care_team",
            organization_id=organization_id,
            subject=Subject(patient_id=patient_id),
            # SELECT_TEAM and SELECT_TEAM_AS_OF set the tenant and check the key.
            statement=lambda driver, key_hash: _read_team(
                driver, organization_id, patient_id, as_of, key_hash=key_hash
            ),
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
        limit = page_limit(limit, MAX_HISTORY_PAGE)
        params = {"org": organization_id, "patient": patient_id}

        async def work(driver: Any) -> list[CareTeamEventRecord]:
            if await SELECT_PATIENT.fetchval(driver, params) is None:
                raise PatientNotFound(patient_id)
            rows = await SELECT_HISTORY.fetch(
                driver, {**params, "before_id": before_id, "limit": limit}
            )
            return [CareTeamEventRecord(**dict(row)) for row in rows]

        return await run_transaction(
            db,
            operation="get_care_team_history",
            organization_id=organization_id,
            subject=Subject(patient_id=patient_id),
            work=work,
            read_only=True,
        )

    @staticmethod
    async def get_care_team_periods(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        patient_id: uuid.UUID,
        limit: int = 50,
        after: tuple[datetime.datetime, uuid.UUID] | None = None,
    ) -> list[CareTeamPeriodRecord]:
        """The patient's care team periods, oldest first (by start, then provider).

        Page with `limit` (1..MAX_PERIODS_PAGE) and `after` (the last period's
        (valid_from, provider_id) of the previous page). Raises PatientNotFound.
        """
        limit = page_limit(limit, MAX_PERIODS_PAGE)
        params = {"org": organization_id, "patient": patient_id}

        async def work(driver: Any) -> list[CareTeamPeriodRecord]:
            if await SELECT_PATIENT.fetchval(driver, params) is None:
                raise PatientNotFound(patient_id)
            rows = await SELECT_PERIODS.fetch(
                driver,
                {
                    **params,
                    "after_from": after[0] if after else None,
                    "after_provider": after[1] if after else None,
                    "limit": limit,
                },
            )
            return [CareTeamPeriodRecord(**dict(row)) for row in rows]

        return await run_transaction(
            db,
            operation="get_care_team_periods",
            organization_id=organization_id,
            subject=Subject(patient_id=patient_id),
            work=work,
            read_only=True,
        )

    @staticmethod
    async def get_events(
        *, db: AsyncSession, organization_id: uuid.UUID, after: int = 0, limit: int = 100
    ) -> list[CareTeamEventRecord]:
        """The organization's care team events numbered after `after`, oldest first, at
        most `limit`: a change feed. Numbers are given in commit order with no gaps, so
        resuming after the last number seen skips and repeats nothing. Raises
        InvalidCursor when `after` is past the organization's last event."""
        page_limit(limit, MAX_HISTORY_PAGE)

        async def work(driver: Any) -> list[CareTeamEventRecord]:
            if after > 0 and after > await SELECT_HEAD.fetchval(driver, {"org": organization_id}):
                raise InvalidCursor("after is past your organization's last event", field="after")
            rows = await SELECT_FEED.fetch(
                driver, {"org": organization_id, "after": after, "limit": limit}
            )
            return [CareTeamEventRecord(**dict(row)) for row in rows]

        return await run_transaction(
            db, operation="get_events", organization_id=organization_id, work=work, read_only=True
        )
