"""The transaction a service operation runs in, on a pooled connection (the production
path: the session has no transaction of its own, so the unit sends BEGIN and COMMIT).

Each test uses an engine with a single pooled connection, so the next operation gets
the very connection the previous one used, and can see what it left behind.
"""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

from src.config import Settings
from src.db import Database, open_database
from src.scopes import FULL_ACCESS, Grants
from src.services import care_team_service, credentials, directory_service, organization_service
from src.services.care_team_service import CareTeamService as Service
from src.services.credentials import Credential, KnownKey
from src.services.errors import (
    NO_SUBJECT,
    ApiKeyNotLive,
    DatabaseError,
    PatientNotFound,
    ProviderInactive,
)
from src.services.organization_service import hash_api_key
from src.services.transaction import (
    BEGIN_SNAPSHOT,
    Failure,
    SessionInTransaction,
    Sql,
    begin_snapshot,
    classify,
    is_database_error,
    run_transaction,
    tenant_statement,
    translate,
)
from tests.helpers import (
    create_clinic,
    create_provider,
    event_types,
    set_tenant,
    team_rows,
    wait_until_blocked,
    with_owner,
)


@pytest.fixture
async def one_connection(settings: Settings, database: Database) -> AsyncIterator[Database]:
    single = settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0})
    db = with_owner(open_database(single, database.url))
    yield db
    await db.dispose()


async def pooled_state(database: Database) -> tuple[bool, Any]:
    """(in a transaction?, tenant setting) of the pool's connection, as the next user gets it."""
    async with database.sessionmaker() as db:
        driver = (await (await db.connection()).get_raw_connection()).driver_connection
        in_transaction = driver.is_in_transaction()
        tenant = await driver.fetchval(
            "SELECT current_setting('app.current_organization_id', true)"
        )
        return in_transaction, tenant


class TestPooledConnectionHygiene:
    async def test_clean_after_success_domain_error_and_database_error(
        self, one_connection: Database
    ):
        async with one_connection.sessionmaker() as db:
            org, patient, (p1, p2, _) = await create_clinic(db)
            inactive = await create_provider(db, organization_id=org, active=False)
        calls: list[tuple[type[Exception] | None, dict[str, Any]]] = [
            (None, {"provider_id": p1}),
            (ProviderInactive, {"provider_id": inactive}),
            (PatientNotFound, {"provider_id": p2, "patient_id": uuid.uuid4()}),
            (DatabaseError, {"provider_id": p2, "actor": None}),  # NOT NULL: fails after writes
        ]
        for expected, overrides in calls:
            kwargs: dict[str, Any] = {"organization_id": org, "patient_id": patient, **overrides}
            async with one_connection.sessionmaker() as db:
                if expected is None:
                    await Service.assign_primary_provider(db=db, **kwargs)
                else:
                    with pytest.raises(expected):
                        await Service.assign_primary_provider(db=db, **kwargs)
            assert await pooled_state(one_connection) == (False, "")
        async with one_connection.sessionmaker() as db:
            assert await team_rows(db, org, patient) == {p1: True}
            assert await event_types(db, org, patient) == ["primary_assigned"]

    async def test_clean_after_a_one_statement_read_and_a_refused_key(
        self, one_connection: Database
    ):
        """The care-team read sets the tenant inside its one statement (careteam_care_team)
        and a transaction whose key careteam_enter refuses is rolled back, as is a write
        sent alone whose key careteam_write refuses: none leaves a tenant or a
        transaction to the next user of the connection."""
        async with one_connection.sessionmaker() as db:
            org, patient, (p1, p2, _) = await create_clinic(db)
            await Service.assign_primary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=p1
            )
        async with one_connection.sessionmaker() as db:
            team = await Service.get_care_team(db=db, organization_id=org, patient_id=patient)
        assert team.primary_provider_id == p1
        assert await pooled_state(one_connection) == (False, "")
        no_such_key = Credential(hash_api_key("ctk_" + "B" * 43), uuid.uuid4(), org)
        now = {"as_of": datetime.datetime.now(datetime.UTC)}
        for call, extra in (
            (Service.get_care_team, {}),
            (Service.get_care_team, now),  # careteam_care_team_as_of, one statement too
            (Service.get_care_team_history, {}),
        ):
            async with one_connection.sessionmaker() as db:
                credentials.act_as(db, no_such_key)
                with pytest.raises(ApiKeyNotLive):
                    await call(db=db, organization_id=org, patient_id=patient, **extra)
            assert await pooled_state(one_connection) == (False, "")
        # A write sent alone: careteam_write checks the key in its own statement.
        async with one_connection.sessionmaker() as db:
            credentials.act_as(db, no_such_key)
            with pytest.raises(ApiKeyNotLive):
                await Service.assign_primary_provider(
                    db=db, organization_id=org, patient_id=patient, provider_id=p2
                )
        assert await pooled_state(one_connection) == (False, "")
        assert not no_such_key.confirmed
        async with one_connection.sessionmaker() as db:
            assert await team_rows(db, org, patient) == {p1: True}

    async def test_a_cancelled_write_leaves_nothing_and_its_connection_is_discarded(
        self, one_connection: Database, database: Database
    ):
        async with one_connection.sessionmaker() as db:
            org, patient, (p1, _, _) = await create_clinic(db)
        async with database.owner_engine.connect() as owner:
            # Another writer holds the patient's lock: the service waits inside its
            # transaction, after BEGIN, tenant and its first statement were sent.
            await owner.execute(
                text("SELECT id FROM patients WHERE id = :id FOR NO KEY UPDATE"), {"id": patient}
            )

            async def assign() -> None:
                async with one_connection.sessionmaker() as db:
                    await Service.assign_primary_provider(
                        db=db, organization_id=org, patient_id=patient, provider_id=p1
                    )

            task = asyncio.create_task(assign())
            await wait_until_blocked(database)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await owner.rollback()
        # A new connection: the tenant setting was never defined on it.
        assert await pooled_state(one_connection) == (False, None)
        async with one_connection.sessionmaker() as db:
            assert await team_rows(db, org, patient) == {}
            team = await Service.assign_primary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=p1
            )
        assert team.primary_provider_id == p1
        async with database.owner_engine.connect() as owner:
            idle_in_transaction = (
                await owner.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND application_name = 'careteam' AND state LIKE 'idle in transaction%'"
                    )
                )
            ).scalar_one()
        assert idle_in_transaction == 0


