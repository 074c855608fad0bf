"""FHIR Bulk Data export (Bulk Data Access IG v2.0.0): kick-off, status, manifest, files and
DELETE, as the IG's sections define them, against the real app and a runner of its own;
every exported line parsed with the fhir.resources R4B models."""

from __future__ import annotations

import asyncio
import datetime
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession

from src.api.bulk_export import ExportRunner
from src.db import Database
from src.services.organization_service import OrganizationService
from tests.api.test_fhir import FHIR, MODELS, team_of
from tests.helpers import Tenant, TenantFactory, post_patient, post_provider

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


@pytest.fixture
async def runner(app: FastAPI, database: Database) -> AsyncIterator[ExportRunner]:
    """The app's runner, as `careteam serve` starts it (polling fast, for the tests)."""
    running = ExportRunner(database.sessionmaker, app.state.export_storage, workers=1, poll_s=0.05)
    app.state.export_runner = running
    running.start()
    yield running
    await running.stop()
    app.state.export_runner = None


async def kick_off(
    client: httpx.AsyncClient, tenant: Tenant, path: str = "/$export", **params: Any
) -> str:
    r = await client.get(FHIR + path, params=params, headers={**tenant.headers, **ASYNC})
    assert r.status_code == 202, r.text
    location = r.headers["content-location"]
    assert location.startswith(f"http://careteam.test{FHIR}/$export-status/")
    return location.removeprefix("http://careteam.test")


async def finished(client: httpx.AsyncClient, tenant: Tenant, status_url: str) -> dict[str, Any]:
    """Poll the status URL as the IG says (202 with X-Progress and Retry-After) until 200."""
    for _ in range(400):
        r = await client.get(status_url, headers=tenant.headers)
        if r.status_code == 200:
            assert r.headers["content-type"].startswith("application/json") or r.headers[
                "content-type"
            ].startswith("application/fhir+json")
            assert "expires" in r.headers
            manifest: dict[str, Any] = r.json()
            return manifest
        assert r.status_code == 202, r.text
        assert r.headers["x-progress"]
        assert int(r.headers["retry-after"]) > 0
        await asyncio.sleep(0.05)
    raise AssertionError("the export did not finish")


