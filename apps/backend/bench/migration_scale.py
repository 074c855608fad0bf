"""Benchmark: the online migrations and the diagnostic on a large, busy table.

Usage (from apps/backend):

    uv run python bench/migration_scale.py --patients-per-org 25000   # 10M assignments
    uv run python bench/migration_scale.py --patients-per-org 2500    # 1M assignments

It starts a throwaway embedded PostgreSQL (or uses the server of --server-url, on a
database of its own that it drops at the end), fills it with 100 organizations,
PATIENTS_PER_ORG patients each, 4 providers per patient (one primary) and a second
primary for 1% of patients, all at revision 20260114_rls_coverage. A writer loop
assigns primaries all along, with the statements the release before the migrations
sends (lock the patient, demote, promote, record an event): it is what runs while a
release's migrations are applied. Then, in one run:

1. Baseline: in one transaction that is rolled back, the bare dedupe UPDATE and a plain
   CREATE UNIQUE INDEX, with the writer running: their times, and its longest stall.
2. The diagnostic script (a subprocess, --json) against the bare
   `GROUP BY ... HAVING count(*) > 1` run through psql; the script's peak memory.
3. `alembic upgrade 20261128_app_role_login` (the rule, the event numbering, the
   application role) with the writer running: its time and the writer's longest stall.
4. `alembic upgrade head`: the care team periods, built from the assignments and events
   by the online backfill, with the writer running; against the bare INSERT of one
   period per assignment into a copy of the periods table (same constraints, rolled back).
5. The diagnostic at head (the rule, then the periods against the care teams) against
   the bare `GROUP BY` plus the bare comparison of assignments with open periods.

Prints one JSON object of figures (and progress on stderr). Timings are wall-clock on a
shared machine: compare the ratios within one run, not seconds across runs.
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
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

# The writer must wait as long as it is blocked, so the stall can be measured at all.
os.environ["DB_LOCK_TIMEOUT_MS"] = "0"
os.environ["DB_STATEMENT_TIMEOUT_MS"] = "0"

import asyncpg
from common import log, throwaway_database

from src.config import BACKEND_DIR, get_settings
from src.db import open_database
from src.diagnostics import OUT_OF_STEP
from src.embedded import (
    client_program,
)
from src.migration_runner import upgrade

ORGS = 100
PROVIDERS_PER_ORG = 100
ASSIGNMENTS_PER_PATIENT = 4

BARE_GROUP_BY = (
    "SELECT organization_id, patient_id FROM care_team_assignments "
    "WHERE is_primary_provider GROUP BY organization_id, patient_id HAVING count(*) > 1"
)

# The dedupe rule as one plain statement, without batches, locks or events.
BARE_DEDUPE_UPDATE = """
UPDATE care_team_assignments AS a SET is_primary_provider = false
FROM (
    SELECT id, row_number() OVER (PARTITION BY organization_id, patient_id
                                  ORDER BY assigned_at DESC, id DESC) AS rank
    FROM care_team_assignments WHERE is_primary_provider
) AS r
WHERE a.id = r.id AND r.rank > 1
"""

BEFORE_PERIODS = "20261128_app_role_login"

# One open period per assignment, from its time: what the backfill writes, bare.
BARE_PERIODS_INSERT = """
INSERT INTO bench_periods
    (organization_id, patient_id, provider_id, role, valid, started_by, start_reason)
SELECT organization_id, patient_id, provider_id,
       CASE WHEN is_primary_provider THEN 'primary' ELSE 'secondary' END,
       tstzrange(assigned_at, NULL), 'bench', 'data_correction'
FROM care_team_assignments
"""

# The diagnostic's periods check, bare: the memberships whose open period differs.
BARE_OUT_OF_STEP = OUT_OF_STEP.format(organization_filter="true")

PLAIN_INDEX = """
CREATE UNIQUE INDEX bench_plain_unique_primary ON care_team_assignments
    (organization_id, patient_id) WHERE is_primary_provider = true
