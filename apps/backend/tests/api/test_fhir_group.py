"""FHIR Group: each active provider's attributed panel (Da Vinci ATR's Member Attribution
List, docs/FHIR.md "Group"): the read, the search, versions and ETags, scopes, the
access log.
Every response goes through `valid` (tests/api/test_fhir.py), which validates it."""

from __future__ import annotations

import datetime
import uuid
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from src.db import Database
from src.services.organization_service import OrganizationService
from tests.api.test_fhir import FHIR, fhir_get, ids, valid
from tests.helpers import (
    Tenant,
    TenantFactory,
    add_secondary,
    assign,
    npi,
    post_patient,
    post_provider,
)

NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
SUBSETTED = "SUBSETTED"


async def remove(client: httpx.AsyncClient, tenant: Tenant, patient: str, provider: str) -> None:
    r = await client.delete(
        f"/v1/patients/{patient}/care-team/members/{provider}", headers=tenant.headers
    )
    assert r.status_code in (200, 204), r.text


async def patch_provider(
    client: httpx.AsyncClient, tenant: Tenant, provider: str, **fields: Any
) -> None:
    r = await client.patch(f"/v1/providers/{provider}", json=fields, headers=tenant.headers)
    assert r.status_code == 200, r.text


async def read_group(
    client: httpx.AsyncClient, tenant: Tenant, provider: str, **headers: str
) -> httpx.Response:
    return await client.get(f"{FHIR}/Group/{provider}", headers={**tenant.headers, **headers})


async def headers_with(database: Database, tenant: Tenant, scopes: list[str]) -> dict[str, str]:
    """A new key of the tenant's organization with these scopes."""
    async with AsyncSession(database.owner_engine) as owner:
        issued = await OrganizationService.create_api_key(
            db=owner, organization_id=tenant.organization_id, scopes=scopes
        )
    return {"Authorization": f"Bearer {issued.key}"}


async def last_log_entry(database: Database, org: uuid.UUID) -> Any:
    """The organization's latest access log entry, read as the owner."""
    async with database.owner_engine.connect() as owner:
        result = await owner.execute(
            text(
                "SELECT * FROM access_log WHERE organization_id = :org "
                "ORDER BY recorded_at DESC, id DESC LIMIT 1"
            ),
            {"org": org},
        )
        return result.mappings().one()


def members(group: dict[str, Any]) -> list[tuple[str, bool, bool]]:
    """(patient id, inactive, has an end) per member, in the Group's order."""
    return [
        (
            m["entity"]["reference"].removeprefix("Patient/"),
            m["inactive"],
            "end" in m["period"],
        )
        for m in group.get("member", [])
    ]


