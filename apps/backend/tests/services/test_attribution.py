"""Attribution over time: care team periods, reasons, capacity, transfers, deactivation;
on the production commit path, each test in an organization of its own."""

from __future__ import annotations

import asyncio
import datetime
import logging
import uuid

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from src.db import Database
from src.services.care_team_service import CareTeamService as Service
from src.services.directory_service import DirectoryService
from src.services.errors import (
    InvalidArgument,
    PanelFull,
    ProviderHasPatients,
    ProviderReferenceNotFound,
)
from src.services.panel_service import PanelRole, PanelService, PreviousProvider
from tests.helpers import create_clinic, create_patient, create_provider


async def periods_of(database: Database, patient: uuid.UUID) -> list[tuple[object, ...]]:
    """(provider, role, open?, start reason, end reason) of the patient's periods, read
    as the owner, oldest first (those that begin together: primary first)."""
    async with database.owner_engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT provider_id, role, upper_inf(valid) AS open, start_reason, end_reason "
                "FROM care_team_periods WHERE patient_id = :p ORDER BY lower(valid), role"
            ),
            {"p": patient},
        )
        return [tuple(row) for row in rows]


async def events_of(database: Database, org: uuid.UUID, reason: str) -> list[tuple[object, ...]]:
    """(number, patient, provider, type, previous primary) of the organization's events
    of one reason, read as the owner, in number order."""
    async with database.owner_engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT seq, patient_id, provider_id, event_type, previous_primary_provider_id "
                "FROM care_team_events WHERE organization_id = :org AND reason = :reason "
                "ORDER BY seq"
            ),
            {"org": org, "reason": reason},
        )
        return [tuple(row) for row in rows]


async def open_periods_match_assignments(database: Database, org: uuid.UUID) -> bool:
    async with database.owner_engine.connect() as conn:
        mismatches = (
            await conn.execute(
                text("""
                SELECT count(*) FROM (
                    SELECT patient_id, provider_id, is_primary_provider AS primary_now
                    FROM care_team_assignments WHERE organization_id = :org
                    EXCEPT
                    SELECT patient_id, provider_id, role = 'primary'
                    FROM care_team_periods WHERE organization_id = :org AND upper_inf(valid)
                ) AS missing
            """),
                {"org": org},
            )
        ).scalar_one()
        extra = (
            await conn.execute(
                text("""
                SELECT count(*) FROM care_team_periods AS p
                WHERE organization_id = :org AND upper_inf(valid) AND NOT EXISTS (
                    SELECT 1 FROM care_team_assignments AS a
                    WHERE a.organization_id = p.organization_id
                      AND a.patient_id = p.patient_id AND a.provider_id = p.provider_id)
            """),
                {"org": org},
            )
        ).scalar_one()
    return mismatches == 0 and extra == 0


