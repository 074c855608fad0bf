"""Providers' panels: who a provider looks after, panel transfers, and the overview."""

from __future__ import annotations

import datetime
import enum
import uuid
from typing import Annotated, cast

from fastapi import APIRouter, Query, Request, Response

from src.api.access_log import note_patients
from src.api.auth import credential_of, insufficient_scope
from src.api.deps import caller_of, session_of
from src.api.errors import problem_responses
from src.api.fields import Instant, Uuid
from src.api.idempotency import Idempotency, reply, respond
from src.api.paging import CursorParam, cursors_of, list_key, open_cursor
from src.api.routing import StrictRoute
from src.api.schemas import (
    PanelEntryOut,
    PanelOut,
    PanelReportOut,
    PanelSizeOut,
    PanelTransfer,
    TransferOut,
)
from src.services.errors import (
    IdempotencyKeyInProgress,
    InvalidArgument,
    InvalidCursor,
    ProviderInactive,
    ProviderNotFound,
    ProviderReferenceNotFound,
    TransferInProgress,
)
from src.services.panel_service import PanelRole, PanelService

router = APIRouter(prefix="/v1", tags=["panels"], route_class=StrictRoute)

# A panel's patients with `include=patient` are read like any patient: the route's own
# scope (system/CareTeam.s) is not enough, as for FHIR's _include (src/api/routers/fhir.py).
INCLUDED_PATIENT_SCOPE = "system/Patient.r"

MAX_PAGE = 200


class PanelInclude(enum.StrEnum):
    """What a panel page can carry with each entry."""

    PATIENT = "patient"


@router.get(
    "/providers/{provider_id}/patients",
    response_model=PanelOut,
    responses=problem_responses(InvalidCursor, ProviderNotFound),
)
async def get_provider_panel(
    request: Request,
    provider_id: Uuid,
    *,
    role: Annotated[
        PanelRole, Query(description="primary (the panel), secondary, or any")
    ] = PanelRole.PRIMARY,
    as_of: Annotated[
        Instant | None, Query(description="The panel as it stood at this instant; default: now")
    ] = None,
    include: Annotated[
        PanelInclude | None,
        Query(
            description="patient: each entry with its patient's names and birth date "
            f"(needs {INCLUDED_PATIENT_SCOPE} as well)"
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: CursorParam = None,
) -> PanelOut | Response:
    """The provider's patients, in patient id order, `limit` at a time (a cursor serves
    the same list with or without `include`). `include=patient` also needs
    system/Patient.r: without it, 403 insufficient_scope."""
    if include is PanelInclude.PATIENT and not credential_of(request.scope).grants.allows(
        INCLUDED_PATIENT_SCOPE
    ):
        return insufficient_scope(request.url.path, INCLUDED_PATIENT_SCOPE, "include=patient")
    db, caller = session_of(request), caller_of(request)
    cursors = await cursors_of(request)
    at = None if as_of is None else as_of.astimezone(datetime.UTC).isoformat()
    key = list_key(f"panel:{provider_id}", role=role.value, as_of=at)
    after = None if cursor is None else open_cursor(cursors, key, cursor, uuid.UUID)[0]
    entries = await PanelService.list_panel(
        db=db,
        organization_id=caller.organization_id,
        provider_id=provider_id,
        role=role,
        as_of=as_of,
        limit=limit + 1,
        after=cast(uuid.UUID | None, after),
        with_patients=include is PanelInclude.PATIENT,
    )
    page = entries[:limit]
    note_patients(request.scope, [e.patient_id for e in page], count=len(page))
    return PanelOut(
        items=[PanelEntryOut.model_validate(e, from_attributes=True) for e in page],
        next_cursor=cursors.seal(key, page[-1].patient_id) if len(entries) > limit else None,
    )


@router.post(
    "/providers/{provider_id}/panel/transfer",
    response_model=TransferOut,
    responses=problem_responses(
        ProviderNotFound,
        ProviderReferenceNotFound,
        InvalidArgument,
        ProviderInactive,
        TransferInProgress,
        IdempotencyKeyInProgress,
        body=True,
    ),
)
async def transfer_provider_panel(
    request: Request,
    provider_id: Uuid,
    body: PanelTransfer,
    idempotency: Idempotency,
) -> Response:
    """Make `to_provider_id` the primary provider of every patient whose primary is this
    provider, in batches, within the target's capacity (what it cannot take is
    `refused_capacity`). Running it again moves only what is left; `dry_run` changes
    nothing and says what would happen."""
    db, caller = session_of(request), caller_of(request)
    result = await PanelService.transfer_panel(
        db=db,
        organization_id=caller.organization_id,
        from_provider_id=provider_id,
        to_provider_id=body.to_provider_id,
        reason=body.reason,
        note=body.note,
        previous_provider=body.previous_provider,
        dry_run=body.dry_run,
        actor=caller.actor,
        idempotency=idempotency,
    )
    return respond(
        reply(200, TransferOut.model_validate(result, from_attributes=True)), idempotency
    )


@router.get("/reports/panels", response_model=PanelReportOut, responses=problem_responses())
async def get_panel_report(request: Request) -> PanelReportOut:
    """Every provider's panel size and capacity, and how many of your patients have no
    primary provider (those with no care team at all included): the worklist
    `GET /v1/patients?primary=none` lists them."""
    db, caller = session_of(request), caller_of(request)
    report = await PanelService.report_panels(db=db, organization_id=caller.organization_id)
    return PanelReportOut(
        items=[PanelSizeOut.model_validate(p, from_attributes=True) for p in report.providers],
        patients_without_primary=report.patients_without_primary,
    )
