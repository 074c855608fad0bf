"""`kill -9` of the server in the middle of a Bulk Data export, then a restart: the job
is started again and completes (or, after three attempts, fails with an OperationOutcome);
it is never left "in progress" for ever. A module of its own: no other server of the
test database runs exports meanwhile."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from src.db import Database
from src.services.organization_service import OrganizationService
from tests.api.test_bulk_data import ASYNC, many_patients, until_running
from tests.helpers import start_serve

PATIENTS = 30_000
FHIR = "/fhir/R4"
STALE_S = "2"


async def big_organization(database: Database) -> tuple[uuid.UUID, str]:
    """An organization of PATIENTS patients (an export that takes seconds), and its key."""
    async with AsyncSession(database.owner_engine) as owner:
        issued = await OrganizationService.create_organization(db=owner, name="Big Clinic")
    await many_patients(database, issued.organization_id, PATIENTS)
    return issued.organization_id, issued.key


@pytest.mark.slow
async def test_a_job_killed_mid_export_is_started_again_after_a_restart(
    database: Database, database_url: str, tmp_path: Path
):
    org, key = await big_organization(database)
    env = {"DATABASE_URL": database_url, "EXPORT_STALE_AFTER_S": STALE_S}
    bearer = {"Authorization": f"Bearer {key}"}
    server = start_serve(env, tmp_path / "first.log", "--log-level", "warning")
    try:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            kick = await http.get(
                f"{FHIR}/Patient/$export", params={"_type": "Patient"}, headers={**bearer, **ASYNC}
            )
            assert kick.status_code == 202, kick.text
            path = kick.headers["content-location"].removeprefix(server.base_url)
            await until_running(http, path, bearer)
    finally:
        server.process.kill()  # SIGKILL: no shutdown at all
        server.process.wait(timeout=30)

    async with database.owner_engine.connect() as owner:
        state = (
            await owner.execute(
                text("SELECT status, attempts FROM export_jobs WHERE organization_id = :org"),
                {"org": org},
            )
        ).one()
    assert (state.status, state.attempts) == ("running", 1)  # as the kill left it

    again = start_serve(env, tmp_path / "second.log", "--log-level", "warning")
    try:
        async with httpx.AsyncClient(base_url=again.base_url, timeout=30) as http:
            deadline = time.monotonic() + 120
            while (polled := await http.get(path, headers=bearer)).status_code == 202:
                assert time.monotonic() < deadline, polled.headers
                await asyncio.sleep(0.2)
            assert polled.status_code == 200, polled.text
            manifest = polled.json()
            assert [(o["type"], o["count"]) for o in manifest["output"]] == [("Patient", PATIENTS)]
            got = await http.get(manifest["output"][0]["url"], headers=bearer)
            assert got.status_code == 200 and got.text.count("\n") == PATIENTS
    finally:
        output = again.stop()
    assert "Traceback" not in output, output
    async with database.owner_engine.connect() as owner:
        attempts = (
            await owner.execute(
                text("SELECT attempts FROM export_jobs WHERE organization_id = :org"), {"org": org}
            )
        ).scalar_one()
    assert attempts == 2  # started over once, after the kill
