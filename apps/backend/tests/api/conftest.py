"""The real app, over httpx, on the test database. Each test makes its own tenants."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from src.api.app import create_app
from src.api.bulk_export import ExportRunner
from src.db import Database
from src.services.organization_service import OrganizationService
from tests.helpers import LiveApi, Tenant, TenantFactory, start_serve


@pytest.fixture(scope="session")
def app(database: Database) -> FastAPI:
    return create_app(database)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://careteam.test") as c:
        yield c


@pytest.fixture
def make_tenant(database: Database) -> TenantFactory:
    async def make() -> Tenant:
        async with AsyncSession(database.owner_engine) as owner:
            issued = await OrganizationService.create_organization(db=owner, name="API Clinic")
        return Tenant(issued.organization_id, issued.id, issued.key)

    return make


@pytest.fixture
async def tenant(make_tenant: TenantFactory) -> Tenant:
    return await make_tenant()


@pytest.fixture
async def runner(app: FastAPI, database: Database) -> AsyncIterator[ExportRunner]:
    """The app's runner, as `careteam serve` starts it (polling fast, for the tests)."""
    running = ExportRunner(database.sessionmaker, app.state.export_storage, workers=1, poll_s=0.05)
    app.state.export_runner = running
    running.start()
    yield running
    await running.stop()
    app.state.export_runner = None


@pytest.fixture(scope="module")
async def live_api(
    database: Database, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LiveApi]:
    """`careteam serve` in a subprocess on the test database, with a key of a new
    organization; stopped (Ctrl-C) at the end, which must print no traceback."""
    api = start_serve(
        {"DATABASE_URL": database_url},
        tmp_path_factory.mktemp("serve") / "serve.log",
        "--log-level",
        "warning",
    )
    api.key = await _issue_key(database)
    yield api
    output = api.stop()
    assert "Traceback" not in output, output


@pytest.fixture(scope="module")
async def live_org(live_api: LiveApi, database: Database) -> uuid.UUID:
    """The organization of the live server's key."""
    async with database.owner_engine.connect() as owner:
        org: uuid.UUID = (
            await owner.execute(
                text("SELECT organization_id FROM api_keys WHERE key_hash = :h"),
                {"h": hashlib.sha256(live_api.key.encode()).hexdigest()},
            )
        ).scalar_one()
    return org


async def _issue_key(database: Database) -> str:
    async with AsyncSession(database.owner_engine) as owner:
        issued = await OrganizationService.create_organization(db=owner, name="Live Clinic")
    return issued.key
