"""Benchmark: a Bulk Data export of a large organization (issue 28): rows per second, peak
memory, the time against a bare `COPY ... TO` of the same rows, and the longest stall of
concurrent writers while it runs.

Usage (from apps/backend):

    uv run python bench/export.py [--patients 1000000] [--history 100000]
                                  [--providers 1000] [--writers 2]

A throwaway embedded PostgreSQL (or --server-url's server) gets one organization of
--patients patients (names, birth dates, an MRN each), --providers providers, each
record's creation in record_changes (as the API writes it), a primary for every patient
(an open period and its event) and, for --history of them, an earlier primary period with
another provider that has ended (their history), written in bulk as the owner. Then, in
this process:

1. the bare COPY: `COPY (SELECT * ...) TO STDOUT` of the organization's rows in every
   table the export reads (patients, identifiers, providers, record changes,
   assignments, periods, events), into files;
2. the export alone, as the server runs it (src/api/bulk_export.py, run_export: one
   snapshot read by three lanes at once, each type as COPY text a block at a time, the
   blocks of patients recorded in the access log), into a directory; its resident
   memory (VmRSS) sampled every 50 ms, and at each quarter of the Patients written;
   then the bare COPY again. The export's time against the mean of the two COPYs' is
   the ratio (the machines are small and noisy: both COPYs are reported); then one
   provider's Group-level export (its members' resources), timed;
3. --writers processes that each change a random patient's primary
   (careteam_assign_primary, one transaction each) in a loop: for --baseline-s with no
   export (the baseline), then throughout the same export run again. Their longest wait
   during it is the stall.

Targets: export time at most 3x the COPY's (`export_time_ratio_to_copy`), memory flat
(`rss_mb_at_quarters` does not grow with the population written), the longest writer
stall under 200 ms. Prints one JSON object (progress on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import random
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from common import log, throwaway_database
from sqlalchemy.ext.asyncio import AsyncSession

from src.api.bulk_export import TYPES, run_export
from src.config import get_settings
from src.db import open_database
from src.migration_runner import upgrade
from src.services.bulk_export import unkept_job
from src.services.export_storage import DirectoryStorage
from src.services.organization_service import OrganizationService

ASSIGN = "SELECT careteam_assign_primary($1, $2, $3, 'bench', 'other', NULL)"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def populate(conn: asyncpg.Connection, org: uuid.UUID, args: argparse.Namespace) -> None:
    """The organization's rows, in bulk, triggers off (consistent by construction: one
    open primary period and its event per patient, a closed earlier one for --history)."""
    await conn.execute("SET session_replication_role = replica")
    await conn.execute(
        "INSERT INTO providers (id, organization_id, first_name, last_name, npi) "
        "SELECT md5('prov' || j)::uuid, $1, 'Grace', 'Doctor' || j, NULL "
        "FROM generate_series(0, $2 - 1) j",
        org,
        args.providers,
    )
    log(f"{args.providers:,} providers; {args.patients:,} patients")
    await conn.execute(
        "INSERT INTO patients (id, organization_id, first_name, last_name, dob) "
        "SELECT md5('pat' || n)::uuid, $1, 'Pat', 'Ient' || n, "
        "date '1950-01-01' + (n % 20000) FROM generate_series(0, $2 - 1) n",
        org,
        args.patients,
    )
    log("an identifier (an MRN) per patient; each record's creation in record_changes")
    await conn.execute(
        "INSERT INTO patient_identifiers (organization_id, system, value, patient_id) "
        "SELECT $1, 'urn:example:mrn', 'MRN-' || n, md5('pat' || n)::uuid "
        "FROM generate_series(0, $2 - 1) n",
        org,
        args.patients,
    )
    await conn.execute(
        "INSERT INTO record_changes (organization_id, record_type, record_id, seq, action, "
        "fields, actor, version, snapshot) "
        "SELECT $1, 'patient', p.id, 1, 'created', '{}'::text[], 'bench', 1, jsonb_build_object("
        "'first_name', p.first_name, 'last_name', p.last_name, 'dob', p.dob, 'gender', "
        "p.gender, 'identifiers', jsonb_build_array(jsonb_build_array(i.system, i.value))) "
        "FROM patients AS p JOIN patient_identifiers AS i ON i.organization_id = $1 "
        "AND i.patient_id = p.id WHERE p.organization_id = $1 "
        "UNION ALL "
        "SELECT $1, 'provider', p.id, 1, 'created', '{}'::text[], 'bench', 1, jsonb_build_object("
        "'first_name', p.first_name, 'last_name', p.last_name, 'npi', p.npi) "
        "FROM providers AS p WHERE p.organization_id = $1",
        org,
    )
    log("primaries: assignments, periods, events")
    await conn.execute(
        "INSERT INTO care_team_assignments "
        "(organization_id, patient_id, provider_id, is_primary_provider) "
        "SELECT $1, md5('pat' || n)::uuid, md5('prov' || (n % $3))::uuid, true "
        "FROM generate_series(0, $2 - 1) n",
        org,
        args.patients,
        args.providers,
    )
    await conn.execute(
        "INSERT INTO care_team_periods (organization_id, patient_id, provider_id, role, valid, "
        "started_by, start_reason, ended_by, end_reason) "
        "SELECT $1::uuid, md5('pat' || n)::uuid, md5('prov' || ((n + 1) % $4))::uuid, "
        "'primary', "
        "tstzrange(now() - interval '400 days', now() - interval '30 days'), 'bench', "
        "'other', 'bench', 'other' FROM generate_series(0, $3 - 1) n "
        "UNION ALL "
        "SELECT $1, md5('pat' || n)::uuid, md5('prov' || (n % $4))::uuid, 'primary', "
        "tstzrange(now() - interval '30 days', NULL), 'bench', 'other', NULL, NULL "
        "FROM generate_series(0, $2 - 1) n",
        org,
        args.patients,
        args.history,
        args.providers,
    )
    await conn.execute(
        "INSERT INTO care_team_events (seq, organization_id, patient_id, provider_id, "
        "event_type, actor, reason, occurred_at) "
        "SELECT row_number() OVER (), $1, md5('pat' || n)::uuid, "
        "md5('prov' || (n % $3))::uuid, 'primary_assigned', 'bench', 'other', "
        "now() - interval '30 days' FROM generate_series(0, $2 - 1) n",
        org,
        args.patients,
        args.providers,
    )
    await conn.execute(
        "INSERT INTO care_team_event_sequences (organization_id, last_seq) VALUES ($1, $2) "
        "ON CONFLICT (organization_id) DO UPDATE SET last_seq = excluded.last_seq",
        org,
        args.patients,
    )
    await conn.execute("SET session_replication_role = DEFAULT")
    log("VACUUM ANALYZE, CHECKPOINT")
    await conn.execute("VACUUM ANALYZE")
    # The load's dirty pages written now, not by a checkpoint during the measures (a
    # server's steady state, not the aftermath of a bulk load).
    await conn.execute("CHECKPOINT")


# Every row the export's resources are made of (src/api/export_resources.py reads these
# tables and no other).
COPIES = {
    table: f"SELECT * FROM {table} WHERE organization_id = $1"
    for table in (
        "patients",
        "patient_identifiers",
        "providers",
        "record_changes",
        "care_team_assignments",
        "care_team_periods",
        "care_team_events",
    )
}


async def bare_copy(conn: asyncpg.Connection, org: uuid.UUID, out: Path) -> dict[str, Any]:
    """The COPY into files, timed; the files removed after (never written back to disk
    while the export is measured next: measured at 1,000,000 patients, their write-back
    made the export 36.4 s against 26.0 s, its own files synced behind them)."""
    started = time.perf_counter()
    rows = 0
    targets = [out / f"{table}.copy" for table in COPIES]
    for target, query in zip(targets, COPIES.values(), strict=True):
        status = await conn.copy_from_query(query, org, output=str(target))
        rows += int(status.split()[-1])
    seconds = time.perf_counter() - started
    for target in targets:
        target.unlink()
    return {"seconds": round(seconds, 2), "rows": rows}


def writer_process(url: str, org: str, sizes: tuple[int, int], channels: Any) -> None:
    """One writer: says it is ready once connected, then writes random primaries until
    stopped, at least one (`sizes`: how many patients and providers there are); sends
    (count, longest ms). `channels`: (the stop event, the ready queue, the results')."""
    patients, providers = sizes
    stop, ready, out = channels

    async def main() -> tuple[int, float]:
        conn = await asyncpg.connect(url)
        ready.put(os.getpid())
        rng = random.Random(os.getpid())
        longest, count = 0.0, 0
        try:
            while count == 0 or not stop.is_set():
                n, p = rng.randrange(patients), rng.randrange(providers)
                patient, provider = uuid.UUID(_md5(f"pat{n}")), uuid.UUID(_md5(f"prov{p}"))
                started = time.perf_counter()
                await conn.execute(ASSIGN, uuid.UUID(org), patient, provider)
                longest = max(longest, time.perf_counter() - started)
                count += 1
        finally:
            await conn.close()
        return count, longest * 1000

    out.put(asyncio.run(main()))


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def writers(url: str, org: uuid.UUID, args: argparse.Namespace) -> tuple[Any, Any, list[Any]]:
    """--writers writer processes, started and connected: (their stop event, their
    results' queue, the processes)."""
    context = multiprocessing.get_context("spawn")
    queue: Any = context.Queue()
    ready: Any = context.Queue()
    stop = context.Event()
    procs = [
        context.Process(
            target=writer_process,
            args=(url, str(org), (args.patients, args.providers), (stop, ready, queue)),
        )
        for _ in range(args.writers)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:  # each connected, and writing from now on
        ready.get(timeout=120)
    return stop, queue, procs


def collect(queue: Any, procs: list[Any]) -> dict[str, Any]:
    results = [queue.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    return {
        "writes": sum(c for c, _ in results),
        "longest_ms": round(max(m for _, m in results), 1),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with throwaway_database("export", args.server_url) as (url, _):
        database = open_database(get_settings(), url)
        conn = await asyncpg.connect(url)
        try:
            log("migrating a new database to head")
            await upgrade(database.owner_engine)
            async with AsyncSession(database.owner_engine) as owner:
                issued = await OrganizationService.create_organization(db=owner, name="Bench")
            org = issued.organization_id
            await populate(conn, org, args)
            with tempfile.TemporaryDirectory(prefix="careteam-export-bench-") as scratch:
                log("bare COPY of the same rows")
                copy = await bare_copy(conn, org, Path(scratch))
                log(f"COPY: {copy['rows']:,} rows in {copy['seconds']} s")

                log("the export alone (its time against the COPY's)")
                alone = await measure_export(database, issued, Path(scratch) / "alone", args)
                log("the bare COPY again")
                again = await bare_copy(conn, org, Path(scratch))
                log(f"COPY: {again['rows']:,} rows in {again['seconds']} s")

                log("one provider's Group-level export (its members' resources only)")
                group = await measure_group_export(database, issued, Path(scratch) / "group")
                log(f"Group export: {group['resources']:,} resources in {group['seconds']} s")

                log(f"baseline: {args.writers} writers for {args.baseline_s} s, no export")
                stop, queue, procs = await asyncio.to_thread(writers, url, org, args)
                await asyncio.sleep(args.baseline_s)
                stop.set()
                baseline = await asyncio.to_thread(collect, queue, procs)

                log(f"the export again, with {args.writers} writers throughout")
                stop, queue, procs = await asyncio.to_thread(writers, url, org, args)
                during = await measure_export(database, issued, Path(scratch) / "during", args)
                stop.set()
                during["writers"] = await asyncio.to_thread(collect, queue, procs)
        finally:
            await conn.close()
            await database.dispose()
    copies = (copy["seconds"] + again["seconds"]) / 2
    ratio = round(alone["seconds"] / copies, 2) if copies else None
    return {
        "patients": args.patients,
        "history_periods": args.history,
        "providers": args.providers,
        "copy": copy,
        "copy_after": again,
        "export": alone,
        "export_time_ratio_to_copy": ratio,
        "target_3x_copy_met": ratio is not None and ratio <= 3,
        "group_export": group,
        "export_with_writers": during,
        "writers_baseline": baseline,
        "writer_stall_target_200_ms_met": during["writers"]["longest_ms"] < 200,
    }


async def measure_export(
    database: Any, issued: Any, scratch: Path, args: argparse.Namespace
) -> dict[str, Any]:
    job = unkept_job(
        organization_id=issued.organization_id,
        requester=f"api_key:{issued.id}",
        request="bench",
        types=TYPES,
    )
    peak = [rss_mb()]
    before = peak[0]
    sampling = True

    def sample() -> None:
        while sampling:
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.05)

    quarters: dict[str, float] = {}

    def progress(kind: str, count: int) -> None:
        if kind == "Patient":
            for q in (1, 2, 3, 4):
                if count >= args.patients * q // 4 and str(q) not in quarters:
                    quarters[str(q)] = round(rss_mb(), 1)
        if count % 100_000 == 0:
            log(f"{kind}: {count:,}")

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    _, output, notices = await run_export(
        database.sessionmaker, DirectoryStorage(scratch), job, progress=progress,
        heartbeat_s=None,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    sampling = False
    sampler.join()
    resources = sum(o["count"] for o in output)
    log(f"export: {resources:,} resources in {seconds:.1f} s")
    return {
        "seconds": round(seconds, 2),
        "resources": resources,
        "by_type": {o["type"]: o["count"] for o in output},
        "notices": notices,  # resources changed after transactionTime (the writers')
        "resources_per_s": round(resources / seconds),
        "rss_mb_before": round(before, 1),
        "rss_mb_peak": round(peak[0], 1),
        "rss_mb_at_quarters_of_patients": quarters,
    }


async def measure_group_export(database: Any, issued: Any, scratch: Path) -> dict[str, Any]:
    """The Group-level export of the first provider (about patients / providers members):
    it reads those patients' rows, not the organization's."""
    job = unkept_job(
        organization_id=issued.organization_id,
        requester=f"api_key:{issued.id}",
        request="bench",
        level="group",
        group_id=uuid.UUID(_md5("prov0")),
        types=TYPES,
    )
    started = time.perf_counter()
    _, output, _ = await run_export(
        database.sessionmaker, DirectoryStorage(scratch), job, heartbeat_s=None
    )
    return {
        "seconds": round(time.perf_counter() - started, 3),
        "resources": sum(o["count"] for o in output),
        "by_type": {o["type"]: o["count"] for o in output},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=1_000_000)
    parser.add_argument(
        "--history", type=int, default=100_000, help="patients with an ended period"
    )
    parser.add_argument("--providers", type=int, default=1_000)
    parser.add_argument("--writers", type=int, default=2, help="concurrent writer processes")
    parser.add_argument("--baseline-s", type=float, default=5, help="seconds they write before it")
    parser.add_argument("--server-url", help="an existing server (default: a throwaway one)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
