"""Request and response bodies. Requests are strict: unknown fields, wrong types, and
out-of-range values are refused with 422 before anything is written.

(FastAPI validates the parsed JSON in Python mode, where pydantic's strict mode would
refuse date and UUID strings; so strictness is per field instead.)"""

from __future__ import annotations

import datetime
import uuid
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
)

OLDEST_BIRTH_DATE = datetime.date(1900, 1, 1)


# No control characters, no leading or trailing white space. Expressed as a pattern, so
# the OpenAPI schema says exactly what the API accepts (and the fuzzer can hold it to it).
NAME_PATTERN = r"^[^\x00-\x1f\x7f\s](?:[^\x00-\x1f\x7f]*[^\x00-\x1f\x7f\s])?$"

Name = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=NAME_PATTERN)]


def _date_string(value: object) -> object:
    if not isinstance(value, str):
        raise ValueError("must be a date string, YYYY-MM-DD")
    return value


def _plausible_birth_date(value: datetime.date) -> datetime.date:
    if value > datetime.datetime.now(datetime.UTC).date():
        raise ValueError("date of birth must not be in the future")
    if value < OLDEST_BIRTH_DATE:
        raise ValueError(f"date of birth must not be before {OLDEST_BIRTH_DATE.isoformat()}")
    return value


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PatientCreate(Request):
    first_name: Name
    last_name: Name
    dob: Annotated[
        datetime.date, BeforeValidator(_date_string), AfterValidator(_plausible_birth_date)
    ]


class ProviderCreate(Request):
    first_name: Name
    last_name: Name
    npi: Annotated[str, Field(pattern=r"^[0-9]{10}$", description="10-digit NPI")] | None = None


class ProviderUpdate(Request):
    active: StrictBool


class ProviderRef(Request):
    provider_id: uuid.UUID


class Patient(BaseModel):
    id: uuid.UUID
    first_name: str | None
    last_name: str | None
    dob: datetime.date | None
    created_at: datetime.datetime


class Provider(BaseModel):
    id: uuid.UUID
    first_name: str | None
    last_name: str | None
    npi: str | None
    active: bool
    created_at: datetime.datetime


class CareTeamMember(BaseModel):
    provider_id: uuid.UUID
    is_primary_provider: bool
    assigned_at: datetime.datetime


class CareTeam(BaseModel):
    patient_id: uuid.UUID
    primary_provider_id: uuid.UUID | None
    members: list[CareTeamMember] = Field(description="The primary first.")


class CareTeamEvent(BaseModel):
    id: int
    event_type: str
    provider_id: uuid.UUID
    previous_primary_provider_id: uuid.UUID | None
    actor: str
    reason: str | None
    occurred_at: datetime.datetime


class CareTeamHistory(BaseModel):
    items: list[CareTeamEvent] = Field(description="Newest first.")
    next_cursor: int | None = Field(
        description="Pass as ?cursor= for the next page; null at the end."
    )


class Health(BaseModel):
    status: str
