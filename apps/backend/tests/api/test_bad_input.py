"""Malformed requests: 422 with a clear message, never a 500, and nothing written."""

from __future__ import annotations

import datetime
import json
import logging
import re
import unicodedata
import uuid

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from src.api.fields import check_person_name, name_pattern
from src.db import Database
from tests.helpers import Tenant, post_patient, post_provider

TOMORROW = (datetime.date.today() + datetime.timedelta(days=2)).isoformat()
VALID = {"first_name": "Ada", "last_name": "Example", "dob": "1990-05-17"}


async def rows_of(database: Database, tenant: Tenant) -> tuple[int, ...]:
    """How many patients, providers, assignments and events the tenant has."""
    async with database.owner_engine.connect() as conn:
        counts = []
        for table in ("patients", "providers", "care_team_assignments", "care_team_events"):
            counts.append(
                (
                    await conn.execute(
                        text(f"SELECT count(*) FROM {table} WHERE organization_id = :org"),
                        {"org": tenant.organization_id},
                    )
                ).scalar_one()
            )
        return tuple(counts)


PATIENT_BODIES = [
    pytest.param({**VALID, "ssn": "123-45-6789"}, "ssn", id="unknown-field"),
    pytest.param({}, "first_name", id="empty-object"),
    pytest.param({**VALID, "first_name": 123}, "first_name", id="name-not-a-string"),
    pytest.param({**VALID, "first_name": ""}, "first_name", id="empty-name"),
    pytest.param({**VALID, "first_name": "x" * 101}, "first_name", id="name-too-long"),
    pytest.param({**VALID, "last_name": "Nul\u0000Byte"}, "last_name", id="nul-byte"),
    pytest.param({**VALID, "last_name": "Tab\tName"}, "last_name", id="tab"),
    pytest.param({**VALID, "first_name": " Ada"}, "first_name", id="leading-space"),
    pytest.param({**VALID, "first_name": "x" * 100 + " "}, "first_name", id="long-with-space"),
    pytest.param({**VALID, "dob": TOMORROW}, "future", id="future-dob"),
    pytest.param({**VALID, "dob": "1850-01-01"}, "1900-01-01", id="absurd-dob"),
    pytest.param({**VALID, "dob": "2021-02-30"}, "dob", id="impossible-date"),
    pytest.param({**VALID, "dob": 19900517}, "YYYY-MM-DD", id="dob-number"),
    pytest.param({**VALID, "dob": None}, "dob", id="dob-null"),
    pytest.param([VALID], "body", id="list-not-object"),
    # Birth dates are calendar dates written YYYY-MM-DD, never Unix timestamps.
    pytest.param({**VALID, "dob": "0"}, "YYYY-MM-DD", id="dob-zero-string"),
    pytest.param({**VALID, "dob": "86400"}, "YYYY-MM-DD", id="dob-timestamp-string"),
    pytest.param({**VALID, "dob": "-86400"}, "YYYY-MM-DD", id="dob-negative-timestamp"),
    pytest.param({**VALID, "dob": 0}, "YYYY-MM-DD", id="dob-zero-number"),
    pytest.param({**VALID, "dob": "1990-5-17"}, "YYYY-MM-DD", id="dob-short-month"),
    pytest.param({**VALID, "dob": "17/05/1990"}, "YYYY-MM-DD", id="dob-day-first"),
    pytest.param({**VALID, "dob": "1990-05-17T00:00:00"}, "YYYY-MM-DD", id="dob-datetime"),
    pytest.param({**VALID, "dob": "19900517"}, "YYYY-MM-DD", id="dob-basic-format"),
    # Names are text a person could have.
    pytest.param({**VALID, "first_name": "Ann\u0085e"}, "U+0085", id="name-next-line-Cc"),
    pytest.param({**VALID, "first_name": "Ann\u2028e"}, "U+2028", id="name-line-separator-Zl"),
    pytest.param({**VALID, "first_name": "Ann\u2029e"}, "U+2029", id="name-paragraph-Zp"),
    pytest.param({**VALID, "last_name": "evil\u202egnp.exe"}, "U+202E", id="name-bidi-Cf"),
    pytest.param({**VALID, "last_name": "Smith\uffff"}, "U+FFFF", id="name-noncharacter-Cn"),
    pytest.param({**VALID, "last_name": "Smith\ue000"}, "U+E000", id="name-private-use-Co"),
    pytest.param({**VALID, "last_name": "\u200b"}, "U+200B", id="name-only-zero-width"),
    pytest.param({**VALID, "last_name": "123"}, "letter", id="name-without-a-letter"),
    pytest.param({**VALID, "last_name": "-- !"}, "letter", id="name-only-punctuation"),
    pytest.param({**VALID, "last_name": "Smith\u3000"}, "space", id="name-trailing-wide-space"),
]


