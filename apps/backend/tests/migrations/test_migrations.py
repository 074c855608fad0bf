"""The migrations on a real PostgreSQL: chain, up/down, models, and the dedupe."""

from __future__ import annotations

import subprocess
import uuid
from typing import Any
from unittest.mock import ANY as mock_any_value

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from src.config import Settings
from src.db import open_database
from src.embedded import client_program
from src.migration_runner import (
    COLLATED_INDEXES,
    alembic_config,
    compared,
    current_revision,
    downgrade,
    upgrade,
)
from src.models import UNIQUE_PRIMARY_INDEX, Base
from src.services.directory_service import DirectoryService
from src.services.errors import VersionNotKept
from tests.helpers import PRIMARIES, RLS, UNIQUE, FreshDatabase, seed_duplicates, set_tenant

EVENT_SEQUENCE, APP_ROLE = "20261128_event_sequence", "20261128_app_role_login"
PERIODS, LEAN_PERIODS = "20261128_care_team_periods", "20261206_lean_period_changes"
RECORDS, ONE_ROUND_TRIP = "20261206_records_and_sync", "20261206_one_round_trip"
PERIODS_BY_INDEX = "20261206_period_changes_by_index"
ONE_STATEMENT_WRITES = "20261206_writes_in_one_statement"
ONE_WRITE_PATH = "20261207_one_write_path"
CURSOR_SECRET = "20261207_cursor_secret"
ONE_TRANSFER = "20261207_one_transfer_at_a_time"
NORMALIZED_IDENTIFIERS = "20261207_normalized_identifiers"
PATIENT_GENDER = "20261207_patient_gender"
RECORD_SNAPSHOTS = "20261207_record_snapshots"
FHIR_READS = "20261207_fhir_reads"
KEY_SCOPES = "20261207_key_scopes"
SMART_CLIENTS = "20261207_smart_clients"
CREDENTIAL_ADMIN = "20261207_credential_admin"
ACCESS_LOG = "20261207_access_log"
PATIENT_ORDERS = "20261207_patient_primary_sort"
BULK_EXPORT = "20261207_bulk_export"
ACCESS_LOG_OPERATOR = "20261207_access_log_operator"
HEAD = ACCESS_LOG_OPERATOR

INDEX_EXISTS = "SELECT count(*) FROM pg_indexes WHERE indexname = :name"


async def index_count(db: FreshDatabase) -> int:
    return int((await db.execute(INDEX_EXISTS, name=UNIQUE_PRIMARY_INDEX))[0][0])


