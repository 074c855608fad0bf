"""A bulk export's lines (built by PostgreSQL, src/api/export_resources.py) are the FHIR
API's resources (built in Python, src/api/fhir_resources.py): the same elements, values
and order, for every shape a resource can take. Each line is compared with the read of
its resource, as text of the parsed JSON (so key order counts), and the population is
checked to hold every shape, so that a shape the builders treat apart cannot go
unexported here."""

from __future__ import annotations

import dataclasses
import datetime
import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import text

from src.api import bulk_export
from src.api.bulk_export import FILTERABLE, ExportRunner, Unbuildable, run_export, statement
from src.db import Database
from src.services.bulk_export import ExportJobRecord
from src.services.export_storage import DirectoryStorage
from src.services.fhir_search import PARAMETERS, Param
from src.services.transaction import run_transaction
from tests.api.test_bulk_data import (
    download,
    export_entries,
    finished,
    kick_off,
    ndjson_files,
    tenant_job,
)
from tests.api.test_fhir import FHIR, team_of
from tests.helpers import Tenant, post_patient, post_provider

# Text that JSON escapes, or that SQL quoting could break; the API refuses control
# characters in a name, which older data may hold all the same (written by the owner).
ODD = 'Zoë "Q" O\'Brien \\ 🩺'
CONTROL = "tab\there\nnew line\x01"


async def owner_sql(database: Database, statement: str, **params: Any) -> None:
    async with database.owner_engine.begin() as owner:
        await owner.execute(text(statement), params)


async def a_population_of_every_shape(
    client: httpx.AsyncClient, tenant: Tenant, database: Database
) -> dict[str, str]:
    org = tenant.organization_id
    made: dict[str, str] = {}
    made["doctor"] = await post_provider(client, tenant, npi="1234567893", first_name=ODD)
    made["plain"] = await post_provider(client, tenant)  # no NPI
    made["idle"] = await post_provider(client, tenant, last_name="Idle")  # no member
    made["gone"] = await post_provider(client, tenant)
    made["full"] = await post_patient(
        client,
        tenant,
        last_name=ODD,
        gender="female",
        identifiers=[
            {"system": "urn:example:mrn", "value": "B-2"},
            {"system": "urn:example:mrn", "value": "A-1"},
            {"system": "urn:example:aa", "value": ODD},
        ],
    )
    made["history"] = await post_patient(client, tenant, first_name="Hist")
    made["alone"] = await post_patient(client, tenant, first_name="Alone")
    await team_of(client, tenant, made["full"], made["doctor"], made["plain"])
    # An ended primary period with one provider, then another primary.
    await team_of(client, tenant, made["history"], made["gone"])
    await team_of(client, tenant, made["history"], made["doctor"])
    r = await client.patch(
        f"/v1/providers/{made['gone']}", json={"active": False}, headers=tenant.headers
    )
    assert r.status_code == 200, r.text
    r = await client.patch(
        f"/v1/patients/{made['alone']}", json={"last_name": "Renamed"}, headers=tenant.headers
    )
    assert r.status_code == 200, r.text
    # Shapes the API does not make: no names, empty names, no birth date, an identifier
    # without a name, a provider with no name; and an instant of whole seconds.
    shapes = {
        "nameless": ("NULL", "NULL", "NULL"),
        "empty": ("''", "''", "'2001-01-01'"),
        "given_only": (":control", "NULL", "NULL"),
    }
    for name, (first, last, dob) in shapes.items():
        ident = uuid.uuid4()
        await owner_sql(
            database,
            "INSERT INTO patients (id, organization_id, first_name, last_name, dob) "
            f"VALUES (:id, :org, {first}, {last}, {dob})",
            id=ident,
            org=org,
            **({"control": CONTROL} if name == "given_only" else {}),
        )
        made[name] = str(ident)
    await owner_sql(
        database,
        "INSERT INTO patient_identifiers (organization_id, system, value, patient_id) "
        "VALUES (:org, 'urn:example:mrn', 'NONAME-1', :id)",
        org=org,
        id=uuid.UUID(made["nameless"]),
    )
    await owner_sql(
        database,
        "UPDATE patients SET created_at = date_trunc('second', created_at) WHERE id = :id",
        id=uuid.UUID(made["empty"]),
    )
    made["anonymous"] = str(uuid.uuid4())
    await owner_sql(
        database,
        "INSERT INTO providers (id, organization_id, first_name, last_name, npi) "
        "VALUES (:id, :org, NULL, NULL, NULL)",
        id=uuid.UUID(made["anonymous"]),
        org=org,
    )
    return made