class TestPeriodsFollowEveryChange:
    async def test_assign_change_add_remove_open_and_close_periods(
        self, db: AsyncSession, database: Database
    ):
        org, patient, (p1, p2, p3) = await create_clinic(db)
        await Service.assign_primary_provider(
            db=db,
            organization_id=org,
            patient_id=patient,
            provider_id=p1,
            reason="patient_request",
        )
        await Service.assign_primary_provider(
            db=db,
            organization_id=org,
            patient_id=patient,
            provider_id=p2,
            reason="panel_rebalance",
        )
        await Service.add_secondary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=p3
        )
        await Service.remove_provider(
            db=db,
            organization_id=org,
            patient_id=patient,
            provider_id=p1,
            reason="provider_left",
        )
        assert await periods_of(database, patient) == [
            (p1, "primary", False, "patient_request", "panel_rebalance"),
            (p2, "primary", True, "panel_rebalance", None),
            (p1, "secondary", False, "panel_rebalance", "provider_left"),
            (p3, "secondary", True, "other", None),
        ]
        assert await open_periods_match_assignments(database, org)

    async def test_a_change_that_began_first_but_locked_second_comes_after(
        self, db: AsyncSession, database: Database
    ):
        """A change happens at its transaction's start (now()); one that began before
        another but took the patient lock after it must still begin after it. (Under
        concurrent assignments, the earlier rule let its primary period start before
        the other's and overlap it: the exclusion constraint refused the assignment.)"""
        org, patient, (p1, p2, _) = await create_clinic(db)
        async with database.owner_engine.connect() as late:
            await late.execute(text("SELECT now()"))  # its transaction has begun
            await asyncio.sleep(0.01)
            await Service.assign_primary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=p1
            )
            await late.execute(
                text(
                    "SELECT * FROM careteam_assign_primary(:org, :patient, :provider, "
                    "'test', 'other', NULL)"
                ),
                {"org": org, "patient": patient, "provider": p2},
            )
            await late.commit()
        assert await periods_of(database, patient) == [
            (p1, "primary", False, "other", "other"),
            (p2, "primary", True, "other", None),
            (p1, "secondary", True, "other", None),
        ]
        assert await open_periods_match_assignments(database, org)

    @pytest.mark.parametrize("team_left", ["a primary", "nobody"])
    async def test_a_late_change_comes_after_a_removal_too(
        self, db: AsyncSession, database: Database, team_left: str
    ):
        """The latest instant recorded for a patient can be the end of a period, later
        than every open period's start (a removal), or there may be no open period at
        all (the team emptied). A change from a transaction that began before the
        removal still begins after it: periods never run backwards."""
        org, patient, (p1, p2, p3) = await create_clinic(db)
        await Service.assign_primary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=p1
        )
        async with database.owner_engine.connect() as late:
            await late.execute(text("SELECT now()"))  # its transaction has begun
            await asyncio.sleep(0.01)
            await Service.add_secondary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=p2
            )
            await Service.remove_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=p2
            )
            if team_left == "nobody":
                await Service.remove_provider(
                    db=db, organization_id=org, patient_id=patient, provider_id=p1
                )
            await late.execute(
                text("SELECT careteam_add_secondary(:org, :patient, :p, 'test', 'other', NULL)"),
                {"org": org, "patient": patient, "p": p3},
            )
            await late.commit()
        async with database.owner_engine.connect() as conn:
            latest_end, p3_start = (
                await conn.execute(
                    text(
                        "SELECT (SELECT max(upper(valid)) FROM care_team_periods "
                        "        WHERE patient_id = :p AND provider_id <> :p3), "
                        "       (SELECT lower(valid) FROM care_team_periods "
                        "        WHERE patient_id = :p AND provider_id = :p3)"
                    ),
                    {"p": patient, "p3": p3},
                )
            ).one()
        assert p3_start >= latest_end
        assert await open_periods_match_assignments(database, org)

    async def test_reasons_and_notes_are_stored_but_never_logged(
        self, db: AsyncSession, database: Database, caplog: pytest.LogCaptureFixture
    ):
        caplog.set_level(logging.DEBUG)
        org, patient, (p1, _, _) = await create_clinic(db)
        note = "Patient Quenby asked after her asthma review"
        await Service.assign_primary_provider(
            db=db,
            organization_id=org,
            patient_id=patient,
            provider_id=p1,
            reason="patient_request",
            note=note,
        )
        async with database.owner_engine.connect() as conn:
            event = (
                await conn.execute(
                    text("SELECT reason, note FROM care_team_events WHERE patient_id = :p"),
                    {"p": patient},
                )
            ).one()
            period = (
                await conn.execute(
                    text(
                        "SELECT start_reason, start_note FROM care_team_periods "
                        "WHERE patient_id = :p"
                    ),
                    {"p": patient},
                )
            ).one()
        assert tuple(event) == tuple(period) == ("patient_request", note)
        logged = caplog.text + " ".join(str(r.__dict__) for r in caplog.records)
        assert "Quenby" not in logged and "asthma" not in logged

    @pytest.mark.parametrize(
        ("reason", "note", "field"),
        [("holiday", None, "reason"), ("other", "x" * 501, "note")],
    )
    async def test_a_reason_off_the_vocabulary_or_a_long_note_writes_nothing(
        self, db: AsyncSession, database: Database, reason: str, note: str | None, field: str
    ):
        org, patient, (p1, _, _) = await create_clinic(db)
        with pytest.raises(InvalidArgument) as refused:
            await Service.assign_primary_provider(
                db=db,
                organization_id=org,
                patient_id=patient,
                provider_id=p1,
                reason=reason,
                note=note,
            )
        assert refused.value.field == field
        assert await periods_of(database, patient) == []


