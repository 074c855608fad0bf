"""Benchmark: assignment and read throughput against PostgreSQL's own limit (pgbench).

Usage (from apps/backend):

    uv run python bench/throughput.py [--seconds 10] [--clients 1,8,32]

It starts a throwaway embedded PostgreSQL (or uses --server-url's server, on a database
of its own), migrates it, and creates 10 organizations with 10,000 patients and 100
providers each, every patient with a team of two (a primary, a secondary), whose ids
are md5-derived from their numbers so that pgbench and Python pick the very same rows.
The server runs with its default durability (synchronous_commit on); --async-commit
turns it off for that database, for pgbench and the service alike, to compare the two
where the CPU, not the disk's fsync, is the limit. Then, in one run, for each client count:

- pgbench runs the statement one assignment sends, generated from the service's own
  SQL constant (careteam_change_team: tenant, patient lock with the provider check,
  demote, promote, events, read-back, in one implicit transaction), as the
  application role: the baseline;
- the same through CareTeamService, N concurrent clients in one Python process, each
  call in a new session (as an HTTP request has);
- (at 8 clients) the same with each client keeping one session for the whole measure,
  as each pgbench client keeps its one connection;
- (at 8 clients) the hot spot: every client on one patient, service and pgbench;
- (at 8 clients) reads, against pgbench's read of the same rows (the care-team
  statement, which sets the tenant itself, as the service sends it; and the same in
  BEGIN, tenant, query, COMMIT):
  get_primary_provider and get_care_team through the service (a session per call),
  both again with held sessions, and pgbench's read sent with asyncpg alone (no service
  code: the ceiling of a Python client on this driver);
- (at 8 clients) the HTTP API: one uvicorn worker (`careteam serve`), loaded by a second
  process with PUT .../care-team/primary (without, then with an Idempotency-Key of its
  own on each request), GET .../care-team, and GET /healthz (no key,
  no database: the most this server answers at all); the floor of a route on the same
  machine (bench/floor_app.py: a FastAPI route with nothing of ours, empty and with the
  care-team statement on a plain asyncpg pool); the PUT again against a worker with
  DB_POOL_SIZE=4 (the PUT's tail depends on how many backends are busy at once); then
  the three against `serve --workers 2`.

Prints one JSON object: throughput (operations per second), p50/p99 latency (and the
PUT's p99 over its p50), errors, and every ratio to the pgbench figure of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import psutil
import uvloop
from common import log, throwaway_database
from load import drive, summarize
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from src.config import BACKEND_DIR, get_settings
from src.db import Database, application_url, open_database
from src.embedded import client_program
from src.migration_runner import upgrade
from src.models import ChangeReason
from src.services import care_team_service as care_team
from src.services.care_team_service import CareTeamService
from src.services.organization_service import OrganizationService
from src.services.transaction import Sql

ORGS, PATIENTS_PER_ORG, PROVIDERS_PER_ORG = 10, 10_000, 100
PATIENTS = ORGS * PATIENTS_PER_ORG


def md5_uuid(text: str) -> uuid.UUID:
    return uuid.UUID(hashlib.md5(text.encode()).hexdigest())


# Computed once, before the measures: the load generator shares the process with the
# service, and its own work should not count against it.
ORG_IDS = [md5_uuid(f"org{k}") for k in range(ORGS)]
PROVIDER_IDS = [
    [md5_uuid(f"prov{k}-{j}") for j in range(PROVIDERS_PER_ORG + 1)] for k in range(ORGS)
]


def org_id(n: int) -> uuid.UUID:
    return ORG_IDS[n % ORGS]


@functools.cache
def patient_id(n: int) -> uuid.UUID:
    return md5_uuid(f"pat{n}")


def provider_id(n: int, j: int) -> uuid.UUID:
    return PROVIDER_IDS[n % ORGS][j]


def warm_ids() -> None:
    for n in range(1, PATIENTS + 1):
        patient_id(n)


# The same ids, computed by PostgreSQL from pgbench's variables.
SQL_ORG = "md5('org' || :n % 10)::uuid"
SQL_PATIENT = "md5('pat' || :n)::uuid"
SQL_PROVIDER = "md5('prov' || :n % 10 || '-' || :j)::uuid"


def as_pgbench(statement: Any, **overrides: str) -> str:
    """A service statement with its bind parameters replaced by pgbench expressions."""
    values = {
        "org": SQL_ORG,
        "patient": SQL_PATIENT,
        "provider": SQL_PROVIDER,
        "actor": "'pgbench'",
        "reason": f"'{ChangeReason.OTHER}'",
        "note": "NULL",
        "key": "NULL",
        **overrides,
    }
    sql = str(statement.text)
    # From the last position down, so that $1 never takes the front of $10.
    for position in range(len(statement.names), 0, -1):
        sql = sql.replace(f"${position}", values[statement.names[position - 1]])
    return " ".join(sql.split()) + ";"


# The statement that begins each transaction of the service (after BEGIN, in the same
# round trip): the tenant, and no API key to check (pgbench has none).
ENTER = Sql("SELECT careteam_enter($1, NULL)", "org")

# One assignment: the very statement CareTeamService.assign_primary_provider sends
# (taken from its module), alone, in an implicit transaction: careteam_change_team sets
# the tenant, runs the write function (patient lock, provider lock and check, demote,
# promote, events; the trigger writes the periods) and reads the team back (no
# Idempotency-Key, as the benchmark's requests send none).
PGBENCH_ASSIGN = (
    "\n".join(
        [
            f"\\set n random(1, {PATIENTS})",
            f"\\set j random(1, {PROVIDERS_PER_ORG})",
            as_pgbench(
                care_team.WRITE,
                op="'assign_primary'",
                if_version="NULL",
                write_id="gen_random_uuid()",
                idempotency_key="NULL",
                fingerprint="NULL",
            ),
        ]
    )
    + "\n"
)

# What get_care_team sends, for the read baseline: one statement (careteam_care_team
# sets the tenant itself), in an implicit transaction.
PGBENCH_READ = f"\\set n random(1, {PATIENTS})\n{as_pgbench(care_team.SELECT_TEAM)}\n"

# The read as it was measured before the team became one statement: BEGIN with the
# tenant, the query, COMMIT (the same work in four statements).
PGBENCH_READ_IN_TRANSACTION = (
    "\n".join(
        [
            f"\\set n random(1, {PATIENTS})",
            "BEGIN;",
            as_pgbench(ENTER),
            as_pgbench(care_team.SELECT_TEAM),
            "COMMIT;",
        ]
    )
    + "\n"
)


# --- data -------------------------------------------------------------------------------


async def populate(url: str, *, async_commit: bool) -> None:
    conn = await asyncpg.connect(url)
    try:
        if async_commit:
            # Every later connection to this database, pgbench's and the service's alike.
            await conn.execute(
                await conn.fetchval(
                    "SELECT format('ALTER DATABASE %I SET synchronous_commit = off', "
                    "current_database())"
                )
            )
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(
            "INSERT INTO organizations (id, name) "
            "SELECT md5('org' || k)::uuid, 'Bench ' || k FROM generate_series(0, $1 - 1) k",
            ORGS,
        )
        await conn.execute(
            "INSERT INTO providers (id, organization_id, first_name, last_name) "
            "SELECT md5('prov' || k || '-' || j)::uuid, md5('org' || k)::uuid, 'P', j::text "
            "FROM generate_series(0, $1 - 1) k, generate_series(1, $2) j",
            ORGS,
            PROVIDERS_PER_ORG,
        )
        await conn.execute(
            "INSERT INTO patients (id, organization_id) "
            "SELECT md5('pat' || n)::uuid, md5('org' || n % 10)::uuid "
            "FROM generate_series(1, $1) n",
            PATIENTS,
        )
        # Every patient starts with a team (a primary and a secondary), so that the
        # measures run on a table in its steady state, with statistics to match: on an
        # empty, just-ANALYZEd table the first measure ran on plans made for no rows,
        # several times slower, whichever client came first.
        await conn.execute(
            "INSERT INTO care_team_assignments "
            "(organization_id, patient_id, provider_id, is_primary_provider) "
            "SELECT md5('org' || n % 10)::uuid, md5('pat' || n)::uuid, "
            "md5('prov' || n % 10 || '-' || j)::uuid, j = 1 + n % $2 "
            "FROM generate_series(1, $1) n, "
            "unnest(ARRAY[1 + n % $2, 1 + (n + 1 + n % 7) % $2]) j",
            PATIENTS,
            PROVIDERS_PER_ORG,
        )
        await conn.execute("SET session_replication_role = DEFAULT")
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


# --- pgbench -----------------------------------------------------------------------------


def pgbench(
    url: str, script: str, clients: int, seconds: float, *, hot: bool = False
) -> dict[str, Any]:
    """Run pgbench as the application role; per-transaction latencies from its log."""
    parts = urlsplit(url)
    host = parse_qs(parts.query).get("host", [parts.hostname or "localhost"])[0]
    with tempfile.TemporaryDirectory() as tmp:
        script_path = Path(tmp) / "script.sql"
        body = script.replace(f"\\set n random(1, {PATIENTS})", "\\set n 1") if hot else script
        script_path.write_text(body)
        env = {
            **os.environ,
            "PGOPTIONS": "-c role=careteam_app",
            "PGHOST": host,
            "PGUSER": parts.username or "postgres",
        }
        if parts.port:
            env["PGPORT"] = str(parts.port)
        args = [
            str(client_program("pgbench")),
            "-n",
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            str(min(clients, 2)),
            "-T",
            str(int(seconds)),
            "-f",
            str(script_path),
            "-l",
            "--log-prefix",
            str(Path(tmp) / "log"),
            parts.path.lstrip("/"),
        ]
        result = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"pgbench failed: {result.stderr}")
        latencies = []
        for log_file in Path(tmp).glob("log*"):
            for line in log_file.read_text().splitlines():
                latencies.append(int(line.split()[2]) / 1e6)
    tps = float(re.search(r"tps = ([\d.]+)", result.stdout).group(1))  # type: ignore[union-attr]
    failed = re.search(r"number of failed transactions: (\d+)", result.stdout)
    summary = summarize(latencies, seconds, int(failed.group(1)) if failed else 0)
    summary["ops_per_s"] = round(tps, 1)
    return summary


# --- the service, in this process ---------------------------------------------------------


Call = Callable[[AsyncSession, random.Random], Awaitable[None]]


async def drive_service(
    database: Database, clients: int, seconds: float, call: Call, *, held: bool = False
) -> dict[str, Any]:
    """`call` from `clients` concurrent clients: each call in a new session, as an HTTP
    request has; or, `held`, each client keeping one session (and so one pooled
    connection) for the whole measure, as each pgbench client keeps its connection."""
    if not held:

        async def per_call(rng: random.Random) -> None:
            async with database.sessionmaker() as db:
                await call(db, rng)

        return await drive(clients, seconds, per_call)
    kept: dict[int, AsyncSession] = {}

    async def in_kept(rng: random.Random) -> None:
        db = kept.get(id(rng))
        if db is None:
            db = kept[id(rng)] = database.sessionmaker()
        await call(db, rng)

    try:
        return await drive(clients, seconds, in_kept)
    finally:
        for db in kept.values():
            await db.close()


def service_assign(*, hot: bool = False) -> Call:
    async def assign(db: AsyncSession, rng: random.Random) -> None:
        n = 1 if hot else rng.randint(1, PATIENTS)
        await CareTeamService.assign_primary_provider(
            db=db,
            organization_id=org_id(n),
            patient_id=patient_id(n),
            provider_id=provider_id(n, rng.randint(1, PROVIDERS_PER_ORG)),
            actor="bench",
        )

    return assign


def service_read(*, team: bool) -> Call:
    async def read(db: AsyncSession, rng: random.Random) -> None:
        n = rng.randint(1, PATIENTS)
        if team:
            await CareTeamService.get_care_team(
                db=db, organization_id=org_id(n), patient_id=patient_id(n)
            )
        else:
            await CareTeamService.get_primary_provider(
                db=db, organization_id=org_id(n), patient_id=patient_id(n)
            )

    return read


async def driver_read(db: AsyncSession, rng: random.Random) -> None:
    """The ceiling of any Python client on this driver: pgbench's read (the care-team
    statement) sent with asyncpg alone, on the connection the client's held session
    checked out once, with no service code."""
    n = rng.randint(1, PATIENTS)
    driver = db.info.get("driver")
    if driver is None:
        connection = await db.connection()
        driver = db.info["driver"] = connection.sync_connection.connection.driver_connection  # type: ignore[union-attr]
    params = {"org": org_id(n), "patient": patient_id(n), "key": None}
    await care_team.SELECT_TEAM.fetch(driver, params)


# --- the HTTP API, with the load from a second process ------------------------------------


def http_request(
    rng: random.Random, keys: list[str], load: str
) -> tuple[str, str, dict[str, str] | None, str]:
    """A random (method, path, JSON body) of the `load`, and the key of the patient's
    organization. Loads: "write" (PUT .../care-team/primary), "write_keyed" (the same,
    each request with an Idempotency-Key of its own), "read" (GET .../care-team),
    "healthz" (GET /healthz: no key, no database; the most this server answers at all);
    and, against bench/floor_app.py, "floor_empty" and "floor_team"."""
    if load == "healthz":
        return "GET", "/healthz", None, ""
    n = rng.randint(1, PATIENTS)
    if load in FLOOR_LOADS:  # bench/floor_app.py
        suffix = "/team" if load == "floor_team" else ""
        return "GET", f"/floor/{org_id(n)}/{patient_id(n)}{suffix}", None, ""
    key = keys[n % ORGS]
    if load == "read":
        return "GET", f"/v1/patients/{patient_id(n)}/care-team", None, key
    provider = provider_id(n, rng.randint(1, PROVIDERS_PER_ORG))  # write, write_keyed
    body = {"provider_id": str(provider)}
    return "PUT", f"/v1/patients/{patient_id(n)}/care-team/primary", body, key


def http_load_main(base_url: str, keys_json: str, clients: int, seconds: float, load: str) -> None:
    """The load generator process: `clients` loops of http_request()."""
    keys = json.loads(keys_json)

    async def run() -> dict[str, Any]:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as client:

            async def call(rng: random.Random) -> None:
                method, path, body, key = http_request(rng, keys, load)
                # No key (GET /healthz): no Authorization header at all; httpx refuses
                # the value "Bearer " with nothing after it.
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                if load == "write_keyed":
                    headers["Idempotency-Key"] = uuid.uuid4().hex
                response = await client.request(method, path, json=body, headers=headers)
                response.raise_for_status()

            return await drive(clients, seconds, call)

    print(json.dumps(uvloop.run(run())))


WRK_SCRIPT = """
local requests = {%s}
local n = #requests
local keyed, prefix, sent = %KEYED%, "%PREFIX%", 0
request = function()
  local r = requests[math.random(n)]
  local headers = {["Authorization"] = r[3], ["Content-Type"] = "application/json"}
  if keyed then
    sent = sent + 1
    headers["Idempotency-Key"] = prefix .. sent
  end
  return wrk.format(r[4], r[1], headers, r[2])