class TestRevisionChain:
    def test_the_rule_follows_rls_coverage_and_later_revisions_follow_the_rule(self):
        scripts = ScriptDirectory.from_config(alembic_config())
        assert scripts.get_heads() == [HEAD]
        assert scripts.get_revision(ACCESS_LOG_OPERATOR).down_revision == BULK_EXPORT
        assert scripts.get_revision(BULK_EXPORT).down_revision == PATIENT_ORDERS
        assert scripts.get_revision(PATIENT_ORDERS).down_revision == ACCESS_LOG
        assert scripts.get_revision(ACCESS_LOG).down_revision == CREDENTIAL_ADMIN
        assert scripts.get_revision(CREDENTIAL_ADMIN).down_revision == SMART_CLIENTS
        assert scripts.get_revision(SMART_CLIENTS).down_revision == KEY_SCOPES
        assert scripts.get_revision(KEY_SCOPES).down_revision == FHIR_READS
        assert scripts.get_revision(FHIR_READS).down_revision == RECORD_SNAPSHOTS
        assert scripts.get_revision(RECORD_SNAPSHOTS).down_revision == PATIENT_GENDER
        assert scripts.get_revision(PATIENT_GENDER).down_revision == NORMALIZED_IDENTIFIERS
        assert scripts.get_revision(NORMALIZED_IDENTIFIERS).down_revision == ONE_TRANSFER
        assert scripts.get_revision(ONE_TRANSFER).down_revision == CURSOR_SECRET
        assert scripts.get_revision(CURSOR_SECRET).down_revision == ONE_WRITE_PATH
        assert scripts.get_revision(ONE_WRITE_PATH).down_revision == ONE_STATEMENT_WRITES
        assert scripts.get_revision(ONE_STATEMENT_WRITES).down_revision == PERIODS_BY_INDEX
        assert scripts.get_revision(PERIODS_BY_INDEX).down_revision == ONE_ROUND_TRIP
        assert scripts.get_revision(ONE_ROUND_TRIP).down_revision == RECORDS
        assert scripts.get_revision(RECORDS).down_revision == LEAN_PERIODS
        assert scripts.get_revision(LEAN_PERIODS).down_revision == PERIODS
        assert scripts.get_revision(PERIODS).down_revision == APP_ROLE
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

    async def test_period_change_revisions_go_back_to_the_earlier_definitions(
        self, fresh_database: FreshDatabase
    ):
        definition = (
            "SELECT pg_get_functiondef('careteam_change_period"
            "(uuid, uuid, uuid, text, timestamptz, text, text, text)'::regprocedure)"
        )
        await upgrade(fresh_database.engine)
        latest = (await fresh_database.execute(definition))[0][0]
        assert "valid @> 'infinity'::timestamptz" in latest
        await downgrade(fresh_database.engine, ONE_ROUND_TRIP)
        lean = (await fresh_database.execute(definition))[0][0]
        assert "bool_or" in lean and "'infinity'" not in lean
        await downgrade(fresh_database.engine, PERIODS)
        earlier = (await fresh_database.execute(definition))[0][0]
        assert "bool_or" not in earlier and "SELECT id, role INTO v_open" in earlier
        await upgrade(fresh_database.engine)
        assert await current_revision(fresh_database.engine) == HEAD

    async def test_one_statement_writes_go_back_to_the_earlier_definitions(
        self, fresh_database: FreshDatabase
    ):
        assign = (
            "SELECT pg_get_functiondef('careteam_assign_primary"
            "(uuid, uuid, uuid, text, text, text)'::regprocedure)"
        )
        write = "SELECT to_regprocedure('careteam_write(text, uuid, uuid, uuid, text, text, "
        write += "text, bigint[], text, uuid)') IS NOT NULL AND to_regprocedure("
        write += "'careteam_care_team_as_of(uuid, uuid, timestamptz, text)') IS NOT NULL"
        column = (
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_name = 'care_team_events' AND column_name = 'write_id'"
        )
        await upgrade(fresh_database.engine)
        assert (await fresh_database.execute(write))[0][0] is True
        assert (await fresh_database.execute(column))[0][0] == 1
        latest = (await fresh_database.execute(assign))[0][0]
        # The events after both changes: the demotion's after the promotion's upsert.
        assert latest.index("ON CONFLICT") < latest.index("'primary_demoted'")
        await downgrade(fresh_database.engine, PERIODS_BY_INDEX)
        assert (await fresh_database.execute(write))[0][0] is False  # neither function
        assert (await fresh_database.execute(column))[0][0] == 0
        earlier = (await fresh_database.execute(assign))[0][0]
        assert earlier.index("'primary_demoted'") < earlier.index("ON CONFLICT")
        await upgrade(fresh_database.engine)
        assert await current_revision(fresh_database.engine) == HEAD

    async def test_models_match_migrations(self, fresh_database: FreshDatabase):
        await upgrade(fresh_database.engine)
        async with fresh_database.engine.connect() as conn:
            differences = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"include_object": compared}),
                    Base.metadata,
                )
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


