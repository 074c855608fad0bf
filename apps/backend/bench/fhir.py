"""Benchmark: the FHIR reads and searches of care teams against the /v1 reads of the same
teams (issue 16: the read, target at least 0.7 of /v1's throughput; issue 25: the search
by patient, the same target, and a whole panel paged through by date and participant).

Usage (from apps/backend):

    uv run python bench/fhir.py [--seconds 10] [--clients 8] [--patients 2000]
                                [--panel 2000] [--walks 3]

It starts a throwaway embedded PostgreSQL (or uses --server-url's server) and fills one
organization with:

- --patients patients whose teams changed three times (a primary and two secondaries
  each among 50 providers, with ended periods: what a FHIR CareTeam lists);
- a panel: --panel more patients whose primary was one of those providers and is now
  one more provider, the panel's (the previous primary stays as secondary), so the
  organization holds both and a search by the panel's provider must leave the others
  out.

Then it drives the application in this process (httpx over ASGI: no sockets, so the
HTTP server's own fixed cost, the same for all, is left out and the ratios are, if
anything, stricter), alternately twice:

- with --clients concurrent clients for --seconds each, on random patients of the
  first group: `GET /v1/patients/{id}/care-team` (the baseline),
  `GET /fhir/R4/CareTeam/{id}` and `GET /fhir/R4/CareTeam?patient={id}` (a searchset
  of one);
- one client walking the whole panel page by page (100 a page; `next` links or
  cursors), --walks times each: `GET /v1/providers/{id}/patients?limit=100` (the
  baseline), `GET /fhir/R4/CareTeam?participant=Practitioner/{id}&date=ge{D1}&date=le{D2}`
  (D1 30 days before the run, D2 30 days after: every seeded team's period, which
  starts at seed time and is open, lies in it), `GET /fhir/R4/Patient?
  general-practitioner=Practitioner/{id}`, and the statement /v1 runs, on a plain
  asyncpg connection (the floor). Every walk must return the panel's patients exactly,
  or the run fails.

Ratios: FHIR reads (searches) per second over /v1 reads per second, and FHIR rows per
second over /v1 rows per second for the panel, per round. Last, EXPLAIN (ANALYZE,
BUFFERS) of every statement the searches send, as the service sends them (in its
transaction, under the organization's row-level security), with PostgreSQL's own
choice of plan (a custom plan, as a prepared statement's first five runs get) and with
the generic plan it may switch to after them.

Prints one JSON object (progress on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import httpx
from common import log, throwaway_database
from load import drive, organization_with
from sqlalchemy.ext.asyncio import AsyncSession

from src.api.app import create_app
from src.config import get_settings
from src.db import open_database
from src.migration_runner import upgrade
from src.services import fhir_search, panel_service
from src.services.organization_service import OrganizationService

PROVIDERS = 50
PAGE = 100
ASSIGN = "SELECT careteam_assign_primary($1, $2, $3, 'seed', 'other', NULL)"


async def populate(url: str, patients_n: int, panel_n: int) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        org, patients, providers = await organization_with(conn, PROVIDERS, patients_n)
        for round_ in range(3):  # each round a new primary; the previous stays secondary
            await conn.execute(
                """
                SELECT careteam_assign_primary($1, p.id,
                    ($3::uuid[])[1 + (p.n * 7 + $2 * 13) % $4], 'seed', 'other', NULL)
                FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM patients) AS p
                """,
                org,
                round_,
                providers,
                PROVIDERS,
            )
        panel_provider = await conn.fetchval(
            "INSERT INTO providers (organization_id, first_name, last_name) "
            "VALUES ($1, 'Panel', 'Provider') RETURNING id",
            org,
        )
        panel = [
            r[0]
            for r in await conn.fetch(
                "INSERT INTO patients (organization_id) SELECT $1 FROM generate_series(1, $2) "
                "RETURNING id",
                org,
                panel_n,
            )
        ]
        # A primary among the others first, then the panel's provider (the first stays
        # as secondary): two changes, three periods each.
        await conn.executemany(
            ASSIGN, [(org, p, providers[n % PROVIDERS]) for n, p in enumerate(panel)]
        )
        await conn.executemany(ASSIGN, [(org, p, panel_provider) for p in panel])
        await conn.execute("VACUUM ANALYZE")
        return {
            "org": org,
            "patients": [str(p) for p in patients],
            "panel_provider": str(panel_provider),
            "panel": {str(p) for p in panel},
        }
    finally:
        await conn.close()


# --- walking a panel -----------------------------------------------------------------------


Page = Callable[[str], Awaitable[tuple[list[str], str | None]]]


async def walk(first: str, page: Page) -> tuple[float, int, list[str]]:
    """Every page from `first` on: (ms, pages, the ids in order)."""
    started = time.perf_counter()
    ids: list[str] = []
    pages = 0
    url: str | None = first
    while url is not None:
        found, url = await page(url)
        ids.extend(found)
        pages += 1
    return (time.perf_counter() - started) * 1000, pages, ids


def check_panel(name: str, ids: list[str], panel: set[str]) -> None:
    """Fail loudly unless the walk returned the panel's patients, each once."""
    if len(ids) != len(panel) or set(ids) != panel:
        raise SystemExit(
            f"{name}: the walk returned {len(ids)} resources ({len(set(ids) & panel)} of "
            f"the panel's {len(panel)}): the search does not match the seeded panel"
        )