end
"""


async def wrk_load(
    base_url: str, keys: list[str], clients: int, seconds: float, load: str
) -> dict[str, Any]:
    """wrk (a C load generator, second process): 5,000 random http_request()s."""
    rng = random.Random(5)
    entries = []
    for _ in range(5000):
        method, path, body, key = http_request(rng, keys, load)
        fields = (
            json.dumps(path),
            "nil" if body is None else json.dumps(json.dumps(body)),
            json.dumps(f"Bearer {key}"),
            json.dumps(method),
        )
        entries.append("{" + ", ".join(fields) + "}")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            WRK_SCRIPT.replace("%s", ",\n".join(entries))
            .replace("%KEYED%", "true" if load == "write_keyed" else "false")
            # Keys unique to this run, so that no request replays another's.
            .replace("%PREFIX%", uuid.uuid4().hex)
        )
    process = await asyncio.create_subprocess_exec(
        "wrk",
        # One thread drives these rates (about 1,000 requests/s) with ease; a second only
        # takes CPU from the server and PostgreSQL on 2 cores. (pgbench keeps two: one
        # thread would limit its 18,000 reads/s.)
        "-t",
        "1",
        "-c",
        str(clients),
        "-d",
        f"{int(seconds)}s",
        "--latency",
        "-s",
        script.name,
        base_url,
        stdout=asyncio.subprocess.PIPE,
    )
    out_bytes, _ = await process.communicate()
    os.unlink(script.name)
    out = out_bytes.decode()

    def latency_ms(label: str) -> float | None:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)", out, re.M)
        if not match:
            return None
        scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
        return round(float(match.group(1)) * scale, 2)

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "ops_per_s": round(rps, 1),
        "p50_ms": latency_ms("50"),
        "p99_ms": latency_ms("99"),
        "errors": int(non_2xx.group(1)) if non_2xx else 0,
        "load_generator": "wrk",
    }


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time so far of a process and its living children (the workers
    of `serve --workers N`), or None if it is gone."""
    try:
        process = psutil.Process(pid)
        total = 0.0
        for each in [process, *process.children(recursive=True)]:
            times = each.cpu_times()
            total += times.user + times.system
    except psutil.Error:
        return None
    return total


