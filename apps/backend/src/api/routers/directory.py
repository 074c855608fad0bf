"""Patients and providers of the caller's organization: create, read, correct, list and
search, and who changed them."""

from __future__ import annotations

import enum
import unicodedata
import uuid
from typing import Annotated, Any, cast

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from src.api.access_log import note_patients
from src.api.conditional import (
    IF_NONE_MATCH,
    IfMatch,
    conditional_read,
    expected,
    patient_etag,
    provider_etag,
)
from src.api.deps import caller_of, session_of
from src.api.errors import CREATED_HEADERS, link, links, problem_responses
from src.api.fields import BirthDate, IdentifierSearch, Uuid
from src.api.idempotency import Idempotency, Reply, as_response, reply, respond
from src.api.paging import CursorParam, cursors_of, list_key, open_cursor
from src.api.routing import StrictRoute
from src.api.schemas import (
    IdentifierIn,
    PatientCreate,
    PatientListOut,
    PatientOut,
    PatientUpdate,
    ProviderCreate,
    ProviderListOut,
    ProviderOut,
    ProviderUpdate,
    RecordChangeOut,
    RecordChangesOut,
)
from src.models import RecordType
from src.services.credentials import Credential
from src.services.directory_service import (
    NO_PRIMARY,
    UNCHANGED,
    DirectoryService,
    Identifier,
    PatientRecord,
    ProviderRecord,
)
from src.services.errors import (
    IdentifierTaken,
    InvalidArgument,
    InvalidCursor,
    NpiTaken,
    PatientNotFound,
    PreconditionFailed,
    ProviderHasPatients,
    ProviderNotFound,
)
from src.values import NPI_PATTERN, UUID_PATTERN, Cursors

router = APIRouter(prefix="/v1", route_class=StrictRoute)

MAX_PAGE = 200
# `primary`: none, or a provider id written 8-4-4-4-12 (either case).
PRIMARY_PATTERN = f"^(none|{UUID_PATTERN[1:-1]})$"


class PatientSort(enum.StrEnum):
    """The orders of the patient list (src/services/directory_service.py, PATIENT_SORTS)."""

    NAME = "name"
    NAME_DESCENDING = "-name"
    CREATED = "created"
    CREATED_DESCENDING = "-created"


Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="At most this many items")]
NamePrefix = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=100,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="The start of the first or the last name, in any case",
    ),
]


def patient_out(record: PatientRecord) -> PatientOut:
    return PatientOut.model_validate(record, from_attributes=True)


def provider_out(record: ProviderRecord) -> ProviderOut:
    return ProviderOut.model_validate(record, from_attributes=True)


def patient_reply(record: PatientRecord, status_code: int) -> Reply:
    etag = patient_etag(record.version, record.team_version)
    return reply(status_code, patient_out(record), etag, location=f"/v1/patients/{record.id}")


def provider_reply(record: ProviderRecord, status_code: int) -> Reply:
    etag = provider_etag(record.version, record.panel_size)
    return reply(status_code, provider_out(record), etag, location=f"/v1/providers/{record.id}")


def _nfc(name: str | None) -> str | None:
    """A name prefix as names are stored: in NFC (a decomposed é finds a composed one)."""
    return None if name is None else unicodedata.normalize("NFC", name)


def _given(body: BaseModel, name: str) -> Any:
    """The field's value if the body gives it, else UNCHANGED."""
    return getattr(body, name) if name in body.model_fields_set else UNCHANGED


def _identifiers(items: list[IdentifierIn]) -> list[Identifier]:
    return [Identifier(system=i.system, value=i.value) for i in items]


async def _changes_page(
    db: AsyncSession,
    caller: Credential,
    cursors: Cursors,
    *,
    record_type: RecordType,
    record_id: uuid.UUID,
    limit: int,
    cursor: str | None,
) -> RecordChangesOut:
    key = list_key(f"{record_type.value}_changes:{record_id}")
    before = None if cursor is None else open_cursor(cursors, key, cursor, int)[0]
    items = await DirectoryService.get_record_changes(
        db=db,
        organization_id=caller.organization_id,
        record_type=record_type,
        record_id=record_id,
        limit=limit + 1,
        before=cast(int | None, before),
    )
    page = items[:limit]
    return RecordChangesOut(
        items=[RecordChangeOut.model_validate(c, from_attributes=True) for c in page],
        next_cursor=cursors.seal(key, page[-1].id) if len(items) > limit else None,
    )


