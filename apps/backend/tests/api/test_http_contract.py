"""The HTTP contract every route keeps: RFC 9457 problem details, the methods and media
types it answers, no redirects, the Host check, caching, and retryable 503s."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from src.api.app import create_app
from src.config import Settings
from src.db import Database, open_database
from src.scopes import ADMIN, FULL_ACCESS
from src.services.organization_service import OrganizationService
from tests.helpers import Tenant, post_patient, post_provider

PROBLEM_FIELDS = {"type", "title", "status", "detail", "instance", "error", "request_id"}


def assert_problem(r: httpx.Response, status: int, error: str) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = r.json()
    assert PROBLEM_FIELDS <= set(body), body
    assert body["status"] == status and body["error"] == error
    assert body["type"] == f"urn:careteam:problem:{error}"
    assert body["request_id"] == r.headers["x-request-id"]
    return body


async def app_client(app: FastAPI, host: str = "careteam.test") -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{host}") as c:
        yield c


class TestProblemDetails:
    async def test_every_kind_of_error_is_a_problem(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient = await post_patient(client, tenant)
        provider = await post_provider(client, tenant)
        h = tenant.headers
        assert_problem(await client.get("/v1/nothing", headers=h), 404, "not_found")
        body = assert_problem(
            await client.get(f"/v1/patients/{uuid.uuid4()}", headers=h), 404, "patient_not_found"
        )
        # The occurrence, never the path (a client could have put anything in it).
        assert body["instance"] == f"urn:careteam:request:{body['request_id']}"
        invalid = assert_problem(
            await client.post("/v1/patients", json={"first_name": "A"}, headers=h),
            422,
            "validation_error",
        )
        fields = {(e["location"], e["field"]) for e in invalid["errors"]}  # type: ignore[union-attr]
        assert fields == {("body", "last_name"), ("body", "dob")}
        await client.put(
            f"/v1/patients/{patient}/care-team/primary", json={"provider_id": provider}, headers=h
        )
        assert_problem(
            await client.post(
                f"/v1/patients/{patient}/care-team/members",
                json={"provider_id": provider},
                headers=h,
            ),
            409,
            "provider_already_primary",
        )
        assert_problem(await client.get(f"/v1/patients/{patient}"), 401, "unauthorized")

    async def test_405_says_which_methods_are_allowed(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        r = await client.delete("/v1/patients", headers=tenant.headers)
        assert_problem(r, 405, "method_not_allowed")
        assert r.headers["allow"] == "GET, HEAD, POST"
        r = await client.post(f"/v1/providers/{uuid.uuid4()}", headers=tenant.headers)
        assert r.headers["allow"] == "GET, HEAD, PATCH"
        # Without a key: 401 first, whatever the method (authentication before anything).
        assert_problem(await client.delete("/v1/patients"), 401, "unauthorized")
        r = await client.put("/healthz")
        assert r.headers["allow"] == "GET, HEAD"


class TestHead:
    async def test_every_get_route_answers_head_without_a_body(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        async with AsyncSession(database.owner_engine) as owner:
            admin = await OrganizationService.create_api_key(
                db=owner, organization_id=tenant.organization_id, scopes=[FULL_ACCESS, ADMIN]
            )
        tenant = Tenant(tenant.organization_id, admin.id, admin.key)  # every scope
        patient = await post_patient(client, tenant)
        provider = await post_provider(client, tenant)
        paths = {
            "/healthz",
            "/readyz",
            f"/v1/patients/{patient}",
            f"/v1/providers/{provider}",
            f"/v1/providers/{provider}/patients",
            "/v1/reports/panels",
            f"/v1/patients/{patient}/care-team",
            f"/v1/patients/{patient}/care-team/history",
            f"/v1/patients/{patient}/care-team/periods",
            "/v1/patients",
            "/v1/providers",
            f"/v1/patients/{patient}/changes",
            f"/v1/providers/{provider}/changes",
            "/v1/care-team-events",
            "/.well-known/smart-configuration",
            "/fhir/R4/.well-known/smart-configuration",
            "/v1/api-keys",
            "/v1/clients",
            "/v1/access-log",
        }
        document = (await client.get("/openapi.json")).json()
        get_routes = {p for p, ops in document["paths"].items() if "get" in ops}
        assert len(get_routes) == len(paths)  # a new GET route joins this test
        for path in paths:
            got = await client.get(path, headers=tenant.headers)
            head = await client.head(path, headers=tenant.headers)
            assert head.status_code == got.status_code == 200, path
            assert head.content == b""
            assert head.headers["content-type"] == got.headers["content-type"]
            assert head.headers["content-length"] == got.headers["content-length"]


class TestBodies:
    async def test_a_body_over_the_limit_is_413(self, client: httpx.AsyncClient, tenant: Tenant):
        r = await client.post(
            "/v1/patients",
            content=b'{"first_name": "' + b"x" * 70_000 + b'"}',
            headers={**tenant.headers, "Content-Type": "application/json"},
        )
        assert_problem(r, 413, "body_too_large")

    async def test_a_chunked_body_over_the_limit_is_413_too(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: sent chunked
            yield b'{"first_name": "A", "last_name": "'
            for _ in range(10):
                yield b"x" * 8_000
            yield b'", "dob": "1990-01-01"}'

        r = await client.post(
            "/v1/patients",
            content=chunks(),
            headers={**tenant.headers, "Content-Type": "application/json"},
        )
        assert "content-length" not in r.request.headers
        assert_problem(r, 413, "body_too_large")

    async def test_malformed_json_and_bad_ids_are_described_without_echoing(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        r = await client.post(
            "/v1/patients",
            content=b'{"first_name": "Secretname",',
            headers={**tenant.headers, "Content-Type": "application/json"},
        )
        body = assert_problem(r, 422, "validation_error")
        [problem] = body["errors"]
        assert (problem["location"], problem["field"]) == ("body", "body")
        assert problem["detail"].startswith("malformed JSON: ")
        assert "Secretname" not in r.text
        r = await client.get("/v1/patients/S3cret-not-a-uuid", headers=tenant.headers)
        body = assert_problem(r, 422, "validation_error")
        assert body["errors"][0]["field"] == "patient_id"
        assert "S" not in body["errors"][0]["detail"].replace("UUID", "")
        assert "S3cret" not in r.text

    @pytest.mark.parametrize(
        "content_type",
        [
            "text/plain",
            "application/x-www-form-urlencoded",
            "",
            "application/xml",
            "application/json; charset=latin1",  # JSON is UTF-8 (RFC 8259)
        ],
    )
    async def test_a_body_that_is_not_json_is_415(
        self, client: httpx.AsyncClient, tenant: Tenant, content_type: str
    ):
        r = await client.post(
            "/v1/patients",
            content=b'{"first_name": "A", "last_name": "B", "dob": "1990-01-01"}',
            headers={**tenant.headers, "Content-Type": content_type},
        )
        assert_problem(r, 415, "unsupported_media_type")

    @pytest.mark.parametrize("method", ["DELETE", "GET", "PUT"])
    async def test_a_body_that_is_not_json_is_415_whatever_the_method(
        self, client: httpx.AsyncClient, tenant: Tenant, method: str
    ):
        """A DELETE with a text/plain body was answered 422: the rule holds for every
        method that carries a body."""
        patient = await post_patient(client, tenant)
        provider = await post_provider(client, tenant)
        r = await client.request(
            method,
            f"/v1/patients/{patient}/care-team/members/{provider}",
            content=b"reason: other",
            headers={**tenant.headers, "Content-Type": "text/plain"},
        )
        assert_problem(r, 415, "unsupported_media_type")

    async def test_json_with_a_charset_is_fine(self, client: httpx.AsyncClient, tenant: Tenant):
        r = await client.post(
            "/v1/patients",
            content=b'{"first_name": "A", "last_name": "B", "dob": "1990-01-01"}',
            headers={**tenant.headers, "Content-Type": "application/json; charset=utf-8"},
        )
        assert r.status_code == 201


class TestCreated:
    async def test_a_201_says_where_what_it_made_is(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """A 201 had no Location header (RFC 9110 section 15.3.2)."""
        created = await client.post(
            "/v1/patients",
            json={"first_name": "A", "last_name": "B", "dob": "1990-01-01"},
            headers=tenant.headers,
        )
        assert created.status_code == 201
        assert created.headers["location"] == f"/v1/patients/{created.json()['id']}"
        got = await client.get(created.headers["location"], headers=tenant.headers)
        assert got.status_code == 200 and got.json() == created.json()
        provider = await client.post(
            "/v1/providers", json={"first_name": "C", "last_name": "D"}, headers=tenant.headers
        )
        assert provider.headers["location"] == f"/v1/providers/{provider.json()['id']}"
        patient = created.json()["id"]
        member = await client.post(
            f"/v1/patients/{patient}/care-team/members",
            json={"provider_id": provider.json()["id"]},
            headers=tenant.headers,
        )
        assert member.status_code == 201
        assert member.headers["location"] == f"/v1/patients/{patient}/care-team"
        again = await client.post(
            f"/v1/patients/{patient}/care-team/members",
            json={"provider_id": provider.json()["id"]},
            headers=tenant.headers,
        )
        assert again.status_code == 200 and "location" not in again.headers


class TestDocsWorkOffline:
    @pytest.mark.parametrize("page", ["/docs", "/docs/oauth2-redirect"])
    async def test_no_page_names_an_outside_host(self, client: httpx.AsyncClient, page: str):
        """/docs loaded Swagger UI from a CDN: blank on a clinic network without
        internet. Every page, and what it loads, comes from this server."""
        r = await client.get(page)
        assert r.status_code == 200
        assert "http://" not in r.text and "https://" not in r.text, r.text
        loaded = re.findall(r'(?:src|href)="([^"]+)"', r.text)
        if page != "/docs/oauth2-redirect":
            assert loaded, "the page loads its scripts from somewhere"
        for asset in loaded:
            assert asset.startswith("/"), asset
            assert (await client.get(asset)).status_code == 200, asset
        if page == "/docs":
            assert '"validatorUrl": null' in r.text  # the validator badge calls out

    async def test_there_is_no_redoc_page(self, client: httpx.AsyncClient):
        """/redoc served its script from this server, but that script draws its logo from
        the vendor's CDN: every browser that opened it called an outside host."""
        assert (await client.get("/redoc")).status_code == 404


