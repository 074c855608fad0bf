"""The periods migration builds every patient's periods from the history that was kept
(events) and the present (assignments)."""

from __future__ import annotations

import datetime
import uuid

from src.migration_runner import downgrade, upgrade
from tests.helpers import FreshDatabase

BEFORE_PERIODS = "20261128_app_role_login"
T0 = datetime.datetime(2025, 3, 1, 9, 0, tzinfo=datetime.UTC)


def at(days: int) -> datetime.datetime:
    return T0 + datetime.timedelta(days=days)


class History:
    """Rows written as the service wrote them before periods existed."""

    def __init__(self, db: FreshDatabase) -> None:
        self.db = db

    async def org(self) -> uuid.UUID:
        rows = await self.db.execute("INSERT INTO organizations (name) VALUES ('h') RETURNING id")
        self.org_id: uuid.UUID = rows[0][0]
        return self.org_id

    async def row(self, table: str) -> uuid.UUID:
        rows = await self.db.execute(
            f"INSERT INTO {table} (organization_id) VALUES (:org) RETURNING id", org=self.org_id
        )
        return rows[0][0]

    async def event(
        self,
        patient: uuid.UUID,
        provider: uuid.UUID,
        kind: str,
        day: int,
        reason: str | None = None,
    ) -> None:
        await self.db.execute(
            "INSERT INTO care_team_events (organization_id, patient_id, provider_id, "
            "event_type, actor, reason, occurred_at) "
            "VALUES (:org, :patient, :provider, :kind, 'old-service', :reason, :at)",
            org=self.org_id,
            patient=patient,
            provider=provider,
            kind=kind,
            reason=reason,
            at=at(day),
        )

    async def assignment(
        self, patient: uuid.UUID, provider: uuid.UUID, *, primary: bool, day: int
    ) -> None:
        await self.db.execute(
            "INSERT INTO care_team_assignments (organization_id, patient_id, provider_id, "
            "is_primary_provider, assigned_at) VALUES (:org, :patient, :provider, :primary, :at)",
            org=self.org_id,
            patient=patient,
            provider=provider,
            primary=primary,
            at=at(day),
        )


async def periods(db: FreshDatabase, patient: uuid.UUID) -> list[tuple[object, ...]]:
    rows = await db.execute(
        "SELECT provider_id, role, lower(valid) AS start, upper(valid) AS finish, "
        "start_reason, end_reason, start_note FROM care_team_periods "
        "WHERE patient_id = :p ORDER BY lower(valid), role",
        p=patient,
    )
    return [tuple(row) for row in rows]


class TestBackfill:
    async def test_history_then_the_present(self, fresh_database: FreshDatabase):
        db = fresh_database
        await upgrade(db.engine, BEFORE_PERIODS)
        h = History(db)
        await h.org()
        p1, p2, p3 = [await h.row("providers") for _ in range(3)]
        with_history, without, odd = [await h.row("patients") for _ in range(3)]

        # A patient whose whole story is in the events.
        await h.event(with_history, p1, "primary_assigned", 0)
        await h.event(with_history, p1, "primary_demoted", 10)
        await h.event(with_history, p2, "primary_assigned", 10)
        await h.event(with_history, p3, "secondary_added", 20)
        await h.event(with_history, p1, "provider_removed", 30, reason="Retired in March")
        await h.assignment(with_history, p2, primary=True, day=10)
        await h.assignment(with_history, p3, primary=False, day=20)
        # A patient from before events were kept: only assignments.
        await h.assignment(without, p1, primary=True, day=5)
        await h.assignment(without, p2, primary=False, day=6)
        # A patient whose events do not explain its present.
        await h.event(odd, p1, "secondary_added", 1)
        await h.assignment(odd, p3, primary=True, day=2)

        await upgrade(db.engine)

        assert await periods(db, with_history) == [
            (p1, "primary", at(0), at(10), "other", "other", None),
            (p2, "primary", at(10), None, "other", None, None),
            (p1, "secondary", at(10), at(30), "other", "other", None),
            (p3, "secondary", at(20), None, "other", None, None),
        ]
        # The free-text reason of an old event is kept, as the note of an `other` change.
        ended = await db.execute(
            "SELECT end_note FROM care_team_periods WHERE patient_id = :p AND provider_id = :v "
            "AND role = 'secondary'",
            p=with_history,
            v=p1,
        )
        assert ended == [("Retired in March",)]
        correction = "opened from the assignment: no event explains it"
        assert await periods(db, without) == [
            (p1, "primary", at(5), None, "data_correction", None, correction),
            (p2, "secondary", at(6), None, "data_correction", None, correction),
        ]
        odd_periods = await periods(db, odd)
        assert [(p, role, finish is None) for p, role, _, finish, *_ in odd_periods] == [
            (p1, "secondary", False),  # the event's member, not on the team: closed
            (p3, "primary", True),  # the present, which no event explains: opened
        ]
        assert odd_periods[0][5] == "data_correction"

    async def test_a_rollback_loses_nothing_and_it_applies_again(
        self, fresh_database: FreshDatabase
    ):
        db = fresh_database
        await upgrade(db.engine, BEFORE_PERIODS)
        h = History(db)
        await h.org()
        provider, patient = await h.row("providers"), await h.row("patients")
        await h.event(patient, provider, "primary_assigned", 0)
        await h.assignment(patient, provider, primary=True, day=0)
        await upgrade(db.engine)
        first = await periods(db, patient)
        await db.execute(
            "UPDATE care_team_events SET note = 'kept' WHERE patient_id = :p", p=patient
        )
        await db.execute("UPDATE providers SET panel_capacity = 7 WHERE id = :v", v=provider)
        await downgrade(db.engine, BEFORE_PERIODS)
        assert await db.execute("SELECT to_regclass('care_team_periods')") == [(None,)]
        # What was written meanwhile is still there.
        assert await db.execute("SELECT note FROM care_team_events") == [("kept",)]
        assert await db.execute("SELECT panel_capacity FROM providers") == [(7,)]
        await upgrade(db.engine)
        assert await periods(db, patient) == first
