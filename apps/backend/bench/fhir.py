"""Benchmark: the FHIR read of a care team against the /v1 read of the same team (issue
16; target: at least 0.7 of its throughput).

Usage (from apps/backend):

    uv run python bench/fhir.py [--seconds 10] [--clients 8] [--patients 2000]

It starts a throwaway embedded PostgreSQL (or uses --server-url's server), fills one
organization with --patients patients whose teams changed three times (a primary and
two secondaries each, with ended periods: what a FHIR CareTeam lists), then drives the
application in this process (httpx over ASGI: no sockets, so the HTTP server's own
fixed cost, the same for both, is left out and the ratio is, if anything, stricter)
with --clients concurrent clients, alternately twice:

- `GET /v1/patients/{id}/care-team` (the baseline);
- `GET /fhir/R4/CareTeam/{id}`.

The ratio is FHIR reads per second over /v1 reads per second, per pair. Prints one JSON
object (progress on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
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
from src.services.organization_service import OrganizationService

PROVIDERS = 50


async def populate(url: str, patients_n: int) -> tuple[Any, list[str]]:
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
        await conn.execute("VACUUM ANALYZE")
        return org, [str(p) for p in patients]
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with throwaway_database("fhir", args.server_url) as (url, _):
        database = open_database(get_settings(), url)
        try:
            log("migrating a new database to head")
            await upgrade(database.owner_engine)
            log(f"populating {args.patients:,} patients, three changes each")
            org, patients = await populate(url, args.patients)
            async with AsyncSession(database.owner_engine) as owner:
                issued = await OrganizationService.create_api_key(db=owner, organization_id=org)
            headers = {"Authorization": f"Bearer {issued.key}"}
            transport = httpx.ASGITransport(app=create_app(database))
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:

                def reader(path: str) -> Any:
                    async def read(rng: random.Random) -> None:
                        response = await client.get(
                            path.format(rng.choice(patients)), headers=headers
                        )
                        if response.status_code != 200:
                            raise RuntimeError(f"{response.status_code}: {response.text[:200]}")

                    return read

                reads = {
                    "v1_care_team": reader("/v1/patients/{}/care-team"),
                    "fhir_care_team": reader("/fhir/R4/CareTeam/{}"),
                }
                rounds = []
                for round_ in range(2):
                    figures = {}
                    for name, read in reads.items():
                        log(f"{name} (round {round_ + 1} of 2): {args.clients} clients")
                        await drive(args.clients, 1.0, read)  # warm
                        figures[name] = await drive(args.clients, args.seconds, read)
                    figures["ratio"] = round(
                        figures["fhir_care_team"]["ops_per_s"]
                        / figures["v1_care_team"]["ops_per_s"],
                        2,
                    )
                    rounds.append(figures)
        finally:
            await database.dispose()
    median = statistics.median(r["ratio"] for r in rounds)
    return {
        "patients": args.patients,
        "clients": args.clients,
        "seconds": args.seconds,
        "rounds": rounds,
        "ratio_median": median,
        "target_0_7_met": median >= 0.7,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="seconds per measure")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--patients", type=int, default=2_000, help="patients with a team")
    parser.add_argument("--server-url", help="an existing server (default: a throwaway one)")
    print(json.dumps(asyncio.run(run(parser.parse_args())), indent=2))


if __name__ == "__main__":
    main()
