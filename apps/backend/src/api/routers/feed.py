"""The change feed: the organization's care team events, in commit order, resumable."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import APIRouter, Query, Request

from src.api.access_log import note_patients
from src.api.deps import caller_of, session_of
from src.api.errors import problem_responses
from src.api.paging import CursorParam, cursors_of, open_cursor
from src.api.routing import StrictRoute
from src.api.schemas import CareTeamEventsOut, FeedEventOut
from src.services.care_team_service import CareTeamService
from src.services.errors import InvalidCursor

router = APIRouter(prefix="/v1", tags=["change feed"], route_class=StrictRoute)

MAX_PAGE = 500
FEED = "care_team_events"


@router.get(
    "/care-team-events",
    response_model=CareTeamEventsOut,
    responses=problem_responses(InvalidCursor),
)
async def get_care_team_events(
    request: Request,
    after: CursorParam = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="At most this many")] = 100,
) -> CareTeamEventsOut:
    """Your organization's care team events after the cursor, oldest first, in commit
    order: every event exactly once, however transactions interleave. Keep the
    `next_cursor` and call again with it to stay in sync (it stays the same while
    nothing new has happened). A cursor of another organization, a forged one, or one
    past your organization's last event is 422 invalid_cursor, never an empty page."""
    db, caller = session_of(request), caller_of(request)
    cursors = await cursors_of(request)
    position = 0
    if after is not None:
        position = cast(int, open_cursor(cursors, FEED, after, int, field="after")[0])
    events = await CareTeamService.get_events(
        db=db, organization_id=caller.organization_id, after=position, limit=limit
    )
    note_patients(request.scope, [e.patient_id for e in events], count=len(events))
    return CareTeamEventsOut(
        items=[FeedEventOut.model_validate(e, from_attributes=True) for e in events],
        next_cursor=cursors.seal(FEED, events[-1].id if events else position),
    )
