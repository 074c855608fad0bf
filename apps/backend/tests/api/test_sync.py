"""Retrying safely (Idempotency-Key) and staying in sync (the change feed)."""

from __future__ import annotations

import asyncio
import json
import random
import uuid

import httpx
from sqlalchemy import text

from src.db import Database
from src.values import Cursors
from tests.helpers import Tenant, TenantFactory, owner_count, post_patient, post_provider

BODY = {"first_name": "Ada", "last_name": "Lovelace", "dob": "1984-02-29"}


def keyed(tenant: Tenant, key: str) -> dict[str, str]:
    return {**tenant.headers, "Idempotency-Key": key}


class TestIdempotencyKeys:
    async def test_the_same_request_again_gets_the_first_response_and_runs_once(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        first = await client.post("/v1/patients", json=BODY, headers=keyed(tenant, "k-1"))
        again = await client.post("/v1/patients", json=BODY, headers=keyed(tenant, "k-1"))
        assert (first.status_code, again.status_code) == (201, 201)
        assert again.content == first.content
        assert again.headers["etag"] == first.headers["etag"]
        assert again.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers
        patients = await owner_count(
            database,
            "SELECT count(*) FROM patients WHERE organization_id = :o",
            o=tenant.organization_id,
        )
        assert patients == 1

    async def test_a_different_request_with_the_key_is_refused_and_runs_nothing(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        await client.post("/v1/patients", json=BODY, headers=keyed(tenant, "k-2"))
        other = await client.post(
            "/v1/patients", json={**BODY, "first_name": "Bob"}, headers=keyed(tenant, "k-2")
        )
        assert other.status_code == 409, other.text
        assert other.json()["error"] == "idempotency_key_reused"
        elsewhere = await client.post(
            "/v1/providers", json=BODY | {"dob": None}, headers=keyed(tenant, "k-2")
        )
        assert elsewhere.status_code in (409, 422)
        patients = await owner_count(
            database,
            "SELECT count(*) FROM patients WHERE organization_id = :o",
            o=tenant.organization_id,
        )
        assert patients == 1

    async def test_the_same_json_written_otherwise_is_the_same_request(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        """Other whitespace, or the members in another order, was 409
        idempotency_key_reused (the bytes were compared): the parsed request is."""
        compact = json.dumps(BODY, separators=(",", ":")).encode()
        spaced = json.dumps(dict(reversed(BODY.items())), indent=4).encode()
        headers = {**keyed(tenant, "k-json"), "Content-Type": "application/json"}
        first = await client.post("/v1/patients", content=compact, headers=headers)
        again = await client.post("/v1/patients", content=spaced, headers=headers)
        assert (first.status_code, again.status_code) == (201, 201), again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.content == first.content
        other = await client.post(
            "/v1/patients", content=spaced.replace(b"Ada", b"Eve"), headers=headers
        )
        assert other.status_code == 409 and other.json()["error"] == "idempotency_key_reused"

    async def test_ids_in_either_case_are_the_same_request(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """A keyed retry with the ids' digits in upper case was 409 idempotency_key_reused:
        a UUID is the same UUID in either case (RFC 9562)."""
        patient = await post_patient(client, tenant)
        provider = await post_provider(client, tenant)
        headers = keyed(tenant, "k-case")
        first = await client.put(
            f"/v1/patients/{patient}/care-team/primary",
            json={"provider_id": provider},
            headers=headers,
        )
        again = await client.put(
            f"/v1/patients/{patient.upper()}/care-team/primary",
            json={"provider_id": provider.upper()},
            headers=headers,
        )
        assert (first.status_code, again.status_code) == (200, 200), again.text
        assert again.headers["idempotent-replayed"] == "true"
        assert again.content == first.content

    async def test_concurrent_requests_with_one_key_execute_once(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        patient = await post_patient(client, tenant)
        provider = await post_provider(client, tenant)
        url = f"/v1/patients/{patient}/care-team/members"
        answers = await asyncio.gather(
            *(
                client.post(url, json={"provider_id": provider}, headers=keyed(tenant, "k-3"))
                for _ in range(10)
            )
        )
        assert {a.status_code for a in answers} == {201}  # the first answer, ten times
        assert len({a.content for a in answers}) == 1
        assert sum("idempotent-replayed" in a.headers for a in answers) == 9
        events = await owner_count(
            database,
            "SELECT count(*) FROM care_team_events WHERE organization_id = :o",
            o=tenant.organization_id,
        )
        assert events == 1

    async def test_keys_belong_to_one_organization(
        self, client: httpx.AsyncClient, make_tenant: TenantFactory
    ):
        a, b = await make_tenant(), await make_tenant()
        one = await client.post("/v1/patients", json=BODY, headers=keyed(a, "shared"))
        two = await client.post("/v1/patients", json=BODY, headers=keyed(b, "shared"))
        assert (one.status_code, two.status_code) == (201, 201)
        assert one.json()["id"] != two.json()["id"]
        assert "idempotent-replayed" not in two.headers

    async def test_an_expired_key_is_new_again(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        first = await client.post("/v1/patients", json=BODY, headers=keyed(tenant, "k-4"))
        for other in ("k-4a", "k-4b"):  # other keys, as old: cleared by the next keyed write
            await client.post(
                "/v1/patients", json=BODY | {"first_name": other}, headers=keyed(tenant, other)
            )
        async with database.owner_engine.begin() as conn:
            await conn.execute(
                text(
                    "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' "
                    "WHERE organization_id = :o"
                ),
                {"o": tenant.organization_id},
            )
        later = await client.post("/v1/patients", json=BODY, headers=keyed(tenant, "k-4"))
        assert later.status_code == 201
        assert later.json()["id"] != first.json()["id"]
        expired = await owner_count(
            database,
            "SELECT count(*) FROM idempotency_keys WHERE organization_id = :o "
            "AND created_at < now() - interval '24 hours'",
            o=tenant.organization_id,
        )
        assert expired == 0

    async def test_a_refused_write_stores_nothing_and_may_be_retried(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient = await post_patient(client, tenant)
        missing = str(uuid.uuid4())
        url = f"/v1/patients/{patient}/care-team/primary"
        refused = await client.put(url, json={"provider_id": missing}, headers=keyed(tenant, "k-5"))
        assert refused.status_code == 422
        again = await client.put(url, json={"provider_id": missing}, headers=keyed(tenant, "k-5"))
        assert again.status_code == 422 and "idempotent-replayed" not in again.headers

    async def test_a_transfer_runs_once(self, client: httpx.AsyncClient, tenant: Tenant):
        leaving, staying = await post_provider(client, tenant), await post_provider(client, tenant)
        for _ in range(3):
            patient = await post_patient(client, tenant)
            await client.put(
                f"/v1/patients/{patient}/care-team/primary",
                json={"provider_id": leaving},
                headers=tenant.headers,
            )
        body = {"to_provider_id": staying, "reason": "provider_left"}
        url = f"/v1/providers/{leaving}/panel/transfer"
        first = await client.post(url, json=body, headers=keyed(tenant, "k-6"))
        again = await client.post(url, json=body, headers=keyed(tenant, "k-6"))
        assert first.status_code == again.status_code == 200, first.text
        assert first.json()["moved"] == again.json()["moved"] == 3  # the first answer
        assert again.headers["idempotent-replayed"] == "true"


async def read_feed(
    client: httpx.AsyncClient, tenant: Tenant, after: str | None
) -> tuple[list[int], str]:
    params: dict[str, object] = {"limit": 50}
    if after is not None:
        params["after"] = after
    r = await client.get("/v1/care-team-events", params=params, headers=tenant.headers)
    assert r.status_code == 200, r.text
    page = r.json()
    return [e["id"] for e in page["items"]], page["next_cursor"]


class TestTheChangeFeed:
    async def test_concurrent_commits_are_read_with_no_gap_and_no_repeat(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        """Writers on many patients commit concurrently while a reader follows the feed
        with its cursor: every page continues exactly where the last one ended, and in
        the end the reader has seen every event once."""
        patients = [await post_patient(client, tenant) for _ in range(6)]
        providers = [await post_provider(client, tenant) for _ in range(4)]
        seen: list[int] = []
        cursor: str | None = None
        writing = True

        async def writer(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(15):
                patient, provider = rng.choice(patients), rng.choice(providers)
                await client.put(
                    f"/v1/patients/{patient}/care-team/primary",
                    json={"provider_id": provider},
                    headers=tenant.headers,
                )

        async def reader() -> None:
            nonlocal cursor
            while writing:
                ids, cursor = await read_feed(client, tenant, cursor)
                expected_first = (seen[-1] if seen else 0) + 1
                assert ids == list(range(expected_first, expected_first + len(ids)))
                seen.extend(ids)
                await asyncio.sleep(0)

        reading = asyncio.create_task(reader())
        await asyncio.gather(*(writer(n) for n in range(4)))
        writing = False
        await reading
        while True:  # the rest
            ids, cursor = await read_feed(client, tenant, cursor)
            if not ids:
                break
            seen.extend(ids)
        total = await owner_count(
            database,
            "SELECT count(*) FROM care_team_events WHERE organization_id = :o",
            o=tenant.organization_id,
        )
        assert seen == list(range(1, total + 1)) and total > 0

    async def test_a_transaction_holding_an_event_is_waited_for_not_skipped(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        """A write whose event is numbered but not committed holds back the writes after
        it (the organization's counter row), so the reader never sees a later number
        first: it sees nothing, then both in order."""
        first_patient, second_patient = (
            await post_patient(client, tenant),
            await post_patient(client, tenant),
        )
        provider = await post_provider(client, tenant)
        _, cursor = await read_feed(client, tenant, None)
        async with database.owner_engine.connect() as held:
            transaction = await held.begin()
            await held.execute(
                text("SELECT careteam_add_secondary(:o, :p, :v, 'test', 'other', NULL)"),
                {
                    "o": tenant.organization_id,
                    "p": uuid.UUID(first_patient),
                    "v": uuid.UUID(provider),
                },
            )
            later = asyncio.create_task(
                client.post(
                    f"/v1/patients/{second_patient}/care-team/members",
                    json={"provider_id": provider},
                    headers=tenant.headers,
                )
            )
            await asyncio.sleep(0.3)
            assert not later.done()  # it waits for the held transaction's number
            ids, after_wait = await read_feed(client, tenant, cursor)
            assert ids == [] and after_wait == cursor
            await transaction.commit()
        assert (await later).status_code == 201
        ids, _ = await read_feed(client, tenant, cursor)
        assert len(ids) == 2 and ids[1] == ids[0] + 1

    async def test_isolated_per_tenant(self, client: httpx.AsyncClient, make_tenant: TenantFactory):
        a, b = await make_tenant(), await make_tenant()
        patient, provider = await post_patient(client, a), await post_provider(client, a)
        await client.put(
            f"/v1/patients/{patient}/care-team/primary",
            json={"provider_id": provider},
            headers=a.headers,
        )
        ids_a, _ = await read_feed(client, a, None)
        ids_b, _ = await read_feed(client, b, None)
        assert ids_a == [1] and ids_b == []

    async def test_another_organizations_cursor_is_422_not_an_empty_page(
        self, client: httpx.AsyncClient, make_tenant: TenantFactory
    ):
        """A's cursor used with B's key answered 200 with no items and echoed it: B's
        event number 1 was then never delivered to a client that kept that cursor."""
        a, b = await make_tenant(), await make_tenant()
        for tenant in (a, a, b):
            patient, provider = (
                await post_patient(client, tenant),
                await post_provider(client, tenant),
            )
            await client.put(
                f"/v1/patients/{patient}/care-team/primary",
                json={"provider_id": provider},
                headers=tenant.headers,
            )
        _, cursor_a = await read_feed(client, a, None)
        r = await client.get("/v1/care-team-events", params={"after": cursor_a}, headers=b.headers)
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "invalid_cursor"
        assert r.json()["errors"][0]["field"] == "after"
        ids_b, _ = await read_feed(client, b, None)
        assert ids_b == [1]

    async def test_a_cursor_past_the_organizations_last_event_is_422(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        """A cursor sealed by this server for a position the organization has not reached
        (a database restored from an older backup, say) is refused, not an empty page."""
        async with database.owner_engine.connect() as conn:
            key = (
                await conn.execute(text("SELECT value FROM careteam_secrets WHERE name = 'cursor'"))
            ).scalar_one()
        ahead = Cursors(bytes(key), tenant.organization_id).seal("care_team_events", 5)
        r = await client.get(
            "/v1/care-team-events", params={"after": ahead}, headers=tenant.headers
        )
        assert r.status_code == 422 and r.json()["error"] == "invalid_cursor", r.text

    async def test_a_malformed_or_forged_cursor_is_422(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        for bad in ("!", "a" * 11, "", "zzzzzzzzzz", "0", "1"):
            r = await client.get(
                "/v1/care-team-events", params={"after": bad}, headers=tenant.headers
            )
            assert r.status_code == 422, bad


class TestEveryCursorBelongsToItsList:
    """Every cursor the API issues is read only by the organization and the list it was
    issued for: elsewhere it is 422 invalid_cursor (FHIR: 400), never a page."""

    async def lists_of(self, client: httpx.AsyncClient, tenant: Tenant) -> dict[str, str]:
        """Each list's URL (a page of one item, with a next page) for this tenant."""
        patients = [await post_patient(client, tenant) for _ in range(2)]
        providers = [await post_provider(client, tenant) for _ in range(2)]
        team = f"/v1/patients/{patients[0]}/care-team"
        for provider in providers:
            await client.put(
                f"{team}/primary", json={"provider_id": provider}, headers=tenant.headers
            )
        await client.put(
            f"{team}/primary", json={"provider_id": providers[0]}, headers=tenant.headers
        )
        await client.patch(
            f"/v1/patients/{patients[0]}", json={"first_name": "B"}, headers=tenant.headers
        )
        await client.post(
            f"/v1/patients/{patients[1]}/care-team/members",
            json={"provider_id": providers[0]},
            headers=tenant.headers,
        )
        return {
            "patients": "/v1/patients?limit=1",
            "providers": "/v1/providers?limit=1",
            "changes": f"/v1/patients/{patients[0]}/changes?limit=1",
            "history": f"{team}/history?limit=1",
            "periods": f"{team}/periods?limit=1",
            "panel": f"/v1/providers/{providers[0]}/patients?limit=1&role=any",
            "feed": "/v1/care-team-events?limit=1",
        }

    async def next_cursor(self, client: httpx.AsyncClient, tenant: Tenant, url: str) -> str:
        r = await client.get(url, headers=tenant.headers)
        assert r.status_code == 200, (url, r.text)
        cursor: str = r.json()["next_cursor"]
        assert cursor, url
        return cursor

    @staticmethod
    def with_cursor(url: str, cursor: str) -> str:
        name = "after" if url.startswith("/v1/care-team-events") else "cursor"
        return f"{url}&{name}={cursor}"

    async def test_elsewhere_a_cursor_is_refused(
        self, client: httpx.AsyncClient, make_tenant: TenantFactory
    ):
        a, b = await make_tenant(), await make_tenant()
        lists_a, lists_b = await self.lists_of(client, a), await self.lists_of(client, b)
        cursors = {name: await self.next_cursor(client, a, url) for name, url in lists_a.items()}
        for name, cursor in cursors.items():
            own = await client.get(self.with_cursor(lists_a[name], cursor), headers=a.headers)
            assert own.status_code == 200, (name, own.text)
            foreign = await client.get(self.with_cursor(lists_b[name], cursor), headers=b.headers)
            assert foreign.status_code == 422, (name, foreign.text)
            assert foreign.json()["error"] == "invalid_cursor"
            for other, url in lists_a.items():
                if other != name:
                    r = await client.get(self.with_cursor(url, cursor), headers=a.headers)
                    assert r.status_code == 422, (name, other, r.text)
        searched = await client.get("/v1/patients?limit=1&name=A", headers=a.headers)
        filtered = searched.json()["next_cursor"] or cursors["patients"]
        r = await client.get(f"/v1/patients?limit=1&name=Z&cursor={filtered}", headers=a.headers)
        assert r.status_code == 422  # another search: another list

    async def test_a_fhir_cursor_belongs_to_its_search_and_organization(
        self, client: httpx.AsyncClient, make_tenant: TenantFactory
    ):
        a, b = await make_tenant(), await make_tenant()
        for tenant in (a, b):
            for _ in range(2):
                await post_patient(client, tenant)
        first = (await client.get("/fhir/R4/Patient?_count=1", headers=a.headers)).json()
        following = next(link["url"] for link in first["link"] if link["relation"] == "next")
        path = following.split("/fhir/R4", 1)[1]
        assert (await client.get(f"/fhir/R4{path}", headers=a.headers)).status_code == 200
        assert (await client.get(f"/fhir/R4{path}", headers=b.headers)).status_code == 400
        cursor = path.split("_cursor=", 1)[1]
        other = await client.get(
            f"/fhir/R4/Practitioner?_count=1&_cursor={cursor}", headers=a.headers
        )
        assert other.status_code == 400
        assert "_cursor" in other.json()["issue"][0]["diagnostics"]
