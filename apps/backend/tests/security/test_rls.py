"""Row-level security, tested as the application role (never as the owner)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from src.config import Settings
from src.db import Database
from src.services.care_team_service import CareTeamService
from src.services.organization_service import OrganizationService, hash_api_key
from tests.helpers import create_clinic, set_tenant

TENANT_TABLES = [
    "organizations",
    "patients",
    "providers",
    "care_team_assignments",
    "care_team_events",
    "care_team_event_sequences",
    "care_team_periods",
    "patient_identifiers",
    "record_changes",
    "idempotency_keys",
    "access_log",
    "access_log_patients",
    "export_jobs",
]
# api_keys is covered by RLS too, but the application role cannot read it at all: it only
# calls authenticate_api_key(). Of organizations it reads its own id, name and creation
# time (revision 20261207_fhir_reads: FHIR's Organization read); the owner makes them.
# SMART clients and their assertions likewise (revision 20261207_smart_clients): only
# through smart_client_keys() and smart_issue_token().
OWNER_ONLY_TABLES = ["api_keys", "smart_clients", "smart_client_assertions"]
PROTECTED_TABLES = [*TENANT_TABLES, *OWNER_ONLY_TABLES]
APPLICATION_TABLES = TENANT_TABLES


async def two_clinics(database: Database) -> tuple[tuple[uuid.UUID, uuid.UUID], ...]:
    """Two organizations, each with a patient whose care team has a primary."""
    clinics = []
    async with database.sessionmaker() as db:
        for _ in range(2):
            org, patient, (provider, _, _) = await create_clinic(db)
            await CareTeamService.assign_primary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=provider
            )
            clinics.append((org, patient))
    async with database.owner_engine.begin() as owner:  # a row in each of the other tables
        for org, patient in clinics:
            params = {"org": org, "patient": patient}
            for sql in (
                "INSERT INTO patient_identifiers (organization_id, patient_id, system, value) "
                "VALUES (:org, :patient, 'urn:mrn', 'M-1')",
                "INSERT INTO record_changes (organization_id, record_type, record_id, seq, "
                "action, fields, actor) "
                "VALUES (:org, 'patient', :patient, 1, 'created', '{dob}', 'test')",
                "INSERT INTO idempotency_keys (organization_id, key, fingerprint, status_code, "
                "body) VALUES (:org, 'k', 'f', 201, '')",
                "INSERT INTO access_log (organization_id, id, api_key_id, route, interaction, "
                "action, status, patient_ids) VALUES (:org, gen_random_uuid(), gen_random_uuid(), "
                "'GET /v1/patients/{patient_id}', 'read', 'R', 200, ARRAY[:patient]::uuid[])",
                "INSERT INTO access_log_patients (organization_id, patient_id, recorded_at, "
                "entry_id) VALUES (:org, :patient, now(), gen_random_uuid())",
                # Finished, expiring tomorrow: no runner of another test claims or expires it.
                "INSERT INTO export_jobs (organization_id, requester, level, types, request, "
                "status, expires_after_s, expires_at) VALUES (:org, 'api_key:test', 'system', "
                "'{Patient}', 'test', 'completed', 60, now() + interval '1 day')",
            ):
                await owner.execute(text(sql), params)
    return tuple(clinics)


async def count(conn: AsyncConnection, table: str, org: uuid.UUID) -> int:
    column = "id" if table == "organizations" else "organization_id"
    return int(
        (
            await conn.execute(
                text(f"SELECT count(*) FROM {table} WHERE {column} = :org"), {"org": org}
            )
        ).scalar_one()
    )


class TestApplicationRole:
    async def test_is_neither_superuser_nor_owner(self, database: Database, settings: Settings):
        async with database.app_engine.connect() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT current_user AS name, rolsuper, rolbypassrls FROM pg_roles "
                        "WHERE rolname = current_user"
                    )
                )
            ).one()
            owned = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' "
                        "AND tableowner = current_user"
                    )
                )
            ).scalar_one()
        assert row.name == settings.app_db_role  # careteam_app, unless APP_DB_ROLE says
        assert not row.rolsuper and not row.rolbypassrls
        assert owned == 0

    async def test_every_tenant_table_has_forced_rls_and_a_policy(self, database: Database):
        """Coverage: any table with organization_id must be protected, new ones too."""
        async with database.owner_engine.connect() as conn:
            rows = (
                await conn.execute(
                    text("""
                SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,
                       EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid) AS has_policy
                FROM pg_class c
                JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
                WHERE c.relkind = 'r' AND (c.relname = 'organizations' OR EXISTS (
                    SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid
                    AND a.attname = 'organization_id' AND NOT a.attisdropped))
            """)
                )
            ).all()
        assert sorted(r.relname for r in rows) == sorted(PROTECTED_TABLES)
        assert all(r.relrowsecurity and r.relforcerowsecurity and r.has_policy for r in rows)


@contextlib.asynccontextmanager
async def application_connection(database: Database) -> AsyncIterator[Any]:
    """The asyncpg connection of one of the application's pooled connections."""
    async with database.app_engine.connect() as conn:
        yield (await conn.get_raw_connection()).driver_connection


