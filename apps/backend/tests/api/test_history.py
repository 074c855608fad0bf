"""A care team's history through the API: ids and cursors that belong to the tenant."""

from __future__ import annotations

import httpx

from tests.helpers import Tenant, TenantFactory, assign, post_patient, post_provider


async def history_ids(client: httpx.AsyncClient, tenant: Tenant, patient: str) -> list[int]:
    r = await client.get(f"/v1/patients/{patient}/care-team/history", headers=tenant.headers)
    return [item["id"] for item in r.json()["items"]]


class TestIdsBelongToTheTenant:
    async def test_another_tenants_writes_do_not_move_my_ids(
        self, client: httpx.AsyncClient, make_tenant: TenantFactory
    ):
        a, b = await make_tenant(), await make_tenant()
        b_patient = await post_patient(client, b)
        b_providers = [await post_provider(client, b) for _ in range(2)]
        await assign(client, b, b_patient, b_providers[0])
        first = await history_ids(client, b, b_patient)
        assert first == [1]  # the tenant's first event is its number 1

        a_patient = await post_patient(client, a)
        a_providers = [await post_provider(client, a) for _ in range(2)]
        for n in range(7):  # 13 events in tenant A
            await assign(client, a, a_patient, a_providers[n % 2])

        await assign(client, b, b_patient, b_providers[1])  # a demotion and an assignment
        assert await history_ids(client, b, b_patient) == [3, 2, 1]

    async def test_cursors_page_through_everything_once(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient = await post_patient(client, tenant)
        providers = [await post_provider(client, tenant) for _ in range(2)]
        for n in range(4):
            await assign(client, tenant, patient, providers[n % 2])  # 7 events
        seen: list[int] = []
        cursor = None
        while True:
            params: dict[str, str | int] = {"limit": 3}
            if cursor is not None:
                params["cursor"] = cursor
            r = await client.get(
                f"/v1/patients/{patient}/care-team/history", params=params, headers=tenant.headers
            )
            page = r.json()
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert isinstance(cursor, str)
        assert seen == sorted(seen, reverse=True) == list(range(7, 0, -1))