class TestRecordsAndSync:
    async def test_shared_npis_stop_it_and_existing_names_are_searchable_after(
        self, fresh_database: FreshDatabase
    ):
        engine = fresh_database.engine
        await upgrade(engine, LEAN_PERIODS)
        org = (
            await fresh_database.execute(
                "INSERT INTO organizations (name) VALUES ('Before') RETURNING id"
            )
        )[0][0]
        await fresh_database.execute(
            "INSERT INTO patients (organization_id, first_name, last_name) "
            "VALUES (:org, 'ÉMILE', 'Zola'), (:org, 'ada', 'LOVELACE')",
            org=org,
        )
        await fresh_database.execute(
            "INSERT INTO providers (organization_id, first_name, last_name, npi) "
            "VALUES (:org, 'A', 'One', '1234567893'), (:org, 'B', 'Two', '1234567893')",
            org=org,
        )
        with pytest.raises(Exception, match=r"1 NPI\(s\) are held by more than one provider"):
            await upgrade(engine)
        await fresh_database.execute("UPDATE providers SET npi = NULL WHERE last_name = 'Two'")
        await upgrade(engine)  # again, once corrected: it goes on where it stopped
        assert await current_revision(engine) == HEAD
        keys = await fresh_database.execute(
            "SELECT first_name_key, last_name_key FROM patients ORDER BY last_name_key"
        )
        assert [tuple(k) for k in keys] == [("ada", "lovelace"), ("émile", "zola")]
        # New writes get their keys from the trigger.
        await fresh_database.execute(
            "UPDATE patients SET last_name = 'Byron' WHERE last_name = 'LOVELACE'"
        )
        renamed = await fresh_database.execute(
            "SELECT last_name_key FROM patients WHERE last_name = 'Byron'"
        )
        assert renamed[0][0] == "byron"


class TestPatientGender:
    async def test_existing_patients_read_unknown_and_only_genders_are_stored(
        self, fresh_database: FreshDatabase
    ):
        db = fresh_database
        await upgrade(db.engine, NORMALIZED_IDENTIFIERS)
        org = (await db.execute("INSERT INTO organizations (name) VALUES ('c') RETURNING id"))[0][0]
        before = (
            await db.execute(
                "INSERT INTO patients (organization_id, first_name) VALUES (:org, 'Old') "
                "RETURNING id",
                org=org,
            )
        )[0][0]

        await upgrade(db.engine, PATIENT_GENDER)

        assert await db.execute("SELECT gender FROM patients WHERE id = :p", p=before) == [
            ("unknown",)
        ]
        # Inserts with only the columns the design lists still work.
        await db.execute("INSERT INTO patients (organization_id) VALUES (:org)", org=org)
        with pytest.raises(Exception, match="ck_patients_gender"):
            await db.execute("UPDATE patients SET gender = 'M' WHERE id = :p", p=before)

        await downgrade(db.engine, NORMALIZED_IDENTIFIERS)
        columns = await db.execute(
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_name = 'patients' AND column_name = 'gender'"
        )
        assert columns == [(0,)]
        await upgrade(db.engine)
        assert await db.execute("SELECT DISTINCT gender FROM patients") == [("unknown",)]


