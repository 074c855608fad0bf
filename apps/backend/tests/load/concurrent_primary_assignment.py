"""Concurrent primary assignment for one patient: every call succeeds, one primary remains.

As a script (from apps/backend), against DATABASE_URL or the embedded server:

    uv run python tests/load/concurrent_primary_assignment.py [--calls 100] [--providers 10]

It migrates to head, creates a fresh organization, patient and providers, fires the
calls at once (each on its own session and connection), and prints what it found.
pytest collects the same scenario at 10 and 100 calls.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

if not __package__:  # run as a script: make the `tests` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import text

from src.config import get_settings
from src.db import Database, open_database
from src.migration_runner import upgrade
from src.services.care_team_service import CareTeamService
from tests.helpers import (
    create_organization,
    create_patient,
    create_provider,
    set_tenant,
    with_owner,
)


@dataclass
class Outcome:
    calls: int
    succeeded: int
    errors: list[str]
    primaries: list[uuid.UUID]
    assigned_events: int
    last_committed_provider: uuid.UUID | None
    history_is_a_chain: bool  # each primary_assigned names the one before it as previous
    seconds: float


async def run_concurrent_assignments(database: Database, *, calls: int, providers: int) -> Outcome:
    """Fire `calls` concurrent assign_primary_provider calls at one fresh patient."""
    async with database.sessionmaker() as db:
        org = await create_organization(db)
        patient = await create_patient(db, organization_id=org)
        provider_ids = [await create_provider(db, organization_id=org) for _ in range(providers)]

    async def assign(i: int) -> None:
        async with database.sessionmaker() as db:
            await CareTeamService.assign_primary_provider(
                db=db,
                organization_id=org,
                patient_id=patient,
                provider_id=provider_ids[i % providers],
                actor=f"load-{i}",
            )

    started = time.perf_counter()
    results = await asyncio.gather(*(assign(i) for i in range(calls)), return_exceptions=True)
    seconds = time.perf_counter() - started
    errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]

    async with database.sessionmaker() as db:
        await set_tenant(db, org)
        params = {"org": org, "patient": patient}
        primaries = list(
            (
                await db.execute(
                    text(
                        "SELECT provider_id FROM care_team_assignments "
                        "WHERE organization_id = :org AND patient_id = :patient "
                        "AND is_primary_provider"
                    ),
                    params,
                )
            ).scalars()
        )
        assigned = (
            await db.execute(
                text(
                    "SELECT provider_id, previous_primary_provider_id FROM care_team_events "
                    "WHERE organization_id = :org AND patient_id = :patient "
                    "AND event_type = 'primary_assigned' ORDER BY id"
                ),
                params,
            )
        ).all()
        await db.commit()
    # The last primary_assigned event is the last assignment to commit a change.
    last = assigned[-1].provider_id if assigned else None
    chain = all(
        event.previous_primary_provider_id == (assigned[i - 1].provider_id if i else None)
        for i, event in enumerate(assigned)
    )
    return Outcome(
        calls, calls - len(errors), errors, primaries, len(assigned), last, chain, seconds
    )


async def _main(calls: int, providers: int) -> int:
    database = with_owner(open_database(get_settings()))
    try:
        await upgrade(database.owner_engine)
        outcome = await run_concurrent_assignments(database, calls=calls, providers=providers)
    finally:
        await database.dispose()
    print(
        f"{outcome.calls} concurrent assign_primary_provider calls over {providers} providers "
        f"in {outcome.seconds:.2f}s"
    )
    print(f"  succeeded: {outcome.succeeded}, failed: {len(outcome.errors)}")
    for error in outcome.errors[:5]:
        print(f"    {error}")
    print(
        f"  primaries at the end: {len(outcome.primaries)}; "
        f"primary_assigned events: {outcome.assigned_events}"
    )
    print(f"  event log is one unbroken chain of changes: {outcome.history_is_a_chain}")
    ok = (
        not outcome.errors
        and outcome.primaries == [outcome.last_committed_provider]
        and outcome.history_is_a_chain
    )
    print("✅ exactly one primary, the last to commit" if ok else "❌ invariant broken")
    return 0 if ok else 1


class TestConcurrentPrimaryAssignment:
    async def _check(self, database: Database, calls: int) -> None:
        outcome = await run_concurrent_assignments(database, calls=calls, providers=10)
        assert outcome.errors == []
        assert outcome.succeeded == calls
        assert len(outcome.primaries) == 1
        # Last to commit wins, and every change is in the event log.
        assert outcome.primaries == [outcome.last_committed_provider]
        assert 1 <= outcome.assigned_events <= calls
        assert outcome.history_is_a_chain

    async def test_10_concurrent_calls(self, database: Database):
        await self._check(database, 10)

    async def test_100_concurrent_calls(self, database: Database):
        await self._check(database, 100)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--providers", type=int, default=10)
    args = parser.parse_args()
    sys.exit(asyncio.run(_main(args.calls, args.providers)))
