"""The access log's guarantee under load, against `careteam serve` over real HTTP (issue
26, "Tests and figures"): after 1,000 mixed requests from concurrent clients, every
acknowledged read and write is in the log exactly once; after `kill -9` of the server
under load, every request that was answered has its entry, and every request cut off
has at most one.

How a request is matched with its entry: each client has an API key of its own (the
entry's api_key_id), and every read, write and refusal names a patient no other request
names (a fresh patient, or for a 404 a random id), so (key, route, status, patient) is
one request's mark. A search names the patients its answer returned; searches are
counted by that mark. An answer 503 `access_log_unavailable` is not an acknowledgement:
like a request cut off, it may have an entry (its entry may have committed before the
answer was lost), at most one.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from src.db import Database
from src.services.organization_service import OrganizationService
from tests.helpers import LiveApi, create_organization, create_provider, set_tenant, start_serve

pytestmark = pytest.mark.slow

CARE_TEAM = "/v1/patients/{patient_id}/care-team"
READ = f"GET {CARE_TEAM}"
WRITE = f"PUT {CARE_TEAM}/primary"
FHIR_READ = "GET /fhir/R4/Patient/{ident}"
SEARCH = "GET /v1/patients"
SEARCH_PAGE = 3
KILL_AFTER = 300  # answers before the kill: the server is under load when it dies

# (api key id, route, status, the patients named, sorted); status None: no answer.
Mark = tuple[uuid.UUID, str, int | None, tuple[uuid.UUID, ...]]


@dataclass
class Workload:
    """An organization with fresh patients (each named by one request only), three
    providers, and an API key per client: (key id, key)."""

    organization_id: uuid.UUID
    patients: Iterator[uuid.UUID]
    providers: list[uuid.UUID]
    keys: list[tuple[uuid.UUID, str]]
    answered: list[Mark] = field(default_factory=list)  # acknowledged
    unanswered: list[Mark] = field(default_factory=list)  # cut off, or 503 unavailable


async def workload(
    database: Database, db: AsyncSession, *, clients: int, patients: int
) -> Workload:
    org = await create_organization(db, name="Load Clinic")
    await set_tenant(db, org)
    made = await db.execute(
        text(
            "INSERT INTO patients (organization_id, first_name, last_name, dob) "
            "SELECT :org, 'Load', 'Patient', DATE '1980-01-01' FROM generate_series(1, :n) "
            "RETURNING id"
        ),
        {"org": org, "n": patients},
    )
    fresh = list(made.scalars())
    await db.commit()
    providers = [await create_provider(db, organization_id=org) for _ in range(3)]
    keys = []
    async with AsyncSession(database.owner_engine) as owner:
        for _ in range(clients):
            issued = await OrganizationService.create_api_key(db=owner, organization_id=org)
            keys.append((issued.id, issued.key))
    return Workload(org, iter(fresh), providers, keys)


def unavailable(response: httpx.Response) -> bool:
    """503 access_log_unavailable (a problem, or an OperationOutcome under /fhir/R4)."""
    return response.status_code == 503 and "access log could not record" in response.text


async def one_request(
    client: httpx.AsyncClient,
    load: Workload,
    key_id: uuid.UUID,
    rng: random.Random,
    *,
    searches: bool,
) -> None:
    """A request of a random kind; its mark goes to `load.answered` or `unanswered`.
    Raises httpx.TransportError (after noting the request as unanswered) when it got no
    answer."""
    kinds = ["read", "fhir", "write", "missing", "invalid"] + (["search"] if searches else [])
    kind = rng.choices(kinds, weights=[30, 15, 25, 10, 10, 10][: len(kinds)])[0]
    patient = uuid.uuid4() if kind == "missing" else next(load.patients)
    route, named = {
        "read": (READ, (patient,)),
        "missing": (READ, (patient,)),
        "fhir": (FHIR_READ, (patient,)),
        "write": (WRITE, (patient,)),
        "invalid": (WRITE, (patient,)),
        "search": (SEARCH, ()),
    }[kind]
    try:
        if kind in ("read", "missing"):
            response = await client.get(f"/v1/patients/{patient}/care-team")
        elif kind == "fhir":
            response = await client.get(f"/fhir/R4/Patient/{patient}")
        elif kind == "search":
            response = await client.get("/v1/patients", params={"limit": SEARCH_PAGE})
        else:
            provider = str(rng.choice(load.providers)) if kind == "write" else "not-an-id"
            response = await client.put(
                f"/v1/patients/{patient}/care-team/primary", json={"provider_id": provider}
            )
    except httpx.TransportError:
        load.unanswered.append((key_id, route, None, named))
        raise
    if kind == "search" and response.status_code == 200:
        named = tuple(uuid.UUID(item["id"]) for item in response.json()["items"])
    mark = (key_id, route, response.status_code, tuple(sorted(named)))
    (load.unanswered if unavailable(response) else load.answered).append(mark)


async def logged(database: Database, load: Workload) -> Counter[Mark]:
    """The entries of the workload's keys, as marks, read as the owner."""
    async with database.owner_engine.connect() as owner:
        rows = await owner.execute(
            text(
                "SELECT api_key_id, route, status, patient_ids FROM access_log "
                "WHERE organization_id = :org AND api_key_id = ANY(:keys)"
            ),
            {"org": load.organization_id, "keys": [key_id for key_id, _ in load.keys]},
        )
        return Counter(
            (row.api_key_id, row.route, row.status, tuple(sorted(row.patient_ids))) for row in rows
        )