async def download(
    client: httpx.AsyncClient, tenant: Tenant, manifest: dict[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    """Every file of the manifest, each line parsed as its R4B model; by type."""
    found: dict[str, list[dict[str, Any]]] = {}
    for item in manifest["output"]:
        r = await client.get(
            item["url"].removeprefix("http://careteam.test"), headers=tenant.headers
        )
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/fhir+ndjson")
        lines = r.text.splitlines()
        assert len(lines) == item["count"]
        resources = [json.loads(line) for line in lines]
        for resource in resources:
            assert resource["resourceType"] == item["type"]
            MODELS[item["type"]].model_validate(resource)
        found.setdefault(item["type"], []).extend(resources)
    return found


async def a_population(client: httpx.AsyncClient, tenant: Tenant) -> dict[str, Any]:
    doctor, other = await post_provider(client, tenant), await post_provider(client, tenant)
    patients = [await post_patient(client, tenant, first_name=f"P{n}") for n in range(5)]
    for patient in patients[:3]:
        await team_of(client, tenant, patient, doctor, other)
    await team_of(client, tenant, patients[3], other)
    return {"doctor": doctor, "other": other, "patients": patients}


class TestTheFlow:
    async def test_system_export_kick_off_poll_manifest_files(
        self, client: httpx.AsyncClient, tenant: Tenant, runner: ExportRunner
    ):
        made = await a_population(client, tenant)
        before = datetime.datetime.now(datetime.UTC)
        status_url = await kick_off(client, tenant)
        manifest = await finished(client, tenant, status_url)
        assert manifest["requiresAccessToken"] is True
        assert manifest["error"] == []
        assert manifest["request"].endswith(f"{FHIR}/$export")
        at = datetime.datetime.fromisoformat(manifest["transactionTime"].replace("Z", "+00:00"))
        assert at <= datetime.datetime.now(datetime.UTC)
        assert at >= before - datetime.timedelta(seconds=5)
        files = await download(client, tenant, manifest)
        assert sorted(r["id"] for r in files["Patient"]) == sorted(made["patients"])
        assert sorted(r["id"] for r in files["Practitioner"]) == sorted(
            [made["doctor"], made["other"]]
        )
        assert sorted(r["id"] for r in files["CareTeam"]) == sorted(made["patients"][:4])
        assert [r["id"] for r in files["Organization"]] == [str(tenant.organization_id)]
        groups = {r["id"]: r for r in files["Group"]}
        assert set(groups) == {made["doctor"], made["other"]}
        members = sorted(m["entity"]["reference"] for m in groups[made["doctor"]]["member"])
        assert members == sorted(f"Patient/{p}" for p in made["patients"][:3])

    async def test_the_same_resources_the_fhir_api_serves(
        self, client: httpx.AsyncClient, tenant: Tenant, runner: ExportRunner
    ):
        made = await a_population(client, tenant)
        files = await download(
            client, tenant, await finished(client, tenant, await kick_off(client, tenant))
        )
        for kind in ("Patient", "CareTeam", "Practitioner", "Group"):
            for resource in files[kind]:
                r = await client.get(f"{FHIR}/{kind}/{resource['id']}", headers=tenant.headers)
                assert r.json() == resource
        assert made

    async def test_type_and_type_filter(
        self, client: httpx.AsyncClient, tenant: Tenant, runner: ExportRunner
    ):
        made = await a_population(client, tenant)
        status_url = await kick_off(
            client,
            tenant,
            _type="Patient,CareTeam",
            _typeFilter=f"CareTeam?participant={made['doctor']}",
        )
        manifest = await finished(client, tenant, status_url)
        assert [o["type"] for o in manifest["output"]] == ["Patient", "CareTeam"]
        files = await download(client, tenant, manifest)
        assert sorted(r["id"] for r in files["CareTeam"]) == sorted(made["patients"][:3])
        assert len(files["Patient"]) == 5

    async def test_group_export_holds_its_members(
        self, client: httpx.AsyncClient, tenant: Tenant, runner: ExportRunner
    ):
        made = await a_population(client, tenant)
        status_url = await kick_off(client, tenant, f"/Group/{made['doctor']}/$export")
        files = await download(client, tenant, await finished(client, tenant, status_url))
        assert [r["id"] for r in files["Group"]] == [made["doctor"]]
        assert sorted(r["id"] for r in files["Patient"]) == sorted(made["patients"][:3])
        assert sorted(r["id"] for r in files["CareTeam"]) == sorted(made["patients"][:3])
        assert sorted(r["id"] for r in files["Practitioner"]) == sorted(
            [made["doctor"], made["other"]]
        )

    async def test_delete_cancels_and_removes_the_files(
        self, client: httpx.AsyncClient, tenant: Tenant, runner: ExportRunner
    ):
        await a_population(client, tenant)
        status_url = await kick_off(client, tenant)
        manifest = await finished(client, tenant, status_url)
        r = await client.delete(status_url, headers=tenant.headers)
        assert r.status_code == 202
        assert (await client.get(status_url, headers=tenant.headers)).status_code == 404
        url = manifest["output"][0]["url"].removeprefix("http://careteam.test")
        assert (await client.get(url, headers=tenant.headers)).status_code == 404


class TestSince:
    async def test_since_the_last_transaction_time_gives_the_changes_in_between(
        self, client: httpx.AsyncClient, tenant: Tenant, runner: ExportRunner
    ):
        made = await a_population(client, tenant)
        first = await finished(client, tenant, await kick_off(client, tenant))
        changed = made["patients"][4]
        await team_of(client, tenant, changed, made["doctor"])
        second = await finished(
            client, tenant, await kick_off(client, tenant, _since=first["transactionTime"])
        )
        files = await download(client, tenant, second)
        assert [r["id"] for r in files.get("Patient", [])] == [changed]
        assert [r["id"] for r in files.get("CareTeam", [])] == [changed]
        assert files.get("Organization", []) == []
        # The doctor's Group, with the one member whose attribution changed since.
        (group,) = files["Group"]
        assert group["id"] == made["doctor"]
        assert [m["entity"]["reference"] for m in group["member"]] == [f"Patient/{changed}"]
        assert group["quantity"] == 4  # the panel's size now, all members counted


class TestRefusals:
    @pytest.mark.parametrize(
        ("params", "status"),
        [
            ({"_type": "Observation"}, 400),
            ({"_outputFormat": "application/json"}, 400),
            ({"_since": "2026-12-01"}, 400),
            ({"_elements": "id"}, 400),
            ({"patient": "Patient/1"}, 400),
            ({"_typeFilter": "Patient?_count=5"}, 400),
            ({"_typeFilter": "Patient?nonsense=1"}, 400),
            ({"_typeFilter": "Observation?code=1"}, 400),
        ],
        ids=[
            "type",
            "format",
            "since-date",
            "elements",
            "patient",
            "filter-count",
            "filter-param",
            "filter-type",
        ],
    )
    async def test_a_parameter_we_do_not_support_is_400(
        self, client: httpx.AsyncClient, tenant: Tenant, params: dict[str, str], status: int
    ):
        r = await client.get(f"{FHIR}/$export", params=params, headers={**tenant.headers, **ASYNC})
        assert r.status_code == status, r.text
        assert r.json()["resourceType"] == "OperationOutcome"

    async def test_without_respond_async_400(self, client: httpx.AsyncClient, tenant: Tenant):
        r = await client.get(f"{FHIR}/$export", headers=tenant.headers)
        assert r.status_code == 400
        assert "respond-async" in r.text

    async def test_without_a_token_401(self, client: httpx.AsyncClient):
        r = await client.get(f"{FHIR}/$export", headers=ASYNC)
        assert r.status_code == 401

    async def test_another_organizations_job_and_files_are_404(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        make_tenant: TenantFactory,
        runner: ExportRunner,
    ):
        await a_population(client, tenant)
        status_url = await kick_off(client, tenant)
        manifest = await finished(client, tenant, status_url)
        other = await make_tenant()
        assert (await client.get(status_url, headers=other.headers)).status_code == 404
        assert (await client.delete(status_url, headers=other.headers)).status_code == 404
        for item in manifest["output"]:
            url = item["url"].removeprefix("http://careteam.test")
            assert (await client.get(url, headers=other.headers)).status_code == 404
        assert (await client.get(status_url, headers=tenant.headers)).status_code == 200

    async def test_another_key_of_the_same_organization_is_404(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database, runner: ExportRunner
    ):
        status_url = await kick_off(client, tenant)
        await finished(client, tenant, status_url)
        async with AsyncSession(database.owner_engine) as owner:
            issued = await OrganizationService.create_api_key(
                db=owner, organization_id=tenant.organization_id
            )
        headers = {"Authorization": f"Bearer {issued.key}"}
        assert (await client.get(status_url, headers=headers)).status_code == 404

    async def test_a_group_of_another_organization_is_404(
        self, client: httpx.AsyncClient, tenant: Tenant, make_tenant: TenantFactory
    ):
        other = await make_tenant()
        theirs = await post_provider(client, other)
        r = await client.get(f"{FHIR}/Group/{theirs}/$export", headers={**tenant.headers, **ASYNC})
        assert r.status_code == 404

    async def test_the_scope_of_every_type_is_needed(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        async with AsyncSession(database.owner_engine) as owner:
            issued = await OrganizationService.create_api_key(
                db=owner,
                organization_id=tenant.organization_id,
                scopes=["system/Patient.rs", "system/CareTeam.rs"],
            )
        headers = {"Authorization": f"Bearer {issued.key}", **ASYNC}
        r = await client.get(f"{FHIR}/$export", headers=headers)
        assert r.status_code == 403
        assert 'scope="system/Organization.r"' in r.headers["www-authenticate"]
        r = await client.get(
            f"{FHIR}/$export", params={"_type": "Patient,CareTeam"}, headers=headers
        )
        assert r.status_code == 202

    async def test_at_most_n_at_once_per_organization(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        # No runner: the jobs stay queued.
        for _ in range(2):
            await kick_off(client, tenant)
        r = await client.get(f"{FHIR}/$export", headers={**tenant.headers, **ASYNC})
        assert r.status_code == 429
        assert r.headers["retry-after"]
        assert uuid


def instant(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


class TestSinceUnderConcurrentWrites:
    async def test_chained_exports_miss_nothing_and_repeat_nothing(
        self, client: httpx.AsyncClient, tenant: Tenant, runner: ExportRunner
    ):
        """Writers change primaries and names throughout the first export and after it;
        the second export (_since = the first's transactionTime) then holds exactly the
        changes in between: the first updated by the second is the database's state (a
        third export, once the writers stopped), and no version is in both."""
        doctors = [await post_provider(client, tenant) for _ in range(3)]
        patients = [await post_patient(client, tenant, first_name=f"W{n}") for n in range(40)]
        stop = asyncio.Event()
        writes = 0

        async def writer(seed: int) -> None:
            nonlocal writes
            n = seed
            while not stop.is_set():
                patient = patients[n % len(patients)]
                if n % 3:
                    r = await client.put(
                        f"/v1/patients/{patient}/care-team/primary",
                        json={"provider_id": doctors[n % len(doctors)]},
                        headers=tenant.headers,
                    )
                else:
                    r = await client.patch(
                        f"/v1/patients/{patient}",
                        json={"last_name": f"Name{n}"},
                        headers=tenant.headers,
                    )
                assert r.status_code == 200, r.text
                writes += 1
                n += 7

        tasks = [asyncio.create_task(writer(seed)) for seed in range(3)]
        try:
            await asyncio.sleep(0.2)
            first = await finished(
                client, tenant, await kick_off(client, tenant, _type="Patient,CareTeam")
            )
            await asyncio.sleep(0.3)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        assert writes > 20
        second = await finished(
            client,
            tenant,
            await kick_off(
                client, tenant, _type="Patient,CareTeam", _since=first["transactionTime"]
            ),
        )
        third = await finished(
            client, tenant, await kick_off(client, tenant, _type="Patient,CareTeam")
        )
        t1, t2 = instant(first["transactionTime"]), instant(second["transactionTime"])
        one, two, now = (
            await download(client, tenant, first),
            await download(client, tenant, second),
            await download(client, tenant, third),
        )
        for kind in ("Patient", "CareTeam"):
            for resource in one.get(kind, []):
                assert instant(resource["meta"]["lastUpdated"]) <= t1
            for resource in two.get(kind, []):
                assert t1 < instant(resource["meta"]["lastUpdated"]) <= t2
            merged = {r["id"]: r for r in one.get(kind, [])}
            versions = {(r["id"], r["meta"]["versionId"]) for r in one.get(kind, [])}
            for resource in two.get(kind, []):
                assert (resource["id"], resource["meta"]["versionId"]) not in versions
                merged[resource["id"]] = resource
            assert merged == {r["id"]: r for r in now.get(kind, [])}, kind
        assert two.get("Patient"), "no change fell between the two exports: nothing was tested"

    async def test_a_change_begun_before_the_export_and_committed_after_comes_next_time(
        self, client: httpx.AsyncClient, tenant: Tenant, runner: ExportRunner, database: Database
    ):
        """A write's changes carry its transaction's start: one that began before the
        export and commits after its snapshot is not in the export, and must be in the next
        one with _since = this one's transactionTime (a transaction time read at the
        snapshot would be later than that change's time, and the change lost for good)."""
        doctor = await post_provider(client, tenant)
        patient = await post_patient(client, tenant)
        async with database.app_engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            await driver.execute("BEGIN")
            await driver.execute(
                "SELECT set_config('app.current_organization_id', $1, true)",
                str(tenant.organization_id),
            )
            await driver.execute(
                "SELECT careteam_assign_primary($1, $2, $3, 'test', 'other', NULL)",
                tenant.organization_id,
                uuid.UUID(patient),
                uuid.UUID(doctor),
            )
            await asyncio.sleep(0.05)
            first = await finished(
                client, tenant, await kick_off(client, tenant, _type="Patient,CareTeam")
            )
            await driver.execute("COMMIT")
        one = await download(client, tenant, first)
        assert one.get("CareTeam", []) == []  # not committed when the snapshot was taken
        second = await finished(
            client,
            tenant,
            await kick_off(
                client, tenant, _type="Patient,CareTeam", _since=first["transactionTime"]
            ),
        )
        two = await download(client, tenant, second)
        assert [r["id"] for r in two.get("CareTeam", [])] == [patient]
        assert [r["id"] for r in two.get("Patient", [])] == [patient]