"""


# --- data ----------------------------------------------------------------------------


async def generate(url: str, patients_per_org: int) -> None:
    """Fill the tables. FK triggers are off for the load (the data is consistent by
    construction); the unique constraints stay on."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(
            "INSERT INTO organizations (name) SELECT 'Bench ' || g FROM generate_series(1, $1) g",
            ORGS,
        )
        await conn.execute(
            "INSERT INTO providers (organization_id, first_name, last_name) "
            "SELECT o.id, 'P', g::text FROM organizations o, generate_series(1, $1) g",
            PROVIDERS_PER_ORG,
        )
        orgs = [r["id"] for r in await conn.fetch("SELECT id FROM organizations ORDER BY id")]
        started = time.perf_counter()
        for i, org in enumerate(orgs, 1):
            await conn.execute(
                "INSERT INTO patients (organization_id) SELECT $1 FROM generate_series(1, $2)",
                org,
                patients_per_org,
            )
            # Patient n gets providers n*7 + k*13 (mod 100), k = 0..3: four distinct ones.
            # k = 0 is the primary; every 100th patient's k = 1 is a second primary.
            await conn.execute(
                """
                WITH prov AS (
                    SELECT array_agg(id ORDER BY id) AS ids FROM providers
                    WHERE organization_id = $1
                ), pat AS (
                    SELECT id, row_number() OVER (ORDER BY id) AS n FROM patients
                    WHERE organization_id = $1
                )
                INSERT INTO care_team_assignments
                    (organization_id, patient_id, provider_id, is_primary_provider, assigned_at)
                SELECT $1, pat.id, prov.ids[1 + ((pat.n * 7 + k * 13) % $2)],
                       k = 0 OR (k = 1 AND pat.n % 100 = 0),
                       now() - make_interval(days => k) - random() * interval '1 day'
                FROM pat, prov, generate_series(0, $3 - 1) AS k
                """,
                org,
                PROVIDERS_PER_ORG,
                ASSIGNMENTS_PER_PATIENT,
            )
            if i % 10 == 0:
                log(
                    f"  generated {i}/{len(orgs)} organizations "
                    f"({time.perf_counter() - started:.0f}s)"
                )
        await conn.execute("SET session_replication_role = DEFAULT")
        log("  VACUUM ANALYZE")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


# --- the concurrent writer -------------------------------------------------------------


# What the previous release sends to assign a primary (one transaction): it is the
# release still serving while the migrations run. The patient lock first, then these.
LOCK_PATIENT = "SELECT 1 FROM patients WHERE organization_id = $1 AND id = $2 FOR NO KEY UPDATE"
WRITE = (
    "UPDATE care_team_assignments SET is_primary_provider = false "
    "WHERE organization_id = $1 AND patient_id = $2 AND is_primary_provider "
    "AND provider_id <> $3",
    "INSERT INTO care_team_assignments "
    "(organization_id, patient_id, provider_id, is_primary_provider) "
    "VALUES ($1, $2, $3, true) ON CONFLICT (organization_id, patient_id, provider_id) "
    "DO UPDATE SET is_primary_provider = true",
    "INSERT INTO care_team_events (organization_id, patient_id, provider_id, event_type, actor) "
    "VALUES ($1, $2, $3, 'primary_assigned', 'bench-writer')",
)


@dataclass
class Writer:
    """Assigns primaries in a loop, as the previous release does; records every call's
    latency."""

    targets: list[tuple[uuid.UUID, uuid.UUID, list[uuid.UUID]]]
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    running: bool = False

    async def run(self, url: str) -> None:
        conn = await asyncpg.connect(url)
        rng = random.Random(7)
        try:
            while self.running:
                org, patient, providers = rng.choice(self.targets)
                provider = rng.choice(providers)
                started = time.perf_counter()
                try:
                    async with conn.transaction():
                        await conn.execute(LOCK_PATIENT, org, patient)
                        for statement in WRITE:
                            await conn.execute(statement, org, patient, provider)
                except Exception as err:  # counted and reported, the loop goes on
                    self.errors.append(type(err).__name__)
                self.latencies.append(time.perf_counter() - started)
                await asyncio.sleep(0.005)
        finally:
            await conn.close()

    def figures(self) -> dict[str, Any]:
        if not self.latencies:
            return {"calls": 0}
        ordered = sorted(self.latencies)
        return {
            "calls": len(ordered),
            "errors": len(self.errors),
            "error_kinds": sorted(set(self.errors)),
            "p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 1),
            "longest_stall_ms": round(ordered[-1] * 1000, 1),
        }


async def pick_targets(url: str) -> list[tuple[uuid.UUID, uuid.UUID, list[uuid.UUID]]]:
    conn = await asyncpg.connect(url)
    try:
        providers: dict[uuid.UUID, list[uuid.UUID]] = {}
        for row in await conn.fetch("SELECT organization_id, id FROM providers"):
            providers.setdefault(row["organization_id"], []).append(row["id"])
        # A sample of pages on a large table; on a small one, simply random rows.
        patients = await conn.fetch(
            "SELECT organization_id, id FROM patients TABLESAMPLE SYSTEM (1) LIMIT 5000"
        ) or await conn.fetch(
            "SELECT organization_id, id FROM patients ORDER BY random() LIMIT 5000"
        )
        return [(p["organization_id"], p["id"], providers[p["organization_id"]]) for p in patients]
    finally:
        await conn.close()


