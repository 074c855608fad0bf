"""Authentication, and tenant isolation through every route."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from typing import ClassVar

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from src.api.auth import needs_key
from src.db import Database
from src.services.organization_service import OrganizationService
from tests.helpers import Tenant, TenantFactory, post_patient, post_provider


class TestAuthentication:
    @pytest.mark.parametrize(
        "header",
        [
            None,
            "",
            "Bearer",
            "Bearer ",
            "Basic dXNlcjpwYXNz",
            "Bearer not-a-key",
            "Bearer ctk_" + "A" * 43,  # well-formed, unknown
            "Bearer ctk_" + "é" * 43,
        ],
    )
    async def test_missing_malformed_or_unknown_key_is_401(
        self, client: httpx.AsyncClient, header: str | None
    ):
        headers = {} if header is None else {"Authorization": header.encode("latin-1")}
        r = await client.get(f"/v1/patients/{uuid.uuid4()}", headers=headers)
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        body = r.json()
        assert body["error"] == "unauthorized"
        # It named the API key alone, where a SMART access token is accepted too.
        assert body["detail"] == (
            "missing, malformed or revoked credential: send an API key or a SMART access token"
        )
        assert body["type"] == "urn:careteam:problem:unauthorized"
        assert body["status"] == 401 and body["title"] == "Unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"

    async def test_auth_is_checked_before_input(self, client: httpx.AsyncClient):
        r = await client.get("/v1/patients/not-a-uuid")
        assert r.status_code == 401

    async def test_revoked_key_stops_working_at_once(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        patient = await post_patient(client, tenant)
        async with AsyncSession(database.owner_engine) as owner:
            second = await OrganizationService.create_api_key(
                db=owner, organization_id=tenant.organization_id
            )
        headers = {"Authorization": f"Bearer {second.key}"}
        assert (await client.get(f"/v1/patients/{patient}", headers=headers)).status_code == 200
        async with AsyncSession(database.owner_engine) as owner:
            await OrganizationService.revoke_api_key(db=owner, key_id=second.id)
        assert (await client.get(f"/v1/patients/{patient}", headers=headers)).status_code == 401
        # The organization's other key is untouched.
        ok = await client.get(f"/v1/patients/{patient}", headers=tenant.headers)
        assert ok.status_code == 200

    @pytest.mark.parametrize("operation", ["patient", "care team", "assign"])
    async def test_a_key_revoked_after_its_first_use_is_refused_and_leaves_no_trace(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database, operation: str
    ):
        """The process remembers a key's organization after its first use; the key's
        liveness is checked again in the first statement of each transaction (the
        one-statement care-team read included). The refused request's transaction is
        rolled back: the next requests, on the same pooled connection, are served."""
        patient = await post_patient(client, tenant)
        provider = await post_provider(client, tenant)
        async with AsyncSession(database.owner_engine) as owner:
            second = await OrganizationService.create_api_key(
                db=owner, organization_id=tenant.organization_id
            )
        headers = {"Authorization": f"Bearer {second.key}"}
        team = f"/v1/patients/{patient}/care-team"

        async def call(headers: dict[str, str]) -> httpx.Response:
            if operation == "patient":
                return await client.get(f"/v1/patients/{patient}", headers=headers)
            if operation == "care team":
                return await client.get(team, headers=headers)
            body = {"provider_id": str(provider)}
            return await client.put(f"{team}/primary", json=body, headers=headers)

        assert (await call(headers)).status_code == 200
        async with AsyncSession(database.owner_engine) as owner:
            await OrganizationService.revoke_api_key(db=owner, key_id=second.id)
        refused = await call(headers)
        assert refused.status_code == 401
        assert refused.json()["error"] == "unauthorized"
        assert refused.headers["www-authenticate"] == "Bearer"
        for _ in range(3):
            assert (await call(tenant.headers)).status_code == 200
            assert (await call(headers)).status_code == 401

    async def test_a_revoked_key_is_refused_on_every_route_before_any_other_answer(
        self, app: FastAPI, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        """A key revoked after its first use used to be served wherever the answer needed
        no statement (a 422 for a malformed id or body, a FHIR search refused for its
        parameters, a 404 or 405): authentication comes before anything else."""
        async with AsyncSession(database.owner_engine) as owner:
            second = await OrganizationService.create_api_key(
                db=owner, organization_id=tenant.organization_id
            )
        headers = {"Authorization": f"Bearer {second.key}", "Content-Type": "application/json"}
        assert (await client.get("/v1/reports/panels", headers=headers)).status_code == 200
        async with AsyncSession(database.owner_engine) as owner:
            await OrganizationService.revoke_api_key(db=owner, key_id=second.id)
        asked = []
        for route in iter_route_contexts(app.router.routes):
            if route.path is None or not route.methods or not needs_key(route.path):
                continue
            path = re.sub(r"\{[^}]+\}", "not-an-id", route.path)
            for method in sorted(route.methods):
                asked.append((method, path))
                r = await client.request(
                    method, f"{path}?_count=0&limit=0", headers=headers, content=b"{"
                )
                assert r.status_code == 401, (method, path, r.status_code, r.text)
        for method, path in [
            ("GET", "/v1/nothing"),
            ("DELETE", "/v1/patients"),
            ("GET", "/fhir/R4/x"),
        ]:
            r = await client.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path)
        fhir = await client.get("/fhir/R4/Patient?birthdate=yesterday", headers=headers)
        assert fhir.status_code == 401
        assert fhir.json()["resourceType"] == "OperationOutcome"
        assert fhir.json()["issue"][0]["code"] == "login"
        assert len(asked) > 20

    @pytest.mark.parametrize("path", ["/v1/reports/panels", "/fhir/R4/Patient"])
    async def test_two_authorization_headers_are_refused_as_either_key(
        self, client: httpx.AsyncClient, make_tenant: TenantFactory, path: str
    ):
        """Two keys (B's, then A's) were served as B: an ambiguous credential is refused
        (RFC 6750, invalid_request), whichever keys they are."""
        a, b = await make_tenant(), await make_tenant()
        for first, second in ((b, a), (a, a)):
            r = await client.get(
                path,
                headers=[
                    ("Authorization", f"Bearer {first.key}"),
                    ("Authorization", f"Bearer {second.key}"),
                ],
            )
            assert r.status_code == 400
            assert r.headers["www-authenticate"] == 'Bearer error="invalid_request"'
            if path.startswith("/fhir"):
                assert r.json()["resourceType"] == "OperationOutcome"
            else:
                assert r.json()["error"] == "invalid_request"

    async def test_keys_are_stored_only_as_hashes(self, tenant: Tenant, database: Database):
        async with database.owner_engine.connect() as conn:
            stored = (
                await conn.execute(
                    text("SELECT key_hash FROM api_keys WHERE id = :id"), {"id": tenant.api_key_id}
                )
            ).scalar_one()
            anywhere = (
                await conn.execute(
                    text("SELECT count(*) FROM api_keys WHERE key_hash = :k OR name = :k"),
                    {"k": tenant.key},
                )
            ).scalar_one()
        assert stored != tenant.key and len(stored) == 64
        assert anywhere == 0


class TestTenantIsolationMatrix:
    """Organization B's key on organization A's ids answers exactly what unknown ids do."""

    @pytest.fixture
    async def world(
        self, client: httpx.AsyncClient, make_tenant: Callable[[], Awaitable[Tenant]]
    ) -> dict[str, object]:
        a, b = await make_tenant(), await make_tenant()
        patient_a = await post_patient(client, a)
        provider_a, other_a = await post_provider(client, a), await post_provider(client, a)
        await client.put(
            f"/v1/patients/{patient_a}/care-team/primary",
            json={"provider_id": provider_a},
            headers=a.headers,
        )
        await client.post(
            f"/v1/patients/{patient_a}/care-team/members",
            json={"provider_id": other_a},
            headers=a.headers,
        )
        return {
            "a": a,
            "b": b,
            "patient_a": patient_a,
            "provider_a": provider_a,
            "patient_b": await post_patient(client, b),
            "provider_b": await post_provider(client, b),
        }

    ROUTES: ClassVar[list[tuple[str, str, dict[str, object] | None]]] = [
        ("GET", "/v1/patients/{patient}", None),
        ("GET", "/v1/providers/{provider}", None),
        ("PATCH", "/v1/providers/{provider}", {"active": False}),
        ("GET", "/v1/patients/{patient}/care-team", None),
        ("PUT", "/v1/patients/{patient}/care-team/primary", {"provider_id": "{provider_b}"}),
        ("POST", "/v1/patients/{patient}/care-team/members", {"provider_id": "{provider_b}"}),
        ("DELETE", "/v1/patients/{patient}/care-team/members/{provider}", None),
        ("GET", "/v1/patients/{patient}/care-team/history", None),
        ("GET", "/v1/patients/{patient}/care-team?as_of=2025-01-01T00:00:00Z", None),
        ("GET", "/v1/patients/{patient}/care-team/periods", None),
        ("GET", "/v1/providers/{provider}/patients", None),
        ("GET", "/v1/providers/{provider}/patients?role=any&as_of=2025-01-01T00:00:00Z", None),
        ("PATCH", "/v1/providers/{provider}", {"panel_capacity": 0}),
        (
            "POST",
            "/v1/providers/{provider}/panel/transfer",
            {"to_provider_id": "{provider_b}", "reason": "provider_left"},
        ),
        ("PATCH", "/v1/patients/{patient}", {"last_name": "Changed"}),
        ("PATCH", "/v1/providers/{provider}", {"last_name": "Changed", "npi": None}),
        ("GET", "/v1/patients/{patient}/changes", None),
        ("GET", "/v1/providers/{provider}/changes", None),
    ]

    @staticmethod
    def filled(
        world: dict[str, object], body: dict[str, object] | None, patient: object, provider: object
    ) -> dict[str, object] | None:
        """The body with the placeholders filled in (a path takes the same)."""
        if body is None:
            return None
        return {
            key: value.format(patient=patient, provider=provider, provider_b=world["provider_b"])
            if isinstance(value, str)
            else value
            for key, value in body.items()
        }

    @pytest.mark.parametrize(("method", "path", "body"), ROUTES)
    async def test_other_tenants_ids_look_unknown(
        self,
        client: httpx.AsyncClient,
        world: dict[str, object],
        method: str,
        path: str,
        body: dict[str, object] | None,
    ):
        b: Tenant = world["b"]  # type: ignore[assignment]
        unknown_patient, unknown_provider = str(uuid.uuid4()), str(uuid.uuid4())

        async def call(patient: object, provider: object) -> httpx.Response:
            return await client.request(
                method,
                path.format(patient=patient, provider=provider),
                json=self.filled(world, body, patient, provider),
                headers=b.headers,
            )

        theirs = await call(world["patient_a"], world["provider_a"])
        unknown = await call(unknown_patient, unknown_provider)
        assert theirs.status_code == unknown.status_code == 404
        assert theirs.json()["error"] == unknown.json()["error"]
        normalise = {
            str(world["patient_a"]): "ID",
            str(world["provider_a"]): "ID",
            unknown_patient: "ID",
            unknown_provider: "ID",
        }
        detail_theirs, detail_unknown = theirs.json()["detail"], unknown.json()["detail"]
        for raw, placeholder in normalise.items():
            detail_theirs = detail_theirs.replace(raw, placeholder)
            detail_unknown = detail_unknown.replace(raw, placeholder)
        assert detail_theirs == detail_unknown

    async def test_a_is_unchanged_after_bs_attempts(
        self, client: httpx.AsyncClient, world: dict[str, object]
    ):
        a: Tenant = world["a"]  # type: ignore[assignment]
        b: Tenant = world["b"]  # type: ignore[assignment]
        patient, provider = world["patient_a"], world["provider_a"]
        for method, path, body in self.ROUTES:
            r = await client.request(
                method,
                path.format(patient=patient, provider=provider),
                json=self.filled(world, body, patient, provider),
                headers=b.headers,
            )
            assert r.status_code == 404, (method, path, r.text)
        team = (
            await client.get(f"/v1/patients/{world['patient_a']}/care-team", headers=a.headers)
        ).json()
        assert team["primary_provider_id"] == world["provider_a"]
        assert len(team["members"]) == 2
        provider = (
            await client.get(f"/v1/providers/{world['provider_a']}", headers=a.headers)
        ).json()
        assert provider["active"] is True
        assert provider["panel_capacity"] is None and provider["panel_size"] == 1
        periods = (
            await client.get(
                f"/v1/patients/{world['patient_a']}/care-team/periods", headers=a.headers
            )
        ).json()
        assert len(periods["items"]) == 2

    async def test_b_provider_cannot_join_a_team(
        self, client: httpx.AsyncClient, world: dict[str, object]
    ):
        a: Tenant = world["a"]  # type: ignore[assignment]
        for method, suffix in (("PUT", "primary"), ("POST", "members")):
            r = await client.request(
                method,
                f"/v1/patients/{world['patient_a']}/care-team/{suffix}",
                json={"provider_id": world["provider_b"]},
                headers=a.headers,
            )
            # A body that refers to another tenant's provider is invalid (422), exactly as
            # one that refers to no provider at all; the patient in the path exists.
            assert r.status_code == 422
            assert r.json()["error"] == "provider_not_found"
            assert r.json()["errors"][0]["field"] == "provider_id"


class TestReferencesInPathsAndBodies:
    """404 belongs to the resource the URL names; an id in the body that names nothing
    is an invalid request (422). Another tenant's ids answer exactly like unknown ones."""

    async def test_unknown_and_foreign_body_references_are_422_alike(
        self, client: httpx.AsyncClient, make_tenant: TenantFactory
    ):
        a, b = await make_tenant(), await make_tenant()
        patient = await post_patient(client, a)
        foreign = await post_provider(client, b)
        answers = []
        for provider in (str(uuid.uuid4()), foreign):
            for method, suffix in (("PUT", "primary"), ("POST", "members")):
                r = await client.request(
                    method,
                    f"/v1/patients/{patient}/care-team/{suffix}",
                    json={"provider_id": provider},
                    headers=a.headers,
                )
                body = r.json()
                answers.append((r.status_code, body["error"], body["errors"][0]["field"], suffix))
        assert (
            answers
            == [
                (422, "provider_not_found", "provider_id", "primary"),
                (422, "provider_not_found", "provider_id", "members"),
            ]
            * 2
        )
        team = await client.get(f"/v1/patients/{patient}/care-team", headers=a.headers)
        assert team.json()["members"] == []  # nothing written

    async def test_unknown_and_foreign_path_ids_are_404_alike(
        self, client: httpx.AsyncClient, make_tenant: TenantFactory
    ):
        a, b = await make_tenant(), await make_tenant()
        own_patient = await post_patient(client, a)
        own_provider = await post_provider(client, a)
        for patient in (str(uuid.uuid4()), await post_patient(client, b)):
            for method, path, body in [
                ("GET", f"/v1/patients/{patient}", None),
                ("GET", f"/v1/patients/{patient}/care-team", None),
                ("GET", f"/v1/patients/{patient}/care-team/history", None),
                ("PUT", f"/v1/patients/{patient}/care-team/primary", {"provider_id": own_provider}),
                (
                    "POST",
                    f"/v1/patients/{patient}/care-team/members",
                    {"provider_id": own_provider},
                ),
                ("DELETE", f"/v1/patients/{patient}/care-team/members/{own_provider}", None),
            ]:
                r = await client.request(method, path, json=body, headers=a.headers)
                assert (r.status_code, r.json()["error"]) == (404, "patient_not_found"), path
        for provider in (str(uuid.uuid4()), await post_provider(client, b)):
            for method, path, body in [
                ("GET", f"/v1/providers/{provider}", None),
                ("PATCH", f"/v1/providers/{provider}", {"active": False}),
            ]:
                r = await client.request(method, path, json=body, headers=a.headers)
                assert (r.status_code, r.json()["error"]) == (404, "provider_not_found"), path
            r = await client.delete(
                f"/v1/patients/{own_patient}/care-team/members/{provider}", headers=a.headers
            )
            assert (r.status_code, r.json()["error"]) == (404, "provider_not_on_care_team")