class TestTheApplicationCannotLeaveItsRole:
    """Application connections log in as the application role itself: there is no
    superuser session underneath to go back to."""

    @pytest.mark.parametrize(
        "escalation",
        [
            "SET ROLE postgres",
            "SET SESSION AUTHORIZATION postgres",
            "SET ROLE NONE; SET SESSION AUTHORIZATION DEFAULT; SET ROLE postgres",
        ],
    )
    async def test_no_statement_regains_a_superuser(
        self, database: Database, settings: Settings, escalation: str
    ):
        async with application_connection(database) as driver:
            await driver.execute("RESET ROLE")
            who = await driver.fetchrow(
                "SELECT session_user AS login, current_user AS role, "
                "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser"
            )
            role = settings.app_db_role
            assert (who["login"], who["role"], who["superuser"]) == (role, role, False)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await driver.execute(escalation)
            await driver.execute("RESET ROLE; RESET SESSION AUTHORIZATION")
            assert await driver.fetchval("SELECT current_user") == role

    @pytest.mark.parametrize(
        "statement",
        [
            "DELETE FROM patients",
            "DELETE FROM providers",
            "INSERT INTO organizations (name) VALUES ('x')",
            "UPDATE organizations SET name = 'x'",
            "DELETE FROM organizations",
            "SELECT count(*) FROM api_keys",
            "SELECT count(*) FROM smart_clients",
            "SELECT count(*) FROM smart_client_assertions",
            "UPDATE api_keys SET revoked_at = NULL",
            "INSERT INTO smart_client_assertions (organization_id, client_id, jti, expires_at) "
            "VALUES (gen_random_uuid(), gen_random_uuid(), 'j', now())",
            "CREATE TABLE escape_hatch (id int)",
            "CREATE TEMPORARY TABLE escape_hatch (id int)",
            "UPDATE care_team_events SET actor = 'x'",
            "DELETE FROM care_team_events",
            "UPDATE access_log SET status = 200",
            "DELETE FROM access_log",
            "TRUNCATE access_log",
            "UPDATE access_log_patients SET patient_id = gen_random_uuid()",
            "DELETE FROM access_log_patients",
            "TRUNCATE access_log_patients",
        ],
    )
    async def test_privileges_it_does_not_use_are_revoked(self, database: Database, statement: str):
        async with application_connection(database) as driver:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await driver.execute(statement)


class TestTenantIsolation:
    async def test_without_tenant_nothing_is_visible(self, database: Database):
        (org_a, _), _ = await two_clinics(database)
        async with database.app_engine.connect() as conn:
            for table in APPLICATION_TABLES:
                assert (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar() == 0
        async with database.owner_engine.connect() as owner:  # the rows do exist
            for table in TENANT_TABLES:
                assert await count(owner, table, org_a) >= 1

    async def test_one_tenant_cannot_read_another(self, database: Database):
        (org_a, _), (org_b, _) = await two_clinics(database)
        async with database.app_engine.connect() as conn:
            await set_tenant(conn, org_a)
            for table in APPLICATION_TABLES:
                assert await count(conn, table, org_a) >= 1
                assert await count(conn, table, org_b) == 0

    async def test_one_tenant_cannot_change_another(self, database: Database):
        (org_a, _), (org_b, patient_b) = await two_clinics(database)
        async with database.app_engine.connect() as conn:
            await set_tenant(conn, org_a)
            updated = await conn.execute(
                text(
                    "UPDATE care_team_assignments SET is_primary_provider = false "
                    "WHERE organization_id = :org"
                ),
                {"org": org_b},
            )
            deleted = await conn.execute(
                text("DELETE FROM care_team_assignments WHERE organization_id = :org"),
                {"org": org_b},
            )
            renamed = await conn.execute(
                text("UPDATE patients SET last_name = 'X' WHERE id = :id"), {"id": patient_b}
            )
            assert (updated.rowcount, deleted.rowcount, renamed.rowcount) == (0, 0, 0)

    async def test_one_tenant_cannot_write_rows_for_another(self, database: Database):
        (org_a, _), (org_b, _) = await two_clinics(database)
        async with database.app_engine.connect() as conn:
            await set_tenant(conn, org_a)
            with pytest.raises(ProgrammingError, match="row-level security"):
                await conn.execute(
                    text("INSERT INTO patients (organization_id) VALUES (:org)"), {"org": org_b}
                )

    async def test_own_rows_cannot_be_moved_to_another_tenant(self, database: Database):
        (org_a, patient_a), (org_b, _) = await two_clinics(database)
        async with database.app_engine.connect() as conn:
            await set_tenant(conn, org_a)
            with pytest.raises(DBAPIError):
                await conn.execute(
                    text("UPDATE patients SET organization_id = :b WHERE id = :id"),
                    {"b": org_b, "id": patient_a},
                )


class TestEventsAreAppendOnly:
    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE care_team_events SET reason = 'rewritten'",
            "DELETE FROM care_team_events",
        ],
    )
    async def test_application_cannot_rewrite_history(self, database: Database, statement: str):
        (org_a, _), _ = await two_clinics(database)
        async with database.app_engine.connect() as conn:
            await set_tenant(conn, org_a)
            with pytest.raises(ProgrammingError, match="permission denied"):
                await conn.execute(text(statement))


