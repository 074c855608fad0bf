"""Attribution over HTTP: the team as of an instant, periods, panels, capacity, transfers,
deactivation and the overview; bad input answered 422 with nothing written."""

from __future__ import annotations

import asyncio
import datetime
import uuid

import httpx
import pytest
from sqlalchemy import text

from src.db import Database
from src.values import parse_instant
from tests.helpers import (
    Tenant,
    TenantFactory,
    owner_count,
    post_patient,
    post_provider,
    wait_until_blocked,
)


async def assign(
    client: httpx.AsyncClient, tenant: Tenant, patient: str, provider: str, **extra: object
) -> httpx.Response:
    return await client.put(
        f"/v1/patients/{patient}/care-team/primary",
        json={"provider_id": provider, **extra},
        headers=tenant.headers,
    )


async def written(database: Database, tenant: Tenant) -> tuple[int, ...]:
    """The tenant's assignments, events and periods, and its providers' capacities."""
    async with database.owner_engine.connect() as conn:
        counts = []
        for query in (
            "SELECT count(*) FROM care_team_assignments WHERE organization_id = :org",
            "SELECT count(*) FROM care_team_events WHERE organization_id = :org",
            "SELECT count(*) FROM care_team_periods WHERE organization_id = :org",
            "SELECT count(panel_capacity) FROM providers WHERE organization_id = :org",
        ):
            result = await conn.execute(text(query), {"org": tenant.organization_id})
            counts.append(result.scalar_one())
        return tuple(counts)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


class TestTheTeamThroughTime:
    async def test_as_of_and_periods(self, client: httpx.AsyncClient, tenant: Tenant):
        patient = await post_patient(client, tenant)
        first, second = await post_provider(client, tenant), await post_provider(client, tenant)
        before = now()
        await asyncio.sleep(0.01)
        r = await assign(client, tenant, patient, first, reason="patient_request", note="moved")
        assert r.status_code == 200, r.text
        between = now()
        await asyncio.sleep(0.01)
        r = await assign(client, tenant, patient, second, reason="provider_left")
        assert r.status_code == 200, r.text
        url = f"/v1/patients/{patient}/care-team"

        async def as_of(instant: str) -> dict[str, object]:
            got = await client.get(url, params={"as_of": instant}, headers=tenant.headers)
            assert got.status_code == 200, got.text
            return dict(got.json())

        assert (await as_of(before))["members"] == []
        at_between = await as_of(between)
        assert at_between["primary_provider_id"] == first
        assert [m["role"] for m in at_between["members"]] == ["primary"]  # type: ignore[index]
        current = (await client.get(url, headers=tenant.headers)).json()
        assert current["primary_provider_id"] == second
        roles = {m["provider_id"]: m["role"] for m in current["members"]}
        assert roles == {second: "primary", first: "secondary"}
        assert all(m["since"] for m in current["members"])

        periods = (await client.get(f"{url}/periods", headers=tenant.headers)).json()
        summary = [
            (p["provider_id"], p["role"], p["valid_to"] is None, p["start_reason"], p["end_reason"])
            for p in periods["items"]
        ]
        # Oldest first; periods that begin together, in provider id order.
        together = sorted(
            [
                (second, "primary", True, "provider_left", None),
                (first, "secondary", True, "provider_left", None),
            ],
            key=lambda p: uuid.UUID(p[0]),
        )
        assert summary == [(first, "primary", False, "patient_request", "provider_left"), *together]
        # One change, one instant: the new primary begins exactly where the old one ends.
        ended, began = periods["items"][0]["valid_to"], periods["items"][1]["valid_from"]
        assert ended == began
        assert periods["next_cursor"] is None
        # The note is stored with the event (the history shows it), not in the periods.
        assert "moved" not in str(periods)
        history = (await client.get(f"{url}/history", headers=tenant.headers)).json()
        assert [(e["reason"], e["note"]) for e in history["items"]][-1] == (
            "patient_request",
            "moved",
        )

    async def test_periods_are_paged(self, client: httpx.AsyncClient, tenant: Tenant):
        patient = await post_patient(client, tenant)
        providers = [await post_provider(client, tenant) for _ in range(3)]
        for provider in providers:
            assert (await assign(client, tenant, patient, provider)).status_code == 200
        url = f"/v1/patients/{patient}/care-team/periods"
        seen, cursor = [], None
        while True:
            params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = (await client.get(url, params=params, headers=tenant.headers)).json()
            assert len(page["items"]) <= 2
            seen += [(p["provider_id"], p["role"], p["valid_from"]) for p in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) == 5  # 3 primaries, 2 demoted to secondary


