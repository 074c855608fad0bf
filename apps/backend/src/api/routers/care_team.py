"""A patient's care team: read it, assign the primary, add and remove members."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from src.api.deps import DB, CurrentCaller
from src.api.errors import link, links, problem_responses
from src.api.fields import CURSOR_MAX_LENGTH, CURSOR_PATTERN, decode_cursor, encode_cursor
from src.api.schemas import CareTeamEventOut, CareTeamHistoryOut, CareTeamOut, ProviderRef
from src.services.care_team_service import CareTeam, CareTeamService
from src.services.errors import (
    PatientNotFound,
    PrimaryProviderConflict,
    ProviderAlreadyPrimary,
    ProviderInactive,
    ProviderNotOnCareTeam,
    ProviderReferenceNotFound,
)

router = APIRouter(prefix="/v1/patients/{patient_id}/care-team", tags=["care team"])

MAX_PAGE = 200


def render(team: CareTeam) -> CareTeamOut:
    return CareTeamOut.model_validate(team, from_attributes=True)


@router.get("", response_model=CareTeamOut, responses=problem_responses(PatientNotFound))
async def get_care_team(patient_id: uuid.UUID, db: DB, caller: CurrentCaller) -> CareTeamOut:
    """The care team, primary first."""
    return render(
        await CareTeamService.get_care_team(
            db=db, organization_id=caller.organization_id, patient_id=patient_id
        )
    )


@router.put(
    "/primary",
    response_model=CareTeamOut,
    responses={
        200: links(
            GetCareTeamHistory=link("getCareTeamHistory", patient_id="patient_id"),
            RemovePrimaryProvider=link(
                "removeCareTeamMember",
                patient_id="patient_id",
                provider_id="primary_provider_id",
            ),
        ),
        **problem_responses(
            PatientNotFound,
            ProviderReferenceNotFound,
            ProviderInactive,
            PrimaryProviderConflict,
            body=True,
        ),
    },
)
async def assign_primary_provider(
    patient_id: uuid.UUID, body: ProviderRef, db: DB, caller: CurrentCaller
) -> CareTeamOut:
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


@router.post(
    "/members",
    status_code=status.HTTP_201_CREATED,
    response_model=CareTeamOut,
    responses={
        200: {"description": "Already on the team: nothing changed", "model": CareTeamOut},
        201: links(GetCareTeam=link("getCareTeam", patient_id="patient_id")),
        **problem_responses(
            PatientNotFound,
            ProviderReferenceNotFound,
            ProviderInactive,
            ProviderAlreadyPrimary,
            body=True,
        ),
    },
)
async def add_care_team_member(
    patient_id: uuid.UUID, body: ProviderRef, db: DB, caller: CurrentCaller, response: Response
) -> CareTeamOut:
    """Add the provider as a secondary: 201 when added, 200 when it already was one (409
    if it is the primary)."""
    team = await CareTeamService.add_secondary_provider(
        db=db,
        organization_id=caller.organization_id,
        patient_id=patient_id,
        provider_id=body.provider_id,
        actor=caller.actor,
    )
    if not team.changed:
        response.status_code = status.HTTP_200_OK
    return render(team)


@router.delete(
    "/members/{provider_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(PatientNotFound, ProviderNotOnCareTeam),
)
async def remove_care_team_member(
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


@router.get(
    "/history", response_model=CareTeamHistoryOut, responses=problem_responses(PatientNotFound)
)
async def get_care_team_history(
    patient_id: uuid.UUID,
    db: DB,
    caller: CurrentCaller,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=CURSOR_MAX_LENGTH,
            pattern=CURSOR_PATTERN,
            description="next_cursor of the previous page (opaque)",
        ),
    ] = None,
) -> CareTeamHistoryOut:
    """The care team's events, newest first, `limit` at a time."""
    events = await CareTeamService.get_care_team_history(
        db=db,
        organization_id=caller.organization_id,
        patient_id=patient_id,
        limit=limit + 1,
        before_id=None if cursor is None else decode_cursor(cursor),
    )
    page = events[:limit]
    return CareTeamHistoryOut(
        items=[CareTeamEventOut.model_validate(e, from_attributes=True) for e in page],
        next_cursor=encode_cursor(page[-1].id) if len(events) > limit else None,
    )