async def with_writer(url: str, writer: Writer, work: Any) -> tuple[Any, dict[str, Any]]:
    """Run `work()` while the writer loops; return its result and the writer's figures."""
    writer.latencies.clear()
    writer.errors.clear()
    writer.running = True
    task = asyncio.create_task(writer.run(url))
    await asyncio.sleep(1.0)  # a steady state before the measured work starts
    try:
        result = await work()
    finally:
        await asyncio.sleep(0.5)
        writer.running = False
        await task
    return result, writer.figures()


# --- measurements ------------------------------------------------------------------


async def baseline(url: str) -> dict[str, float]:
    """The bare dedupe UPDATE and a plain CREATE UNIQUE INDEX, in a rolled-back transaction."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            started = time.perf_counter()
            await conn.execute(BARE_DEDUPE_UPDATE)
            update_s = time.perf_counter() - started
            started = time.perf_counter()
            await conn.execute(PLAIN_INDEX)
            index_s = time.perf_counter() - started
            raise _Rollback
    except _Rollback:
        pass
    finally:
        await conn.close()
    return {
        "bare_update_s": round(update_s, 2),
        "plain_index_s": round(index_s, 2),
        "bare_total_s": round(update_s + index_s, 2),
    }


class _Rollback(Exception):
    pass


def peak_rss_mb(pid: int) -> int | None:
    """The process's peak resident memory so far (VmHWM), or None once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        return None
    return None


def timed_process(args: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    """(seconds, exit code, peak RSS in MB) of a child process, output discarded.

    The peak is read from /proc while it runs (VmHWM only grows, and is reset by exec,
    so it is the program's own, not the forking parent's)."""
    started = time.perf_counter()
    child = subprocess.Popen(args, cwd=BACKEND_DIR, env=env, stdout=subprocess.DEVNULL)
    peak = 0
    while child.poll() is None:
        peak = max(peak, peak_rss_mb(child.pid) or 0)
        time.sleep(0.02)
    return time.perf_counter() - started, child.returncode, peak


async def migrate(url: str, target: str) -> dict[str, Any]:
    env = {**os.environ, "DATABASE_URL": url}
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alembic",
        "upgrade",
        target,
        cwd=BACKEND_DIR,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"alembic upgrade {target} failed:\n{err.decode()}")
    return {"migration_s": round(seconds, 2)}


async def bare_periods_insert(url: str) -> float:
    """Seconds to INSERT one open period per assignment into a copy of care_team_periods
    (same columns, checks, exclusion constraints and indexes), rolled back."""
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute("CREATE TABLE bench_periods (LIKE care_team_periods INCLUDING ALL)")
            started = time.perf_counter()
            await conn.execute(BARE_PERIODS_INSERT)
            seconds = time.perf_counter() - started
            raise _Rollback
    except _Rollback:
        pass
    finally:
        await conn.close()
    return seconds


def diagnostic(env: dict[str, str], bare_queries: list[str]) -> dict[str, Any]:
    """The diagnostic script as a whole process against the bare queries through psql."""
    psql = [str(client_program("psql")), env["DATABASE_URL"], "-X", "-q", "-o", "/dev/null"]
    for query in bare_queries:
        psql += ["-c", query]
    bare_s, code, _ = timed_process(psql, env)
    assert code == 0, "psql failed"
    script = [sys.executable, "scripts/check_primary_provider_violations.py", "--json"]
    script_s, code, script_mb = timed_process(script, env)
    return {
        "bare_queries_psql_s": round(bare_s, 2),
        "script_s": round(script_s, 2),
        "ratio": round(script_s / bare_s, 2),
        "script_peak_rss_mb": script_mb,
        "exit_code": code,
    }