def as_text(resource: dict[str, Any]) -> str:
    return json.dumps(resource, ensure_ascii=False)


class TestTheSameResourcesAsTheApi:
    async def test_every_line_is_the_read_of_its_resource(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        runner: ExportRunner,
    ):
        made = await a_population_of_every_shape(client, tenant, database)
        manifest = await finished(client, tenant, await kick_off(client, tenant))
        files = await download(client, tenant, manifest)
        assert set(files) == {"Organization", "Practitioner", "Patient", "CareTeam", "Group"}
        compared = 0
        for kind, resources in files.items():
            for resource in resources:
                r = await client.get(f"{FHIR}/{kind}/{resource['id']}", headers=tenant.headers)
                assert r.status_code == 200, r.text
                assert as_text(resource) == as_text(r.json())
                compared += 1
        assert compared == 1 + 5 + 6 + 2 + 4

        patients = {p["id"]: p for p in files["Patient"]}
        assert "name" not in patients[made["nameless"]]
        assert "profile" not in patients[made["nameless"]]["meta"]  # an identifier, no name
        assert "name" not in patients[made["empty"]]
        assert patients[made["given_only"]]["name"] == [{"use": "official", "given": [CONTROL]}]
        assert "birthDate" not in patients[made["given_only"]]
        assert "generalPractitioner" not in patients[made["alone"]]
        full = patients[made["full"]]
        assert full["meta"]["profile"]
        assert full["name"][0]["family"] == ODD
        assert [i["value"] for i in full["identifier"]] == [ODD, "A-1", "B-2"]
        assert patients[made["alone"]]["meta"]["versionId"] == "2.0"
        assert "." not in patients[made["empty"]]["meta"]["lastUpdated"]
        assert "." in full["meta"]["lastUpdated"]

        practitioners = {p["id"]: p for p in files["Practitioner"]}
        assert practitioners[made["gone"]]["active"] is False
        assert "identifier" not in practitioners[made["plain"]]
        assert "name" not in practitioners[made["anonymous"]]
        assert practitioners[made["doctor"]]["name"][0]["given"] == [ODD]

        teams = {t["id"]: t for t in files["CareTeam"]}
        roles = [p["role"][0]["coding"][0]["code"] for p in teams[made["full"]]["participant"]]
        assert len(set(roles)) == 2  # a primary and a secondary
        ended = [p for p in teams[made["history"]]["participant"] if "end" in p["period"]]
        assert ended

        groups = {g["id"]: g for g in files["Group"]}
        assert made["gone"] not in groups  # an inactive provider has none
        assert "member" not in groups[made["idle"]]
        assert groups[made["idle"]]["quantity"] == 0
        assert "identifier" not in groups[made["anonymous"]]
        assert (
            groups[made["anonymous"]]["name"]
            == f"Attributed patients of Practitioner/{made['anonymous']}"
        )
        doctor = groups[made["doctor"]]
        assert doctor["quantity"] == 2
        assert doctor["identifier"][0]["value"] == "1234567893"

    async def test_each_line_is_one_resource_of_valid_json(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        runner: ExportRunner,
    ):
        """Text JSON escapes (a newline, a tab, a quote, a backslash) never splits a line."""
        await a_population_of_every_shape(client, tenant, database)
        manifest = await finished(client, tenant, await kick_off(client, tenant, _type="Patient"))
        (item,) = manifest["output"]
        r = await client.get(
            item["url"].removeprefix("http://careteam.test"), headers=tenant.headers
        )
        body = r.content
        assert body.endswith(b"\n")
        lines = body.split(b"\n")[:-1]
        assert len(lines) == item["count"] == 6
        assert [json.loads(line)["resourceType"] for line in lines] == ["Patient"] * 6


def a_value(kind: str, param: Param, made: dict[str, str]) -> str:
    """A value of `param` that some of a_population_of_every_shape's resources match."""
    if param.type == "reference":
        return f"{param.holds}/{made['doctor' if param.holds == 'Practitioner' else 'full']}"
    if param.type == "date":
        return "ge2000-01-01"
    if param.type == "string":
        return "z"  # Zoë, accents ignored
    return {
        "_id": made["full"] if kind in ("Patient", "CareTeam") else made["doctor"],
        "identifier": "urn:example:mrn|A-1" if kind == "Patient" else "1234567893",
        "gender": "female",
        "active": "true",
        "status": "active",
    }[param.name]


