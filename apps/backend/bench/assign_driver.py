"""Assignments through CareTeamService, from whichever release `src` is imported from.

Run by bench/attribution.py with PYTHONPATH set to a release's apps/backend (this
checkout's, or an earlier commit's): it migrates the database it is given to that
release's head, fills it, then assigns primaries from CLIENTS concurrent clients for
SECONDS, each call in a new session (as an HTTP request has), and prints one JSON
object. Only names every release has are used.

    python bench/assign_driver.py URL SECONDS CLIENTS
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import uuid

import asyncpg
from load import drive, organization_with

from src.config import get_settings
from src.db import open_database
from src.migration_runner import upgrade
from src.services.care_team_service import CareTeamService

PATIENTS, PROVIDERS = 10_000, 100


async def populate(url: str) -> tuple[uuid.UUID, list[uuid.UUID], list[uuid.UUID]]:
    """One organization; every patient with a primary and a secondary provider."""
    conn = await asyncpg.connect(url)
    try:
        org, patients, providers = await organization_with(conn, PROVIDERS, PATIENTS)
        await conn.execute(
            """
            INSERT INTO care_team_assignments
                (organization_id, patient_id, provider_id, is_primary_provider)
            SELECT $1, p.id, v.ids[1 + (p.n + k * 7) % $2], k = 0
            FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM patients) AS p,
                 (SELECT array_agg(id ORDER BY id) AS ids FROM providers) AS v,
                 generate_series(0, 1) AS k
            """,
            org,
            PROVIDERS,
        )
        await conn.execute("VACUUM ANALYZE")
        return org, patients, providers
    finally:
        await conn.close()


async def main(url: str, seconds: float, clients: int) -> None:
    database = open_database(get_settings(), url)
    try:
        await upgrade(database.owner_engine)
        org, patients, providers = await populate(url)

        async def assign(rng: random.Random) -> None:
            async with database.sessionmaker() as db:
                await CareTeamService.assign_primary_provider(
                    db=db,
                    organization_id=org,
                    patient_id=rng.choice(patients),
                    provider_id=rng.choice(providers),
                    actor="bench",
                )

        await drive(clients, 1.0, assign)  # warm: connections, plans, caches
        figures = await drive(clients, seconds, assign)
    finally:
        await database.dispose()
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3])))