class TestRead:
    async def test_a_group_is_the_providers_primary_periods(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """Open and closed primary periods are members (inactive once ended), in start
        order; a secondary period is not attribution; `quantity` is the open ones."""
        provider = await post_provider(
            client, tenant, first_name="Grace", last_name="Hopper", npi=npi(1)
        )
        other = await post_provider(client, tenant)
        stays, leaves, moved, secondary = [await post_patient(client, tenant) for _ in range(4)]
        await assign(client, tenant, stays, provider)
        await assign(client, tenant, leaves, provider)
        await remove(client, tenant, leaves, provider)  # a closed period
        await assign(client, tenant, moved, provider)
        await assign(client, tenant, moved, other)  # closed: demoted to secondary
        await assign(client, tenant, secondary, other)
        await add_secondary(client, tenant, secondary, provider)  # not attribution

        group = valid(await read_group(client, tenant, provider))
        assert group["id"] == provider
        assert (group["type"], group["actual"], group["active"]) == ("person", True, True)
        assert group["name"] == "Attributed patients of Grace Hopper"
        assert group["identifier"] == [{"system": NPI_SYSTEM, "value": npi(1)}]
        assert group["managingEntity"] == {"reference": f"Practitioner/{provider}"}
        assert members(group) == [
            (stays, False, False),
            (leaves, True, True),
            (moved, True, True),
        ]
        assert group["quantity"] == 1
        starts = [m["period"]["start"] for m in group["member"]]
        assert starts == sorted(starts)
        assert all(m["period"]["end"] >= m["period"]["start"] for m in group["member"][1:])
        assert "meta" in group and "profile" not in group["meta"]

        # The other provider's Group: `moved` is its member now.
        assert members(valid(await read_group(client, tenant, other))) == [
            (moved, False, False),
            (secondary, False, False),
        ]

    async def test_a_patient_attributed_twice_is_two_members(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        provider, other = await post_provider(client, tenant), await post_provider(client, tenant)
        patient = await post_patient(client, tenant)
        await assign(client, tenant, patient, provider)
        await assign(client, tenant, patient, other)
        await assign(client, tenant, patient, provider)
        group = valid(await read_group(client, tenant, provider))
        assert members(group) == [(patient, True, True), (patient, False, False)]
        assert group["quantity"] == 1

    async def test_a_provider_without_members_or_npi(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        provider = await post_provider(client, tenant, first_name="Ada", last_name="Lovelace")
        group = valid(await read_group(client, tenant, provider))
        assert "member" not in group and "identifier" not in group
        assert group["quantity"] == 0
        assert group["meta"]["versionId"] == "1.0"
        summary = valid(await client.get(
            f"{FHIR}/Group/{provider}", params={"_summary": "true"}, headers=tenant.headers
        ))  # fmt: skip
        assert "tag" not in summary["meta"]  # nothing was left out

    async def test_not_found_another_organizations_inactive_or_unknown(
        self, client: httpx.AsyncClient, tenant: Tenant, make_tenant: TenantFactory
    ):
        other_tenant = await make_tenant()
        theirs = await post_provider(client, other_tenant)
        valid(await read_group(client, other_tenant, theirs))
        valid(await read_group(client, tenant, theirs), 404)
        inactive = await post_provider(client, tenant)
        patient = await post_patient(client, tenant)
        await assign(client, tenant, patient, inactive)
        valid(await read_group(client, tenant, inactive))
        await remove(client, tenant, patient, inactive)  # its panel emptied first (409 else)
        await patch_provider(client, tenant, inactive, active=False)
        valid(await read_group(client, tenant, inactive), 404)
        valid(await read_group(client, tenant, str(uuid.uuid4())), 404)
        valid(await read_group(client, tenant, "not-a-uuid"), 404)

    async def test_summary_true_leaves_the_members_out_and_says_so(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        provider = await post_provider(client, tenant, npi=npi(2))
        for patient in [await post_patient(client, tenant) for _ in range(2)]:
            await assign(client, tenant, patient, provider)
        r = await client.get(
            f"{FHIR}/Group/{provider}", params={"_summary": "true"}, headers=tenant.headers
        )
        group = valid(r)
        assert "member" not in group
        assert group["quantity"] == 2 and group["identifier"][0]["value"] == npi(2)
        assert group["meta"]["tag"][0]["code"] == SUBSETTED
        elements = valid(await client.get(
            f"{FHIR}/Group/{provider}", params={"_elements": "quantity"}, headers=tenant.headers
        ))  # fmt: skip
        # Group's mandatory elements (type, actual) are kept, so the subset is valid.
        assert set(elements) == {"resourceType", "id", "meta", "type", "actual", "quantity"}
        assert elements["meta"]["tag"][0]["code"] == SUBSETTED
        valid(await client.get(
            f"{FHIR}/Group/{provider}", params={"_elements": "nothing"}, headers=tenant.headers
        ), 400)  # fmt: skip

    async def test_no_vread_no_history_no_unknown_parameter(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        provider = await post_provider(client, tenant)
        for path in (f"/Group/{provider}/_history", f"/Group/{provider}/_history/1.0"):
            outcome = valid(await fhir_get(client, tenant, path), 400)
            assert outcome["issue"][0]["code"] == "not-supported"
        valid(await fhir_get(client, tenant, f"/Group/{provider}", member="x"), 400)
        lenient = await client.get(
            f"{FHIR}/Group/{provider}",
            params={"member": "x"},
            headers={**tenant.headers, "Prefer": "handling=lenient"},
        )
        valid(lenient)
        valid(await client.put(f"{FHIR}/Group/{provider}", headers=tenant.headers), 405)


class TestVersions:
    async def test_etag_last_modified_and_304(self, client: httpx.AsyncClient, tenant: Tenant):
        provider = await post_provider(client, tenant)
        patient = await post_patient(client, tenant)
        await assign(client, tenant, patient, provider)
        r = await read_group(client, tenant, provider)
        group = valid(r)
        version = group["meta"]["versionId"]
        assert r.headers["etag"] == f'W/"{version}"'
        modified = parsedate_to_datetime(r.headers["last-modified"])
        updated = datetime.datetime.fromisoformat(group["meta"]["lastUpdated"])
        assert modified == updated.replace(microsecond=0)
        again = await read_group(client, tenant, provider, **{"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304 and again.headers["etag"] == r.headers["etag"]
        assert (
            await read_group(client, tenant, provider, **{"If-None-Match": "*"})
        ).status_code == 304

    async def test_a_new_version_when_attribution_or_the_record_changes(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        provider, other = await post_provider(client, tenant), await post_provider(client, tenant)
        first, second, elsewhere = [await post_patient(client, tenant) for _ in range(3)]

        async def version() -> str:
            r = await read_group(client, tenant, provider)
            return str(valid(r)["meta"]["versionId"])

        start = await version()
        assert start == "1.0"
        await assign(client, tenant, first, provider)  # a member joins
        joined = await version()
        record, team = joined.split(".")
        assert record == "1" and int(team) > 0
        etag = f'W/"{joined}"'
        assert (
            await read_group(client, tenant, provider, **{"If-None-Match": etag})
        ).status_code == 304

        # A change that does not touch this provider's primary periods: the same version.
        await assign(client, tenant, elsewhere, other)
        assert await version() == joined

        await assign(client, tenant, first, other)  # its period closes
        closed = await version()
        assert closed != joined
        r = await read_group(client, tenant, provider, **{"If-None-Match": etag})
        assert r.status_code == 200 and members(valid(r)) == [(first, True, True)]

        await assign(client, tenant, second, provider)
        opened = await version()
        assert int(opened.split(".")[1]) > int(closed.split(".")[1])

        await patch_provider(client, tenant, provider, last_name="Renamed")
        renamed = await version()
        assert renamed.split(".") == ["2", opened.split(".")[1]]
        group = valid(await read_group(client, tenant, provider))
        assert group["name"].endswith(" Renamed")


class TestSearch:
    async def test_identifier_in_every_token_form(self, client: httpx.AsyncClient, tenant: Tenant):
        with_npi = await post_provider(client, tenant, npi="1234567893")
        other_npi = await post_provider(client, tenant, npi=npi(3))
        without = await post_provider(client, tenant)

        async def found(value: str) -> set[str]:
            bundle = valid(await fhir_get(client, tenant, "/Group", identifier=value))
            return set(ids(bundle))

        assert await found(f"{NPI_SYSTEM}|1234567893") == {with_npi}
        assert await found("1234567893") == {with_npi}
        assert await found("|1234567893") == set()  # the NPI has a system
        assert await found(f"{NPI_SYSTEM}|") == {with_npi, other_npi}
        assert await found("urn:other|1234567893") == set()
        assert await found(f"1234567893,{npi(3)}") == {with_npi, other_npi}
        not_npi = valid(await fhir_get(client, tenant, "/Group", **{"identifier:missing": "true"}))
        assert ids(not_npi) == [without]

    async def test_name_and_id_and_result_parameters(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        grace = await post_provider(client, tenant, first_name="Grace", last_name="Núñez")
        ada = await post_provider(client, tenant, first_name="Ada", last_name="Lovelace")
        patient = await post_patient(client, tenant)
        await assign(client, tenant, patient, grace)

        async def found(**params: str) -> list[str]:
            return ids(valid(await fhir_get(client, tenant, "/Group", **params)))

        assert set(await found(name="attributed patients of")) == {grace, ada}
        assert await found(name="Attributed patients of grace nun") == [grace]
        assert await found(**{"name:contains": "nunez"}) == [grace]
        assert await found(name="nunez") == []  # the start of the name, as FHIR says
        assert await found(**{"name:exact": "Attributed patients of Ada Lovelace"}) == [ada]
        assert await found(_id=ada) == [ada]
        assert sorted(await found(_lastUpdated="ge2000")) == sorted([grace, ada])

        summary = valid(await fhir_get(client, tenant, "/Group", _id=grace, _summary="true"))
        shown = summary["entry"][0]["resource"]
        assert "member" not in shown and shown["meta"]["tag"][0]["code"] == SUBSETTED
        full = valid(await fhir_get(client, tenant, "/Group", _id=grace))
        assert members(full["entry"][0]["resource"]) == [(patient, False, False)]

        counted = valid(await fhir_get(client, tenant, "/Group", _total="accurate", _count="1"))
        assert counted["total"] == 2 and len(counted["entry"]) == 1
        next_url = next(link["url"] for link in counted["link"] if link["relation"] == "next")
        rest = valid(await client.get(next_url, headers=tenant.headers))
        assert len(rest["entry"]) == 1
        assert {*ids(counted), *ids(rest)} == {grace, ada}
        assert valid(await fhir_get(client, tenant, "/Group", _summary="count"))["total"] == 2
        by_name = await found(_sort="-name")
        assert by_name == [grace, ada]

        posted = await client.post(
            f"{FHIR}/Group/_search",
            data={"name": "attributed patients of ada"},
            headers=tenant.headers,
        )
        assert ids(valid(posted)) == [ada]

    async def test_strict_unless_lenient_and_no_includes(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        await post_provider(client, tenant)
        for params in ({"member": "x"}, {"type": "person"}, {"name:text": "a"}):
            valid(await fhir_get(client, tenant, "/Group", **params), 400)
        valid(await fhir_get(client, tenant, "/Group", _include="Group:member"), 400)
        lenient = await client.get(
            f"{FHIR}/Group",
            params={"member": "x"},
            headers={**tenant.headers, "Prefer": "handling=lenient"},
        )
        assert "member" not in valid(lenient)["link"][0]["url"]

    async def test_inactive_providers_have_no_group_to_find(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        active = await post_provider(client, tenant)
        inactive = await post_provider(client, tenant)
        await patch_provider(client, tenant, inactive, active=False)
        assert ids(valid(await fhir_get(client, tenant, "/Group"))) == [active]


class TestCapabilities:
    async def test_group_is_declared_as_served(self, client: httpx.AsyncClient):
        statement = valid(await fhir_get(client, None, "/metadata"))
        group = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Group")
        assert [i["code"] for i in group["interaction"]] == ["read", "search-type"]
        assert group["readHistory"] is False and "supportedProfile" not in group
        assert {p["name"] for p in group["searchParam"]} == {
            "_id",
            "identifier",
            "name",
            "_lastUpdated",
        }


class TestAccess:
    @pytest.mark.parametrize(
        "case",
        [
            (["system/Patient.rs", "system/Practitioner.rs"], 403, 403),
            (["system/Group.r"], 200, 403),
            (["system/Group.s"], 403, 200),
            (["system/*.rs"], 200, 200),
        ],
        ids=["patients-not-groups", "read-only", "search-only", "wildcard"],
    )
    async def test_scopes(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        case: tuple[list[str], int, int],
    ):
        """A Group needs its own scope (read or search); system/*.rs covers it; no
        Patient scope is needed for its members (references, ids only)."""
        scopes, read, search = case
        provider = await post_provider(client, tenant)
        headers = await headers_with(database, tenant, scopes)
        r = await client.get(f"{FHIR}/Group/{provider}", headers=headers)
        valid(r, read)
        if read == 403:
            assert 'scope="system/Group.r"' in r.headers["www-authenticate"]
        r = await client.get(f"{FHIR}/Group", headers=headers)
        valid(r, search)
        if search == 403:
            assert 'error="insufficient_scope"' in r.headers["www-authenticate"]
            assert 'scope="system/Group.s"' in r.headers["www-authenticate"]

    async def test_the_access_log_records_the_members_shown(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        provider = await post_provider(client, tenant)
        patients = [await post_patient(client, tenant) for _ in range(2)]
        for patient in patients:
            await assign(client, tenant, patient, provider)
        await remove(client, tenant, patients[1], provider)  # a closed period: still shown
        valid(await read_group(client, tenant, provider))
        entry = await last_log_entry(database, tenant.organization_id)
        assert entry["route"] == "GET /fhir/R4/Group/{ident}"
        assert (entry["interaction"], entry["action"]) == ("read", "R")
        assert sorted(entry["patient_ids"]) == sorted(uuid.UUID(p) for p in patients)

        valid(await client.get(
            f"{FHIR}/Group/{provider}", params={"_summary": "true"}, headers=tenant.headers
        ))  # fmt: skip
        entry = await last_log_entry(database, tenant.organization_id)
        assert entry["patient_ids"] == []  # no member was shown

        valid(await fhir_get(client, tenant, "/Group", _id=provider))
        entry = await last_log_entry(database, tenant.organization_id)
        assert entry["route"] == "GET /fhir/R4/Group"
        assert sorted(entry["patient_ids"]) == sorted(uuid.UUID(p) for p in patients)
        assert entry["result_count"] == 1
