"""Keys and SMART clients managed over HTTP by the organization's administrator
(/v1/api-keys, /v1/clients: careteam/admin), and the database's own check behind it."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from src.db import Database
from src.scopes import ADMIN
from src.services.organization_service import OrganizationService, hash_api_key
from tests.helpers import (
    Tenant,
    TenantFactory,
    ec_key,
    jwks_of,
    register_client,
    request_token,
    resolving,
    token_headers,
)

KEYS, CLIENTS = "/v1/api-keys", "/v1/clients"


async def key_with(database: Database, tenant: Tenant, scopes: list[str]) -> dict[str, str]:
    """The Authorization header of a new key of the tenant (made as `careteam key create`
    makes it, on an owner session)."""
    async with AsyncSession(database.owner_engine) as owner:
        issued = await OrganizationService.create_api_key(
            db=owner, organization_id=tenant.organization_id, scopes=scopes
        )
    return {"Authorization": f"Bearer {issued.key}"}


async def admin_of(database: Database, tenant: Tenant) -> dict[str, str]:
    return await key_with(database, tenant, [ADMIN])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def create_key(
    client: httpx.AsyncClient, admin: dict[str, str], **body: Any
) -> dict[str, Any]:
    response = await client.post(KEYS, json=body, headers=admin)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def every(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> list[Any]:
    """Every item of a list, page by page (two at a time)."""
    items: list[Any] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        response = await client.get(path, params=params, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        if page["next_cursor"] is None:
            return items
        params = {"limit": 2, "cursor": page["next_cursor"]}


class TestTheAdministrativeScope:
    @pytest.mark.parametrize(
        ("method", "path", "body"),
        [
            ("POST", KEYS, {"scopes": ["system/*.rs"]}),
            ("GET", KEYS, None),
            ("DELETE", f"{KEYS}/{uuid.UUID(int=1)}", None),
            ("POST", CLIENTS, {"name": "x", "jwks_url": "https://a.example/j", "scopes": [ADMIN]}),
            ("GET", CLIENTS, None),
            ("DELETE", f"{CLIENTS}/{uuid.UUID(int=2)}", None),
        ],
    )
    async def test_a_default_key_is_refused_403_on_every_route(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        method: str,
        path: str,
        body: dict[str, Any] | None,
    ):
        response = await client.request(method, path, json=body, headers=tenant.headers)
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "insufficient_scope"
        assert response.headers["www-authenticate"] == (
            f'Bearer error="insufficient_scope", scope="{ADMIN}"'
        )

    async def test_a_token_without_it_is_refused_and_one_with_it_manages(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        reader = await token_headers(database, client, tenant.organization_id, ["system/*.rs"])
        assert (await client.get(KEYS, headers=reader)).status_code == 403
        admin = await token_headers(database, client, tenant.organization_id, [ADMIN])
        made = await create_key(client, admin, scopes=["system/Patient.rs"])
        assert made["id"] in {k["id"] for k in await every(client, KEYS, admin)}


class TestIssuingAKey:
    async def test_the_key_works_with_exactly_its_scopes(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        admin = await admin_of(database, tenant)
        response = await client.post(
            KEYS, json={"name": "reader", "scopes": ["system/Patient.read"]}, headers=admin
        )
        assert response.status_code == 201, response.text
        made = response.json()
        assert response.headers["location"] == f"{KEYS}/{made['id']}"
        assert made["name"] == "reader" and made["scopes"] == ["system/Patient.rs"]
        assert made["key"].startswith("ctk_") and made["created_at"]
        key = bearer(made["key"])
        assert (await client.get("/v1/patients", headers=key)).status_code == 200
        refused = await client.post(
            "/v1/patients",
            json={"first_name": "A", "last_name": "B", "dob": "1990-01-01"},
            headers=key,
        )
        assert refused.status_code == 403
        assert (await client.get(KEYS, headers=key)).status_code == 403
        listed = {k["id"]: k for k in await every(client, KEYS, admin)}
        assert "key" not in listed[made["id"]] and "key_hash" not in listed[made["id"]]

    async def test_without_scopes_the_default_and_an_admin_may_make_an_admin(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        admin = await admin_of(database, tenant)
        plain = await create_key(client, admin)
        assert plain["scopes"] == ["system/*.cruds"] and plain["name"] is None
        second = await create_key(client, admin, name="deputy", scopes=[ADMIN, "system/*.rs"])
        assert second["scopes"] == [ADMIN, "system/*.rs"]
        assert (await client.get(KEYS, headers=bearer(second["key"]))).status_code == 200

    async def test_two_keys_may_have_one_name(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        admin = await admin_of(database, tenant)
        first = await create_key(client, admin, name="sync")
        second = await create_key(client, admin, name="sync")  # its replacement, say
        assert first["id"] != second["id"]

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"scopes": ["patient/*.rs"]}, "scopes.0"),
            ({"scopes": ["system/*.rs", "system/Observation.rs"]}, "scopes.1"),
            ({"scopes": []}, "scopes"),
            ({"scopes": ["system/*.rs"] * 21}, "scopes"),
            ({"scopes": "system/*.rs"}, "scopes"),
            ({"name": " padded"}, "name"),
            ({"name": "x" * 201}, "name"),
            ({"name": "a\u0000b"}, "name"),
            ({"nme": "typo"}, "nme"),
        ],
    )
    async def test_malformed_bodies_are_422_naming_the_field(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        body: dict[str, Any],
        field: str,
    ):
        admin = await admin_of(database, tenant)
        response = await client.post(KEYS, json=body, headers=admin)
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "validation_error"
        assert field in {e["field"] for e in response.json()["errors"]}

    async def test_an_idempotency_key_a_huge_body_and_a_query_parameter_are_refused(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        admin = await admin_of(database, tenant)
        before = await every(client, KEYS, admin)
        keyed = await client.post(KEYS, json={}, headers={**admin, "Idempotency-Key": "k1"})
        assert keyed.status_code == 422
        assert keyed.json()["errors"][0]["field"] == "Idempotency-Key"
        huge = await client.post(KEYS, json={"name": "x" * 70_000}, headers=admin)
        assert huge.status_code == 413
        query = await client.post(KEYS, json={}, params={"org": "x"}, headers=admin)
        assert query.status_code == 422
        assert await every(client, KEYS, admin) == before  # nothing was made


class TestListingKeys:
    async def test_only_the_organizations_keys_never_tokens_paged_oldest_first(
        self,
        client: httpx.AsyncClient,
        make_tenant: TenantFactory,
        database: Database,
    ):
        tenant, other = await make_tenant(), await make_tenant()
        admin = await admin_of(database, tenant)
        await admin_of(database, other)
        made = [(await create_key(client, admin, name=f"k{n}"))["id"] for n in range(3)]
        await token_headers(database, client, tenant.organization_id, ["system/*.rs"])
        listed = await every(client, KEYS, admin)
        # The first key, the admin key, then those made over HTTP; no token, no other's.
        assert [k["id"] for k in listed][-3:] == made
        assert len(listed) == 5
        assert str(tenant.api_key_id) == listed[0]["id"]
        assert set(listed[0]) == {"id", "name", "scopes", "created_at", "revoked_at"}

    async def test_a_cursor_of_another_list_or_organization_is_422(
        self, client: httpx.AsyncClient, make_tenant: TenantFactory, database: Database
    ):
        tenant, other = await make_tenant(), await make_tenant()
        admin, others = await admin_of(database, tenant), await admin_of(database, other)
        cursor = (await client.get(KEYS, params={"limit": 1}, headers=admin)).json()["next_cursor"]
        assert cursor is not None
        for path, headers in ((KEYS, others), (CLIENTS, admin), ("/v1/patients", tenant.headers)):
            response = await client.get(path, params={"cursor": cursor}, headers=headers)
            assert response.status_code == 422, (path, response.text)
            assert response.json()["error"] == "invalid_cursor"
        too_many = await client.get(KEYS, params={"limit": 201}, headers=admin)
        assert too_many.status_code == 422


class TestRevokingAKey:
    async def test_it_stops_at_once_even_in_a_process_that_remembers_it(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        admin = await admin_of(database, tenant)
        made = await create_key(client, admin, scopes=["system/*.rs"])
        key = bearer(made["key"])
        assert (await client.get("/v1/patients", headers=key)).status_code == 200  # remembered
        revoked = await client.delete(f"{KEYS}/{made['id']}", headers=admin)
        assert revoked.status_code == 204 and revoked.content == b""
        assert (await client.get("/v1/patients", headers=key)).status_code == 401
        again = await client.delete(f"{KEYS}/{made['id']}", headers=admin)
        assert again.status_code == 204  # idempotent
        listed = {k["id"]: k for k in await every(client, KEYS, admin)}
        assert listed[made["id"]]["revoked_at"] is not None

    async def test_its_own_key_answers_204_then_401(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        admin = await admin_of(database, tenant)
        own_id = next(k["id"] for k in await every(client, KEYS, admin) if k["scopes"] == [ADMIN])
        assert (await client.delete(f"{KEYS}/{own_id}", headers=admin)).status_code == 204
        assert (await client.get(KEYS, headers=admin)).status_code == 401

    async def test_another_organizations_key_a_token_and_nothing_are_one_404(
        self, client: httpx.AsyncClient, make_tenant: TenantFactory, database: Database
    ):
        tenant, other = await make_tenant(), await make_tenant()
        admin = await admin_of(database, tenant)
        token_id = await _a_token_id(client, database, tenant)
        for key_id in (other.api_key_id, token_id, uuid.uuid4()):
            response = await client.delete(f"{KEYS}/{key_id}", headers=admin)
            assert response.status_code == 404, response.text
            assert response.json()["error"] == "api_key_not_found"
        assert (await client.get("/v1/patients", headers=other.headers)).status_code == 200
        for malformed in ("not-a-uuid", uuid.uuid4().hex, f"{{{uuid.uuid4()}}}"):
            response = await client.delete(f"{KEYS}/{malformed}", headers=admin)
            assert response.status_code == 422, malformed


async def _a_token_id(client: httpx.AsyncClient, database: Database, tenant: Tenant) -> uuid.UUID:
    headers = await token_headers(database, client, tenant.organization_id, ["system/*.rs"])
    async with database.owner_engine.connect() as owner:
        found = (
            await owner.execute(
                text("SELECT id FROM api_keys WHERE key_hash = :h"),
                {"h": hash_api_key(headers["Authorization"].removeprefix("Bearer "))},
            )
        ).scalar_one()
    return uuid.UUID(str(found))


class TestTheDatabaseChecksTheCallerItself:
    """Called directly as the application role (as a request's session is), bypassing
    the HTTP layer's 403: the functions refuse all the same."""

    async def call(self, database: Database, org: uuid.UUID, caller_hash: str) -> None:
        async with database.app_engine.connect() as conn:
            try:
                await conn.execute(
                    text(
                        "SELECT * FROM careteam_admin_issue_key(:org, :caller, :hash, NULL, "
                        "ARRAY['careteam/admin'])"
                    ),
                    {"org": org, "caller": caller_hash, "hash": "f" * 64},
                )
            finally:
                await conn.rollback()

    @staticmethod
    def sqlstate(err: DBAPIError) -> str | None:
        orig = err.orig
        cause = getattr(orig, "__cause__", None)
        return getattr(cause, "sqlstate", None) or getattr(orig, "sqlstate", None)

    async def test_a_live_key_without_admin_is_ct012_and_any_other_ct007(
        self, make_tenant: TenantFactory, database: Database
    ):
        tenant, other = await make_tenant(), await make_tenant()
        cases = (
            (tenant.organization_id, hash_api_key(tenant.key), "CT012"),  # no careteam/admin
            (other.organization_id, hash_api_key(tenant.key), "CT007"),  # not its organization
            (tenant.organization_id, "0" * 64, "CT007"),  # no such key
        )
        for org, caller, expected in cases:
            with pytest.raises(DBAPIError) as refused:
                await self.call(database, org, caller)
            assert self.sqlstate(refused.value) == expected
        async with database.owner_engine.connect() as owner:
            made = await owner.scalar(
                text("SELECT count(*) FROM api_keys WHERE key_hash = :h"), {"h": "f" * 64}
            )
        assert made == 0

    async def test_the_application_role_has_no_other_way_in(self, database: Database):
        async with database.app_engine.connect() as conn:
            for sql in (
                "SELECT count(*) FROM api_keys",
                "SELECT count(*) FROM smart_clients",
                "SELECT careteam_admin_caller(gen_random_uuid(), 'x')",
            ):
                with pytest.raises(DBAPIError) as refused:
                    await conn.execute(text(sql))
                assert isinstance(refused.value.orig.__cause__, asyncpg.InsufficientPrivilegeError)
                await conn.rollback()


class TestClients:
    async def test_register_over_http_get_a_token_revoke_and_it_stops_at_once(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        admin = await admin_of(database, tenant)
        signing = ec_key()
        response = await client.post(
            CLIENTS,
            json={"name": "sync", "jwks": jwks_of(signing), "scopes": ["system/*.read"]},
            headers=admin,
        )
        assert response.status_code == 201, response.text
        registered = response.json()
        client_id = uuid.UUID(registered["client_id"])
        assert response.headers["location"] == f"{CLIENTS}/{client_id}"
        assert registered["scopes"] == ["system/*.rs"] and registered["keys"] == 1
        token = await request_token(client, signing, client_id, "system/Patient.rs")
        headers = bearer(token["access_token"])
        assert (await client.get("/v1/patients", headers=headers)).status_code == 200
        listed = await every(client, CLIENTS, admin)
        assert [c["client_id"] for c in listed] == [str(client_id)]

        revoked = await client.delete(f"{CLIENTS}/{client_id}", headers=admin)
        assert revoked.status_code == 204
        refused = await client.get("/v1/patients", headers=headers)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert (await client.delete(f"{CLIENTS}/{client_id}", headers=admin)).status_code == 204
        assert (await every(client, CLIENTS, admin))[0]["revoked_at"] is not None

    @pytest.mark.parametrize(
        "change",
        [
            "private key",
            "symmetric key",
            "no kid",
            "http url",
            "both",
            "neither",
            "no scopes",
            "blank name",
        ],
    )
    async def test_what_the_cli_refuses_is_422(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database, change: str
    ):
        from jwt.algorithms import ECAlgorithm  # noqa: PLC0415

        admin = await admin_of(database, tenant)
        signing = ec_key()
        body: dict[str, Any] = {"name": "c", "jwks": jwks_of(signing), "scopes": ["system/*.rs"]}
        if change == "private key":
            private = ECAlgorithm.to_jwk(signing.private, as_dict=True)
            body["jwks"] = {"keys": [{**private, "kid": "k"}]}
        elif change == "symmetric key":
            body["jwks"] = {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k"}]}
        elif change == "no kid":
            body["jwks"] = {"keys": [{k: v for k, v in signing.jwk.items() if k != "kid"}]}
        elif change == "http url":
            body = {**body, "jwks": None, "jwks_url": "http://jwks.example.org/keys"}
            del body["jwks"]
        elif change == "both":
            body["jwks_url"] = "https://jwks.example.org/keys"
        elif change == "neither":
            del body["jwks"]
        elif change == "no scopes":
            body["scopes"] = []
        elif change == "blank name":
            body["name"] = " "
        response = await client.post(CLIENTS, json=body, headers=admin)
        assert response.status_code == 422, response.text
        assert await every(client, CLIENTS, admin) == []

    @pytest.mark.parametrize(
        "url",
        [
            # An administrator is a tenant: the operator's development rule (http to
            # this machine) is not theirs, and no URL may reach a non-public address.
            "http://127.0.0.1:5432/jwks.json",
            "http://localhost/jwks.json",
            "http://[::1]:8080/jwks.json",
            "https://localhost/jwks.json",
            "https://keys.localhost/jwks.json",
            "https://127.0.0.1/jwks.json",
            "https://127.8.9.10:8443/jwks.json",
            "https://[::1]/jwks.json",
            "https://169.254.169.254/latest/meta-data/",
            "https://10.0.0.1/jwks.json",
            "https://172.16.0.1/jwks.json",
            "https://192.168.1.1/jwks.json",
            "https://100.64.0.1/jwks.json",
            "https://0.0.0.0/jwks.json",
            "https://224.0.0.1/jwks.json",
            "https://240.0.0.1/jwks.json",
            "https://[fe80::1]/jwks.json",
            "https://[fd00::1]/jwks.json",
            "https://[::ffff:127.0.0.1]/jwks.json",
            "https://[::ffff:a9fe:a9fe]/jwks.json",
        ],
    )
    async def test_a_jwks_url_to_a_host_that_is_not_public_is_422_naming_it(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        monkeypatch: pytest.MonkeyPatch,
        url: str,
    ):
        asked = resolving(monkeypatch, "93.184.216.34")  # no literal is looked up
        admin = await admin_of(database, tenant)
        body = {"name": "probe", "jwks_url": url, "scopes": ["system/*.rs"]}
        response = await client.post(CLIENTS, json=body, headers=admin)
        assert response.status_code == 422, response.text
        assert [e["field"] for e in response.json()["errors"]] == ["jwks_url"]
        assert asked == []
        assert await every(client, CLIENTS, admin) == []

    @pytest.mark.parametrize(
        "url",
        ["https://2130706433/jwks.json", "https://0x7f000001/jwks.json",
         "https://127.1/jwks.json", "https://0177.0.0.1/jwks.json"],
    )  # fmt: skip
    async def test_other_spellings_of_loopback_are_422(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database, url: str
    ):
        """Not IP literals to Python, but the system resolver reads them as 127.0.0.1
        (inet_aton, no DNS asked): the address they resolve to is what is judged."""
        admin = await admin_of(database, tenant)
        body = {"name": "probe", "jwks_url": url, "scopes": ["system/*.rs"]}
        response = await client.post(CLIENTS, json=body, headers=admin)
        assert response.status_code == 422, response.text
        assert [e["field"] for e in response.json()["errors"]] == ["jwks_url"]

    @pytest.mark.parametrize(
        "addresses",
        [("10.1.2.3",), ("127.0.0.1",), ("169.254.169.254",), ("93.184.216.34", "::1")],
        ids=["private", "loopback", "link-local", "one-of-two"],
    )
    async def test_a_name_that_resolves_to_a_non_public_address_is_422(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        monkeypatch: pytest.MonkeyPatch,
        addresses: tuple[str, ...],
    ):
        asked = resolving(monkeypatch, *addresses)
        admin = await admin_of(database, tenant)
        url = "https://keys.attacker.example/jwks.json"
        body = {"name": "probe", "jwks_url": url, "scopes": ["system/*.rs"]}
        response = await client.post(CLIENTS, json=body, headers=admin)
        assert response.status_code == 422, response.text
        assert [e["field"] for e in response.json()["errors"]] == ["jwks_url"]
        assert "resolves to an address that is not public" in response.json()["detail"]
        assert asked == ["keys.attacker.example"]

    @pytest.mark.parametrize(
        ("url", "addresses"),
        [
            ("https://keys.example.org/jwks.json", ("93.184.216.34", "2606:2800:220:1::1")),
            ("https://8.8.8.8/jwks.json", ()),
            ("https://[2001:4860:4860::8888]:8443/jwks.json", ()),
            ("https://not-yet.example.org/jwks.json", ()),  # checked again at each fetch
        ],
        ids=["public-name", "public-v4", "public-v6", "not-resolving-yet"],
    )
    async def test_an_https_url_to_a_public_host_is_registered(  # noqa: PLR0917 (parameters)
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        monkeypatch: pytest.MonkeyPatch,
        url: str,
        addresses: tuple[str, ...],
    ):
        resolving(monkeypatch, *addresses)
        admin = await admin_of(database, tenant)
        body = {"name": "bulk", "jwks_url": url, "scopes": ["system/*.rs"]}
        response = await client.post(CLIENTS, json=body, headers=admin)
        assert response.status_code == 201, response.text
        assert response.json()["jwks_url"] == url

    async def test_another_organizations_client_is_404_and_lists_are_apart(
        self, client: httpx.AsyncClient, make_tenant: TenantFactory, database: Database
    ):
        tenant, other = await make_tenant(), await make_tenant()
        admin = await admin_of(database, tenant)
        theirs = await register_client(
            database, other.organization_id, ["system/*.rs"], jwks=jwks_of(ec_key())
        )
        response = await client.delete(f"{CLIENTS}/{theirs}", headers=admin)
        assert response.status_code == 404
        assert response.json()["error"] == "smart_client_not_found"
        assert await every(client, CLIENTS, admin) == []

    async def test_a_client_with_the_administrative_scope_gets_admin_tokens(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        """Clients may hold careteam/admin (README: an administrative service); a token
        has it only when asked for."""
        admin = await admin_of(database, tenant)
        signing = ec_key()
        registered = await client.post(
            CLIENTS,
            json={"name": "ops", "jwks": jwks_of(signing), "scopes": [ADMIN, "system/*.rs"]},
            headers=admin,
        )
        client_id = uuid.UUID(registered.json()["client_id"])
        plain = await request_token(client, signing, client_id, "system/*.rs")
        assert (await client.get(KEYS, headers=bearer(plain["access_token"]))).status_code == 403
        elevated = await request_token(client, signing, client_id, ADMIN)
        headers = bearer(elevated["access_token"])
        assert (await client.get(KEYS, headers=headers)).status_code == 200
        # It may revoke its own client: this answer is its last.
        assert (await client.delete(f"{CLIENTS}/{client_id}", headers=headers)).status_code == 204
        assert (await client.get(KEYS, headers=headers)).status_code == 401
