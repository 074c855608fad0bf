"""A connection lost during COMMIT: the outcome is unknown to the service, which must
check the data before it runs a write again (never a blind retry, never a duplicate).
A care team write is one statement sent alone, which commits as it ends: a connection
lost during that statement is the same case.

The fault is real: the application connects through a small TCP proxy in front of the
test server, which cuts the connection at the next COMMIT (or the next message holding
given bytes: a care team write's operation, a parameter of its statement), either after
passing it on and reading the server's answer (the server commits; the client never
hears so) or instead of passing it on (the server rolls back when the connection ends,
or never sees the statement).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import uuid
from collections.abc import AsyncIterator
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from src.api.app import create_app
from src.config import Settings
from src.db import Database, open_database, pg_error_fields
from src.services.care_team_service import WRITE
from src.services.care_team_service import CareTeamService as Service
from src.services.directory_service import DirectoryService
from src.services.errors import OutcomeUnknown, ProviderAlreadyPrimary, ProviderNotOnCareTeam
from src.services.organization_service import OrganizationService
from tests.helpers import create_clinic, event_types, team_rows, with_owner

# The simple-query message the service ends its transactions with.
COMMIT_MESSAGE = b"Q\x00\x00\x00\x0bCOMMIT\x00"
READY_FOR_QUERY = b"Z\x00\x00\x00\x05"  # the server's answer is complete


class CommitCutter:
    """TCP proxy to PostgreSQL that, once armed, cuts the connection at the next COMMIT."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        self.host = query.get("host", parts.hostname or "localhost")
        self.port = int(query.get("port", parts.port or 5432))
        self.mode: str | None = None  # "after" (server commits) or "instead" (it does not)
        self.at = COMMIT_MESSAGE  # the bytes that mark the message to cut at
        self.cuts = 0
        self.commits = 0  # COMMIT messages passed on
        self.server: asyncio.Server | None = None

    def arm(self, mode: str, at: bytes = COMMIT_MESSAGE) -> None:
        self.mode, self.at = mode, at

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.host.startswith("/"):
            return await asyncio.open_unix_connection(f"{self.host}/.s.PGSQL.{self.port}")
        return await asyncio.open_connection(self.host, self.port)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await self._upstream()

        async def to_client() -> None:
            while data := await server_r.read(65536):
                client_w.write(data)
                await client_w.drain()
            client_w.close()

        relay = asyncio.create_task(to_client())
        try:
            while data := await client_r.read(65536):
                if self.mode is not None and self.at in data:
                    await self._cut(data, relay, server_r, server_w)
                    break
                self.commits += data.count(COMMIT_MESSAGE)
                server_w.write(data)
                await server_w.drain()
        finally:
            relay.cancel()
            client_w.close()
            server_w.close()

    async def _cut(
        self,
        data: bytes,
        relay: asyncio.Task[None],
        server_r: asyncio.StreamReader,
        server_w: asyncio.StreamWriter,
    ) -> None:
        mode, self.mode = self.mode, None
        relay.cancel()  # nothing more reaches the client
        with contextlib.suppress(asyncio.CancelledError):
            await relay
        if mode == "after":
            server_w.write(data)
            await server_w.drain()
            answer = b""
            while READY_FOR_QUERY not in answer:  # the server's answer: it has committed
                answer += await server_r.read(65536)
        self.cuts += 1


