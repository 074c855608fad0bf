"""Test fixtures: a real PostgreSQL, never a mock.

The suite starts its own throwaway embedded server (deleted at exit), unless
TEST_DATABASE_URL names a server to use instead. Either way it creates a fresh database
for the run, migrates it to head once, and drops it at the end.

The suite runs in parallel (pytest-xdist, `-n auto` in pyproject.toml; `-n0` runs it in
one process). Each worker is a pytest session of its own, so each has its own embedded
server and database (or its own database on TEST_DATABASE_URL's server); tests marked
`alone` (the benchmarks and the soak, which measure throughput) run while no other test
does.

`db` is a session as the application role (RLS applies), on the production path:
service methods own their transactions and commit for real; each test makes its own
organization, which isolates it from the others.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Generator, Iterator
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


# Workers of `-n auto`: one per core this process may use, at most 4 (each has its own
# connection pools, all on one server when TEST_DATABASE_URL is given).
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own: the number given there
    if hasattr(os, "sched_getaffinity"):  # Linux: the cores this process may run on
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    return min(cores, MAX_WORKERS)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> Generator[None, object, object]:
    """Under xdist, a test marked `alone` runs while no other test does: it holds the
    run's test lock exclusively, every other test holds it shared, each for its whole run,
    the setup and teardown of the fixtures it brings up included (the conformance run is
    a module fixture's). A test about to take it exclusively holds the turnstile, which
    the others pass through first: a stream of them cannot keep it waiting."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return (yield)
    # xdist gives each worker a basetemp of its own in the run's: their locks are there.
    run_dir = Path(item.config.option.basetemp).parent
    alone = item.get_closest_marker("alone") is not None
    with (
        (run_dir / "careteam-turnstile.lock").open("a") as turnstile,
        (run_dir / "careteam-tests.lock").open("a") as tests,
    ):
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        if not alone:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        fcntl.flock(tests, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        try:
            return (yield)
        finally:
            fcntl.flock(tests, fcntl.LOCK_UN)
            if alone:
                fcntl.flock(turnstile, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def _request_ids_in_captured_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Captured records carry the request id, as the production handler adds it."""
    caplog.handler.addFilter(RequestIdFilter())


@pytest.fixture(scope="session")
def test_server() -> Iterator[TestServer]:
    """The embedded server of this run (of this worker, in a parallel run), or
    TEST_DATABASE_URL's server.

    On a given server, each worker of a parallel run has an application role of its own
    (APP_DB_ROLE + the worker's id), left on the server like the role of a serial run:
    roles belong to the whole server, and two workers' migrations creating or altering
    one role at once would fail ("tuple concurrently updated")."""
    given = os.environ.get("TEST_DATABASE_URL", "").strip()
    if not given:
        data_dir = Path(tempfile.mkdtemp(prefix="careteam-test-"))
        yield TestServer(start_embedded_server(data_dir, delete_on_exit=True))
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        yield TestServer(to_libpq_url(given))
        return
    previous = os.environ.get("APP_DB_ROLE")
    os.environ["APP_DB_ROLE"] = f"{get_settings().app_db_role}_{worker}"
    get_settings.cache_clear()
    yield TestServer(to_libpq_url(given))
    if previous is None:
        os.environ.pop("APP_DB_ROLE", None)
    else:
        os.environ["APP_DB_ROLE"] = previous
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def database_url(test_server: TestServer) -> Iterator[str]:
    """A fresh database for this run; DATABASE_URL points at it for code under test."""
    url = test_server.create_database()
    previous = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = url
    # Bulk Data export files of this run (every server it starts shares them, as the
    # processes of one deployment share EXPORT_DIR).
    os.environ["EXPORT_DIR"] = tempfile.mkdtemp(prefix="careteam-exports-")
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