FILTERS = [
    (kind, name, modifier)
    for kind in FILTERABLE
    for name in PARAMETERS[kind]
    for modifier in ("", ":missing")
]


class TestTypeFilterIsTheSearch:
    async def test_each_parameter_selects_what_the_fhir_search_finds(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        """Every search parameter of every _typeFilter type, with and without :missing,
        selects in the export's statement exactly what the FHIR search answers."""
        made = await a_population_of_every_shape(client, tenant, database)
        until = datetime.datetime.now(datetime.UTC)
        checked = matched = 0
        for kind, name, modifier in FILTERS:
            param = PARAMETERS[kind][name]
            value = "true" if modifier else a_value(kind, param, made)
            query = f"{name}{modifier}={quote(value)}"
            r = await client.get(f"{FHIR}/{kind}?{query}&_count=100", headers=tenant.headers)
            if modifier and r.status_code == 400:
                continue  # a parameter that takes no :missing (the search says so)
            assert r.status_code == 200, (kind, query, r.text)
            searched = {e["resource"]["id"] for e in r.json().get("entry", [])}
            job = dataclasses.replace(tenant_job(tenant, kind), type_filters=[f"{kind}?{query}"])

            async def work(driver: Any, job: ExportJobRecord = job) -> set[str]:
                text, args = statement(job, job.types[0], until)
                return {json.loads(line)["id"] for (line,) in await driver.fetch(text, *args)}

            async with database.sessionmaker() as db:
                exported = await run_transaction(
                    db, operation="test", organization_id=tenant.organization_id, work=work
                )
            assert exported == searched, (kind, query)
            checked += 1
            matched += bool(searched)
        assert checked >= len(FILTERS) // 2
        assert matched >= checked // 2  # most select something: not a match of nothing


class TestWhatTheExportRefuses:
    async def test_a_resource_without_a_required_value_fails_the_export_in_words(
        self, tenant: Tenant, database: Database, tmp_path: Path
    ):
        """A time of -infinity (written by hand) leaves lastUpdated without a value: the
        export refuses, rather than write `"lastUpdated":}`."""
        ident = uuid.uuid4()
        await owner_sql(
            database,
            "INSERT INTO patients (id, organization_id, first_name, last_name, created_at) "
            "VALUES (:id, :org, 'Ann', 'Inf', '-infinity')",
            id=ident,
            org=tenant.organization_id,
        )
        job = tenant_job(tenant, "Patient")
        with pytest.raises(Unbuildable, match="lacks a value FHIR requires"):
            await run_export(database.sessionmaker, DirectoryStorage(tmp_path), job)
        assert all(b'"lastUpdated":}' not in body for body in ndjson_files(tmp_path).values())

    async def test_a_page_is_recorded_before_it_is_written(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ):
        """The access log entry of a page is committed before its lines reach the file: a
        page whose entry fails is not in the file (with `careteam export`, the file is
        the disclosure)."""
        await post_patient(client, tenant)

        async def refused(*_args: Any) -> None:
            raise RuntimeError("the access log is unavailable")

        monkeypatch.setattr(bulk_export, "_record_page", refused)
        job = tenant_job(tenant, "Patient")
        with pytest.raises(RuntimeError, match="unavailable"):
            await run_export(database.sessionmaker, DirectoryStorage(tmp_path), job)
        assert list(ndjson_files(tmp_path).values()) == [b""]

    async def test_a_page_read_again_with_other_patients_is_recorded_again(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        """A page's entry id follows its patients: the same page read again (a retry)
        writes nothing twice; the same page number holding other patients (a retry on a
        new snapshot) is recorded, never dropped as a duplicate."""
        first, second = await post_patient(client, tenant), await post_patient(client, tenant)
        job = tenant_job(tenant, "Patient")
        for patients in ([first], [first], [second]):
            ids = [uuid.UUID(p) for p in patients]
            await bulk_export._record_page(database.sessionmaker, job, "Patient", 0, ids)
        entries = await export_entries(database, tenant.organization_id)
        assert sorted(str(e.patient_ids[0]) for e in entries) == sorted([first, second])
