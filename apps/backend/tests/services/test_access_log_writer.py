"""The access log's group commit (src/services/access_log_writer.py): concurrent entries
are written together, each writer returns only once its entry committed, a refused
entry fails alone, a retried batch writes nothing twice, and a writer cancelled
mid-flush leaves no one waiting."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from src.db import Database
from src.services.access_log_service import AccessEntry, AccessLogService
from src.services.access_log_writer import AccessLogWriter
from src.services.errors import AccessLogUnavailable
from tests.helpers import create_clinic, log_delayed, log_refused, owner_count

ENTRIES = "SELECT count(*) FROM access_log WHERE organization_id = :org"
PATIENT_ROWS = "SELECT count(*) FROM access_log_patients WHERE organization_id = :org"


def entry(org: uuid.UUID, patient: uuid.UUID, **overrides: Any) -> AccessEntry:
    fields: dict[str, Any] = {
        "organization_id": org,
        "api_key_id": uuid.uuid4(),
        "client_id": None,
        "route": "GET /v1/patients/{patient_id}/care-team",
        "interaction": "read",
        "action": "R",
        "status": 200,
        "parameters": ("_count", "patient"),
        "patient_ids": (patient,),
    }
    return AccessEntry(**{**fields, **overrides})


async def clinic(db: AsyncSession) -> tuple[uuid.UUID, uuid.UUID]:
    org, patient, _ = await create_clinic(db)
    return org, patient


class TestGroupCommit:
    async def test_concurrent_entries_are_one_statement(self, db: AsyncSession, database: Database):
        org, patient = await clinic(db)
        writer = AccessLogWriter(database.sessionmaker)
        written = [entry(org, patient, result_count=n) for n in range(50)]
        await asyncio.gather(*(writer.write(item) for item in written))
        assert (writer.batches, writer.entries) == (1, 50)
        assert await owner_count(database, ENTRIES, org=org) == 50
        assert await owner_count(database, PATIENT_ROWS, org=org) == 50

    async def test_entries_that_arrive_during_a_flush_make_the_next_batch(
        self, db: AsyncSession, database: Database
    ):
        org, patient = await clinic(db)
        writer = AccessLogWriter(database.sessionmaker, max_batch=4)
        first = asyncio.create_task(writer.write(entry(org, patient)))
        await asyncio.sleep(0)  # the first flush starts with one entry
        later = [entry(org, patient) for _ in range(10)]
        await asyncio.gather(first, *(writer.write(item) for item in later))
        # One entry alone, then the ten that queued behind it, four at most at a time.
        assert writer.entries == 11 and writer.batches == 4
        assert await owner_count(database, ENTRIES, org=org) == 11

    async def test_what_each_entry_holds(self, db: AsyncSession, database: Database):
        org, patient = await clinic(db)
        other = uuid.uuid4()
        writer = AccessLogWriter(database.sessionmaker)
        plain = entry(org, patient, parameters=(), result_count=None, patient_ids=())
        search = entry(org, patient, result_count=2, patient_ids=(patient, other, patient))
        await asyncio.gather(writer.write(plain), writer.write(search))
        assert writer.batches == 1
        async with database.sessionmaker() as session:
            found = {
                r.id: r
                for r in await AccessLogService.list_entries(db=session, organization_id=org)
            }
        assert found[plain.id].parameters == [] and found[plain.id].patient_ids == []
        assert found[plain.id].result_count is None
        assert found[search.id].parameters == ["_count", "patient"]
        assert found[search.id].patient_ids == [patient, other]
        assert found[search.id].result_count == 2


class TestFailures:
    async def test_a_refused_entry_fails_alone_in_a_shared_batch(
        self, db: AsyncSession, database: Database
    ):
        (refused, patient), (accepted, other) = await clinic(db), await clinic(db)
        writer = AccessLogWriter(database.sessionmaker)
        async with log_refused(database, refused):
            outcomes = await asyncio.gather(
                writer.write(entry(accepted, other)),
                writer.write(entry(refused, patient)),
                writer.write(entry(accepted, other)),
                return_exceptions=True,
            )
        assert outcomes[0] is None and outcomes[2] is None
        assert isinstance(outcomes[1], AccessLogUnavailable)
        assert writer.split_batches == 1
        assert await owner_count(database, ENTRIES, org=accepted) == 2
        assert await owner_count(database, ENTRIES, org=refused) == 0

    async def test_a_batch_written_again_writes_nothing_twice(
        self, db: AsyncSession, database: Database
    ):
        """As a retry after a lost connection does: the same ids, nothing new."""
        org, patient = await clinic(db)
        batch = [entry(org, patient) for _ in range(3)]
        async with database.sessionmaker() as session:
            assert await AccessLogService.record_many(db=session, entries=batch) == 3
        async with database.sessionmaker() as session:
            assert await AccessLogService.record_many(db=session, entries=batch) == 0
        assert await owner_count(database, ENTRIES, org=org) == 3
        assert await owner_count(database, PATIENT_ROWS, org=org) == 3

    async def test_closing_mid_flush_answers_every_waiting_entry(
        self, db: AsyncSession, database: Database
    ):
        org, patient = await clinic(db)
        writer = AccessLogWriter(database.sessionmaker)
        async with log_delayed(database, org, 2):
            waiting = [asyncio.create_task(writer.write(entry(org, patient))) for _ in range(3)]
            await asyncio.sleep(0.3)  # the first flush is in flight, in pg_sleep
            more = asyncio.create_task(writer.write(entry(org, patient)))  # queued behind it
            await asyncio.sleep(0)
            await asyncio.wait_for(writer.close(drain_s=0), 5)
            outcomes = await asyncio.wait_for(
                asyncio.gather(*waiting, more, return_exceptions=True), 5
            )
        assert all(isinstance(o, AccessLogUnavailable) for o in outcomes), outcomes
        with pytest.raises(AccessLogUnavailable):
            await writer.write(entry(org, patient))
        # Cut off: each at most once (the cancelled statement rolled back here).
        assert await owner_count(database, ENTRIES, org=org) <= 3
