"""Benchmark: attribution over time: reads as of an instant, panel pages, a panel
transfer under load, and assignments with periods against the release before.

Usage (from apps/backend):

    uv run python bench/attribution.py [--seconds 10] [--clients 8]

It starts a throwaway embedded PostgreSQL (or uses --server-url's server, on databases
of its own), then, in one run:

1. Reads, on one organization of 20,000 patients (--patients) and 100 providers, each
   patient's team changed three times (so each has a history of periods), and one
   provider with a panel of 2,000 primary patients (--panel); from --clients concurrent
   clients through the service, each call in a new session (as an HTTP request has):
   - the current care-team read (get_care_team): the baseline;
   - the care-team read as of an instant between the changes (get_care_team(as_of=));
   - a panel page: 50 patients of that panel, after a random patient (list_panel,
     keyset).
   Their ratios are per-read times against the current read's (throughput inverted).
2. A transfer of another panel of that size to another provider (PanelService.transfer_panel,
   batches of 100), while 4 other writers add and remove secondaries on patients of that
   panel: the transfer's time, and the writers' longest stall (their longest write).
3. Assignments with periods against the release before them: bench/assign_driver.py
   run from this checkout and from the commit before care team periods (--before, exported with
   `git archive`), each on a database of its own, alternately, twice each; the ratio is
   this release's assignments per second over the earlier one's, per pair.

Prints one JSON object (progress on stderr). Compare ratios within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
from common import database_on, log, throwaway_database
from load import drive, organization_with

from src.config import BACKEND_DIR, get_settings
from src.db import Database, open_database
from src.embedded import with_database
from src.migration_runner import upgrade
from src.services.care_team_service import CareTeamService
from src.services.panel_service import PanelService, PreviousProvider

# The last commit before care team periods: "assign before this change".
BEFORE_ATTRIBUTION = "fb7fa23"

PROVIDERS = 100
TRANSFER_WRITERS = 4
RESERVED = 2 + TRANSFER_WRITERS  # providers kept out of the seeded history
REPO_ROOT = BACKEND_DIR.parent.parent
DRIVER = BACKEND_DIR / "bench" / "assign_driver.py"


# --- data ---------------------------------------------------------------------------------


async def populate(url: str, patients_n: int, panel: int) -> dict[str, Any]:
    """The organization, its patients with three changes each, and the two panels."""
    conn = await asyncpg.connect(url)
    try:
        org, patients, providers = await organization_with(conn, PROVIDERS, patients_n)
        # Three rounds of changes, each its own transaction (its own instant): every
        # patient's primary changes each round, the previous one staying a secondary.
        # The last RESERVED providers take no part: two hold the panels built below, the
        # others are the transfer's writers' own.
        instants = []
        for round_ in range(3):
            await conn.execute(
                """
                SELECT careteam_assign_primary($1, p.id,
                    ($3::uuid[])[1 + (p.n * 7 + $2 * 13) % $4], 'seed', 'other', NULL)
                FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM patients) AS p
                """,
                org,
                round_,
                providers,
                PROVIDERS - RESERVED,
            )
            instants.append(await conn.fetchval("SELECT now()"))
        # Two panels of `panel` patients: one to page through, one to transfer.
        paged, leaving, taking = providers[-2], providers[-1], providers[0]
        for provider, chosen in ((paged, patients[:panel]), (leaving, patients[panel:][:panel])):
            await conn.execute(
                "SELECT careteam_assign_primary($1, p, $2, 'seed', 'other', NULL) "
                "FROM unnest($3::uuid[]) AS p",
                org,
                provider,
                chosen,
            )
        await conn.execute("VACUUM ANALYZE")
        return {
            "org": org,
            "patients": patients,
            "providers": providers,
            "between": instants[0] + (instants[1] - instants[0]) / 2,
            "paged": paged,
            "paged_patients": patients[:panel],
            "leaving": leaving,
            "leaving_patients": patients[panel:][:panel],
            "taking": taking,
            "writers": providers[-RESERVED:-2],
        }
    finally:
        await conn.close()


async def count_periods(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM care_team_periods"))
    finally:
        await conn.close()


# --- 1. reads -------------------------------------------------------------------------------


async def reads(database: Database, data: dict[str, Any], clients: int, seconds: float) -> Any:
    org = data["org"]

    async def current(rng: random.Random) -> None:
        async with database.sessionmaker() as db:
            await CareTeamService.get_care_team(
                db=db, organization_id=org, patient_id=rng.choice(data["patients"])
            )

    async def as_of(rng: random.Random) -> None:
        async with database.sessionmaker() as db:
            await CareTeamService.get_care_team(
                db=db,
                organization_id=org,
                patient_id=rng.choice(data["patients"]),
                as_of=data["between"],
            )

    async def panel_page(rng: random.Random) -> None:
        async with database.sessionmaker() as db:
            page = await PanelService.list_panel(
                db=db,
                organization_id=org,
                provider_id=data["paged"],
                limit=50,
                after=rng.choice(data["paged_patients"][:-50]),
            )
            assert len(page) == 50, len(page)

    figures: dict[str, Any] = {}
    measures = (("current_read", current), ("as_of_read", as_of), ("panel_page", panel_page))
    for name, call in measures:
        await drive(clients, 1.0, call)  # warm
        log(f"1. {name}: {clients} clients, {seconds:.0f} s")
        figures[name] = await drive(clients, seconds, call)
    base = figures["current_read"]["ops_per_s"]
    for name in ("as_of_read", "panel_page"):
        figures[name]["time_ratio_to_current_read"] = round(base / figures[name]["ops_per_s"], 2)
        figures[name]["p50_ratio_to_current_read"] = round(
            figures[name]["p50_ms"] / figures["current_read"]["p50_ms"], 2
        )
    return figures


# --- 2. a transfer under load ------------------------------------------------------------------


async def transfer(database: Database, data: dict[str, Any]) -> dict[str, Any]:
    org, panel = data["org"], data["leaving_patients"]
    stalls: list[float] = []
    errors: list[str] = []
    running = True

    # Each writer adds its own provider to a patient of the panel as a secondary, then
    # takes it off again: writes to the very patients being moved (they take the same
    # patient lock), which leave their primary as it is.
    async def writer(number: int) -> None:
        rng = random.Random(number)
        own = data["writers"][number]
        while running:
            patient = rng.choice(panel)
            for write in (CareTeamService.add_secondary_provider, CareTeamService.remove_provider):
                started = time.perf_counter()
                try:
                    async with database.sessionmaker() as db:
                        await write(
                            db=db,
                            organization_id=org,
                            patient_id=patient,
                            provider_id=own,
                            actor="bench-writer",
                        )
                except Exception as err:  # counted and reported
                    errors.append(type(err).__name__)
                stalls.append(time.perf_counter() - started)
            await asyncio.sleep(0.002)

    tasks = [asyncio.create_task(writer(i)) for i in range(TRANSFER_WRITERS)]
    await asyncio.sleep(1.0)  # the writers in their steady state first
    log(f"2. transfer of a {len(panel):,}-patient panel, {TRANSFER_WRITERS} writers on it")
    started = time.perf_counter()
    async with database.sessionmaker() as db:
        result = await PanelService.transfer_panel(
            db=db,
            organization_id=org,
            from_provider_id=data["leaving"],
            to_provider_id=data["taking"],
            reason="provider_left",
            previous_provider=PreviousProvider.KEEP_AS_SECONDARY,
            actor="bench",
        )
    seconds = time.perf_counter() - started
    await asyncio.sleep(0.5)
    running = False
    await asyncio.gather(*tasks)
    ordered = sorted(stalls)
    return {
        "transfer_s": round(seconds, 2),
        "moved": result.moved,
        "remaining": result.remaining,
        "writer_calls": len(ordered),
        "writer_errors": len(errors),
        "writer_error_kinds": sorted(set(errors)),
        "writer_p50_ms": round(statistics.median(ordered) * 1000, 1),
        "writer_p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 1),
        "writer_longest_stall_ms": round(ordered[-1] * 1000, 1),
    }


# --- 3. assignments against the release before ----------------------------------------------


def export_release(ref: str, into: Path) -> Path:
    """apps/backend of commit `ref`, exported with git archive; its directory."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", ref, "apps/backend"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout
    path = into / "release.tar"
    path.write_bytes(archive)
    with tarfile.open(path) as tar:
        # Our own commit's archive; the "data" filter where this Python has it (3.11.4+,
        # and distributions' backports): some 3.11 builds lack the argument.
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
        else:
            tar.extractall(into)
    return into / "apps" / "backend"


