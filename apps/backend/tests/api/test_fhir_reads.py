"""FHIR reads, versions and the edges of the FHIR view (FHIR R4 http.html): meta.versionId
and meta.lastUpdated agree with /v1's versions, ETag and If-None-Match, vread and instance
history, the organization's own Organization, content negotiation, POST _search, and an
OperationOutcome (never a /v1 problem, never the path echoed) for everything else."""

from __future__ import annotations

import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest

from tests.api.test_fhir import FHIR, fhir_get, ids, team_of, valid
from tests.helpers import Tenant, TenantFactory, post_patient, post_provider


async def read(client: httpx.AsyncClient, tenant: Tenant, path: str, **headers: str) -> Any:
    return await client.get(f"{FHIR}{path}", headers={**tenant.headers, **headers})


def primary_of(patient: dict[str, Any]) -> str | None:
    refs = patient.get("generalPractitioner", [])
    return refs[0]["reference"].removeprefix("Practitioner/") if refs else None


class TestVersions:
    async def test_a_patients_version_is_its_records_and_its_care_teams(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """The Patient shows its primary (generalPractitioner): a new primary is a new
        version, so an ETag taken before it is not answered 304 with the old primary."""
        patient = await post_patient(client, tenant)
        first, second = await post_provider(client, tenant), await post_provider(client, tenant)
        r = await read(client, tenant, f"/Patient/{patient}")
        body = valid(r)
        assert body["meta"]["versionId"] == "1.0"
        assert r.headers["etag"] == 'W/"1.0"'
        v1 = await client.get(f"/v1/patients/{patient}", headers=tenant.headers)
        assert v1.headers["etag"] == '"p1.0"'  # /v1's patient: the same r.t

        await team_of(client, tenant, patient, first)
        r = await read(client, tenant, f"/Patient/{patient}")
        after_first = valid(r)
        record, team = after_first["meta"]["versionId"].split(".")
        team_etag = (
            await client.get(f"/v1/patients/{patient}/care-team", headers=tenant.headers)
        ).headers["etag"]
        assert record == "1" and team_etag.startswith(f'"t{team}.')
        v1 = await client.get(f"/v1/patients/{patient}", headers=tenant.headers)
        assert v1.headers["etag"] == f'"p{record}.{team}"'
        assert primary_of(after_first) == first
        etag = r.headers["etag"]
        assert (
            await read(client, tenant, f"/Patient/{patient}", **{"If-None-Match": etag})
        ).status_code == 304

        await team_of(client, tenant, patient, second)
        r = await read(client, tenant, f"/Patient/{patient}", **{"If-None-Match": etag})
        assert primary_of(valid(r)) == second and r.headers["etag"] != etag

        await client.patch(
            f"/v1/patients/{patient}", json={"last_name": "Renamed"}, headers=tenant.headers
        )
        now = valid(await read(client, tenant, f"/Patient/{patient}"))
        assert now["meta"]["versionId"].startswith("2.")

        # Every version the history lists reads back as it was.
        history = valid(await read(client, tenant, f"/Patient/{patient}/_history"))
        assert history["type"] == "history" and history["total"] == len(history["entry"])
        listed = [e["response"]["etag"] for e in history["entry"]]
        assert listed[0] == f'W/"{now["meta"]["versionId"]}"'
        assert listed[-1] == 'W/"1.0"'
        assert len(listed) == 4 and len(set(listed)) == 4
        seen = []
        for entry in history["entry"]:
            version = entry["resource"]["meta"]["versionId"]
            assert entry["response"]["etag"] == f'W/"{version}"'
            r = await read(client, tenant, f"/Patient/{patient}/_history/{version}")
            assert valid(r) == entry["resource"]
            assert r.headers["etag"] == f'W/"{version}"'
            seen.append((primary_of(entry["resource"]), entry["resource"]["name"][0]["family"]))
        assert seen == [
            (second, "Renamed"),
            (second, "Example"),
            (first, "Example"),
            (None, "Example"),
        ]

    async def test_a_practitioners_versions_follow_its_record(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        provider = await post_provider(client, tenant, npi="1234567893")
        await client.patch(
            f"/v1/providers/{provider}", json={"last_name": "Moved"}, headers=tenant.headers
        )
        r = await read(client, tenant, f"/Practitioner/{provider}")
        assert valid(r)["meta"]["versionId"] == "2" and r.headers["etag"] == 'W/"2"'
        old = valid(await read(client, tenant, f"/Practitioner/{provider}/_history/1"))
        assert old["name"][0]["family"] == "Doctor" and old["meta"]["versionId"] == "1"
        assert old["identifier"][0]["value"] == "1234567893"
        history = valid(await read(client, tenant, f"/Practitioner/{provider}/_history"))
        assert [e["response"]["etag"] for e in history["entry"]] == ['W/"2"', 'W/"1"']
        assert [e["request"]["method"] for e in history["entry"]] == ["PUT", "POST"]
        for missing in ("3", "0", "1.0", "x"):
            valid(await read(client, tenant, f"/Practitioner/{provider}/_history/{missing}"), 404)

    async def test_a_care_teams_version_is_its_last_event_and_only_the_current_is_kept(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient = await post_patient(client, tenant)
        first, second = await post_provider(client, tenant), await post_provider(client, tenant)
        await team_of(client, tenant, patient, first)
        old = valid(await read(client, tenant, f"/CareTeam/{patient}"))["meta"]["versionId"]
        await team_of(client, tenant, patient, second)
        r = await read(client, tenant, f"/CareTeam/{patient}")
        now = valid(r)["meta"]["versionId"]
        team_etag = (
            await client.get(f"/v1/patients/{patient}/care-team", headers=tenant.headers)
        ).headers["etag"]
        assert team_etag.startswith(f'"t{now}.') and int(now) > int(old)
        gone = valid(await read(client, tenant, f"/CareTeam/{patient}/_history/{old}"), 404)
        assert "not kept" in gone["issue"][0]["diagnostics"]
        history = valid(await read(client, tenant, f"/CareTeam/{patient}/_history"))
        versions = [e["response"]["etag"] for e in history["entry"]]
        assert versions[0] == f'W/"{now}"' and f'W/"{old}"' in versions
        # The second team_of is one change (a new primary, the old one kept as secondary):
        # one transaction's events are one version, never two.
        times = [e["response"]["lastModified"] for e in history["entry"]]
        assert len(times) == len(set(times))
        # A version whose content is not kept: no resource, and a PUT (not a DELETE).
        past = [e for e in history["entry"] if "resource" not in e]
        assert past and all(e["request"]["method"] in ("PUT", "POST") for e in past)
        assert history["entry"][0]["resource"]["meta"]["versionId"] == now

    async def test_last_modified_is_meta_last_updated(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient = await post_patient(client, tenant)
        r = await read(client, tenant, f"/Patient/{patient}")
        updated = datetime.datetime.fromisoformat(valid(r)["meta"]["lastUpdated"])
        assert parsedate_to_datetime(r.headers["last-modified"]) == updated.replace(microsecond=0)
        star = await read(client, tenant, f"/Patient/{patient}", **{"If-None-Match": "*"})
        assert star.status_code == 304

    async def test_another_tenants_versions_are_not_found(
        self, client: httpx.AsyncClient, make_tenant: TenantFactory
    ):
        a, b = await make_tenant(), await make_tenant()
        patient = await post_patient(client, a)
        provider = await post_provider(client, a)
        for path in (
            f"/Patient/{patient}/_history",
            f"/Patient/{patient}/_history/1.0",
            f"/Practitioner/{provider}/_history/1",
            f"/Organization/{a.organization_id}",
        ):
            valid(await read(client, b, path), 404)
            assert (await read(client, a, path)).status_code == 200, path


class TestOrganization:
    async def test_managing_organization_resolves_to_the_tenants_own(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient = valid(
            await read(client, tenant, f"/Patient/{await post_patient(client, tenant)}")
        )
        reference = patient["managingOrganization"]["reference"]
        organization = valid(await read(client, tenant, f"/{reference}"))
        assert organization["resourceType"] == "Organization"
        assert organization["id"] == str(tenant.organization_id) and organization["name"]
        valid(await fhir_get(client, tenant, "/Organization"), 400)


class TestNegotiation:
    @pytest.mark.parametrize(
        ("accept", "status"),
        [
            ("application/fhir+json; fhirVersion=3.0", 406),
            ("application/fhir+json; fhirVersion=4.0", 200),
            ("application/fhir+json; fhirVersion=3.0, application/json; fhirVersion=4.0", 200),
            # RFC 9110 12.5.1: the most specific range decides; q=0 refuses.
            ("application/fhir+json;q=0, */*", 200),  # application/json through */*
            ("application/*;q=0, */*", 406),
            ("application/fhir+json;q=abc", 406),  # a malformed weight: left out
            ("application/fhir+json;q=0.5", 200),
        ],
    )
    async def test_a_fhir_version_other_than_r4_is_406(
        self, client: httpx.AsyncClient, tenant: Tenant, accept: str, status: int
    ):
        valid(await read(client, tenant, "/Patient", Accept=accept), status)

    async def test_the_next_link_keeps_format(self, client: httpx.AsyncClient, tenant: Tenant):
        for _ in range(2):
            await post_patient(client, tenant)
        first = valid(await fhir_get(client, tenant, "/Patient", _count="1", _format="json"))
        nxt = next(link["url"] for link in first["link"] if link["relation"] == "next")
        assert "_format=json" in nxt and "_format=json" in first["link"][0]["url"]
        valid(await client.get(nxt, headers=tenant.headers))

    async def test_format_written_with_an_unescaped_plus_and_metadata_xml(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        # A + left unescaped in a query string arrives as a space.
        r = await client.get(
            f"{FHIR}/Patient?_format=application/fhir+json", headers=tenant.headers
        )
        valid(r)
        valid(await client.get(f"{FHIR}/metadata?_format=xml"), 406)
        valid(await client.get(f"{FHIR}/metadata?_format=application/fhir%2Bxml"), 406)
        valid(await client.get(f"{FHIR}/metadata?_format=json"))


class TestEverythingAnswersFhir:
    async def test_post_search_is_the_get_search(self, client: httpx.AsyncClient, tenant: Tenant):
        ana = await post_patient(client, tenant, last_name="Núñez")
        await post_patient(client, tenant, last_name="Other")
        body = "family=nunez&_total=accurate"
        r = await client.post(
            f"{FHIR}/Patient/_search",
            content=body,
            headers={**tenant.headers, "Content-Type": "application/x-www-form-urlencoded"},
        )
        bundle = valid(r)
        assert ids(bundle) == [ana] and bundle["total"] == 1
        got = valid(await fhir_get(client, tenant, "/Patient", family="nunez", _total="accurate"))
        assert ids(got) == ids(bundle)
        as_json = await client.post(
            f"{FHIR}/Patient/_search", json={"family": "x"}, headers=tenant.headers
        )
        valid(as_json, 415)
        unknown = await client.post(
            f"{FHIR}/Patient/_search",
            content="colour=blue",
            headers={**tenant.headers, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert "colour" in valid(unknown, 400)["issue"][0]["diagnostics"]

    @pytest.mark.parametrize(
        "case",
        [
            ("POST", "", 405, "read-only"),
            ("OPTIONS", "/Patient", 405, "read-only"),
            ("PATCH", "/Patient/x", 405, "read-only"),
            ("GET", "/_history", 400, "history"),
            ("GET", "/Patient/_history", 400, "history"),
            ("GET", "/Patient/0b3c0e1e-2a0b-4a44-9f5e-6f1d8f0f1a11/$everything", 400, "operation"),
            ("GET", "/Patient/$match", 400, "operation"),
            ("GET", "/Patient/0b3c0e1e-2a0b-4a44-9f5e-6f1d8f0f1a11/CareTeam", 400, "compartment"),
            ("GET", "/Observation", 404, "not served"),
        ],
    )
    async def test_other_methods_and_paths_name_what_is_not_supported(
        self, client: httpx.AsyncClient, tenant: Tenant, case: tuple[str, str, int, str]
    ):
        method, path, status, says = case
        r = await client.request(method, f"{FHIR}{path}", headers=tenant.headers)
        outcome = valid(r, status)
        assert says in outcome["issue"][0]["diagnostics"]

    async def test_a_method_without_a_route_answers_fhir(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """PROPFIND and TRACE under /fhir/R4 were 405 problem+json listing /v1's methods."""
        for method in ("PROPFIND", "TRACE"):
            r = await client.request(method, f"{FHIR}/Patient", headers=tenant.headers)
            assert valid(r, 405)["issue"][0]["code"] == "not-supported"
            assert r.headers["allow"] == "GET, HEAD"

    async def test_a_form_body_too_large_is_an_operation_outcome(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        r = await client.post(
            f"{FHIR}/Patient/_search",
            content="family=" + "a" * 70_000,
            headers={**tenant.headers, "Content-Type": "application/x-www-form-urlencoded"},
        )
        valid(r, 413)

    async def test_what_a_newcomer_tried(self, client: httpx.AsyncClient, tenant: Tenant):
        """A newcomer's trial, each answer as it was: another FHIR base said "GET is not
        supported"; GET Patient/_search?name=x was read as the id _search; a POST search
        without a body needed a Content-Type; Organization history was a plain 404."""
        r = await client.get("/fhir/R5/Patient", headers=tenant.headers)
        assert "/fhir/R4" in valid(r, 404)["issue"][0]["diagnostics"]
        r = await client.get(
            f"{FHIR}/Patient/_search", params={"name": "x"}, headers=tenant.headers
        )
        assert "takes POST" in valid(r, 405)["issue"][0]["diagnostics"]
        patient = await post_patient(client, tenant, last_name="Garcia")
        r = await client.post(f"{FHIR}/Patient/_search?family=garc", headers=tenant.headers)
        assert ids(valid(r)) == [patient]
        org = tenant.organization_id
        for path in (f"/Organization/{org}/_history", f"/Organization/{org}/_history/1"):
            valid(await read(client, tenant, path), 400)
        r = await client.post(
            f"{FHIR}/Organization/_search",
            content="name=x",
            headers={**tenant.headers, "Content-Type": "application/x-www-form-urlencoded"},
        )
        assert "read only" in valid(r, 400)["issue"][0]["diagnostics"]

    async def test_reads_take_summary_elements_and_pretty(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient = await post_patient(client, tenant, identifiers=[{"system": "s", "value": "1"}])
        body = valid(await fhir_get(client, tenant, f"/Patient/{patient}", _elements="name"))
        assert set(body) == {"resourceType", "id", "meta", "name"}
        assert body["meta"]["tag"][0]["code"] == "SUBSETTED"
        summary = valid(await fhir_get(client, tenant, f"/Patient/{patient}", _summary="true"))
        assert "managingOrganization" in summary and "generalPractitioner" not in summary
        valid(await fhir_get(client, tenant, f"/Patient/{patient}", _pretty="true"))
        valid(await fhir_get(client, tenant, "/Patient", _pretty="true"))
        for bad in ({"_summary": "count"}, {"_pretty": "yes"}, {"_elements": "colour"}):
            valid(await fhir_get(client, tenant, f"/Patient/{patient}", **bad), 400)
        history = await fhir_get(client, tenant, f"/Patient/{patient}/_history", _count="1")
        assert "for a history" in valid(history, 400)["issue"][0]["diagnostics"]

    async def test_no_value_is_repeated_in_a_diagnostic(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """`birthdate=1980-02-30` answered "1980-02-30 is not a date": a birth date in an
        error. Values are described, never repeated."""
        for params in (
            {"birthdate": "1980-02-30"},
            {"birthdate": "1980-02-29T25:00:00Z"},
            {"_sort": "Garcia"},
            {"_elements": "Garcia"},
            {"_include": "Garcia"},
            {"general-practitioner": "Garcia/x"},
        ):
            outcome = valid(await fhir_get(client, tenant, "/Patient", **params), 400)
            text = outcome["issue"][0]["diagnostics"]
            assert "1980" not in text and "Garcia" not in text, (params, text)
        spaced = await fhir_get(client, tenant, "/Patient", birthdate="1980-02-29T10:00:00 05:30")
        assert "%2B" in valid(spaced, 400)["issue"][0]["diagnostics"]

    async def test_a_total_of_none_with_nothing_else_asked_is_400(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        for params in ({"_summary": "count", "_total": "none"}, {"_count": "0", "_total": "none"}):
            valid(await fhir_get(client, tenant, "/Patient", **params), 400)

    async def test_a_path_is_never_echoed(self, client: httpx.AsyncClient, tenant: Tenant):
        for path in ("/CareTeam/not-a-uuid<script>", "/Patient/<b>x</b>/_history", "/<img>"):
            r = await client.get(f"{FHIR}{path}", headers=tenant.headers)
            outcome = valid(r, 404)
            assert "<" not in outcome["issue"][0]["diagnostics"], path

    async def test_an_empty_searchset_has_no_entry_and_says_its_total(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        bundle = valid(
            await fhir_get(client, tenant, "/Patient", family="nobody", _total="accurate")
        )
        assert "entry" not in bundle and bundle["total"] == 0
