"""Provider panels: who a provider looks after (now or at an instant), panel transfers,
and the organization's overview.

A provider's panel is the patients it is the primary provider of; `panel_capacity`
(NULL: no limit) caps it, and the assignment that would exceed it is refused
(CareTeamService raises PanelFull). A transfer moves every primary patient of one
provider to another in batches (careteam_transfer_batch: each batch one transaction
that locks its patients in order, then the target), within the target's capacity;
re-running it moves only what is left, so an interrupted transfer is resumed by running
it again. Other writers to those patients wait at most one batch.
"""

from __future__ import annotations

import datetime
import enum
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from src.models import ChangeReason, PeriodRole
from src.services.care_team_service import change_reason
from src.services.errors import (
    InvalidArgument,
    ProviderInactive,
    ProviderNotFound,
    ProviderReferenceNotFound,
    Subject,
    page_limit,
)
from src.services.idempotency import IdempotencyKey, claim_owned, store_owned
from src.services.transaction import RUN_AGAIN, Sql, holding, run_transaction

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The most rows one panel read returns (the HTTP page is at most 200, plus the look-ahead).
MAX_PANEL_PAGE = 500
TRANSFER_BATCH_SIZE = 100
PRIMARY = PeriodRole.PRIMARY.value


class PanelRole(enum.StrEnum):
    PRIMARY = "primary"
    SECONDARY = "secondary"
    ANY = "any"


class PreviousProvider(enum.StrEnum):
    """What a transfer does with the provider the patients leave."""

    KEEP_AS_SECONDARY = "keep_as_secondary"
    REMOVE = "remove"


@dataclass(frozen=True)
class PanelPatient:
    """A panel entry's patient, when asked for (so a display needs no read per row)."""

    id: uuid.UUID
    first_name: str | None
    last_name: str | None
    dob: datetime.date | None


@dataclass(frozen=True)
class PanelEntry:
    patient_id: uuid.UUID
    role: str
    since: datetime.datetime
    patient: PanelPatient | None = None


@dataclass(frozen=True)
class TransferResult:
    dry_run: bool
    moved: int  # moved now (or, in a dry run, that would move)
    remaining: int  # primary patients the source provider still has (would still have)
    refused_capacity: int  # of those, the ones the target's capacity left out


@dataclass(frozen=True)
class PanelSize:
    provider_id: uuid.UUID
    active: bool
    panel_size: int
    panel_capacity: int | None


@dataclass(frozen=True)
class PanelReport:
    providers: list[PanelSize]
    patients_without_primary: int


PROVIDER = Sql(
    "SELECT active, panel_capacity FROM providers WHERE organization_id = $1 AND id = $2",
    "org",
    "provider",
)

# A page of the panel, in patient order, from the provider's periods: the open ones
# (now), or those that held at $3 (as_of). Backed by (organization_id, provider_id,
# patient_id).
PANEL_PAGE = Sql(
    """
    SELECT patient_id, role, lower(valid) AS since
    FROM care_team_periods
    WHERE organization_id = $1 AND provider_id = $2
      AND CASE WHEN CAST($3 AS timestamptz) IS NULL THEN upper_inf(valid)
               ELSE valid @> CAST($3 AS timestamptz) END
      AND (CAST($4 AS text) IS NULL OR role = $4)
      AND (CAST($5 AS uuid) IS NULL OR patient_id > $5)
    ORDER BY patient_id
    LIMIT $6
""",
    "org",
    "provider",
    "as_of",
    "role",
    "after",
    "limit",
)
# The same page with each patient's names and birth date (one join, in the same
# statement).
PANEL_PAGE_WITH_PATIENTS = Sql(
    f"""
    SELECT page.*, p.first_name, p.last_name, p.dob
    FROM ({PANEL_PAGE.text}) AS page
    JOIN patients AS p ON p.organization_id = $1 AND p.id = page.patient_id
    ORDER BY page.patient_id
""",
    *PANEL_PAGE.names,
)

TRANSFER_BATCH = Sql(
    "SELECT moved, refused_capacity, remaining "
    "FROM careteam_transfer_batch($1, $2, $3, $4, $5, $6, $7, $8)",
    "org",
    "from",
    "to",
    "actor",
    "reason",
    "note",
    "keep",
    "limit",
)

# One transfer at a time per provider (sql/functions/careteam_claim_transfer/): the two
# providers' advisory locks, for the transfer's session; CT011 if another one holds them.
CLAIM_TRANSFER = Sql("SELECT careteam_claim_transfer($1, $2, $3)", "org", "from", "to")

# What a transfer would do: the source's primary patients, and the target's room.
TRANSFER_PLAN = Sql(
    """
    SELECT (SELECT count(*) FROM care_team_assignments
            WHERE organization_id = $1 AND provider_id = $2 AND is_primary_provider)
               AS patients,
           (SELECT count(*) FROM care_team_assignments
            WHERE organization_id = $1 AND provider_id = $3 AND is_primary_provider)
               AS target_size
""",
    "org",
    "from",
    "to",
)