def run_driver(tree: Path, url: str, seconds: float, clients: int) -> dict[str, Any]:
    """bench/assign_driver.py with `src` imported from `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("DATABASE_URL", None)
    result = subprocess.run(
        [sys.executable, str(DRIVER), url, str(seconds), str(clients)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(f"assign_driver.py from {tree} failed:\n{result.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


async def assign_against_before(
    server: str, ref: str, clients: int, seconds: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="careteam-before-") as tmp:
        before_tree = export_release(ref, Path(tmp))
        pairs: list[dict[str, Any]] = []
        for round_ in range(2):
            figures: dict[str, Any] = {}
            for name, tree in (("before", before_tree), ("with_periods", BACKEND_DIR)):
                log(f"3. assign, {name} (round {round_ + 1} of 2): {clients} clients")
                async with database_on(server, f"assign_{name}") as url:
                    figures[name] = await asyncio.to_thread(run_driver, tree, url, seconds, clients)
            figures["ratio"] = round(
                figures["with_periods"]["ops_per_s"] / figures["before"]["ops_per_s"], 2
            )
            pairs.append(figures)
    return {
        "before_commit": ref,
        "rounds": pairs,
        "ratio_median": round(statistics.median(float(p["ratio"]) for p in pairs), 2),
    }


# --- the run ----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with throwaway_database("attribution", args.server_url) as (url, _):
        database = open_database(get_settings(), url)
        try:
            await upgrade(database.owner_engine)
            log(f"populating {args.patients:,} patients, three changes each")
            data = await populate(url, args.patients, args.panel)
            figures: dict[str, Any] = {
                "patients": args.patients,
                "panel": args.panel,
                "periods": await count_periods(url),
                "clients": args.clients,
                "seconds": args.seconds,
            }
            figures["reads"] = await reads(database, data, args.clients, args.seconds)
            figures["transfer"] = await transfer(database, data)
        finally:
            await database.dispose()
        figures["assign"] = await assign_against_before(
            with_database(url, "postgres"), args.before, args.clients, args.seconds
        )
    reads_ = figures["reads"]
    figures["summary"] = {
        "as_of_read_time_ratio": reads_["as_of_read"]["time_ratio_to_current_read"],
        "as_of_target_1_5x_met": reads_["as_of_read"]["time_ratio_to_current_read"] <= 1.5,
        "panel_page_time_ratio": reads_["panel_page"]["time_ratio_to_current_read"],
        "assign_with_periods_ratio": figures["assign"]["ratio_median"],
        "assign_target_0_8x_met": figures["assign"]["ratio_median"] >= 0.8,
        "transfer_s": figures["transfer"]["transfer_s"],
        "transfer_writer_longest_stall_ms": figures["transfer"]["writer_longest_stall_ms"],
        "stall_target_200ms_met": figures["transfer"]["writer_longest_stall_ms"] <= 200,
    }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--seconds", type=float, default=10, help="each measure's length")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--patients", type=int, default=20_000, help="patients (at least 3 panels)")
    parser.add_argument("--panel", type=int, default=2_000, help="patients in each panel")
    parser.add_argument(
        "--before",
        default=BEFORE_ATTRIBUTION,
        help=f"the commit to compare assignments with (default {BEFORE_ATTRIBUTION})",
    )
    parser.add_argument(
        "--server-url", help="a PostgreSQL server to use instead of a throwaway embedded one"
    )
    figures = asyncio.run(run(parser.parse_args()))
    print(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
