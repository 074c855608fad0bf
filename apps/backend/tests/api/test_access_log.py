"""The access log (issue 26, part 3): every request that reads or changes patient data
is recorded before its answer leaves (who, which patients, the route, the outcome), and
nothing acknowledged is ever missing; reading it back (/v1/access-log, FHIR AuditEvent)
needs the administrative scope and shows one organization only; names never enter it."""

from __future__ import annotations

import asyncio
import datetime
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from fhir.resources.R4B.auditevent import AuditEvent
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from src.api.access_log import ACCESS_LOG, NOTED, PATH, UNKNOWN_NAME, app_parameter_names
from src.api.route_scopes import ROUTE_SCOPES
from src.db import Database
from src.scopes import ADMIN
from src.services.organization_service import OrganizationService
from tests.fhir_validation import check_fhir
from tests.helpers import Tenant, TenantFactory, log_refused, post_patient, post_provider

FHIR = "/fhir/R4"
CARE_TEAM = "GET /v1/patients/{patient_id}/care-team"


async def headers_with(database: Database, tenant: Tenant, scopes: list[str]) -> dict[str, str]:
    """A new key of the tenant's organization with these scopes."""
    async with AsyncSession(database.owner_engine) as owner:
        issued = await OrganizationService.create_api_key(
            db=owner, organization_id=tenant.organization_id, scopes=scopes
        )
    return {"Authorization": f"Bearer {issued.key}"}


async def entries(database: Database, org: uuid.UUID) -> list[Any]:
    """The organization's entries, oldest first, read as the owner."""
    async with database.owner_engine.connect() as owner:
        result = await owner.execute(
            text("SELECT * FROM access_log WHERE organization_id = :org ORDER BY recorded_at, id"),
            {"org": org},
        )
        return list(result.mappings())


async def last_entry(database: Database, org: uuid.UUID) -> Any:
    found = await entries(database, org)
    assert found, "no entry recorded"
    return found[-1]


async def team_with_primary(client: httpx.AsyncClient, tenant: Tenant) -> tuple[str, str]:
    patient = await post_patient(client, tenant)
    provider = await post_provider(client, tenant)
    response = await client.put(
        f"/v1/patients/{patient}/care-team/primary",
        json={"provider_id": provider},
        headers=tenant.headers,
    )
    assert response.status_code == 200, response.text
    return patient, provider


class TestTheTable:
    def test_every_route_has_a_decision(self):
        """Each route of route_scopes.py says whether it touches patient data."""
        assert set(ACCESS_LOG) == set(ROUTE_SCOPES)

    def test_a_route_whose_patient_is_its_path_names_one(self):
        for (_, template), access in ACCESS_LOG.items():
            if access is not None and access.patients == PATH:
                assert "{patient_id}" in template or (
                    template.startswith(f"{FHIR}/Patient/")
                    or template.startswith(f"{FHIR}/CareTeam/")
                ), template
            if access is not None:
                assert access.patients in (PATH, NOTED)
                assert access.action in "CRUDE"

    def test_the_log_reads_are_administrative(self):
        for key in (
            ("GET", "/v1/access-log"),
            ("GET", f"{FHIR}/AuditEvent"),
            ("POST", f"{FHIR}/AuditEvent/_search"),
            ("GET", f"{FHIR}/AuditEvent/{{ident}}"),
        ):
            assert ROUTE_SCOPES[key] == ADMIN


