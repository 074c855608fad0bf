"""Records an integrator can build on: identifiers, NPIs, lists and search, corrections
with their audit trail, ETags, members with names, CORS."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from src.api.app import create_app
from src.db import Database
from src.values import npi_check_digit_ok
from tests.helpers import Tenant, TenantFactory, post_patient, post_provider

MRN = "urn:example:clinic:mrn"
# Valid NPIs (their check digits hold), and one that fails it.
NPI_A, NPI_B, BAD_NPI = "1234567893", "1245319599", "1234567890"


async def rows(database: Database, sql: str, **params: object) -> list[tuple[object, ...]]:
    async with database.owner_engine.connect() as conn:
        return [tuple(r) for r in (await conn.execute(text(sql), params)).all()]


class TestNpi:
    def test_the_check_digit(self):
        # CMS's published example, and a few valid and invalid neighbours.
        assert npi_check_digit_ok("1234567893")
        assert not npi_check_digit_ok("1234567890")
        assert npi_check_digit_ok("1245319599")
        assert not npi_check_digit_ok("1245319590")

    async def test_a_wrong_check_digit_is_refused_and_nothing_is_written(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        r = await client.post(
            "/v1/providers",
            json={"first_name": "Grace", "last_name": "Hopper", "npi": BAD_NPI},
            headers=tenant.headers,
        )
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "npi"
        count = await rows(
            database,
            "SELECT count(*) FROM providers WHERE organization_id = :o",
            o=tenant.organization_id,
        )
        assert count == [(0,)]

    async def test_unique_within_an_organization_only(
        self, client: httpx.AsyncClient, make_tenant: TenantFactory
    ):
        a, b = await make_tenant(), await make_tenant()
        await post_provider(client, a, npi=NPI_A)
        again = await client.post(
            "/v1/providers",
            json={"first_name": "X", "last_name": "Y", "npi": NPI_A},
            headers=a.headers,
        )
        assert again.status_code == 409, again.text
        assert again.json()["error"] == "npi_taken"
        await post_provider(client, b, npi=NPI_A)  # another organization: its own NPIs

    async def test_patch_checks_and_changes_it(self, client: httpx.AsyncClient, tenant: Tenant):
        first = await post_provider(client, tenant, npi=NPI_A)
        second = await post_provider(client, tenant)
        url = f"/v1/providers/{second}"
        bad = await client.patch(url, json={"npi": BAD_NPI}, headers=tenant.headers)
        assert bad.status_code == 422
        taken = await client.patch(url, json={"npi": NPI_A}, headers=tenant.headers)
        assert taken.status_code == 409 and taken.json()["error"] == "npi_taken"
        ok = await client.patch(
            url, json={"npi": NPI_B, "last_name": "Hopper"}, headers=tenant.headers
        )
        assert ok.status_code == 200, ok.text
        assert (ok.json()["npi"], ok.json()["last_name"]) == (NPI_B, "Hopper")
        cleared = await client.patch(
            f"/v1/providers/{first}", json={"npi": None}, headers=tenant.headers
        )
        assert cleared.json()["npi"] is None


VALID_PATIENT = {"first_name": "A", "last_name": "B", "dob": "1990-01-01"}


class TestIdentifiers:
    @pytest.mark.parametrize(
        "value",
        ["MRN-x ", " MRN-x", "   ", "A\u0085B", "A\u009bB", "A\u202eB", "A\u2028B"],
        ids=["trailing", "leading", "blank", "U+0085", "U+009B", "bidi", "line-separator"],
    )
    async def test_what_would_look_the_same_is_refused(
        self, client: httpx.AsyncClient, tenant: Tenant, value: str
    ):
        """ "MRN-x" and "MRN-x " made two patients, and C1 controls were accepted."""
        r = await client.post(
            "/v1/patients",
            json={**VALID_PATIENT, "identifiers": [{"system": MRN, "value": value}]},
            headers=tenant.headers,
        )
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "identifiers.0.value"
        search = await client.get(
            "/v1/patients", params={"identifier": f"{MRN}|{value}"}, headers=tenant.headers
        )
        assert search.status_code == 422
        fhir = await client.get(
            "/fhir/R4/Patient", params={"identifier": f"{MRN}|{value}"}, headers=tenant.headers
        )
        assert fhir.status_code == 400

    async def test_nfc_and_nfd_spellings_are_one_identifier(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        composed, decomposed = "Jos\u00e9", "Jose\u0301"
        patient = await post_patient(
            client, tenant, identifiers=[{"system": MRN, "value": decomposed}]
        )
        got = await client.get(f"/v1/patients/{patient}", headers=tenant.headers)
        assert got.json()["identifiers"] == [{"system": MRN, "value": composed}]  # stored NFC
        taken = await client.post(
            "/v1/patients",
            json={**VALID_PATIENT, "identifiers": [{"system": MRN, "value": composed}]},
            headers=tenant.headers,
        )
        assert taken.status_code == 409 and taken.json()["error"] == "identifier_taken"
        for spelling in (composed, decomposed):
            found = await client.get(
                "/v1/patients", params={"identifier": f"{MRN}|{spelling}"}, headers=tenant.headers
            )
            assert [p["id"] for p in found.json()["items"]] == [patient]
            fhir = await client.get(
                "/fhir/R4/Patient",
                params={"identifier": f"{MRN}|{spelling}"},
                headers=tenant.headers,
            )
            assert [e["resource"]["id"] for e in fhir.json()["entry"]] == [patient]

    async def test_create_search_change(self, client: httpx.AsyncClient, tenant: Tenant):
        patient = await post_patient(
            client, tenant, identifiers=[{"system": MRN, "value": "MRN-1"}]
        )
        found = await client.get(
            "/v1/patients", params={"identifier": f"{MRN}|MRN-1"}, headers=tenant.headers
        )
        assert [p["id"] for p in found.json()["items"]] == [patient]
        assert found.json()["items"][0]["identifiers"] == [{"system": MRN, "value": "MRN-1"}]

        taken = await client.post(
            "/v1/patients",
            json={
                "first_name": "B",
                "last_name": "C",
                "dob": "1990-01-01",
                "identifiers": [{"system": MRN, "value": "MRN-1"}],
            },
            headers=tenant.headers,
        )
        assert taken.status_code == 409 and taken.json()["error"] == "identifier_taken"

        changed = await client.patch(
            f"/v1/patients/{patient}",
            json={"identifiers": [{"system": MRN, "value": "MRN-2"}]},
            headers=tenant.headers,
        )
        assert changed.status_code == 200, changed.text
        old = await client.get(
            "/v1/patients", params={"identifier": f"{MRN}|MRN-1"}, headers=tenant.headers
        )
        assert old.json()["items"] == []
        # The old value is free again.
        await post_patient(client, tenant, identifiers=[{"system": MRN, "value": "MRN-1"}])

    @pytest.mark.parametrize(
        "identifiers",
        [
            [{"system": "", "value": "x"}],
            [{"system": "a|b", "value": "x"}],
            [{"system": MRN, "value": "bad\nvalue"}],
            [{"system": MRN, "value": "x" * 256}],
            [{"system": MRN}],
            [{"system": MRN, "value": "x", "extra": 1}],
            "MRN-1",
        ],
        ids=[
            "empty-system",
            "bar-in-system",
            "control-char",
            "too-long",
            "no-value",
            "extra",
            "not-a-list",
        ],
    )
    async def test_malformed_identifiers_are_422_and_nothing_is_written(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database, identifiers: object
    ):
        r = await client.post(
            "/v1/patients",
            json={
                "first_name": "A",
                "last_name": "B",
                "dob": "1990-01-01",
                "identifiers": identifiers,
            },
            headers=tenant.headers,
        )
        assert r.status_code == 422, r.text
        count = await rows(
            database,
            "SELECT count(*) FROM patients WHERE organization_id = :o",
            o=tenant.organization_id,
        )
        assert count == [(0,)]

    async def test_a_malformed_identifier_search_is_422(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        for bad in ("no-bar", "|value", f"{MRN}|"):
            r = await client.get("/v1/patients", params={"identifier": bad}, headers=tenant.headers)
            assert r.status_code == 422, (bad, r.text)


class TestListsAndSearch:
    async def test_pages_by_cursor_in_a_stable_order(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        made = sorted([await post_patient(client, tenant) for _ in range(7)], key=uuid.UUID)
        seen, cursor = [], None
        while True:
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/v1/patients", params=params, headers=tenant.headers)).json()
            seen += [p["id"] for p in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == made

    async def test_name_prefix_any_case_first_or_last(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        ada = await post_patient(client, tenant, first_name="Ada", last_name="Lovelace")
        grace = await post_patient(client, tenant, first_name="Grace", last_name="Adams")
        await post_patient(client, tenant, first_name="Alan", last_name="Turing")

        async def names(prefix: str) -> set[str]:
            r = await client.get("/v1/patients", params={"name": prefix}, headers=tenant.headers)
            assert r.status_code == 200, r.text
            return {p["id"] for p in r.json()["items"]}

        assert await names("ad") == {ada, grace}
        assert await names("LOVE") == {ada}
        assert await names("%") == set()  # no wildcards: a literal prefix
        assert await names("zz") == set()

    async def test_dob_and_combined_filters(self, client: httpx.AsyncClient, tenant: Tenant):
        one = await post_patient(client, tenant, first_name="Ann", dob="1970-05-01")
        await post_patient(client, tenant, first_name="Ann", dob="1971-05-01")
        r = await client.get(
            "/v1/patients", params={"name": "ann", "dob": "1970-05-01"}, headers=tenant.headers
        )
        assert [p["id"] for p in r.json()["items"]] == [one]
        bad = await client.get("/v1/patients", params={"dob": "1970-13-01"}, headers=tenant.headers)
        assert bad.status_code == 422

    async def test_providers_by_name_npi_active(self, client: httpx.AsyncClient, tenant: Tenant):
        grace = await post_provider(client, tenant, first_name="Grace", npi=NPI_A)
        gone = await post_provider(client, tenant, first_name="Gregory")
        await client.patch(f"/v1/providers/{gone}", json={"active": False}, headers=tenant.headers)

        async def ids(**params: object) -> set[str]:
            r = await client.get("/v1/providers", params=params, headers=tenant.headers)
            assert r.status_code == 200, r.text
            return {p["id"] for p in r.json()["items"]}

        assert await ids(name="gr") == {grace, gone}
        assert await ids(name="gr", active="true") == {grace}
        assert await ids(npi=NPI_A) == {grace}

    @pytest.mark.parametrize("cursor", ["!!", "a" * 23, ""])
    async def test_a_malformed_cursor_is_422(
        self, client: httpx.AsyncClient, tenant: Tenant, cursor: str
    ):
        for url in ("/v1/patients", "/v1/providers"):
            r = await client.get(url, params={"cursor": cursor}, headers=tenant.headers)
            assert r.status_code == 422, r.text

    async def test_limit_at_most_200(self, client: httpx.AsyncClient, tenant: Tenant):
        r = await client.get("/v1/patients", params={"limit": 201}, headers=tenant.headers)
        assert r.status_code == 422

    async def test_tenants_see_only_their_own(
        self, client: httpx.AsyncClient, make_tenant: TenantFactory
    ):
        a, b = await make_tenant(), await make_tenant()
        mine = await post_patient(
            client, a, first_name="Zed", identifiers=[{"system": MRN, "value": "Z"}]
        )
        await post_provider(client, a, first_name="Zora", npi=NPI_A)
        for params in ({}, {"name": "zed"}, {"identifier": f"{MRN}|Z"}):
            r = await client.get("/v1/patients", params=params, headers=b.headers)
            assert r.json()["items"] == [], params
        for params in ({}, {"name": "zo"}, {"npi": NPI_A}):
            r = await client.get("/v1/providers", params=params, headers=b.headers)
            assert r.json()["items"] == [], params
        for url in (f"/v1/patients/{mine}", f"/v1/patients/{mine}/changes"):
            assert (await client.get(url, headers=b.headers)).status_code == 404
        patch = await client.patch(
            f"/v1/patients/{mine}", json={"last_name": "X"}, headers=b.headers
        )
        assert patch.status_code == 404


class TestCorrectionsAndTheirTrail:
    async def test_patch_patient_records_fields_not_values(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        patient = await post_patient(client, tenant, last_name="Before")
        r = await client.patch(
            f"/v1/patients/{patient}",
            json={"last_name": "After", "dob": "1985-03-04"},
            headers=tenant.headers,
        )
        assert r.status_code == 200, r.text
        assert (r.json()["last_name"], r.json()["dob"]) == ("After", "1985-03-04")
        unchanged = await client.patch(
            f"/v1/patients/{patient}", json={"last_name": "After"}, headers=tenant.headers
        )
        assert unchanged.status_code == 200
        changes = (
            await client.get(f"/v1/patients/{patient}/changes", headers=tenant.headers)
        ).json()
        assert [(c["id"], c["action"], c["fields"]) for c in changes["items"]] == [
            (2, "updated", ["last_name", "dob"]),  # numbered per record: nothing global
            (1, "created", ["first_name", "last_name", "dob"]),
        ]
        assert {c["actor"] for c in changes["items"]} == {f"api_key:{tenant.api_key_id}"}
        stored = await rows(
            database,
            "SELECT fields::text FROM record_changes WHERE record_id = :p",
            p=uuid.UUID(patient),
        )
        assert all("After" not in str(row) and "Before" not in str(row) for row in stored)

    @pytest.mark.parametrize(
        "body",
        [
            {},
            {"first_name": None},
            {"dob": "0"},
            {"last_name": " x"},
            {"unknown": 1},
            {"identifiers": None},
        ],
        ids=["empty", "null-name", "bad-dob", "bad-name", "unknown-field", "null-identifiers"],
    )
    async def test_bad_patches_are_422_and_change_nothing(
        self, client: httpx.AsyncClient, tenant: Tenant, body: dict[str, object]
    ):
        patient = await post_patient(client, tenant)
        before = (await client.get(f"/v1/patients/{patient}", headers=tenant.headers)).json()
        r = await client.patch(f"/v1/patients/{patient}", json=body, headers=tenant.headers)
        assert r.status_code == 422, r.text
        after = (await client.get(f"/v1/patients/{patient}", headers=tenant.headers)).json()
        assert after == before

    async def test_provider_changes_name_the_fields(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        provider = await post_provider(client, tenant)
        await client.patch(
            f"/v1/providers/{provider}", json={"panel_capacity": 5}, headers=tenant.headers
        )
        await client.patch(
            f"/v1/providers/{provider}", json={"first_name": "Ada"}, headers=tenant.headers
        )
        changes = (
            await client.get(f"/v1/providers/{provider}/changes", headers=tenant.headers)
        ).json()
        assert [c["fields"] for c in changes["items"]] == [
            ["first_name"],
            ["panel_capacity"],
            ["first_name", "last_name"],
        ]


# A header value httpx can send: latin-1 text without line breaks or NUL.
HEADER_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=60,
)
ETAG_LIKE = st.builds(
    lambda kind, a, b, weak: f'{"W/" if weak else ""}"{kind}{a}.{b}"',
    st.sampled_from(["t", "p", "v", "", "x"]),
    st.integers(min_value=-1, max_value=2**80),
    st.integers(min_value=-1, max_value=2**80),
    st.booleans(),
)


class TestEtags:
    @pytest.mark.parametrize(
        "etag", ['"t9223372036854775808.1"', '"t1.99999999999999999999"', '"t1.' + "9" * 400 + '"']
    )
    async def test_an_out_of_range_team_etag_is_412_on_every_write(
        self, client: httpx.AsyncClient, tenant: Tenant, etag: str
    ):
        """A team ETag whose numbers exceed a bigint was a 500 (logged at ERROR)."""
        patient, provider = await post_patient(client, tenant), await post_provider(client, tenant)
        team = f"/v1/patients/{patient}/care-team"
        headers = {**tenant.headers, "If-Match": etag}
        body = {"provider_id": provider}
        for method, path, send in (
            ("PUT", "/primary", body),
            ("POST", "/members", body),
            ("DELETE", f"/members/{provider}", None),
        ):
            r = await client.request(method, team + path, json=send, headers=headers)
            assert r.status_code == 412, (method, r.text)
            assert r.json()["error"] == "precondition_failed"

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        value=st.one_of(HEADER_TEXT, ETAG_LIKE),
        header=st.sampled_from(["If-Match", "If-None-Match"]),
    )
    async def test_any_if_match_or_if_none_match_is_412_304_or_served(
        self, client: httpx.AsyncClient, tenant: Tenant, value: str, header: str
    ):
        """Whatever a client puts in either header: never a 5xx, and a 422 only for an
        If-Match that names several versions of the resource."""
        patient, provider = await post_patient(client, tenant), await post_provider(client, tenant)
        team = f"/v1/patients/{patient}/care-team"
        calls = [
            ("GET", team, None),
            ("PUT", f"{team}/primary", {"provider_id": provider}),
            ("DELETE", f"{team}/members/{provider}", None),
            ("GET", f"/v1/patients/{patient}", None),
            ("PATCH", f"/v1/providers/{provider}", {"first_name": "Changed"}),
        ]
        for method, url, send in calls:
            r = await client.request(
                method, url, json=send, headers={**tenant.headers, header: value.encode("latin-1")}
            )
            if r.status_code == 422:  # If-Match naming several versions of the resource
                assert r.json()["errors"][0]["field"] == "If-Match", r.text
                continue
            assert r.status_code in (200, 201, 204, 304, 404, 412), (method, url, r.text)

    async def test_patient_etag_304_and_a_stale_if_match_is_412(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient = await post_patient(client, tenant)
        url = f"/v1/patients/{patient}"
        read = await client.get(url, headers=tenant.headers)
        etag = read.headers["etag"]
        again = await client.get(url, headers={**tenant.headers, "If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        first = await client.patch(
            url, json={"last_name": "One"}, headers={**tenant.headers, "If-Match": etag}
        )
        assert first.status_code == 200 and first.headers["etag"] != etag
        stale = await client.patch(
            url, json={"last_name": "Two"}, headers={**tenant.headers, "If-Match": etag}
        )
        assert stale.status_code == 412 and stale.json()["error"] == "precondition_failed"
        assert (await client.get(url, headers=tenant.headers)).json()["last_name"] == "One"
        fresh = await client.get(url, headers={**tenant.headers, "If-None-Match": etag})
        assert fresh.status_code == 200

    async def test_a_care_team_write_with_a_stale_etag_changes_nothing(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient = await post_patient(client, tenant)
        a, b = await post_provider(client, tenant), await post_provider(client, tenant)
        team_url = f"/v1/patients/{patient}/care-team"
        etag = (await client.get(team_url, headers=tenant.headers)).headers["etag"]
        # A concurrent writer wins first.
        won = await client.put(
            f"{team_url}/primary",
            json={"provider_id": a},
            headers={**tenant.headers, "If-Match": etag},
        )
        assert won.status_code == 200, won.text
        lost = await client.put(
            f"{team_url}/primary",
            json={"provider_id": b},
            headers={**tenant.headers, "If-Match": etag},
        )
        assert lost.status_code == 412, lost.text
        team = (await client.get(team_url, headers=tenant.headers)).json()
        assert team["primary_provider_id"] == a
        for malformed in ('"t"', '"p1"', '"p1.0"', "W/" + etag, '"t1.2"'):
            r = await client.post(
                f"{team_url}/members",
                json={"provider_id": b},
                headers={**tenant.headers, "If-Match": malformed},
            )
            assert r.status_code == 412, (malformed, r.text)
        r = await client.post(
            f"{team_url}/members",
            json={"provider_id": b},
            headers={**tenant.headers, "If-Match": "*"},
        )
        assert r.status_code == 201

    async def test_if_match_is_met_by_any_tag_of_its_list(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """If-Match: "x", "p1" was 412 for patient p1: RFC 9110 13.1.1 says the
        condition holds when any listed tag matches."""
        url = f"/v1/patients/{await post_patient(client, tenant)}"
        etag = (await client.get(url, headers=tenant.headers)).headers["etag"]
        for template, status in (
            ('"x", {etag}', 200),
            ('W/"p999", "t1.2", {etag}, {etag}', 200),
            ('"x", W/"p1", "t1.2"', 412),
            ('"p0.0", {etag}', 422),
        ):
            header = template.format(etag=etag)
            r = await client.patch(
                url, json={"last_name": "Listed"}, headers={**tenant.headers, "If-Match": header}
            )
            assert r.status_code == status, (header, r.text)
            if status == 422:
                assert r.json()["errors"][0] == {
                    "location": "header",
                    "field": "If-Match",
                    "detail": "If-Match names several versions of this resource: name the one "
                    "you read",
                }
            etag = (await client.get(url, headers=tenant.headers)).headers["etag"]

    async def test_of_writers_racing_with_one_etag_exactly_one_wins(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient = await post_patient(client, tenant)
        providers = [await post_provider(client, tenant) for _ in range(5)]
        team_url = f"/v1/patients/{patient}/care-team"
        etag = (await client.get(team_url, headers=tenant.headers)).headers["etag"]
        answers = await asyncio.gather(
            *(
                client.put(
                    f"{team_url}/primary",
                    json={"provider_id": provider},
                    headers={**tenant.headers, "If-Match": etag},
                )
                for provider in providers
            )
        )
        assert sorted(a.status_code for a in answers) == [200, 412, 412, 412, 412]
        winner = next(a for a in answers if a.status_code == 200).json()["primary_provider_id"]
        team = (await client.get(team_url, headers=tenant.headers)).json()
        assert team["primary_provider_id"] == winner and len(team["members"]) == 1

    async def test_renaming_or_deactivating_a_member_changes_the_team_etag(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient = await post_patient(client, tenant)
        primary, secondary = (
            await post_provider(client, tenant),
            await post_provider(client, tenant),
        )
        team_url = f"/v1/patients/{patient}/care-team"
        await client.put(
            f"{team_url}/primary", json={"provider_id": primary}, headers=tenant.headers
        )
        await client.post(
            f"{team_url}/members", json={"provider_id": secondary}, headers=tenant.headers
        )
        etag = (await client.get(team_url, headers=tenant.headers)).headers["etag"]
        await client.patch(
            f"/v1/providers/{secondary}", json={"last_name": "Renamed"}, headers=tenant.headers
        )
        renamed = await client.get(team_url, headers={**tenant.headers, "If-None-Match": etag})
        assert renamed.status_code == 200 and renamed.headers["etag"] != etag
        stale = await client.delete(
            f"{team_url}/members/{secondary}", headers={**tenant.headers, "If-Match": etag}
        )
        assert stale.status_code == 412
        await client.patch(
            f"/v1/providers/{secondary}", json={"active": False}, headers=tenant.headers
        )
        deactivated = await client.get(
            team_url, headers={**tenant.headers, "If-None-Match": renamed.headers["etag"]}
        )
        assert deactivated.status_code == 200
        # Deactivated, it leaves the team (its membership ends with it).
        assert [m["provider_id"] for m in deactivated.json()["members"]] == [primary]

    async def test_provider_etag_follows_its_panel(self, client: httpx.AsyncClient, tenant: Tenant):
        provider = await post_provider(client, tenant)
        url = f"/v1/providers/{provider}"
        etag = (await client.get(url, headers=tenant.headers)).headers["etag"]
        patient = await post_patient(client, tenant)
        await client.put(
            f"/v1/patients/{patient}/care-team/primary",
            json={"provider_id": provider},
            headers=tenant.headers,
        )
        after = await client.get(url, headers={**tenant.headers, "If-None-Match": etag})
        assert after.status_code == 200 and after.json()["panel_size"] == 1


class TestMembersWithNames:
    async def test_the_team_names_its_members(self, client: httpx.AsyncClient, tenant: Tenant):
        patient = await post_patient(client, tenant)
        provider = await post_provider(client, tenant, first_name="Grace", last_name="Hopper")
        r = await client.put(
            f"/v1/patients/{patient}/care-team/primary",
            json={"provider_id": provider},
            headers=tenant.headers,
        )
        member = r.json()["members"][0]
        assert (member["first_name"], member["last_name"], member["active"]) == (
            "Grace",
            "Hopper",
            True,
        )


class TestCors:
    async def test_off_by_default(self, client: httpx.AsyncClient):
        r = await client.get("/healthz", headers={"Origin": "https://app.example.org"})
        assert "access-control-allow-origin" not in r.headers

    async def test_allowed_origins_only(
        self, database: Database, monkeypatch: pytest.MonkeyPatch, tenant: Tenant
    ):
        monkeypatch.setenv("CORS_ALLOWED_ORIGINS", "https://app.example.org")
        from src.config import get_settings  # noqa: PLC0415 (settings are cached)

        get_settings.cache_clear()
        try:
            app = create_app(database)
        finally:
            monkeypatch.delenv("CORS_ALLOWED_ORIGINS")
            get_settings.cache_clear()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://careteam.test") as c:
            preflight = await c.options(
                "/v1/patients",
                headers={
                    "Origin": "https://app.example.org",
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "Authorization, Idempotency-Key, If-Match",
                },
            )
            assert preflight.status_code == 200, preflight.text
            assert preflight.headers["access-control-allow-origin"] == "https://app.example.org"
            got = await c.get(
                "/v1/patients", headers={**tenant.headers, "Origin": "https://app.example.org"}
            )
            assert got.headers["access-control-allow-origin"] == "https://app.example.org"
            assert "ETag" in got.headers["access-control-expose-headers"]
            other = await c.get(
                "/v1/patients", headers={**tenant.headers, "Origin": "https://evil.example"}
            )
            assert "access-control-allow-origin" not in other.headers
            # A preflight refused is a problem with an error code, not plain text.
            for origin, method in (("https://evil.example", "POST"), (None, "TRACE")):
                refused = await c.options(
                    "/v1/patients",
                    headers={
                        "Origin": origin or "https://app.example.org",
                        "Access-Control-Request-Method": method,
                    },
                )
                assert refused.status_code == 400
                assert refused.headers["content-type"] == "application/problem+json"
                assert refused.json()["error"] == "cors_refused"
                assert ("origin" if origin else "method") in refused.json()["detail"]