class TestRecordSnapshots:
    async def test_versions_written_before_are_not_made_up(
        self, fresh_database: FreshDatabase, settings: Settings
    ):
        db = fresh_database
        await upgrade(db.engine, PATIENT_GENDER)
        org = (await db.execute("INSERT INTO organizations (name) VALUES ('c') RETURNING id"))[0][0]

        async def patient(version: int) -> uuid.UUID:
            rows = await db.execute(
                "INSERT INTO patients (organization_id, first_name, last_name, version) "
                "VALUES (:org, 'Ada', 'Byron', :v) RETURNING id",
                org=org,
                v=version,
            )
            return rows[0][0]

        async def change(record: uuid.UUID, seq: int, action: str) -> None:
            # As the release before wrote them: no version, no snapshot.
            await db.execute(
                "INSERT INTO record_changes "
                "(organization_id, record_type, record_id, seq, action, fields, actor) "
                "VALUES (:org, 'patient', :r, :seq, :action, ARRAY['last_name'], 'old')",
                org=org,
                r=record,
                seq=seq,
                action=action,
            )

        # Created and changed once by the release before; and one created before the
        # trail began (its version 1 has no change), then changed.
        tracked, older = await patient(2), await patient(2)
        await change(tracked, 1, "created")
        await change(tracked, 2, "updated")
        await change(older, 1, "updated")

        await upgrade(db.engine)
        database = open_database(settings, db.url)
        try:
            async with database.sessionmaker() as session:
                for record in (tracked, older):
                    with pytest.raises(VersionNotKept, match="version 1 of patient"):
                        await DirectoryService.get_patient_version(
                            db=session, organization_id=org, patient_id=record, version=1
                        )
                    # The current version is the row itself.
                    current = await DirectoryService.get_patient_version(
                        db=session, organization_id=org, patient_id=record, version=2
                    )
                    assert current is not None
                    assert (current.last_name, current.gender) == ("Byron", "unknown")
                    versions = await DirectoryService.patient_versions(
                        db=session, organization_id=org, patient_id=record
                    )
                    assert [(v.version, v.action, v.readable) for v in versions] == [
                        (2, "updated", True),
                        (1, "created", False),
                    ]
                # A change from now on is kept: version 3 reads back; version 2, current
                # until then and never kept, cannot be any more.
                await DirectoryService.update_patient(
                    db=session, organization_id=org, patient_id=tracked, last_name="King"
                )
                third = await DirectoryService.get_patient_version(
                    db=session, organization_id=org, patient_id=tracked, version=3
                )
                assert third is not None and third.last_name == "King"
                with pytest.raises(VersionNotKept):
                    await DirectoryService.get_patient_version(
                        db=session, organization_id=org, patient_id=tracked, version=2
                    )
        finally:
            await database.dispose()

        await downgrade(db.engine, PATIENT_GENDER)
        columns = await db.execute(
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_name = 'record_changes' AND column_name IN ('version', 'snapshot')"
        )
        assert columns == [(0,)]


class TestOrganizationRead:
    async def test_the_application_role_reads_its_own_organization_and_nothing_more(
        self, fresh_database: FreshDatabase, settings: Settings
    ):
        db = fresh_database
        await upgrade(db.engine)
        mine, theirs = [
            (await db.execute(f"INSERT INTO organizations (name) VALUES ('{n}') RETURNING id"))[0][
                0
            ]
            for n in ("mine", "theirs")
        ]
        database = open_database(settings, db.url)
        try:
            async with database.app_engine.connect() as conn:
                await set_tenant(conn, mine)
                rows = (await conn.execute(text("SELECT id, name FROM organizations"))).all()
                assert [(r.id, r.name) for r in rows] == [(mine, "mine")]
                await conn.rollback()
        finally:
            await database.dispose()
        assert theirs != mine
        await downgrade(db.engine, RECORD_SNAPSHOTS)
        database = open_database(settings, db.url)
        try:
            async with database.app_engine.connect() as conn:
                await set_tenant(conn, mine)
                with pytest.raises(DBAPIError, match="permission denied"):
                    await conn.execute(text("SELECT name FROM organizations"))
                await conn.rollback()
        finally:
            await database.dispose()


class TestKeyScopes:
    async def test_existing_keys_keep_full_access_and_downgrade_drops_the_scopes(
        self, fresh_database: FreshDatabase, settings: Settings
    ):
        db = fresh_database
        await upgrade(db.engine, FHIR_READS)
        org = (await db.execute("INSERT INTO organizations (name) VALUES ('c') RETURNING id"))[0][0]
        await db.execute(
            "INSERT INTO api_keys (organization_id, key_hash) VALUES (:org, 'old-key')", org=org
        )

        await upgrade(db.engine, KEY_SCOPES)

        assert await db.execute("SELECT scopes FROM api_keys WHERE key_hash = 'old-key'") == [
            (["system/*.cruds", "careteam/admin"],)
        ]
        database = open_database(settings, db.url)
        try:
            async with database.app_engine.connect() as conn:
                found = (
                    await conn.execute(text("SELECT * FROM authenticate_api_key('old-key')"))
                ).one()
                await conn.rollback()
        finally:
            await database.dispose()
        assert (found.organization_id, found.scopes) == (org, ["system/*.cruds", "careteam/admin"])

        await downgrade(db.engine, FHIR_READS)
        columns = await db.execute(
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_name = 'api_keys' AND column_name = 'scopes'"
        )
        assert columns == [(0,)]
        database = open_database(settings, db.url)
        try:
            async with database.app_engine.connect() as conn:
                row = (
                    await conn.execute(text("SELECT * FROM authenticate_api_key('old-key')"))
                ).one()
                await conn.rollback()
        finally:
            await database.dispose()
        assert tuple(row) == (row.api_key_id, org)
        await upgrade(db.engine)
        assert await current_revision(db.engine) == HEAD


