"""Benchmark: finding patients: a name search and a list page on 1M patients,
as ratios to the care-team read in the same run.

Usage (from apps/backend):

    uv run python bench/search.py [--patients 1000000] [--seconds 10] [--clients 8]

It starts a throwaway embedded PostgreSQL (or uses --server-url's server, on a database
of its own) at head, fills one organization with --patients patients (names of six
pseudo-random letters, so a three-letter prefix matches about 1 in 17,576 first
names and as many last names) and 2,000 care teams, then, from --clients concurrent
clients through the
service, each call in a new session (as an HTTP request has):

- the care-team read (get_care_team) of a random patient with a team: the baseline;
- a name search: list_patients(name=<a random three-letter prefix of a real name>),
  first page of 50;
- a list page: list_patients(after=<a random patient id>), 50 patients in id order.

Ratios are per-call times against the care-team read's (throughput inverted). It also
prints each query's plan (EXPLAIN, as the application runs it: a prepared statement's
generic plan), for docs/PERFORMANCE.md. Prints one JSON object (progress on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any

import asyncpg
from common import log, throwaway_database
from load import drive

from src.config import get_settings
from src.db import open_database
from src.migration_runner import upgrade
from src.services.care_team_service import CareTeamService
from src.services.directory_service import (
    FIRST,
    PATIENT_SEARCHES,
    DirectoryService,
)

TEAMS = 2_000
PAGE = 50


def name(seed: str) -> str:
    """Six pseudo-random letters (from the md5 of `seed`, a SQL expression), capitalised."""
    return " || ".join(
        f"chr({65 if k == 0 else 97} + get_byte(decode(md5({seed}), 'hex'), {k}) % 26)"
        for k in range(6)
    )


async def populate(url: str, patients: int) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        org = await conn.fetchval("INSERT INTO organizations (name) VALUES ('bench') RETURNING id")
        provider = await conn.fetchval(
            "INSERT INTO providers (organization_id, first_name, last_name) "
            "VALUES ($1, 'P', 'One') RETURNING id",
            org,
        )
        started = time.perf_counter()
        await conn.execute(
            f"""
            INSERT INTO patients (organization_id, first_name, last_name, dob)
            SELECT $1, {name("'first' || g")}, {name("'last' || g")},
                   date '1940-01-01' + (g % 25000)
            FROM generate_series(1, $2) AS g
            """,
            org,
            patients,
        )
        log(f"{patients:,} patients written in {time.perf_counter() - started:.0f} s")
        teams = await conn.fetch(
            "SELECT id FROM patients WHERE organization_id = $1 ORDER BY id LIMIT $2", org, TEAMS
        )
        with_team = [r["id"] for r in teams]
        await conn.execute(
            "SELECT careteam_assign_primary($1, p, $2, 'seed', 'other', NULL) "
            "FROM unnest($3::uuid[]) AS p",
            org,
            provider,
            with_team,
        )
        await conn.execute("VACUUM ANALYZE")
        sample = await conn.fetch(
            "SELECT id, lower(left(last_name, 3)) AS prefix FROM patients "
            "WHERE organization_id = $1 ORDER BY random() LIMIT 5000",
            org,
        )
        return {
            "org": org,
            "with_team": with_team,
            "ids": [r["id"] for r in sample],
            "prefixes": sorted({r["prefix"] for r in sample}),
        }
    finally:
        await conn.close()


async def plans(url: str, data: dict[str, Any]) -> dict[str, str]:
    """The plans the service runs: a name search planned for its prefix (a custom plan,
    as the service asks), a list page as a prepared statement's generic plan."""
    conn = await asyncpg.connect(url)
    try:
        found = {}
        for name, filters, args, mode in (
            ("name_search", frozenset({"name"}), [data["prefixes"][0]], "force_custom_plan"),
            ("list_page", frozenset(), [], "force_generic_plan"),
        ):
            await conn.execute(f"SET plan_cache_mode = {mode}")
            statement = PATIENT_SEARCHES[filters].text
            await conn.execute(f"PREPARE q AS {statement}")
            values = [f"'{data['org']}'", f"'{FIRST}'", str(PAGE), *(f"'{a}'" for a in args)]
            rows = await conn.fetch(f"EXPLAIN (ANALYZE, COSTS OFF) EXECUTE q({', '.join(values)})")
            found[name] = "\n".join(r[0] for r in rows)
            await conn.execute("DEALLOCATE q")
        return found
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with throwaway_database("search", args.server_url) as (url, _):
        database = open_database(get_settings(), url)
        try:
            log("migrating a new database to head")
            await upgrade(database.owner_engine)
            log(f"populating {args.patients:,} patients")
            data = await populate(url, args.patients)
            org = data["org"]

            async def care_team(rng: random.Random) -> None:
                async with database.sessionmaker() as db:
                    await CareTeamService.get_care_team(
                        db=db, organization_id=org, patient_id=rng.choice(data["with_team"])
                    )

            async def name_search(rng: random.Random) -> None:
                async with database.sessionmaker() as db:
                    await DirectoryService.list_patients(
                        db=db, organization_id=org, name=rng.choice(data["prefixes"]), limit=PAGE
                    )

            async def list_page(rng: random.Random) -> None:
                async with database.sessionmaker() as db:
                    await DirectoryService.list_patients(
                        db=db, organization_id=org, after=rng.choice(data["ids"]), limit=PAGE
                    )

            figures: dict[str, Any] = {"patients": args.patients, "clients": args.clients}
            for name, operation in (
                ("care_team_read", care_team),
                ("name_search", name_search),
                ("list_page", list_page),
            ):
                log(f"{name}: {args.clients} clients, {args.seconds:g} s")
                await drive(args.clients, 1.0, operation)  # warm: connections, plans
                figures[name] = await drive(args.clients, args.seconds, operation)
            base = figures["care_team_read"]["ops_per_s"]
            for name in ("name_search", "list_page"):
                rate = figures[name]["ops_per_s"]
                figures[name]["time_ratio_to_care_team_read"] = round(base / rate, 2)
            figures["plans"] = await plans(url, data)
            return figures
        finally:
            await database.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=1_000_000, help="patients to search")
    parser.add_argument("--seconds", type=float, default=10, help="seconds per measure")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--server-url", help="an existing server (default: a throwaway one)")
    figures = asyncio.run(run(parser.parse_args()))
    print(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