def server_cpu(
    pid: int, before: float | None, figures: dict[str, Any], seconds: float
) -> dict[str, Any]:
    """How busy the server (all its processes) was during the load: its share of one
    core, and its CPU time per request."""
    after = process_cpu_seconds(pid)
    if before is None or after is None or not figures["ops_per_s"]:
        return {}
    used = after - before
    return {
        "server_cpu_share_of_one_core": round(used / seconds, 2),
        "server_cpu_ms_per_request": round(1000 * used / (figures["ops_per_s"] * seconds), 3),
    }


async def wait_until_warm(base_url: str, timeout_s: float = 60) -> None:
    """Until the server answers and its start-up violation check (a scan of every
    patient, in the same process) has finished: the load measures the steady state."""
    deadline = time.perf_counter() + timeout_s
    async with httpx.AsyncClient(base_url=base_url, timeout=1) as probe:
        while time.perf_counter() < deadline:
            try:
                metrics = (await probe.get("/metrics")).text
            except httpx.HTTPError:
                metrics = ""
            if re.search(r"^careteam_violation_check_timestamp_seconds [1-9]", metrics, re.M):
                return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the server at {base_url} did not get ready in {timeout_s:.0f} s")


async def wait_until_answers(url: str, timeout_s: float = 60) -> None:
    deadline = time.perf_counter() + timeout_s
    async with httpx.AsyncClient(timeout=1) as probe:
        while time.perf_counter() < deadline:
            try:
                if (await probe.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout_s:.0f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def http_benchmark(
    url: str,
    database: Database,
    clients: int,
    seconds: float,
    loads: tuple[str, ...],
    *,
    workers: int = 1,
    pool_size: int | None = None,
) -> dict[str, dict[str, Any]]:
    """`careteam serve --workers N` (uvicorn) loaded from a second process with each of
    `loads` (see http_request) in turn: the figures of each (server CPU: the parent
    process, which with one worker is the worker itself). `pool_size`: the server's
    DB_POOL_SIZE (default: the setting's own)."""
    keys = []
    async with AsyncSession(database.owner_engine) as owner:
        for k in range(ORGS):
            issued = await OrganizationService.create_api_key(db=owner, organization_id=org_id(k))
            keys.append(issued.key)
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "src.cli",
        "serve",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--workers",
        str(workers),
        cwd=BACKEND_DIR,
        env={
            **os.environ,
            "DATABASE_URL": url,
            # A small pool leaves no room for an export's lanes (none runs here).
            **({"DB_POOL_SIZE": str(pool_size), "EXPORT_WORKERS": "0"} if pool_size else {}),
        },
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        base_url = f"http://127.0.0.1:{port}"
        await wait_until_warm(base_url)
        results = {}
        for load in loads:
            log(f"HTTP, {clients} clients: {load}")
            cpu_before = process_cpu_seconds(server.pid)
            figures = await http_load(base_url, keys, clients, seconds, load)
            results[load] = {**figures, **server_cpu(server.pid, cpu_before, figures, seconds)}
        return results
    finally:
        server.send_signal(2)
        await asyncio.wait_for(server.wait(), timeout=30)


FLOOR_LOADS = ("floor_empty", "floor_team")


async def floor_benchmark(url: str, clients: int, seconds: float) -> dict[str, dict[str, Any]]:
    """bench/floor_app.py under uvicorn as `careteam serve` runs it (one worker,
    httptools, uvloop), loaded like the API: the floor of a route, empty and with the
    care-team statement on a plain asyncpg pool."""
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "uvicorn",
        "floor_app:app",
        "--port",
        str(port),
        "--http",
        "httptools",
        "--loop",
        "uvloop",
        "--log-level",
        "warning",
        "--no-access-log",
        cwd=BACKEND_DIR / "bench",
        env={
            **os.environ,
            "FLOOR_DATABASE_URL": application_url(get_settings(), url),
            "PYTHONPATH": str(BACKEND_DIR),
        },
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        base_url = f"http://127.0.0.1:{port}"
        await wait_until_answers(f"{base_url}/floor/{org_id(1)}/{patient_id(1)}/team")
        results = {}
        for load in FLOOR_LOADS:
            log(f"HTTP floor, {clients} clients: {load}")
            cpu_before = process_cpu_seconds(server.pid)
            figures = await http_load(base_url, [], clients, seconds, load)
            results[load] = {**figures, **server_cpu(server.pid, cpu_before, figures, seconds)}
        return results
    finally:
        server.send_signal(2)
        await asyncio.wait_for(server.wait(), timeout=30)


async def http_load(
    base_url: str, keys: list[str], clients: int, seconds: float, load: str
) -> dict[str, Any]:
    """wrk when installed; otherwise the Python load generator (slower than the server)."""
    if shutil.which("wrk"):
        return await wrk_load(base_url, keys, clients, seconds, load)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--http-load",
        base_url,
        json.dumps(keys),
        str(clients),
        str(seconds),
        load,
        cwd=BACKEND_DIR,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    return {**json.loads(out), "load_generator": "python httpx (wrk not installed)"}


# --- the run -------------------------------------------------------------------------------


def ratio(part: dict[str, Any], whole: dict[str, Any]) -> float:
    return round(part["ops_per_s"] / whole["ops_per_s"], 2) if whole["ops_per_s"] else 0.0


def tail(figures: dict[str, Any]) -> float | None:
    """p99 over p50: how far the slowest hundredth is from the typical request."""
    if not figures.get("p50_ms") or figures.get("p99_ms") is None:
        return None
    return round(figures["p99_ms"] / figures["p50_ms"], 1)


def http_reads(
    http: dict[str, dict[str, Any]], read_base: dict[str, Any], in_transaction: dict[str, Any]
) -> dict[str, Any]:
    """The HTTP read's figures and its ratios: to pgbench's read (the statement the
    service sends), to the same read in a transaction of four statements (the earlier
    baseline), and to GET /healthz on the same server."""
    return {
        "get_care_team": http["read"],
        "get_care_team_ratio": ratio(http["read"], read_base),
        "get_care_team_ratio_to_read_in_transaction": ratio(http["read"], in_transaction),
        "get_care_team_ratio_to_healthz": ratio(http["read"], http["healthz"]),
        "healthz": http["healthz"],
        "healthz_ratio_to_read_baseline": ratio(http["healthz"], read_base),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with throwaway_database("tput", args.server_url) as (url, _):
        return await measure(args, url)


async def measure(args: argparse.Namespace, url: str) -> dict[str, Any]:
    database = open_database(get_settings(), url)
    try:
        await upgrade(database.owner_engine)
        log(f"populating {PATIENTS:,} patients")
        await populate(url, async_commit=args.async_commit)
        warm_ids()
        figures: dict[str, Any] = {
            "patients": PATIENTS,
            "seconds_per_measure": args.seconds,
            "synchronous_commit": "off" if args.async_commit else "on",
            "assign": {},
        }
        for clients in args.clients:
            log(f"assign, {clients} client(s): pgbench, then the service")
            base = pgbench(url, PGBENCH_ASSIGN, clients, args.seconds)
            service = await drive_service(database, clients, args.seconds, service_assign())
            figures["assign"][str(clients)] = {
                "pgbench": base,
                "service": service,
                "ratio": ratio(service, base),
            }
        eight = figures["assign"].get("8")
        if not eight:
            return figures
        log("assign, 8 clients, each keeping its session (as pgbench keeps its connection)")
        held = await drive_service(database, 8, args.seconds, service_assign(), held=True)
        eight["service_held_session"] = held
        eight["held_session_ratio"] = ratio(held, eight["pgbench"])
        log("HTTP API, 8 clients (second process) against one uvicorn worker: assign")
        http = await http_benchmark(url, database, 8, args.seconds, ("write", "write_keyed"))
        figures["http_8"] = {
            "assign": http["write"],
            "assign_ratio": ratio(http["write"], eight["pgbench"]),
            "assign_p99_over_p50": tail(http["write"]),
            "assign_keyed": http["write_keyed"],
            "assign_keyed_ratio_to_assign": ratio(http["write_keyed"], http["write"]),
        }
        # The PUT's tail comes from more busy PostgreSQL backends than cores, not from
        # the API (docs/PERFORMANCE.md, "Latency"): the same load with a pool of 4.
        log("HTTP API, 8 clients, DB_POOL_SIZE=4: assign")
        small_pool = await http_benchmark(url, database, 8, args.seconds, ("write",), pool_size=4)
        figures["http_8_pool_4"] = {
            "assign": small_pool["write"],
            "assign_ratio": ratio(small_pool["write"], eight["pgbench"]),
            "assign_p99_over_p50": tail(small_pool["write"]),
        }
        log("hot spot: 8 clients on one patient")
        hot_base = pgbench(url, PGBENCH_ASSIGN, 8, args.seconds, hot=True)
        hot = await drive_service(database, 8, args.seconds, service_assign(hot=True))
        async with database.owner_engine.connect() as conn:
            primaries = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM care_team_assignments WHERE patient_id = :p "
                        "AND is_primary_provider"
                    ),
                    {"p": patient_id(1)},
                )
            ).scalar_one()
        figures["hot_spot_8"] = {
            "pgbench": hot_base,
            "service": hot,
            "ratio": ratio(hot, hot_base),
            "primaries_at_end": primaries,
        }
        log("reads, 8 clients: pgbench, the service, asyncpg alone")
        read_base = pgbench(url, PGBENCH_READ, 8, args.seconds)
        reads: dict[str, Any] = {"pgbench": read_base}
        for name, call, held_session in [
            ("get_primary_provider", service_read(team=False), False),
            ("get_care_team", service_read(team=True), False),
            ("get_primary_provider_held_session", service_read(team=False), True),
            ("get_care_team_held_session", service_read(team=True), True),
            ("driver_alone_held_connection", driver_read, True),
        ]:
            reads[name] = await drive_service(database, 8, args.seconds, call, held=held_session)
            reads[f"{name}_ratio"] = ratio(reads[name], read_base)
        figures["reads_8"] = reads
        log("reads, 8 clients: pgbench, the same read in BEGIN, tenant, query, COMMIT")
        read_in_transaction = pgbench(url, PGBENCH_READ_IN_TRANSACTION, 8, args.seconds)
        reads["pgbench_in_transaction"] = read_in_transaction
        log("HTTP API, 8 clients: GET .../care-team, then GET /healthz")
        http = await http_benchmark(url, database, 8, args.seconds, ("read", "healthz"))
        figures["http_8"] |= http_reads(http, read_base, read_in_transaction)
        floor = await floor_benchmark(url, 8, args.seconds)
        figures["http_8"] |= {
            **floor,
            "get_care_team_ratio_to_floor_team": ratio(http["read"], floor["floor_team"]),
            "floor_team_ratio_to_healthz": ratio(floor["floor_team"], http["healthz"]),
            "floor_empty_ratio_to_healthz": ratio(floor["floor_empty"], http["healthz"]),
        }
        log("HTTP API, 8 clients, serve --workers 2: assign, GET .../care-team, GET /healthz")
        two = await http_benchmark(
            url, database, 8, args.seconds, ("write", "read", "healthz"), workers=2
        )
        figures["http_8_two_workers"] = {
            "assign": two["write"],
            "assign_ratio": ratio(two["write"], eight["pgbench"]),
            **http_reads(two, read_base, read_in_transaction),
        }
        return figures
    finally:
        await database.dispose()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--http-load":
        http_load_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]), sys.argv[6])
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measure")
    parser.add_argument(
        "--clients",
        default="1,8,32",
        help="client counts for the assignment measure (8 adds the rest)",
    )
    parser.add_argument("--server-url", help="a PostgreSQL server to use (libpq URL)")
    parser.add_argument(
        "--async-commit",
        action="store_true",
        help="synchronous_commit off for the benchmark's database (pgbench and the service "
        "alike): compare where the CPU, not the disk's fsync time, is the limit",
    )
    args = parser.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    # uvloop, as uvicorn uses it in production ("uvicorn[standard]").
    print(json.dumps(uvloop.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
