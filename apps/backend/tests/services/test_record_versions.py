"""Every version of a patient and a provider, read back (FHIR's vread and _history):
each change keeps the record as it left it, in the change's own transaction; the current
version's time is on every read; another organization's versions are not there."""

from __future__ import annotations

import asyncio
import datetime
import itertools

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from src.db import Database
from src.services.care_team_service import CareTeamService
from src.services.directory_service import (
    DirectoryService,
    Identifier,
    PatientRecord,
    RecordVersion,
)
from src.services.errors import PatientNotFound, ProviderNotFound
from tests.helpers import create_organization, set_tenant

MRN = "urn:example:clinic:mrn"


def values(record: PatientRecord) -> tuple[object, ...]:
    return (
        record.first_name,
        record.last_name,
        record.dob,
        record.gender,
        record.identifiers,
        record.version,
    )


async def tick() -> None:
    """Let the clock move on: now() is the transaction's start, microseconds apart."""
    await asyncio.sleep(0.01)


class TestPatientVersions:
    async def test_every_version_reads_back_with_its_values_and_time(self, db: AsyncSession):
        org = await create_organization(db)
        created = await DirectoryService.create_patient(
            db=db,
            organization_id=org,
            first_name="Ada",
            last_name="Lovelace",
            dob=datetime.date(1984, 2, 29),
            identifiers=[Identifier(MRN, "MRN-1")],
        )
        assert created.version == 1 and created.updated_at == created.created_at
        seen = [created]
        for change in (
            {"last_name": "Byron"},
            {"gender": "female"},
            {"dob": datetime.date(1985, 3, 4), "identifiers": [Identifier(MRN, "MRN-2")]},
            {"first_name": "Augusta", "identifiers": []},
        ):
            await tick()
            seen.append(
                await DirectoryService.update_patient(
                    db=db, organization_id=org, patient_id=created.id, **change
                )
            )
        assert [r.version for r in seen] == [1, 2, 3, 4, 5]
        times = [r.updated_at for r in seen]
        assert all(a is not None and b is not None and a < b for a, b in itertools.pairwise(times))

        for expected in seen:
            got = await DirectoryService.get_patient_version(
                db=db, organization_id=org, patient_id=created.id, version=expected.version
            )
            assert got is not None
            assert values(got) == values(expected), expected.version
            assert got.updated_at == expected.updated_at
            assert got.created_at == created.created_at
        # The first version as created, the last as read now.
        first = await DirectoryService.get_patient_version(
            db=db, organization_id=org, patient_id=created.id, version=1
        )
        assert first is not None
        assert (first.last_name, first.gender, first.identifiers) == (
            "Lovelace",
            "unknown",
            (Identifier(MRN, "MRN-1"),),
        )
        now = await DirectoryService.get_patient(db=db, organization_id=org, patient_id=created.id)
        assert values(now) == values(seen[-1]) and now.updated_at == seen[-1].updated_at

        versions = await DirectoryService.patient_versions(
            db=db, organization_id=org, patient_id=created.id
        )
        assert versions == [
            RecordVersion(r.version, r.updated_at, "created" if r.version == 1 else "updated", True)
            for r in reversed(seen)
        ]
        page = await DirectoryService.patient_versions(
            db=db, organization_id=org, patient_id=created.id, limit=2, before=4
        )
        assert [v.version for v in page] == [3, 2]

    async def test_a_version_it_never_had_is_none(self, db: AsyncSession):
        org = await create_organization(db)
        patient = await DirectoryService.create_patient(
            db=db, organization_id=org, first_name="A", last_name="B", dob=datetime.date(1990, 1, 1)
        )
        for version in (0, -1, 2, 99):
            assert (
                await DirectoryService.get_patient_version(
                    db=db, organization_id=org, patient_id=patient.id, version=version
                )
                is None
            ), version

    async def test_a_write_that_changes_nothing_makes_no_version(self, db: AsyncSession):
        org = await create_organization(db)
        patient = await DirectoryService.create_patient(
            db=db, organization_id=org, first_name="A", last_name="B", dob=datetime.date(1990, 1, 1)
        )
        await tick()
        same = await DirectoryService.update_patient(
            db=db, organization_id=org, patient_id=patient.id, last_name="B"
        )
        assert (same.version, same.updated_at) == (1, patient.updated_at)
        versions = await DirectoryService.patient_versions(
            db=db, organization_id=org, patient_id=patient.id
        )
        assert [v.version for v in versions] == [1]

    async def test_lists_carry_the_time_of_each_current_version(self, db: AsyncSession):
        org = await create_organization(db)
        ids = []
        for name in ("One", "Two", "Three"):
            record = await DirectoryService.create_patient(
                db=db,
                organization_id=org,
                first_name=name,
                last_name="X",
                dob=datetime.date(1990, 1, 1),
            )
            ids.append(record.id)
        await tick()
        changed = await DirectoryService.update_patient(
            db=db, organization_id=org, patient_id=ids[1], gender="other"
        )
        listed = await DirectoryService.list_patients(db=db, organization_id=org)
        by_id = {p.id: p for p in listed}
        assert by_id[ids[1]].updated_at == changed.updated_at
        assert by_id[ids[1]].updated_at > by_id[ids[1]].created_at  # type: ignore[operator]
        assert by_id[ids[0]].updated_at == by_id[ids[0]].created_at