# --- patients -------------------------------------------------------------------------------


@router.post(
    "/patients",
    status_code=status.HTTP_201_CREATED,
    response_model=PatientOut,
    tags=["patients"],
    responses={
        201: {
            **links(
                GetPatient=link("getPatient", patient_id="id"),
                UpdatePatient=link("updatePatient", patient_id="id"),
                GetCareTeam=link("getCareTeam", patient_id="id"),
                AssignPrimaryProvider=link("assignPrimaryProvider", patient_id="id"),
                AddCareTeamMember=link("addCareTeamMember", patient_id="id"),
                RemoveCareTeamMember=link("removeCareTeamMember", patient_id="id"),
                GetCareTeamHistory=link("getCareTeamHistory", patient_id="id"),
                GetCareTeamPeriods=link("getCareTeamPeriods", patient_id="id"),
                GetPatientChanges=link("getPatientChanges", patient_id="id"),
            ),
            **CREATED_HEADERS,
        },
        **problem_responses(IdentifierTaken, InvalidArgument, body=True),
    },
)
async def create_patient(
    request: Request, body: PatientCreate, idempotency: Idempotency
) -> Response:
    """Identifiers are unique per (system, value) in your organization."""
    db, caller = session_of(request), caller_of(request)
    result = await DirectoryService.create_patient(
        db=db,
        organization_id=caller.organization_id,
        first_name=body.first_name,
        last_name=body.last_name,
        dob=body.dob,
        gender=body.gender.value,
        identifiers=_identifiers(body.identifiers),
        actor=caller.actor,
        idempotency=idempotency,
    )
    note_patients(request.scope, [result.id])
    return respond(patient_reply(result, 201), idempotency)


@router.get(
    "/patients",
    response_model=PatientListOut,
    tags=["patients"],
    responses=problem_responses(InvalidCursor),
)
async def list_patients(
    request: Request,
    *,
    name: NamePrefix = None,
    dob: Annotated[BirthDate | None, Query(description="Born on this date")] = None,
    identifier: Annotated[
        IdentifierSearch | None,
        Query(description="system|value: the patient holding this identifier"),
    ] = None,
    primary: Annotated[
        str | None,
        Query(
            pattern=PRIMARY_PATTERN,
            description="`none`: patients without a primary provider; a provider id: "
            "patients whose primary it is now (one of another organization: none)",
        ),
    ] = None,
    sort: Annotated[
        PatientSort | None,
        Query(
            description="name (last, then first, any case), created, or either "
            "reversed with '-'; default: id order"
        ),
    ] = None,
    limit: Limit = 50,
    cursor: CursorParam = None,
) -> PatientListOut:
    """Your organization's patients, `limit` at a time, filtered by what is given (all
    of it must hold), in id order or the order `sort` asks. A cursor belongs to its sort
    and filters: another's is 422 invalid_cursor."""
    db, caller = session_of(request), caller_of(request)
    cursors = await cursors_of(request)
    wanted = None if primary is None else primary.lower()
    order = "id" if sort is None else sort.value
    key = list_key(
        "patients", name=_nfc(name), dob=dob, identifier=identifier, primary=wanted, sort=sort
    )
    # A keyset in another order starts after a patient's keys: its id and version (a
    # name-sorted page refuses a patient renamed since), never its name.
    keyset = order != "id" or wanted is not None
    kinds: tuple[type[uuid.UUID] | type[int], ...] = (uuid.UUID, int) if keyset else (uuid.UUID,)
    position = None if cursor is None else open_cursor(cursors, key, cursor, *kinds)
    found = await DirectoryService.list_patients(
        db=db,
        organization_id=caller.organization_id,
        name=_nfc(name),
        dob=dob,
        identifier=None if identifier is None else Identifier(*identifier.split("|", 1)),
        primary=wanted if wanted in (None, NO_PRIMARY) else uuid.UUID(wanted),
        sort=order,
        limit=limit + 1,
        after=None if position is None else cast(uuid.UUID, position[0]),
        after_version=None if position is None or not keyset else cast(int, position[1]),
    )
    page = found[:limit]
    note_patients(request.scope, [p.id for p in page], count=len(page))
    last = page[-1] if len(found) > limit else None
    return PatientListOut(
        items=[patient_out(p) for p in page],
        next_cursor=None
        if last is None
        else cursors.seal(key, last.id, last.version)
        if keyset
        else cursors.seal(key, last.id),
    )