class TestNoRedirects:
    @pytest.mark.parametrize("suffix", ["/", "/care-team/"])
    async def test_a_trailing_slash_is_404_whatever_the_host(
        self, client: httpx.AsyncClient, tenant: Tenant, suffix: str
    ):
        r = await client.get(
            f"/v1/patients/{uuid.uuid4()}{suffix}",
            headers={"Host": "evil.example.com", **tenant.headers},
        )
        assert_problem(r, 404, "not_found")
        assert "location" not in r.headers


class TestAllowedHosts:
    async def test_only_the_configured_hosts_are_answered(
        self, database: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
    ):
        monkeypatch.setenv("ALLOWED_HOSTS", "api.clinic.example, *.internal.example")
        from src.config import get_settings  # noqa: PLC0415  (re-read with the new env)

        get_settings.cache_clear()
        try:
            app = create_app(database)
        finally:
            monkeypatch.delenv("ALLOWED_HOSTS")
            get_settings.cache_clear()
        for host, status in [
            ("api.clinic.example", 200),
            ("api.clinic.example:8443", 200),
            ("node1.internal.example", 200),
            ("evil.example.com", 400),
            ("api.clinic.example.evil.com", 400),
        ]:
            async for c in app_client(app, host):
                r = await c.get("/healthz")
                assert r.status_code == status, host
                if status == 400:
                    assert_problem(r, 400, "invalid_host")


