"""Test fixtures: a real PostgreSQL, never a mock.

The suite starts its own throwaway embedded server (deleted at exit), unless
TEST_DATABASE_URL names a server to use instead. Either way it creates a fresh database
for the run, migrates it to head once, and drops it at the end.

`db` is a session as the application role (RLS applies), on the production path:
service methods own their transactions and commit for real; each test makes its own
organization, which isolates it from the others.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from src.config import Settings, get_settings, to_libpq_url
from src.db import Database, create_engine, open_database
from src.embedded import ensure_database, run_blocking, start_embedded_server, with_database
from src.log_config import RequestIdFilter
from src.migration_runner import upgrade
from tests.helpers import FreshDatabase, with_owner


class TestServer:
    """A PostgreSQL server the tests may create and drop databases on."""

    __test__ = False

    def __init__(self, url: str) -> None:
        self.url = url  # libpq URL of the maintenance database

    def create_database(self) -> str:
        name = f"careteam_test_{uuid.uuid4().hex[:12]}"
        run_blocking(ensure_database(self.url, name))
        return with_database(self.url, name)

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")

        async def drop() -> None:
            conn = await asyncpg.connect(self.url)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()

        run_blocking(drop())


@pytest.fixture(autouse=True)
def _request_ids_in_captured_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Captured records carry the request id, as the production handler adds it."""
    caplog.handler.addFilter(RequestIdFilter())


@pytest.fixture(scope="session")
def test_server() -> TestServer:
    given = os.environ.get("TEST_DATABASE_URL", "").strip()
    if given:
        return TestServer(to_libpq_url(given))
    data_dir = Path(tempfile.mkdtemp(prefix="careteam-test-"))
    return TestServer(start_embedded_server(data_dir, delete_on_exit=True))


@pytest.fixture(scope="session")
def database_url(test_server: TestServer) -> Iterator[str]:
    """A fresh database for this run; DATABASE_URL points at it for code under test."""
    url = test_server.create_database()
    previous = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = url
    get_settings.cache_clear()
    yield url
    if previous is None:
        os.environ.pop("DATABASE_URL", None)
    else:
        os.environ["DATABASE_URL"] = previous
    get_settings.cache_clear()
    test_server.drop_database(url)


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
async def database(settings: Settings, database_url: str) -> AsyncIterator[Database]:
    """Engines on the test database, migrated to head once per run."""
    db = with_owner(open_database(settings, database_url))
    await upgrade(db.owner_engine)
    yield db
    await db.dispose()


@pytest.fixture
async def db(database: Database) -> AsyncIterator[AsyncSession]:
    """An application-role session, as a request has one: every commit is real, as in
    production. Tests are isolated by organization (each makes its own; all data is
    tenant-scoped), never by a transaction wrapped around them."""
    async with database.sessionmaker() as session:
        yield session


@pytest.fixture
async def fresh_database(
    test_server: TestServer, settings: Settings
) -> AsyncIterator[FreshDatabase]:
    """A new, empty database of its own, for tests that migrate up and down."""
    url = test_server.create_database()
    engine = create_engine(url, settings)
    yield FreshDatabase(url, engine)
    await engine.dispose()
    test_server.drop_database(url)
