"""The primary-provider workflow end to end, with real commits on separate sessions."""

from __future__ import annotations

from src.db import Database
from src.services.care_team_service import CareTeamService as Service
from tests.helpers import create_clinic


class TestPrimaryProviderWorkflow:
    async def test_assign_change_add_secondary_primary_unchanged(self, database: Database):
        async with database.sessionmaker() as db:
            org, patient, (first, second, third) = await create_clinic(db)
        ids = {"organization_id": org, "patient_id": patient}

        # Each step on a new session: what one committed, the next one reads.
        async with database.sessionmaker() as db:
            team = await Service.assign_primary_provider(db=db, provider_id=first, **ids)
        assert team.primary_provider_id == first

        async with database.sessionmaker() as db:
            team = await Service.assign_primary_provider(db=db, provider_id=second, **ids)
        assert team.primary_provider_id == second
        assert {m.provider_id: m.is_primary_provider for m in team.members} == {
            second: True,
            first: False,
        }

        async with database.sessionmaker() as db:
            await Service.add_secondary_provider(db=db, provider_id=third, **ids)

        async with database.sessionmaker() as db:
            assert await Service.get_primary_provider(db=db, **ids) == second
            team = await Service.get_care_team(db=db, **ids)
            history = await Service.get_care_team_history(db=db, **ids)

        assert [m.provider_id for m in team.members] == [second, first, third]
        assert [(e.event_type, e.provider_id, e.previous_primary_provider_id) for e in history] == [
            ("secondary_added", third, None),
            ("primary_assigned", second, first),
            ("primary_demoted", first, first),
            ("primary_assigned", first, None),
        ]

    async def test_history_pages_newest_first(self, database: Database):
        async with database.sessionmaker() as db:
            org, patient, providers = await create_clinic(db, providers=4)
            ids = {"organization_id": org, "patient_id": patient}
            for provider in providers:
                await Service.add_secondary_provider(db=db, provider_id=provider, **ids)
            first_page = await Service.get_care_team_history(db=db, limit=3, **ids)
            second_page = await Service.get_care_team_history(
                db=db, limit=3, before_id=first_page[-1].id, **ids
            )
        assert [e.provider_id for e in first_page + second_page] == providers[::-1]
