"""The worklist API (issue 27): patients by primary provider (`primary=none|<id>`) in name or
creation order, keyset-paginated on indexes; `primary_provider_id` on patient records and
in their ETags; the overview counting every patient without a primary; panel pages with
their patients' names."""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from src.db import Database
from src.services.directory_service import NO_PRIMARY, _sorted_page_statement
from src.services.organization_service import OrganizationService
from tests.helpers import (
    Tenant,
    TenantFactory,
    add_secondary,
    assign,
    post_patient,
    post_provider,
    set_tenant,
    token_headers,
)


async def walk(client: httpx.AsyncClient, tenant: Tenant, **params: object) -> list[dict[str, Any]]:
    """Every item of the list, page after page."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({} if cursor is None else {"cursor": cursor})}
        r = await client.get("/v1/patients", params=query, headers=tenant.headers)
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return items


class TestPrimaryFilter:
    async def test_none_lists_patients_without_a_primary_with_or_without_a_team(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        provider = await post_provider(client, tenant)
        attributed = await post_patient(client, tenant, last_name="Attributed")
        secondary_only = await post_patient(client, tenant, last_name="Secondary")
        no_team = await post_patient(client, tenant, last_name="Alone")
        await assign(client, tenant, attributed, provider)
        await add_secondary(client, tenant, secondary_only, provider)
        found = await walk(client, tenant, primary="none", limit=1)
        assert {p["id"] for p in found} == {secondary_only, no_team}
        assert all(p["primary_provider_id"] is None for p in found)

    async def test_a_provider_lists_the_patients_it_is_primary_of(
        self, client: httpx.AsyncClient, tenant: Tenant, make_tenant: TenantFactory
    ):
        a, b = await post_provider(client, tenant), await post_provider(client, tenant)
        mine = [await post_patient(client, tenant) for _ in range(3)]
        other = await post_patient(client, tenant)
        for patient in mine:
            await assign(client, tenant, patient, a)
        await assign(client, tenant, other, b)
        await add_secondary(client, tenant, other, a)
        found = await walk(client, tenant, primary=a.upper(), sort="created", limit=2)
        assert [p["id"] for p in found] == mine
        assert {p["primary_provider_id"] for p in found} == {a}
        # Another organization's provider (or one that does not exist) matches nobody.
        stranger = await make_tenant()
        theirs = await post_provider(client, stranger)
        for provider in (theirs, str(uuid.uuid4())):
            assert await walk(client, tenant, primary=provider) == []

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"primary": "nobody"}, "primary"),
            ({"primary": "None"}, "primary"),
            ({"primary": "{" + str(uuid.UUID(int=1)) + "}"}, "primary"),
            ({"sort": "age"}, "sort"),
            ({"sort": "+name"}, "sort"),
            ({"sort": "id"}, "sort"),
            ({"sort": ""}, "sort"),
        ],
    )
    async def test_unknown_values_are_422_with_the_reason(
        self, client: httpx.AsyncClient, tenant: Tenant, params: dict[str, str], field: str
    ):
        r = await client.get("/v1/patients", params=params, headers=tenant.headers)
        assert r.status_code == 422, r.text
        (error,) = r.json()["errors"]
        assert error["field"] == field and error["location"] == "query"
        if field == "sort":
            assert "'name', '-name', 'created' or '-created'" in error["detail"], error


class TestSort:
    async def test_name_orders_by_last_then_first_name_in_any_case_and_back(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        names = [("ada", "Zed"), ("Bob", "adams"), ("Al", "Adams"), ("carl", "Bell")]
        ids = {}
        for first, last in names:
            ids[(first, last)] = await post_patient(
                client, tenant, first_name=first, last_name=last
            )
        expected = [ids[n] for n in [("Al", "Adams"), ("Bob", "adams"), ("carl", "Bell")]]
        expected.append(ids[("ada", "Zed")])
        for limit in (1, 2, 50):
            found = await walk(client, tenant, sort="name", limit=limit)
            assert [p["id"] for p in found] == expected
        backwards = await walk(client, tenant, sort="-name", limit=3)
        assert [p["id"] for p in backwards] == expected[::-1]

    async def test_created_orders_by_creation_and_back(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        made = [await post_patient(client, tenant) for _ in range(5)]
        assert [p["id"] for p in await walk(client, tenant, sort="created", limit=2)] == made
        assert [p["id"] for p in await walk(client, tenant, sort="-created", limit=2)] == made[::-1]

    async def test_filters_and_sort_together(self, client: httpx.AsyncClient, tenant: Tenant):
        provider = await post_provider(client, tenant)
        zoe = await post_patient(client, tenant, first_name="Zoe", last_name="Smith")
        ann = await post_patient(client, tenant, first_name="Ann", last_name="Smith")
        sam = await post_patient(client, tenant, first_name="Sam", last_name="Smythe")
        await post_patient(client, tenant, first_name="Ann", last_name="Jones")
        await assign(client, tenant, sam, provider)
        found = await walk(client, tenant, name="sm", primary="none", sort="name", limit=1)
        assert [p["id"] for p in found] == [ann, zoe]
        found = await walk(client, tenant, name="sm", sort="-name")
        assert [p["id"] for p in found] == [sam, zoe, ann]


class TestCursors:
    async def test_a_cursor_belongs_to_its_sort_and_filter(
        self, client: httpx.AsyncClient, tenant: Tenant, make_tenant: TenantFactory
    ):
        for _ in range(3):
            await post_patient(client, tenant)
        lists = [
            {"sort": "name"},
            {"sort": "-name"},
            {"sort": "created"},
            {"sort": "-created"},
            {"primary": "none"},
            {"primary": "none", "sort": "name"},
            {},
        ]
        cursors = []
        for params in lists:
            r = await client.get(
                "/v1/patients", params={**params, "limit": 1}, headers=tenant.headers
            )
            cursors.append(r.json()["next_cursor"])
        for i, cursor in enumerate(cursors):
            for j, params in enumerate(lists):
                r = await client.get(
                    "/v1/patients", params={**params, "cursor": cursor}, headers=tenant.headers
                )
                if i == j:
                    assert r.status_code == 200, r.text
                else:
                    assert r.status_code == 422, (lists[i], params, r.text)
                    assert r.json()["error"] == "invalid_cursor"
        other = await make_tenant()
        r = await client.get(
            "/v1/patients", params={"sort": "name", "cursor": cursors[0]}, headers=other.headers
        )
        assert r.status_code == 422 and r.json()["error"] == "invalid_cursor"

    async def test_a_name_cursor_whose_patient_changed_is_refused_not_misread(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """Its place in the order may have moved: a page after it could skip patients."""
        for last in ("Able", "Baker", "Carter"):
            await post_patient(client, tenant, last_name=last)
        first = await client.get(
            "/v1/patients", params={"sort": "name", "limit": 1}, headers=tenant.headers
        )
        anchor = first.json()["items"][0]["id"]
        renamed = await client.patch(
            f"/v1/patients/{anchor}", json={"last_name": "Zimmer"}, headers=tenant.headers
        )
        assert renamed.status_code == 200
        r = await client.get(
            "/v1/patients",
            params={"sort": "name", "cursor": first.json()["next_cursor"]},
            headers=tenant.headers,
        )
        assert r.status_code == 422 and r.json()["error"] == "invalid_cursor", r.text
        assert "start the list again" in r.json()["detail"]


class TestPrimaryOnRecords:
    async def test_every_patient_record_says_who_its_primary_is(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        provider = await post_provider(client, tenant)
        created = await client.post(
            "/v1/patients",
            json={"first_name": "A", "last_name": "B", "dob": "1990-01-01"},
            headers=tenant.headers,
        )
        assert created.json()["primary_provider_id"] is None
        patient = created.json()["id"]
        await assign(client, tenant, patient, provider)
        url = f"/v1/patients/{patient}"
        assert (await client.get(url, headers=tenant.headers)).json()[
            "primary_provider_id"
        ] == provider
        patched = await client.patch(url, json={"first_name": "C"}, headers=tenant.headers)
        assert patched.json()["primary_provider_id"] == provider
        listing = await client.get(
            "/v1/patients", params={"primary": provider}, headers=tenant.headers
        )
        (listed,) = listing.json()["items"]
        assert listed["primary_provider_id"] == provider

    async def test_the_etag_changes_with_the_primary(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """A read's ETag names what it returns: a new primary is a new ETag (no stale 304),
        and an If-Match from before the change is 412."""
        a, b = await post_provider(client, tenant), await post_provider(client, tenant)
        patient = await post_patient(client, tenant)
        url = f"/v1/patients/{patient}"
        before = (await client.get(url, headers=tenant.headers)).headers["etag"]
        await assign(client, tenant, patient, a)
        after = await client.get(url, headers={**tenant.headers, "If-None-Match": before})
        assert after.status_code == 200 and after.headers["etag"] != before
        assert after.json()["primary_provider_id"] == a
        same = await client.get(
            url, headers={**tenant.headers, "If-None-Match": after.headers["etag"]}
        )
        assert same.status_code == 304
        stale = await client.patch(
            url, json={"first_name": "X"}, headers={**tenant.headers, "If-Match": before}
        )
        assert stale.status_code == 412, stale.text
        current = after.headers["etag"]
        await assign(client, tenant, patient, b)
        stale = await client.patch(
            url, json={"first_name": "X"}, headers={**tenant.headers, "If-Match": current}
        )
        assert stale.status_code == 412, stale.text
        fresh = (await client.get(url, headers=tenant.headers)).headers["etag"]
        ok = await client.patch(
            url, json={"first_name": "X"}, headers={**tenant.headers, "If-Match": fresh}
        )
        assert ok.status_code == 200, ok.text


class TestOverview:
    async def test_patients_without_any_team_count_as_without_a_primary(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """It counted only patients with a care team: three patients with none were not
        counted at all."""
        provider = await post_provider(client, tenant)
        attributed = await post_patient(client, tenant)
        await assign(client, tenant, attributed, provider)
        secondary_only = await post_patient(client, tenant)
        await add_secondary(client, tenant, secondary_only, provider)
        for _ in range(3):
            await post_patient(client, tenant)
        report = (await client.get("/v1/reports/panels", headers=tenant.headers)).json()
        assert report["patients_without_primary"] == 4
        listed = await walk(client, tenant, primary="none")
        assert len(listed) == report["patients_without_primary"]


class TestPanelInclude:
    async def test_include_patient_gives_names_with_ids(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        provider = await post_provider(client, tenant)
        patients = {}
        for last in ("One", "Two", "Three"):
            patients[await post_patient(client, tenant, last_name=last)] = last
        for patient in patients:
            await assign(client, tenant, patient, provider)
        url = f"/v1/providers/{provider}/patients"
        page = await client.get(
            url, params={"include": "patient", "limit": 2}, headers=tenant.headers
        )
        assert page.status_code == 200, page.text
        rest = await client.get(
            url,
            params={"include": "patient", "cursor": page.json()["next_cursor"]},
            headers=tenant.headers,
        )
        items = page.json()["items"] + rest.json()["items"]
        assert {i["patient"]["last_name"] for i in items} == set(patients.values())
        for item in items:
            assert item["patient"]["id"] == item["patient_id"]
            assert patients[item["patient_id"]] == item["patient"]["last_name"]
            assert item["patient"]["first_name"] == "Alice"
        plain = await client.get(url, headers=tenant.headers)
        assert all(i["patient"] is None for i in plain.json()["items"])

    @pytest.mark.parametrize("include", ["patients", "provider", "", "patient,provider"])
    async def test_unknown_include_is_refused(
        self, client: httpx.AsyncClient, tenant: Tenant, include: str
    ):
        provider = await post_provider(client, tenant)
        r = await client.get(
            f"/v1/providers/{provider}/patients",
            params={"include": include},
            headers=tenant.headers,
        )
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "include"


async def log_entries(database: Database, org: uuid.UUID) -> list[Any]:
    """The organization's access log, oldest first, read as the owner."""
    async with database.owner_engine.connect() as owner:
        result = await owner.execute(
            text("SELECT * FROM access_log WHERE organization_id = :org ORDER BY recorded_at, id"),
            {"org": org},
        )
        return list(result.mappings())