class TestTheAccessLogIsAppendOnly:
    """The application role adds entries (its own tenant's only) and reads them; it can
    change or remove none, its own included (revision 20261207_access_log)."""

    @pytest.mark.parametrize(
        "statement",
        [
            "UPDATE access_log SET status = 200",
            "UPDATE access_log SET patient_ids = '{}'",
            "DELETE FROM access_log",
            "TRUNCATE access_log",
            "UPDATE access_log_patients SET recorded_at = now()",
            "DELETE FROM access_log_patients",
            "TRUNCATE access_log_patients",
        ],
    )
    async def test_application_cannot_alter_the_log(self, database: Database, statement: str):
        (org_a, _), _ = await two_clinics(database)
        async with database.app_engine.connect() as conn:
            await set_tenant(conn, org_a)
            assert await count(conn, "access_log", org_a) >= 1  # it sees its own entries
            with pytest.raises(ProgrammingError, match="permission denied"):
                await conn.execute(text(statement))

    async def test_application_records_for_its_own_tenant_only(self, database: Database):
        (org_a, patient_a), (org_b, _) = await two_clinics(database)
        record = (
            "SELECT careteam_record_access($1, gen_random_uuid(), gen_random_uuid(), NULL, "
            "'GET /v1/patients/{patient_id}', 'read', 'R', '{}', 200, NULL, $2)"
        )
        async with application_connection(database) as driver:
            assert await driver.fetchval(record, org_a, [patient_a]) is True
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
                await driver.execute(
                    f"BEGIN; SELECT careteam_enter('{org_a}', NULL); "
                    "INSERT INTO access_log (organization_id, id, api_key_id, route, "
                    f"interaction, action, status) VALUES ('{org_b}', gen_random_uuid(), "
                    "gen_random_uuid(), 'x', 'read', 'R', 200)"
                )
            await driver.execute("ROLLBACK")


class TestEnteringATenant:
    """careteam_enter and careteam_care_team (migration 20261206_one_round_trip), called
    as the application role: the tenant lasts exactly the transaction, and a request's
    key is checked against the organization it claims."""

    async def test_the_tenant_lasts_the_transaction_and_no_longer(self, database: Database):
        (org_a, patient_a), (org_b, _) = await two_clinics(database)
        async with application_connection(database) as driver:
            await driver.execute(f"BEGIN; SELECT careteam_enter('{org_a}', NULL)")
            setting = "SELECT current_setting('app.current_organization_id', true)"
            assert await driver.fetchval(setting) == str(org_a)
            assert await driver.fetchval("SELECT count(*) FROM patients") == 1
            await driver.execute("COMMIT")
            assert await driver.fetchval(setting) == ""
            # One statement in its own implicit transaction: the team, then no tenant.
            rows = await driver.fetch(
                "SELECT * FROM careteam_care_team($1, $2, NULL)", org_a, patient_a
            )
            assert [r["patient_id"] for r in rows] == [patient_a]
            assert rows[0]["is_primary_provider"] and rows[0]["version"] >= 1
            assert await driver.fetchval(setting) == ""
            # Another tenant's patient is not found through its own id.
            assert (
                await driver.fetch(
                    "SELECT * FROM careteam_care_team($1, $2, NULL)", org_b, patient_a
                )
                == []
            )

    async def test_a_key_counts_only_while_live_and_only_for_its_organization(
        self, database: Database
    ):
        (org_a, patient_a), (org_b, _) = await two_clinics(database)
        async with AsyncSession(database.owner_engine) as owner:
            issued = await OrganizationService.create_api_key(db=owner, organization_id=org_a)
        key_hash = hash_api_key(issued.key)
        team = "SELECT * FROM careteam_care_team($1, $2, $3)"
        async with application_connection(database) as driver:
            assert len(await driver.fetch(team, org_a, patient_a, key_hash)) == 1
            with pytest.raises(asyncpg.PostgresError, match="not live") as refused:
                await driver.fetch(team, org_b, patient_a, key_hash)  # not its organization
            assert refused.value.sqlstate == "CT007"
            with pytest.raises(asyncpg.PostgresError, match="not live"):
                await driver.fetch(team, org_a, patient_a, hash_api_key("ctk_unknown"))
            async with AsyncSession(database.owner_engine) as owner:
                await OrganizationService.revoke_api_key(db=owner, key_id=issued.id)
            with pytest.raises(asyncpg.PostgresError, match="not live"):
                await driver.fetch(team, org_a, patient_a, key_hash)
            with pytest.raises(asyncpg.PostgresError, match="not live"):
                await driver.execute(f"BEGIN; SELECT careteam_enter('{org_a}', '{key_hash}')")
            await driver.execute("ROLLBACK")
