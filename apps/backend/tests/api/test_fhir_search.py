"""FHIR R4 search, rule by rule (search.html): for each parameter, modifier and prefix the
CapabilityStatement declares, its meaning on data built for it. Every response goes
through `valid` (tests/api/test_fhir.py), which validates it.

The date rules are checked against `expected`, the specification's table (3.1.1.4.5)
written out again here, over targets with an open period, a closed one, and search
values at year, month, day, second and fraction precision around their edges."""

from __future__ import annotations

import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from src.db import Database
from src.scopes import ADMIN, FULL_ACCESS
from src.services.directory_service import DirectoryService
from src.services.fhir_search import PARAMETERS
from src.services.organization_service import OrganizationService
from tests.api.test_fhir import FHIR, fhir_get, ids, team_of, valid
from tests.helpers import Tenant, post_patient, post_provider

UTC = datetime.UTC


def when(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def expected(
    prefix: str,
    search: tuple[datetime.datetime, datetime.datetime],
    target: tuple[datetime.datetime, datetime.datetime | None],
) -> bool:
    """search.html 3.1.1.4.5's table, for a search range [s, e) and a target [lo, hi)
    (hi None: open)."""
    s, e = search
    lo, hi = target
    top = hi or datetime.datetime.max.replace(tzinfo=UTC)
    contains = lo >= s and top <= e
    return {
        "eq": contains,
        "ne": not contains,
        "gt": top > e,
        "lt": lo < s,
        "ge": top > e or contains,
        "le": lo < s or contains,
        "sa": lo >= e,
        "eb": top <= s,
    }[prefix]


def precisions(at: datetime.datetime) -> list[tuple[str, datetime.datetime, datetime.datetime]]:
    """Search values around `at`: (text, start, end) at each precision."""
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    year = month.replace(month=1)
    second = at.replace(microsecond=0)
    milli = at.replace(microsecond=at.microsecond // 1000 * 1000)
    next_month = (month + datetime.timedelta(days=32)).replace(day=1)
    return [
        (f"{at.year}", year, year.replace(year=at.year + 1)),
        (f"{at:%Y-%m}", month, next_month),
        (f"{at:%Y-%m-%d}", day, day + datetime.timedelta(days=1)),
        (
            f"{at:%Y-%m-%d}",  # the day before, and after
            day - datetime.timedelta(days=1),
            day,
        ),
        (second.isoformat().replace("+00:00", "Z"), second, second + datetime.timedelta(seconds=1)),
        (
            (second - datetime.timedelta(seconds=5)).isoformat().replace("+00:00", "+00:00"),
            second - datetime.timedelta(seconds=5),
            second - datetime.timedelta(seconds=4),
        ),
        (
            milli.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            milli,
            milli + datetime.timedelta(milliseconds=1),
        ),
    ]


def value_text(start: datetime.datetime, end: datetime.datetime) -> str:
    """The search value text of [start, end) (day, month or year from its length)."""
    length = end - start
    if length == datetime.timedelta(days=1):
        return f"{start:%Y-%m-%d}"
    if length >= datetime.timedelta(days=365):
        return f"{start.year}"
    if length >= datetime.timedelta(days=28):
        return f"{start:%Y-%m}"
    if length == datetime.timedelta(seconds=1):
        return start.isoformat().replace("+00:00", "Z")
    return start.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TestDates:
    async def test_every_prefix_at_every_precision_against_open_and_closed_teams(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        open_team, closed_team = [await post_patient(client, tenant) for _ in range(2)]
        provider = await post_provider(client, tenant)
        await team_of(client, tenant, open_team, provider)
        await team_of(client, tenant, closed_team, provider)
        await client.delete(
            f"/v1/patients/{closed_team}/care-team/members/{provider}", headers=tenant.headers
        )
        targets = {}
        for team in (open_team, closed_team):
            period = valid(await fhir_get(client, tenant, f"/CareTeam/{team}"))["period"]
            end = when(period["end"]) if "end" in period else None
            targets[team] = (when(period["start"]), end)
        assert targets[open_team][1] is None and targets[closed_team][1] is not None
        edges = [targets[open_team][0], targets[closed_team][0], targets[closed_team][1]]
        checked = 0
        for edge in edges:
            assert edge is not None
            for _, start, end in precisions(edge):
                text = value_text(start, end)
                for prefix in ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"):
                    bundle = valid(
                        await fhir_get(
                            client, tenant, "/CareTeam", date=prefix + text, _count="100"
                        )
                    )
                    want = sorted(
                        t for t, target in targets.items() if expected(prefix, (start, end), target)
                    )
                    assert sorted(ids(bundle)) == want, (prefix, text, targets)
                    checked += 1
        assert checked == 3 * 7 * 8

    async def test_a_range_is_two_parameters_and_both_hold(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient, provider = await post_patient(client, tenant), await post_provider(client, tenant)
        await team_of(client, tenant, patient, provider)
        today = datetime.datetime.now(UTC).date()
        year_ago, tomorrow = today - datetime.timedelta(days=365), today + datetime.timedelta(1)
        # Active through [a year ago, tomorrow]: started before its end, reaches past it.
        during = await client.get(
            f"{FHIR}/CareTeam?date=ge{year_ago}&date=le{tomorrow}", headers=tenant.headers
        )
        assert ids(valid(during)) == [patient]
        # Both must hold: a range wholly before the team began is empty.
        before = await client.get(
            f"{FHIR}/CareTeam?date=ge2001-01-01&date=le2001-12-31", headers=tenant.headers
        )
        assert ids(valid(before)) == []
        self_url = valid(during)["link"][0]["url"]
        assert parse_qs(urlsplit(self_url).query)["date"] == [f"ge{year_ago}", f"le{tomorrow}"]

    async def test_birthdate_at_year_month_and_day_with_prefixes(
        self, client: httpx.AsyncClient, tenant: Tenant, db: AsyncSession
    ):
        born = {
            d: await post_patient(client, tenant, dob=d)
            for d in ("1980-05-15", "1980-12-31", "1981-01-01")
        }
        # /v1 requires a birth date; records from before may have none (the service
        # takes None).
        undated = str(
            (
                await DirectoryService.create_patient(
                    db=db,
                    organization_id=tenant.organization_id,
                    first_name="No",
                    last_name="Date",
                    dob=None,
                )
            ).id
        )

        async def found(value: str) -> set[str]:
            bundle = valid(await fhir_get(client, tenant, "/Patient", birthdate=value))
            return {next(d for d, i in born.items() if i == x) for x in ids(bundle)}

        assert await found("1980") == {"1980-05-15", "1980-12-31"}
        assert await found("1980-05") == {"1980-05-15"}
        assert await found("eq1980-05-15") == {"1980-05-15"}
        assert await found("ge1980-06-01") == {"1980-12-31", "1981-01-01"}
        assert await found("gt1980") == {"1981-01-01"}
        assert await found("lt1980-12-31") == {"1980-05-15"}
        assert await found("le1980-12-31") == {"1980-05-15", "1980-12-31"}
        assert await found("ne1980") == {"1981-01-01"}
        assert await found("sa1980-05-15") == {"1980-12-31", "1981-01-01"}
        assert await found("eb1980-12-31") == {"1980-05-15"}
        assert await found("ap1980-05-16") >= {"1980-05-15"}
        assert await found("1980-05-15T00:00:00Z") == set()  # a second within the day
        missing = valid(await fhir_get(client, tenant, "/Patient", **{"birthdate:missing": "true"}))
        assert undated in ids(missing) and not set(born.values()) & set(ids(missing))

    @pytest.mark.parametrize(
        "value",
        ["2026-01-01T10:00", "2026-13", "2026-02-30", "x2026", "20260101", "2026-01-01T25:00Z",
         "0000", "2026-01-01T10:00:00.1234567Z"],
    )  # fmt: skip
    async def test_a_malformed_date_is_400(self, client: httpx.AsyncClient, tenant: Tenant, value):
        valid(await fhir_get(client, tenant, "/CareTeam", date=value), 400)

    async def test_a_datetime_with_an_offset_is_that_instant(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        patient, provider = await post_patient(client, tenant), await post_provider(client, tenant)
        await team_of(client, tenant, patient, provider)
        team = valid(await fhir_get(client, tenant, f"/CareTeam/{patient}"))
        start = when(team["period"]["start"])
        east = (start - datetime.timedelta(seconds=1)).astimezone(
            datetime.timezone(datetime.timedelta(hours=5, minutes=30))
        )
        text = east.replace(microsecond=0).isoformat()
        # Began after the second before it, written in +05:30.
        assert ids(valid(await fhir_get(client, tenant, "/CareTeam", date="sa" + text))) == [
            patient
        ]


class TestCommaIsOr:
    async def test_identifiers_names_ids_and_references(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        ana = await post_patient(
            client, tenant, first_name="Ana", identifiers=[{"system": "s", "value": "A"}]
        )
        bob = await post_patient(
            client, tenant, first_name="Bob", identifiers=[{"system": "s", "value": "B"}]
        )
        await post_patient(client, tenant, first_name="Cyd")
        both = {ana, bob}
        for params in (
            {"identifier": "s|A,s|B"},
            {"name": "ana,bob"},
            {"_id": f"{ana},{bob}"},
        ):
            assert set(ids(valid(await fhir_get(client, tenant, "/Patient", **params)))) == both
        first, second = await post_provider(client, tenant), await post_provider(client, tenant)
        await team_of(client, tenant, ana, first)
        await team_of(client, tenant, bob, second)
        for params in (
            {"patient": f"{ana},Patient/{bob}"},
            {"participant": f"Practitioner/{first},{second}"},
        ):
            assert set(ids(valid(await fhir_get(client, tenant, "/CareTeam", **params)))) == both

    async def test_practitioner_identifiers(self, client: httpx.AsyncClient, tenant: Tenant):
        one = await post_provider(client, tenant, npi="1234567893")
        two = await post_provider(client, tenant, npi="1245319599")
        bundle = valid(
            await fhir_get(client, tenant, "/Practitioner", identifier="1234567893,1245319599")
        )
        assert set(ids(bundle)) == {one, two}


class TestModifiers:
    async def test_not_missing_and_type(self, client: httpx.AsyncClient, tenant: Tenant):
        active, ended = await post_patient(client, tenant), await post_patient(client, tenant)
        provider = await post_provider(client, tenant)
        await team_of(client, tenant, active, provider)
        await team_of(client, tenant, ended, provider)
        await client.delete(
            f"/v1/patients/{ended}/care-team/members/{provider}", headers=tenant.headers
        )
        response = await fhir_get(client, tenant, "/CareTeam", **{"status:not": "active"})
        bundle = valid(response)
        assert ids(bundle) == [ended]
        assert "status%3Anot=active" in bundle["link"][0]["url"]
        every = valid(await fhir_get(client, tenant, "/CareTeam", **{"patient:missing": "false"}))
        assert set(ids(every)) == {active, ended}
        none = valid(await fhir_get(client, tenant, "/CareTeam", **{"patient:missing": "true"}))
        assert ids(none) == []
        typed = valid(await fhir_get(client, tenant, "/CareTeam", **{"subject:Patient": active}))
        assert ids(typed) == [active]
        group = valid(await fhir_get(client, tenant, "/CareTeam", **{"subject:Group": active}))
        assert ids(group) == []  # a Group is not a patient: no team has it as subject

    async def test_exact_and_contains(self, client: httpx.AsyncClient, tenant: Tenant):
        ana = await post_patient(client, tenant, first_name="Ana", last_name="Núñez")
        anabel = await post_patient(client, tenant, first_name="Anabel", last_name="Ortiz")
        exact = valid(await fhir_get(client, tenant, "/Patient", **{"name:exact": "Ana"}))
        assert ids(exact) == [ana]
        assert ids(valid(await fhir_get(client, tenant, "/Patient", **{"name:exact": "ana"}))) == []
        inside = valid(await fhir_get(client, tenant, "/Patient", **{"name:contains": "UNE"}))
        assert ids(inside) == [ana]  # nUÑEz, accents and case aside
        starts = valid(await fhir_get(client, tenant, "/Patient", name="ana"))
        assert set(ids(starts)) == {ana, anabel}

    @pytest.mark.parametrize(
        ("path", "name"),
        [
            ("/Patient", "identifier:of-type"),
            ("/Patient", "name:text"),
            ("/Patient", "identifier:in"),
            ("/CareTeam", "subject:identifier"),
            ("/CareTeam", "subject:Practitioner"),
            ("/CareTeam", "date:exact"),
            ("/Patient", "name:bogus"),
        ],
    )
    @pytest.mark.parametrize("prefer", ["", "handling=lenient"])
    async def test_an_unsupported_modifier_is_400_in_either_mode(
        self, client: httpx.AsyncClient, tenant: Tenant, path: str, name: str, prefer: str
    ):
        headers = {**tenant.headers, "Prefer": prefer}
        response = await client.get(FHIR + path, params={name: "x"}, headers=headers)
        outcome = valid(response, 400)
        assert outcome["issue"][0]["code"] in ("not-supported", "invalid")


class TestParameters:
    async def test_unknown_is_400_and_ignored_only_when_lenient(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        await post_patient(client, tenant)
        strict = valid(await fhir_get(client, tenant, "/Patient", nmae="x"), 400)
        assert "nmae" in strict["issue"][0]["diagnostics"]
        chained = valid(await fhir_get(client, tenant, "/CareTeam", **{"subject.name": "x"}), 400)
        assert "chained" in chained["issue"][0]["diagnostics"]
        lenient = await client.get(
            f"{FHIR}/Patient?nmae=x&family=Example",
            headers={**tenant.headers, "Prefer": "handling=lenient"},
        )
        self_url = valid(lenient)["link"][0]["url"]
        assert "family=Example" in self_url and "nmae" not in self_url

    async def test_family_given_general_practitioner_and_last_updated(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        ana = await post_patient(client, tenant, first_name="Ana", last_name="Lopez")
        bob = await post_patient(client, tenant, first_name="Lopez", last_name="Bob")
        provider = await post_provider(client, tenant)
        await team_of(client, tenant, ana, provider)
        assert ids(valid(await fhir_get(client, tenant, "/Patient", family="lop"))) == [ana]
        assert ids(valid(await fhir_get(client, tenant, "/Patient", given="lop"))) == [bob]
        gp = valid(
            await fhir_get(
                client, tenant, "/Patient", **{"general-practitioner": f"Practitioner/{provider}"}
            )
        )
        assert ids(gp) == [ana]
        no_gp = valid(
            await fhir_get(client, tenant, "/Patient", **{"general-practitioner:missing": "true"})
        )
        assert ids(no_gp) == [bob]
        read = valid(await fhir_get(client, tenant, f"/Patient/{ana}"))
        updated = when(read["meta"]["lastUpdated"])
        second = updated.replace(microsecond=0).isoformat().replace("+00:00", "Z")
        at = valid(await fhir_get(client, tenant, "/Patient", _lastUpdated=second, _id=ana))
        assert ids(at) == [ana]
        later = valid(await fhir_get(client, tenant, "/Patient", _lastUpdated="gt" + second))
        assert ana not in ids(later)

    async def test_every_declared_parameter_is_served_and_nothing_else(
        self, client: httpx.AsyncClient, tenant: Tenant, database: Database
    ):
        async with AsyncSession(database.owner_engine) as owner:
            admin = await OrganizationService.create_api_key(
                db=owner, organization_id=tenant.organization_id, scopes=[FULL_ACCESS, ADMIN]
            )
        tenant = Tenant(tenant.organization_id, admin.id, admin.key)  # AuditEvent's too
        statement = valid(await fhir_get(client, None, "/metadata"))
        declared = {
            r["type"]: {p["name"]: p for p in r.get("searchParam", [])}
            for r in statement["rest"][0]["resource"]
        }
        for kind, params in PARAMETERS.items():
            assert set(declared[kind]) == set(params), kind
            for name, param in params.items():
                assert declared[kind][name]["definition"] == param.definition
                assert declared[kind][name]["type"] == param.type
                value = {
                    "token": min(param.codes) if param.codes else "x",
                    "string": "x",
                    "reference": "00000000-0000-0000-0000-000000000000",
                    "date": "2026",
                }[param.type]
                valid(await fhir_get(client, tenant, f"/{kind}", **{name: value}))
                valid(await fhir_get(client, tenant, f"/{kind}", **{f"{name}:missing": "true"}))
        assert set(declared) == {*PARAMETERS, "Organization"}
        for kind, resource in ((r["type"], r) for r in statement["rest"][0]["resource"]):
            for include in resource.get("searchInclude", []):
                valid(await fhir_get(client, tenant, f"/{kind}", _include=include))
            for include in resource.get("searchRevInclude", []):
                valid(await fhir_get(client, tenant, f"/{kind}", _revinclude=include))


class TestLimits:
    @pytest.mark.parametrize(
        "query",
        ["date=ap0001", "date=ap9998-12-31", "_lastUpdated=ap9998"],
    )
    async def test_ap_at_the_ends_of_the_calendar_is_answered(
        self, client: httpx.AsyncClient, tenant: Tenant, query: str
    ):
        """`ap` near year 1 or 9999 widened past the calendar: a 500, not FHIR."""
        r = await client.get(f"{FHIR}/CareTeam?{query}", headers=tenant.headers)
        valid(r)

    async def test_too_many_parameters_or_values_and_odd_forms_are_400(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        many = "&".join(["family=a"] * 51)
        valid(await client.get(f"{FHIR}/Patient?{many}", headers=tenant.headers), 400)
        values = ",".join(["a"] * 101)
        valid(await fhir_get(client, tenant, "/Patient", family=values), 400)
        valid(await fhir_get(client, tenant, "/Patient", **{"name:": "a"}), 400)
        valid(await fhir_get(client, tenant, "/Patient", _sort="family,-family"), 400)


class TestTokens:
    async def test_the_four_forms(self, client: httpx.AsyncClient, tenant: Tenant):
        with_system = await post_patient(
            client, tenant, identifiers=[{"system": "urn:mrn", "value": "77"}]
        )
        other_system = await post_patient(
            client, tenant, identifiers=[{"system": "urn:other", "value": "77"}]
        )

        async def found(value: str) -> set[str]:
            return set(ids(valid(await fhir_get(client, tenant, "/Patient", identifier=value))))

        assert await found("77") == {with_system, other_system}
        assert await found("urn:mrn|77") == {with_system}
        assert await found("|77") == set()  # no system: ours all have one
        assert await found("urn:mrn|") == {with_system}
        valid(await fhir_get(client, tenant, "/Patient", identifier="|"), 400)
        valid(await fhir_get(client, tenant, "/Patient", identifier="a|b|c"), 400)

    async def test_npi_without_a_system_and_booleans_with_theirs(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        npi = await post_provider(client, tenant, npi="1234567893")
        no_system = await fhir_get(client, tenant, "/Practitioner", identifier="|1234567893")
        assert ids(valid(no_system)) == []
        special = "http://hl7.org/fhir/special-values|true"
        active = valid(await fhir_get(client, tenant, "/Practitioner", active=special))
        assert npi in ids(active)
        valid(await fhir_get(client, tenant, "/Practitioner", active="yes"), 400)


class TestResults:
    async def test_count_summary_total_elements_and_sort(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        made = [
            await post_patient(client, tenant, last_name=name) for name in ("Cole", "Abel", "Bard")
        ]
        count = valid(await fhir_get(client, tenant, "/Patient", _summary="count"))
        assert count["total"] == 3 and "entry" not in count
        zero = valid(await fhir_get(client, tenant, "/Patient", _count="0"))
        assert zero["total"] == 3 and "entry" not in zero
        accurate = valid(await fhir_get(client, tenant, "/Patient", _total="accurate", _count="1"))
        assert accurate["total"] == 3 and len(accurate["entry"]) == 1
        assert "total" not in valid(await fhir_get(client, tenant, "/Patient", _total="none"))
        subset = valid(await fhir_get(client, tenant, "/Patient", _elements="name"))
        for entry in subset["entry"]:
            resource = entry["resource"]
            assert set(resource) <= {"resourceType", "id", "meta", "name"}
            assert resource["meta"]["tag"][0]["code"] == "SUBSETTED"
        summary = valid(await fhir_get(client, tenant, "/Patient", _summary="true"))
        assert all("generalPractitioner" not in e["resource"] for e in summary["entry"])
        by_family = valid(await fhir_get(client, tenant, "/Patient", _sort="family"))
        assert ids(by_family) == [made[1], made[2], made[0]]
        backwards = valid(await fhir_get(client, tenant, "/Patient", _sort="-family", _count="2"))
        assert ids(backwards) == [made[0], made[2]]
        nxt = next(link["url"] for link in backwards["link"] if link["relation"] == "next")
        rest = valid(await client.get(nxt, headers=tenant.headers))
        assert ids(rest) == [made[1]]
        valid(await fhir_get(client, tenant, "/Patient", _sort="identifier"), 400)
        valid(await fhir_get(client, tenant, "/Patient", _elements="nonsense"), 400)
        valid(await fhir_get(client, tenant, "/Patient", _summary="text"), 400)

    async def test_a_sorted_cursor_whose_resource_changed_is_refused(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        first = await post_patient(client, tenant, last_name="Aa")
        await post_patient(client, tenant, last_name="Bb")
        page = valid(await fhir_get(client, tenant, "/Patient", _sort="family", _count="1"))
        nxt = next(link["url"] for link in page["link"] if link["relation"] == "next")
        changed = await client.patch(
            f"/v1/patients/{first}", json={"last_name": "Zz"}, headers=tenant.headers
        )
        assert changed.status_code == 200, changed.text
        refused = valid(await client.get(nxt, headers=tenant.headers), 400)
        assert "start the search again" in refused["issue"][0]["diagnostics"]

    async def test_a_resource_moving_behind_a_sorted_cursor_is_refused_never_skipped(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """Adams, Baker | Clark, Davis | Evans, Fox: Evans renamed Aaron after the first
        page moved behind the cursor, and the walk ended 200 without it."""
        ids_ = {
            name: await post_patient(client, tenant, last_name=name)
            for name in ("Adams", "Baker", "Clark", "Davis", "Evans", "Fox")
        }
        page = valid(await fhir_get(client, tenant, "/Patient", _sort="family", _count="2"))
        nxt = next(link["url"] for link in page["link"] if link["relation"] == "next")
        # Unchanged, the next page reads.
        second = valid(await client.get(nxt, headers=tenant.headers))
        assert [e["resource"]["name"][0]["family"] for e in second["entry"]] == ["Clark", "Davis"]
        moved = await client.patch(
            f"/v1/patients/{ids_['Evans']}", json={"last_name": "Aaron"}, headers=tenant.headers
        )
        assert moved.status_code == 200, moved.text
        refused = valid(await client.get(nxt, headers=tenant.headers), 400)
        assert "start the search again" in refused["issue"][0]["diagnostics"]
        # Sorted by id alone, nothing moves: the walk goes on through changes.
        by_id = valid(await fhir_get(client, tenant, "/Patient", _count="2"))
        await client.patch(
            f"/v1/patients/{ids_['Fox']}", json={"last_name": "Foxe"}, headers=tenant.headers
        )
        walked = ids(by_id)
        url = next(link["url"] for link in by_id["link"] if link["relation"] == "next")
        while url:
            bundle = valid(await client.get(url, headers=tenant.headers))
            walked += ids(bundle)
            url = next((lk["url"] for lk in bundle["link"] if lk["relation"] == "next"), None)
        assert sorted(walked) == sorted(ids_.values())

    async def test_a_lenient_searchs_next_link_reads(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """Page 2 of a lenient search that ignored something was 400 "not a cursor this
        server gave": the cursor was keyed by every parameter, the link by the applied."""
        for _ in range(3):
            await post_patient(client, tenant)
        lenient = {**tenant.headers, "Prefer": "handling=lenient"}
        first = await client.get(
            f"{FHIR}/Patient", params={"_count": "2", "foo": "x"}, headers=lenient
        )
        nxt = next(link["url"] for link in valid(first)["link"] if link["relation"] == "next")
        assert "foo" not in nxt
        assert len(ids(valid(await client.get(nxt, headers=lenient)))) == 1

    async def test_a_team_by_id_is_the_same_whichever_statement_reads_it(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        """A read, or a search by patient or id alone, is answered by one database function
        (careteam_fhir_care_teams); every other search by the TEAMS statement: both must
        give the same resources."""
        provider, other = await post_provider(client, tenant), await post_provider(client, tenant)
        patients = [await post_patient(client, tenant) for _ in range(3)]
        for patient in patients:
            await team_of(client, tenant, patient, provider, other)
        await team_of(client, tenant, patients[0], other)  # a closed period, a new primary
        lone = await post_patient(client, tenant)  # no team: no CareTeam
        generic = valid(
            await fhir_get(client, tenant, "/CareTeam", participant=provider, _sort="_id")
        )
        by_id = {e["resource"]["id"]: e["resource"] for e in generic["entry"]}
        assert set(by_id) == set(patients)
        for patient in patients:
            assert valid(await fhir_get(client, tenant, f"/CareTeam/{patient}")) == by_id[patient]
        several = valid(
            await fhir_get(client, tenant, "/CareTeam", patient=",".join([*patients, lone]))
        )
        assert [e["resource"] for e in several["entry"]] == [by_id[p] for p in sorted(patients)]
        valid(await fhir_get(client, tenant, f"/CareTeam/{lone}"), 404)

    async def test_revinclude_and_include(self, client: httpx.AsyncClient, tenant: Tenant):
        patient, provider = await post_patient(client, tenant), await post_provider(client, tenant)
        await team_of(client, tenant, patient, provider)
        with_teams = valid(
            await fhir_get(client, tenant, "/Patient", _id=patient, _revinclude="CareTeam:patient")
        )
        assert ids(with_teams, "include") == [patient]  # the CareTeam's id is the patient's
        assert with_teams["entry"][1]["resource"]["resourceType"] == "CareTeam"
        teams_of = valid(
            await fhir_get(
                client, tenant, "/Practitioner", _id=provider, _revinclude="CareTeam:participant"
            )
        )
        assert [e["resource"]["resourceType"] for e in teams_of["entry"]] == [
            "Practitioner",
            "CareTeam",
        ]
        included = valid(
            await fhir_get(
                client,
                tenant,
                "/CareTeam",
                patient=patient,
                _include="CareTeam:participant:Practitioner",
            )
        )
        assert ids(included, "include") == [provider]

    async def test_an_empty_searchset_has_no_entry_array(
        self, client: httpx.AsyncClient, tenant: Tenant
    ):
        response = await fhir_get(client, tenant, "/Patient", name="nobody")
        assert "entry" not in valid(response)


class TestStrings:
    async def test_case_and_accents_do_not_matter(self, client: httpx.AsyncClient, tenant: Tenant):
        nunez = await post_patient(client, tenant, last_name="Núñez")
        for value in ("nunez", "NÚÑEZ", "Nun", "nu\u0301n"):
            assert ids(valid(await fhir_get(client, tenant, "/Patient", name=value))) == [nunez]


def _param_values(url: str) -> dict[str, Any]:
    return parse_qs(urlsplit(url).query)
