"""The migrations on a real PostgreSQL: chain, up/down, models, and the dedupe."""

from __future__ import annotations

import datetime
import subprocess
import uuid

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from src.embedded import client_program
from src.models import UNIQUE_PRIMARY_INDEX, Base
from src.schema import alembic_config, current_revision, downgrade, upgrade
from tests.conftest import FreshDatabase

RLS, UNIQUE = "20260114_rls_coverage", "20260114_unique_primary"
EVENT_SEQUENCE, APP_ROLE = "20261128_event_sequence", "20261128_app_role_login"
HEAD = APP_ROLE

PRIMARIES = "SELECT patient_id, provider_id FROM care_team_assignments WHERE is_primary_provider"
INDEX_EXISTS = "SELECT count(*) FROM pg_indexes WHERE indexname = :name"


async def index_count(db: FreshDatabase) -> int:
    return int((await db.execute(INDEX_EXISTS, name=UNIQUE_PRIMARY_INDEX))[0][0])


class TestRevisionChain:
    def test_the_rule_follows_rls_coverage_and_later_revisions_follow_the_rule(self):
        scripts = ScriptDirectory.from_config(alembic_config())
        assert scripts.get_heads() == [HEAD]
        assert scripts.get_revision(APP_ROLE).down_revision == EVENT_SEQUENCE
        assert scripts.get_revision(EVENT_SEQUENCE).down_revision == UNIQUE
        assert scripts.get_revision(UNIQUE).down_revision == RLS
        assert scripts.get_revision(RLS).down_revision == "20260113_initial_schema"


class TestUpAndDown:
    async def test_upgrade_downgrade_upgrade(self, fresh_database: FreshDatabase):
        engine = fresh_database.engine
        await upgrade(engine)
        assert await current_revision(engine) == HEAD
        assert await index_count(fresh_database) == 1

        # The runbook's rollback of the rule: down to the revision before it.
        await downgrade(engine, RLS)
        assert await current_revision(engine) == RLS
        assert await index_count(fresh_database) == 0

        await upgrade(engine)
        assert await index_count(fresh_database) == 1

        await downgrade(engine, "base")
        tables = await fresh_database.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'alembic_version'"
        )
        assert tables[0][0] == 0
        await upgrade(engine)
        assert await current_revision(engine) == HEAD

    async def test_models_match_migrations(self, fresh_database: FreshDatabase):
        await upgrade(fresh_database.engine)
        async with fresh_database.engine.connect() as conn:
            differences = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
        assert differences == []

    async def test_psql_describe_shows_the_rule(self, fresh_database: FreshDatabase):
        await upgrade(fresh_database.engine)
        described = subprocess.run(
            [str(client_program("psql")), fresh_database.url, "-c", r"\d care_team_assignments"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        assert (
            f'"{UNIQUE_PRIMARY_INDEX}" UNIQUE, btree (organization_id, patient_id) '
            "WHERE is_primary_provider = true"
        ) in described


class TestDedupe:
    async def test_upgrade_demotes_duplicates_and_records_each(self, fresh_database: FreshDatabase):
        db = fresh_database
        await upgrade(db.engine, RLS)
        seeded = await seed_duplicates(db)
        before = await db.execute("SELECT count(*) FROM care_team_assignments")

        await upgrade(db.engine)

        assert await db.execute("SELECT count(*) FROM care_team_assignments") == before
        primaries = dict(await db.execute(PRIMARIES))
        assert primaries == seeded.expected_primaries
        events = await db.execute(
            "SELECT patient_id, provider_id, actor, reason FROM care_team_events "
            "WHERE event_type = 'migration_dedupe' ORDER BY patient_id, provider_id"
        )
        assert sorted((e.patient_id, e.provider_id) for e in events) == sorted(seeded.demoted)
        for event in events:
            assert event.actor == f"migration:{UNIQUE}"
            assert f"kept provider {seeded.expected_primaries[event.patient_id]}" in event.reason

    async def test_clean_data_is_left_alone(self, fresh_database: FreshDatabase):
        await upgrade(fresh_database.engine, RLS)
        seeded = await seed_duplicates(fresh_database, duplicates=False)
        await upgrade(fresh_database.engine)
        primaries = dict(await fresh_database.execute(PRIMARIES))
        assert primaries == seeded.expected_primaries
        assert await fresh_database.execute("SELECT count(*) FROM care_team_events") == [(0,)]


class Seeded:
    def __init__(self) -> None:
        self.expected_primaries: dict[uuid.UUID, uuid.UUID] = {}
        self.demoted: list[tuple[uuid.UUID, uuid.UUID]] = []


async def seed_duplicates(db: FreshDatabase, *, duplicates: bool = True) -> Seeded:
    """Patients with 3 primaries, a tie on assigned_at, one clean, one without primary."""
    seeded = Seeded()
    org = (await db.execute("INSERT INTO organizations (name) VALUES ('c') RETURNING id"))[0][0]

    async def patient() -> uuid.UUID:
        rows = await db.execute(
            "INSERT INTO patients (organization_id) VALUES (:org) RETURNING id", org=org
        )
        return rows[0][0]

    async def provider() -> uuid.UUID:
        rows = await db.execute(
            "INSERT INTO providers (organization_id) VALUES (:org) RETURNING id", org=org
        )
        return rows[0][0]

    async def assign(
        patient_id: uuid.UUID,
        *,
        primary: bool,
        at: datetime.datetime,
        assignment_id: uuid.UUID | None = None,
    ) -> uuid.UUID:
        provider_id = await provider()
        await db.execute(
            "INSERT INTO care_team_assignments (id, organization_id, patient_id, provider_id, "
            "is_primary_provider, assigned_at) VALUES (:id, :org, :patient, :provider, "
            ":primary, :at)",
            id=assignment_id or uuid.uuid4(),
            org=org,
            patient=patient_id,
            provider=provider_id,
            primary=primary,
            at=at,
        )
        return provider_id

    t = datetime.datetime(2025, 6, 1, tzinfo=datetime.UTC)
    day = datetime.timedelta(days=1)
    if duplicates:
        # Three primaries: the latest assigned_at is kept.
        three = await patient()
        old = [
            await assign(three, primary=True, at=t),
            await assign(three, primary=True, at=t + day),
        ]
        latest = await assign(three, primary=True, at=t + 2 * day)
        await assign(three, primary=False, at=t + 3 * day)
        seeded.expected_primaries[three] = latest
        seeded.demoted += [(three, p) for p in old]
        # A tie on assigned_at: the highest id is kept.
        tie = await patient()
        low = await assign(
            tie, primary=True, at=t, assignment_id=uuid.UUID("00000000-0000-4000-8000-000000000001")
        )
        high = await assign(
            tie, primary=True, at=t, assignment_id=uuid.UUID("ffffffff-ffff-4fff-bfff-ffffffffffff")
        )
        seeded.expected_primaries[tie] = high
        seeded.demoted.append((tie, low))
    clean = await patient()
    seeded.expected_primaries[clean] = await assign(clean, primary=True, at=t)
    await assign(clean, primary=False, at=t + day)
    no_primary = await patient()
    await assign(no_primary, primary=False, at=t)
    return seeded
