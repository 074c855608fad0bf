"""Providers' panels: who a provider looks after, panel transfers, and the overview."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response

from src.api.deps import DB, CurrentCaller
from src.api.errors import problem_responses
from src.api.fields import Instant
from src.api.idempotency import Idempotency, reply, respond
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
    ProviderInactive,
    ProviderNotFound,
    ProviderReferenceNotFound,
)
from src.services.panel_service import PanelRole, PanelService
from src.values import (
    UUID_CURSOR_MAX_LENGTH,
    UUID_CURSOR_PATTERN,
    decode_uuid_cursor,
    encode_uuid_cursor,
)

router = APIRouter(prefix="/v1", tags=["panels"], route_class=StrictRoute)

MAX_PAGE = 200


@router.get(
    "/providers/{provider_id}/patients",
    response_model=PanelOut,
    responses=problem_responses(ProviderNotFound),
)
async def get_provider_panel(
    provider_id: uuid.UUID,
    db: DB,
    caller: CurrentCaller,
    *,
    role: Annotated[
        PanelRole, Query(description="primary (the panel), secondary, or any")
    ] = PanelRole.PRIMARY,
    as_of: Annotated[
        Instant | None, Query(description="The panel as it stood at this instant; default: now")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=UUID_CURSOR_MAX_LENGTH,
            pattern=UUID_CURSOR_PATTERN,
            description="next_cursor of the previous page (opaque)",
        ),
    ] = None,
) -> PanelOut:
    """The provider's patients, in patient id order, `limit` at a time."""
    entries = await PanelService.list_panel(
        db=db,
        organization_id=caller.organization_id,
        provider_id=provider_id,
        role=role,
        as_of=as_of,
        limit=limit + 1,
        after=None if cursor is None else decode_uuid_cursor(cursor),
    )
    page = entries[:limit]
    return PanelOut(
        items=[PanelEntryOut.model_validate(e, from_attributes=True) for e in page],
        next_cursor=encode_uuid_cursor(page[-1].patient_id) if len(entries) > limit else None,
    )


@router.post(
    "/providers/{provider_id}/panel/transfer",
    response_model=TransferOut,
    responses=problem_responses(
        ProviderNotFound,
        ProviderReferenceNotFound,
        InvalidArgument,
        ProviderInactive,
        IdempotencyKeyInProgress,
        body=True,
    ),
)
async def transfer_provider_panel(
    provider_id: uuid.UUID,
    body: PanelTransfer,
    db: DB,
    caller: CurrentCaller,
    idempotency: Idempotency,
) -> Response:
    """Make `to_provider_id` the primary provider of every patient whose primary is this
    provider, in batches, within the target's capacity (what it cannot take is
    `refused_capacity`). Running it again moves only what is left; `dry_run` changes
    nothing and says what would happen."""
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
async def get_panel_report(db: DB, caller: CurrentCaller) -> PanelReportOut:
    """Every provider's panel size and capacity, and how many patients have a care team
    but no primary provider."""
    report = await PanelService.report_panels(db=db, organization_id=caller.organization_id)
    return PanelReportOut(
        items=[PanelSizeOut.model_validate(p, from_attributes=True) for p in report.providers],
        patients_without_primary=report.patients_without_primary,
    )
