"""FHIR Bulk Data export (Bulk Data Access IG v2.0.0): kick-off, status, manifest, files and
DELETE, as the IG's sections define them, against the real app and a runner of its own;
every exported line parsed with the fhir.resources R4B models."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from src.api import bulk_export
from src.api.bulk_export import ExportRunner, run_export
from src.api.fhir_resources import SUBSETTED
from src.config import get_settings
from src.db import Database
from src.services.bulk_export import BulkExportService, ExportJobRecord, unkept_job
from src.services.export_storage import SYNC_EVERY, DirectoryStorage
from src.services.organization_service import OrganizationService
from tests.api.test_fhir import FHIR, MODELS, team_of
from tests.helpers import (
    Tenant,
    TenantFactory,
    assign,
    ec_key,
    jwks_of,
    post_patient,
    post_provider,
    register_client,
    request_token,
)

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


def ndjson_files(directory: Path) -> dict[str, bytes]:
    """Every NDJSON file under `directory`: its name and bytes."""
    return {path.name: path.read_bytes() for path in directory.rglob("*.ndjson")}


async def export_every_type(
    database: Database,
    tenant: Tenant,
    directory: Path,
    *,
    job: ExportJobRecord | None = None,
    lanes: int = 3,
) -> tuple[datetime.datetime, list[dict[str, Any]], list[dict[str, Any]]]:
    """The tenant's whole-organization export of every type (`job`: one run before, run
    again), run here into `directory`, outside export_jobs: no heartbeat."""
    job = job or dataclasses.replace(tenant_job(tenant, "Patient"), types=bulk_export.TYPES)
    return await run_export(
        database.sessionmaker, DirectoryStorage(directory), job, heartbeat_s=None, lanes=lanes
    )


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
            assert r.headers["content-type"] == "application/json"
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


async def many_patients(database: Database, org: uuid.UUID, count: int) -> None:
    """`count` more patients in the organization, written in one statement as the owner
    (an export of them takes seconds)."""
    async with database.owner_engine.begin() as owner:
        await owner.execute(
            text(
                "INSERT INTO patients (organization_id, first_name, last_name) "
                "SELECT :org, 'P', g::text FROM generate_series(1, :n) g"
            ),
            {"org": org, "n": count},
        )


async def export_entries(
    database: Database, org: uuid.UUID, patient: str | None = None
) -> list[Any]:
    """The access log's export entries of `org` (route, parameters, patient_ids), those
    naming `patient` when it is given."""
    naming = "" if patient is None else " AND CAST(:patient AS uuid) = ANY (patient_ids)"
    async with database.owner_engine.connect() as owner:
        rows = await owner.execute(
            text(
                "SELECT route, parameters, patient_ids FROM access_log "
                f"WHERE organization_id = :org AND route LIKE '%$export'{naming}"
            ),
            {"org": org} if patient is None else {"org": org, "patient": patient},
        )
        return list(rows.all())


def tenant_job(tenant: Tenant, kind: str) -> ExportJobRecord:
    """An export of `kind` as the tenant's key asks it, run outside export_jobs."""
    return unkept_job(
        organization_id=tenant.organization_id,
        requester=f"api_key:{tenant.api_key_id}",
        request="test",
        types=(kind,),
    )


