"""The care team workflow through HTTP, and concurrency through the app."""

from __future__ import annotations

import asyncio

import httpx

from tests.helpers import Tenant, post_patient, post_provider


class TestWorkflow:
    async def test_assign_change_add_secondary_read_team_and_history(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        h = tenant.headers
        patient = await post_patient(client, tenant)
        first, second, third = [await post_provider(client, tenant) for _ in range(3)]
        team_url = f"/v1/patients/{patient}/care-team"

        empty = await client.get(team_url, headers=h)
        assert empty.status_code == 200
        assert empty.json() == {"patient_id": patient, "primary_provider_id": None, "members": []}

        r = await client.put(f"{team_url}/primary", json={"provider_id": first}, headers=h)
        assert r.status_code == 200 and r.json()["primary_provider_id"] == first

        r = await client.put(f"{team_url}/primary", json={"provider_id": second}, headers=h)
        assert r.status_code == 200
        assert [(m["provider_id"], m["is_primary_provider"]) for m in r.json()["members"]] == [
            (second, True),
            (first, False),
        ]

        r = await client.post(f"{team_url}/members", json={"provider_id": third}, headers=h)
        assert r.status_code == 201
        assert r.json()["primary_provider_id"] == second
        # Already on the team: nothing is created, and the answer says so (200, not 201).
        again = await client.post(f"{team_url}/members", json={"provider_id": third}, headers=h)
        assert again.status_code == 200
        assert again.json() == r.json()

        team = (await client.get(team_url, headers=h)).json()
        assert [m["provider_id"] for m in team["members"]] == [second, first, third]

        history = await client.get(f"{team_url}/history", params={"limit": 2}, headers=h)
        assert history.status_code == 200
        page = history.json()
        assert [e["event_type"] for e in page["items"]] == ["secondary_added", "primary_assigned"]
        assert page["items"][0]["actor"] == f"api_key:{tenant.api_key_id}"
        rest = (
            await client.get(
                f"{team_url}/history", params={"limit": 2, "cursor": page["next_cursor"]}, headers=h
            )
        ).json()
        assert [e["event_type"] for e in rest["items"]] == ["primary_demoted", "primary_assigned"]
        assert rest["next_cursor"] is None

    async def test_current_primary_cannot_be_made_secondary(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient = await post_patient(client, tenant)
        provider = await post_provider(client, tenant)
        team_url = f"/v1/patients/{patient}/care-team"
        await client.put(
            f"{team_url}/primary", json={"provider_id": provider}, headers=tenant.headers
        )
        r = await client.post(
            f"{team_url}/members", json={"provider_id": provider}, headers=tenant.headers
        )
        assert r.status_code == 409
        assert r.json()["error"] == "provider_already_primary"

    async def test_remove_member(self, client: httpx.AsyncClient, tenant: Tenant):
        patient = await post_patient(client, tenant)
        provider = await post_provider(client, tenant)
        team_url = f"/v1/patients/{patient}/care-team"
        await client.post(
            f"{team_url}/members", json={"provider_id": provider}, headers=tenant.headers
        )
        r = await client.delete(f"{team_url}/members/{provider}", headers=tenant.headers)
        assert r.status_code == 204 and r.content == b""
        again = await client.delete(f"{team_url}/members/{provider}", headers=tenant.headers)
        assert again.status_code == 404
        assert again.json()["error"] == "provider_not_on_care_team"

    async def test_deactivated_provider_cannot_join(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient = await post_patient(client, tenant)
        provider = await post_provider(client, tenant, npi="1234567893")
        r = await client.patch(
            f"/v1/providers/{provider}", json={"active": False}, headers=tenant.headers
        )
        assert r.status_code == 200 and r.json()["active"] is False
        assert r.json()["npi"] == "1234567893"
        r = await client.put(
            f"/v1/patients/{patient}/care-team/primary",
            json={"provider_id": provider},
            headers=tenant.headers,
        )
        assert r.status_code == 409
        assert r.json()["error"] == "provider_inactive"

    async def test_read_back_patient_and_provider(self, client: httpx.AsyncClient, tenant: Tenant):
        patient = await post_patient(client, tenant, first_name="Bob")
        provider = await post_provider(client, tenant)
        p = (await client.get(f"/v1/patients/{patient}", headers=tenant.headers)).json()
        assert (p["first_name"], p["dob"]) == ("Bob", "1984-02-29")
        assert (await client.get(f"/v1/providers/{provider}", headers=tenant.headers)).json()[
            "active"
        ] is True

    async def test_healthz_needs_no_key(self, client: httpx.AsyncClient):
        r = await client.get("/healthz")
        assert r.status_code == 200 and r.json() == {"status": "ok"}


class TestConcurrentAssignmentThroughTheApp:
    async def test_50_concurrent_puts_leave_exactly_one_primary(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient = await post_patient(client, tenant)
        providers = [await post_provider(client, tenant) for _ in range(5)]
        url = f"/v1/patients/{patient}/care-team/primary"
        responses = await asyncio.gather(
            *(
                client.put(url, json={"provider_id": providers[i % 5]}, headers=tenant.headers)
                for i in range(50)
            )
        )
        assert [r.status_code for r in responses] == [200] * 50
        team = (
            await client.get(f"/v1/patients/{patient}/care-team", headers=tenant.headers)
        ).json()
        primaries = [m for m in team["members"] if m["is_primary_provider"]]
        assert len(primaries) == 1
        assert len(team["members"]) == 5
        history = (
            await client.get(
                f"/v1/patients/{patient}/care-team/history",
                params={"limit": 1},
                headers=tenant.headers,
            )
        ).json()
        # The last change committed is the primary that remains.
        assert history["items"][0]["provider_id"] == primaries[0]["provider_id"]


class TestDocumentation:
    async def test_openapi_and_docs_are_served(self, client: httpx.AsyncClient):
        spec = await client.get("/openapi.json")
        assert spec.status_code == 200
        paths = spec.json()["paths"]
        assert "/v1/patients/{patient_id}/care-team/primary" in paths
        assert spec.json()["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
        docs = await client.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
