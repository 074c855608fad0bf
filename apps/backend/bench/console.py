"""Benchmark: what the console (/console) costs API requests that do not use it (issue
27: no measurable cost).

Usage (from apps/backend):

    uv run python bench/console.py [--seconds 8] [--clients 8] [--rounds 3]
                                   [--patients 2000]

The console is two plain routes, included after every API route, with no middleware:
an API request is matched before they are tried. This measures it rather than assuming
it. A throwaway embedded PostgreSQL (or --server-url's server) gets the same data as
bench/access_log.py (one organization, --patients patients with a primary among 50
providers), and two apps are driven in this process (httpx over ASGI): the app as it
is, and the same app with the console's routes removed (the release before, as far as
the console is concerned). For each round (alternating which app goes first), each
measure runs for --seconds on one app and then on the other: `GET
/v1/patients/{id}/care-team`, `PUT /v1/patients/{id}/care-team/primary` and `GET
/fhir/R4/CareTeam/{id}`. Ratios: with the console over without, per round, and their
medians, with the spread of the rounds (a ratio within it is noise, not cost).

Prints one JSON object (progress on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from typing import Any

import asyncpg
from access_log import MEASURES, measure, seed
from common import log, throwaway_database
from fastapi import FastAPI

from src import console
from src.api.app import create_app
from src.config import get_settings
from src.db import open_database

PAIR = ("with_console", "without_console")


def without_console(app: FastAPI) -> FastAPI:
    """The app without the console's routes (FastAPI keeps an included router as one
    entry of the app's routes)."""
    routes = app.router.routes
    kept = [r for r in routes if getattr(r, "original_router", None) is not console.router]
    if len(routes) - len(kept) != 1:
        raise RuntimeError("the console's router was not found in the app")
    app.router.routes[:] = kept
    return app


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with throwaway_database("console", args.server_url) as (url, _):
        database = open_database(get_settings(), url)
        conn = await asyncpg.connect(url)
        try:
            _, _, headers, seeded = await seed(database, conn, args.patients)
            apps = {PAIR[0]: create_app(database), PAIR[1]: without_console(create_app(database))}
            rounds = []
            for round_ in range(args.rounds):
                log(f"{args.clients} clients: round {round_ + 1} of {args.rounds}")
                ordered = apps if round_ % 2 == 0 else dict(reversed(list(apps.items())))
                rounds.append(
                    await measure(args.seconds, args.clients, ordered, headers, seeded, pair=PAIR)
                )
        finally:
            await conn.close()
            await database.dispose()
    ratios = {name: [r[f"{name}_ratio"] for r in rounds] for name in MEASURES}
    return {
        "patients": args.patients,
        "seconds": args.seconds,
        "clients": args.clients,
        "rounds": rounds,
        "ratios_with_over_without": {
            name: {
                "median": float(statistics.median(values)),
                "min": min(values),
                "max": max(values),
            }
            for name, values in ratios.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8, help="seconds per measure")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--rounds", type=int, default=3, help="rounds")
    parser.add_argument("--patients", type=int, default=2_000, help="patients with a team")
    parser.add_argument("--server-url", help="an existing server (default: a throwaway one)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