class TestCaching:
    async def test_answers_are_never_stored_by_caches(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient = await post_patient(client, tenant)
        for path in (f"/v1/patients/{patient}", f"/v1/patients/{uuid.uuid4()}", "/healthz"):
            r = await client.get(path, headers=tenant.headers)
            assert r.headers["cache-control"] == "no-store"


class TestRetryable503:
    async def test_a_lock_wait_that_times_out_is_busy_with_retry_after(
        self, database: Database, database_url: str, settings: Settings, tenant: Tenant
    ):
        impatient = open_database(
            settings.model_copy(update={"db_lock_timeout_ms": 300}), database_url
        )
        app = create_app(impatient)
        try:
            async for c in app_client(app):
                patient = await post_patient(c, tenant)
                provider = await post_provider(c, tenant)
                async with database.owner_engine.connect() as blocker:
                    await blocker.execute(
                        text("SELECT 1 FROM patients WHERE id = :p FOR UPDATE"), {"p": patient}
                    )
                    r = await c.put(
                        f"/v1/patients/{patient}/care-team/primary",
                        json={"provider_id": provider},
                        headers=tenant.headers,
                    )
                    await blocker.rollback()
                assert_problem(r, 503, "busy")
                assert r.headers["retry-after"] == "1"
                team = await c.get(f"/v1/patients/{patient}/care-team", headers=tenant.headers)
                assert team.json()["primary_provider_id"] is None  # nothing changed
        finally:
            await impatient.dispose()

    async def test_a_database_outage_is_503_with_retry_after(self, settings: Settings):
        unreachable = open_database(settings, "postgresql://nobody@127.0.0.1:1/none")
        app = create_app(unreachable)
        try:
            async for c in app_client(app):
                r = await c.get(
                    f"/v1/patients/{uuid.uuid4()}",
                    headers={"Authorization": "Bearer ctk_" + "A" * 43},
                )
            assert_problem(r, 503, "database_unavailable")
            assert int(r.headers["retry-after"]) > 0
        finally:
            await unreachable.dispose()


class TestOpenApiDocument:
    async def test_operations_have_stable_ids_and_list_their_problems(
        self, client: httpx.AsyncClient
    ):
        document = (await client.get("/openapi.json")).json()
        ids = []
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                ids.append(operation["operationId"])
                assert re.fullmatch(r"[a-z]+(?:[A-Z][a-z]+)*", operation["operationId"])
                if not path.startswith("/v1"):
                    continue
                responses = operation["responses"]
                for status in ("401", "422", "431", "503"):
                    assert status in responses, (method, path, status)
                    content = responses[status]["content"]["application/problem+json"]
                    codes = content["schema"]["allOf"][1]["properties"]["error"]["enum"]
                    assert codes, (method, path, status)
                assert "Retry-After" in responses["503"]["headers"]
                assert {"400", "413", "415"} <= set(responses), (method, path)  # any request
        assert len(ids) == len(set(ids))
        ready = document["paths"]["/readyz"]["get"]["responses"]["503"]
        schema = ready["content"]["application/problem+json"]["schema"]
        assert schema["allOf"][1]["properties"]["error"]["enum"] == ["not_ready"]
        assert "Retry-After" in ready["headers"]
        assert "431" in document["paths"]["/healthz"]["get"]["responses"]
        assert {"getCareTeam", "assignPrimaryProvider", "createPatient"} <= set(ids)
        assert "Problem" in document["components"]["schemas"]

    async def test_no_route_lists_a_5xx_it_never_means(self, client: httpx.AsyncClient):
        document = (await client.get("/openapi.json")).json()
        for operations in document["paths"].values():
            for operation in operations.values():
                assert "500" not in operation["responses"]


async def test_concurrent_requests_keep_their_own_request_ids(client: httpx.AsyncClient):
    responses = await asyncio.gather(*(client.get("/v1/nothing") for _ in range(20)))
    ids = {r.headers["x-request-id"] for r in responses}
    assert len(ids) == 20
    assert all(r.json()["request_id"] == r.headers["x-request-id"] for r in responses)


class TestTheRequestsSession:
    async def test_every_request_gives_its_connection_back_however_it_ends(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        """The session of a request is closed by the middleware once the response is
        sent (src/api/deps.py): after answers of every kind, and HEAD, no pooled
        connection stays checked out."""
        patient = await post_patient(client, tenant)
        team = f"/v1/patients/{patient}/care-team"
        answers = [
            (await client.get(team, headers=tenant.headers)).status_code,
            (await client.head(team, headers=tenant.headers)).status_code,
            (await client.get(f"/v1/patients/{uuid.uuid4()}", headers=tenant.headers)).status_code,
            (await client.put(f"{team}/primary", json={}, headers=tenant.headers)).status_code,
            (
                await client.get(team, headers={"Authorization": "Bearer ctk_" + "A" * 43})
            ).status_code,
        ]
        assert answers == [200, 200, 404, 422, 401]
        assert database.app_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
