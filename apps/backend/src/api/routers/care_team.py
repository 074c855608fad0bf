"""A patient's care team: read it, assign the primary, add and remove members."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from src.api.deps import DB, CurrentCaller
from src.api.errors import ERROR_RESPONSES
from src.api.schemas import CareTeam, CareTeamEvent, CareTeamHistory, ProviderRef
from src.services.care_team_service import CareTeam as CareTeamRecord
from src.services.care_team_service import CareTeamService

router = APIRouter(
    prefix="/v1/patients/{patient_id}/care-team", tags=["care team"], responses=ERROR_RESPONSES
)

MAX_PAGE = 200


def render(team: CareTeamRecord) -> CareTeam:
    return CareTeam.model_validate(team, from_attributes=True)


@router.get("", response_model=CareTeam)
async def get_care_team(patient_id: uuid.UUID, db: DB, caller: CurrentCaller) -> CareTeam:
    """The care team, primary first."""
    return render(
        await CareTeamService.get_care_team(
            db=db, organization_id=caller.organization_id, patient_id=patient_id
        )
    )


@router.put("/primary", response_model=CareTeam)
async def assign_primary(
    patient_id: uuid.UUID, body: ProviderRef, db: DB, caller: CurrentCaller
) -> CareTeam:
    """Make the provider the primary; the previous primary stays on the team as secondary."""
    return render(
        await CareTeamService.assign_primary_provider(
            db=db,
            organization_id=caller.organization_id,
            patient_id=patient_id,
            provider_id=body.provider_id,
            actor=caller.actor,
        )
    )


@router.post("/members", status_code=status.HTTP_201_CREATED, response_model=CareTeam)
async def add_member(
    patient_id: uuid.UUID, body: ProviderRef, db: DB, caller: CurrentCaller
) -> CareTeam:
    """Add the provider as a secondary (409 if it is the primary)."""
    return render(
        await CareTeamService.add_secondary_provider(
            db=db,
            organization_id=caller.organization_id,
            patient_id=patient_id,
            provider_id=body.provider_id,
            actor=caller.actor,
        )
    )


@router.delete(
    "/members/{provider_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response
)
async def remove_member(
    patient_id: uuid.UUID, provider_id: uuid.UUID, db: DB, caller: CurrentCaller
) -> Response:
    """Take the provider off the team (removing the primary leaves none)."""
    await CareTeamService.remove_provider(
        db=db,
        organization_id=caller.organization_id,
        patient_id=patient_id,
        provider_id=provider_id,
        actor=caller.actor,
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/history", response_model=CareTeamHistory)
async def get_history(
    patient_id: uuid.UUID,
    db: DB,
    caller: CurrentCaller,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="next_cursor of the previous page")
    ] = None,
) -> CareTeamHistory:
    """The care team's events, newest first, `limit` at a time."""
    events = await CareTeamService.get_care_team_history(
        db=db,
        organization_id=caller.organization_id,
        patient_id=patient_id,
        limit=limit + 1,
        before_id=cursor,
    )
    page = events[:limit]
    return CareTeamHistory(
        items=[CareTeamEvent.model_validate(e, from_attributes=True) for e in page],
        next_cursor=page[-1].id if len(events) > limit else None,
    )
