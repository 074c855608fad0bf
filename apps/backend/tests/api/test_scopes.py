"""Scopes: every route's row in the one table, and the 403 a key (or a SMART access
token) without it gets."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncSession

from src.api.auth import needs_key
from src.api.route_scopes import ROUTE_SCOPES, required_scope
from src.db import Database
from src.scopes import ADMIN, Grants, InvalidScope, parse_scope, parse_scopes
from src.services.organization_service import OrganizationService
from tests.helpers import Tenant, post_patient, post_provider, token_headers

FHIR = "/fhir/R4"
SCOPED = [(method, path) for (method, path), scope in ROUTE_SCOPES.items() if scope is not None]


def app_routes(app: FastAPI) -> Iterator[tuple[str, str]]:
    """Every (method, template) the app routes."""
    for entry in app.router.routes:
        for route in (
            getattr(entry, "original_router", entry).routes
            if hasattr(entry, "original_router")
            else [entry]
        ):
            if isinstance(route, APIRoute):
                for method in route.methods:
                    yield method, route.path


class TestTheTable:
    def test_every_v1_and_fhir_route_has_a_row_and_every_row_a_route(self, app: FastAPI):
        routed = {(m, p) for m, p in app_routes(app) if needs_key(p) or p.startswith(FHIR)}
        assert routed, "no routes found"
        assert routed - set(ROUTE_SCOPES) == set(), "routes without a scope in route_scopes.py"
        assert set(ROUTE_SCOPES) - routed == set(), "rows for routes the app does not have"

    def test_each_row_is_the_one_its_routes_requests_find(self):
        for (method, path), scope in ROUTE_SCOPES.items():
            if "{anything:path}" in path or path == FHIR:
                continue
            sample = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
            assert required_scope(method, sample) == scope, (method, path)
        assert required_scope("HEAD", f"/v1/patients/{uuid.uuid4()}") == "system/Patient.r"
        assert required_scope("GET", "/v1/nowhere") is None  # a 404, whatever the scopes

    def test_every_scope_named_is_well_formed(self):
        for scope in ROUTE_SCOPES.values():
            if scope is not None:
                assert parse_scope(scope) == scope

    def test_the_openapi_document_states_each_operations_scope(self, app: FastAPI):
        document = app.openapi()
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                expected = ROUTE_SCOPES.get((method.upper(), path))
                if needs_key(path):
                    assert operation["security"] == [{"HTTPBearer": [expected]}], (method, path)
                    assert "403" in operation["responses"], (method, path)
                else:
                    assert "security" not in operation, (method, path)


class TestSyntax:
    @pytest.mark.parametrize(
        ("given", "stored"),
        [
            ("system/*.read", "system/*.rs"),
            ("system/*.write", "system/*.cud"),
            ("system/*.*", "system/*.cruds"),
            ("system/Patient.read", "system/Patient.rs"),
            ("system/CareTeam.write", "system/CareTeam.cud"),
            ("system/CareTeam.rs", "system/CareTeam.rs"),
            ("system/Practitioner.cd", "system/Practitioner.cd"),
            (ADMIN, ADMIN),
        ],
    )
    def test_v1_is_read_as_v2(self, given: str, stored: str):
        assert parse_scope(given) == stored

    @pytest.mark.parametrize(
        "given",
        [
            "",
            "system",
            "system/*",
            "system/*.",
            "system/*.sr",  # out of order
            "system/*.rr",
            "system/*.x",
            "system/Observation.rs",
            "patient/*.rs",
            "user/Patient.read",
            "system/Patient.rs?name=x",
            "careteam/other",
            "system/*.cruds ",
        ],
    )
    def test_malformed_scopes_are_refused_in_one_line(self, given: str):
        with pytest.raises(InvalidScope) as refused:
            parse_scope(given)
        assert "\n" not in str(refused.value)

    def test_scopes_are_stored_once_sorted_and_never_none(self):
        assert parse_scopes(["system/*.read", "system/*.rs", ADMIN]) == (ADMIN, "system/*.rs")
        with pytest.raises(InvalidScope):
            parse_scopes([])

    def test_grants(self):
        grants = Grants(("system/CareTeam.rs", "system/*.c"))
        assert grants.allows("system/CareTeam.r") and grants.allows("system/CareTeam.s")
        assert grants.allows("system/Patient.c") and grants.allows("system/CareTeam.c")
        assert not grants.allows("system/CareTeam.u")
        assert not grants.allows("system/Patient.r")
        assert not grants.allows(ADMIN)
        assert Grants(("system/*.cruds", ADMIN)).allows(ADMIN)


async def key_with(database: Database, tenant: Tenant, scopes: list[str]) -> dict[str, str]:
    async with AsyncSession(database.owner_engine) as owner:
        issued = await OrganizationService.create_api_key(
            db=owner, organization_id=tenant.organization_id, scopes=scopes
        )
    return {"Authorization": f"Bearer {issued.key}"}


async def credential_with(
    kind: str,
    database: Database,
    client: httpx.AsyncClient,
    tenant: Tenant,
    scopes: list[str],
) -> dict[str, str]:
    """The Authorization header of a new API key, or of a SMART access token granted
    exactly `scopes` (its client registered with them), of the tenant."""
    if kind == "key":
        return await key_with(database, tenant, scopes)
    return await token_headers(database, client, tenant.organization_id, scopes)


def body_of(method: str, path: str, provider: str) -> dict[str, object]:
    """The request's keyword arguments: a valid JSON body for the writes that take one."""
    names = {"first_name": "A", "last_name": "B"}
    bodies: dict[tuple[str, str], dict[str, object]] = {
        ("POST", "/v1/patients"): {**names, "dob": "1990-01-01"},
        ("POST", "/v1/providers"): names,
        ("PATCH", "/v1/patients/{patient_id}"): {"first_name": "C"},
        ("PATCH", "/v1/providers/{provider_id}"): {"first_name": "C"},
        ("PUT", "/v1/patients/{patient_id}/care-team/primary"): {"provider_id": provider},
        ("POST", "/v1/patients/{patient_id}/care-team/members"): {"provider_id": provider},
        ("POST", "/v1/providers/{provider_id}/panel/transfer"): {
            "to_provider_id": provider,
            "reason": "other",
            "dry_run": True,
        },
        ("POST", "/v1/api-keys"): {"scopes": ["system/*.rs"]},
        ("POST", "/v1/clients"): {
            "name": "c",
            "jwks_url": "https://jwks.example.org/keys",
            "scopes": ["system/*.rs"],
        },
    }
    body = bodies.get((method, path))
    return {} if body is None else {"json": body}