class TestProviderVersions:
    async def test_every_version_reads_back_with_its_panel_then(self, db: AsyncSession):
        org = await create_organization(db)
        provider = await DirectoryService.create_provider(
            db=db, organization_id=org, first_name="Grace", last_name="Hopper"
        )
        patient = await DirectoryService.create_patient(
            db=db, organization_id=org, first_name="A", last_name="B", dob=datetime.date(1990, 1, 1)
        )
        await CareTeamService.assign_primary_provider(
            db=db, organization_id=org, patient_id=patient.id, provider_id=provider.id
        )
        await tick()
        second = await DirectoryService.update_provider(
            db=db, organization_id=org, provider_id=provider.id, npi="1234567893"
        )
        await tick()
        third = await DirectoryService.update_provider(
            db=db, organization_id=org, provider_id=provider.id, panel_capacity=5, last_name="H"
        )
        assert second.updated_at < third.updated_at  # type: ignore[operator]
        got = [
            await DirectoryService.get_provider_version(
                db=db, organization_id=org, provider_id=provider.id, version=v
            )
            for v in (1, 2, 3)
        ]
        assert [(r.npi, r.last_name, r.panel_capacity, r.panel_size) for r in got if r] == [
            (None, "Hopper", None, 0),  # created before the patient was on its panel
            ("1234567893", "Hopper", None, 1),
            ("1234567893", "H", 5, 1),
        ]
        assert [r.updated_at for r in got if r][1:] == [second.updated_at, third.updated_at]
        assert (
            await DirectoryService.get_provider_version(
                db=db, organization_id=org, provider_id=provider.id, version=4
            )
            is None
        )
        versions = await DirectoryService.provider_versions(
            db=db, organization_id=org, provider_id=provider.id
        )
        assert [(v.version, v.action, v.readable) for v in versions] == [
            (3, "updated", True),
            (2, "updated", True),
            (1, "created", True),
        ]


class TestTenants:
    async def test_another_organizations_versions_are_not_found(self, db: AsyncSession):
        mine, theirs = await create_organization(db), await create_organization(db)
        patient = await DirectoryService.create_patient(
            db=db,
            organization_id=theirs,
            first_name="A",
            last_name="B",
            dob=datetime.date(1990, 1, 1),
        )
        await DirectoryService.update_patient(
            db=db, organization_id=theirs, patient_id=patient.id, last_name="C"
        )
        provider = await DirectoryService.create_provider(
            db=db, organization_id=theirs, first_name="G", last_name="H"
        )
        with pytest.raises(PatientNotFound):
            await DirectoryService.get_patient_version(
                db=db, organization_id=mine, patient_id=patient.id, version=1
            )
        with pytest.raises(PatientNotFound):
            await DirectoryService.patient_versions(
                db=db, organization_id=mine, patient_id=patient.id
            )
        with pytest.raises(ProviderNotFound):
            await DirectoryService.get_provider_version(
                db=db, organization_id=mine, provider_id=provider.id, version=1
            )
        with pytest.raises(ProviderNotFound):
            await DirectoryService.provider_versions(
                db=db, organization_id=mine, provider_id=provider.id
            )
        # Its own organization reads them.
        assert await DirectoryService.get_patient_version(
            db=db, organization_id=theirs, patient_id=patient.id, version=1
        )

    async def test_the_application_role_sees_no_other_tenants_snapshots(
        self, db: AsyncSession, database: Database
    ):
        mine, theirs = await create_organization(db), await create_organization(db)
        patient = await DirectoryService.create_patient(
            db=db,
            organization_id=theirs,
            first_name="A",
            last_name="B",
            dob=datetime.date(1990, 1, 1),
        )
        count = text("SELECT count(*) FROM record_changes WHERE record_id = :p")
        async with database.app_engine.connect() as conn:
            await set_tenant(conn, mine)
            assert (await conn.execute(count, {"p": patient.id})).scalar_one() == 0
            await conn.rollback()
            await set_tenant(conn, theirs)
            snapshot = text(
                "SELECT snapshot->>'last_name' FROM record_changes WHERE record_id = :p"
            )
            assert (await conn.execute(snapshot, {"p": patient.id})).scalar_one() == "B"
            await conn.rollback()
