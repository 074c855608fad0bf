"""SMART Backend Services: discovery, the token endpoint (each refusal its own test), the
access tokens it issues on /v1 and FHIR, their expiry and their client's revocation."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from fhirpy import AsyncFHIRClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from src.config import get_settings
from src.db import Database
from src.scopes import ADMIN
from src.services import smart_keys, smart_service
from src.services.organization_service import OrganizationService
from src.services.smart_service import SmartService
from tests.helpers import (
    TOKEN_URL,
    LiveApi,
    SigningKey,
    Tenant,
    TenantFactory,
    client_assertion,
    ec_key,
    free_port,
    jwks_of,
    post_patient,
    post_provider,
    register_client,
    request_token,
    resolving,
    rsa_key,
    token_form,
)

FHIR = "/fhir/R4"


@pytest.fixture(scope="module")
def rsa() -> SigningKey:
    return rsa_key()


@pytest.fixture
async def ec_client(database: Database, tenant: Tenant) -> tuple[SigningKey, uuid.UUID]:
    """An EC key and a client registered with it, reading everything (system/*.rs)."""
    key = ec_key()
    client_id = await register_client(
        database, tenant.organization_id, ["system/*.rs"], jwks=jwks_of(key)
    )
    return key, client_id


def bearer(answer: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {answer['access_token']}"}


async def revoke(database: Database, client_id: uuid.UUID) -> None:
    async with AsyncSession(database.owner_engine) as owner:
        await SmartService.revoke_client(db=owner, client_id=client_id)


class TestDiscovery:
    @pytest.mark.parametrize("path", ["/.well-known/smart-configuration",
                                      f"{FHIR}/.well-known/smart-configuration"])  # fmt: skip
    async def test_the_configuration_needs_no_credential(
        self, client: httpx.AsyncClient, path: str
    ):
        response = await client.get(path)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        config = response.json()
        assert config["token_endpoint"] == TOKEN_URL  # absolute, from the request's base
        assert config["grant_types_supported"] == ["client_credentials"]
        assert config["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
        assert config["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
        assert config["capabilities"] == ["client-confidential-asymmetric"]
        assert "system/*.rs" in config["scopes_supported"]
        assert "system/CareTeam.rs" in config["scopes_supported"]

    async def test_the_token_endpoint_follows_public_base_url(
        self, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
    ):
        monkeypatch.setenv("PUBLIC_BASE_URL", "https://api.example.org/")
        get_settings.cache_clear()
        try:
            config = (await client.get("/.well-known/smart-configuration")).json()
            metadata = (await client.get(f"{FHIR}/metadata")).json()
        finally:
            monkeypatch.delenv("PUBLIC_BASE_URL")
            get_settings.cache_clear()
        assert config["token_endpoint"] == "https://api.example.org/auth/token"
        security = metadata["rest"][0]["security"]
        assert security["extension"][0]["extension"] == [
            {"url": "token", "valueUri": "https://api.example.org/auth/token"}
        ]

    async def test_the_capability_statement_declares_smart_on_fhir(self, client: httpx.AsyncClient):
        security = (await client.get(f"{FHIR}/metadata")).json()["rest"][0]["security"]
        coding = security["service"][0]["coding"][0]
        assert coding["system"] == "http://terminology.hl7.org/CodeSystem/restful-security-service"
        assert coding["code"] == "SMART-on-FHIR"
        oauth = security["extension"][0]
        assert oauth["url"] == (
            "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
        )
        assert oauth["extension"] == [{"url": "token", "valueUri": TOKEN_URL}]

    async def test_the_openapi_document_has_the_routes_without_security(
        self, client: httpx.AsyncClient
    ):
        paths = (await client.get("/openapi.json")).json()["paths"]
        token = paths["/auth/token"]["post"]
        assert "security" not in token
        assert "application/x-www-form-urlencoded" in token["requestBody"]["content"]
        assert {"200", "400", "401"} <= set(token["responses"])
        assert "security" not in paths["/.well-known/smart-configuration"]["get"]


class TestTheFlow:
    async def test_an_ec_client_gets_a_token_that_reads_and_may_not_write(
        self, client: httpx.AsyncClient, tenant: Tenant, ec_client: tuple[SigningKey, uuid.UUID]
    ):
        key, client_id = ec_client
        patient = await post_patient(client, tenant)
        response = await client.post(
            "/auth/token", data=token_form(client_assertion(key, client_id), "system/*.rs")
        )
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["pragma"] == "no-cache"
        answer = response.json()
        assert set(answer) == {"access_token", "token_type", "expires_in", "scope"}
        assert answer["token_type"] == "bearer"
        assert 0 < answer["expires_in"] <= 300
        assert answer["scope"] == "system/*.rs"
        assert answer["access_token"].startswith("ctt_")

        headers = bearer(answer)
        assert (await client.get(f"/v1/patients/{patient}", headers=headers)).status_code == 200
        team = await client.get(f"{FHIR}/CareTeam/{patient}", headers=headers)
        assert team.status_code in (200, 404), team.text  # no team yet: 404, not 401 or 403
        read = await client.get(f"{FHIR}/Patient/{patient}", headers=headers)
        assert read.status_code == 200, read.text
        write = await client.post("/v1/patients", json={}, headers=headers)
        assert write.status_code == 403
        assert write.headers["www-authenticate"] == (
            'Bearer error="insufficient_scope", scope="system/Patient.c"'
        )

    async def test_an_rsa_client_gets_a_token(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database, rsa: SigningKey
    ):
        client_id = await register_client(
            database, tenant.organization_id, ["system/CareTeam.rs"], jwks=jwks_of(rsa)
        )
        answer = await request_token(client, rsa, client_id, "system/CareTeam.rs")
        assert answer["scope"] == "system/CareTeam.rs"

    @pytest.mark.parametrize(
        ("registered", "asked", "granted"),
        [
            # Computed per (type, permission), answered in v2 form.
            (["system/Patient.rs"], "system/*.rs", "system/Patient.rs"),
            (["system/*.cruds"], "system/Patient.rs", "system/Patient.rs"),
            (["system/*.rs", "system/Patient.c"], "system/*.cruds", "system/*.rs system/Patient.c"),
            (["system/*.rs"], "system/*.read system/CareTeam.write", "system/*.rs"),  # v1 too
            (["system/*.cruds", "careteam/admin"], "system/*.r careteam/admin",
             "careteam/admin system/*.r"),
            (["system/*.cruds"], "system/*.r careteam/admin", "system/*.r"),
        ],
    )  # fmt: skip
    async def test_granted_is_asked_as_far_as_registered(  # noqa: PLR0917 (parameters)
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        registered: list[str],
        asked: str,
        granted: str,
    ):
        key = ec_key()
        client_id = await register_client(
            database, tenant.organization_id, registered, jwks=jwks_of(key)
        )
        assert (await request_token(client, key, client_id, asked))["scope"] == granted

    async def test_a_fhir_search_with_the_token(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        patient = await post_patient(client, tenant)
        provider = await post_provider(client, tenant)
        assigned = await client.put(
            f"/v1/patients/{patient}/care-team/primary",
            json={"provider_id": provider},
            headers=tenant.headers,
        )
        assert assigned.status_code == 200
        key = ec_key()
        client_id = await register_client(
            database, tenant.organization_id, ["system/CareTeam.rs"], jwks=jwks_of(key)
        )
        answer = await request_token(client, key, client_id, "system/CareTeam.rs")
        # (fhirpy speaks aiohttp, which needs a socket: it reads from a live server below.)
        teams = await client.get(f"{FHIR}/CareTeam", params={"patient": patient},
                                 headers=bearer(answer))  # fmt: skip
        assert teams.status_code == 200, teams.text
        assert [e["resource"]["id"] for e in teams.json()["entry"]] == [patient]


class TestRefusals:
    """Each refused the way RFC 6749 section 5.2 says: 401 invalid_client for anything
    about the client's authentication (SMART), 400 for the rest; nothing issued."""

    async def refused(
        self, client: httpx.AsyncClient, data: Any, status: int, error: str, **kwargs: Any
    ) -> str:
        response = await client.post("/auth/token", data=data, **kwargs)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert set(body) == {"error", "error_description"}
        assert body["error"] == error, body
        assert "\n" not in body["error_description"]
        return str(body["error_description"])

    async def test_a_replayed_jti(self, client: httpx.AsyncClient, ec_client: Any):
        key, client_id = ec_client
        assertion = client_assertion(key, client_id)
        first = await client.post("/auth/token", data=token_form(assertion))
        assert first.status_code == 200
        said = await self.refused(client, token_form(assertion), 401, "invalid_client")
        assert "jti was used before" in said
        # The same jti in a new assertion, too.
        jti = jwt.decode(assertion, options={"verify_signature": False})["jti"]
        again = token_form(client_assertion(key, client_id, jti=jti))
        await self.refused(client, again, 401, "invalid_client")

    async def test_an_expired_assertion(self, client: httpx.AsyncClient, ec_client: Any):
        key, client_id = ec_client
        now = int(time.time())
        old = client_assertion(key, client_id, exp=now - 120, iat=now - 300)
        said = await self.refused(client, token_form(old), 401, "invalid_client")
        assert "expired" in said

    async def test_exp_more_than_five_minutes_ahead(
        self, client: httpx.AsyncClient, ec_client: Any
    ):
        key, client_id = ec_client
        far = client_assertion(key, client_id, exp=int(time.time()) + 600)
        said = await self.refused(client, token_form(far), 401, "invalid_client")
        assert "300 seconds" in said

    @pytest.mark.parametrize("claim", ["iat", "nbf"])
    async def test_issued_or_valid_from_the_future(
        self, client: httpx.AsyncClient, ec_client: Any, claim: str
    ):
        key, client_id = ec_client
        future = client_assertion(key, client_id, **{claim: int(time.time()) + 200})
        said = await self.refused(client, token_form(future), 401, "invalid_client")
        assert "not valid yet" in said

    @pytest.mark.parametrize(
        ("claim", "value"),
        [
            # PyJWT reads an instant with int(): a numeric string passes its checks, and
            # was then compared with a number (a 500).
            ("exp", "+240"),
            ("iat", "+0"),
            ("nbf", "+0"),
            ("iat", True),
            ("exp", [240]),
        ],
    )
    async def test_an_instant_that_is_not_a_json_number(
        self, client: httpx.AsyncClient, ec_client: Any, claim: str, value: Any
    ):
        key, client_id = ec_client
        if isinstance(value, str):
            value = str(int(time.time()) + int(value))  # a valid instant, as a string
        signed = client_assertion(key, client_id, **{claim: value})
        said = await self.refused(client, token_form(signed), 401, "invalid_client")
        assert claim in said

    async def test_a_crit_header_naming_an_unknown_extension(
        self, client: httpx.AsyncClient, ec_client: Any
    ):
        """RFC 7515 section 4.1.11: an extension the server does not understand makes
        the JWS invalid; PyJWT raises InvalidTokenError, not DecodeError (was a 500)."""
        key, client_id = ec_client
        signed = client_assertion(key, client_id, headers={"crit": ["exp"], "exp": 1})
        said = await self.refused(client, token_form(signed), 401, "invalid_client")
        assert "client_assertion" in said

    @pytest.mark.parametrize(
        "jti",
        ["nul\x00byte", "tab\tinside", "line\nfeed", "del\x7f", "c1\x85", "lone\ud800surrogate"],
        ids=["nul", "tab", "newline", "del", "c1", "surrogate"],
    )
    async def test_a_jti_with_a_control_character(
        self, client: httpx.AsyncClient, database: Database, ec_client: Any, jti: str
    ):
        key, client_id = ec_client
        signed = client_assertion(key, client_id, jti=jti)
        said = await self.refused(client, token_form(signed), 401, "invalid_client")
        assert "jti" in said and "control character" in said
        async with database.owner_engine.connect() as owner:
            issued = (
                await owner.execute(
                    text("SELECT count(*) FROM api_keys WHERE client_id = :c"), {"c": client_id}
                )
            ).scalar_one()
        assert issued == 0

    @pytest.mark.parametrize(
        "aud",
        [
            "http://careteam.test/fhir/R4",
            "http://other.test/auth/token",
            ["http://careteam.test/auth/token", "http://other.test/auth/token"],
        ],
    )
    async def test_a_wrong_aud(self, client: httpx.AsyncClient, ec_client: Any, aud: Any):
        key, client_id = ec_client
        wrong = client_assertion(key, client_id, aud=aud)
        said = await self.refused(client, token_form(wrong), 401, "invalid_client")
        assert "aud" in said

    async def test_an_unknown_kid(self, client: httpx.AsyncClient, ec_client: Any):
        key, client_id = ec_client
        unknown = client_assertion(key, client_id, headers={"kid": "not-registered"})
        said = await self.refused(client, token_form(unknown), 401, "invalid_client")
        assert "no EC key with kid" in said

    async def test_alg_none(self, client: httpx.AsyncClient, ec_client: Any):
        key, client_id = ec_client
        now = int(time.time())
        claims = {"iss": str(client_id), "sub": str(client_id), "aud": TOKEN_URL,
                  "exp": now + 60, "jti": uuid.uuid4().hex}  # fmt: skip
        unsigned = jwt.encode(claims, None, algorithm="none", headers={"kid": key.kid})
        said = await self.refused(client, token_form(unsigned), 401, "invalid_client")
        assert "alg 'none' is not accepted" in said

    async def test_an_hmac_alg(self, client: httpx.AsyncClient, ec_client: Any):
        """HS256 signed with the client's public key as the secret: the classic
        algorithm confusion is refused before any key is looked at."""
        key, client_id = ec_client
        now = int(time.time())
        claims = {"iss": str(client_id), "sub": str(client_id), "aud": TOKEN_URL,
                  "exp": now + 60, "jti": uuid.uuid4().hex}  # fmt: skip

        # Forged by hand: PyJWT itself refuses to use a public key as an HMAC secret.
        def part(value: dict[str, Any]) -> bytes:
            return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")

        signing_input = part({"alg": "HS256", "typ": "JWT", "kid": key.kid}) + b"." + part(claims)
        secret = json.dumps(key.jwk).encode()
        mac = hmac.new(secret, signing_input, hashlib.sha256).digest()
        forged = (signing_input + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()
        said = await self.refused(client, token_form(forged), 401, "invalid_client")
        assert "alg 'HS256' is not accepted" in said

    async def test_a_key_of_another_client(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database, ec_client: Any
    ):
        _, client_id = ec_client
        other = ec_key()
        await register_client(database, tenant.organization_id, ["system/*.rs"],
                              jwks=jwks_of(other))  # fmt: skip
        signed = client_assertion(other, client_id)  # the other client's kid and key
        said = await self.refused(client, token_form(signed), 401, "invalid_client")
        assert "no EC key with kid" in said
        # Its key under this client's kid: the signature does not verify.
        key, _ = ec_client
        forged = client_assertion(other, client_id, headers={"kid": key.kid})
        said = await self.refused(client, token_form(forged), 401, "invalid_client")
        assert "signature does not verify" in said

    async def test_a_revoked_client(
        self, client: httpx.AsyncClient, database: Database, ec_client: Any
    ):
        key, client_id = ec_client
        await revoke(database, client_id)
        said = await self.refused(
            client, token_form(client_assertion(key, client_id)), 401, "invalid_client"
        )
        assert f"client {client_id} is not registered, or was revoked" in said

    async def test_an_unknown_client(self, client: httpx.AsyncClient):
        stranger = uuid.uuid4()
        signed = client_assertion(ec_key(), stranger)
        await self.refused(client, token_form(signed), 401, "invalid_client")

    @pytest.mark.parametrize(
        "assertion",
        [
            "not-a-jwt",
            "a.b.c",
            "eyJhbGciOiJFUzM4NCJ9.bm90IGpzb24.c2ln",  # a payload that is not JSON
            "..",
            "x" * 20_000,  # huge
        ],
    )
    async def test_a_malformed_assertion(self, client: httpx.AsyncClient, assertion: str):
        await self.refused(client, token_form(assertion), 401, "invalid_client")

    async def test_a_payload_that_is_not_an_object(self, client: httpx.AsyncClient, ec_client: Any):
        key, _ = ec_client
        signed = jwt.api_jws.encode(b"[1, 2]", key.private, algorithm="ES384",
                                    headers={"kid": key.kid})  # fmt: skip
        await self.refused(client, token_form(signed), 401, "invalid_client")

    @pytest.mark.parametrize("claim", ["iss", "sub", "exp", "jti", "aud"])
    async def test_a_missing_claim(self, client: httpx.AsyncClient, ec_client: Any, claim: str):
        key, client_id = ec_client
        missing = client_assertion(key, client_id, **{claim: None})
        await self.refused(client, token_form(missing), 401, "invalid_client")

    async def test_sub_other_than_iss(self, client: httpx.AsyncClient, ec_client: Any):
        key, client_id = ec_client
        other = client_assertion(key, client_id, sub=str(uuid.uuid4()))
        said = await self.refused(client, token_form(other), 401, "invalid_client")
        assert "sub must equal its iss" in said

    async def test_a_client_id_parameter_other_than_iss(
        self, client: httpx.AsyncClient, ec_client: Any
    ):
        key, client_id = ec_client
        form = token_form(client_assertion(key, client_id), client_id=str(uuid.uuid4()))
        await self.refused(client, form, 401, "invalid_client")

    async def test_a_jku_other_than_registered(self, client: httpx.AsyncClient, ec_client: Any):
        key, client_id = ec_client
        signed = client_assertion(key, client_id, headers={"jku": "https://evil.test/jwks"})
        said = await self.refused(client, token_form(signed), 401, "invalid_client")
        assert "jku" in said

    @pytest.mark.parametrize(
        "missing", ["grant_type", "client_assertion_type", "client_assertion", "scope"]
    )
    async def test_a_missing_field(self, client: httpx.AsyncClient, ec_client: Any, missing: str):
        key, client_id = ec_client
        form = token_form(client_assertion(key, client_id))
        del form[missing]
        await self.refused(client, form, 400, "invalid_request")

    @pytest.mark.parametrize("grant", ["authorization_code", "password", "CLIENT_CREDENTIALS"])
    async def test_another_grant_type(self, client: httpx.AsyncClient, ec_client: Any, grant: str):
        key, client_id = ec_client
        form = token_form(client_assertion(key, client_id), grant_type=grant)
        await self.refused(client, form, 400, "unsupported_grant_type")

    async def test_another_assertion_type(self, client: httpx.AsyncClient, ec_client: Any):
        key, client_id = ec_client
        saml = "urn:ietf:params:oauth:client-assertion-type:saml2-bearer"
        form = token_form(client_assertion(key, client_id), client_assertion_type=saml)
        await self.refused(client, form, 400, "invalid_request")

    async def test_a_repeated_parameter(self, client: httpx.AsyncClient, ec_client: Any):
        key, client_id = ec_client
        form: dict[str, Any] = token_form(client_assertion(key, client_id))
        form["scope"] = [form["scope"], "system/*.cruds"]  # sent twice
        said = await self.refused(client, form, 400, "invalid_request")
        assert "more than once" in said and "scope" in said

    @pytest.mark.parametrize(
        ("content", "content_type"),
        [
            (b'{"grant_type": "client_credentials"}', "application/json"),
            (b"grant_type=client_credentials&scope=%FF", "application/x-www-form-urlencoded"),
            (b"grant_type", "application/x-www-form-urlencoded"),
            (b"&".join(b"p%d=1" % i for i in range(50)), "application/x-www-form-urlencoded"),
        ],
    )
    async def test_a_body_that_is_not_a_form(
        self, client: httpx.AsyncClient, content: bytes, content_type: str
    ):
        await self.refused(client, None, 400, "invalid_request", content=content,
                           headers={"Content-Type": content_type})  # fmt: skip

    async def test_parameters_in_the_url(self, client: httpx.AsyncClient, ec_client: Any):
        key, client_id = ec_client
        form = token_form(client_assertion(key, client_id))
        response = await client.post("/auth/token", params={"scope": "system/*.rs"}, data=form)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_request"

    @pytest.mark.parametrize("scope", ["patient/*.rs", "system/Observation.rs", "system/*.x"])
    async def test_a_malformed_scope(self, client: httpx.AsyncClient, ec_client: Any, scope: str):
        key, client_id = ec_client
        form = token_form(client_assertion(key, client_id), scope)
        await self.refused(client, form, 400, "invalid_scope")

    async def test_no_scope_in_common(self, client: httpx.AsyncClient, ec_client: Any):
        key, client_id = ec_client  # registered system/*.rs
        form = token_form(client_assertion(key, client_id), "system/*.cud careteam/admin")
        said = await self.refused(client, form, 400, "invalid_scope")
        assert "registered: system/*.rs" in said

    async def test_a_body_over_64_kib(self, client: httpx.AsyncClient):
        response = await client.post(
            "/auth/token",
            content=b"a=" + b"x" * 70_000,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 413

    async def test_nothing_was_issued_by_refusals(
        self, client: httpx.AsyncClient, database: Database, ec_client: Any
    ):
        key, client_id = ec_client
        await client.post("/auth/token", data=token_form(client_assertion(key, client_id),
                                                         "patient/*.rs"))  # fmt: skip
        async with database.owner_engine.connect() as owner:
            tokens = (
                await owner.execute(
                    text("SELECT count(*) FROM api_keys WHERE client_id = :c"), {"c": client_id}
                )
            ).scalar_one()
        assert tokens == 0


class TestReplayUnderConcurrency:
    async def test_twenty_concurrent_requests_with_one_jti_get_exactly_one_token(
        self, client: httpx.AsyncClient, database: Database, ec_client: Any
    ):
        key, client_id = ec_client
        form = token_form(client_assertion(key, client_id))
        answers = await asyncio.gather(*(client.post("/auth/token", data=form) for _ in range(20)))
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [200] + [401] * 19, [a.text for a in answers]
        assert all(a.json()["error"] == "invalid_client" for a in answers if a.status_code == 401)
        async with database.owner_engine.connect() as owner:
            issued = (
                await owner.execute(
                    text("SELECT count(*) FROM api_keys WHERE client_id = :c"), {"c": client_id}
                )
            ).scalar_one()
        assert issued == 1


class TestTokens:
    async def test_a_token_of_one_organization_finds_nothing_of_another(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        make_tenant: TenantFactory,
        ec_client: Any,
    ):
        other = await make_tenant()
        theirs = await post_patient(client, other)
        key, client_id = ec_client
        headers = bearer(await request_token(client, key, client_id, "system/*.rs"))
        assert (await client.get(f"/v1/patients/{theirs}", headers=headers)).status_code == 404
        assert (await client.get(f"{FHIR}/Patient/{theirs}", headers=headers)).status_code == 404
        search = await client.get(f"{FHIR}/Patient", params={"_id": theirs}, headers=headers)
        assert search.status_code == 200 and search.json().get("entry", []) == []

    async def test_a_client_id_of_another_organization_is_just_a_client(
        self, client: httpx.AsyncClient, make_tenant: TenantFactory, database: Database
    ):
        """A client's tokens act for the client's organization, whatever the request
        says: a token request names no organization."""
        other = await make_tenant()
        key = ec_key()
        theirs = await register_client(database, other.organization_id, ["system/*.rs"],
                                       jwks=jwks_of(key))  # fmt: skip
        headers = bearer(await request_token(client, key, theirs, "system/*.rs"))
        mine = await post_patient(client, await make_tenant())
        assert (await client.get(f"/v1/patients/{mine}", headers=headers)).status_code == 404

    async def test_an_expired_token_is_401_invalid_token(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        ec_client: Any,
        monkeypatch: pytest.MonkeyPatch,
    ):
        patient = await post_patient(client, tenant)
        key, client_id = ec_client
        monkeypatch.setenv("SMART_TOKEN_LIFETIME_S", "1")
        get_settings.cache_clear()
        try:
            answer = await request_token(client, key, client_id, "system/*.rs")
        finally:
            monkeypatch.delenv("SMART_TOKEN_LIFETIME_S")
            get_settings.cache_clear()
        assert answer["expires_in"] == 1
        headers = bearer(answer)
        assert (await client.get(f"/v1/patients/{patient}", headers=headers)).status_code == 200
        await asyncio.sleep(1.2)
        for path in (f"/v1/patients/{patient}", f"{FHIR}/Patient/{patient}"):
            refused = await client.get(path, headers=headers)
            assert refused.status_code == 401, refused.text
            assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'

    async def test_a_remembered_token_expired_in_the_database_is_refused(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database, ec_client: Any
    ):
        """The process remembers a token after its first use; the database's check in
        each transaction refuses it once its expires_at passed, whatever was remembered."""
        patient = await post_patient(client, tenant)
        key, client_id = ec_client
        answer = await request_token(client, key, client_id, "system/*.rs")
        headers = bearer(answer)
        assert (await client.get(f"/v1/patients/{patient}", headers=headers)).status_code == 200
        async with database.owner_engine.begin() as owner:
            await owner.execute(
                text("UPDATE api_keys SET expires_at = now() - interval '1 second' "
                     "WHERE client_id = :c"),
                {"c": client_id},
            )  # fmt: skip
        for path in (f"/v1/patients/{patient}", f"/v1/patients/{patient}/care-team"):
            refused = await client.get(path, headers=headers)
            assert refused.status_code == 401, refused.text
            assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'
            assert refused.json()["detail"] == "unknown, expired or revoked access token"

    @pytest.mark.parametrize("operation", ["read", "care team", "write", "refused early"])
    async def test_a_revoked_clients_tokens_stop_at_once(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        operation: str,
    ):
        """Including a token this process remembers: the next transaction's check, or
        the check before an answer that needed none, refuses it."""
        patient = await post_patient(client, tenant)
        provider = await post_provider(client, tenant)
        key = ec_key()
        client_id = await register_client(
            database, tenant.organization_id, ["system/*.cruds"], jwks=jwks_of(key)
        )
        headers = bearer(await request_token(client, key, client_id, "system/*.cruds"))

        async def call() -> httpx.Response:
            if operation == "read":
                return await client.get(f"/v1/patients/{patient}", headers=headers)
            if operation == "care team":
                return await client.get(f"/v1/patients/{patient}/care-team", headers=headers)
            if operation == "write":
                body = {"provider_id": provider}
                path = f"/v1/patients/{patient}/care-team/primary"
                return await client.put(path, json=body, headers=headers)
            return await client.post("/v1/patients", json={}, headers=headers)  # a 422

        assert (await call()).status_code in (200, 422)
        async with AsyncSession(database.owner_engine) as owner:
            revoked = await SmartService.revoke_client(db=owner, client_id=client_id)
        assert revoked.tokens_revoked == 1 and not revoked.already_revoked
        refused = await call()
        assert refused.status_code == 401, refused.text
        assert refused.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        # The organization's key is untouched.
        ok = await client.get(f"/v1/patients/{patient}", headers=tenant.headers)
        assert ok.status_code == 200

    async def test_revoking_twice_changes_nothing(self, database: Database, ec_client: Any):
        _, client_id = ec_client
        async with AsyncSession(database.owner_engine) as owner:
            first = await SmartService.revoke_client(db=owner, client_id=client_id)
            second = await SmartService.revoke_client(db=owner, client_id=client_id)
        assert second.already_revoked and second.revoked_at == first.revoked_at

    async def test_tokens_are_not_keys(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database, ec_client: Any
    ):
        key, client_id = ec_client
        answer = await request_token(client, key, client_id, "system/*.rs")
        async with AsyncSession(database.owner_engine) as owner:
            keys = await OrganizationService.list_api_keys(
                db=owner, organization_id=tenant.organization_id
            )
            clients = await SmartService.list_clients(
                db=owner, organization_id=tenant.organization_id
            )
        assert [k.id for k in keys] == [tenant.api_key_id]
        assert [(c.id, c.keys, c.scopes) for c in clients] == [(client_id, 1, ["system/*.rs"])]
        assert answer["access_token"] not in repr(keys)

    async def test_writes_by_a_token_name_its_client(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        key = ec_key()
        client_id = await register_client(
            database, tenant.organization_id, ["system/*.cruds"], jwks=jwks_of(key)
        )
        headers = bearer(await request_token(client, key, client_id, "system/*.cruds"))
        patient = await post_patient(client, tenant)
        changed = await client.patch(f"/v1/patients/{patient}", json={"first_name": "Zoe"},
                                     headers=headers)  # fmt: skip
        assert changed.status_code == 200, changed.text
        changes = (await client.get(f"/v1/patients/{patient}/changes", headers=headers)).json()
        assert changes["items"][0]["actor"] == f"smart_client:{client_id}"


# --- a JWKS served by a small HTTP server on 127.0.0.1 --------------------------------------

UNUSABLE_JWKS_URL = {
    "error": "invalid_client",
    "error_description": "the client's JWKS URL could not be used",
}


def logged_reason(caplog: pytest.LogCaptureFixture, client_id: uuid.UUID) -> str:
    """Why the client's JWKS URL could not be used, as the server logged it (ids only)."""
    messages = [record.getMessage() for record in caplog.records]
    [message] = [
        m
        for m in messages
        if m.startswith("SMART client JWKS unavailable") and f"client_id={client_id}" in m
    ]
    return message.split(" reason=", 1)[1]


class _JwksServer:
    """Serves `jwks` at /jwks.json (with `status`); `hang` makes it never answer."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.status = 200
        self.hang = threading.Event()
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                if outer.hang.is_set():
                    time.sleep(3)
                    return
                body = json.dumps(outer.jwks).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"

    @contextlib.contextmanager
    def running(self) -> Iterator[_JwksServer]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def jwks_server() -> Iterator[_JwksServer]:
    with _JwksServer().running() as server:
        yield server


class TestJwksUrl:
    async def test_keys_fetched_from_the_url_then_kept(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        jwks_server: _JwksServer,
        rsa: SigningKey,
    ):
        key = ec_key()
        jwks_server.jwks = jwks_of(rsa, key)
        client_id = await register_client(
            database, tenant.organization_id, ["system/*.rs"], jwks_url=jwks_server.url
        )
        await request_token(client, key, client_id, "system/*.rs")
        await request_token(client, rsa, client_id, "system/*.rs")
        assert jwks_server.requests == 1  # kept

    async def test_a_rotated_key_is_fetched_again(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        jwks_server: _JwksServer,
        monkeypatch: pytest.MonkeyPatch,
    ):
        old, new = ec_key(), ec_key()
        jwks_server.jwks = jwks_of(old)
        client_id = await register_client(
            database, tenant.organization_id, ["system/*.rs"], jwks_url=jwks_server.url
        )
        await request_token(client, old, client_id, "system/*.rs")
        jwks_server.jwks = jwks_of(old, new)
        monkeypatch.setattr(smart_service.JWKS, "_kept", {
            url: (kept_at - 60, document)
            for url, (kept_at, document) in smart_service.JWKS._kept.items()
        })  # fmt: skip
        await request_token(client, new, client_id, "system/*.rs")
        assert jwks_server.requests == 2

    async def test_a_hanging_url_is_given_up_after_the_timeout(  # noqa: PLR0917 (fixtures)
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        jwks_server: _JwksServer,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ):
        key = ec_key()
        jwks_server.hang.set()
        client_id = await register_client(
            database, tenant.organization_id, ["system/*.rs"],
            jwks_url=jwks_server.url.replace("jwks.json", "hanging.json"),
        )  # fmt: skip
        monkeypatch.setenv("SMART_JWKS_TIMEOUT_S", "0.5")
        get_settings.cache_clear()
        try:
            started = time.monotonic()
            response = await client.post(
                "/auth/token", data=token_form(client_assertion(key, client_id))
            )
            took = time.monotonic() - started
        finally:
            monkeypatch.delenv("SMART_JWKS_TIMEOUT_S")
            get_settings.cache_clear()
        assert response.status_code == 401
        assert response.json() == UNUSABLE_JWKS_URL
        assert took < 2.5
        assert logged_reason(caplog, client_id) == "its JWKS URL did not answer within 0.5 s"

    async def test_a_url_answering_private_keys_is_refused(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        jwks_server: _JwksServer,
        caplog: pytest.LogCaptureFixture,
    ):
        from jwt.algorithms import ECAlgorithm  # noqa: PLC0415

        key = ec_key()
        private = ECAlgorithm.to_jwk(key.private, as_dict=True)
        jwks_server.jwks = {"keys": [{**private, "kid": key.kid}]}
        client_id = await register_client(
            database, tenant.organization_id, ["system/*.rs"],
            jwks_url=jwks_server.url.replace("jwks.json", "private.json"),
        )  # fmt: skip
        response = await client.post(
            "/auth/token", data=token_form(client_assertion(key, client_id))
        )
        assert response.status_code == 401
        assert response.json() == UNUSABLE_JWKS_URL
        assert "private key material" in logged_reason(caplog, client_id)

    @pytest.mark.parametrize("status", [404, 503, 302])
    async def test_the_urls_answer_is_not_told_to_the_client(  # noqa: PLR0917 (fixtures)
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        jwks_server: _JwksServer,
        caplog: pytest.LogCaptureFixture,
        status: int,
    ):
        """Whoever registered the URL must not learn from the token endpoint what
        answers there (which status, which error): a port and status oracle. The log
        has the reason, with ids, never the URL."""
        key = ec_key()
        jwks_server.status = status
        client_id = await register_client(
            database, tenant.organization_id, ["system/*.rs"],
            jwks_url=jwks_server.url.replace("jwks.json", f"status-{status}.json"),
        )  # fmt: skip
        response = await client.post(
            "/auth/token", data=token_form(client_assertion(key, client_id))
        )
        assert response.status_code == 401
        assert response.json() == UNUSABLE_JWKS_URL
        assert logged_reason(caplog, client_id) == f"its JWKS URL answered {status}"
        assert jwks_server.url.split("/")[2] not in caplog.text  # no host or port

    async def test_a_closed_port_is_not_told_either(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        caplog: pytest.LogCaptureFixture,
    ):
        key = ec_key()
        client_id = await register_client(
            database, tenant.organization_id, ["system/*.rs"],
            jwks_url=f"http://127.0.0.1:{free_port()}/jwks.json",
        )  # fmt: skip
        response = await client.post(
            "/auth/token", data=token_form(client_assertion(key, client_id))
        )
        assert response.status_code == 401
        assert response.json() == UNUSABLE_JWKS_URL
        assert "ConnectError" in logged_reason(caplog, client_id)

    async def test_a_name_that_now_resolves_to_a_private_address_is_not_fetched(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ):
        """DNS rebinding: a name public when the organization's administrator registered
        it, loopback at the fetch."""
        key = ec_key()
        resolving(monkeypatch, "93.184.216.34")
        async with AsyncSession(database.owner_engine) as owner:
            admin = await OrganizationService.create_api_key(
                db=owner, organization_id=tenant.organization_id, scopes=[ADMIN]
            )
        registered = await client.post(
            "/v1/clients",
            json={"name": "rebind", "jwks_url": "https://rebind.example/jwks.json",
                  "scopes": ["system/*.rs"]},
            headers={"Authorization": f"Bearer {admin.key}"},
        )  # fmt: skip
        assert registered.status_code == 201, registered.text
        client_id = uuid.UUID(registered.json()["client_id"])
        asked = resolving(monkeypatch, "127.0.0.1")
        response = await client.post(
            "/auth/token", data=token_form(client_assertion(key, client_id))
        )
        assert response.status_code == 401
        assert response.json() == UNUSABLE_JWKS_URL
        assert asked == ["rebind.example"]
        assert "not public" in logged_reason(caplog, client_id)

    async def test_keys_sharing_a_kid_are_each_tried(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        first, second = ec_key("shared"), ec_key("shared")
        client_id = await register_client(
            database, tenant.organization_id, ["system/*.rs"], jwks=jwks_of(first, second)
        )
        await request_token(client, second, client_id, "system/*.rs")
        await request_token(client, first, client_id, "system/*.rs")


class TestJwksFetchAddress:
    """Where fetch_jwks connects (httpx's MockTransport stands for the network)."""

    JWKS_OF_ONE = jwks_of(ec_key("one"))

    def transport(self, seen: list[httpx.Request]) -> httpx.MockTransport:
        def answer(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(200, json=self.JWKS_OF_ONE)

        return httpx.MockTransport(answer)

    @pytest.mark.parametrize(
        ("url", "address", "pinned"),
        [
            ("https://keys.example.org/jwks.json", "93.184.216.34",
             "https://93.184.216.34/jwks.json"),
            ("https://keys.example.org:8443/k?v=1", "2606:2800:220:1::1",
             "https://[2606:2800:220:1::1]:8443/k?v=1"),
        ],
    )  # fmt: skip
    async def test_a_name_goes_to_the_public_address_it_resolved_to(
        self, monkeypatch: pytest.MonkeyPatch, url: str, address: str, pinned: str
    ):
        asked = resolving(monkeypatch, address)
        seen: list[httpx.Request] = []
        jwks = await smart_keys.fetch_jwks(url, timeout_s=5, transport=self.transport(seen))
        assert jwks == self.JWKS_OF_ONE
        assert asked == ["keys.example.org"]
        [request] = seen
        assert str(request.url) == pinned
        assert request.headers["host"] == url.split("/")[2]  # the name, and its port
        assert request.extensions["sni_hostname"] == "keys.example.org"  # TLS checks it

    @pytest.mark.parametrize(
        "addresses",
        [("127.0.0.1",), ("10.0.0.7",), ("169.254.169.254",), ("93.184.216.34", "fd00::1"), ()],
        ids=["loopback", "private", "link-local", "one-of-two", "none"],
    )
    async def test_a_name_resolving_to_a_non_public_address_is_not_fetched(
        self, monkeypatch: pytest.MonkeyPatch, addresses: tuple[str, ...]
    ):
        resolving(monkeypatch, *addresses)
        seen: list[httpx.Request] = []
        with pytest.raises(smart_keys.JwksUnavailable):
            await smart_keys.fetch_jwks(
                "https://keys.example.org/jwks.json", timeout_s=5, transport=self.transport(seen)
            )
        assert seen == []

    @pytest.mark.parametrize(
        "url",
        ["http://127.0.0.1:8080/jwks.json", "http://localhost/jwks.json",
         "https://localhost/jwks.json", "https://10.0.0.7/jwks.json"],
    )  # fmt: skip
    async def test_what_only_the_operator_registers_goes_as_it_is(
        self, monkeypatch: pytest.MonkeyPatch, url: str
    ):
        """An IP literal cannot change: it was checked at registration, by the rules of
        who registered it (an administrator: public only; the operator's CLI: its
        own machine and network too). Nothing is resolved."""
        asked = resolving(monkeypatch, "127.0.0.1")
        seen: list[httpx.Request] = []
        await smart_keys.fetch_jwks(url, timeout_s=5, transport=self.transport(seen))
        assert asked == []
        assert [str(r.url) for r in seen] == [url]


class TestRegistration:
    @pytest.mark.parametrize(
        ("jwks", "said"),
        [
            ({"keys": []}, "no keys"),
            ({}, '"keys" list'),
            ({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}, "symmetric key"),
            ({"keys": [{"kty": "EC", "crv": "P-384", "x": "a", "y": "b"}]}, 'no "kid"'),
            ({"keys": [{"kty": "OKP", "kid": "k"}]}, "not supported"),
            ({"keys": [{"kty": "EC", "kid": "k", "crv": "P-256", "x": "a", "y": "b"}]}, "P-384"),
            ({"keys": [{"kty": "EC", "kid": "k", "crv": "P-384", "x": "a", "y": "b"}]},
             "not a valid EC public key"),
            ({"keys": [{"kty": "EC", "kid": "k", "crv": "P-384", "x": "a", "y": "b",
                        "use": "enc"}]}, '"use" must be "sig"'),
        ],
    )  # fmt: skip
    async def test_an_unusable_jwks_is_refused(
        self, database: Database, tenant: Tenant, jwks: dict[str, Any], said: str
    ):
        from src.services.errors import InvalidArgument  # noqa: PLC0415

        with pytest.raises(InvalidArgument) as refused:
            await register_client(database, tenant.organization_id, ["system/*.rs"], jwks=jwks)
        assert said in refused.value.message

    async def test_a_private_or_small_rsa_key_is_refused(
        self, database: Database, tenant: Tenant, rsa: SigningKey
    ):
        from jwt.algorithms import RSAAlgorithm  # noqa: PLC0415

        from src.services.errors import InvalidArgument  # noqa: PLC0415

        private = {**RSAAlgorithm.to_jwk(rsa.private, as_dict=True), "kid": "k"}
        with pytest.raises(InvalidArgument, match="private key material"):
            await register_client(database, tenant.organization_id, ["system/*.rs"],
                                  jwks={"keys": [private]})  # fmt: skip
        small = rsa_key(bits=1024)
        with pytest.raises(InvalidArgument, match="at least 2048 bits"):
            await register_client(database, tenant.organization_id, ["system/*.rs"],
                                  jwks=jwks_of(small))  # fmt: skip

    @pytest.mark.parametrize(
        "url",
        ["http://example.org/jwks", "ftp://127.0.0.1/jwks", "https://user:pw@example.org/j",
         "https:///nohost", "http://127.0.0.1:notaport/j"],
    )  # fmt: skip
    async def test_a_jwks_url_that_is_not_https_is_refused(
        self, database: Database, tenant: Tenant, url: str
    ):
        from src.services.errors import InvalidArgument  # noqa: PLC0415

        with pytest.raises(InvalidArgument):
            await register_client(database, tenant.organization_id, ["system/*.rs"],
                                  jwks_url=url)  # fmt: skip


# --- against a live `careteam serve` -----------------------------------------------------------


class TestLiveServer:
    async def test_the_client_credentials_dance_then_fhirpy_reads(
        self, live_api: LiveApi, live_org: uuid.UUID, database: Database
    ):
        async with httpx.AsyncClient(base_url=live_api.base_url, timeout=10) as http:
            headers = {"Authorization": f"Bearer {live_api.key}"}
            person = {"first_name": "Ada", "last_name": "Live", "dob": "1980-01-01"}
            patient = (await http.post("/v1/patients", headers=headers, json=person)).json()["id"]
            provider = (await http.post("/v1/providers", headers=headers, json={
                "first_name": "Grace", "last_name": "Live"})).json()["id"]  # fmt: skip
            assigned = await http.put(f"/v1/patients/{patient}/care-team/primary",
                                      headers=headers, json={"provider_id": provider})  # fmt: skip
            assert assigned.status_code == 200

            key = ec_key()
            client_id = await register_client(
                database, live_org, ["system/CareTeam.rs"], jwks=jwks_of(key)
            )
            config = (await http.get(f"{FHIR}/.well-known/smart-configuration")).json()
            token_url = config["token_endpoint"]
            assert token_url == f"{live_api.base_url}/auth/token"
            response = await http.post(token_url, data=token_form(
                client_assertion(key, client_id, aud=token_url), "system/CareTeam.rs"))  # fmt: skip
            assert response.status_code == 200, response.text
            token = response.json()["access_token"]

            fhir = AsyncFHIRClient(f"{live_api.base_url}{FHIR}", authorization=f"Bearer {token}")
            teams = await fhir.resources("CareTeam").search(patient=patient).fetch_all()
            assert [team["id"] for team in teams] == [patient]
            refused = await http.get(f"/v1/patients/{patient}",
                                     headers={"Authorization": f"Bearer {token}"})  # fmt: skip
            assert refused.status_code == 403