class TestEnforcement:
    @pytest.mark.parametrize("kind", ["key", "token"])
    @pytest.mark.parametrize(("method", "template"), SCOPED)
    async def test_without_its_scope_403_with_it_not(  # noqa: PLR0917 (parameters)
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        method: str,
        template: str,
        kind: str,
    ):
        patient = await post_patient(client, tenant)
        provider = await post_provider(client, tenant)
        needed = ROUTE_SCOPES[(method, template)]
        assert needed is not None
        path = (
            template.replace("{patient_id}", patient)
            .replace("{provider_id}", provider)
            .replace("{version}", "1")
            .replace("{key_id}", str(uuid.uuid4()))
            .replace("{client_id}", str(uuid.uuid4()))
            .replace(
                "{ident}",
                str(tenant.organization_id)
                if "/Organization/" in template
                else provider
                if "/Practitioner/" in template
                else patient,
            )
        )
        body = body_of(method, template, provider)
        # Every other scope there is (the administrative one included, unless it is the
        # one needed).
        others = sorted({s for s in (*ROUTE_SCOPES.values(), ADMIN) if s not in (None, needed)})
        without = await credential_with(kind, database, client, tenant, others)
        refused = await client.request(method, path, headers=without, **body)  # type: ignore[arg-type]
        assert refused.status_code == 403, refused.text
        assert refused.headers["www-authenticate"] == (
            f'Bearer error="insufficient_scope", scope="{needed}"'
        )
        if template.startswith(FHIR):
            outcome = refused.json()
            assert outcome["resourceType"] == "OperationOutcome"
            assert outcome["issue"][0]["code"] == "forbidden"
        else:
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["error"] == "insufficient_scope"
        if method == "GET":
            head = await client.head(path, headers=without)
            assert head.status_code == 403

        with_it = await credential_with(kind, database, client, tenant, [needed])
        allowed = await client.request(method, path, headers=with_it, **body)  # type: ignore[arg-type]
        assert allowed.status_code not in {401, 403}, allowed.text
        assert allowed.status_code < 500, allowed.text