REPORT = Sql(
    """
    SELECT v.id AS provider_id, v.active, v.panel_capacity,
           count(a.patient_id) AS panel_size
    FROM providers AS v
    LEFT JOIN care_team_assignments AS a
        ON a.organization_id = v.organization_id AND a.provider_id = v.id
       AND a.is_primary_provider
    WHERE v.organization_id = $1
    GROUP BY v.id, v.active, v.panel_capacity
    ORDER BY v.id
""",
    "org",
)

# Every patient of the organization without a primary provider, whether it has a care
# team or none at all (patients have no active flag: every one counts). An anti-join on
# the unique primary index.
WITHOUT_PRIMARY = Sql(
    """
    SELECT count(*) FROM patients AS p
    WHERE p.organization_id = $1
      AND NOT EXISTS (SELECT 1 FROM care_team_assignments AS a
                      WHERE a.organization_id = $1 AND a.patient_id = p.id
                        AND a.is_primary_provider)
""",
    "org",
)


def _panel_entry(row: Any, with_patient: bool) -> PanelEntry:
    patient = None
    if with_patient:
        patient = PanelPatient(row["patient_id"], row["first_name"], row["last_name"], row["dob"])
    return PanelEntry(row["patient_id"], row["role"], row["since"], patient)


async def _provider(driver: Any, org: uuid.UUID, provider: uuid.UUID) -> Any:
    row = await PROVIDER.fetchrow(driver, {"org": org, "provider": provider})
    if row is None:
        raise ProviderNotFound(provider)
    return row