class TestTenantStatement:
    def test_inlines_the_canonical_uuid(self):
        org = uuid.uuid4()
        assert tenant_statement(org, None) == f"BEGIN; SELECT careteam_enter('{org}', NULL)"

    def test_inlines_the_sessions_key_hash_to_be_checked(self):
        org, key_hash = uuid.uuid4(), hash_api_key("ctk_" + "a" * 43)
        credential = Credential(key_hash, uuid.uuid4(), org)
        assert (
            tenant_statement(org, credential)
            == f"BEGIN; SELECT careteam_enter('{org}', '{key_hash}')"
        )
        with pytest.raises(ValueError):
            Credential("x'); DROP TABLE patients; --", uuid.uuid4(), org)

    @pytest.mark.parametrize(
        "value", ["x'); DROP TABLE patients; --", "", "00000000-0000-0000-0000-00000000000'"]
    )
    def test_anything_but_a_uuid_is_refused(self, value: str):
        with pytest.raises(ValueError):
            tenant_statement(value, None)  # type: ignore[arg-type]


class TestBeginSnapshot:
    def test_imports_an_exported_snapshot_by_its_id(self):
        assert begin_snapshot("00000004-0000002A-1") == (
            f"{BEGIN_SNAPSHOT}; SET TRANSACTION SNAPSHOT '00000004-0000002A-1'"
        )
        assert begin_snapshot() == BEGIN_SNAPSHOT

    @pytest.mark.parametrize("value", ["1-2-3'; DROP TABLE patients; --", "", "abc"])
    def test_anything_but_a_snapshot_id_is_refused(self, value: str):
        """The id is inlined (SET TRANSACTION SNAPSHOT takes no parameter)."""
        with pytest.raises(ValueError):
            begin_snapshot(value)

    async def test_a_transaction_reads_the_snapshot_it_imports(self, database: Database):
        async with database.owner_engine.connect() as first:
            exporter = (await first.get_raw_connection()).driver_connection
            await exporter.execute(BEGIN_SNAPSHOT)
            snapshot = await exporter.fetchval("SELECT pg_export_snapshot()")
            async with database.owner_engine.connect() as second:
                importer = (await second.get_raw_connection()).driver_connection
                await importer.execute(begin_snapshot(snapshot))
                assert await importer.fetchval("SELECT pg_current_snapshot()::text") == (
                    await exporter.fetchval("SELECT pg_current_snapshot()::text")
                )
                await importer.execute("ROLLBACK")
            await exporter.execute("ROLLBACK")


class TestOneTransactionOwner:
    async def test_a_session_with_a_transaction_open_is_refused_and_left_alone(
        self, database: Database
    ):
        async with database.sessionmaker() as db:
            org, patient, (p1, _, _) = await create_clinic(db)
        async with database.sessionmaker() as db:
            await set_tenant(db, org)  # the caller's own transaction, still open
            with pytest.raises(SessionInTransaction, match="transaction open"):
                await Service.assign_primary_provider(
                    db=db, organization_id=org, patient_id=patient, provider_id=p1
                )
            # The caller's transaction is untouched: it can go on and commit.
            still = await db.execute(
                text("SELECT current_setting('app.current_organization_id', true)")
            )
            assert still.scalar_one() == str(org)
            await db.commit()
            assert await team_rows(db, org, patient) == {}  # the service wrote nothing
            team = await Service.assign_primary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=p1
            )
        assert team.primary_provider_id == p1