async def key_with(database: Database, tenant: Tenant, scopes: list[str]) -> dict[str, str]:
    async with AsyncSession(database.owner_engine) as owner:
        issued = await OrganizationService.create_api_key(
            db=owner, organization_id=tenant.organization_id, scopes=scopes
        )
    return {"Authorization": f"Bearer {issued.key}"}


class TestAccessLog:
    """Issue 26's access log: the worklist and a panel page with its patients record the
    patients they return, page by page (ids and parameter names only, never a name)."""

    async def test_the_worklist_records_each_page_s_patients(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        provider = await post_provider(client, tenant)
        unattributed = [
            await post_patient(client, tenant, last_name=last) for last in ("Wexa", "Wexb", "Wexc")
        ]
        attributed = await post_patient(client, tenant, last_name="Wexd")
        await assign(client, tenant, attributed, provider)
        cursor = None
        seen: list[str] = []
        while True:
            query = {"primary": "none", "sort": "name", "limit": "2"}
            r = await client.get(
                "/v1/patients",
                params=query if cursor is None else {**query, "cursor": cursor},
                headers=tenant.headers,
            )
            assert r.status_code == 200, r.text
            page = [p["id"] for p in r.json()["items"]]
            entry = (await log_entries(database, tenant.organization_id))[-1]
            assert entry["route"] == "GET /v1/patients"
            assert entry["interaction"] == "search-type"
            assert [str(p) for p in entry["patient_ids"]] == page
            assert entry["result_count"] == len(page)
            expected = ["limit", "primary", "sort"] + ([] if cursor is None else ["cursor"])
            assert sorted(entry["parameters"]) == sorted(expected)
            seen += page
            cursor = r.json()["next_cursor"]
            if cursor is None:
                break
        assert seen == unattributed
        r = await client.get(
            "/v1/patients", params={"primary": provider, "sort": "-created"}, headers=tenant.headers
        )
        assert r.status_code == 200, r.text
        entry = (await log_entries(database, tenant.organization_id))[-1]
        assert [str(p) for p in entry["patient_ids"]] == [attributed]
        assert entry["result_count"] == 1
        dump = " ".join(str(dict(e)) for e in await log_entries(database, tenant.organization_id))
        assert "wex" not in dump.lower()  # names never enter the log

    async def test_a_panel_page_with_its_patients_records_them(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        provider = await post_provider(client, tenant)
        patients = [await post_patient(client, tenant, last_name="Panelist") for _ in range(3)]
        for patient in patients:
            await assign(client, tenant, patient, provider)
        r = await client.get(
            f"/v1/providers/{provider}/patients",
            params={"include": "patient", "limit": 2},
            headers=tenant.headers,
        )
        assert r.status_code == 200, r.text
        page = [i["patient_id"] for i in r.json()["items"]]
        assert len(page) == 2
        entry = (await log_entries(database, tenant.organization_id))[-1]
        assert entry["route"] == "GET /v1/providers/{provider_id}/patients"
        assert [str(p) for p in entry["patient_ids"]] == page
        assert (entry["result_count"], sorted(entry["parameters"])) == (2, ["include", "limit"])
        dump = " ".join(str(dict(e)) for e in await log_entries(database, tenant.organization_id))
        assert "panelist" not in dump.lower()


class TestScopes:
    """Issue 26's scopes: the worklist is a patient search (system/Patient.s); a panel page
    is a care team search (system/CareTeam.s), and with include=patient it reads patients
    too (system/Patient.r), as FHIR's _include does."""

    @pytest.mark.parametrize("kind", ["key", "token"])
    async def test_include_patient_needs_patient_read(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database, kind: str
    ):
        provider = await post_provider(client, tenant)
        patient = await post_patient(client, tenant)
        await assign(client, tenant, patient, provider)
        url = f"/v1/providers/{provider}/patients"

        async def credential(scopes: list[str]) -> dict[str, str]:
            if kind == "key":
                return await key_with(database, tenant, scopes)
            return await token_headers(database, client, tenant.organization_id, scopes)

        care_team_only = await credential(["system/CareTeam.s"])
        assert (await client.get(url, headers=care_team_only)).status_code == 200
        before = len(await log_entries(database, tenant.organization_id))
        refused = await client.get(url, params={"include": "patient"}, headers=care_team_only)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"] == "insufficient_scope"
        assert "system/Patient.r" in refused.json()["detail"]
        assert "include=patient" in refused.json()["detail"]
        assert refused.headers["WWW-Authenticate"] == (
            'Bearer error="insufficient_scope", scope="system/Patient.r"'
        )
        assert "Alice" not in refused.text
        entries = await log_entries(database, tenant.organization_id)
        assert len(entries) == before + 1
        assert (entries[-1]["status"], entries[-1]["patient_ids"]) == (403, [])
        both = await credential(["system/CareTeam.s", "system/Patient.r"])
        allowed = await client.get(url, params={"include": "patient"}, headers=both)
        assert allowed.status_code == 200, allowed.text
        assert allowed.json()["items"][0]["patient"]["id"] == patient

    async def test_the_worklist_needs_patient_search(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        care_team_only = await key_with(database, tenant, ["system/CareTeam.rs"])
        r = await client.get(
            "/v1/patients", params={"primary": "none", "sort": "name"}, headers=care_team_only
        )
        assert r.status_code == 403, r.text
        assert r.json()["error"] == "insufficient_scope"
        assert "system/Patient.s" in r.json()["detail"]


@pytest.fixture(scope="module")
async def crowded(database: Database) -> uuid.UUID:
    """An organization of 5,000 patients, a tenth of them with a primary."""
    async with database.owner_engine.begin() as conn:
        org = (
            await conn.execute(
                text("INSERT INTO organizations (name) VALUES ('Crowded') RETURNING id")
            )
        ).scalar_one()
        provider = (
            await conn.execute(
                text(
                    "INSERT INTO providers (organization_id, first_name, last_name) "
                    "VALUES (:org, 'P', 'Q') RETURNING id"
                ),
                {"org": org},
            )
        ).scalar_one()
        await conn.execute(
            text(
                "INSERT INTO patients (organization_id, first_name, last_name, dob) "
                "SELECT :org, 'F' || g, md5(g::text), DATE '1980-01-01' "
                "FROM generate_series(1, 5000) AS g"
            ),
            {"org": org},
        )
        await conn.execute(
            text(
                "INSERT INTO care_team_assignments "
                "(organization_id, patient_id, provider_id, is_primary_provider) "
                "SELECT :org, id, :provider, true FROM patients "
                "WHERE organization_id = :org ORDER BY id LIMIT 500"
            ),
            {"org": org, "provider": provider},
        )
    async with database.owner_engine.connect() as conn:
        await conn.execute(text("ANALYZE patients"))
        await conn.execute(text("ANALYZE care_team_assignments"))
        await conn.commit()
    return uuid.UUID(str(org))


class TestPlans:
    """Each order is read from its index, in order, under row-level security (as the
    application role): the keyset condition is an index condition, and nothing sorts."""

    @pytest.mark.parametrize(
        ("sort", "index"),
        [
            ("name", "ix_patients_organization_id_name_order"),
            ("-name", "ix_patients_organization_id_name_order"),
            ("created", "ix_patients_organization_id_created_at_id"),
            ("-created", "ix_patients_organization_id_created_at_id"),
        ],
    )
    async def test_a_later_page_without_a_primary_reads_its_index(
        self, database: Database, crowded: uuid.UUID, sort: str, index: str
    ):
        statement = _sorted_page_statement(sort, NO_PRIMARY, frozenset(), True)
        anchor = {
            "org": crowded,
            "after": uuid.UUID(int=2**127),
            "last_key": "8",
            "first_key": "f",
            "created_at": datetime.datetime.now(datetime.UTC),
            "limit": 51,
        }
        async with database.app_engine.connect() as conn:
            await set_tenant(conn, crowded)
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            plan = await raw.fetchval(
                "EXPLAIN (FORMAT JSON) " + statement.text, *statement.args(anchor)
            )
            await conn.rollback()
        tree = json.loads(plan) if isinstance(plan, str) else plan
        nodes = list(_nodes(tree[0]["Plan"]))
        scans = [n for n in nodes if n.get("Index Name") == index]
        assert scans, json.dumps(nodes, indent=1)
        assert "Index Cond" in scans[0] and "organization_id" in scans[0]["Index Cond"]
        assert ">" in scans[0]["Index Cond"] or "<" in scans[0]["Index Cond"], scans[0]
        # The page itself (its columns' subqueries aside, which read one patient each).
        page = list(_nodes(tree[0]["Plan"], subplans=False))
        assert not [n for n in page if n["Node Type"] in ("Sort", "Seq Scan")], page


def _nodes(plan: dict[str, Any], *, subplans: bool = True) -> Any:
    yield plan
    for child in plan.get("Plans", []):
        if subplans or child.get("Parent Relationship") != "SubPlan":
            yield from _nodes(child, subplans=subplans)