@router.get(
    "/patients/{patient_id}",
    openapi_extra=IF_NONE_MATCH,
    response_model=PatientOut,
    tags=["patients"],
    responses={
        200: {"headers": {"ETag": {"schema": {"type": "string"}}}},
        304: {"description": "Not modified (If-None-Match)"},
        **problem_responses(PatientNotFound),
    },
)
async def get_patient(
    patient_id: Uuid,
    request: Request,
) -> Response:
    db, caller = session_of(request), caller_of(request)
    record = await DirectoryService.get_patient(
        db=db, organization_id=caller.organization_id, patient_id=patient_id
    )
    etag = patient_etag(record.version, record.team_version)
    return conditional_read(request, etag) or as_response(reply(200, patient_out(record), etag))


@router.patch(
    "/patients/{patient_id}",
    response_model=PatientOut,
    tags=["patients"],
    responses=problem_responses(
        PatientNotFound, IdentifierTaken, InvalidArgument, PreconditionFailed, body=True
    ),
)
async def update_patient(
    request: Request,
    patient_id: Uuid,
    body: PatientUpdate,
    *,
    idempotency: Idempotency,
    if_match: IfMatch = None,
) -> Response:
    """Change what is given, validated as on create; `identifiers` replaces the list.
    With If-Match (the ETag of your read), only if nobody changed it since (412)."""
    db, caller = session_of(request), caller_of(request)
    version = expected(if_match, "p", parts=2)
    result = await DirectoryService.update_patient(
        db=db,
        organization_id=caller.organization_id,
        patient_id=patient_id,
        first_name=_given(body, "first_name"),
        last_name=_given(body, "last_name"),
        dob=_given(body, "dob"),
        gender=UNCHANGED if body.gender is None else body.gender.value,
        identifiers=UNCHANGED if body.identifiers is None else _identifiers(body.identifiers),
        if_version=None if version is None else version[0],
        if_team_version=None if version is None else version[1],
        actor=caller.actor,
        idempotency=idempotency,
    )
    return respond(patient_reply(result, 200), idempotency)


@router.get(
    "/patients/{patient_id}/changes",
    response_model=RecordChangesOut,
    tags=["patients"],
    responses=problem_responses(InvalidCursor, PatientNotFound),
)
async def get_patient_changes(
    request: Request,
    patient_id: Uuid,
    *,
    limit: Limit = 50,
    cursor: CursorParam = None,
) -> RecordChangesOut:
    """Who created and changed the record, which fields (never their values), and when;
    newest first."""
    db, caller = session_of(request), caller_of(request)
    cursors = await cursors_of(request)
    return await _changes_page(
        db,
        caller,
        cursors,
        record_type=RecordType.PATIENT,
        record_id=patient_id,
        limit=limit,
        cursor=cursor,
    )


# --- providers ------------------------------------------------------------------------------


@router.post(
    "/providers",
    status_code=status.HTTP_201_CREATED,
    response_model=ProviderOut,
    tags=["providers"],
    responses={
        201: {
            **links(
                GetProvider=link("getProvider", provider_id="id"),
                UpdateProvider=link("updateProvider", provider_id="id"),
                AssignAsPrimaryProvider=link("assignPrimaryProvider", body_provider_id="id"),
                AddAsCareTeamMember=link("addCareTeamMember", body_provider_id="id"),
                GetProviderPanel=link("getProviderPanel", provider_id="id"),
                TransferProviderPanel=link("transferProviderPanel", provider_id="id"),
                GetProviderChanges=link("getProviderChanges", provider_id="id"),
            ),
            **CREATED_HEADERS,
        },
        **problem_responses(NpiTaken, body=True),
    },
)
async def create_provider(
    request: Request, body: ProviderCreate, idempotency: Idempotency
) -> Response:
    db, caller = session_of(request), caller_of(request)
    result = await DirectoryService.create_provider(
        db=db,
        organization_id=caller.organization_id,
        first_name=body.first_name,
        last_name=body.last_name,
        npi=body.npi,
        actor=caller.actor,
        idempotency=idempotency,
    )
    return respond(provider_reply(result, 201), idempotency)