class TestPanels:
    async def test_a_panel_is_paged_in_patient_order(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        provider = await post_provider(client, tenant)
        patients = [await post_patient(client, tenant) for _ in range(5)]
        for patient in patients:
            assert (await assign(client, tenant, patient, provider)).status_code == 200
        url = f"/v1/providers/{provider}/patients"
        seen, cursor = [], None
        while True:
            params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = (await client.get(url, params=params, headers=tenant.headers)).json()
            seen += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [e["patient_id"] for e in seen] == sorted(patients, key=uuid.UUID)
        assert {e["role"] for e in seen} == {"primary"}
        secondary = await client.get(url, params={"role": "secondary"}, headers=tenant.headers)
        assert secondary.json()["items"] == []
        provider_json = (
            await client.get(f"/v1/providers/{provider}", headers=tenant.headers)
        ).json()
        assert provider_json["panel_size"] == 5 and provider_json["panel_capacity"] is None

    async def test_a_panel_paged_at_the_largest_limit_has_a_next_page(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """limit=200 (the maximum) answered 200 patients and next_cursor null however
        large the panel: the service cut the router's look-ahead row (201) to 200."""
        provider = await post_provider(client, tenant)
        patients = await asyncio.gather(*(post_patient(client, tenant) for _ in range(201)))
        for patient in patients:
            assert (await assign(client, tenant, patient, provider)).status_code == 200
        url = f"/v1/providers/{provider}/patients"
        first = (await client.get(url, params={"limit": 200}, headers=tenant.headers)).json()
        assert len(first["items"]) == 200 and first["next_cursor"] is not None
        rest = await client.get(
            url, params={"limit": 200, "cursor": first["next_cursor"]}, headers=tenant.headers
        )
        seen = [e["patient_id"] for e in first["items"] + rest.json()["items"]]
        assert seen == sorted(patients, key=uuid.UUID)
        assert rest.json()["next_cursor"] is None

    async def test_a_full_panel_is_409(self, client: httpx.AsyncClient, tenant: Tenant):
        provider = await post_provider(client, tenant)
        r = await client.patch(
            f"/v1/providers/{provider}", json={"panel_capacity": 1}, headers=tenant.headers
        )
        assert r.status_code == 200 and r.json()["panel_capacity"] == 1
        first, second = await post_patient(client, tenant), await post_patient(client, tenant)
        assert (await assign(client, tenant, first, provider)).status_code == 200
        full = await assign(client, tenant, second, provider)
        assert full.status_code == 409 and full.json()["error"] == "panel_full"
        # Unlimited again: null.
        r = await client.patch(
            f"/v1/providers/{provider}", json={"panel_capacity": None}, headers=tenant.headers
        )
        assert r.json()["panel_capacity"] is None
        assert (await assign(client, tenant, second, provider)).status_code == 200

    async def test_a_provider_with_patients_cannot_be_deactivated(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        provider = await post_provider(client, tenant)
        for _ in range(2):
            patient = await post_patient(client, tenant)
            assert (await assign(client, tenant, patient, provider)).status_code == 200
        r = await client.patch(
            f"/v1/providers/{provider}", json={"active": False}, headers=tenant.headers
        )
        assert r.status_code == 409, r.text
        assert r.json()["error"] == "provider_has_patients"
        assert "2 patient(s)" in r.json()["detail"]
        got = await client.get(f"/v1/providers/{provider}", headers=tenant.headers)
        assert got.json()["active"] is True

    async def test_deactivating_a_provider_ends_its_memberships_then_and_there(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        """A deactivated provider stayed an open secondary, and a FHIR CareTeam whose
        only current member it was still said `active`."""
        leaving, staying = await post_provider(client, tenant), await post_provider(client, tenant)
        shared, alone = await post_patient(client, tenant), await post_patient(client, tenant)
        assert (await assign(client, tenant, shared, staying)).status_code == 200
        for patient in (shared, alone):
            r = await client.post(
                f"/v1/patients/{patient}/care-team/members",
                json={"provider_id": leaving},
                headers=tenant.headers,
            )
            assert r.status_code == 201, r.text
        r = await client.patch(
            f"/v1/providers/{leaving}", json={"active": False}, headers=tenant.headers
        )
        assert r.status_code == 200, r.text
        team = (await client.get(f"/v1/patients/{shared}/care-team", headers=tenant.headers)).json()
        assert [m["provider_id"] for m in team["members"]] == [staying]
        history = await client.get(
            f"/v1/patients/{alone}/care-team/history", headers=tenant.headers
        )
        latest = history.json()["items"][0]
        assert (latest["event_type"], latest["reason"]) == ("provider_removed", "provider_left")
        periods = await client.get(
            f"/v1/patients/{alone}/care-team/periods", headers=tenant.headers
        )
        assert [(p["valid_to"] is not None, p["end_reason"]) for p in periods.json()["items"]] == [
            (True, "provider_left")
        ]
        fhir = await client.get(f"/fhir/R4/CareTeam/{alone}", headers=tenant.headers)
        assert fhir.json()["status"] == "inactive"
        open_memberships = await owner_count(
            database,
            "SELECT count(*) FROM care_team_assignments a JOIN providers v "
            "ON v.organization_id = a.organization_id AND v.id = a.provider_id "
            "WHERE a.organization_id = :o AND NOT v.active",
            o=tenant.organization_id,
        )
        assert open_memberships == 0

    async def test_deactivating_again_ends_a_membership_left_from_before(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        """An inactive provider still on a team (data from the release before): the
        same PATCH ends it."""
        provider, patient = await post_provider(client, tenant), await post_patient(client, tenant)
        await client.post(
            f"/v1/patients/{patient}/care-team/members",
            json={"provider_id": provider},
            headers=tenant.headers,
        )
        async with database.owner_engine.begin() as conn:  # as the release before left it
            await conn.execute(
                text("UPDATE providers SET active = false WHERE id = :id"), {"id": provider}
            )
        r = await client.patch(
            f"/v1/providers/{provider}", json={"active": False}, headers=tenant.headers
        )
        assert r.status_code == 200
        team = (
            await client.get(f"/v1/patients/{patient}/care-team", headers=tenant.headers)
        ).json()
        assert team["members"] == []

    async def test_transfer_dry_run_then_for_real(self, client: httpx.AsyncClient, tenant: Tenant):
        leaving, taking = await post_provider(client, tenant), await post_provider(client, tenant)
        patients = [await post_patient(client, tenant) for _ in range(3)]
        for patient in patients:
            assert (await assign(client, tenant, patient, leaving)).status_code == 200
        await client.patch(
            f"/v1/providers/{taking}", json={"panel_capacity": 2}, headers=tenant.headers
        )
        url = f"/v1/providers/{leaving}/panel/transfer"
        body = {"to_provider_id": taking, "reason": "provider_left", "dry_run": True}
        dry = await client.post(url, json=body, headers=tenant.headers)
        assert dry.status_code == 200, dry.text
        # What the run answers next: a dry run says what would happen.
        assert dry.json() == {"dry_run": True, "moved": 2, "remaining": 1, "refused_capacity": 1}
        done = await client.post(url, json={**body, "dry_run": False}, headers=tenant.headers)
        assert done.json() == {"dry_run": False, "moved": 2, "remaining": 1, "refused_capacity": 1}
        # Again, once the target has room: only what is left moves.
        await client.patch(
            f"/v1/providers/{taking}", json={"panel_capacity": None}, headers=tenant.headers
        )
        again = await client.post(
            url,
            json={**body, "dry_run": False, "previous_provider": "remove"},
            headers=tenant.headers,
        )
        assert again.json() == {"dry_run": False, "moved": 1, "remaining": 0, "refused_capacity": 0}
        teams = [
            (await client.get(f"/v1/patients/{p}/care-team", headers=tenant.headers)).json()
            for p in patients
        ]
        assert {t["primary_provider_id"] for t in teams} == {taking}
        # Kept as secondary by default, removed when asked.
        assert sorted(len(t["members"]) for t in teams) == [1, 2, 2]
        deactivated = await client.patch(
            f"/v1/providers/{leaving}", json={"active": False}, headers=tenant.headers
        )
        assert deactivated.status_code == 200

    async def test_the_overview(self, client: httpx.AsyncClient, make_tenant: TenantFactory):
        tenant = await make_tenant()
        busy, idle = await post_provider(client, tenant), await post_provider(client, tenant)
        await client.patch(
            f"/v1/providers/{idle}", json={"panel_capacity": 5}, headers=tenant.headers
        )
        assert (
            await assign(client, tenant, await post_patient(client, tenant), busy)
        ).status_code == 200
        lonely = await post_patient(client, tenant)
        r = await client.post(
            f"/v1/patients/{lonely}/care-team/members",
            json={"provider_id": idle},
            headers=tenant.headers,
        )
        assert r.status_code == 201, r.text
        report = (await client.get("/v1/reports/panels", headers=tenant.headers)).json()
        sizes = {p["provider_id"]: (p["panel_size"], p["panel_capacity"]) for p in report["items"]}
        assert sizes == {busy: (1, None), idle: (0, 5)}
        assert report["patients_without_primary"] == 1
        # Another organization sees only its own.
        other = await make_tenant()
        theirs = (await client.get("/v1/reports/panels", headers=other.headers)).json()
        assert theirs == {"items": [], "patients_without_primary": 0}


class TestInstants:
    @pytest.mark.parametrize(
        "as_of",
        [
            "2030-01-01T00:00:00.123456789Z",  # nanoseconds: dropped past the microsecond
            "2030-01-01t00:00:00z",  # RFC 3339 allows lower case
            "2030-01-01T01:00:00.5+01:00",
        ],
    )
    async def test_every_rfc_3339_form_is_an_instant(
        self, client: httpx.AsyncClient, tenant: Tenant, as_of: str
    ):
        patient = await post_patient(client, tenant)
        provider = await post_provider(client, tenant)
        url = f"/v1/patients/{patient}/care-team"
        await client.put(f"{url}/primary", json={"provider_id": provider}, headers=tenant.headers)
        r = await client.get(url, params={"as_of": as_of}, headers=tenant.headers)
        assert r.status_code == 200, r.text
        assert r.json()["primary_provider_id"] == provider

    async def test_a_leap_second_is_the_next_minutes_first_second(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """RFC 3339 allows second 60 (a leap second); it was refused with 422."""
        patient = await post_patient(client, tenant)
        url = f"/v1/patients/{patient}/care-team"
        for leap in ("2016-12-31T23:59:60Z", "2016-12-31T15:59:60.5-08:00"):
            r = await client.get(url, params={"as_of": leap}, headers=tenant.headers)
            assert r.status_code == 200, (leap, r.text)
        assert parse_instant("2016-12-31T23:59:60.5Z") == datetime.datetime(
            2017, 1, 1, 0, 0, 0, 500000, tzinfo=datetime.UTC
        )
        with pytest.raises(ValueError, match="23:59:60Z"):
            parse_instant("2016-12-31T12:59:60Z")

    def test_digits_past_the_microsecond_are_dropped(self):
        assert parse_instant("2026-12-06T21:14:05.856603683Z") == datetime.datetime(
            2026, 12, 6, 21, 14, 5, 856603, tzinfo=datetime.UTC
        )
        assert parse_instant("2026-12-06t21:14:05z") == datetime.datetime(
            2026, 12, 6, 21, 14, 5, tzinfo=datetime.UTC
        )


class TestBadInput:
    @pytest.mark.parametrize(
        "as_of",
        [
            "yesterday",
            "2025-01-01",
            "2025-01-01T00:00:00",
            "2025-13-01T00:00:00Z",
            "0",
            "",
            "9999-12-31T23:59:59-01:00",  # past the year 9999 in UTC: was a 500
            "2026-01-01T00:00:00+00:60",  # an offset past :59 was read as +01:00
            "2026-01-01T00:00:00-24:00",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:60:00Z",
        ],
    )
    async def test_an_as_of_that_is_not_an_instant(
        self, client: httpx.AsyncClient, tenant: Tenant, as_of: str
    ):
        patient = await post_patient(client, tenant)
        provider = await post_provider(client, tenant)
        for url in (
            f"/v1/patients/{patient}/care-team",
            f"/v1/providers/{provider}/patients",
        ):
            r = await client.get(url, params={"as_of": as_of}, headers=tenant.headers)
            assert r.status_code == 422, (url, as_of, r.text)
            assert r.json()["errors"][0]["field"] == "as_of"

    async def test_a_plus_sent_unencoded_is_explained(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """A `+` left unencoded in a URL arrives as a space: the 422 said nothing of it."""
        patient = await post_patient(client, tenant)
        url = f"/v1/patients/{patient}/care-team?as_of=2026-01-01T10:00:00+01:00"
        r = await client.get(url, headers=tenant.headers)
        assert r.status_code == 422
        assert "%2B" in r.json()["errors"][0]["detail"]

    @pytest.mark.parametrize(
        "case",
        [
            ("PUT", "primary", {"reason": "because"}, "reason"),
            ("POST", "members", {"reason": "PATIENT_REQUEST"}, "reason"),
            ("PUT", "primary", {"reason": None}, "reason"),
            ("PUT", "primary", {"note": "x" * 501}, "note"),
            ("POST", "members", {"note": 5}, "note"),
        ],
    )
    async def test_an_unknown_reason_or_a_bad_note_writes_nothing(
        self,
        client: httpx.AsyncClient,
        tenant: Tenant,
        database: Database,
        case: tuple[str, str, dict[str, object], str],
    ):
        method, suffix, body, field = case
        patient = await post_patient(client, tenant)
        provider = await post_provider(client, tenant)
        before = await written(database, tenant)
        r = await client.request(
            method,
            f"/v1/patients/{patient}/care-team/{suffix}",
            json={"provider_id": provider, **body},
            headers=tenant.headers,
        )
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == field
        assert await written(database, tenant) == before

    async def test_a_bad_removal_or_transfer_writes_nothing(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        patient = await post_patient(client, tenant)
        provider, other = await post_provider(client, tenant), await post_provider(client, tenant)
        assert (await assign(client, tenant, patient, provider)).status_code == 200
        before = await written(database, tenant)
        removal = await client.request(
            "DELETE",
            f"/v1/patients/{patient}/care-team/members/{provider}",
            json={"reason": "gone"},
            headers=tenant.headers,
        )
        assert removal.status_code == 422
        for body in (
            {"to_provider_id": other},  # a transfer must say why
            {"to_provider_id": other, "reason": "other", "previous_provider": "keep"},
            {"to_provider_id": other, "reason": "other", "dry_run": "no"},
            {"to_provider_id": provider, "reason": "other"},  # to itself
        ):
            r = await client.post(
                f"/v1/providers/{provider}/panel/transfer", json=body, headers=tenant.headers
            )
            assert r.status_code == 422, (body, r.text)
        assert await written(database, tenant) == before

    @pytest.mark.parametrize("capacity", [-1, 1.5, "10", True, 2**63])
    async def test_a_bad_capacity_writes_nothing(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database, capacity: object
    ):
        provider = await post_provider(client, tenant)
        before = await written(database, tenant)
        r = await client.patch(
            f"/v1/providers/{provider}", json={"panel_capacity": capacity}, headers=tenant.headers
        )
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "panel_capacity"
        assert await written(database, tenant) == before

    async def test_a_capacity_is_a_json_integer_and_active_is_never_null(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """JSON Schema counts 3.0 as an integer; `active` may be absent, not null (the
        published schema says so: schemathesis found both)."""
        provider = await post_provider(client, tenant)
        url = f"/v1/providers/{provider}"
        r = await client.patch(url, json={"panel_capacity": 3.0}, headers=tenant.headers)
        assert r.status_code == 200 and r.json()["panel_capacity"] == 3
        r = await client.patch(url, json={"active": None}, headers=tenant.headers)
        assert r.status_code == 422
        schema = (await client.get("/openapi.json")).json()["components"]["schemas"]
        update = schema["ProviderUpdate"]
        assert update["properties"]["active"]["type"] == "boolean"
        assert update["minProperties"] == 1
        capacity = update["properties"]["panel_capacity"]["anyOf"][0]
        assert (capacity["type"], capacity["minimum"]) == ("integer", 0)

    @pytest.mark.parametrize(
        "params", [{"role": "chief"}, {"limit": 0}, {"limit": 201}, {"cursor": "!"}]
    )
    async def test_bad_panel_queries(
        self, client: httpx.AsyncClient, tenant: Tenant, params: dict[str, object]
    ):
        provider = await post_provider(client, tenant)
        r = await client.get(
            f"/v1/providers/{provider}/patients", params=params, headers=tenant.headers
        )
        assert r.status_code == 422, r.text


class TestTransfersPredictedAndOneAtATime:
    async def panel(self, client: httpx.AsyncClient, tenant: Tenant, size: int) -> str:
        provider = await post_provider(client, tenant)
        for _ in range(size):
            assert (
                await assign(client, tenant, await post_patient(client, tenant), provider)
            ).status_code == 200
        return provider

    @pytest.mark.parametrize(
        "case",
        ["inactive target", "unknown target", "unknown source", "no patients", "same", "full"],
    )
    async def test_a_dry_run_answers_what_the_run_answers(
        self, client: httpx.AsyncClient, tenant: Tenant, case: str
    ):
        """A dry run to an inactive provider answered 200 {moved: 3} where the run was
        409: both now go through the same checks, in the same order."""
        source = await self.panel(client, tenant, 0 if case == "no patients" else 3)
        target = await post_provider(client, tenant)
        if case == "inactive target":
            await client.patch(
                f"/v1/providers/{target}", json={"active": False}, headers=tenant.headers
            )
        if case == "full":
            await client.patch(
                f"/v1/providers/{target}", json={"panel_capacity": 0}, headers=tenant.headers
            )
        if case == "unknown target":
            target = str(uuid.uuid4())
        if case == "unknown source":
            source = str(uuid.uuid4())
        if case == "same":
            target = source
        url = f"/v1/providers/{source}/panel/transfer"
        body = {"to_provider_id": target, "reason": "provider_left"}
        dry = await client.post(url, json={**body, "dry_run": True}, headers=tenant.headers)
        run = await client.post(url, json={**body, "dry_run": False}, headers=tenant.headers)
        assert dry.status_code == run.status_code, (case, dry.text, run.text)
        if run.status_code == 200:
            assert {**dry.json(), "dry_run": False} == run.json(), case
        else:
            assert dry.json()["error"] == run.json()["error"], case
            assert dry.json()["errors"] if "errors" in run.json() else True

    async def test_opposite_transfers_at_once_move_each_patient_once(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        """X to Y and Y to X at once reported 700 and 900 moves and wrote up to nine
        primary_assigned events per patient: one transfer at a time per provider, the
        other refused with 409 transfer_in_progress (or run after it, as in series)."""
        x, y = await self.panel(client, tenant, 150), await self.panel(client, tenant, 150)
        answers = await asyncio.gather(
            *(
                client.post(
                    f"/v1/providers/{source}/panel/transfer",
                    json={"to_provider_id": target, "reason": "panel_rebalance"},
                    headers=tenant.headers,
                )
                for source, target in ((x, y), (y, x))
            )
        )
        statuses = sorted(a.status_code for a in answers)
        assert statuses in ([200, 200], [200, 409]), [a.text for a in answers]
        refused = [a for a in answers if a.status_code == 409]
        assert all(a.json()["error"] == "transfer_in_progress" for a in refused)
        moved = [a.json()["moved"] for a in answers if a.status_code == 200]
        assert moved in ([150], [150, 300], [300, 150]), moved
        most = await owner_count(
            database,
            "SELECT max(n) FROM (SELECT count(*) AS n FROM care_team_events "
            "WHERE organization_id = :o AND event_type = 'primary_assigned' "
            "AND reason = 'panel_rebalance' GROUP BY patient_id) AS per_patient",
            o=tenant.organization_id,
        )
        assert most == len(moved)  # once per transfer that ran, never more
        sizes = {
            p: (await client.get(f"/v1/providers/{p}", headers=tenant.headers)).json()["panel_size"]
            for p in (x, y)
        }
        assert sorted(sizes.values()) == [0, 300]  # as some serial order leaves them

    async def test_a_dry_run_while_a_transfer_of_either_provider_runs_is_409(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        source = await self.panel(client, tenant, 3)
        target = await post_provider(client, tenant)
        url = f"/v1/providers/{source}/panel/transfer"
        body = {"to_provider_id": target, "reason": "provider_left"}
        async with database.owner_engine.connect() as blocker:
            await blocker.execute(
                text("SELECT id FROM providers WHERE id = :id FOR UPDATE"), {"id": target}
            )
            running = asyncio.create_task(client.post(url, json=body, headers=tenant.headers))
            await wait_until_blocked(database)
            back = await client.post(
                f"/v1/providers/{target}/panel/transfer",
                json={"to_provider_id": source, "reason": "provider_left", "dry_run": True},
                headers=tenant.headers,
            )
            assert back.status_code == 409, back.text
            assert back.json()["error"] == "transfer_in_progress"
            assert back.headers["retry-after"] == "1"
            await blocker.rollback()
        assert (await running).status_code == 200
