"""Idempotency-Keys as the service keeps them (careteam_claim_key, careteam_store_result):
an operation of several transactions owns its claim while it runs, a retry takes it over
once the owner is gone, and rows of the release before are read as it wrote them."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from src.db import Database
from src.services.care_team_service import CareTeamService
from src.services.directory_service import DirectoryService
from src.services.errors import DatabaseUnavailable, IdempotencyKeyInProgress, IdempotencyKeyReused
from src.services.idempotency import IdempotencyKey
from src.services.panel_service import PanelService, TransferResult
from tests.helpers import create_clinic, create_patient, wait_until_blocked


async def panel_of(
    db: AsyncSession, org: uuid.UUID, provider: uuid.UUID, size: int
) -> list[uuid.UUID]:
    patients = []
    for _ in range(size):
        patient = await create_patient(db, organization_id=org)
        await CareTeamService.assign_primary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=provider
        )
        patients.append(patient)
    return sorted(patients)


async def transfer(
    db: AsyncSession, org: uuid.UUID, source: uuid.UUID, target: uuid.UUID, key: IdempotencyKey
) -> TransferResult:
    return await PanelService.transfer_panel(
        db=db,
        organization_id=org,
        from_provider_id=source,
        to_provider_id=target,
        reason="provider_left",
        batch_size=2,
        idempotency=key,
    )


async def assigned_events(database: Database, org: uuid.UUID) -> list[uuid.UUID]:
    """The patients of every primary_assigned event of the organization."""
    async with database.owner_engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT patient_id FROM care_team_events "
                "WHERE organization_id = :o AND event_type = 'primary_assigned' ORDER BY seq"
            ),
            {"o": org},
        )
        return [row.patient_id for row in rows]


class TestAnOwnedClaim:
    async def test_is_refused_while_its_owner_runs_and_taken_over_once_it_is_gone(
        self, db: AsyncSession, database: Database
    ):
        """A transfer killed mid-way left its claim at 'in progress' for 15 minutes (and
        a retry with its key was 409 all that time): the claim is the owner session's,
        and a retry takes it over as soon as that session is gone, then resumes."""
        org, _, (source, target, _) = await create_clinic(db)
        patients = await panel_of(db, org, source, 6)
        before = len(await assigned_events(database, org))
        key = IdempotencyKey("transfer-once", "fingerprint-1")
        async with database.owner_engine.connect() as blocker:
            # The third patient is locked: the transfer commits its first batch of two,
            # then waits in its second, holding its claim.
            await blocker.execute(
                text("SELECT id FROM patients WHERE id = :id FOR NO KEY UPDATE"),
                {"id": patients[2]},
            )
            owner = asyncio.create_task(transfer(db, org, source, target, key))
            await wait_until_blocked(database)
            async with database.sessionmaker() as other:
                with pytest.raises(IdempotencyKeyInProgress):  # its owner still runs
                    await transfer(
                        other, org, source, target, IdempotencyKey(key.key, key.fingerprint)
                    )
            # The owner's connection dies (its process was killed, say).
            await blocker.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock' "
                    "AND query LIKE '%careteam_transfer_batch%'"
                )
            )
            with pytest.raises(DatabaseUnavailable):
                await owner
            await blocker.rollback()
        async with database.sessionmaker() as retry:
            again = IdempotencyKey(key.key, key.fingerprint)
            resumed = await transfer(retry, org, source, target, again)
        assert not again.replayed
        assert (resumed.moved, resumed.remaining) == (4, 0)  # the rest, not the first batch
        moved = (await assigned_events(database, org))[before:]
        assert sorted(moved) == patients  # each patient moved exactly once
        async with database.sessionmaker() as later:
            replay = IdempotencyKey(key.key, key.fingerprint)
            assert await transfer(later, org, source, target, replay) == resumed
            assert replay.replayed

    async def test_a_claim_left_by_a_dead_owner_is_resumed_even_after_another_key_finished(
        self, db: AsyncSession, database: Database
    ):
        org, _, (source, target, _) = await create_clinic(db)
        await panel_of(db, org, source, 3)
        # What a killed owner leaves: a claim in progress, its lock gone with it.
        async with database.owner_engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO idempotency_keys (organization_id, key, fingerprint, "
                    "status_code, body) VALUES (:o, 'stuck', 'f', 0, '')"
                ),
                {"o": org},
            )
        done = await transfer(db, org, source, target, IdempotencyKey("another", "g"))
        assert done.moved == 3
        retry = await transfer(db, org, source, target, IdempotencyKey("stuck", "f"))
        assert (retry.moved, retry.remaining) == (0, 0)


class TestRowsOfTheReleaseBefore:
    async def test_a_stored_response_is_refused_saying_why_and_runs_nothing(
        self, db: AsyncSession, database: Database
    ):
        org, _, _ = await create_clinic(db)
        async with database.owner_engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO idempotency_keys (organization_id, key, fingerprint, "
                    "status_code, body) VALUES (:o, 'old', 'f', 201, '{}')"
                ),
                {"o": org},
            )
        with pytest.raises(IdempotencyKeyReused, match="release before"):
            await DirectoryService.create_provider(
                db=db,
                organization_id=org,
                first_name="Ada",
                last_name="Old",
                idempotency=IdempotencyKey("old", "f"),
            )

    async def test_its_claim_in_progress_is_taken_over_after_15_minutes_only(
        self, db: AsyncSession, database: Database
    ):
        org, _, (source, target, _) = await create_clinic(db)
        insert = text(
            "INSERT INTO idempotency_keys (organization_id, key, fingerprint, status_code, "
            "body, created_at) "
            "VALUES (:o, :k, 'f', 0, '\\x0102', now() - :age * interval '1 minute')"
        )
        async with database.owner_engine.begin() as conn:
            await conn.execute(insert, {"o": org, "k": "recent", "age": 1})
            await conn.execute(insert, {"o": org, "k": "stale", "age": 16})
        with pytest.raises(IdempotencyKeyInProgress):
            await transfer(db, org, source, target, IdempotencyKey("recent", "f"))
        taken = await transfer(db, org, source, target, IdempotencyKey("stale", "f"))
        assert taken.remaining == 0