class TestTheDatabaseForbidsOverlaps:
    """Written directly in SQL, as the owner: the exclusion constraints refuse."""

    async def insert(self, database: Database, *rows: tuple[object, ...]) -> None:
        async with database.owner_engine.begin() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            await driver.executemany(
                "INSERT INTO care_team_periods (organization_id, patient_id, provider_id, "
                "role, valid, started_by, start_reason, ended_by, end_reason) "
                "VALUES ($1, $2, $3, $4, $5::tstzrange, 'test', 'other', "
                "CASE WHEN upper_inf($5::tstzrange) THEN NULL ELSE 'test' END, "
                "CASE WHEN upper_inf($5::tstzrange) THEN NULL ELSE 'other' END)",
                rows,
            )

    async def test_two_primaries_at_once_and_one_provider_twice_are_refused(
        self, db: AsyncSession, database: Database
    ):
        org, patient, (p1, p2, _) = await create_clinic(db)
        day = datetime.timedelta(days=1)
        t = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
        rng = asyncpg.Range
        with pytest.raises(asyncpg.ExclusionViolationError, match="one_primary"):
            await self.insert(
                database,
                (org, patient, p1, "primary", rng(t, t + 2 * day)),
                (org, patient, p2, "primary", rng(t + day, t + 3 * day)),
            )
        with pytest.raises(asyncpg.ExclusionViolationError, match="one_per_provider"):
            await self.insert(
                database,
                (org, patient, p1, "secondary", rng(t, t + 2 * day)),
                (org, patient, p1, "primary", rng(t + day, None)),
            )
        # One after the other, and secondaries side by side: allowed.
        await self.insert(
            database,
            (org, patient, p1, "primary", rng(t, t + day)),
            (org, patient, p2, "primary", rng(t + day, None)),
            (org, patient, p1, "secondary", rng(t + day, None)),
        )


async def test_an_assignment_records_the_demotion_then_the_promotion(
    db: AsyncSession, database: Database
):
    """careteam_assign_primary records its events after both changes, still in this
    order, numbered one after the other."""
    org, patient, (first, second, _) = await create_clinic(db)
    for provider in (first, second):
        await Service.assign_primary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=provider
        )
    rows = await events_of(database, org, "other")
    assert [row[2:] for row in rows] == [
        (first, "primary_assigned", None),
        (first, "primary_demoted", first),
        (second, "primary_assigned", first),
    ]
    first_number = int(str(rows[0][0]))
    assert [row[0] for row in rows] == [first_number, first_number + 1, first_number + 2]


