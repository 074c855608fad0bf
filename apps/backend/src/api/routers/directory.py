"""Patients and providers of the caller's organization."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from src.api.deps import DB, CurrentCaller
from src.api.errors import link, links, problem_responses
from src.api.schemas import PatientCreate, PatientOut, ProviderCreate, ProviderOut, ProviderUpdate
from src.services.directory_service import UNCHANGED, DirectoryService
from src.services.errors import (
    InvalidArgument,
    PatientNotFound,
    ProviderHasPatients,
    ProviderNotFound,
)

router = APIRouter(prefix="/v1")


@router.post(
    "/patients",
    status_code=status.HTTP_201_CREATED,
    response_model=PatientOut,
    tags=["patients"],
    responses={
        201: links(
            GetPatient=link("getPatient", patient_id="id"),
            GetCareTeam=link("getCareTeam", patient_id="id"),
            AssignPrimaryProvider=link("assignPrimaryProvider", patient_id="id"),
            AddCareTeamMember=link("addCareTeamMember", patient_id="id"),
            RemoveCareTeamMember=link("removeCareTeamMember", patient_id="id"),
            GetCareTeamHistory=link("getCareTeamHistory", patient_id="id"),
            GetCareTeamPeriods=link("getCareTeamPeriods", patient_id="id"),
        ),
        **problem_responses(body=True),
    },
)
async def create_patient(body: PatientCreate, db: DB, caller: CurrentCaller) -> PatientOut:
    record = await DirectoryService.create_patient(
        db=db, organization_id=caller.organization_id, **body.model_dump()
    )
    return PatientOut.model_validate(record, from_attributes=True)


@router.get(
    "/patients/{patient_id}",
    response_model=PatientOut,
    tags=["patients"],
    responses=problem_responses(PatientNotFound),
)
async def get_patient(patient_id: uuid.UUID, db: DB, caller: CurrentCaller) -> PatientOut:
    record = await DirectoryService.get_patient(
        db=db, organization_id=caller.organization_id, patient_id=patient_id
    )
    return PatientOut.model_validate(record, from_attributes=True)


@router.post(
    "/providers",
    status_code=status.HTTP_201_CREATED,
    response_model=ProviderOut,
    tags=["providers"],
    responses={
        201: links(
            GetProvider=link("getProvider", provider_id="id"),
            UpdateProvider=link("updateProvider", provider_id="id"),
            AssignAsPrimaryProvider=link("assignPrimaryProvider", body_provider_id="id"),
            AddAsCareTeamMember=link("addCareTeamMember", body_provider_id="id"),
            GetProviderPanel=link("getProviderPanel", provider_id="id"),
            TransferProviderPanel=link("transferProviderPanel", provider_id="id"),
        ),
        **problem_responses(body=True),
    },
)
async def create_provider(body: ProviderCreate, db: DB, caller: CurrentCaller) -> ProviderOut:
    record = await DirectoryService.create_provider(
        db=db, organization_id=caller.organization_id, **body.model_dump()
    )
    return ProviderOut.model_validate(record, from_attributes=True)


@router.get(
    "/providers/{provider_id}",
    response_model=ProviderOut,
    tags=["providers"],
    responses=problem_responses(ProviderNotFound),
)
async def get_provider(provider_id: uuid.UUID, db: DB, caller: CurrentCaller) -> ProviderOut:
    record = await DirectoryService.get_provider(
        db=db, organization_id=caller.organization_id, provider_id=provider_id
    )
    return ProviderOut.model_validate(record, from_attributes=True)


@router.patch(
    "/providers/{provider_id}",
    response_model=ProviderOut,
    tags=["providers"],
    responses=problem_responses(ProviderNotFound, ProviderHasPatients, InvalidArgument, body=True),
)
async def update_provider(
    provider_id: uuid.UUID, body: ProviderUpdate, db: DB, caller: CurrentCaller
) -> ProviderOut:
    """Change what is given: `active` (deactivating a provider who is still some
    patients' primary is 409 provider_has_patients: transfer the panel first) and
    `panel_capacity` (null: no limit)."""
    record = await DirectoryService.update_provider(
        db=db,
        organization_id=caller.organization_id,
        provider_id=provider_id,
        active=body.active,
        panel_capacity=body.panel_capacity
        if "panel_capacity" in body.model_fields_set
        else UNCHANGED,
    )
    return ProviderOut.model_validate(record, from_attributes=True)
