"""CareTeamService and the unique-primary index, on a real PostgreSQL as the app role."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from src.db import Database
from src.log_config import JsonFormatter
from src.models import UNIQUE_PRIMARY_INDEX
from src.services.care_team_service import CareTeamService
from src.services.errors import (
    DatabaseError,
    PatientNotFound,
    PrimaryProviderConflict,
    ProviderAlreadyPrimary,
    ProviderInactive,
    ProviderNotOnCareTeam,
    ProviderReferenceNotFound,
)
from tests.helpers import (
    create_clinic,
    create_patient,
    create_provider,
    event_types,
    set_tenant,
    team_rows,
    wait_until_blocked,
)

Service = CareTeamService


class TestIndexEnforcement:
    async def test_raw_sql_second_primary_is_refused_by_the_index(self, db: AsyncSession):
        org, patient, (p1, p2, _) = await create_clinic(db)
        await set_tenant(db, org)
        insert = text(
            "INSERT INTO care_team_assignments "
            "(organization_id, patient_id, provider_id, is_primary_provider) "
            "VALUES (:org, :patient, :provider, true)"
        )
        await db.execute(insert, {"org": org, "patient": patient, "provider": p1})
        with pytest.raises(IntegrityError) as refused:
            await db.execute(insert, {"org": org, "patient": patient, "provider": p2})
        assert UNIQUE_PRIMARY_INDEX in str(refused.value)
        assert refused.value.orig.__cause__.constraint_name == UNIQUE_PRIMARY_INDEX  # type: ignore[union-attr]

    async def test_raw_sql_update_to_second_primary_is_refused(self, db: AsyncSession):
        org, patient, (p1, p2, _) = await create_clinic(db)
        await Service.assign_primary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=p1
        )
        await Service.add_secondary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=p2
        )
        await set_tenant(db, org)
        with pytest.raises(IntegrityError, match=UNIQUE_PRIMARY_INDEX):
            await db.execute(
                text(
                    "UPDATE care_team_assignments SET is_primary_provider = true "
                    "WHERE organization_id = :org AND patient_id = :patient"
                ),
                {"org": org, "patient": patient},
            )

    async def test_many_secondaries_are_allowed(self, db: AsyncSession):
        org, patient, providers = await create_clinic(db, providers=5)
        for provider in providers:
            await Service.add_secondary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=provider
            )
        assert await team_rows(db, org, patient) == dict.fromkeys(providers, False)

    async def test_index_definition_is_exactly_the_rule(self, db: AsyncSession):
        indexdef = (
            await db.execute(
                text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"),
                {"name": UNIQUE_PRIMARY_INDEX},
            )
        ).scalar_one()
        assert indexdef == (
            f"CREATE UNIQUE INDEX {UNIQUE_PRIMARY_INDEX} ON public.care_team_assignments "
            "USING btree (organization_id, patient_id) WHERE (is_primary_provider = true)"
        )


class TestAssignPrimaryProvider:
    async def test_first_primary(self, db: AsyncSession):
        org, patient, (p1, _, _) = await create_clinic(db)
        team = await Service.assign_primary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=p1
        )
        assert team.primary_provider_id == p1
        assert (
            await Service.get_primary_provider(db=db, organization_id=org, patient_id=patient) == p1
        )
        assert await event_types(db, org, patient) == ["primary_assigned"]

    async def test_change_demotes_old_primary_to_secondary(self, db: AsyncSession):
        org, patient, (p1, p2, _) = await create_clinic(db)
        await Service.assign_primary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=p1
        )
        team = await Service.assign_primary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=p2
        )
        assert team.primary_provider_id == p2
        assert [(m.provider_id, m.is_primary_provider) for m in team.members] == [
            (p2, True),
            (p1, False),
        ]
        assert await team_rows(db, org, patient) == {p1: False, p2: True}
        assert await event_types(db, org, patient) == [
            "primary_assigned",
            "primary_demoted",
            "primary_assigned",
        ]

    async def test_promoting_a_secondary_keeps_one_row_per_provider(self, db: AsyncSession):
        org, patient, (p1, p2, _) = await create_clinic(db)
        await Service.add_secondary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=p2
        )
        await Service.assign_primary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=p1
        )
        await Service.assign_primary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=p2
        )
        assert await team_rows(db, org, patient) == {p1: False, p2: True}

    async def test_assigning_the_current_primary_is_idempotent(self, db: AsyncSession):
        org, patient, (p1, _, _) = await create_clinic(db)
        for _ in range(3):
            await Service.assign_primary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=p1
            )
        assert await team_rows(db, org, patient) == {p1: True}
        assert await event_types(db, org, patient) == ["primary_assigned"]

    async def test_inactive_provider_is_refused(self, db: AsyncSession):
        org, patient, _ = await create_clinic(db)
        inactive = await create_provider(db, organization_id=org, active=False)
        with pytest.raises(ProviderInactive):
            await Service.assign_primary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=inactive
            )

    async def test_unknown_patient(self, db: AsyncSession):
        org, _, (p1, _, _) = await create_clinic(db)
        with pytest.raises(PatientNotFound):
            await Service.assign_primary_provider(
                db=db, organization_id=org, patient_id=uuid.uuid4(), provider_id=p1
            )

    async def test_unknown_provider(self, db: AsyncSession):
        org, patient, _ = await create_clinic(db)
        with pytest.raises(ProviderReferenceNotFound):
            await Service.assign_primary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=uuid.uuid4()
            )


class TestAddSecondaryProvider:
    async def test_adds_without_touching_the_primary(self, db: AsyncSession):
        org, patient, (p1, p2, p3) = await create_clinic(db)
        await Service.assign_primary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=p1
        )
        await Service.add_secondary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=p2
        )
        team = await Service.add_secondary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=p3
        )
        assert team.primary_provider_id == p1
        assert await team_rows(db, org, patient) == {p1: True, p2: False, p3: False}

    async def test_current_primary_cannot_become_secondary(self, db: AsyncSession):
        org, patient, (p1, _, _) = await create_clinic(db)
        await Service.assign_primary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=p1
        )
        with pytest.raises(ProviderAlreadyPrimary):
            await Service.add_secondary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=p1
            )
        assert await team_rows(db, org, patient) == {p1: True}

    async def test_adding_an_existing_secondary_changes_nothing(
        self, db: AsyncSession, caplog: pytest.LogCaptureFixture
    ):
        """The log said "secondary provider added" for each of three requests when one
        event was written: a line says what the write did."""
        org, patient, (p1, p2, _) = await create_clinic(db)
        caplog.set_level(logging.INFO, logger="src.services.care_team_service")
        for _ in range(2):
            await Service.add_secondary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=p2
            )
            await Service.assign_primary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=p1
            )
        assert await event_types(db, org, patient) == ["secondary_added", "primary_assigned"]
        lines = [r.getMessage().split(" organization_id")[0] for r in caplog.records]
        assert lines == [
            "secondary provider add: changed",
            "primary provider assign: changed",
            "secondary provider add: unchanged",
            "primary provider assign: unchanged",
        ]
        assert [getattr(r, "changed", None) for r in caplog.records] == [True, True, False, False]


class TestRemoveProvider:
    async def test_removing_the_primary_leaves_no_primary(self, db: AsyncSession):
        org, patient, (p1, p2, _) = await create_clinic(db)
        await Service.assign_primary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=p1
        )
        await Service.add_secondary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=p2
        )
        team = await Service.remove_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=p1
        )
        assert team.primary_provider_id is None
        assert [m.provider_id for m in team.members] == [p2]
        history = await Service.get_care_team_history(
            db=db, organization_id=org, patient_id=patient
        )
        assert history[0].event_type == "provider_removed"
        assert history[0].previous_primary_provider_id == p1

    async def test_provider_not_on_team(self, db: AsyncSession):
        org, patient, (p1, _, _) = await create_clinic(db)
        with pytest.raises(ProviderNotOnCareTeam):
            await Service.remove_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=p1
            )


class TestMultiTenantIsolation:
    async def test_organizations_keep_their_own_primaries(self, db: AsyncSession):
        org_a, patient_a, (pa, _, _) = await create_clinic(db)
        org_b, patient_b, (pb, _, _) = await create_clinic(db)
        await Service.assign_primary_provider(
            db=db, organization_id=org_a, patient_id=patient_a, provider_id=pa
        )
        await Service.assign_primary_provider(
            db=db, organization_id=org_b, patient_id=patient_b, provider_id=pb
        )
        assert (
            await Service.get_primary_provider(db=db, organization_id=org_a, patient_id=patient_a)
            == pa
        )
        assert (
            await Service.get_primary_provider(db=db, organization_id=org_b, patient_id=patient_b)
            == pb
        )

    async def test_other_organizations_patient_is_not_found(self, db: AsyncSession):
        org_a, _, (pa, _, _) = await create_clinic(db)
        org_b, patient_b, (pb, _, _) = await create_clinic(db)
        await Service.assign_primary_provider(
            db=db, organization_id=org_b, patient_id=patient_b, provider_id=pb
        )
        with pytest.raises(PatientNotFound):
            await Service.get_primary_provider(db=db, organization_id=org_a, patient_id=patient_b)
        with pytest.raises(PatientNotFound):
            await Service.get_care_team(db=db, organization_id=org_a, patient_id=patient_b)
        with pytest.raises(PatientNotFound):
            await Service.assign_primary_provider(
                db=db, organization_id=org_a, patient_id=patient_b, provider_id=pa
            )

    async def test_other_organizations_provider_cannot_join(self, db: AsyncSession):
        org_a, patient_a, _ = await create_clinic(db)
        org_b = (await create_clinic(db))[0]
        provider_b = await create_provider(db, organization_id=org_b)
        with pytest.raises(ProviderReferenceNotFound):
            await Service.assign_primary_provider(
                db=db, organization_id=org_a, patient_id=patient_a, provider_id=provider_b
            )
        with pytest.raises(ProviderReferenceNotFound):
            await Service.add_secondary_provider(
                db=db, organization_id=org_a, patient_id=patient_a, provider_id=provider_b
            )
        assert await team_rows(db, org_a, patient_a) == {}

    async def test_composite_foreign_key_refuses_cross_tenant_rows(self, database: Database):
        """Even as the owner, past RLS, an assignment cannot mix organizations."""
        async with database.sessionmaker() as db:
            org_a, patient_a, _ = await create_clinic(db)
            org_b = (await create_clinic(db))[0]
            provider_b = await create_provider(db, organization_id=org_b)
        async with database.owner_engine.connect() as owner:
            with pytest.raises(IntegrityError, match="fk_care_team_assignments"):
                await owner.execute(
                    text(
                        "INSERT INTO care_team_assignments "
                        "(organization_id, patient_id, provider_id, is_primary_provider) "
                        "VALUES (:org, :patient, :provider, true)"
                    ),
                    {"org": org_a, "patient": patient_a, "provider": provider_b},
                )

    async def test_many_patients_one_organization(self, db: AsyncSession):
        org, patient, (p1, _, _) = await create_clinic(db)
        other = await create_patient(db, organization_id=org)
        for each in (patient, other):
            await Service.assign_primary_provider(
                db=db, organization_id=org, patient_id=each, provider_id=p1
            )
        assert await team_rows(db, org, other) == {p1: True}
        assert await team_rows(db, org, patient) == {p1: True}


class TestAtomicity:
    async def test_failure_after_writes_rolls_everything_back(self, db: AsyncSession):
        """The event insert fails after the demote and promote ran: none of it remains."""
        org, patient, (p1, p2, _) = await create_clinic(db)
        await Service.assign_primary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=p1
        )
        with pytest.raises(DatabaseError):
            await Service.assign_primary_provider(
                db=db,
                organization_id=org,
                patient_id=patient,
                provider_id=p2,
                actor=None,  # type: ignore[arg-type]  # NOT NULL: the last statement fails
            )
        assert await team_rows(db, org, patient) == {p1: True}
        assert await event_types(db, org, patient) == ["primary_assigned"]

    async def test_domain_error_writes_nothing(self, db: AsyncSession):
        org, patient, (p1, _, _) = await create_clinic(db)
        await Service.assign_primary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=p1
        )
        inactive = await create_provider(db, organization_id=org, active=False)
        with pytest.raises(ProviderInactive):
            await Service.assign_primary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=inactive
            )
        assert await team_rows(db, org, patient) == {p1: True}
        assert await event_types(db, org, patient) == ["primary_assigned"]

    async def test_session_is_usable_after_a_failure(self, db: AsyncSession):
        org, patient, (p1, _, _) = await create_clinic(db)
        with pytest.raises(ProviderReferenceNotFound):
            await Service.assign_primary_provider(
                db=db, organization_id=org, patient_id=patient, provider_id=uuid.uuid4()
            )
        team = await Service.assign_primary_provider(
            db=db, organization_id=org, patient_id=patient, provider_id=p1
        )
        assert team.primary_provider_id == p1


class TestWriterBypassingTheService:
    async def test_index_refusal_becomes_primary_provider_conflict(
        self, database: Database, caplog: pytest.LogCaptureFixture
    ):
        """A raw writer that skips the patient lock races the service; the index wins."""
        async with database.sessionmaker() as db:
            org, patient, (p1, p2, _) = await create_clinic(db)
        async with database.app_engine.connect() as raw:
            await set_tenant(raw, org)
            await raw.execute(
                text(
                    "INSERT INTO care_team_assignments "
                    "(organization_id, patient_id, provider_id, is_primary_provider) "
                    "VALUES (:org, :patient, :provider, true)"
                ),
                {"org": org, "patient": patient, "provider": p1},
            )

            async def assign() -> None:
                async with database.sessionmaker() as db:
                    await Service.assign_primary_provider(
                        db=db, organization_id=org, patient_id=patient, provider_id=p2
                    )

            refusals = REGISTRY.get_sample_value("careteam_primary_index_refusals_total") or 0.0
            task = asyncio.create_task(assign())
            await wait_until_blocked(database)  # the service waits on the raw row's index entry
            await raw.commit()
            with caplog.at_level(logging.WARNING), pytest.raises(PrimaryProviderConflict):
                await task
        assert UNIQUE_PRIMARY_INDEX in caplog.text
        assert "IntegrityError" in caplog.text
        assert REGISTRY.get_sample_value("careteam_primary_index_refusals_total") == refusals + 1
        # As operators find it in JSON logs: WARNING, the event, the index, the ids.
        [record] = [
            r for r in caplog.records if getattr(r, "event", "") == "primary_provider_conflict"
        ]
        line = JsonFormatter().format(record)
        entry = json.loads(line)
        assert entry["level"] == "WARNING" and entry["index"] == UNIQUE_PRIMARY_INDEX
        assert entry["organization_id"] == str(org) and entry["patient_id"] == str(patient)
        assert re.search(r"primary.*provider|IntegrityError", line, re.IGNORECASE)
        async with database.sessionmaker() as db:
            assert await team_rows(db, org, patient) == {p1: True}
            assert await event_types(db, org, patient) == []
