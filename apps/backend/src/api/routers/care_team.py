"""A patient's care team: read it (now or at an instant), assign the primary, add and
remove members, and its history and periods."""

from __future__ import annotations

import datetime
import uuid
from typing import Annotated, cast

from fastapi import APIRouter, Body, Query, Request, Response, status

from src.api.conditional import IF_NONE_MATCH, IfMatch, conditional_read, expected, team_etag
from src.api.deps import caller_of, session_of
from src.api.errors import CREATED_HEADERS, link, links, problem_responses
from src.api.fields import Instant, Uuid
from src.api.idempotency import Idempotency, Reply, as_response, reply, respond
from src.api.paging import CursorParam, cursors_of, open_cursor
from src.api.routing import StrictRoute
from src.api.schemas import (
    CareTeamEventOut,
    CareTeamHistoryOut,
    CareTeamOut,
    CareTeamPeriodOut,
    CareTeamPeriodsOut,
    MemberRemoval,
    TeamChange,
)
from src.services.care_team_service import CareTeam, CareTeamService
from src.services.errors import (
    InvalidArgument,
    InvalidCursor,
    PanelFull,
    PatientNotFound,
    PreconditionFailed,
    PrimaryProviderConflict,
    ProviderAlreadyPrimary,
    ProviderInactive,
    ProviderNotOnCareTeam,
    ProviderReferenceNotFound,
)

router = APIRouter(
    prefix="/v1/patients/{patient_id}/care-team", tags=["care team"], route_class=StrictRoute
)

MAX_PAGE = 200

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="At most this many items")]
AsOf = Annotated[
    Instant | None,
    Query(description="The team as it stood at this instant (RFC 3339); default: now"),
]


def render(team: CareTeam) -> CareTeamOut:
    return CareTeamOut.model_validate(team, from_attributes=True)


@router.get(
    "",
    openapi_extra=IF_NONE_MATCH,
    response_model=CareTeamOut,
    responses={
        200: {"headers": {"ETag": {"schema": {"type": "string"}}}},
        304: {"description": "Not modified (If-None-Match)"},
        **problem_responses(PatientNotFound),
    },
)
async def get_care_team(
    patient_id: Uuid,
    request: Request,
    *,
    as_of: AsOf = None,
) -> Response:
    """The care team, primary first, each member with its name and whether it is active;
    with `as_of`, as it stood at that instant. The current team carries an ETag (send it
    as If-Match on a write to change only the team you read)."""
    db, caller = session_of(request), caller_of(request)
    team = await CareTeamService.get_care_team(
        db=db, organization_id=caller.organization_id, patient_id=patient_id, as_of=as_of
    )
    if team.version is None:  # as of an instant
        return as_response(reply(200, render(team)))
    etag = team_etag(team.version)
    return conditional_read(request, etag) or as_response(reply(200, render(team), etag))


def team_reply(team: CareTeam, status_code: int, *, unchanged_status: int | None = None) -> Reply:
    """The response of a write: the team after it (with its ETag); `unchanged_status`
    when the write changed nothing."""
    code = unchanged_status if unchanged_status and team.changed is False else status_code
    body = None if code == status.HTTP_204_NO_CONTENT else render(team)
    etag = None if team.version is None else team_etag(team.version)
    return reply(code, body, etag, location=f"/v1/patients/{team.patient_id}/care-team")


def _version(if_match: str | None) -> tuple[int, ...] | None:
    return expected(if_match, "t", parts=2)


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
            InvalidArgument,
            ProviderInactive,
            PanelFull,
            PrimaryProviderConflict,
            PreconditionFailed,
            body=True,
        ),
    },
)
async def assign_primary_provider(
    request: Request,
    patient_id: Uuid,
    body: TeamChange,
    *,
    idempotency: Idempotency,
    if_match: IfMatch = None,
) -> Response:
    """Make the provider the primary; the previous primary stays on the team as secondary.
    409 panel_full when the provider's panel is at its capacity. With If-Match (the
    team's ETag), only if the team did not change since (412)."""
    db, caller = session_of(request), caller_of(request)
    result = await CareTeamService.assign_primary_provider(
        db=db,
        organization_id=caller.organization_id,
        patient_id=patient_id,
        provider_id=body.provider_id,
        actor=caller.actor,
        reason=body.reason,
        note=body.note,
        if_version=_version(if_match),
        idempotency=idempotency,
    )
    return respond(team_reply(result, status.HTTP_200_OK), idempotency)