async def until_running(http: httpx.AsyncClient, status_url: str, headers: dict[str, str]) -> None:
    """Poll the status URL until the job is claimed (X-Progress no longer `queued`); it
    must not finish first (the test would then prove nothing)."""
    for _ in range(2000):
        r = await http.get(status_url, headers=headers)
        assert r.status_code == 202, "the export finished before the test could act"
        if r.headers["x-progress"] != "queued":
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the export was never claimed")


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
        # The doctor's Group changed (a new member): whole in a system-level export, as
        # the FHIR read answers it (only a Group-level export lists the changed members).
        (group,) = files["Group"]
        assert group["id"] == made["doctor"]
        members = sorted(m["entity"]["reference"] for m in group["member"])
        assert members == sorted(f"Patient/{p}" for p in [*made["patients"][:3], changed])
        assert group["quantity"] == 4
        read = await client.get(f"{FHIR}/Group/{made['doctor']}", headers=tenant.headers)
        assert read.json() == group

    async def test_a_group_export_since_lists_the_members_that_changed_marked_subsetted(
        self, client: httpx.AsyncClient, tenant: Tenant, runner: ExportRunner
    ):
        made = await a_population(client, tenant)
        doctor, patients = made["doctor"], made["patients"]
        path = f"/Group/{doctor}/$export"
        first = await finished(client, tenant, await kick_off(client, tenant, path))
        (whole,) = (await download(client, tenant, first))["Group"]
        assert "tag" not in whole["meta"]
        assert len(whole["member"]) == 3
        await team_of(client, tenant, patients[4], doctor)  # a new member
        await assign(client, tenant, patients[0], made["other"])  # an attribution ended
        second = await finished(
            client,
            tenant,
            await kick_off(client, tenant, path, _type="Group", _since=first["transactionTime"]),
        )
        (group,) = (await download(client, tenant, second))["Group"]
        members = {m["entity"]["reference"].removeprefix("Patient/"): m for m in group["member"]}
        assert set(members) == {patients[0], patients[4]}
        assert members[patients[0]]["inactive"] is True
        assert members[patients[4]]["inactive"] is False
        assert group["quantity"] == 3  # the panel now, whatever the members listed
        assert group["meta"]["tag"] == [SUBSETTED]
        read = (await client.get(f"{FHIR}/Group/{doctor}", headers=tenant.headers)).json()
        assert group["meta"]["versionId"] == read["meta"]["versionId"]
        assert len(read["member"]) == 4 and "tag" not in read["meta"]


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
            ({"_typeFilter": "Patient?name=%FF"}, 400),
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
            "filter-not-utf8",
        ],
    )
    async def test_a_parameter_we_do_not_support_is_400(
        self, client: httpx.AsyncClient, tenant: Tenant, params: dict[str, str], status: int
    ):
        r = await client.get(f"{FHIR}/$export", params=params, headers={**tenant.headers, **ASYNC})
        assert r.status_code == status, r.text
        assert r.json()["resourceType"] == "OperationOutcome"

    async def test_an_unknown_type_filter_parameter_offers_no_leniency(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """$export ignores nothing, even under Prefer: handling=lenient: its refusal does
        not send the client to a Prefer that would change nothing (a FHIR search's does)."""
        prefer = {**tenant.headers, **ASYNC, "Prefer": "respond-async, handling=lenient"}
        r = await client.get(
            f"{FHIR}/$export", params={"_typeFilter": "Patient?nonsense=1"}, headers=prefer
        )
        assert r.status_code == 400, r.text
        diagnostics = r.json()["issue"][0]["diagnostics"]
        assert "nonsense" in diagnostics and "lenient" not in diagnostics

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


class TestReviewFindings:
    """Each a defect a hostile review found; each test fails without its fix."""

    async def test_a_change_held_back_by_an_open_transaction_is_said_not_hidden(
        self, client: httpx.AsyncClient, tenant: Tenant, runner: ExportRunner, database: Database
    ):
        """A transaction open before a change holds the transaction time back, so the
        change is not in this export: the manifest says so (a notice in `error`)."""
        patient = await post_patient(client, tenant)
        async with database.app_engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            await driver.execute("BEGIN")
            await driver.execute("SELECT 1")  # open, as any long reader's
            await asyncio.sleep(0.02)
            r = await client.patch(
                f"/v1/patients/{patient}", json={"last_name": "Changed"}, headers=tenant.headers
            )
            assert r.status_code == 200
            manifest = await finished(
                client, tenant, await kick_off(client, tenant, _type="Patient")
            )
            await driver.execute("ROLLBACK")
        assert manifest["output"] == []  # the only Patient changed after transactionTime
        (notice,) = manifest["error"]
        assert notice["type"] == "OperationOutcome" and notice["count"] == 1
        r = await client.get(
            notice["url"].removeprefix("http://careteam.test"), headers=tenant.headers
        )
        (outcome,) = [json.loads(line) for line in r.text.splitlines()]
        MODELS["OperationOutcome"].model_validate(outcome)
        assert "1 Patient resource(s) changed after" in outcome["issue"][0]["diagnostics"]

    async def test_another_exports_snapshot_does_not_hold_the_time_back(
        self, client: httpx.AsyncClient, tenant: Tenant, runner: ExportRunner, database: Database
    ):
        patient = await post_patient(client, tenant)
        async with database.app_engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            await driver.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            await driver.execute("SET LOCAL application_name = 'careteam-export-snapshot'")
            await asyncio.sleep(0.02)
            r = await client.patch(
                f"/v1/patients/{patient}", json={"last_name": "Changed"}, headers=tenant.headers
            )
            assert r.status_code == 200
            manifest = await finished(
                client, tenant, await kick_off(client, tenant, _type="Patient")
            )
            await driver.execute("ROLLBACK")
        assert [o["count"] for o in manifest["output"]] == [1]
        assert manifest["error"] == []

    async def test_type_filter_is_a_comma_separated_list_of_queries(
        self, client: httpx.AsyncClient, tenant: Tenant, runner: ExportRunner
    ):
        made = await a_population(client, tenant)
        first, second = made["patients"][:2]
        manifest = await finished(
            client,
            tenant,
            await kick_off(
                client,
                tenant,
                _type="Patient,CareTeam",
                _typeFilter=f"Patient?_id={first},CareTeam?_id={second}",
            ),
        )
        files = await download(client, tenant, manifest)
        assert [r["id"] for r in files["Patient"]] == [first]
        assert [r["id"] for r in files["CareTeam"]] == [second]

    async def test_head_starts_no_export(self, client: httpx.AsyncClient, tenant: Tenant):
        for _ in range(3):
            r = await client.head(f"{FHIR}/$export", headers={**tenant.headers, **ASYNC})
            assert r.status_code == 405
        await kick_off(client, tenant)  # not refused as a third one (429)
        await kick_off(client, tenant)

    @pytest.mark.parametrize(
        "since",
        ["9999-12-31T23:59:59-05:00", "9999-12-31T23:59:59.999999Z", "2999-01-01T00:00:00Z"],
        ids=["past-9999", "end-of-9999", "future"],
    )
    async def test_since_out_of_range_or_in_the_future_is_400(
        self, client: httpx.AsyncClient, tenant: Tenant, since: str
    ):
        r = await client.get(
            f"{FHIR}/$export", params={"_since": since}, headers={**tenant.headers, **ASYNC}
        )
        assert r.status_code == 400, r.text
        assert r.json()["resourceType"] == "OperationOutcome"

    async def test_the_manifest_is_json_and_lists_no_empty_type(
        self, client: httpx.AsyncClient, tenant: Tenant, runner: ExportRunner
    ):
        await post_patient(client, tenant)
        status_url = await kick_off(client, tenant)
        manifest = await finished(client, tenant, status_url)
        r = await client.get(status_url, headers=tenant.headers)
        assert r.headers["content-type"] == "application/json"
        assert {o["type"] for o in manifest["output"]} == {"Organization", "Patient"}
        assert all(o["count"] > 0 for o in manifest["output"])

    async def test_a_retried_attempt_logs_its_own_patients(
        self, client: httpx.AsyncClient, tenant: Tenant, app: FastAPI, database: Database
    ):
        """Attempt 2 of a job holds a patient attempt 1 did not: it is in the log."""
        await post_patient(client, tenant)
        status_url = await kick_off(client, tenant, _type="Patient")
        job = await BulkExportService.find(
            db=AsyncSession(database.app_engine),
            organization_id=tenant.organization_id,
            job_id=uuid.UUID(status_url.rsplit("/", 1)[1]),
        )
        assert job is not None
        storage = app.state.export_storage
        await run_export(database.sessionmaker, storage, job, heartbeat_s=None)
        late = await post_patient(client, tenant)
        retried = dataclasses.replace(job, attempts=job.attempts + 1)
        await run_export(database.sessionmaker, storage, retried, heartbeat_s=None)
        assert len(await export_entries(database, tenant.organization_id, late)) == 1

    async def test_a_pages_entry_names_the_parameters_that_shaped_the_export(
        self, client: httpx.AsyncClient, tenant: Tenant, runner: ExportRunner, database: Database
    ):
        """They all said `_type` alone: an export narrowed by _since or _typeFilter could
        not be told from a whole one in the log."""
        patient = await post_patient(client, tenant)
        status_url = await kick_off(
            client,
            tenant,
            _type="Patient",
            _since="2000-01-01T00:00:00Z",
            _typeFilter="Patient?name=Alice",
        )
        await finished(client, tenant, status_url)
        (entry,) = await export_entries(database, tenant.organization_id, patient)
        assert entry.route == "GET /fhir/R4/$export"
        assert entry.parameters == ["_since", "_type", "_typeFilter"]

    async def test_a_name_beyond_latin_1_in_the_kick_off_is_recorded_as_unknown(
        self, client: httpx.AsyncClient, tenant: Tenant, app: FastAPI, database: Database
    ):
        """A kick-off's query as the server kept it (decoded): a name beyond Latin-1 made
        the page's entry raise UnicodeEncodeError, the export failing (found by a
        review; uvicorn refuses such a request, another ASGI server may not)."""
        patient = await post_patient(client, tenant)
        job = dataclasses.replace(
            tenant_job(tenant, "Patient"),
            request="http://careteam.test/fhir/R4/$export?_type=Patient&\u20ac=1",
        )
        await run_export(database.sessionmaker, app.state.export_storage, job, heartbeat_s=None)
        (entry,) = await export_entries(database, tenant.organization_id, patient)
        assert entry.parameters == ["?", "_type"]

    @pytest.mark.parametrize(
        ("path", "params", "once"),
        [
            ("/$export", {}, True),
            ("/Patient/$export", {}, True),
            ("/Group/{doctor}/$export", {}, True),
            ("/$export", {"_type": "CareTeam,Group"}, False),
            ("/$export", {"_typeFilter": "Patient?gender=female"}, False),
            ("/$export", {"_since": "2000-01-01T00:00:00Z"}, False),
        ],
        ids=["system", "patient", "group", "no-patients", "patients-filtered", "since"],
    )
    async def test_the_log_names_every_patient_the_files_hold(
        self,
        *,
        client: httpx.AsyncClient,
        tenant: Tenant,
        runner: ExportRunner,
        database: Database,
        path: str,
        params: dict[str, str],
        once: bool,
    ):
        """Whatever the kick-off, the patients its entries name are those its files hold;
        when the Patient file holds every patient (`once`), the CareTeam and Group pages
        are not recorded again, and each patient is named once."""
        made = await a_population(client, tenant)
        await team_of(client, tenant, made["patients"][0], made["other"])  # an ended period
        status_url = await kick_off(client, tenant, path.format(**made), **params)
        found = await download(client, tenant, await finished(client, tenant, status_url))
        held = {r["id"] for r in found.get("Patient", [])}
        held |= {
            r["subject"]["reference"].removeprefix("Patient/") for r in found.get("CareTeam", [])
        }
        held |= {
            m["entity"]["reference"].removeprefix("Patient/")
            for r in found.get("Group", [])
            for m in r.get("member", [])
        }
        assert held
        entries = await export_entries(database, tenant.organization_id)
        named = [str(p) for entry in entries for p in entry.patient_ids]
        assert set(named) == held
        assert (len(named) == len(held)) is once

    async def test_a_patient_left_out_of_the_patient_file_is_logged_where_named(
        self, client: httpx.AsyncClient, tenant: Tenant, runner: ExportRunner, database: Database
    ):
        """A Patient changed after the transaction time is left out of the Patient file
        (and of its entries), while its CareTeam and its Group membership, not changed
        since, are written: those pages went unrecorded, the patient in the files and not
        in the log (found by a review)."""
        doctor = await post_provider(client, tenant)
        patient = await post_patient(client, tenant)
        await team_of(client, tenant, patient, doctor)
        async with database.app_engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            await driver.execute("BEGIN")
            await driver.execute("SELECT 1")  # holds the transaction time back
            await asyncio.sleep(0.02)
            r = await client.patch(
                f"/v1/patients/{patient}", json={"last_name": "Changed"}, headers=tenant.headers
            )
            assert r.status_code == 200
            manifest = await finished(client, tenant, await kick_off(client, tenant))
            await driver.execute("ROLLBACK")
        found = await download(client, tenant, manifest)
        assert patient not in {r["id"] for r in found.get("Patient", [])}
        (team,) = found["CareTeam"]
        assert team["subject"]["reference"] == f"Patient/{patient}"
        entries = await export_entries(database, tenant.organization_id, patient)
        assert len(entries) == 2  # its CareTeam's page and its Group's

    async def test_every_lane_reads_the_snapshot_of_the_export(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ):
        """The types are read at once, each lane in a transaction of its own: every one
        reads the export's snapshot, so a patient created once the export has begun is
        in none of them (each lane counts the patients it sees)."""
        await post_patient(client, tenant)
        created: list[str] = []
        seen: dict[str, int] = {}
        scans = bulk_export._scans

        async def scans_after_a_patient_is_created(driver: Any, job: ExportJobRecord) -> None:
            if not created:  # the first transaction's, before the lanes start
                created.append(await post_patient(client, tenant))
            await scans(driver, job)

        async def count(self: Any, driver: Any, kind: str) -> None:
            self.written[kind] = self.later[kind] = 0
            seen[kind] = await driver.fetchval("SELECT count(*) FROM patients")

        monkeypatch.setattr(bulk_export, "_scans", scans_after_a_patient_is_created)
        monkeypatch.setattr(bulk_export._Export, "copy", count)
        await export_every_type(database, tenant, tmp_path)
        assert created
        assert seen == dict.fromkeys(bulk_export.TYPES, 1)

    async def test_no_lane_writes_a_patient_the_log_has_not_recorded(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ):
        """The CareTeam and Group lanes leave the recording of their patients to the
        Patients' lane: they wait for it before writing a block. With the Patients' lane
        slow, then failing (a resource it cannot build), the other files name no patient
        the log lacks (they named every one, unrecorded, where `careteam export` leaves
        them: found by a review)."""
        made = await a_population(client, tenant)
        async with database.owner_engine.begin() as owner:
            await owner.execute(
                text(
                    "INSERT INTO patients (organization_id, first_name, created_at) "
                    "VALUES (:org, 'Inf', '-infinity')"
                ),
                {"org": tenant.organization_id},
            )
        copy = bulk_export._Export.copy

        async def patients_last(self: Any, driver: Any, kind: str) -> None:
            if kind == "Patient":
                await asyncio.sleep(1)  # the other lanes have read their types by then
            await copy(self, driver, kind)

        monkeypatch.setattr(bulk_export._Export, "copy", patients_last)
        with pytest.raises(bulk_export.Unbuildable):
            await export_every_type(database, tenant, tmp_path)
        written = b"".join(ndjson_files(tmp_path).values())
        named = set(re.findall(rb'"Patient/([0-9a-f-]{36})"', written))
        named |= set(re.findall(rb'"resourceType":"Patient","id":"([0-9a-f-]{36})"', written))
        entries = await export_entries(database, tenant.organization_id)
        recorded = {str(p).encode() for e in entries for p in e.patient_ids}
        assert named <= recorded
        assert made["patients"]  # they have CareTeams and Group memberships to write

    async def test_a_lanes_failure_is_the_exports_with_its_cause(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ):
        """One lane failing stops the others, and the export fails with that lane's
        error, not a group of them, and with its cause (the database's error, for the
        log: it was dropped, found by a review)."""
        await post_patient(client, tenant)
        copy = bulk_export._Export.copy

        async def care_teams_fail(self: Any, driver: Any, kind: str) -> None:
            if kind == "CareTeam":
                raise RuntimeError("the lane failed") from ValueError("its cause")
            await copy(self, driver, kind)

        monkeypatch.setattr(bulk_export._Export, "copy", care_teams_fail)
        with pytest.raises(RuntimeError, match="the lane failed") as failed:
            await export_every_type(database, tenant, tmp_path)
        assert isinstance(failed.value.__cause__, ValueError)

    async def test_any_number_of_lanes_writes_the_same_files_and_entries(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database, tmp_path: Path
    ):
        """EXPORT_LANES changes how many connections read, never what is written: the
        same lines in each file, and the same patients named in the access log."""
        made = await a_population(client, tenant)
        await team_of(client, tenant, made["patients"][0], made["other"])  # an ended period
        job = dataclasses.replace(tenant_job(tenant, "Patient"), types=bulk_export.TYPES)
        written, named = {}, {}
        for lanes in (1, 2, 3):
            directory = tmp_path / str(lanes)
            done = await export_every_type(database, tenant, directory, job=job, lanes=lanes)
            written[lanes] = (done[1], ndjson_files(directory))
            entries = await export_entries(database, tenant.organization_id)
            named[lanes] = sorted(str(p) for e in entries for p in e.patient_ids)
        assert written[1] == written[2] == written[3]
        assert sum(len(body) for body in written[1][1].values()) > 0
        # Each run records its own entries (the job's attempt, the same ids: once).
        assert named[1] == named[2] == named[3]
        assert len(named[1]) == len(made["patients"])

    async def test_delete_stops_a_running_export_and_its_files_stay_gone(
        self, client: httpx.AsyncClient, tenant: Tenant, runner: ExportRunner, database: Database
    ):
        await many_patients(database, tenant.organization_id, 20000)
        status_url = await kick_off(client, tenant, _type="Patient")
        await until_running(client, status_url, tenant.headers)
        assert (await client.delete(status_url, headers=tenant.headers)).status_code == 202
        job_dir = (
            Path(get_settings().export_directory)
            / str(tenant.organization_id)
            / status_url.rsplit("/", 1)[1]
        )
        await asyncio.sleep(3)  # past the next heartbeat (every second) and the page after
        assert not job_dir.exists()

    async def test_delete_stops_a_copy_that_has_not_sent_a_row_yet(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        runner: ExportRunner,
        database: Database,
        monkeypatch: pytest.MonkeyPatch,
    ):
        """A type's COPY that takes long before its first row (a sort, a heavy
        _typeFilter; here a minute's sleep before it) is cancelled once the heartbeat
        finds the job deleted: it used to run on until its first block, with no
        statement timeout (found by a review)."""
        await post_patient(client, tenant)
        statement = bulk_export.statement

        def slow(job: ExportJobRecord, kind: str, until: datetime.datetime) -> Any:
            text, args = statement(job, kind, until)
            # At the start of its text: pg_stat_activity shows the first kilobyte.
            return f"SELECT r.* FROM (SELECT pg_sleep(60)) AS slow, ({text}) AS r", args

        monkeypatch.setattr(bulk_export, "statement", slow)
        status_url = await kick_off(client, tenant, _type="Patient")
        await until_running(client, status_url, tenant.headers)

        async def sleeping() -> int:
            async with database.owner_engine.connect() as owner:
                found = await owner.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                        "AND query LIKE '%pg_sleep(60)%' AND pid <> pg_backend_pid()"
                    )
                )
                return int(found.scalar_one())

        for _ in range(100):
            if await sleeping() == 1:  # its COPY is running
                break
            await asyncio.sleep(0.1)
        assert await sleeping() == 1
        assert (await client.delete(status_url, headers=tenant.headers)).status_code == 202
        for _ in range(100):  # the heartbeat beats every second; the sleep is a minute
            if await sleeping() == 0:
                break
            await asyncio.sleep(0.1)
        assert await sleeping() == 0

    async def test_a_file_needs_the_read_scope_of_its_type(
        self, client: httpx.AsyncClient, tenant: Tenant, runner: ExportRunner, database: Database
    ):
        """The same SMART client, with a token that no longer holds system/Patient.r: its
        export's Patient file is 403, as GET /Patient would be."""
        await post_patient(client, tenant)
        key = ec_key()
        client_id = await register_client(
            database, tenant.organization_id, ["system/*.rs"], jwks=jwks_of(key)
        )
        full = await request_token(client, key, client_id, "system/*.rs")
        bearer = {"Authorization": f"Bearer {full['access_token']}"}
        r = await client.get(
            f"{FHIR}/$export", params={"_type": "Organization,Patient"}, headers={**bearer, **ASYNC}
        )
        assert r.status_code == 202, r.text
        status_url = r.headers["content-location"].removeprefix("http://careteam.test")
        as_tenant = Tenant(tenant.organization_id, tenant.api_key_id, full["access_token"])
        manifest = await finished(client, as_tenant, status_url)
        narrow = await request_token(client, key, client_id, "system/Organization.r")
        headers = {"Authorization": f"Bearer {narrow['access_token']}"}
        urls = {
            o["type"]: o["url"].removeprefix("http://careteam.test") for o in manifest["output"]
        }
        r = await client.get(urls["Patient"], headers=headers)
        assert r.status_code == 403
        assert 'scope="system/Patient.r"' in r.headers["www-authenticate"]
        assert (await client.get(urls["Organization"], headers=headers)).status_code == 200


