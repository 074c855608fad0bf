"""The online parts of the unique-primary migration (src/primary_dedupe.py), on purpose
driven into the situations a busy production table produces."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.engine import Connection

from src import primary_dedupe
from src.config import Settings
from src.db import open_database
from src.migration_runner import downgrade, upgrade
from src.models import UNIQUE_PRIMARY_INDEX
from src.services.care_team_service import CareTeamService
from tests.helpers import PRIMARIES, RLS, FreshDatabase, seed_duplicates

DUPLICATED = (
    "SELECT count(*) FROM (SELECT 1 FROM care_team_assignments WHERE is_primary_provider "
    "GROUP BY organization_id, patient_id HAVING count(*) > 1) AS d"
)


async def autocommit(db: FreshDatabase, work: Callable[[Connection], Any]) -> Any:
    """Run `work` on an AUTOCOMMIT connection, as the migration does."""
    async with db.engine.connect() as connection:
        conn = await connection.execution_options(isolation_level="AUTOCOMMIT")
        return await conn.run_sync(work)


async def state(db: FreshDatabase) -> str:
    return str(await autocommit(db, primary_dedupe.index_state))


async def add_duplicate_primary(db: FreshDatabase) -> None:
    """A writer that bypasses the service gives one patient a second primary."""
    await db.execute("""
        WITH one AS (
            SELECT a.organization_id, a.patient_id FROM care_team_assignments a
            WHERE a.is_primary_provider LIMIT 1
        ), new_provider AS (
            INSERT INTO providers (organization_id) SELECT organization_id FROM one
            RETURNING id, organization_id
        )
        INSERT INTO care_team_assignments
            (organization_id, patient_id, provider_id, is_primary_provider)
        SELECT one.organization_id, one.patient_id, new_provider.id, true
        FROM one JOIN new_provider USING (organization_id)
    """)


class TestInterruptedBuild:
    async def test_invalid_leftover_index_is_dropped_and_rebuilt(
        self, fresh_database: FreshDatabase
    ):
        db = fresh_database
        await upgrade(db.engine, RLS)
        await seed_duplicates(db)
        # An earlier run whose concurrent build failed half-way leaves an INVALID index.
        with pytest.raises(Exception, match="could not create unique index"):
            await autocommit(db, lambda c: c.exec_driver_sql(primary_dedupe.CREATE_INDEX))
        assert await state(db) == "invalid"

        await upgrade(db.engine)

        assert await state(db) == "valid"
        assert await db.execute(DUPLICATED) == [(0,)]


class TestDuplicatesWrittenDuringTheBuild:
    async def test_build_dedupes_again_and_retries(
        self, fresh_database: FreshDatabase, caplog: pytest.LogCaptureFixture
    ):
        db = fresh_database
        await upgrade(db.engine, RLS)
        await seed_duplicates(db)
        demoted = await autocommit(db, lambda c: primary_dedupe.dedupe(c, actor="test"))
        assert demoted == 3
        await add_duplicate_primary(db)  # after the dedupe, before the build

        with caplog.at_level(logging.INFO, logger="src.primary_dedupe"):
            await autocommit(db, lambda c: primary_dedupe.build_index(c, actor="test"))

        assert "duplicates were written during the build" in caplog.text
        assert await state(db) == "valid"
        assert await db.execute(DUPLICATED) == [(0,)]
        events = await db.execute(
            "SELECT count(*) FROM care_team_events WHERE event_type = 'migration_dedupe'"
        )
        assert events == [(4,)]


class TestLockTimeouts:
    async def test_a_blocking_transaction_is_waited_out_with_retries(
        self, fresh_database: FreshDatabase
    ):
        db = fresh_database
        await upgrade(db.engine, RLS)
        async with db.engine.connect() as blocker:
            # SHARE UPDATE EXCLUSIVE conflicts with CREATE INDEX CONCURRENTLY's own lock.
            await blocker.exec_driver_sql(
                "LOCK TABLE care_team_assignments IN SHARE UPDATE EXCLUSIVE MODE"
            )

            def build(conn: Connection) -> None:
                with primary_dedupe.online_session(conn, lock_timeout_ms=200):
                    primary_dedupe.build_index(conn, actor="test", attempts=20, retry_delay_s=0.05)

            building = asyncio.create_task(autocommit(db, build))
            await asyncio.sleep(1.0)
            assert not building.done()  # it keeps retrying while the lock is held
            await blocker.rollback()
            await asyncio.wait_for(building, timeout=30)
        assert await state(db) == "valid"

    async def test_gives_up_after_bounded_attempts_leaving_nothing_invalid(
        self, fresh_database: FreshDatabase
    ):
        db = fresh_database
        await upgrade(db.engine, RLS)
        async with db.engine.connect() as blocker:
            await blocker.exec_driver_sql(
                "LOCK TABLE care_team_assignments IN SHARE UPDATE EXCLUSIVE MODE"
            )

            def build(conn: Connection) -> None:
                with primary_dedupe.online_session(conn, lock_timeout_ms=100):
                    primary_dedupe.build_index(conn, actor="test", attempts=3, retry_delay_s=0.01)

            with pytest.raises(primary_dedupe.IndexBuildFailed, match="3 attempts"):
                await autocommit(db, build)
            await blocker.rollback()
        assert await state(db) == "missing"


class TestRerunIsSafe:
    async def test_upgrade_after_downgrade_changes_nothing_more(
        self, fresh_database: FreshDatabase
    ):
        db = fresh_database
        await upgrade(db.engine, RLS)
        await seed_duplicates(db)
        await upgrade(db.engine)
        before = await db.execute("SELECT count(*) FROM care_team_events")
        primaries = await db.execute(PRIMARIES)
        await downgrade(db.engine, RLS)
        await upgrade(db.engine)
        assert await db.execute("SELECT count(*) FROM care_team_events") == before
        assert sorted(await db.execute(PRIMARIES)) == sorted(primaries)
        assert await state(db) == "valid"

    async def test_downgrade_drops_the_index_concurrently(self, fresh_database: FreshDatabase):
        await upgrade(fresh_database.engine)
        await downgrade(fresh_database.engine, RLS)
        assert await state(fresh_database) == "missing"
        rows = await fresh_database.execute(
            "SELECT count(*) FROM pg_indexes WHERE indexname = :name", name=UNIQUE_PRIMARY_INDEX
        )
        assert rows == [(0,)]


class TestServiceWithoutTheIndex:
    async def test_assigning_fixes_a_patient_with_duplicate_primaries(
        self, fresh_database: FreshDatabase, settings: Settings
    ):
        """With the index gone (dropped by hand, or a build that never finished), data
        can break the rule again; an assignment through the service repairs the patient
        it touches (it demotes every other primary)."""
        db = fresh_database
        await upgrade(db.engine)
        await db.execute(f"DROP INDEX {UNIQUE_PRIMARY_INDEX}")
        seeded = await seed_duplicates(db)
        patient = next(iter(seeded.expected_primaries))
        org = (await db.execute("SELECT organization_id FROM patients WHERE id = :p", p=patient))[
            0
        ][0]
        target = (
            await db.execute(
                "SELECT provider_id FROM care_team_assignments WHERE patient_id = :p "
                "AND NOT is_primary_provider LIMIT 1",
                p=patient,
            )
        )[0][0]
        database = open_database(settings, db.url)
        try:
            async with database.sessionmaker() as session:
                team = await CareTeamService.assign_primary_provider(
                    db=session, organization_id=org, patient_id=patient, provider_id=target
                )
        finally:
            await database.dispose()
        assert [m.provider_id for m in team.members if m.is_primary_provider] == [target]