async def execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def count(url: str, sql: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with throwaway_database("bench", args.server_url) as (url, _):
        database = open_database(get_settings(), url)
        await upgrade(database.owner_engine, "20260114_rls_coverage")
        await database.dispose()
        rows = ORGS * args.patients_per_org * ASSIGNMENTS_PER_PATIENT
        log(f"generating {rows:,} assignments")
        started = time.perf_counter()
        await generate(url, args.patients_per_org)
        figures: dict[str, Any] = {
            "assignments": await count(url, "SELECT count(*) FROM care_team_assignments"),
            "patients_with_two_primaries": await count(
                url, f"SELECT count(*) FROM ({BARE_GROUP_BY}) d"
            ),
            "generate_s": round(time.perf_counter() - started, 1),
        }
        writer = Writer(await pick_targets(url))

        log("1. baseline: bare dedupe UPDATE + plain CREATE UNIQUE INDEX (rolled back)")
        base, base_writer = await with_writer(url, writer, lambda: baseline(url))
        figures["baseline"] = {**base, "writer": base_writer}

        log("2. diagnostic script vs bare GROUP BY through psql")
        env = {**os.environ, "DATABASE_URL": url}
        figures["diagnostic"] = diagnostic(env, [BARE_GROUP_BY])
        assert figures["diagnostic"]["exit_code"] == 1, "the seeded violations must be found"

        log(f"3. alembic upgrade {BEFORE_PERIODS}, with the writer running")
        mig, mig_writer = await with_writer(url, writer, lambda: migrate(url, BEFORE_PERIODS))
        figures["migration"] = {
            **mig,
            "writer": mig_writer,
            "ratio_to_bare_total": round(mig["migration_s"] / base["bare_total_s"], 2),
        }

        log("4. alembic upgrade head (the periods backfill), with the writer running")
        periods, periods_writer = await with_writer(url, writer, lambda: migrate(url, "head"))
        bare_insert_s = await bare_periods_insert(url)
        figures["periods_backfill"] = {
            **periods,
            "writer": periods_writer,
            "bare_insert_s": round(bare_insert_s, 2),
            "ratio_to_bare_insert": round(periods["migration_s"] / bare_insert_s, 2),
            "periods": await count(url, "SELECT count(*) FROM care_team_periods"),
        }

        log("5. diagnostic at head (the rule and the periods) vs the bare queries")
        await execute(url, "VACUUM ANALYZE")
        figures["diagnostic_at_head"] = diagnostic(env, [BARE_GROUP_BY, BARE_OUT_OF_STEP])
        figures["after"] = {
            "patients_with_two_primaries": await count(
                url, f"SELECT count(*) FROM ({BARE_GROUP_BY}) d"
            ),
            "migration_dedupe_events": await count(
                url, "SELECT count(*) FROM care_team_events WHERE event_type = 'migration_dedupe'"
            ),
            "index_valid": await count(
                url,
                "SELECT count(*) FROM pg_index WHERE indisvalid AND indexrelid = "
                "'idx_unique_primary_provider_per_patient'::regclass",
            )
            == 1,
            "periods_out_of_step": await count(url, f"SELECT count(*) FROM ({BARE_OUT_OF_STEP}) d"),
            "diagnostic_exit_code": figures["diagnostic_at_head"]["exit_code"],
        }
        stall_base = base_writer.get("longest_stall_ms", 0)
        stall_mig = mig_writer.get("longest_stall_ms", 0)
        stall_periods = periods_writer.get("longest_stall_ms", 0)
        script_mb = max(
            figures["diagnostic"]["script_peak_rss_mb"],
            figures["diagnostic_at_head"]["script_peak_rss_mb"],
        )
        figures["summary"] = {
            "longest_stall_plain_build_ms": stall_base,
            "longest_stall_online_migration_ms": stall_mig,
            "longest_stall_periods_backfill_ms": stall_periods,
            "stall_target_200ms_met": max(stall_mig, stall_periods) < 200,
            "migration_ratio": figures["migration"]["ratio_to_bare_total"],
            "migration_ratio_target_3x_met": figures["migration"]["ratio_to_bare_total"] <= 3,
            "periods_backfill_ratio": figures["periods_backfill"]["ratio_to_bare_insert"],
            "diagnostic_ratio": figures["diagnostic"]["ratio"],
            "diagnostic_ratio_target_1_3x_met": figures["diagnostic"]["ratio"] <= 1.3,
            "diagnostic_at_head_ratio": figures["diagnostic_at_head"]["ratio"],
            "diagnostic_memory_target_200mb_met": script_mb < 200,
        }
        return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--patients-per-org",
        type=int,
        default=25_000,
        help="patients per organization (25000 gives 10M assignments)",
    )
    parser.add_argument(
        "--server-url",
        help="a PostgreSQL server to use instead of a throwaway embedded one (libpq URL)",
    )
    args = parser.parse_args()
    if args.patients_per_org < 100:
        parser.error("--patients-per-org must be at least 100 (1 in 100 gets two primaries)")
    figures = asyncio.run(run(args))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