class TestAfterTheReviewNits:
    async def test_prefer_in_any_header_and_with_parameters(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        headers = [
            ("Authorization", f"Bearer {tenant.key}"),
            ("Prefer", "handling=strict"),
            ("Prefer", "respond-async; wait=10"),
        ]
        r = await client.get(f"{FHIR}/$export", headers=headers)
        assert r.status_code == 202, r.text

    async def test_an_expired_or_misspelled_job_is_404_at_once(
        self, client: httpx.AsyncClient, tenant: Tenant, runner: ExportRunner, database: Database
    ):
        await post_patient(client, tenant)
        status_url = await kick_off(client, tenant, _type="Patient")
        manifest = await finished(client, tenant, status_url)
        job_id = status_url.rsplit("/", 1)[1]
        upper = status_url.replace(job_id, job_id.upper())
        assert (await client.get(upper, headers=tenant.headers)).status_code == 404
        r = await client.delete(status_url, params={"x": "1"}, headers=tenant.headers)
        assert r.status_code == 400
        async with database.owner_engine.begin() as owner:
            await owner.execute(
                text(
                    "UPDATE export_jobs SET expires_at = now() - interval '1 second' WHERE id = :id"
                ),
                {"id": uuid.UUID(job_id)},
            )
        assert (await client.get(status_url, headers=tenant.headers)).status_code == 404
        url = manifest["output"][0]["url"].removeprefix("http://careteam.test")
        assert (await client.get(url, headers=tenant.headers)).status_code == 404

    async def test_a_graceful_stop_puts_the_job_back_uncounted(
        self, client: httpx.AsyncClient, tenant: Tenant, app: FastAPI, database: Database
    ):
        await many_patients(database, tenant.organization_id, 20000)
        running = ExportRunner(
            database.sessionmaker, app.state.export_storage, workers=1, poll_s=0.05
        )
        running.start()
        try:
            status_url = await kick_off(client, tenant, _type="Patient")
            await until_running(client, status_url, tenant.headers)
        finally:
            await running.stop()
        async with database.owner_engine.connect() as owner:
            row = (
                await owner.execute(
                    text("SELECT status, attempts FROM export_jobs WHERE id = :id"),
                    {"id": uuid.UUID(status_url.rsplit("/", 1)[1])},
                )
            ).one()
        assert (row.status, row.attempts) == ("queued", 0)


class TestNoValueEchoed:
    @pytest.mark.parametrize(
        "params",
        [
            {"_type": "Garcia"},
            {"_since": "Garcia"},
            {"_outputFormat": "Garcia"},
            {"_typeFilter": "Observation?name=Garcia"},
            {"_typeFilter": "Garcia"},
        ],
        ids=["type", "since", "format", "filter-type", "filter-form"],
    )
    async def test_a_refusal_describes_the_value_never_repeats_it(
        self, client: httpx.AsyncClient, tenant: Tenant, params: dict[str, str]
    ):
        """A value may be a patient's name: docs/FHIR.md, diagnostics are described."""
        r = await client.get(f"{FHIR}/$export", params=params, headers={**tenant.headers, **ASYNC})
        assert r.status_code == 400, r.text
        assert "Garcia" not in r.text


class TestFilesOnDisk:
    def test_a_file_is_synced_as_it_is_written_and_when_closed(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ):
        """Every SYNC_EVERY bytes and on close: the kernel's bursts of write-back held the
        database's commits on the same disk (the writers' stall at 1,000,000 patients)."""
        synced: list[int] = []
        real = os.fdatasync

        def fdatasync(fd: int) -> None:
            synced.append(os.fstat(fd).st_size)
            real(fd)

        monkeypatch.setattr(os, "fdatasync", fdatasync)
        org, job = uuid.uuid4(), uuid.uuid4()
        storage = DirectoryStorage(tmp_path)
        writer = storage.writer(org, job, "Patient-1.ndjson")
        half = b"x" * (SYNC_EVERY // 2)
        for _ in range(5):
            writer.write(half)
        assert synced == [SYNC_EVERY, 2 * SYNC_EVERY]  # the half after them waits
        assert writer.close() == 5 * len(half)
        assert synced == [SYNC_EVERY, 2 * SYNC_EVERY, 5 * len(half)]
