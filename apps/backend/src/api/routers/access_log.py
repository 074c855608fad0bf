"""The access log: who read or changed which patient's data (administrative scope)."""

from __future__ import annotations

import datetime
import uuid
from typing import Annotated, cast

from fastapi import APIRouter, Query, Request

from src.api.deps import caller_of, session_of
from src.api.errors import problem_responses
from src.api.fields import Uuid
from src.api.paging import CursorParam, cursors_of, list_key, open_cursor
from src.api.routing import StrictRoute
from src.api.schemas import AccessLogEntryOut, AccessLogOut
from src.services.access_log_service import MAX_PAGE, AccessLogService
from src.services.errors import InvalidCursor

router = APIRouter(prefix="/v1", tags=["access log"], route_class=StrictRoute)


@router.get(
    "/access-log",
    response_model=AccessLogOut,
    responses=problem_responses(InvalidCursor),
)
async def get_access_log(
    request: Request,
    *,
    patient_id: Annotated[
        Uuid | None, Query(description="Only the requests that named this patient")
    ] = None,
    after: CursorParam = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="At most this many")] = 50,
) -> AccessLogOut:
    """Your organization's access log, oldest first: every request that read or changed
    a patient's data (who, which patients, the route, when, the status). Needs the
    administrative scope. Keep `next_cursor` and call again with `?after=` for what was
    recorded since. A cursor of another organization or list, or a forged one, is 422
    invalid_cursor."""
    db, caller = session_of(request), caller_of(request)
    cursors = await cursors_of(request)
    key = list_key("access_log", patient_id=patient_id)
    position = None
    if after is not None:
        position = cast(
            tuple[datetime.datetime, uuid.UUID],
            open_cursor(cursors, key, after, datetime.datetime, uuid.UUID, field="after"),
        )
    entries = await AccessLogService.list_entries(
        db=db,
        organization_id=caller.organization_id,
        patient_id=patient_id,
        after=position,
        limit=limit,
    )
    last = (entries[-1].recorded_at, entries[-1].id) if entries else position
    return AccessLogOut(
        items=[AccessLogEntryOut.model_validate(e, from_attributes=True) for e in entries],
        next_cursor=cursors.seal(key, *last) if last is not None else cursors.seal(key, *_START),
    )


_START = (datetime.datetime(1, 1, 1, tzinfo=datetime.UTC), uuid.UUID(int=0))