class TestAsOf:
    async def test_the_team_before_between_and_after_changes(self, db: AsyncSession):
        org, patient, (p1, p2, _) = await create_clinic(db)
        before = datetime.datetime.now(datetime.UTC)
        await Service.assign_primary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=p1
        )
        between = datetime.datetime.now(datetime.UTC)
        await Service.assign_primary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=p2
        )
        after = datetime.datetime.now(datetime.UTC)

        async def at(instant: datetime.datetime) -> tuple[object, list[tuple[object, ...]]]:
            team = await Service.get_care_team(
                db=db, organization_id=org, patient_id=patient, as_of=instant
            )
            return team.primary_provider_id, [(m.provider_id, m.role) for m in team.members]

        assert await at(before) == (None, [])
        assert await at(between) == (p1, [(p1, "primary")])
        assert await at(after) == (p2, [(p2, "primary"), (p1, "secondary")])
        now = await Service.get_care_team(db=db, organization_id=org, patient_id=patient)
        assert [(m.provider_id, m.role) for m in now.members] == [
            (p2, "primary"),
            (p1, "secondary"),
        ]
        assert all(m.since is not None and between < m.since < after for m in now.members)
        assert (
            await Service.get_primary_provider(
                db=db, organization_id=org, patient_id=patient, as_of=between
            )
            == p1
        )


class TestCapacity:
    async def test_ten_of_fifty_simultaneous_assignments_fit_a_panel_of_ten(
        self, db: AsyncSession, database: Database
    ):
        org, _, (provider, _, _) = await create_clinic(db)
        patients = [await create_patient(db, organization_id=org) for _ in range(50)]
        await DirectoryService.update_provider(
            db=db, organization_id=org, provider_id=provider, panel_capacity=10
        )

        async def assign(patient: uuid.UUID) -> str:
            async with database.sessionmaker() as session:
                try:
                    await Service.assign_primary_provider(
                        db=session, organization_id=org, patient_id=patient, provider_id=provider
                    )
                except PanelFull:
                    return "panel_full"
                return "assigned"

        outcomes = await asyncio.gather(*(assign(p) for p in patients))
        assert outcomes.count("assigned") == 10 and outcomes.count("panel_full") == 40
        record = await DirectoryService.get_provider(
            db=db, organization_id=org, provider_id=provider
        )
        assert (record.panel_size, record.panel_capacity) == (10, 10)

    async def test_lowering_the_capacity_below_the_panel_stops_new_assignments_only(
        self, db: AsyncSession
    ):
        org, patient, (provider, _, _) = await create_clinic(db)
        second = await create_patient(db, organization_id=org)
        await Service.assign_primary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=provider
        )
        record = await DirectoryService.update_provider(
            db=db, organization_id=org, provider_id=provider, panel_capacity=0
        )
        assert (record.panel_size, record.panel_capacity) == (1, 0)
        with pytest.raises(PanelFull):
            await Service.assign_primary_provider(
                db=db, organization_id=org, patient_id=second, provider_id=provider
            )
        # Re-assigning the current primary changes nothing, and is not refused.
        team = await Service.assign_primary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=provider
        )
        assert team.changed is False
        with pytest.raises(InvalidArgument):
            await DirectoryService.update_provider(
                db=db, organization_id=org, provider_id=provider, panel_capacity=-1
            )


