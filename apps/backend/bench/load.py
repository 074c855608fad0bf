"""Concurrent load in one process, and its figures: what the benchmarks share.

No import from `src`: bench/assign_driver.py runs it against an earlier release's code.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg


def summarize(latencies: list[float], seconds: float, errors: int) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "ops_per_s": round(len(ordered) / seconds, 1),
        "p50_ms": round(statistics.median(ordered) * 1000, 2) if ordered else None,
        "p99_ms": round(ordered[max(0, int(len(ordered) * 0.99) - 1)] * 1000, 2)
        if ordered
        else None,
        "operations": len(ordered),
        "errors": errors,
    }


async def drive(
    clients: int, seconds: float, operation: Callable[[random.Random], Awaitable[None]]
) -> dict[str, Any]:
    """`clients` concurrent loops of `operation` for `seconds`; latencies of each call."""
    latencies: list[float] = []
    errors = 0
    first_error: str | None = None
    deadline = time.perf_counter() + seconds

    async def client(seed: int) -> None:
        nonlocal errors, first_error
        rng = random.Random(seed)
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await operation(rng)
            except Exception as err:  # counted; the benchmark goes on
                errors += 1
                first_error = first_error or f"{type(err).__name__}: {err}"[:300]
                continue
            latencies.append(time.perf_counter() - started)

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = time.perf_counter() - started
    figures = summarize(latencies, elapsed, errors)
    if first_error is not None:  # a load that fails says why, instead of a bare 0/s
        figures["first_error"] = first_error
    # How busy this process was: at 1.0 the client side is the limit, not PostgreSQL.
    cpu = time.process_time() - cpu_started
    figures["client_cpu_share_of_one_core"] = round(cpu / elapsed, 2)
    if latencies:
        figures["client_cpu_ms_per_call"] = round(1000 * cpu / len(latencies), 3)
    return figures


async def organization_with(
    conn: asyncpg.Connection, providers: int, patients: int
) -> tuple[Any, list[Any], list[Any]]:
    """A new organization with `providers` providers and `patients` patients, written as
    the owner: (its id, the patients' ids, the providers' ids), each list in id order."""
    org = await conn.fetchval("INSERT INTO organizations (name) VALUES ('bench') RETURNING id")
    await conn.execute(
        "INSERT INTO providers (organization_id, first_name, last_name) "
        "SELECT $1, 'P', g::text FROM generate_series(1, $2) g",
        org,
        providers,
    )
    await conn.execute(
        "INSERT INTO patients (organization_id) SELECT $1 FROM generate_series(1, $2)",
        org,
        patients,
    )
    ids = "SELECT id FROM {} WHERE organization_id = $1 ORDER BY id"
    provider_ids = [r[0] for r in await conn.fetch(ids.format("providers"), org)]
    patient_ids = [r[0] for r in await conn.fetch(ids.format("patients"), org)]
    return org, patient_ids, provider_ids