def client_for(base_url: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )


class TestEveryAcknowledgedRequestOnce:
    async def test_after_1000_mixed_requests(
        self, live_api: LiveApi, database: Database, db: AsyncSession
    ):
        clients, total = 8, 1_000
        load = await workload(database, db, clients=clients, patients=total)
        remaining = iter(range(total))

        async def run_client(number: int) -> None:
            key_id, key = load.keys[number]
            rng = random.Random(number)
            async with client_for(live_api.base_url, key) as client:
                for _ in remaining:
                    await one_request(client, load, key_id, rng, searches=True)

        await asyncio.gather(*(run_client(n) for n in range(clients)))
        assert len(load.answered) == total and not load.unanswered
        statuses = Counter(status for _, _, status, _ in load.answered)
        assert {200, 404, 422} <= set(statuses), statuses  # reads, writes and refusals
        assert any(route == SEARCH for _, route, _, _ in load.answered)
        found = await logged(database, load)
        assert found == Counter(load.answered)  # each exactly once, nothing else


async def quiet(database: Database, timeout_s: float = 30) -> None:
    """Wait until no other session of the database is running a statement (the killed
    server's: whatever it had sent, committed or not, is settled)."""
    deadline = time.monotonic() + timeout_s
    async with database.owner_engine.connect() as owner:
        while True:
            busy = (
                await owner.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                        "current_database() AND pid <> pg_backend_pid() AND state = 'active'"
                    )
                )
            ).scalar_one()
            await owner.rollback()
            if busy == 0:
                return
            assert time.monotonic() < deadline, f"{busy} sessions still active"
            await asyncio.sleep(0.1)


class TestKill9:
    async def test_nothing_acknowledged_is_missing(
        self, database: Database, database_url: str, db: AsyncSession, tmp_path: Path
    ):
        clients = 8
        load = await workload(database, db, clients=clients, patients=20_000)
        server = start_serve(
            {"DATABASE_URL": database_url}, tmp_path / "serve.log", "--log-level", "warning"
        )
        loaded, killed = asyncio.Event(), asyncio.Event()

        async def run_client(number: int) -> None:
            key_id, key = load.keys[number]
            rng = random.Random(number)
            async with client_for(server.base_url, key) as client:
                with pytest.raises(httpx.TransportError):  # the server dies under it
                    while True:
                        await one_request(client, load, key_id, rng, searches=False)
                        if len(load.answered) >= KILL_AFTER:
                            loaded.set()
            assert killed.is_set()

        async def kill_under_load() -> None:
            await loaded.wait()
            os.kill(server.process.pid, signal.SIGKILL)
            killed.set()

        try:
            await asyncio.wait_for(
                asyncio.gather(kill_under_load(), *(run_client(n) for n in range(clients))),
                120,
            )
        finally:
            if server.process.poll() is None:
                server.process.kill()
            server.process.wait()
        assert server.process.returncode == -signal.SIGKILL
        await quiet(database)

        found = await logged(database, load)
        answered = Counter(load.answered)
        assert answered - found == Counter(), "acknowledged requests without their entry"
        # What is left over belongs to requests without an answer: at most one each.
        extra = Counter[tuple[uuid.UUID, str, tuple[uuid.UUID, ...]]]()
        for (key_id, route, _status, named), n in (found - answered).items():
            extra[(key_id, route, named)] += n
        cut_off = Counter((key_id, route, named) for key_id, route, _, named in load.unanswered)
        assert extra - cut_off == Counter(), "an entry no request accounts for"
        assert len(load.answered) >= KILL_AFTER and load.unanswered  # killed mid-load