def via(url: str, port: int) -> str:
    """`url` pointing at 127.0.0.1:`port` instead of its host (same user, database)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("host", "port")]
    user = parts.username or "postgres"
    userinfo = quote(user) + (f":{quote(parts.password)}" if parts.password else "")
    return urlunsplit(
        ("postgresql", f"{userinfo}@127.0.0.1:{port}", parts.path, urlencode(query), "")
    )


@pytest.fixture
async def cutter(database: Database) -> AsyncIterator[CommitCutter]:
    proxy = CommitCutter(database.url)
    yield proxy
    await proxy.stop()


@pytest.fixture
async def proxied(
    cutter: CommitCutter, settings: Settings, database: Database
) -> AsyncIterator[Database]:
    """Engines whose every connection goes through the cutter."""
    port = await cutter.start()
    db = with_owner(open_database(settings, via(database.url, port)))
    try:
        async with db.app_engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except DBAPIError as err:
        await db.dispose()
        if pg_error_fields(err)[0] not in ("28P01", "28000"):  # not an authentication failure
            raise
        pytest.skip(
            "the proxy's address does not match ~/.pgpass: give the password in "
            "TEST_DATABASE_URL to run this test"
        )
    yield db
    await db.dispose()


class TestCommitLost:
    async def test_after_the_server_committed_the_write_is_reported_done_once(
        self, proxied: Database, cutter: CommitCutter, caplog: pytest.LogCaptureFixture
    ):
        async with proxied.sessionmaker() as db:
            org, patient, (p1, _, _) = await create_clinic(db)
        cutter.arm("after", at=b"assign_primary")
        with caplog.at_level(logging.INFO):
            async with proxied.sessionmaker() as db:
                team = await Service.assign_primary_provider(
                    db=db, organization_id=org, patient_id=patient, provider_id=p1
                )
        assert cutter.cuts == 1
        assert team.primary_provider_id == p1 and team.changed is True
        # Sent again with its id, which careteam_write found on the events: nothing more.
        assert "assign_primary_provider failed (lost); retry" in caplog.text
        async with proxied.sessionmaker() as db:
            assert await team_rows(db, org, patient) == {p1: True}
            assert await event_types(db, org, patient) == ["primary_assigned"]

    async def test_a_removal_that_committed_is_not_reported_as_not_on_the_team(
        self, proxied: Database, cutter: CommitCutter
    ):
        """Run blindly again, the removal would fail with ProviderNotOnCareTeam although it
        succeeded: the service checks the team first."""
        async with proxied.sessionmaker() as db:
            org, patient, (p1, p2, _) = await create_clinic(db)
            await Service.assign_primary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=p1
            )
            await Service.add_secondary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=p2
            )
        cutter.arm("after", at=b"remove_member")
        async with proxied.sessionmaker() as db:
            team = await Service.remove_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=p2
            )
        assert cutter.cuts == 1
        assert [m.provider_id for m in team.members] == [p1]
        async with proxied.sessionmaker() as db:
            assert await event_types(db, org, patient) == [
                "primary_assigned",
                "secondary_added",
                "provider_removed",
            ]

    async def test_when_the_server_did_not_commit_the_write_runs_again_once(
        self, proxied: Database, cutter: CommitCutter, caplog: pytest.LogCaptureFixture
    ):
        async with proxied.sessionmaker() as db:
            org, patient, (p1, p2, _) = await create_clinic(db)
            await Service.assign_primary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=p1
            )
        cutter.arm("instead", at=b"assign_primary")
        with caplog.at_level(logging.INFO):
            async with proxied.sessionmaker() as db:
                team = await Service.assign_primary_provider(
                    db=db, organization_id=org, patient_id=patient, provider_id=p2
                )
        assert cutter.cuts == 1
        assert team.primary_provider_id == p2
        assert "committed before the connection was lost" not in caplog.text
        async with proxied.sessionmaker() as db:
            assert await team_rows(db, org, patient) == {p1: False, p2: True}
            assert await event_types(db, org, patient) == [
                "primary_assigned",
                "primary_demoted",
                "primary_assigned",
            ]

    async def test_a_write_lost_before_it_ran_is_run_again_and_answered_as_it_runs(
        self, proxied: Database, cutter: CommitCutter, caplog: pytest.LogCaptureFixture
    ):
        """A write sent alone may be lost before PostgreSQL ran it, when the team already
        looks as it would after it: the provider to remove was never on the team, the
        secondary to add is the primary. Whether this write committed is looked up by
        its id on the events, never guessed from the team: it runs again, and is
        answered with the refusal it gets."""
        async with proxied.sessionmaker() as db:
            org, patient, (p1, p2, _) = await create_clinic(db)
            await Service.assign_primary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=p1
            )
        cutter.arm("instead", at=b"remove_member")
        with caplog.at_level(logging.INFO):
            async with proxied.sessionmaker() as db:
                with pytest.raises(ProviderNotOnCareTeam):
                    await Service.remove_provider(
                        db=db, organization_id=org, patient_id=patient, provider_id=p2
                    )
            assert cutter.cuts == 1
            cutter.arm("instead", at=b"add_secondary")
            async with proxied.sessionmaker() as db:
                with pytest.raises(ProviderAlreadyPrimary):
                    await Service.add_secondary_provider(
                        db=db, organization_id=org, patient_id=patient, provider_id=p1
                    )
            assert cutter.cuts == 2
            # Ran and committed, but changed nothing (no event): it runs again, harmlessly.
            cutter.arm("after", at=b"assign_primary")
            async with proxied.sessionmaker() as db:
                team = await Service.assign_primary_provider(
                    db=db, organization_id=org, patient_id=patient, provider_id=p1
                )
            assert cutter.cuts == 3 and team.changed is False
        assert "committed before the connection was lost" not in caplog.text
        async with proxied.sessionmaker() as db:
            assert await team_rows(db, org, patient) == {p1: True}
            assert await event_types(db, org, patient) == ["primary_assigned"]

    async def test_a_create_whose_commit_is_lost_reports_outcome_unknown(
        self, proxied: Database, cutter: CommitCutter
    ):
        """A new patient's id is unknown until COMMIT answers: it cannot be checked, so
        the caller is told, rather than risking a duplicate patient."""
        async with proxied.sessionmaker() as db:
            org, _, _ = await create_clinic(db)
        cutter.arm("after")
        last_name = f"Lost-{uuid.uuid4().hex[:8]}"
        async with proxied.sessionmaker() as db:
            with pytest.raises(OutcomeUnknown):
                await DirectoryService.create_patient(
                    db=db,
                    organization_id=org,
                    first_name="Pat",
                    last_name=last_name,
                    dob=datetime.date(1980, 1, 1),
                )
        async with proxied.owner_engine.connect() as owner:
            created = (
                await owner.execute(
                    text("SELECT count(*) FROM patients WHERE last_name = :n"), {"n": last_name}
                )
            ).scalar_one()
        assert created == 1  # committed once, never twice


class TestALateAttemptChangesNothing:
    """An attempt the application lost may run on the server after the attempt that
    replaced it: careteam_write finds its write id on the events, under the patient's
    lock, and changes nothing more."""

    async def test_the_same_write_id_twice_writes_once(self, database: Database):
        async with database.sessionmaker() as db:
            org, patient, (p1, p2, _) = await create_clinic(db)
            await Service.assign_primary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=p1
            )
            await Service.add_secondary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=p2
            )
        write_id = uuid.uuid4()
        statement = WRITE.text
        args = ["remove_member", org, patient, p2, "late", "other", None, None, None, write_id]
        args += [None, None]  # no Idempotency-Key
        async with database.sessionmaker() as db:
            driver = (await (await db.connection()).get_raw_connection()).driver_connection
            first = await driver.fetch(statement, *args)
            again = await driver.fetch(statement, *args)  # would be CT005: not on the team
            assert [r["provider_id"] for r in again] == [r["provider_id"] for r in first] == [p1]
            assert again[0]["changed"] is True
            assign = ["assign_primary", *args[1:3], p2, *args[4:9], write_id, None, None]
            unchanged = await driver.fetch(statement, *assign)  # same id: nothing more
            assert unchanged[0]["provider_id"] == p1
        async with database.sessionmaker() as db:
            assert await team_rows(db, org, patient) == {p1: True}
            assert await event_types(db, org, patient) == [
                "primary_assigned",
                "secondary_added",
                "provider_removed",
            ]


class TestACareTeamWriteIsOneStatement:
    """A write is careteam_change_team sent alone: its implicit transaction commits where
    the statement ends, with no COMMIT (no round trip) under the organization's event
    counter, with or without an Idempotency-Key (the key is claimed and the result
    stored inside the statement: one write path)."""

    async def test_no_commit_is_sent_with_or_without_a_key(
        self, proxied: Database, cutter: CommitCutter
    ):
        async with proxied.sessionmaker() as db:
            org, patient, (p1, p2, p3) = await create_clinic(db)
        async with AsyncSession(proxied.owner_engine) as owner:
            issued = await OrganizationService.create_api_key(db=owner, organization_id=org)
        before = cutter.commits
        async with proxied.sessionmaker() as db:
            await Service.assign_primary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=p1
            )
            await Service.add_secondary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=p2
            )
            team = await Service.remove_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=p2
            )
        assert cutter.commits == before
        assert [m.provider_id for m in team.members] == [p1]

        headers = {"Authorization": f"Bearer {issued.key}", "Idempotency-Key": "assign-p3"}
        transport = httpx.ASGITransport(app=create_app(proxied))
        async with httpx.AsyncClient(transport=transport, base_url="http://careteam.test") as c:
            url = f"/v1/patients/{patient}/care-team/primary"
            answer = await c.put(url, json={"provider_id": str(p3)}, headers=headers)
            assert answer.status_code == 200, answer.text
            assert cutter.commits == before
            again = await c.put(url, json={"provider_id": str(p3)}, headers=headers)
            assert again.headers["idempotent-replayed"] == "true"
            assert again.content == answer.content
        async with proxied.sessionmaker() as db:
            assert await team_rows(db, org, patient) == {p1: False, p3: True}


class TestAnIdempotencyKeySettlesALostCommit:
    """With an Idempotency-Key, the key row commits with the change: a lost COMMIT is
    settled by reading it, so a create is answered (never outcome_unknown) and made once."""

    async def test_a_create_whose_commit_is_lost_is_answered_and_made_once(
        self, proxied: Database, cutter: CommitCutter
    ):
        async with proxied.sessionmaker() as db:
            org, _, _ = await create_clinic(db)
        async with AsyncSession(proxied.owner_engine) as owner:
            issued = await OrganizationService.create_api_key(db=owner, organization_id=org)
        last_name = f"Lost-{uuid.uuid4().hex[:8]}"
        body = {"first_name": "Pat", "last_name": last_name, "dob": "1980-01-01"}
        headers = {"Authorization": f"Bearer {issued.key}", "Idempotency-Key": "create-once"}
        transport = httpx.ASGITransport(app=create_app(proxied))
        async with httpx.AsyncClient(transport=transport, base_url="http://careteam.test") as c:
            cutter.arm("after")
            first = await c.post("/v1/patients", json=body, headers=headers)
            assert cutter.cuts == 1
            assert first.status_code == 201, first.text  # settled by the key
            retried = await c.post("/v1/patients", json=body, headers=headers)
            assert retried.status_code == 201
            assert retried.json() == first.json()
            assert retried.headers["idempotent-replayed"] == "true"
        async with proxied.owner_engine.connect() as owner:
            created = (
                await owner.execute(
                    text("SELECT count(*) FROM patients WHERE last_name = :n"), {"n": last_name}
                )
            ).scalar_one()
        assert created == 1