class TestTransfers:
    async def panel(
        self, db: AsyncSession, org: uuid.UUID, source: uuid.UUID, size: int
    ) -> list[uuid.UUID]:
        patients = [await create_patient(db, organization_id=org) for _ in range(size)]
        for patient in patients:
            await Service.assign_primary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=source
            )
        return patients

    async def test_an_interrupted_transfer_is_resumed_by_running_it_again(
        self, db: AsyncSession, database: Database
    ):
        org, _, (source, target, _) = await create_clinic(db)
        patients = await self.panel(db, org, source, 25)

        class Interrupted(Exception):
            pass

        def stop_after_the_second_batch(moved: int, total: int) -> None:
            if moved >= 10:
                raise Interrupted

        with pytest.raises(Interrupted):
            await PanelService.transfer_panel(
                db=db,
                organization_id=org,
                from_provider_id=source,
                to_provider_id=target,
                reason="provider_left",
                batch_size=5,
                progress=stop_after_the_second_batch,
            )
        middle = await DirectoryService.get_provider(db=db, organization_id=org, provider_id=source)
        assert middle.panel_size == 15  # two committed batches of five
        resumed = await PanelService.transfer_panel(
            db=db,
            organization_id=org,
            from_provider_id=source,
            to_provider_id=target,
            reason="provider_left",
            batch_size=5,
        )
        assert (resumed.moved, resumed.remaining, resumed.refused_capacity) == (15, 0, 0)
        again = await PanelService.transfer_panel(
            db=db,
            organization_id=org,
            from_provider_id=source,
            to_provider_id=target,
            reason="provider_left",
        )
        assert (again.moved, again.remaining) == (0, 0)
        panel = await PanelService.list_panel(
            db=db, organization_id=org, provider_id=target, limit=100
        )
        assert sorted(e.patient_id for e in panel) == sorted(patients)
        kept = await PanelService.list_panel(
            db=db, organization_id=org, provider_id=source, role=PanelRole.SECONDARY, limit=100
        )
        assert len(kept) == 25  # the source stays on each team, as a secondary
        assert await open_periods_match_assignments(database, org)

    async def test_the_targets_capacity_and_a_dry_run(self, db: AsyncSession):
        org, _, (source, target, _) = await create_clinic(db)
        await self.panel(db, org, source, 6)
        await DirectoryService.update_provider(
            db=db, organization_id=org, provider_id=target, panel_capacity=4
        )
        dry = await PanelService.transfer_panel(
            db=db,
            organization_id=org,
            from_provider_id=source,
            to_provider_id=target,
            reason="panel_rebalance",
            dry_run=True,
        )
        # What the run below answers: 4 would move, 2 would remain, for want of room.
        assert (dry.dry_run, dry.moved, dry.remaining, dry.refused_capacity) == (True, 4, 2, 2)
        unchanged = await DirectoryService.get_provider(
            db=db, organization_id=org, provider_id=source
        )
        assert unchanged.panel_size == 6
        done = await PanelService.transfer_panel(
            db=db,
            organization_id=org,
            from_provider_id=source,
            to_provider_id=target,
            reason="panel_rebalance",
            previous_provider=PreviousProvider.REMOVE,
        )
        assert (done.dry_run, done.moved, done.remaining, done.refused_capacity) == (
            False,
            4,
            2,
            2,
        )
        assert (
            await PanelService.list_panel(
                db=db, organization_id=org, provider_id=source, role=PanelRole.ANY
            )
        ).__len__() == 2  # removed from the four teams it left

    @pytest.mark.parametrize("previous", list(PreviousProvider))
    async def test_a_batch_records_its_events_after_its_changes_in_order(
        self, db: AsyncSession, database: Database, previous: PreviousProvider
    ):
        """The events come after the batch's changes (careteam_transfer_batch takes the
        event counter last): each moved patient's leaving event, then each one's
        primary_assigned, numbered one after the other, for the right providers."""
        org, _, (source, target, _) = await create_clinic(db)
        patients = sorted(await self.panel(db, org, source, 4))
        await PanelService.transfer_panel(
            db=db,
            organization_id=org,
            from_provider_id=source,
            to_provider_id=target,
            reason="provider_left",
            previous_provider=previous,
        )
        rows = await events_of(database, org, "provider_left")
        kept = previous is PreviousProvider.KEEP_AS_SECONDARY
        leaving = "primary_demoted" if kept else "provider_removed"
        assert [row[1:] for row in rows] == [
            *((p, source, leaving, source) for p in patients),
            *((p, target, "primary_assigned", source) for p in patients),
        ]
        first_number = int(str(rows[0][0]))
        assert [row[0] for row in rows] == list(range(first_number, first_number + 8))
        assert await open_periods_match_assignments(database, org)

    async def test_an_unknown_target_is_an_invalid_reference(self, db: AsyncSession):
        org, _, (source, _, _) = await create_clinic(db)
        with pytest.raises(ProviderReferenceNotFound) as refused:
            await PanelService.transfer_panel(
                db=db,
                organization_id=org,
                from_provider_id=source,
                to_provider_id=uuid.uuid4(),
                reason="other",
            )
        assert refused.value.field == "to_provider_id"