class TestPatientBodies:
    @pytest.mark.parametrize(("body", "mentions"), PATIENT_BODIES)
    async def test_refused_with_422_and_nothing_written(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        body: object,
        mentions: str,
    ):
        before = await rows_of(database, tenant)
        r = await client.post("/v1/patients", json=body, headers=tenant.headers)
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "validation_error"
        assert mentions in r.json()["detail"]
        assert await rows_of(database, tenant) == before

    async def test_the_submitted_values_are_not_echoed(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        r = await client.post(
            "/v1/patients", json={**VALID, "dob": "Zanzibar-1"}, headers=tenant.headers
        )
        assert r.status_code == 422
        assert "Zanzibar" not in r.text

    @pytest.mark.parametrize("raw", [b"", b"{", b"not json", b"null"])
    async def test_unparseable_or_empty_body(
        self, client: httpx.AsyncClient, tenant: Tenant, raw: bytes
    ):
        r = await client.post(
            "/v1/patients",
            content=raw,
            headers={**tenant.headers, "Content-Type": "application/json"},
        )
        assert r.status_code == 422
        assert r.json()["error"] == "validation_error"

    @pytest.mark.parametrize(
        "raw",
        [
            json.dumps(VALID).encode("utf-16"),  # with its BOM
            json.dumps(VALID).encode("utf-16-le"),
            json.dumps(VALID).encode("utf-32"),
            b'{"first_name": "\xe9"}',  # Latin-1, not UTF-8
            b"\xff\xfe",
        ],
    )
    async def test_a_body_that_is_not_utf8_is_415(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database, raw: bytes
    ):
        """UTF-16 JSON was decoded by guessing and accepted: JSON is UTF-8 (RFC 8259)."""
        before = await rows_of(database, tenant)
        r = await client.post(
            "/v1/patients",
            content=raw,
            headers={**tenant.headers, "Content-Type": "application/json"},
        )
        assert r.status_code == 415, r.text
        assert r.json()["error"] == "unsupported_media_type"
        assert "UTF-8" in r.json()["detail"]
        assert await rows_of(database, tenant) == before

    async def test_a_name_given_twice_in_an_object_is_422(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """{"provider_id": P2, "provider_id": P1} was taken as P1 (the last one)."""
        patient = await post_patient(client, tenant)
        first, second = await post_provider(client, tenant), await post_provider(client, tenant)
        raw = f'{{"provider_id": "{first}", "provider_id": "{second}"}}'.encode()
        r = await client.put(
            f"/v1/patients/{patient}/care-team/primary",
            content=raw,
            headers={**tenant.headers, "Content-Type": "application/json"},
        )
        assert r.status_code == 422, r.text
        assert "'provider_id' is given twice" in r.json()["errors"][0]["detail"]
        team = await client.get(f"/v1/patients/{patient}/care-team", headers=tenant.headers)
        assert team.json()["members"] == []
        nested = b'{"first_name": "A", "last_name": "B", "dob": "1990-01-01", '
        nested += b'"identifiers": [{"system": "s", "value": "1", "value": "2"}]}'
        r = await client.post(
            "/v1/patients",
            content=nested,
            headers={**tenant.headers, "Content-Type": "application/json"},
        )
        assert r.status_code == 422

    @pytest.mark.parametrize(
        ("path", "query"),
        [
            ("/v1/patients", "nmae=x"),
            ("/v1/patients", "name=A&limit=5&cursor_=x"),
            ("/v1/providers", "npi=1234567893&Active=true"),
            ("/v1/care-team-events", "after_=1"),
            ("/v1/reports/panels", "organization_id=x"),
        ],
    )
    async def test_an_unknown_query_parameter_is_422_naming_it(
        self, client: httpx.AsyncClient, tenant: Tenant, path: str, query: str
    ):
        """`/v1/patients?nmae=x` answered every patient: a typo silently widened the
        search. Every /v1 operation refuses a parameter it does not declare."""
        r = await client.get(f"{path}?{query}", headers=tenant.headers)
        assert r.status_code == 422, r.text
        unknown = query.rsplit("&", maxsplit=1)[-1].split("=", maxsplit=1)[0]
        assert {"location": "query", "field": unknown} == {
            k: v for k, v in r.json()["errors"][0].items() if k != "detail"
        }
        assert "is not a parameter of this operation" in r.json()["errors"][0]["detail"]

    @pytest.mark.parametrize(
        ("query", "field", "words"),
        [
            ("name=Zelda&name=Q", "name", "given 2 times"),
            ("limit=abc&limit=1", "limit", "given 2 times"),
            ("name=%C3%28", "query", "not UTF-8"),
        ],
    )
    async def test_a_repeated_parameter_or_a_query_not_utf8_is_422(
        self, client: httpx.AsyncClient, tenant: Tenant, query: str, field: str, words: str
    ):
        """`?name=Zelda&name=Q` searched for Q alone (the last one won) and `limit=abc`
        went unchecked; `name=%C3%28` searched for U+FFFD and found nothing, 200."""
        r = await client.get(f"/v1/patients?{query}", headers=tenant.headers)
        assert r.status_code == 422, r.text
        (problem,) = r.json()["errors"]
        assert problem["field"] == field and words in problem["detail"], problem

    @pytest.mark.parametrize("content", [b"{not json", b"{}"], ids=["malformed", "empty-object"])
    async def test_a_body_on_an_operation_that_takes_none_is_refused(
        self, client: httpx.AsyncClient, tenant: Tenant, content: bytes
    ):
        """A GET with a JSON body answered 200, malformed or not (the body was never
        read): a body an operation does not take is refused."""
        r = await client.request(
            "GET",
            "/v1/patients",
            content=content,
            headers={**tenant.headers, "Content-Type": "application/json"},
        )
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["detail"] == "this operation takes no body"

    async def test_huge_body(self, client: httpx.AsyncClient, tenant: Tenant, database: Database):
        before = await rows_of(database, tenant)
        huge = {**VALID, "last_name": "x" * 200_000}
        r = await client.post("/v1/patients", json=huge, headers=tenant.headers)
        assert r.status_code == 413
        assert r.json()["error"] == "body_too_large"
        assert "too large" in r.json()["detail"]
        assert await rows_of(database, tenant) == before


class TestNames:
    @pytest.mark.parametrize(
        "name",
        ["Zoë", "O'Brien-Smith", "José María", "张伟", "Nguyễn", "Ólafur Jr.", "D'Angelo 3rd"],
    )
    async def test_names_people_have_are_accepted(
        self, client: httpx.AsyncClient, tenant: Tenant, name: str
    ):
        patient = await post_patient(client, tenant, first_name=name)
        r = await client.get(f"/v1/patients/{patient}", headers=tenant.headers)
        assert r.json()["first_name"] == name

    async def test_names_are_stored_in_nfc(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        decomposed = "Jose\u0301"  # e + combining acute accent
        patient = await post_patient(client, tenant, last_name=decomposed)
        async with database.owner_engine.connect() as conn:
            stored = (
                await conn.execute(
                    text("SELECT last_name FROM patients WHERE id = :id"), {"id": patient}
                )
            ).scalar_one()
        assert stored == "Jos\u00e9" == unicodedata.normalize("NFC", decomposed)

    async def test_the_schema_states_the_name_and_date_rules(self, client: httpx.AsyncClient):
        schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
        create = schemas["PatientCreate"]["properties"]
        assert create["first_name"] == {"$ref": "#/components/schemas/PersonName"}
        assert create["dob"] == {"$ref": "#/components/schemas/BirthDate"}
        assert schemas["PersonName"]["maxLength"] == 100
        assert re.fullmatch(schemas["BirthDate"]["pattern"], "1984-02-29")
        assert not re.fullmatch(schemas["BirthDate"]["pattern"], "1985-02-29")
        assert not re.fullmatch(schemas["BirthDate"]["pattern"], "1899-12-31")


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(min_size=1, max_size=12))
def test_the_name_validator_and_the_published_pattern_agree(value: str):
    """The OpenAPI pattern and the server's check are one rule: whatever the text."""
    try:
        check_person_name(value)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == bool(re.fullmatch(name_pattern(), value)), ascii(value)


class TestOtherInputs:
    # Fixed ids, not drawn at collection: each worker of a parallel run collects the tests
    # itself, and they must name them alike.
    @pytest.mark.parametrize(
        "path",
        [
            "/v1/patients/not-a-uuid",
            "/v1/patients/123",
            "/v1/patients/8f14e45f-ceea-467a-9575-4c3d1e0b6a2cx",
            "/v1/providers/%00",
            "/v1/patients/not-a-uuid/care-team",
            "/v1/patients/8f14e45f-ceea-467a-9575-4c3d1e0b6a2c/care-team/members/nope",
            # Other ways of writing a UUID, which uuid.UUID reads: only 8-4-4-4-12 is one.
            "/v1/patients/8f14e45fceea467a95754c3d1e0b6a2c",
            "/v1/patients/{8f14e45f-ceea-467a-9575-4c3d1e0b6a2c}",
            "/v1/patients/urn:uuid:8f14e45f-ceea-467a-9575-4c3d1e0b6a2c",
            "/v1/providers/8f14e45fceea467a95754c3d1e0b6a2c/patients",
            "/v1/patients/8f14e45f-ceea-467a-9575-4c3d1e0b6a2c/care-team/members/"
            "8f14e45fceea467a95754c3d1e0b6a2c",
        ],
    )
    async def test_malformed_ids_are_422(
        self, client: httpx.AsyncClient, tenant: Tenant, path: str
    ):
        method = "DELETE" if "/members/" in path else "GET"
        r = await client.request(method, path, headers=tenant.headers)
        assert r.status_code == 422
        assert "uuid" in r.json()["detail"].lower()

    async def test_an_id_in_either_case_is_the_same_record(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient = await post_patient(client, tenant)
        r = await client.get(f"/v1/patients/{patient.upper()}", headers=tenant.headers)
        assert r.status_code == 200 and r.json()["id"] == patient

    async def test_a_body_id_written_another_way_is_422(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        """provider_id without hyphens, in braces or as a URN was read as the provider."""
        patient, provider = await post_patient(client, tenant), await post_provider(client, tenant)
        before = await rows_of(database, tenant)
        for spelling in (uuid.UUID(provider).hex, f"{{{provider}}}", uuid.UUID(provider).urn):
            r = await client.put(
                f"/v1/patients/{patient}/care-team/primary",
                json={"provider_id": spelling},
                headers=tenant.headers,
            )
            assert r.status_code == 422 and r.json()["error"] == "validation_error", spelling
            assert "8-4-4-4-12" in r.json()["detail"]
        assert await rows_of(database, tenant) == before

    @pytest.mark.parametrize(
        "body",
        [
            {"provider_id": "nope"},
            {"provider_id": 5},
            {},
            {"provider_id": None},
            {"provider_id": str(uuid.uuid4()), "primary": True},
            {"provider_id": uuid.uuid4().hex},
            {"provider_id": f"{{{uuid.uuid4()}}}"},
            {"provider_id": uuid.uuid4().urn},
        ],
    )
    async def test_bad_provider_reference(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database, body: object
    ):
        patient = await post_patient(client, tenant)
        before = await rows_of(database, tenant)
        for method, suffix in (("PUT", "primary"), ("POST", "members")):
            r = await client.request(
                method,
                f"/v1/patients/{patient}/care-team/{suffix}",
                json=body,
                headers=tenant.headers,
            )
            assert r.status_code == 422
        assert await rows_of(database, tenant) == before

    @pytest.mark.parametrize("body", [{"active": "false"}, {"active": 0}, {}, {"npi": "1"}])
    async def test_bad_provider_patch(
        self, client: httpx.AsyncClient, tenant: Tenant, body: object
    ):
        provider = await post_provider(client, tenant)
        r = await client.patch(f"/v1/providers/{provider}", json=body, headers=tenant.headers)
        assert r.status_code == 422
        got = await client.get(f"/v1/providers/{provider}", headers=tenant.headers)
        assert got.json()["active"] is True

    @pytest.mark.parametrize(
        ("path", "body", "field", "detail"),
        [
            ("patients", {"dob": None}, "dob", "body.dob: cannot be null"),
            ("patients", {"first_name": None}, "first_name", "body.first_name: cannot be null"),
            ("providers", {"active": None}, "active", "body.active: cannot be null"),
            ("patients", {}, "body", "body: give at least one of"),
        ],
    )
    async def test_a_patch_names_the_field_it_refuses(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        *,
        path: str,
        body: dict[str, object],
        field: str,
        detail: str,
    ):
        """{"dob": null} was refused as `body` ("body.body: dob cannot be null")."""
        record = await (post_patient if path == "patients" else post_provider)(client, tenant)
        r = await client.patch(f"/v1/{path}/{record}", json=body, headers=tenant.headers)
        assert r.status_code == 422
        assert r.json()["errors"][0]["field"] == field
        assert r.json()["detail"].startswith(detail), r.json()["detail"]

    async def test_a_patch_of_identifiers_names_the_item_not_the_union(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """identifiers: [{"system": "", ...}] was reported at
        `identifiers.list[IdentifierIn].0.system`, with a second, bogus `identifiers.none`."""
        patient = await post_patient(client, tenant)
        r = await client.patch(
            f"/v1/patients/{patient}",
            json={"identifiers": [{"system": "", "value": "MRN-1"}]},
            headers=tenant.headers,
        )
        assert r.status_code == 422
        fields = [problem["field"] for problem in r.json()["errors"]]
        assert fields == ["identifiers.0.system"], r.json()

    @pytest.mark.parametrize(
        ("method", "url", "body", "headers", "field"),
        [
            ("GET", "/v1/patients?page-size=1", None, {}, "page-size"),
            ("GET", "/v1/patients?date=1", None, {}, "date"),
            ("GET", "/v1/patients?ids[]=1", None, {}, "ids[]"),
            ("POST", "/v1/patients", {**VALID, "first-name": "x"}, {}, "first-name"),
            ("POST", "/v1/patients", {**VALID, "date": "x"}, {}, "date"),
            ("POST", "/v1/patients", VALID, {"Idempotency-Key": "k" * 300}, "idempotency-key"),
        ],
    )
    async def test_a_name_the_client_sent_is_named_whatever_it_is(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        *,
        method: str,
        url: str,
        body: object,
        headers: dict[str, str],
        field: str,
    ):
        """Leaving pydantic's union members out of a field's name left out the client's
        own names that looked like one (`page-size`, `date`): 422 named `query`."""
        r = await client.request(method, url, json=body, headers={**tenant.headers, **headers})
        assert r.status_code == 422, r.text
        assert [p["field"] for p in r.json()["errors"]] == [field], r.json()

    async def test_an_identifier_search_without_its_bar_says_so_briefly(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """identifier=nosep answered with the 12,000-character pattern it did not match."""
        r = await client.get("/v1/patients", params={"identifier": "nosep"}, headers=tenant.headers)
        assert r.status_code == 422
        assert len(r.text) < 1000, r.text[:300]
        (problem,) = r.json()["errors"]
        assert problem["field"] == "identifier"
        assert "system|value" in problem["detail"], problem

    @pytest.mark.parametrize("npi", ["123", "12345678901", "abcdefghij", 1234567890])
    async def test_bad_npi(self, client: httpx.AsyncClient, tenant: Tenant, npi: object):
        r = await client.post(
            "/v1/providers",
            json={"first_name": "A", "last_name": "B", "npi": npi},
            headers=tenant.headers,
        )
        assert r.status_code == 422

    @pytest.mark.parametrize(
        "params",
        [
            {"limit": 0},
            {"limit": 201},
            {"limit": "ten"},
            {"cursor": -1},
            {"cursor": "a-c"},
            {"cursor": "a" * 11},
            {"cursor": 2**64},
        ],
    )
    async def test_bad_paging(self, client: httpx.AsyncClient, tenant: Tenant, params: dict):
        patient = await post_patient(client, tenant)
        r = await client.get(
            f"/v1/patients/{patient}/care-team/history", params=params, headers=tenant.headers
        )
        assert r.status_code == 422

    async def test_unknown_route_and_method(self, client: httpx.AsyncClient, tenant: Tenant):
        r = await client.get("/v1/nothing-here", headers=tenant.headers)
        assert r.status_code == 404 and r.json()["error"] == "not_found"
        r = await client.delete("/v1/patients", headers=tenant.headers)
        assert r.status_code == 405 and r.json()["error"] == "method_not_allowed"


class TestLogs:
    async def test_logs_carry_ids_and_request_id_never_names_or_birth_dates(
        self, client: httpx.AsyncClient, tenant: Tenant, caplog: pytest.LogCaptureFixture
    ):
        caplog.set_level(logging.DEBUG)
        r = await client.post(
            "/v1/patients",
            json={"first_name": "Zebulon", "last_name": "Quillfeather", "dob": "1971-03-04"},
            headers={**tenant.headers, "X-Request-ID": "req-test-123"},
        )
        assert r.status_code == 201 and r.headers["x-request-id"] == "req-test-123"
        patient = r.json()["id"]
        provider = await post_provider(client, tenant, first_name="Ottoline")
        await client.put(
            f"/v1/patients/{patient}/care-team/primary",
            json={"provider_id": provider},
            headers=tenant.headers,
        )
        await client.post(
            "/v1/patients",
            json={"first_name": "Zebulon", "last_name": "Q", "dob": "2999-01-01"},
            headers=tenant.headers,
        )
        text_logged = caplog.text + " ".join(str(r.__dict__) for r in caplog.records)
        for secret in ("Zebulon", "Quillfeather", "Ottoline", "1971-03-04", "2999-01-01"):
            assert secret not in text_logged
        mine = [rec for rec in caplog.records if getattr(rec, "request_id", None) == "req-test-123"]
        assert any(f"patient_id={patient}" in rec.getMessage() for rec in mine)
        assert any("POST /v1/patients status=201" in rec.getMessage() for rec in mine)

    async def test_every_response_has_a_request_id(self, client: httpx.AsyncClient):
        first, second = await client.get("/healthz"), await client.get("/healthz")
        assert first.headers["x-request-id"] != second.headers["x-request-id"]


class TestUnencodableText:
    @pytest.mark.parametrize("field", ["first_name", "last_name"])
    async def test_lone_surrogates_are_422(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database, field: str
    ):
        """JSON can carry a lone surrogate ("\\ud800"), which UTF-8 cannot store."""
        before = await rows_of(database, tenant)
        raw = '{"first_name": "A", "last_name": "B", "dob": "1990-01-01"}'.replace(
            f'"{field}": "{"A" if field == "first_name" else "B"}"', f'"{field}": "x\\ud800y"'
        )
        for path in ("/v1/patients", "/v1/providers"):
            body = raw if path == "/v1/patients" else raw.replace(', "dob": "1990-01-01"', "")
            r = await client.post(
                path,
                content=body.encode(),
                headers={**tenant.headers, "Content-Type": "application/json"},
            )
            assert r.status_code == 422, r.text
            assert "valid string" in r.json()["detail"]
        assert await rows_of(database, tenant) == before
