"""The FHIR R4 view: every response parses and validates with the fhir.resources R4B
models; searches page and include as FHIR servers do; tenants stay apart; a client
nobody on the team wrote (fhirpy) reads it end to end."""

from __future__ import annotations

import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.careteam import CareTeam
from fhir.resources.R4B.group import Group
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.practitioner import Practitioner
from sqlalchemy.ext.asyncio import AsyncSession

from src.db import Database
from src.services.organization_service import OrganizationService
from tests.fhir_validation import check_fhir
from tests.helpers import LiveApi, Tenant, TenantFactory, post_patient, post_provider

FHIR = "/fhir/R4"
MODELS: dict[str, Any] = {
    "AuditEvent": AuditEvent,
    "Bundle": Bundle,
    "CapabilityStatement": CapabilityStatement,
    "CareTeam": CareTeam,
    "Group": Group,
    "OperationOutcome": OperationOutcome,
    "Organization": Organization,
    "Patient": Patient,
    "Practitioner": Practitioner,
}
PRIMARY_CARE = "453231000124104"


# Every response valid() sees goes through every validator of tests/fhir_validation.py (the
# R4B models, the official R4 JSON schema, FHIRPath invariants and meta.profile's profiles).
STRICT_FHIR = True


def valid(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    """The body, checked: the status, FHIR JSON, and valid as its R4B model (a Bundle's
    entries each as theirs) and, with STRICT_FHIR, by every validator of check_fhir."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body: dict[str, Any] = response.json()
    MODELS[body["resourceType"]].model_validate(body)
    for entry in body.get("entry", []):
        if "resource" in entry:  # a history's version whose content is not kept has none
            MODELS[entry["resource"]["resourceType"]].model_validate(entry["resource"])
    if STRICT_FHIR:
        check_fhir(body)
    return body


async def fhir_get(
    client: httpx.AsyncClient, tenant: Tenant | None, path: str, **params: Any
) -> httpx.Response:
    headers = tenant.headers if tenant else {}
    return await client.get(FHIR + path, params=params, headers=headers)


async def team_of(client: httpx.AsyncClient, tenant: Tenant, patient: str, *providers: str) -> None:
    """`providers[0]` primary, the others secondaries."""
    url = f"/v1/patients/{patient}/care-team"
    await client.put(f"{url}/primary", json={"provider_id": providers[0]}, headers=tenant.headers)
    for other in providers[1:]:
        await client.post(f"{url}/members", json={"provider_id": other}, headers=tenant.headers)


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


class TestCapabilities:
    async def test_metadata_without_a_key(self, client: httpx.AsyncClient):
        statement = valid(await fhir_get(client, None, "/metadata"))
        assert statement["fhirVersion"] == "4.0.1"
        assert statement["format"] == ["application/fhir+json", "json"]
        resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
        assert set(resources) == {
            "AuditEvent",
            "CareTeam",
            "Group",
            "Organization",
            "Patient",
            "Practitioner",
        }
        assert {p["name"] for p in resources["CareTeam"]["searchParam"]} >= {
            "patient",
            "subject",
            "status",
            "participant",
            "date",
            "_id",
            "_lastUpdated",
        }
        assert "CareTeam:participant:Practitioner" in resources["CareTeam"]["searchInclude"]
        assert "CareTeam:patient" in resources["Patient"]["searchRevInclude"]


class TestCareTeam:
    async def test_read_has_the_us_core_essentials_and_every_period(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient = await post_patient(client, tenant)
        first, second, third = [await post_provider(client, tenant) for _ in range(3)]
        await team_of(client, tenant, patient, first, third)
        await team_of(client, tenant, patient, second)  # second becomes the primary
        team = valid(await fhir_get(client, tenant, f"/CareTeam/{patient}"))
        assert team["id"] == patient and team["status"] == "active"
        assert team["subject"] == {"reference": f"Patient/{patient}"}
        assert team["managingOrganization"] == [
            {"reference": f"Organization/{tenant.organization_id}"}
        ]
        roles = [
            (p["member"]["reference"], p["role"][0]["coding"][0]["code"], "end" in p["period"])
            for p in team["participant"]
        ]
        # first: primary (ended), then secondary (open); third secondary; second primary.
        assert (f"Practitioner/{first}", PRIMARY_CARE, True) in roles
        assert (f"Practitioner/{second}", PRIMARY_CARE, False) in roles
        assert sum(1 for _, code, open_ in roles if code == PRIMARY_CARE and not open_) == 1
        assert all(p["period"]["start"] for p in team["participant"])

    async def test_a_team_whose_periods_all_ended_is_inactive(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient, provider = await post_patient(client, tenant), await post_provider(client, tenant)
        await team_of(client, tenant, patient, provider)
        await client.delete(
            f"/v1/patients/{patient}/care-team/members/{provider}", headers=tenant.headers
        )
        team = valid(await fhir_get(client, tenant, f"/CareTeam/{patient}"))
        assert team["status"] == "inactive" and "end" in team["participant"][0]["period"]
        active = valid(
            await fhir_get(client, tenant, "/CareTeam", patient=patient, status="active")
        )
        assert ids(active) == []
        either = valid(
            await fhir_get(client, tenant, "/CareTeam", patient=patient, status="active,inactive")
        )
        assert ids(either) == [patient]

    async def test_a_patient_without_a_team_has_no_careteam(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient = await post_patient(client, tenant)
        valid(await fhir_get(client, tenant, f"/CareTeam/{patient}"), 404)

    async def test_paging_by_next_links(self, client: httpx.AsyncClient, tenant: Tenant):
        provider = await post_provider(client, tenant)
        patients = [await post_patient(client, tenant) for _ in range(5)]
        for patient in patients:
            await team_of(client, tenant, patient, provider)
        seen: list[str] = []
        response = await fhir_get(
            client, tenant, "/CareTeam", participant=f"Practitioner/{provider}", _count=2
        )
        pages = 0
        while True:
            bundle = valid(response)
            pages += 1
            assert all(
                e["fullUrl"].startswith("http://careteam.test/fhir/R4/CareTeam/")
                for e in bundle["entry"]
            )
            seen += ids(bundle)
            links = {link["relation"]: link["url"] for link in bundle["link"]}
            assert "participant=Practitioner" in links["self"] and "_count=2" in links["self"]
            if "next" not in links:
                break
            parts = urlsplit(links["next"])
            response = await client.get(f"{parts.path}?{parts.query}", headers=tenant.headers)
        assert pages == 3 and sorted(seen) == sorted(patients) and len(set(seen)) == 5

    async def test_include_returns_each_practitioner_once(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        shared, other = await post_provider(client, tenant), await post_provider(client, tenant)
        for _ in range(3):
            await team_of(client, tenant, await post_patient(client, tenant), shared, other)
        bundle = valid(
            await fhir_get(
                client,
                tenant,
                "/CareTeam",
                participant=f"Practitioner/{shared}",
                _include="CareTeam:participant",
            )
        )
        assert len(ids(bundle)) == 3
        assert sorted(ids(bundle, "include")) == sorted([shared, other])

    async def test_date_before_and_after_the_team_began(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """An open team's period (since today) against day and month values: `eq` needs
        the search range to contain the whole period, which an open period never is
        (search.html 3.1.1.4.5); ge/sa/eb place it in time."""
        patient, provider = await post_patient(client, tenant), await post_provider(client, tenant)
        await team_of(client, tenant, patient, provider)
        today = datetime.datetime.now(datetime.UTC).date()
        yesterday = (today - datetime.timedelta(days=1)).isoformat()

        async def found(date: str) -> list[str]:
            bundle = await fhir_get(client, tenant, "/CareTeam", patient=patient, date=date)
            return ids(valid(bundle))

        assert await found(today.isoformat()) == []
        assert await found(today.strftime("%Y-%m")) == []
        assert await found(f"ge{yesterday}") == [patient]
        assert await found(f"sa{yesterday}") == [patient]
        assert await found(f"eb{yesterday}") == []
        assert await found(f"lt{yesterday}") == []


class TestPatientAndPractitioner:
    async def test_general_practitioner_follows_the_primary(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient = await post_patient(
            client, tenant, identifiers=[{"system": "urn:mrn", "value": "M-7"}]
        )
        first, second = await post_provider(client, tenant), await post_provider(client, tenant)
        read = valid(await fhir_get(client, tenant, f"/Patient/{patient}"))
        assert "generalPractitioner" not in read
        assert read["identifier"] == [{"system": "urn:mrn", "value": "M-7"}]
        assert read["birthDate"] == "1984-02-29" and read["name"][0]["family"] == "Example"
        await team_of(client, tenant, patient, first)
        read = valid(await fhir_get(client, tenant, f"/Patient/{patient}"))
        assert read["generalPractitioner"] == [{"reference": f"Practitioner/{first}"}]
        await team_of(client, tenant, patient, second)
        found = valid(await fhir_get(client, tenant, "/Patient", identifier="urn:mrn|M-7"))
        assert found["entry"][0]["resource"]["generalPractitioner"] == [
            {"reference": f"Practitioner/{second}"}
        ]

    async def test_patient_and_practitioner_searches(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        ada = await post_patient(client, tenant, first_name="Ada", dob="1970-01-02")
        await post_patient(client, tenant, first_name="Bob")
        grace = await post_provider(client, tenant, first_name="Grace", npi="1234567893")
        assert ids(valid(await fhir_get(client, tenant, "/Patient", name="ad"))) == [ada]
        assert ids(valid(await fhir_get(client, tenant, "/Patient", birthdate="1970-01-02"))) == [
            ada
        ]
        npi = valid(
            await fhir_get(
                client,
                tenant,
                "/Practitioner",
                identifier="http://hl7.org/fhir/sid/us-npi|1234567893",
            )
        )
        assert ids(npi) == [grace]
        assert npi["entry"][0]["resource"]["identifier"][0]["value"] == "1234567893"
        assert ids(
            valid(await fhir_get(client, tenant, "/Practitioner", name="gr", active="true"))
        ) == [grace]
        assert (
            ids(
                valid(
                    await fhir_get(
                        client, tenant, "/Practitioner", identifier="urn:other|1234567893"
                    )
                )
            )
            == []
        )
        valid(await fhir_get(client, tenant, f"/Practitioner/{grace}"))


class TestErrorsAndFormats:
    @pytest.mark.parametrize(
        ("path", "params"),
        [
            ("/CareTeam", {"_count": "abc"}),
            ("/CareTeam", {"_count": "²"}),
            ("/CareTeam", {"date": "9999"}),
            ("/CareTeam", {"date": "9999-12-31"}),
            ("/CareTeam", {"date": "0000"}),
            ("/Patient", {"name": "a\x00b"}),
            ("/Patient", {"identifier": "a|b\x00"}),
            ("/Practitioner", {"identifier": "12\x00"}),
            ("/CareTeam", {"date": "2026-13-01"}),
            ("/CareTeam", {"status": "bogus"}),
            ("/CareTeam", {"_cursor": "!!"}),
            ("/Patient", {"birthdate": "1970-02-30"}),
            ("/Practitioner", {"active": "maybe"}),
            # An escape of anything but a comma, a bar, a dollar or a backslash.
            ("/Patient", {"name": "Zelda\\xAda"}),
            ("/Patient", {"name": "Zelda\\"}),
        ],
    )
    async def test_a_malformed_parameter_is_400(
        self, client: httpx.AsyncClient, tenant: Tenant, path: str, params: dict[str, str]
    ):
        outcome = valid(await fhir_get(client, tenant, path, **params), 400)
        assert outcome["issue"][0]["code"] == "invalid"

    async def test_unknown_parameters_are_400_unless_handling_is_lenient(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """A search that ignored what it did not understand answered wrong without saying
        so: strict by default, lenient only when the client asks (FHIR's Prefer)."""
        strict = await client.get(
            f"{FHIR}/CareTeam", params={"colour": "blue"}, headers=tenant.headers
        )
        diagnostics = valid(strict, 400)["issue"][0]["diagnostics"]
        assert "colour" in diagnostics and "handling=lenient" in diagnostics  # how to ask
        asked = await client.get(
            f"{FHIR}/Patient",
            params={"nmae": "x"},
            headers={**tenant.headers, "Prefer": "handling=strict"},
        )
        valid(asked, 400)
        lenient = await client.get(
            f"{FHIR}/CareTeam",
            params={"colour": "blue"},
            headers={**tenant.headers, "Prefer": "return=minimal, handling=lenient"},
        )
        assert "colour" not in valid(lenient)["link"][0]["url"]

    async def test_escaped_commas_bars_and_backslashes_find_what_holds_them(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """Values /v1 accepts may hold a comma or a backslash: FHIR finds them through its
        escapes (\\, \\| \\\\); a bare comma is an OR, and a second bare bar is 400."""
        patient = await post_patient(
            client,
            tenant,
            last_name="Smith, Jr",
            identifiers=[
                {"system": "urn:mrn", "value": "12,345"},
                {"system": "urn:b", "value": "A\\B|C"},
            ],
        )
        for params in (
            {"identifier": "urn:mrn|12\\,345"},
            {"identifier": "urn:b|A\\\\B\\|C"},
            {"name": "Smith\\, J"},
        ):
            bundle = valid(await fhir_get(client, tenant, "/Patient", **params))
            assert [e["resource"]["id"] for e in bundle["entry"]] == [patient], params
        valid(await fhir_get(client, tenant, "/Patient", identifier="urn:b|A\\\\B|C"), 400)
        # urn:mrn|12 OR 345; Smith OR " J"
        assert (
            ids(valid(await fhir_get(client, tenant, "/Patient", identifier="urn:mrn|12,345")))
            == []
        )
        assert ids(valid(await fhir_get(client, tenant, "/Patient", name="Smith, J"))) == [patient]

    async def test_an_npi_without_a_system_is_not_an_npi(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """`identifier=|1234567893` (FHIR: a code with no system) matched the NPI."""
        await post_provider(client, tenant, npi="1234567893")
        for token, found in (("1234567893", 1), ("|1234567893", 0)):
            bundle = valid(await fhir_get(client, tenant, "/Practitioner", identifier=token))
            assert len(bundle.get("entry", [])) == found, token

    @pytest.mark.parametrize(
        "query",
        ["_count=1&_count=50", "_format=json&_format=json", "name=%C3%28"],
    )
    async def test_a_repeated_paging_parameter_or_a_query_not_utf8_is_400(
        self, client: httpx.AsyncClient, tenant: Tenant, query: str
    ):
        """`_count=1&_count=50` took the last; `name=%C3%28` searched for U+FFFD."""
        r = await client.get(f"{FHIR}/Patient?{query}", headers=tenant.headers)
        assert valid(r, 400)["issue"][0]["code"] == "invalid"

    async def test_a_read_refuses_parameters_it_does_not_take_unless_lenient(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """GET Patient/{id}?foo=1 answered 200 as if foo had been understood."""
        patient = await post_patient(client, tenant)
        await team_of(client, tenant, patient, await post_provider(client, tenant))
        for path in (f"/Patient/{patient}", f"/CareTeam/{patient}"):
            outcome = valid(await fhir_get(client, tenant, path, foo="1"), 400)
            assert "foo" in outcome["issue"][0]["diagnostics"], path
            lenient = await client.get(
                f"{FHIR}{path}",
                params={"foo": "1"},
                headers={**tenant.headers, "Prefer": "handling=lenient"},
            )
            valid(lenient)
            valid(await fhir_get(client, tenant, path, _format="application/fhir+json"))

    @pytest.mark.parametrize(
        ("accept", "status"),
        [
            ("application/fhir+xml", 406),
            ("application/xml, text/turtle;q=0.5", 406),
            ("application/fhir+json", 200),
            ("application/fhir+xml;q=1, application/json;q=0.1", 200),
            ("application/fhir+xml, application/fhir+json;q=0", 406),
            ("*/*", 200),
            ("application/*", 200),
        ],
    )
    async def test_an_accept_header_asking_for_anything_but_json_is_406(
        self, client: httpx.AsyncClient, tenant: Tenant, accept: str, status: int
    ):
        """Accept: application/fhir+xml was answered 200 in JSON, while _format=xml got
        406: the client asked for XML and was given JSON as if it had been."""
        r = await client.get(f"{FHIR}/Patient", headers={**tenant.headers, "Accept": accept})
        valid(r, status)
        if status == 406:  # _format, when given, is what the client asks for
            overridden = await client.get(
                f"{FHIR}/Patient",
                params={"_format": "json"},
                headers={**tenant.headers, "Accept": accept},
            )
            valid(overridden)

    async def test_a_key_revoked_after_its_first_use_is_401(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        """The process remembers the key; the database refuses it in the read's own
        statement (careteam_enter): a FHIR login issue, not a 500."""
        patient = await post_patient(client, tenant)
        await team_of(client, tenant, patient, await post_provider(client, tenant))
        async with AsyncSession(database.owner_engine) as owner:
            second = await OrganizationService.create_api_key(
                db=owner, organization_id=tenant.organization_id
            )
        headers = {"Authorization": f"Bearer {second.key}"}
        for path in (f"/Patient/{patient}", f"/CareTeam/{patient}", "/CareTeam"):
            assert (await client.get(FHIR + path, headers=headers)).status_code == 200, path
        async with AsyncSession(database.owner_engine) as owner:
            await OrganizationService.revoke_api_key(db=owner, key_id=second.id)
        for path in (f"/Patient/{patient}", f"/CareTeam/{patient}", "/CareTeam"):
            outcome = valid(await client.get(FHIR + path, headers=headers), 401)
            assert outcome["issue"][0]["code"] == "login", path

    async def test_keys_formats_and_unknown_things(self, client: httpx.AsyncClient, tenant: Tenant):
        valid(await fhir_get(client, None, "/CareTeam"), 401)
        bad_key = await client.get(f"{FHIR}/Patient", headers={"Authorization": "Bearer nope"})
        valid(bad_key, 401)
        valid(await fhir_get(client, tenant, "/Patient", _format="json"))
        valid(await fhir_get(client, tenant, "/Patient", _format="xml"), 406)
        valid(await fhir_get(client, tenant, "/Observation"), 404)
        valid(await fhir_get(client, tenant, "/Patient/not-a-uuid"), 404)

    async def test_an_id_is_ours_exactly_as_written(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """Patient/{id without hyphens} answered the patient: FHIR ids are case sensitive
        and ours are written 8-4-4-4-12 in lower case; any other spelling names nothing."""
        patient = await post_patient(client, tenant)
        valid(await fhir_get(client, tenant, f"/Patient/{patient}"))
        spellings = (patient.upper(), patient.replace("-", ""), f"urn:uuid:{patient}")
        for spelling in spellings:
            valid(await fhir_get(client, tenant, f"/Patient/{spelling}"), 404)
            # A reference to an id that is not ours finds nothing (never another's).
            assert ids(valid(await fhir_get(client, tenant, "/CareTeam", patient=spelling))) == []


class TestWhatClientsSend:
    async def test_count_above_the_maximum_is_capped(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        bundle = valid(await fhir_get(client, tenant, "/Patient", _count="500"))
        assert "_count=100" in bundle["link"][0]["url"]

    async def test_repeated_status_is_and_and_a_system_is_understood(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient, provider = await post_patient(client, tenant), await post_provider(client, tenant)
        await team_of(client, tenant, patient, provider)
        both = await client.get(
            f"{FHIR}/CareTeam?patient={patient}&status=active,inactive&status=active",
            headers=tenant.headers,
        )
        assert ids(valid(both)) == [patient]
        neither = await client.get(
            f"{FHIR}/CareTeam?patient={patient}&status=active&status=inactive",
            headers=tenant.headers,
        )
        assert ids(valid(neither)) == []
        system = valid(
            await fhir_get(
                client,
                tenant,
                "/CareTeam",
                patient=patient,
                status="http://hl7.org/fhir/care-team-status|active",
            )
        )
        assert ids(system) == [patient]

    async def test_unsupported_includes_are_400_or_ignored_when_lenient(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient, provider = await post_patient(client, tenant), await post_provider(client, tenant)
        await team_of(client, tenant, patient, provider)
        url = f"{FHIR}/CareTeam?patient={patient}&_include=CareTeam:participant"
        url += "&_include=CareTeam:encounter"
        valid(await client.get(url, headers=tenant.headers), 400)
        response = await client.get(url, headers={**tenant.headers, "Prefer": "handling=lenient"})
        bundle = valid(response)
        assert ids(bundle, "include") == [provider]
        assert "CareTeam%3Aencounter" not in bundle["link"][0]["url"]

    async def test_a_later_pages_self_link_names_its_cursor(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        for _ in range(3):
            await post_patient(client, tenant)
        first = valid(await fhir_get(client, tenant, "/Patient", _count="1"))
        following = next(link["url"] for link in first["link"] if link["relation"] == "next")
        parts = urlsplit(following)
        second = valid(await client.get(f"{parts.path}?{parts.query}", headers=tenant.headers))
        assert second["link"][0]["url"] == following

    async def test_a_decomposed_name_finds_the_stored_one(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        zoe = await post_patient(client, tenant, first_name="Zoé")
        bundle = valid(await fhir_get(client, tenant, "/Patient", name="Zoe\u0301"))
        assert ids(bundle) == [zoe]

    async def test_other_methods_and_paths_answer_operation_outcomes(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        for method, path in (
            ("POST", "/CareTeam"),
            ("DELETE", "/Patient/x"),
            ("PUT", "/CareTeam/x"),
        ):
            response = await client.request(method, FHIR + path, headers=tenant.headers)
            valid(response, 405)
            assert response.headers["allow"] == "GET, HEAD"
        system = valid(await client.get(FHIR, headers=tenant.headers), 400)
        assert system["issue"][0]["code"] == "not-supported"
        valid(await fhir_get(client, tenant, "/CareTeam/x", _format="xml"), 406)


class TestBehindAProxy:
    async def test_public_base_url_makes_the_absolute_urls(
        self, database: Any, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
    ):
        from src.api.app import create_app  # noqa: PLC0415
        from src.config import get_settings  # noqa: PLC0415 (settings are cached)

        monkeypatch.setenv("PUBLIC_BASE_URL", "https://api.example.org/")
        get_settings.cache_clear()
        try:
            transport = httpx.ASGITransport(app=create_app(database))
            async with httpx.AsyncClient(transport=transport, base_url="http://internal:8000") as c:
                patient = await post_patient(c, tenant)
                bundle = valid(await fhir_get(c, tenant, "/Patient", _id=patient))
        finally:
            monkeypatch.delenv("PUBLIC_BASE_URL")
            get_settings.cache_clear()
        assert bundle["entry"][0]["fullUrl"] == f"https://api.example.org/fhir/R4/Patient/{patient}"
        assert bundle["link"][0]["url"].startswith("https://api.example.org/fhir/R4/Patient?")


class TestTenants:
    async def test_another_tenants_ids_references_and_includes(
        self, client: httpx.AsyncClient, make_tenant: TenantFactory
    ):
        a, b = await make_tenant(), await make_tenant()
        patient = await post_patient(client, a, identifiers=[{"system": "urn:mrn", "value": "A-1"}])
        provider = await post_provider(client, a, npi="1234567893")
        await team_of(client, a, patient, provider)
        for path in (f"/CareTeam/{patient}", f"/Patient/{patient}", f"/Practitioner/{provider}"):
            valid(await fhir_get(client, b, path), 404)
        for path, params in (
            ("/CareTeam", {"patient": patient}),
            ("/CareTeam", {"subject": f"Patient/{patient}"}),
            ("/CareTeam", {"_id": patient}),
            (
                "/CareTeam",
                {"participant": f"Practitioner/{provider}", "_include": "CareTeam:participant"},
            ),
            ("/Patient", {"_id": patient}),
            ("/Patient", {"identifier": "urn:mrn|A-1"}),
            ("/Practitioner", {"identifier": "1234567893"}),
            ("/Practitioner", {"_id": provider}),
        ):
            bundle = valid(await fhir_get(client, b, path, **params))
            assert bundle.get("entry", []) == [], (path, params)
        # B's own team including a shared-looking search shows only B's practitioners.
        mine, theirs = await post_patient(client, b), await post_provider(client, b)
        await team_of(client, b, mine, theirs)
        bundle = valid(await fhir_get(client, b, "/CareTeam", _include="CareTeam:participant"))
        assert ids(bundle) == [mine] and ids(bundle, "include") == [theirs]


class TestAClientNobodyHereWrote:
    async def test_fhirpy_searches_care_teams_and_fetches_every_page(self, live_api: LiveApi):
        from fhirpy import AsyncFHIRClient  # noqa: PLC0415 (only this test uses it)

        provider = live_api.post("/v1/providers", {"first_name": "Grace", "last_name": "Hopper"})
        patients = []
        for _ in range(3):
            patient = live_api.post(
                "/v1/patients", {"first_name": "Ada", "last_name": "Fhirpy", "dob": "1990-01-01"}
            )
            live_api.post(
                f"/v1/patients/{patient['id']}/care-team/members", {"provider_id": provider["id"]}
            )
            patients.append(patient["id"])
        fhir = AsyncFHIRClient(
            f"{live_api.base_url}/fhir/R4", authorization=f"Bearer {live_api.key}"
        )
        teams = await fhir.resources("CareTeam").search(patient=patients[0]).fetch_all()
        assert [t["id"] for t in teams] == [patients[0]]
        everything = await (
            fhir.resources("CareTeam")
            .search(participant=f"Practitioner/{provider['id']}")
            .limit(1)
            .fetch_all()
        )
        assert sorted(t["id"] for t in everything) == sorted(patients)
        for team in everything:
            CareTeam.model_validate(team.serialize())
