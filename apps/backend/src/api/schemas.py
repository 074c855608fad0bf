"""Request and response bodies. Requests are strict: unknown fields, wrong types, and
out-of-range values are refused with 422 before anything is written. The field rules
live in src/api/fields.py, stated once for validation and the OpenAPI document.

(FastAPI validates the parsed JSON in Python mode, where pydantic's strict mode would
refuse date and UUID strings; so strictness is per field instead.)"""

from __future__ import annotations

import datetime
import uuid
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from src.api.fields import BirthDate, PersonName

NPI_PATTERN = r"^[0-9]{10}$"


class StrictBody(BaseModel):
    """A request body: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


class PatientCreate(StrictBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"first_name": "Ada", "last_name": "Lovelace", "dob": "1984-02-29"}]
        }
    )

    first_name: PersonName
    last_name: PersonName
    dob: BirthDate


class ProviderCreate(StrictBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"first_name": "Grace", "last_name": "Hopper", "npi": "1234567893"}]
        }
    )

    first_name: PersonName
    last_name: PersonName
    npi: Annotated[str, Field(pattern=NPI_PATTERN, description="10-digit NPI")] | None = None


class ProviderUpdate(StrictBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"active": False}]})

    active: StrictBool


class ProviderRef(StrictBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"provider_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6"}]}
    )

    provider_id: uuid.UUID = Field(
        description="A provider of your organization (422 provider_not_found otherwise)"
    )


class PatientOut(BaseModel):
    id: uuid.UUID
    first_name: str | None
    last_name: str | None
    dob: datetime.date | None
    created_at: datetime.datetime


class ProviderOut(BaseModel):
    id: uuid.UUID
    first_name: str | None
    last_name: str | None
    npi: str | None
    active: bool
    created_at: datetime.datetime


class CareTeamMemberOut(BaseModel):
    provider_id: uuid.UUID
    is_primary_provider: bool
    assigned_at: datetime.datetime


class CareTeamOut(BaseModel):
    patient_id: uuid.UUID
    primary_provider_id: uuid.UUID | None
    members: list[CareTeamMemberOut] = Field(description="The primary first.")


class CareTeamEventOut(BaseModel):
    id: int = Field(description="The event's number within your organization, in commit order")
    event_type: str
    provider_id: uuid.UUID
    previous_primary_provider_id: uuid.UUID | None
    actor: str
    reason: str | None
    occurred_at: datetime.datetime


class CareTeamHistoryOut(BaseModel):
    items: list[CareTeamEventOut] = Field(description="Newest first.")
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end."
    )


class Health(BaseModel):
    status: str