class TestSmartClients:
    async def test_tokens_expire_and_die_with_their_client_and_downgrade_deletes_them(
        self, fresh_database: FreshDatabase, settings: Settings
    ):
        db = fresh_database
        await upgrade(db.engine, KEY_SCOPES)
        org = (await db.execute("INSERT INTO organizations (name) VALUES ('c') RETURNING id"))[0][0]
        await db.execute(
            "INSERT INTO api_keys (organization_id, key_hash) VALUES (:org, 'old-key')", org=org
        )

        await upgrade(db.engine, SMART_CLIENTS)

        client = (
            await db.execute(
                "INSERT INTO smart_clients (organization_id, name, jwks, scopes) "
                "VALUES (:org, 'c', '{\"keys\": []}', '{system/*.rs}') RETURNING id",
                org=org,
            )
        )[0][0]
        for key_hash, expires in (("live-token", "1 hour"), ("expired-token", "-1 second")):
            await db.execute(
                "INSERT INTO api_keys (organization_id, key_hash, scopes, client_id, expires_at) "
                f"VALUES (:org, :hash, '{{system/*.rs}}', :client, now() + interval '{expires}')",
                org=org,
                hash=key_hash,
                client=client,
            )
        neither = (
            "INSERT INTO smart_clients (organization_id, name, scopes) "
            "VALUES (:org, 'n', '{system/*.rs}')"
        )
        with pytest.raises(DBAPIError, match="ck_smart_clients_keys"):
            await db.execute(neither, org=org)

        async def live(key_hash: str) -> list[Any]:
            database = open_database(settings, db.url)
            try:
                async with database.app_engine.connect() as conn:
                    rows = (
                        await conn.execute(
                            text("SELECT * FROM authenticate_api_key(:h)"), {"h": key_hash}
                        )
                    ).all()
                    await conn.rollback()
            finally:
                await database.dispose()
            return list(rows)

        assert [r.client_id for r in await live("old-key")] == [None]
        assert [r.client_id for r in await live("live-token")] == [client]
        assert await live("expired-token") == []
        await db.execute("UPDATE smart_clients SET revoked_at = now() WHERE id = :c", c=client)
        assert await live("live-token") == []  # its client revoked: refused

        await downgrade(db.engine, KEY_SCOPES)
        assert await db.execute("SELECT key_hash FROM api_keys") == [("old-key",)]
        assert [tuple(r) for r in await live("old-key")] == [
            (mock_any_value, org, ["system/*.cruds", "careteam/admin"])
        ]  # authenticate_api_key v2 again
        tables = await db.execute(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'smart_client%'"
        )
        assert tables == [(0,)]
        await upgrade(db.engine)
        assert await current_revision(db.engine) == HEAD


ADMIN_FUNCTIONS = """
SELECT p.proname, p.prosecdef,
       has_function_privilege(:role, p.oid, 'EXECUTE') AS app_may_run,
       has_function_privilege('public', p.oid, 'EXECUTE') AS anyone_may_run
FROM pg_proc AS p WHERE p.proname LIKE 'careteam_admin_%' ORDER BY p.proname
"""


class TestCredentialAdmin:
    async def test_the_application_role_runs_the_six_definer_functions_only_and_downgrade(
        self, fresh_database: FreshDatabase, settings: Settings
    ):
        db = fresh_database
        await upgrade(db.engine, CREDENTIAL_ADMIN)
        rows = await db.execute(ADMIN_FUNCTIONS, role=settings.app_db_role)
        assert [tuple(r) for r in rows] == [
            ("careteam_admin_caller", False, False, False),  # only the six below run it
            *[
                (f"careteam_admin_{name}", True, True, False)
                for name in (
                    "clients",
                    "issue_key",
                    "keys",
                    "register_client",
                    "revoke_client",
                    "revoke_key",
                )
            ],
        ]
        org = (await db.execute("INSERT INTO organizations (name) VALUES ('c') RETURNING id"))[0][0]
        await db.execute(
            "INSERT INTO api_keys (organization_id, key_hash, scopes) "
            "VALUES (:org, 'made-over-http', '{system/*.rs}')",
            org=org,
        )

        await downgrade(db.engine, SMART_CLIENTS)
        assert await db.execute(ADMIN_FUNCTIONS, role=settings.app_db_role) == []
        assert await db.execute("SELECT key_hash FROM api_keys") == [("made-over-http",)]