async def measure_walks(
    name: str,
    walks: int,
    run_walk: Callable[[], Awaitable[tuple[float, int, list[str]]]],
    panel: set[str],
) -> dict[str, Any]:
    await run_walk()  # warm
    times: list[float] = []
    pages = 0
    for _ in range(walks):
        ms, pages, ids = await run_walk()
        check_panel(name, ids, panel)
        times.append(ms)
    median = statistics.median(times)
    return {
        "walk_ms": round(median, 1),
        "walks_ms": [round(t, 1) for t in times],
        "pages": pages,
        "rows": len(panel),
        "rows_per_s": round(len(panel) / (median / 1000), 1),
        "ms_per_page": round(median / pages, 2),
    }


# --- plans ---------------------------------------------------------------------------------


class Explaining:
    """An asyncpg connection that, before each statement read through it, runs it under
    EXPLAIN (ANALYZE, BUFFERS) with the same arguments, in the same transaction: as
    PostgreSQL plans it with these arguments ("chosen": a custom plan, as on a prepared
    statement's first five runs), then with the generic plan it may switch to after
    them (PREPARE, plan_cache_mode force_generic_plan, EXECUTE with the arguments)."""

    def __init__(self, driver: Any, plans: list[dict[str, Any]]) -> None:
        self._driver, self._plans = driver, plans

    def __getattr__(self, name: str) -> Any:
        return getattr(self._driver, name)

    async def _explain(self, statement: str, args: tuple[Any, ...]) -> None:
        entry: dict[str, Any] = {"statement": " ".join(statement.split())}
        explain = "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) "
        rows = await self._driver.fetch(explain + statement, *args)
        entry["chosen"] = [r[0] for r in rows]
        await self._driver.execute(f"PREPARE bench_generic AS {statement}")
        try:
            await self._driver.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            values = ", ".join(literal(a) for a in args)
            rows = await self._driver.fetch(f"{explain} EXECUTE bench_generic({values})")
            entry["generic"] = [r[0] for r in rows]
        finally:
            await self._driver.execute("SET LOCAL plan_cache_mode = auto")
            await self._driver.execute("DEALLOCATE bench_generic")
        self._plans.append(entry)

    async def fetch(self, statement: str, *args: Any) -> Any:
        await self._explain(statement, args)
        return await self._driver.fetch(statement, *args)

    async def fetchrow(self, statement: str, *args: Any) -> Any:
        await self._explain(statement, args)
        return await self._driver.fetchrow(statement, *args)

    async def fetchval(self, statement: str, *args: Any) -> Any:
        await self._explain(statement, args)
        return await self._driver.fetchval(statement, *args)


def literal(value: Any) -> str:
    """An argument as an SQL literal (its type is the prepared statement's)."""
    if value is None:
        return "NULL"
    if isinstance(value, list | tuple):
        return literal("{" + ",".join(str(v) for v in value) + "}")
    if isinstance(value, datetime.datetime):
        value = value.isoformat()
    return "'" + str(value).replace("'", "''") + "'"