class TestWhatIsRecorded:
    async def test_a_care_team_read(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        patient, _ = await team_with_primary(client, tenant)
        response = await client.get(f"/v1/patients/{patient}/care-team", headers=tenant.headers)
        assert response.status_code == 200
        entry = await last_entry(database, tenant.organization_id)
        assert entry["route"] == CARE_TEAM
        assert (entry["interaction"], entry["action"], entry["status"]) == ("read", "R", 200)
        assert entry["api_key_id"] == tenant.api_key_id and entry["client_id"] is None
        assert entry["patient_ids"] == [uuid.UUID(patient)]
        assert entry["recorded_at"] <= datetime.datetime.now(datetime.UTC)

    async def test_each_request_once(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        patient, _ = await team_with_primary(client, tenant)
        before = len(await entries(database, tenant.organization_id))
        for _ in range(5):
            await client.get(f"/v1/patients/{patient}/care-team", headers=tenant.headers)
        await client.head(f"/v1/patients/{patient}", headers=tenant.headers)
        after = await entries(database, tenant.organization_id)
        assert len(after) == before + 6
        assert after[-1]["route"] == "GET /v1/patients/{patient_id}"  # HEAD is its GET

    async def test_writes(self, client: httpx.AsyncClient, tenant: Tenant, database: Database):
        patient = await post_patient(client, tenant)
        created = await last_entry(database, tenant.organization_id)
        assert (created["route"], created["action"], created["status"]) == (
            "POST /v1/patients",
            "C",
            201,
        )
        assert created["patient_ids"] == [uuid.UUID(patient)]
        provider = await post_provider(client, tenant)  # not patient data: no entry
        assert (await last_entry(database, tenant.organization_id))["id"] == created["id"]
        await client.put(
            f"/v1/patients/{patient}/care-team/primary",
            json={"provider_id": provider, "note": "private words"},
            headers=tenant.headers,
        )
        changed = await last_entry(database, tenant.organization_id)
        assert (changed["interaction"], changed["action"], changed["status"]) == (
            "update",
            "U",
            200,
        )
        assert changed["patient_ids"] == [uuid.UUID(patient)]

    async def test_refusals_with_the_patient_asked(
        self, client: httpx.AsyncClient, make_tenant: TenantFactory, database: Database
    ):
        """A 404 for another organization's patient is recorded in the caller's log, with
        the id asked; the other organization's log shows nothing of it."""
        mine, theirs = await make_tenant(), await make_tenant()
        their_patient = await post_patient(client, theirs)
        before_theirs = len(await entries(database, theirs.organization_id))
        response = await client.get(f"/v1/patients/{their_patient}/care-team", headers=mine.headers)
        assert response.status_code == 404
        entry = await last_entry(database, mine.organization_id)
        assert (entry["status"], entry["patient_ids"]) == (404, [uuid.UUID(their_patient)])
        assert len(await entries(database, theirs.organization_id)) == before_theirs
        # 422 (a parameter the route does not take): recorded, the name as "?".
        response = await client.get(
            f"/v1/patients/{their_patient}", params={"Smith": "1"}, headers=mine.headers
        )
        assert response.status_code == 422
        entry = await last_entry(database, mine.organization_id)
        assert (entry["status"], entry["parameters"]) == (422, [UNKNOWN_NAME])

    async def test_v1_parameter_names_are_recorded_as_they_are(
        self, app: FastAPI, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        """Regression: the app's own query parameters were all recorded as "?" (FastAPI
        keeps each included router as one entry of the app's routes, and only the FHIR
        search parameters were known)."""
        declared = app_parameter_names(app.router.routes)
        assert {"limit", "cursor", "dob", "role", "as_of", "after", "patient_id"} <= declared
        _, provider = await team_with_primary(client, tenant)
        for path, params in (
            ("/v1/patients", {"dob": "1990-01-01", "limit": "5"}),
            (f"/v1/providers/{provider}/patients", {"role": "any", "limit": "5"}),
        ):
            response = await client.get(path, params=params, headers=tenant.headers)
            assert response.status_code == 200, response.text
            entry = await last_entry(database, tenant.organization_id)
            assert entry["parameters"] == sorted(params), path

    async def test_403_is_recorded_and_401_is_not(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        patient = await post_patient(client, tenant)
        reader = await headers_with(database, tenant, ["system/Practitioner.rs"])
        response = await client.get(f"/v1/patients/{patient}", headers=reader)
        assert response.status_code == 403
        entry = await last_entry(database, tenant.organization_id)
        assert (entry["status"], entry["patient_ids"]) == (403, [uuid.UUID(patient)])
        count = len(await entries(database, tenant.organization_id))
        bad = {"Authorization": "Bearer ctk_" + "x" * 40}
        assert (await client.get(f"/v1/patients/{patient}", headers=bad)).status_code == 401
        assert len(await entries(database, tenant.organization_id)) == count

    async def test_searches_record_the_patients_they_return(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        first, provider = await team_with_primary(client, tenant)
        second = await post_patient(client, tenant, first_name="Bea")
        await client.put(
            f"/v1/patients/{second}/care-team/primary",
            json={"provider_id": provider},
            headers=tenant.headers,
        )
        expected = {uuid.UUID(first), uuid.UUID(second)}
        checks = [
            ("/v1/patients", {"limit": "10"}, "GET /v1/patients", 2),
            (
                f"/v1/providers/{provider}/patients",
                {},
                "GET /v1/providers/{provider_id}/patients",
                2,
            ),
            ("/v1/care-team-events", {}, "GET /v1/care-team-events", 2),
            (f"{FHIR}/Patient", {"_count": "10"}, "GET /fhir/R4/Patient", 2),
            (f"{FHIR}/CareTeam", {}, "GET /fhir/R4/CareTeam", 2),
        ]
        for path, params, route, count in checks:
            response = await client.get(path, params=params, headers=tenant.headers)
            assert response.status_code == 200, response.text
            entry = await last_entry(database, tenant.organization_id)
            assert entry["route"] == route
            assert set(entry["patient_ids"]) == expected, route
            assert entry["interaction"] == "search-type"
            if route != "GET /v1/care-team-events":
                assert entry["result_count"] == count, route
        # A count alone names no patient; its count is the total the client was told.
        counted = await client.get(
            f"{FHIR}/Patient", params={"_summary": "count"}, headers=tenant.headers
        )
        assert counted.json()["total"] == 2
        entry = await last_entry(database, tenant.organization_id)
        assert (entry["route"], entry["result_count"]) == ("GET /fhir/R4/Patient", 2)
        # A Practitioner search names no patient: no entry; with _revinclude it does.
        before = len(await entries(database, tenant.organization_id))
        practitioners = await client.get(f"{FHIR}/Practitioner", headers=tenant.headers)
        assert practitioners.status_code == 200
        assert len(await entries(database, tenant.organization_id)) == before
        revinclude = await client.get(
            f"{FHIR}/Practitioner",
            params={"_revinclude": "Patient:general-practitioner"},
            headers=tenant.headers,
        )
        assert revinclude.status_code == 200
        entry = await last_entry(database, tenant.organization_id)
        assert set(entry["patient_ids"]) == expected
        assert entry["parameters"] == ["_revinclude"]

    async def test_a_name_searched_for_never_enters_the_log(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        name = "Zqxjvwutsr"
        patient = await post_patient(client, tenant, last_name=name, first_name="Quorra")
        for response in (
            await client.get("/v1/patients", params={"name": name}, headers=tenant.headers),
            await client.get(f"{FHIR}/Patient", params={"name": name}, headers=tenant.headers),
            await client.get(f"{FHIR}/Patient", params={name: "1"}, headers=tenant.headers),
            await client.post(
                f"{FHIR}/Patient/_search",
                content=f"family:exact={name}&given=Quorra",
                headers={**tenant.headers, "Content-Type": "application/x-www-form-urlencoded"},
            ),
            await client.patch(
                f"/v1/patients/{patient}", json={"first_name": "Quorra"}, headers=tenant.headers
            ),
        ):
            assert response.status_code in (200, 400), response.text
        async with database.owner_engine.connect() as owner:
            dump = (
                await owner.execute(
                    text(
                        "SELECT string_agg(l::text, ' ') FROM access_log AS l "
                        "WHERE organization_id = :org"
                    ),
                    {"org": tenant.organization_id},
                )
            ).scalar_one()
        assert "name" in dump and "family:exact" in dump  # the names of the parameters
        assert name.lower() not in dump.lower() and "quorra" not in dump.lower()


class TestTheGuarantee:
    async def test_no_answer_leaves_without_its_entry(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        patient, _ = await team_with_primary(client, tenant)
        before = len(await entries(database, tenant.organization_id))
        async with log_refused(database, tenant.organization_id):
            read = await client.get(f"/v1/patients/{patient}/care-team", headers=tenant.headers)
            assert read.status_code == 503, read.text
            assert read.json()["error"] == "access_log_unavailable"
            assert read.headers["retry-after"] == "5"
            assert patient not in read.text and "members" not in read.text
            fhir = await client.get(f"{FHIR}/Patient/{patient}", headers=tenant.headers)
            assert fhir.status_code == 503
            assert fhir.json()["resourceType"] == "OperationOutcome"
            assert "Alice" not in fhir.text
            search = await client.get("/v1/patients", headers=tenant.headers)
            assert search.status_code == 503 and "Alice" not in search.text
            # Not patient data: answered as ever.
            assert (await client.get("/v1/providers", headers=tenant.headers)).status_code == 200
        assert len(await entries(database, tenant.organization_id)) == before
        again = await client.get(f"/v1/patients/{patient}/care-team", headers=tenant.headers)
        assert again.status_code == 200
        assert len(await entries(database, tenant.organization_id)) == before + 1

    async def test_a_refused_entry_fails_alone_in_a_shared_batch(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        make_tenant: TenantFactory,
        database: Database,
    ):
        """Two organizations' requests at once, one organization's entries refused: its
        requests get 503, the other's their answers and entries (the writer splits the
        batch the database refused and writes its entries one by one)."""
        refused, accepted = await make_tenant(), await make_tenant()
        refused_patient, _ = await team_with_primary(client, refused)
        accepted_patient, _ = await team_with_primary(client, accepted)
        writer = app.state.access_log_writer
        splits = writer.split_batches
        before = len(await entries(database, accepted.organization_id))
        refused_before = await entries(database, refused.organization_id)
        answered = 0
        async with log_refused(database, refused.organization_id):
            for _ in range(5):  # until the two shared a batch (the first round, as a rule)
                answers = await asyncio.gather(
                    *(
                        client.get(f"/v1/patients/{patient}/care-team", headers=who.headers)
                        for _ in range(10)
                        for who, patient in (
                            (refused, refused_patient),
                            (accepted, accepted_patient),
                        )
                    )
                )
                statuses = [a.status_code for a in answers]
                assert statuses[0::2] == [503] * 10 and statuses[1::2] == [200] * 10, statuses
                answered += 10
                if writer.split_batches > splits:
                    break
        assert writer.split_batches > splits, "the two organizations never shared a batch"
        found = await entries(database, accepted.organization_id)
        assert len(found) == before + answered
        assert await entries(database, refused.organization_id) == refused_before
        assert len({e["id"] for e in found}) == len(found)


class TestReadingTheLog:
    async def test_needs_the_administrative_scope(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        for path in ("/v1/access-log", f"{FHIR}/AuditEvent", f"{FHIR}/AuditEvent/{uuid.uuid4()}"):
            response = await client.get(path, headers=tenant.headers)  # system/*.cruds
            assert response.status_code == 403, path
            assert f'scope="{ADMIN}"' in response.headers["www-authenticate"]

    async def test_pages_by_patient_with_cursors_of_its_own(
        self, client: httpx.AsyncClient, make_tenant: TenantFactory, database: Database
    ):
        tenant, other = await make_tenant(), await make_tenant()
        admin = await headers_with(database, tenant, [ADMIN])
        patient, _ = await team_with_primary(client, tenant)
        for _ in range(3):
            await client.get(f"/v1/patients/{patient}/care-team", headers=tenant.headers)
        await post_patient(client, tenant)  # another patient's entry
        seen: list[dict[str, Any]] = []
        cursor = None
        while True:
            params = {"patient_id": patient, "limit": "2", **({"after": cursor} if cursor else {})}
            page = await client.get("/v1/access-log", params=params, headers=admin)
            assert page.status_code == 200, page.text
            body = page.json()
            seen += body["items"]
            if not body["items"]:
                assert body["next_cursor"] == cursor  # kept while nothing is new
                break
            cursor = body["next_cursor"]
        routes = [e["route"] for e in seen]
        assert routes == [
            "POST /v1/patients",
            "PUT /v1/patients/{patient_id}/care-team/primary",
            CARE_TEAM,
            CARE_TEAM,
            CARE_TEAM,
        ]
        assert all(e["patient_ids"] == [patient] for e in seen)
        everything = (await client.get("/v1/access-log", headers=admin)).json()["items"]
        assert len(everything) == 6 and everything[0]["api_key_id"] == str(tenant.api_key_id)
        # Another organization's admin sees none of it, by list, patient or cursor.
        their_admin = await headers_with(database, other, [ADMIN])
        assert (await client.get("/v1/access-log", headers=their_admin)).json()["items"] == []
        theirs = await client.get(
            "/v1/access-log", params={"patient_id": patient}, headers=their_admin
        )
        assert theirs.json()["items"] == []
        for params, headers in (
            ({"after": cursor}, their_admin),  # another organization's cursor
            ({"after": cursor}, admin),  # another list's (this patient's list, not all)
            ({"after": cursor[:-2] + ("AA" if cursor[-2:] != "AA" else "BB")}, admin),  # forged
            ({"patient_id": patient, "after": "not-a-cursor"}, admin),
        ):
            refused = await client.get("/v1/access-log", params=params, headers=headers)
            assert refused.status_code == 422, refused.text
            assert refused.json()["error"] == "invalid_cursor"
        unknown = await client.get("/v1/access-log", params={"patient": patient}, headers=admin)
        assert unknown.status_code == 422
        assert len(await entries(database, tenant.organization_id)) == 6  # reads not logged

    async def test_an_entry_that_commits_late_is_never_left_behind_the_cursor(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        """An entry's position is its transaction's start: one begun before a page was
        read but committed after it would land behind that page's cursor. A page stops
        before the oldest transaction still open, so a reader polling with `after` sees
        every entry, once."""
        admin = await headers_with(database, tenant, [ADMIN])
        patient, _ = await team_with_primary(client, tenant)
        late_id = uuid.uuid4()
        async with database.app_engine.connect() as late:  # a writer, as the log's writer is
            await late.execute(
                text(
                    "SELECT careteam_record_access(:org, :id, :key, NULL, :route, 'read', 'R', "
                    "'{}', 200, NULL, ARRAY[CAST(:patient AS uuid)])"
                ),
                {
                    "org": tenant.organization_id,
                    "id": late_id,
                    "key": tenant.api_key_id,
                    "route": CARE_TEAM,
                    "patient": patient,
                },
            )  # written, not committed: its recorded_at is this transaction's start
            read = await client.get(f"/v1/patients/{patient}/care-team", headers=tenant.headers)
            assert read.status_code == 200  # its entry commits now, after the late one began
            first = (await client.get("/v1/access-log", headers=admin)).json()
            await late.commit()
        seen = [e["id"] for e in first["items"]]
        cursor = first["next_cursor"]
        while True:
            page = await client.get("/v1/access-log", params={"after": cursor}, headers=admin)
            body = page.json()
            if not body["items"]:
                break
            seen += [e["id"] for e in body["items"]]
            cursor = body["next_cursor"]
        recorded = [str(e["id"]) for e in await entries(database, tenant.organization_id)]
        assert str(late_id) in recorded
        assert sorted(seen) == sorted(recorded)  # each once, the late one included

    async def test_audit_event_searches_also_stop_before_an_open_transaction(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        """A FHIR poller (`date=gt<last seen>`, or paging by `_id`) misses nothing either;
        a search naming the entry's id finds it as soon as it is committed."""
        admin = await headers_with(database, tenant, [ADMIN])
        patient, _ = await team_with_primary(client, tenant)
        late_id = uuid.uuid4()
        async with database.app_engine.connect() as late:
            await late.execute(
                text(
                    "SELECT careteam_record_access(:org, :id, :key, NULL, :route, 'read', 'R', "
                    "'{}', 200, NULL, ARRAY[CAST(:patient AS uuid)])"
                ),
                {
                    "org": tenant.organization_id,
                    "id": late_id,
                    "key": tenant.api_key_id,
                    "route": CARE_TEAM,
                    "patient": patient,
                },
            )
            read = await client.get(f"/v1/patients/{patient}/care-team", headers=tenant.headers)
            assert read.status_code == 200
            before = (await client.get(f"{FHIR}/AuditEvent?_sort=date", headers=admin)).json()
            await late.commit()
        seen = [e["resource"]["recorded"] for e in before.get("entry", [])]
        after = (
            await client.get(
                f"{FHIR}/AuditEvent",
                params={"_sort": "date", **({"date": f"gt{seen[-1]}"} if seen else {})},
                headers=admin,
            )
        ).json()
        ids = [e["resource"]["id"] for e in (*before.get("entry", []), *after.get("entry", []))]
        recorded = [str(e["id"]) for e in await entries(database, tenant.organization_id)]
        assert sorted(ids) == sorted(recorded)
        by_id = await client.get(f"{FHIR}/AuditEvent/{late_id}", headers=admin)
        assert by_id.status_code == 200


def check_audit_event(resource: dict[str, Any]) -> None:
    AuditEvent.model_validate(resource)
    check_fhir(resource)


class TestAuditEvent:
    async def test_search_read_and_validate(
        self, client: httpx.AsyncClient, make_tenant: TenantFactory, database: Database
    ):
        tenant, other = await make_tenant(), await make_tenant()
        admin = await headers_with(database, tenant, [ADMIN])
        patient, _ = await team_with_primary(client, tenant)
        await client.get(f"{FHIR}/CareTeam", params={"patient": patient}, headers=tenant.headers)
        await client.get(f"/v1/patients/{uuid.uuid4()}", headers=tenant.headers)  # a 404
        bundle_response = await client.get(
            f"{FHIR}/AuditEvent", params={"patient": patient, "_total": "accurate"}, headers=admin
        )
        assert bundle_response.status_code == 200, bundle_response.text
        bundle = bundle_response.json()
        check_fhir(bundle)
        assert bundle["total"] == 3
        events = [e["resource"] for e in bundle["entry"]]
        for event in events:
            check_audit_event(event)
            assert event["type"]["code"] == "rest"
            assert event["source"]["observer"] == {
                "reference": f"Organization/{tenant.organization_id}"
            }
            assert [a["requestor"] for a in event["agent"]] == [True]
            assert event["agent"][0]["who"]["identifier"]["value"] == str(tenant.api_key_id)
            patients = [e["what"]["reference"] for e in event["entity"] if "what" in e]
            assert patients == [f"Patient/{patient}"]
        # In time order by default (the ids are time-ordered).
        subtypes = [e["subtype"][0]["code"] for e in events]
        assert subtypes == ["create", "update", "search-type"]
        assert [e["action"] for e in events] == ["C", "U", "R"]
        search = events[2]
        query = next(e for e in search["entity"] if "what" not in e)
        details = {d["type"]: d["valueString"] for d in query["detail"]}
        assert details == {"parameters": "patient", "result-count": "1"}
        # Read one by id; a 404's outcome is 4.
        read = await client.get(f"{FHIR}/AuditEvent/{search['id']}", headers=admin)
        assert read.status_code == 200
        check_audit_event(read.json())
        assert read.json() == search
        refused = await client.get(f"{FHIR}/AuditEvent", params={"outcome": "4"}, headers=admin)
        refusals = [e["resource"] for e in refused.json()["entry"]]
        assert [r["outcomeDesc"] for r in refusals] == ["HTTP 404"]
        # Agent, action, subtype.
        by_agent = await client.get(
            f"{FHIR}/AuditEvent", params={"agent": str(tenant.api_key_id)}, headers=admin
        )
        assert len(by_agent.json()["entry"]) == 4
        nobody = await client.get(
            f"{FHIR}/AuditEvent", params={"agent": f"Device/{uuid.uuid4()}"}, headers=admin
        )
        assert "entry" not in nobody.json()
        writes = await client.get(f"{FHIR}/AuditEvent", params={"action": "C,U"}, headers=admin)
        assert len(writes.json()["entry"]) == 2
        # Another organization sees none of them, by search or read.
        their_admin = await headers_with(database, other, [ADMIN])
        theirs = await client.get(
            f"{FHIR}/AuditEvent", params={"patient": patient}, headers=their_admin
        )
        assert "entry" not in theirs.json()
        assert (
            await client.get(f"{FHIR}/AuditEvent/{search['id']}", headers=their_admin)
        ).status_code == 404

    async def test_dates_paging_and_strictness(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        admin = await headers_with(database, tenant, [ADMIN])
        patient, _ = await team_with_primary(client, tenant)
        for _ in range(3):
            await client.get(f"{FHIR}/Patient/{patient}", headers=tenant.headers)
        recorded = [e["recorded_at"] for e in await entries(database, tenant.organization_id)]
        first, last = recorded[0], recorded[-1]
        day = first.astimezone(datetime.UTC).strftime("%Y-%m-%d")

        async def found(*dates: str) -> int:
            response = await client.get(
                f"{FHIR}/AuditEvent",
                params=[("date", d) for d in dates] + [("_total", "accurate")],
                headers=admin,
            )
            assert response.status_code == 200, response.text
            return int(response.json()["total"])

        def instant(at: datetime.datetime) -> str:
            return at.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")

        assert await found(day) == 5
        assert await found(f"eq{day[:7]}") == 5
        assert await found(f"ne{day}") == 0
        assert await found(f"ge{instant(first)}") == 5
        assert await found(f"gt{instant(last)}") == 0
        assert await found(f"lt{instant(first)}") == 0
        assert await found(f"le{instant(last)}") == 5
        assert await found(f"sa{instant(first - datetime.timedelta(seconds=1))}") == 5
        assert await found(f"eb{instant(last + datetime.timedelta(seconds=1))}") == 5
        assert await found(f"ap{day}") == 5
        assert await found(f"ge{day}", f"lt{day[:4]}-12-31T23:59:59Z") >= 0
        assert await found("2001,2002") == 0
        # _count pages with a next link, in time order, each once.
        ids: list[str] = []
        url: str | None = f"{FHIR}/AuditEvent?_count=2&_sort=-date"
        while url:
            page = await client.get(url, headers=admin)
            assert page.status_code == 200, page.text
            body = page.json()
            check_fhir(body)
            assert body["link"][0]["relation"] == "self"
            ids += [e["resource"]["id"] for e in body.get("entry", [])]
            url = next((link["url"] for link in body["link"] if link["relation"] == "next"), None)
        assert len(ids) == len(set(ids)) == 5
        stored = [str(e["id"]) for e in await entries(database, tenant.organization_id)]
        assert ids == stored[::-1]
        cursor = parse_qs(urlsplit(url or page.json()["link"][0]["url"]).query).get("_cursor")
        assert cursor is None or cursor
        # Strict: an unknown parameter, an unsupported modifier, a malformed date.
        for params in ({"name": "x"}, {"patient:identifier": "a|b"}, {"date": "yesterday"}):
            refused = await client.get(f"{FHIR}/AuditEvent", params=params, headers=admin)
            assert refused.status_code == 400, params
            assert refused.json()["resourceType"] == "OperationOutcome"
        lenient = await client.get(
            f"{FHIR}/AuditEvent",
            params={"name": "x"},
            headers={**admin, "Prefer": "handling=lenient"},
        )
        assert lenient.status_code == 200
        assert "name" not in lenient.json()["link"][0]["url"]

    async def test_elements_keeps_the_mandatory_elements(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        """An AuditEvent without type, recorded, agent or source is not one: `_elements`
        keeps them whatever it names (search.html: servers SHOULD)."""
        admin = await headers_with(database, tenant, [ADMIN])
        await team_with_primary(client, tenant)
        response = await client.get(
            f"{FHIR}/AuditEvent", params={"_elements": "outcome"}, headers=admin
        )
        assert response.status_code == 200, response.text
        bundle = response.json()
        check_fhir(bundle)
        event = bundle["entry"][0]["resource"]
        assert set(event) == {
            "resourceType", "id", "meta", "type", "recorded", "agent", "source", "outcome"
        }  # fmt: skip
        assert event["meta"]["tag"][0]["code"] == "SUBSETTED"

    async def test_declared_in_the_capability_statement(self, client: httpx.AsyncClient):
        statement = (await client.get(f"{FHIR}/metadata")).json()
        check_fhir(statement)
        resource = next(r for r in statement["rest"][0]["resource"] if r["type"] == "AuditEvent")
        assert {i["code"] for i in resource["interaction"]} == {"read", "search-type"}
        names = {p["name"] for p in resource["searchParam"]}
        assert {"patient", "date", "agent", "_id"} <= names


class TestOpenApi:
    def test_the_log_route_is_documented_with_its_scope(self, app: FastAPI):
        operation = app.openapi()["paths"]["/v1/access-log"]["get"]
        assert operation["security"] == [{"HTTPBearer": [ADMIN]}]
        assert {p["name"] for p in operation["parameters"]} == {"patient_id", "after", "limit"}


@pytest.mark.parametrize("route", [CARE_TEAM])
def test_route_strings_are_templates(route: str):
    assert "{" in route and "}" in route
