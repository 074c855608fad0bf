"""Benchmark: what an assignment costs as one patient's history grows.

Usage (from apps/backend):

    uv run python bench/patient_history.py [--periods 4000] [--step 500]

On a throwaway embedded PostgreSQL (or --server-url's server, on a database of its
own), migrated to head, with 20,000 other patients holding a primary each (so that the
table's statistics look like a clinic's, not like one patient's): one patient is
assigned a primary again and again, alternating two providers, through the write
function the service calls (careteam_assign_primary, one connection, as the owner),
each in its own transaction. Every assignment closes periods and opens two (the old
primary stays as secondary), so the patient's history grows by two periods per call.
Every `--step` calls it records the mean time per assignment over the last 100. Then
the same on a new patient with the period changes of the revision before
(20261206_one_round_trip: the function that read the patient's whole history), in the
same run.

Prints one JSON object: for each definition, the periods reached and the mean ms per
assignment at each step, and the ratio of the last step to the first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import asyncpg
from common import log, throwaway_database
from load import organization_with

from src.config import get_settings
from src.db import open_database
from src.migration_runner import downgrade, upgrade

ASSIGN = "SELECT * FROM careteam_assign_primary($1, $2, $3, 'bench', 'other', NULL)"
PERIODS = "SELECT count(*) FROM care_team_periods WHERE patient_id = $1"
SAMPLE = 100  # assignments timed at each step


async def grow(url: str, total: int, step: int) -> list[dict[str, Any]]:
    """Assign one new patient's primary `total` times: the mean ms per assignment over
    the last SAMPLE calls of every `step`, with the periods the patient has then."""
    conn = await asyncpg.connect(url)
    try:
        org, (patient,), providers = await organization_with(conn, providers=2, patients=1)
        steps = []
        sample = min(SAMPLE, step)

        calls = 0

        async def assign() -> None:  # the other provider than last time
            nonlocal calls
            calls += 1
            async with conn.transaction():
                await conn.execute(ASSIGN, org, patient, providers[calls % 2])

        for _ in range(total // step):
            for _ in range(step - sample):
                await assign()
            began = time.perf_counter()
            for _ in range(sample):
                await assign()
            ms = (time.perf_counter() - began) * 1000 / sample
            periods = await conn.fetchval(PERIODS, patient)
            steps.append({"periods": periods, "ms_per_assignment": round(ms, 3)})
            log(f"{periods} periods: {ms:.3f} ms per assignment")
        return steps
    finally:
        await conn.close()


def summary(steps: list[dict[str, Any]]) -> dict[str, Any]:
    first, last = steps[0]["ms_per_assignment"], steps[-1]["ms_per_assignment"]
    return {"steps": steps, "last_to_first": round(last / first, 2) if first else None}


async def other_patients(url: str, patients: int) -> None:
    """`patients` other patients with a primary each (one period), then ANALYZE: the
    table's statistics look like a clinic's, not like one patient's."""
    conn = await asyncpg.connect(url)
    try:
        org, patient_ids, providers = await organization_with(conn, 10, patients)
        await conn.execute(
            "SELECT careteam_assign_primary($1, p, $2, 'bench', 'other', NULL) "
            "FROM unnest($3::uuid[]) AS p",
            org,
            providers[0],
            patient_ids,
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with throwaway_database("history", args.server_url) as (url, _):
        database = open_database(get_settings(), url)
        try:
            await upgrade(database.owner_engine)
            log(f"{args.other_patients:,} other patients, a primary each")
            await other_patients(url, args.other_patients)
            log("period changes at head")
            head = await grow(url, args.periods // 2, args.step)
            await downgrade(database.owner_engine, "20261206_one_round_trip")
            log("period changes of 20261206_one_round_trip (the whole history read)")
            before = await grow(url, args.periods // 2, args.step)
            await upgrade(database.owner_engine)
        finally:
            await database.dispose()
    return {"head": summary(head), "before": summary(before)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--periods", type=int, default=4000, help="periods to grow each patient to (about)"
    )
    parser.add_argument("--step", type=int, default=500, help="assignments between samples")
    parser.add_argument(
        "--other-patients", type=int, default=20_000, help="patients with a primary besides"
    )
    parser.add_argument("--server-url", help="a PostgreSQL server to use (libpq URL)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