@contextmanager
def explaining(plans: list[dict[str, Any]]) -> Iterator[None]:
    """The FHIR searches and the /v1 panel run their statements through Explaining."""
    modules = (fhir_search, panel_service)
    originals = [getattr(m, "run_transaction") for m in modules]  # noqa: B009

    def wrapped(original: Any) -> Any:
        async def run_transaction(db: Any, *, work: Any, **kwargs: Any) -> Any:
            async def explained(driver: Any) -> Any:
                return await work(Explaining(driver, plans))

            return await original(db, work=explained, **kwargs)

        return run_transaction

    try:
        for module, original in zip(modules, originals, strict=True):
            setattr(module, "run_transaction", wrapped(original))  # noqa: B010
        yield
    finally:
        for module, original in zip(modules, originals, strict=True):
            setattr(module, "run_transaction", original)  # noqa: B010


# --- the run -------------------------------------------------------------------------------

Get = Callable[[str], Awaitable[Any]]
Walker = Callable[[], Awaitable[tuple[float, int, list[str]]]]


def readers(get: Get, patients: list[str]) -> dict[str, Callable[[random.Random], Any]]:
    def reader(path: str) -> Callable[[random.Random], Any]:
        async def read(rng: random.Random) -> None:
            await get(path.format(rng.choice(patients)))

        return read

    return {
        "v1_care_team": reader("/v1/patients/{}/care-team"),
        "fhir_care_team": reader("/fhir/R4/CareTeam/{}"),
        "fhir_care_team_search": reader("/fhir/R4/CareTeam?patient={}"),
    }


def panel_urls(provider: str, d1: datetime.date, d2: datetime.date) -> dict[str, str]:
    """The first page of each listing of the panel."""
    practitioner = f"Practitioner/{provider}"
    return {
        "v1_panel": f"/v1/providers/{provider}/patients?limit={PAGE}",
        "fhir_care_team_panel": (
            f"/fhir/R4/CareTeam?participant={practitioner}&date=ge{d1}&date=le{d2}&_count={PAGE}"
        ),
        "fhir_patient_panel": f"/fhir/R4/Patient?general-practitioner={practitioner}&_count={PAGE}",
    }


def fhir_pages(get: Get) -> Page:
    async def page(url: str) -> tuple[list[str], str | None]:
        bundle = await get(url)
        ids = [e["resource"]["id"] for e in bundle.get("entry", [])]
        after = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        return ids, after[0] if after else None

    return page


def walkers(
    get: Get, urls: dict[str, str], org: uuid.UUID, provider: str, statement: Any
) -> dict[str, Walker]:
    """Each way of listing the panel, as a walk through all its pages."""
    fhir_page = fhir_pages(get)

    async def v1_page(url: str) -> tuple[list[str], str | None]:
        body = await get(url)
        cursor = body["next_cursor"]
        following = None if cursor is None else f"{urls['v1_panel']}&cursor={cursor}"
        return [e["patient_id"] for e in body["items"]], following

    async def sql_page(after: str) -> tuple[list[str], str | None]:
        rows = await statement.fetch(
            org, uuid.UUID(provider), None, "primary", uuid.UUID(after) if after else None, PAGE
        )
        ids = [str(r["patient_id"]) for r in rows]
        return ids, (ids[-1] if len(ids) == PAGE else None)

    return {
        "v1_panel": lambda: walk(urls["v1_panel"], v1_page),
        "fhir_care_team_panel": lambda: walk(urls["fhir_care_team_panel"], fhir_page),
        "fhir_patient_panel": lambda: walk(urls["fhir_patient_panel"], fhir_page),
        "sql_panel": lambda: walk("", sql_page),
    }


PANEL_MEASURES = ("fhir_care_team_panel", "fhir_patient_panel", "sql_panel")


async def measure_round(
    args: argparse.Namespace,
    round_: int,
    reads: dict[str, Callable[[random.Random], Any]],
    walks: dict[str, Walker],
    panel: set[str],
) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name, read in reads.items():
        log(f"{name} (round {round_ + 1} of 2): {args.clients} clients")
        await drive(args.clients, 1.0, read)  # warm
        figures[name] = await drive(args.clients, args.seconds, read)
    for name, walker in walks.items():
        log(f"{name} (round {round_ + 1} of 2): {args.walks} walks of the panel")
        figures[name] = await measure_walks(name, args.walks, walker, panel)
    v1 = figures["v1_care_team"]["ops_per_s"]
    figures["ratio"] = round(figures["fhir_care_team"]["ops_per_s"] / v1, 2)
    figures["search_ratio"] = round(figures["fhir_care_team_search"]["ops_per_s"] / v1, 2)
    for name in PANEL_MEASURES:
        figures[f"{name}_ratio"] = round(
            figures[name]["rows_per_s"] / figures["v1_panel"]["rows_per_s"], 2
        )
    return figures


