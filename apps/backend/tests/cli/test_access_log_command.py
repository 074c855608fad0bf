"""`careteam access-log` (print a patient's entries) and `careteam access-log prune`."""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from src.db import Database
from src.services.access_log_service import AccessEntry, AccessLogService
from tests.helpers import careteam, create_clinic

ROUTE = "GET /v1/patients/{patient_id}/care-team"


def entry(org: uuid.UUID, patient: uuid.UUID, **overrides: Any) -> AccessEntry:
    fields: dict[str, Any] = {
        "organization_id": org,
        "api_key_id": uuid.uuid4(),
        "client_id": None,
        "route": ROUTE,
        "interaction": "read",
        "action": "R",
        "status": 200,
        "patient_ids": (patient,),
    }
    return AccessEntry(**{**fields, **overrides})


class TestAccessLogCommand:
    @pytest.fixture
    async def logged(self, db: AsyncSession, database: Database) -> tuple[uuid.UUID, uuid.UUID]:
        """A patient with three entries: one from seven years ago, two from now."""
        org, patient, _ = await create_clinic(db)
        old = entry(org, patient, status=404)
        for item in (old, entry(org, patient), entry(org, patient, status=403)):
            async with database.sessionmaker() as session:  # as the application writes
                await AccessLogService.record(db=session, entry=item)
        async with database.owner_engine.begin() as owner:
            for table, column in (("access_log", "id"), ("access_log_patients", "entry_id")):
                await owner.execute(
                    text(
                        f"UPDATE {table} SET recorded_at = recorded_at - interval '7 years' "
                        f"WHERE organization_id = :org AND {column} = :id"
                    ),
                    {"org": org, "id": old.id},
                )
        return org, patient

    def test_prints_a_patients_entries(self, logged: tuple[uuid.UUID, uuid.UUID]):
        org, patient = logged
        result = careteam("access-log", "--patient", str(patient), "--json")
        assert result.returncode == 0, result.stderr
        found = json.loads(result.stdout)
        assert found["organization_id"] == str(org)
        assert [e["status"] for e in found["items"]] == [404, 200, 403]  # oldest first
        assert all(e["patient_ids"] == [str(patient)] for e in found["items"])
        limited = json.loads(
            careteam("access-log", "--patient", str(patient), "--limit", "1", "--json").stdout
        )
        assert [e["status"] for e in limited["items"]] == [404]
        table = careteam("access-log", "--patient", str(patient))
        assert table.returncode == 0 and ROUTE in table.stdout and "3 entries" in table.stdout

    def test_prune_counts_then_deletes_only_the_old(self, logged: tuple[uuid.UUID, uuid.UUID]):
        org, _ = logged
        dry = careteam("access-log", "prune", "--older-than", "2190d")
        assert dry.returncode == 0, dry.stderr
        assert "DRY RUN: " in dry.stdout and "Add --execute to delete them" in dry.stdout
        # Every organization's old entries (other tests' too, in this database).
        counted = json.loads(
            careteam("access-log", "prune", "--older-than", "2190d", "--json").stdout
        )
        assert counted["dry_run"] and counted["older"] >= 1 and counted["deleted"] == 0
        done = careteam("access-log", "prune", "--older-than", "2190d", "--execute", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["deleted"] == counted["older"]
        left = json.loads(careteam("access-log", "--organization", str(org), "--json").stdout)
        assert [e["status"] for e in left["items"]] == [200, 403]
        again = careteam("access-log", "prune", "--older-than", "2190d", "--execute")
        assert "Deleted 0 access log entries" in again.stdout

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (("access-log",), "give --patient PATIENT_ID or --organization ORG_ID"),
            (("access-log", "--patient", "nope"), "PATIENT_ID must be a UUID"),
            (("access-log", "--organization", str(uuid.UUID(int=3)), "--after", "x"), "--after"),
            (("access-log", "prune", "--older-than", "6y"), "a number of days such as 2190d"),
            (("access-log", "prune", "--older-than", "0d"), "a number of days such as 2190d"),
            (("access-log", "prune", "--older-than", "999999d"), "at most 36500d"),
            (("access-log", "prune", "--older-than", "999999d", "--execute"), "at most 36500d"),
        ],
    )
    def test_bad_input_is_one_line(self, database: Database, args: tuple[str, ...], message: str):
        result = careteam(*args)
        assert result.returncode == 2, result.stdout + result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr

    def test_a_patient_no_organization_has(self, database: Database):
        unknown = str(uuid.uuid4())
        result = careteam("access-log", "--patient", unknown)
        assert result.returncode == 1
        assert f"patient {unknown} not found" in result.stderr


class TestPruneService:
    async def test_an_entrys_patient_rows_go_with_it_in_batches(
        self, db: AsyncSession, database: Database
    ):
        org, patient, _ = await create_clinic(db)
        other = uuid.uuid4()
        items = [entry(org, patient, patient_ids=(patient, other)) for _ in range(5)]
        for item in items:
            async with database.sessionmaker() as session:
                await AccessLogService.record(db=session, entry=item)
                await AccessLogService.record(db=session, entry=item)  # a retry: once
        async with database.owner_engine.begin() as owner:
            for table in ("access_log", "access_log_patients"):
                await owner.execute(
                    text(
                        f"UPDATE {table} SET recorded_at = recorded_at - interval '3 days' "
                        "WHERE organization_id = :org"
                    ),
                    {"org": org},
                )
        cutoff = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
        seen: list[int] = []
        async with AsyncSession(database.owner_engine) as owner_session:
            deleted = await AccessLogService.prune(
                db=owner_session, cutoff=cutoff, batch_size=2, progress=seen.append
            )
        assert deleted >= 5 and seen[-1] == deleted and len(seen) >= 3
        async with database.owner_engine.connect() as owner:
            for table in ("access_log", "access_log_patients"):
                left = await owner.execute(
                    text(f"SELECT count(*) FROM {table} WHERE organization_id = :org"),
                    {"org": org},
                )
                assert left.scalar_one() == 0, table