class TestStatements:
    async def test_colons_in_literals_and_comments_are_left_as_written(self, database: Database):
        statement = Sql(
            "SELECT '10:30' AS at, $1::text AS name, $2::int AS n -- :not_a_parameter\n"
            "/* nor :this */",
            "name",
            "n",
        )
        async with database.app_engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            row = await statement.fetchrow(driver, {"n": 7, "name": "a:b"})
        assert dict(row) == {"at": "10:30", "name": "a:b", "n": 7}

    async def test_every_service_statement_takes_exactly_its_named_parameters(
        self, database: Database
    ):
        statements = [
            (module.__name__, name, value)
            for module in (care_team_service, directory_service, organization_service)
            for name, value in vars(module).items()
            if isinstance(value, Sql)
        ]
        assert len(statements) > 15
        async with database.owner_engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            for module, name, statement in statements:
                prepared = await driver.prepare(statement.text)
                assert len(prepared.get_parameters()) == len(statement.names), (module, name)
                assert len(set(statement.names)) == len(statement.names), (module, name)


class TestErrorsByType:
    async def test_misuse_of_the_driver_is_a_bug_not_retried(
        self, database: Database, caplog: pytest.LogCaptureFixture
    ):
        attempts = 0

        async def two_at_once(driver: Any) -> None:
            nonlocal attempts
            attempts += 1
            # asyncpg: "another operation is in progress" (an InterfaceError).
            await asyncio.gather(driver.fetchval("SELECT 1"), driver.fetchval("SELECT 2"))

        async with database.sessionmaker() as db:
            with pytest.raises(DatabaseError):
                await run_transaction(
                    db, operation="misuse", work=two_at_once, organization_id=uuid.uuid4()
                )
        assert attempts == 1
        misuse = [r for r in caplog.records if getattr(r, "event", None) == "driver_misuse"]
        assert misuse and misuse[0].levelname == "ERROR"

    async def test_an_interface_error_on_a_closed_connection_is_a_lost_connection(
        self, database: Database
    ):
        conn = await asyncpg.connect(database.url)
        await conn.close()
        with pytest.raises(asyncpg.InterfaceError) as caught:
            await conn.fetchval("SELECT 1")
        assert classify(caught.value, conn) is Failure.LOST
        assert classify(caught.value) is Failure.MISUSE  # without a closed connection to show

    def test_a_connection_terminated_under_the_driver_is_lost_whatever_wraps_it(self):
        """What pg_terminate_backend looks like from asyncpg: a ConnectionDoesNotExistError
        caused by an AdminShutdownError caused by the socket's ConnectionResetError. The
        soak met it at COMMIT; it must be a lost connection, not an unknown exception."""
        try:
            try:
                try:
                    raise ConnectionResetError(104, "Connection reset by peer")
                except ConnectionResetError as reset:
                    raise asyncpg.AdminShutdownError("terminating connection") from reset
            except asyncpg.AdminShutdownError as shutdown:
                raise asyncpg.ConnectionDoesNotExistError("closed mid-operation") from shutdown
        except asyncpg.ConnectionDoesNotExistError as terminated:
            err = terminated
        assert is_database_error(err)
        assert classify(err) is Failure.LOST


class TestTheKeysShape:
    """looks_like_api_key answers before any database work: exactly the prefix and 43
    url-safe ASCII characters."""

    @pytest.mark.parametrize(
        ("key", "well_formed"),
        [
            ("ctk_" + "A" * 43, True),
            ("ctk_" + "-_aZ9" * 8 + "abc", True),
            ("ctk_" + "A" * 42, False),
            ("ctk_" + "A" * 44, False),
            ("ctk_" + "A" * 43 + "\n", False),
            ("ctk_" + "é" * 43, False),
            ("ctk_" + "\u0663" * 43, False),  # a digit, but not an ASCII one
            ("xtk_" + "A" * 43, False),
            ("", False),
        ],
    )
    def test_only_the_prefix_and_43_url_safe_characters(self, key: str, well_formed: bool):
        assert organization_service.looks_like_api_key(key) is well_formed


class TestARefusedKeyIsNotARefusedLogin:
    """careteam_enter refuses a key with its own SQLSTATE (CT007): PostgreSQL's 28000
    (no pg_hba.conf entry, an unknown role) is a misconfiguration, answered as a database
    error, never as a revoked key (401), and the key is not forgotten for it."""

    def translated(self, err: Exception, credential: Credential) -> Exception:
        return translate(
            err,
            classify(err),
            operation="test",
            organization_id=None,
            subject=NO_SUBJECT,
            credential=credential,
        )

    def test_a_refused_login_is_a_database_error(self):
        key_hash = hash_api_key("ctk_" + "C" * 43)
        found = KnownKey(uuid.uuid4(), uuid.uuid4(), Grants((FULL_ACCESS,)))
        credentials.remember(key_hash, found)
        credential = Credential(key_hash, found.api_key_id, found.organization_id)
        refused_login = asyncpg.InvalidAuthorizationSpecificationError("no pg_hba.conf entry")
        assert not isinstance(self.translated(refused_login, credential), ApiKeyNotLive)
        assert credentials.remembered(key_hash) == found
        not_live = asyncpg.PostgresError.new({"C": "CT007", "M": "not live"})
        assert isinstance(self.translated(not_live, credential), ApiKeyNotLive)
        assert credentials.remembered(key_hash) is None