class TestAccessLog:
    async def test_the_log_comes_and_goes_and_the_app_may_only_append(
        self, fresh_database: FreshDatabase, settings: Settings
    ):
        db = fresh_database
        await upgrade(db.engine, ACCESS_LOG)
        org = (await db.execute("INSERT INTO organizations (name) VALUES ('c') RETURNING id"))[0][0]
        privileges = await db.execute(
            "SELECT table_name, string_agg(privilege_type, ',' ORDER BY privilege_type) "
            "FROM information_schema.role_table_grants WHERE grantee = :role "
            "AND table_name LIKE 'access_log%' GROUP BY table_name ORDER BY table_name",
            role=settings.app_db_role,
        )
        assert privileges == [
            ("access_log", "INSERT,SELECT"),
            ("access_log_patients", "INSERT,SELECT"),
        ]
        database = open_database(settings, db.url)
        try:
            async with database.app_engine.connect() as conn:
                written = await conn.execute(
                    text(
                        "SELECT careteam_record_access(:org, gen_random_uuid(), "
                        "gen_random_uuid(), NULL, 'GET /v1/patients/{patient_id}', 'read', 'R', "
                        "'{}', 200, NULL, ARRAY[gen_random_uuid()])"
                    ),
                    {"org": org},
                )
                assert written.scalar_one() is True
                await conn.commit()
        finally:
            await database.dispose()
        assert await db.execute("SELECT count(*) FROM access_log_patients") == [(1,)]

        await downgrade(db.engine, CREDENTIAL_ADMIN)
        assert await db.execute(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'access_log%'"
        ) == [(0,)]
        await upgrade(db.engine)
        assert await current_revision(db.engine) == HEAD


class TestPatientOrders:
    async def test_the_order_indexes_are_built_as_the_models_say_and_dropped(
        self, fresh_database: FreshDatabase
    ):
        """The name order's index as PostgreSQL holds it (Alembic cannot compare its
        COLLATE), the same as the model's; both gone after a downgrade."""
        db = fresh_database
        await upgrade(db.engine)
        indexes = dict(
            await db.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'patients' "
                "AND indexname IN ('ix_patients_organization_id_name_order', "
                "'ix_patients_organization_id_created_at_id')"
            )
        )
        name_order = " ".join(indexes["ix_patients_organization_id_name_order"].split())
        for column in ("last_name_key", "first_name_key"):
            held = f"( CASE WHEN ({column} IS NULL) THEN ''::text ELSE {column} END)"
            assert held + ' COLLATE "C"' in name_order, name_order
        assert name_order.endswith(", id)")
        model = next(
            i for i in Base.metadata.tables["patients"].indexes if i.name in COLLATED_INDEXES
        )
        assert [str(e) for e in model.expressions][1:3] == [
            "(CASE WHEN last_name_key IS NULL THEN '' ELSE last_name_key END) COLLATE \"C\"",
            "(CASE WHEN first_name_key IS NULL THEN '' ELSE first_name_key END) COLLATE \"C\"",
        ]
        assert (
            "(organization_id, created_at, id)"
            in indexes["ix_patients_organization_id_created_at_id"]
        )
        await downgrade(db.engine, ACCESS_LOG)
        left = await db.execute(
            "SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'ix_patients_organization_id_%'"
            " AND indexname IN ('ix_patients_organization_id_name_order', "
            "'ix_patients_organization_id_created_at_id')"
        )
        assert left == [(0,)]