@router.post(
    "/members",
    status_code=status.HTTP_201_CREATED,
    response_model=CareTeamOut,
    responses={
        200: {"description": "Already on the team: nothing changed", "model": CareTeamOut},
        201: {
            **links(GetCareTeam=link("getCareTeam", patient_id="patient_id")),
            **CREATED_HEADERS,
        },
        **problem_responses(
            PatientNotFound,
            ProviderReferenceNotFound,
            InvalidArgument,
            ProviderInactive,
            ProviderAlreadyPrimary,
            PreconditionFailed,
            body=True,
        ),
    },
)
async def add_care_team_member(
    request: Request,
    patient_id: Uuid,
    body: TeamChange,
    *,
    idempotency: Idempotency,
    if_match: IfMatch = None,
) -> Response:
    """Add the provider as a secondary: 201 when added, 200 when it already was one (409
    if it is the primary). With If-Match (the team's ETag), only if the team did not
    change since (412)."""
    db, caller = session_of(request), caller_of(request)
    result = await CareTeamService.add_secondary_provider(
        db=db,
        organization_id=caller.organization_id,
        patient_id=patient_id,
        provider_id=body.provider_id,
        actor=caller.actor,
        reason=body.reason,
        note=body.note,
        if_version=_version(if_match),
        idempotency=idempotency,
    )
    return respond(
        team_reply(result, status.HTTP_201_CREATED, unchanged_status=status.HTTP_200_OK),
        idempotency,
    )


@router.delete(
    "/members/{provider_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=problem_responses(
        PatientNotFound, ProviderNotOnCareTeam, InvalidArgument, PreconditionFailed, body=True
    ),
)
async def remove_care_team_member(
    request: Request,
    patient_id: Uuid,
    provider_id: Uuid,
    *,
    body: Annotated[MemberRemoval | None, Body()] = None,
    idempotency: Idempotency,
    if_match: IfMatch = None,
) -> Response:
    """Take the provider off the team (removing the primary leaves none). The body, if
    any, gives the reason and a note. With If-Match (the team's ETag), only if the team
    did not change since (412)."""
    db, caller = session_of(request), caller_of(request)
    change = body or MemberRemoval()
    result = await CareTeamService.remove_provider(
        db=db,
        organization_id=caller.organization_id,
        patient_id=patient_id,
        provider_id=provider_id,
        actor=caller.actor,
        reason=change.reason,
        note=change.note,
        if_version=_version(if_match),
        idempotency=idempotency,
    )
    return respond(team_reply(result, status.HTTP_204_NO_CONTENT), idempotency)


@router.get(
    "/history",
    response_model=CareTeamHistoryOut,
    responses=problem_responses(InvalidCursor, PatientNotFound),
)
async def get_care_team_history(
    request: Request,
    patient_id: Uuid,
    *,
    limit: Limit = 50,
    cursor: CursorParam = None,
) -> CareTeamHistoryOut:
    """The care team's events, newest first, `limit` at a time."""
    db, caller = session_of(request), caller_of(request)
    cursors = await cursors_of(request)
    list_key = f"care_team_history:{patient_id}"
    before = None if cursor is None else open_cursor(cursors, list_key, cursor, int)[0]
    events = await CareTeamService.get_care_team_history(
        db=db,
        organization_id=caller.organization_id,
        patient_id=patient_id,
        limit=limit + 1,
        before_id=cast(int | None, before),
    )
    page = events[:limit]
    return CareTeamHistoryOut(
        items=[CareTeamEventOut.model_validate(e, from_attributes=True) for e in page],
        next_cursor=cursors.seal(list_key, page[-1].id) if len(events) > limit else None,
    )


@router.get(
    "/periods",
    response_model=CareTeamPeriodsOut,
    responses=problem_responses(InvalidCursor, PatientNotFound),
)
async def get_care_team_periods(
    request: Request,
    patient_id: Uuid,
    *,
    limit: Limit = 50,
    cursor: CursorParam = None,
) -> CareTeamPeriodsOut:
    """When each provider held which role on the team, oldest first: `valid_to` is null
    while a period lasts."""
    db, caller = session_of(request), caller_of(request)
    cursors = await cursors_of(request)
    list_key = f"care_team_periods:{patient_id}"
    after = None
    if cursor is not None:
        after = open_cursor(cursors, list_key, cursor, datetime.datetime, uuid.UUID)
    periods = await CareTeamService.get_care_team_periods(
        db=db,
        organization_id=caller.organization_id,
        patient_id=patient_id,
        limit=limit + 1,
        after=cast(tuple[datetime.datetime, uuid.UUID] | None, after),
    )
    page = periods[:limit]
    last = page[-1] if page else None
    return CareTeamPeriodsOut(
        items=[CareTeamPeriodOut.model_validate(p, from_attributes=True) for p in page],
        next_cursor=cursors.seal(list_key, last.valid_from, last.provider_id)
        if last is not None and len(periods) > limit
        else None,
    )