class PanelService:
    """Stateless operations on providers' panels; each public method is one transaction
    (a transfer: one per batch)."""

    @staticmethod
    async def list_panel(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        provider_id: uuid.UUID,
        role: PanelRole = PanelRole.PRIMARY,
        as_of: datetime.datetime | None = None,
        limit: int = 50,
        after: uuid.UUID | None = None,
        with_patients: bool = False,
    ) -> list[PanelEntry]:
        """The provider's patients in `role` (now, or at `as_of`), in patient order, after
        the patient `after` (the last of the previous page); `with_patients`: each with its
        patient's names and birth date (as they are now). Raises ProviderNotFound."""
        limit = page_limit(limit, MAX_PANEL_PAGE)
        statement = PANEL_PAGE_WITH_PATIENTS if with_patients else PANEL_PAGE

        async def work(driver: Any) -> list[PanelEntry]:
            await _provider(driver, organization_id, provider_id)
            rows = await statement.fetch(
                driver,
                {
                    "org": organization_id,
                    "provider": provider_id,
                    "as_of": as_of,
                    "role": None if role is PanelRole.ANY else role.value,
                    "after": after,
                    "limit": limit,
                },
            )
            return [_panel_entry(row, with_patients) for row in rows]

        return await run_transaction(
            db,
            operation="list_panel",
            organization_id=organization_id,
            work=work,
            read_only=True,
        )

    @staticmethod
    async def transfer_panel(
        *,
        db: AsyncSession,
        organization_id: uuid.UUID,
        from_provider_id: uuid.UUID,
        to_provider_id: uuid.UUID,
        reason: ChangeReason | str | None,
        note: str | None = None,
        previous_provider: PreviousProvider = PreviousProvider.KEEP_AS_SECONDARY,
        dry_run: bool = False,
        actor: str = "system",
        batch_size: int = TRANSFER_BATCH_SIZE,
        progress: Callable[[int, int], None] | None = None,
        idempotency: IdempotencyKey | None = None,
    ) -> TransferResult:
        """Make `to_provider_id` the primary provider of every patient whose primary is
        `from_provider_id`, batch by batch, within the target's capacity.

        `dry_run` changes nothing and says what would happen. `progress(moved, total)`
        is called after each batch. With an Idempotency-Key (src/services/idempotency.py)
        it runs once: it claims the key first, in a transaction of its own, and owns the
        claim while it runs; a retry after its process or connection died takes the claim
        over and resumes it.
        A dry run makes every check the run makes (_plan), so it answers what the run
        would, errors included. One transfer at a time per provider: while another one
        of either provider runs, TransferInProgress.
        Raises ProviderNotFound (the source), ProviderReferenceNotFound (the target),
        ProviderInactive, TransferInProgress, InvalidArgument.
        """

        reason_value, note = change_reason(reason, note)
        if from_provider_id == to_provider_id:
            raise InvalidArgument(
                "a panel cannot be transferred to the provider it belongs to",
                field="to_provider_id",
            )

        async def in_transaction(work: Callable[[Any], Awaitable[T]]) -> T:
            return await run_transaction(
                db, operation="transfer_panel", organization_id=organization_id, work=work
            )

        async def operation() -> TransferResult:
            plan = await PanelService._plan(db, organization_id, from_provider_id, to_provider_id)
            patients, room = plan
            if dry_run:
                moved = patients if room is None else min(patients, room)
                # What the run would answer: the patients left, all for want of room.
                return TransferResult(True, moved, patients - moved, patients - moved)
            moved = 0
            # Each batch moves what is still the source's; a batch can find nothing left to
            # move in what it picked (another writer got there first): then the next one goes
            # on. It stops when nothing is left, or when the target's capacity refuses some.
            for _ in range(patients // max(batch_size, 1) + 10):
                batch = await PanelService._transfer_batch(
                    db,
                    organization_id,
                    {
                        "org": organization_id,
                        "from": from_provider_id,
                        "to": to_provider_id,
                        "actor": actor,
                        "reason": reason_value,
                        "note": note,
                        "keep": previous_provider is PreviousProvider.KEEP_AS_SECONDARY,
                        "limit": batch_size,
                    },
                )
                moved += batch["moved"]
                if progress is not None:
                    progress(moved, patients)
                if batch["remaining"] == 0 or batch["refused_capacity"]:
                    break
            remaining = int(batch["remaining"])
            refused = remaining if batch["refused_capacity"] else 0
            result = TransferResult(False, moved, remaining, refused)
            logger.info(
                "panel transferred organization_id=%s from_provider_id=%s to_provider_id=%s "
                "moved=%d remaining=%d",
                organization_id,
                from_provider_id,
                to_provider_id,
                result.moved,
                result.remaining,
                extra={"event": "panel_transferred"},
            )
            return result

        # One connection for the whole transfer: its session owns the Idempotency-Key's
        # claim (an advisory lock) while the transfer runs, and closing it at the end, or
        # losing it, frees the claim for a retry to take over.
        async with holding(db):
            if idempotency is not None:
                stored = await in_transaction(
                    lambda driver: claim_owned(driver, organization_id, idempotency, TransferResult)
                )
                if stored is not None:
                    return stored
            result = await operation()
            if idempotency is not None:
                await in_transaction(
                    lambda driver: store_owned(
                        driver, organization_id, idempotency, TransferResult, result
                    )
                )
            return result

    @staticmethod
    async def _plan(
        db: AsyncSession, org: uuid.UUID, source: uuid.UUID, target: uuid.UUID
    ) -> tuple[int, int | None]:
        """(the source's primary patients, the target's room: None without a capacity),
        after every check the run makes, in the order it makes them, so that a dry run
        answers as the run would: the source exists (ProviderNotFound), the target exists
        (ProviderReferenceNotFound) and is active (ProviderInactive), and no other
        transfer of either provider runs (TransferInProgress; this one holds them from
        here, for as long as its session, the one `holding` keeps, lives)."""

        async def work(driver: Any) -> tuple[int, int | None]:
            await _provider(driver, org, source)
            try:
                target_row = await _provider(driver, org, target)
            except ProviderNotFound:
                raise ProviderReferenceNotFound(target, field="to_provider_id") from None
            if not target_row["active"]:
                raise ProviderInactive(target)
            await CLAIM_TRANSFER.execute(driver, {"org": org, "from": source, "to": target})
            plan = await TRANSFER_PLAN.fetchrow(driver, {"org": org, "from": source, "to": target})
            capacity = target_row["panel_capacity"]
            room = None if capacity is None else max(0, capacity - plan["target_size"])
            return int(plan["patients"]), room

        return await run_transaction(
            db, operation="transfer_panel", organization_id=org, work=work, read_only=True
        )

    @staticmethod
    async def _transfer_batch(db: AsyncSession, org: uuid.UUID, params: dict[str, Any]) -> Any:
        async def work(driver: Any) -> Any:
            return await TRANSFER_BATCH.fetchrow(driver, params)

        # A batch whose COMMIT was lost is simply run again: it moves only what is still
        # the source's, so a batch that did commit finds its patients gone (the count of
        # moves then misses them; `remaining` is exact).
        return await run_transaction(
            db,
            operation="transfer_panel",
            organization_id=org,
            # The batch's errors are about the target provider (careteam_transfer_batch).
            subject=Subject(provider_id=params["to"], provider_field="to_provider_id"),
            work=work,
            verify=RUN_AGAIN,
        )

    @staticmethod
    async def report_panels(*, db: AsyncSession, organization_id: uuid.UUID) -> PanelReport:
        """Every provider's panel size and capacity, and how many of the organization's
        patients have no primary provider (with a care team or without one)."""

        async def work(driver: Any) -> PanelReport:
            rows = await REPORT.fetch(driver, {"org": organization_id})
            without = await WITHOUT_PRIMARY.fetchval(driver, {"org": organization_id})
            return PanelReport([PanelSize(**dict(row)) for row in rows], int(without))

        return await run_transaction(
            db,
            operation="report_panels",
            organization_id=organization_id,
            work=work,
            read_only=True,
        )