class TestOrder:
    async def test_the_scope_comes_before_validation_and_existence(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        reader = await key_with(database, tenant, ["system/*.rs"])
        # A malformed body, an unknown id, an unknown parameter: 403 all the same.
        for response in (
            await client.post("/v1/patients", content=b"{", headers=reader),
            await client.put(
                f"/v1/patients/{uuid.uuid4()}/care-team/primary", json={}, headers=reader
            ),
            await client.post("/v1/patients", json={}, params={"nope": "1"}, headers=reader),
        ):
            assert response.status_code == 403, response.text
        # An unknown path or method is 404 or 405 as before: nothing to have a scope for.
        assert (await client.get("/v1/nowhere", headers=reader)).status_code == 404
        assert (await client.delete("/v1/patients", headers=reader)).status_code == 405
        assert (await client.post(f"{FHIR}/Patient", headers=reader)).status_code == 405

    async def test_a_revoked_key_without_the_scope_is_401_not_403(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        async with AsyncSession(database.owner_engine) as owner:
            issued = await OrganizationService.create_api_key(
                db=owner, organization_id=tenant.organization_id, scopes=["system/*.rs"]
            )
        headers = {"Authorization": f"Bearer {issued.key}"}
        assert (await client.get("/v1/patients", headers=headers)).status_code == 200
        async with AsyncSession(database.owner_engine) as owner:
            await OrganizationService.revoke_api_key(db=owner, key_id=issued.id)
        refused = await client.post("/v1/patients", json={}, headers=headers)
        assert refused.status_code == 401, refused.text


class TestIncludes:
    """An included resource needs its own type's read scope: a search's scope does not
    reach the types its _include and _revinclude bring in."""

    @pytest.mark.parametrize("kind", ["key", "token"])
    async def test_an_include_of_a_type_without_its_scope_is_403(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database, kind: str
    ):
        patient = await post_patient(client, tenant, first_name="Ana", last_name="Secret")
        provider = await post_provider(client, tenant)
        put = await client.put(
            f"/v1/patients/{patient}/care-team/primary",
            json={"provider_id": provider},
            headers=tenant.headers,
        )
        assert put.status_code in (200, 201), put.text
        care_teams = await credential_with(kind, database, client, tenant, ["system/CareTeam.rs"])
        practitioners = await credential_with(
            kind, database, client, tenant, ["system/Practitioner.rs"]
        )
        for path, headers, needed in (
            (f"{FHIR}/CareTeam?_include=CareTeam:subject", care_teams, "system/Patient.r"),
            (f"{FHIR}/CareTeam?_include=CareTeam:patient", care_teams, "system/Patient.r"),
            (
                f"{FHIR}/CareTeam?_include=CareTeam:participant",
                care_teams,
                "system/Practitioner.r",
            ),
            (
                f"{FHIR}/Practitioner?_revinclude=Patient:general-practitioner",
                practitioners,
                "system/Patient.r",
            ),
            (
                f"{FHIR}/Practitioner?_revinclude=CareTeam:participant",
                practitioners,
                "system/CareTeam.r",
            ),
        ):
            refused = await client.get(path, headers=headers)
            assert refused.status_code == 403, (path, refused.text)
            assert f'scope="{needed}"' in refused.headers["www-authenticate"]
            assert "Secret" not in refused.text
        both = await credential_with(
            kind, database, client, tenant, ["system/CareTeam.rs", "system/Patient.r"]
        )
        found = await client.get(f"{FHIR}/CareTeam?_include=CareTeam:subject", headers=both)
        assert found.status_code == 200, found.text
        types = {e["resource"]["resourceType"] for e in found.json()["entry"]}
        assert types == {"CareTeam", "Patient"}