@router.get(
    "/providers",
    response_model=ProviderListOut,
    tags=["providers"],
    responses=problem_responses(InvalidCursor),
)
async def list_providers(
    request: Request,
    *,
    name: NamePrefix = None,
    npi: Annotated[str | None, Query(pattern=NPI_PATTERN, description="This NPI")] = None,
    active: Annotated[bool | None, Query(description="Only active (or inactive) ones")] = None,
    limit: Limit = 50,
    cursor: CursorParam = None,
) -> ProviderListOut:
    """Your organization's providers in id order, `limit` at a time, filtered by what is
    given (all of it must hold)."""
    db, caller = session_of(request), caller_of(request)
    cursors = await cursors_of(request)
    key = list_key("providers", name=_nfc(name), npi=npi, active=active)
    after = None if cursor is None else open_cursor(cursors, key, cursor, uuid.UUID)[0]
    found = await DirectoryService.list_providers(
        db=db,
        organization_id=caller.organization_id,
        name=_nfc(name),
        npi=npi,
        active=active,
        limit=limit + 1,
        after=cast(uuid.UUID | None, after),
    )
    page = found[:limit]
    return ProviderListOut(
        items=[provider_out(p) for p in page],
        next_cursor=cursors.seal(key, page[-1].id) if len(found) > limit else None,
    )


@router.get(
    "/providers/{provider_id}",
    openapi_extra=IF_NONE_MATCH,
    response_model=ProviderOut,
    tags=["providers"],
    responses={
        200: {"headers": {"ETag": {"schema": {"type": "string"}}}},
        304: {"description": "Not modified (If-None-Match)"},
        **problem_responses(ProviderNotFound),
    },
)
async def get_provider(
    provider_id: Uuid,
    request: Request,
) -> Response:
    db, caller = session_of(request), caller_of(request)
    record = await DirectoryService.get_provider(
        db=db, organization_id=caller.organization_id, provider_id=provider_id
    )
    etag = provider_etag(record.version, record.panel_size)
    return conditional_read(request, etag) or as_response(reply(200, provider_out(record), etag))


@router.patch(
    "/providers/{provider_id}",
    response_model=ProviderOut,
    tags=["providers"],
    responses=problem_responses(
        ProviderNotFound,
        ProviderHasPatients,
        NpiTaken,
        InvalidArgument,
        PreconditionFailed,
        body=True,
    ),
)
async def update_provider(
    request: Request,
    provider_id: Uuid,
    body: ProviderUpdate,
    *,
    idempotency: Idempotency,
    if_match: IfMatch = None,
) -> Response:
    """Change what is given, validated as on create: names, `npi` (null removes it),
    `active` (deactivating a provider who is still some patients' primary is 409
    provider_has_patients: transfer the panel first) and `panel_capacity` (null: no
    limit). With If-Match (the ETag of your read), only if nothing changed since (412)."""
    db, caller = session_of(request), caller_of(request)
    version = expected(if_match, "v", parts=2)
    result = await DirectoryService.update_provider(
        db=db,
        organization_id=caller.organization_id,
        provider_id=provider_id,
        first_name=_given(body, "first_name"),
        last_name=_given(body, "last_name"),
        npi=_given(body, "npi"),
        active=body.active,
        panel_capacity=_given(body, "panel_capacity"),
        if_version=version,
        actor=caller.actor,
        idempotency=idempotency,
    )
    return respond(provider_reply(result, 200), idempotency)


@router.get(
    "/providers/{provider_id}/changes",
    response_model=RecordChangesOut,
    tags=["providers"],
    responses=problem_responses(InvalidCursor, ProviderNotFound),
)
async def get_provider_changes(
    request: Request,
    provider_id: Uuid,
    *,
    limit: Limit = 50,
    cursor: CursorParam = None,
) -> RecordChangesOut:
    """Who created and changed the record, which fields (never their values), and when;
    newest first."""
    db, caller = session_of(request), caller_of(request)
    cursors = await cursors_of(request)
    return await _changes_page(
        db,
        caller,
        cursors,
        record_type=RecordType.PROVIDER,
        record_id=provider_id,
        limit=limit,
        cursor=cursor,
    )