class TestDeactivation:
    async def test_a_provider_with_patients_cannot_be_deactivated(self, db: AsyncSession):
        org, patient, (provider, other, _) = await create_clinic(db)
        await Service.assign_primary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=provider
        )
        with pytest.raises(ProviderHasPatients) as refused:
            await DirectoryService.update_provider(
                db=db, organization_id=org, provider_id=provider, active=False
            )
        assert refused.value.patients == 1
        await PanelService.transfer_panel(
            db=db,
            organization_id=org,
            from_provider_id=provider,
            to_provider_id=other,
            reason="provider_left",
        )
        record = await DirectoryService.update_provider(
            db=db, organization_id=org, provider_id=provider, active=False
        )
        assert record.active is False


async def test_the_overview_counts_panels_and_patients_without_a_primary(db: AsyncSession):
    org, patient, (p1, p2, _) = await create_clinic(db)
    lonely = await create_patient(db, organization_id=org)
    await create_provider(db, organization_id=org)
    await Service.assign_primary_provider(
        db=db, organization_id=org, patient_id=patient, provider_id=p1
    )
    await Service.add_secondary_provider(
        db=db, organization_id=org, patient_id=lonely, provider_id=p2
    )
    report = await PanelService.report_panels(db=db, organization_id=org)
    sizes = {p.provider_id: p.panel_size for p in report.providers}
    assert sizes[p1] == 1 and sizes[p2] == 0 and len(sizes) == 4
    assert report.patients_without_primary == 1


async def period_rows_read(conn: AsyncConnection) -> int:
    """Rows and index entries of care_team_periods read so far in this transaction."""
    return int(
        (
            await conn.execute(
                text(
                    "SELECT sum(pg_stat_get_xact_tuples_returned(c.oid) "
                    "          + pg_stat_get_xact_tuples_fetched(c.oid)) "
                    "FROM pg_class AS c WHERE c.oid = 'care_team_periods'::regclass "
                    "OR c.oid IN (SELECT indexrelid FROM pg_index "
                    "             WHERE indrelid = 'care_team_periods'::regclass)"
                )
            )
        ).scalar_one()
    )


async def test_a_team_read_does_not_read_the_patients_whole_history(
    db: AsyncSession, database: Database
):
    """careteam_care_team finds each member's `since` among the patient's open periods
    (through the GiST index): a patient whose team changed hundreds of times costs a read
    about what a new one does. (It joined on upper_inf(), which no index serves: every
    member's read walked the whole history, 110 ms for 100 members at 5,000 periods.)"""
    org, patient, (p1, p2, p3) = await create_clinic(db)
    async with database.owner_engine.begin() as owner:
        await owner.execute(
            text(
                "SELECT careteam_assign_primary(:org, :patient, "
                "       CASE WHEN g % 2 = 0 THEN CAST(:p1 AS uuid) ELSE CAST(:p2 AS uuid) END, "
                "       'test', 'other', NULL) FROM generate_series(1, 300) AS g"
            ),
            {"org": org, "patient": patient, "p1": p1, "p2": p2},
        )
    await Service.add_secondary_provider(
        db=db, organization_id=org, patient_id=patient, provider_id=p3
    )
    async with database.owner_engine.connect() as owner:
        assert len(await periods_of(database, patient)) > 300
        await owner.execute(text("ANALYZE care_team_periods"))
        await owner.commit()
        before = await period_rows_read(owner)
        rows = (
            await owner.execute(
                text("SELECT * FROM careteam_care_team(:org, :patient, NULL)"),
                {"org": org, "patient": patient},
            )
        ).all()
        read = await period_rows_read(owner) - before
    assert len(rows) == 3 and all(row.since is not None for row in rows)
    assert read < 30, read