async def explain(get: Get, paths: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    """The plans of every statement each request's search sends."""
    plans: dict[str, list[dict[str, Any]]] = {}
    for name, path in paths.items():
        plans[name] = []
        with explaining(plans[name]):
            await get(path)
    return plans


async def run(args: argparse.Namespace) -> dict[str, Any]:
    today = datetime.datetime.now(datetime.UTC).date()
    d1, d2 = today - datetime.timedelta(days=30), today + datetime.timedelta(days=30)
    async with throwaway_database("fhir", args.server_url) as (url, _):
        database = open_database(get_settings(), url)
        sql_conn = await asyncpg.connect(url)
        try:
            log("migrating a new database to head")
            await upgrade(database.owner_engine)
            log(
                f"populating {args.patients:,} patients, three changes each, and a panel "
                f"of {args.panel:,}, two changes each"
            )
            seeded = await populate(url, args.patients, args.panel)
            org, patients = seeded["org"], seeded["patients"]
            async with AsyncSession(database.owner_engine) as owner:
                issued = await OrganizationService.create_api_key(db=owner, organization_id=org)
            headers = {"Authorization": f"Bearer {issued.key}"}
            transport = httpx.ASGITransport(app=create_app(database))
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

                async def get(path: str) -> Any:
                    response = await client.get(path, headers=headers)
                    if response.status_code != 200:
                        raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
                    return response.json()

                by_patient = f"/fhir/R4/CareTeam?patient={patients[0]}"
                found = await get(by_patient)
                if [e["resource"]["id"] for e in found.get("entry", [])] != [patients[0]]:
                    raise SystemExit(f"CareTeam?patient= did not find the one team: {found}")
                urls = panel_urls(seeded["panel_provider"], d1, d2)
                statement = await sql_conn.prepare(panel_service.PANEL_PAGE.text)
                walks = walkers(get, urls, org, seeded["panel_provider"], statement)
                rounds = [
                    await measure_round(args, r, readers(get, patients), walks, seeded["panel"])
                    for r in range(2)
                ]
                log("EXPLAIN (ANALYZE, BUFFERS) of the searches' statements")
                page = fhir_pages(get)
                second = {
                    name: str((await page(urls[name]))[1])
                    for name in ("fhir_care_team_panel", "fhir_patient_panel")
                }
                cursor = (await get(urls["v1_panel"]))["next_cursor"]
                plans = await explain(
                    get,
                    {
                        "care_team_search_by_patient": by_patient,
                        "care_team_panel_first_page": urls["fhir_care_team_panel"],
                        "care_team_panel_second_page": second["fhir_care_team_panel"],
                        "patient_panel_first_page": urls["fhir_patient_panel"],
                        "patient_panel_second_page": second["fhir_patient_panel"],
                        "v1_panel_first_page": urls["v1_panel"],
                        "v1_panel_second_page": f"{urls['v1_panel']}&cursor={cursor}",
                    },
                )
        finally:
            await sql_conn.close()
            await database.dispose()

    def median_of(key: str) -> float:
        return float(statistics.median(r[key] for r in rounds))

    return {
        "patients": args.patients,
        "panel": args.panel,
        "clients": args.clients,
        "seconds": args.seconds,
        "walks": args.walks,
        "date_range": [f"ge{d1}", f"le{d2}"],
        "rounds": rounds,
        "ratio_median": median_of("ratio"),
        "target_0_7_met": median_of("ratio") >= 0.7,
        "search_ratio_median": median_of("search_ratio"),
        "search_target_0_7_met": median_of("search_ratio") >= 0.7,
        "panel_ratios_median": {name: median_of(f"{name}_ratio") for name in PANEL_MEASURES},
        "plans": plans,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="seconds per measure")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--patients", type=int, default=2_000, help="patients with a team")
    parser.add_argument("--panel", type=int, default=2_000, help="patients of the panel")
    parser.add_argument("--walks", type=int, default=3, help="walks of the panel per measure")
    parser.add_argument("--server-url", help="an existing server (default: a throwaway one)")
    print(json.dumps(asyncio.run(run(parser.parse_args())), indent=2, default=str))


if __name__ == "__main__":
    main()
