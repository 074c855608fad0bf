"""Patients and providers of the caller's organization."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from src.api.deps import DB, CurrentCaller
from src.api.errors import ERROR_RESPONSES
from src.api.schemas import Patient, PatientCreate, Provider, ProviderCreate, ProviderUpdate
from src.services.directory_service import DirectoryService

router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)


@router.post(
    "/patients", status_code=status.HTTP_201_CREATED, response_model=Patient, tags=["patients"]
)
async def create_patient(body: PatientCreate, db: DB, caller: CurrentCaller) -> Patient:
    record = await DirectoryService.create_patient(
        db=db, organization_id=caller.organization_id, **body.model_dump()
    )
    return Patient.model_validate(record, from_attributes=True)


@router.get("/patients/{patient_id}", response_model=Patient, tags=["patients"])
async def get_patient(patient_id: uuid.UUID, db: DB, caller: CurrentCaller) -> Patient:
    record = await DirectoryService.get_patient(
        db=db, organization_id=caller.organization_id, patient_id=patient_id
    )
    return Patient.model_validate(record, from_attributes=True)


@router.post(
    "/providers", status_code=status.HTTP_201_CREATED, response_model=Provider, tags=["providers"]
)
async def create_provider(body: ProviderCreate, db: DB, caller: CurrentCaller) -> Provider:
    record = await DirectoryService.create_provider(
        db=db, organization_id=caller.organization_id, **body.model_dump()
    )
    return Provider.model_validate(record, from_attributes=True)


@router.get("/providers/{provider_id}", response_model=Provider, tags=["providers"])
async def get_provider(provider_id: uuid.UUID, db: DB, caller: CurrentCaller) -> Provider:
    record = await DirectoryService.get_provider(
        db=db, organization_id=caller.organization_id, provider_id=provider_id
    )
    return Provider.model_validate(record, from_attributes=True)


@router.patch("/providers/{provider_id}", response_model=Provider, tags=["providers"])
async def update_provider(
    provider_id: uuid.UUID, body: ProviderUpdate, db: DB, caller: CurrentCaller
) -> Provider:
    """Activate or deactivate a provider (`{"active": false}`)."""
    record = await DirectoryService.set_provider_active(
        db=db, organization_id=caller.organization_id, provider_id=provider_id, active=body.active
    )
    return Provider.model_validate(record, from_attributes=True)
