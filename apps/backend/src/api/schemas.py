"""Request and response bodies. Requests are strict: unknown fields, wrong types, and
out-of-range values are refused with 422 before anything is written. The field rules
live in src/api/fields.py, stated once for validation and the OpenAPI document.

(FastAPI validates the parsed JSON in Python mode, where pydantic's strict mode would
refuse date and UUID strings; so strictness is per field instead.)"""

from __future__ import annotations

import datetime
import uuid
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator
from pydantic.json_schema import SkipJsonSchema

from src.api.fields import (
    JSON_INTEGER,
    NOTE_PATTERN,
    BirthDate,
    CredentialName,
    IdentifierSystem,
    IdentifierValue,
    Npi,
    PersonName,
    Scope,
    Uuid,
)
from src.models import NOTE_MAX_LENGTH, ChangeReason, EventType, Gender, PeriodRole
from src.scopes import DEFAULT_KEY_SCOPES
from src.services.panel_service import PreviousProvider

MAX_CAPACITY = 1_000_000
MAX_IDENTIFIERS = 20


class StrictBody(BaseModel):
    """A request body: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


def _no_default(schema: dict[str, Any]) -> None:
    """A field that may be absent but not null: its schema states no default."""
    schema.pop("default", None)


class IdentifierIn(StrictBody):
    system: IdentifierSystem = Field(description="Whose identifier it is: a URI, e.g. an MRN's")
    value: IdentifierValue


Identifiers = Annotated[
    list[IdentifierIn],
    Field(
        max_length=MAX_IDENTIFIERS,
        description="Each (system, value) names at most one patient of your organization "
        "(409 identifier_taken otherwise), and is given once",
        json_schema_extra={"uniqueItems": True},
    ),
]


GENDER_DESCRIPTION = (
    "Administrative gender, as FHIR's Patient.gender: male, female, other or unknown "
    "(unknown when not given)"
)


class PatientCreate(StrictBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "first_name": "Ada",
                    "last_name": "Lovelace",
                    "dob": "1984-02-29",
                    "gender": "female",
                    "identifiers": [{"system": "urn:example:clinic:mrn", "value": "MRN-0042"}],
                }
            ]
        }
    )

    first_name: PersonName
    last_name: PersonName
    dob: BirthDate
    gender: Gender = Field(default=Gender.UNKNOWN, description=GENDER_DESCRIPTION)
    identifiers: Identifiers = []


def _at_least_one_field(model: BaseModel, names: str) -> None:
    if not model.model_fields_set:
        raise ValueError(f"give at least one of {names}")


def _not_null(value: Any) -> Any:
    """An update's field may be absent, never null (null is not a state it can be in):
    refused under the field's own name."""
    if value is None:
        raise ValueError("cannot be null: leave the field out to keep its value")
    return value


class PatientUpdate(StrictBody):
    """Only the fields given change; `identifiers` replaces the whole list."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"last_name": "Byron"}, {"identifiers": []}],
            "minProperties": 1,
        }
    )

    first_name: PersonName | SkipJsonSchema[None] = Field(
        default=None, json_schema_extra=_no_default
    )
    last_name: PersonName | SkipJsonSchema[None] = Field(
        default=None, json_schema_extra=_no_default
    )
    dob: BirthDate | SkipJsonSchema[None] = Field(default=None, json_schema_extra=_no_default)
    gender: Gender | SkipJsonSchema[None] = Field(
        default=None, description=GENDER_DESCRIPTION, json_schema_extra=_no_default
    )
    identifiers: Identifiers | SkipJsonSchema[None] = Field(
        default=None, json_schema_extra=_no_default
    )

    _no_nulls = field_validator(
        "first_name", "last_name", "dob", "gender", "identifiers", mode="before"
    )(_not_null)

    @model_validator(mode="after")
    def _something_to_change(self) -> PatientUpdate:
        _at_least_one_field(self, "first_name, last_name, dob, gender, identifiers")
        return self


class ProviderCreate(StrictBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"first_name": "Grace", "last_name": "Hopper", "npi": "1234567893"}]
        }
    )

    first_name: PersonName
    last_name: PersonName
    npi: Npi | None = Field(
        default=None, description="Unique within your organization (409 npi_taken otherwise)"
    )


class ProviderUpdate(StrictBody):
    """Only the fields given change; `panel_capacity: null` removes the limit, `npi: null`
    the NPI."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"active": False}, {"panel_capacity": 1500}, {"last_name": "Hopper"}],
            "minProperties": 1,
        }
    )

    first_name: PersonName | SkipJsonSchema[None] = Field(
        default=None, json_schema_extra=_no_default
    )
    last_name: PersonName | SkipJsonSchema[None] = Field(
        default=None, json_schema_extra=_no_default
    )
    npi: Npi | None = Field(default=None, description="null removes it")

    # Absent: unchanged; null is not a state a provider can be in (so not in the schema).
    active: StrictBool | SkipJsonSchema[None] = Field(
        default=None,
        description="false: no new care teams (409 while it has patients)",
        json_schema_extra=_no_default,
    )
    panel_capacity: Annotated[int, Field(ge=0, le=MAX_CAPACITY), JSON_INTEGER] | None = Field(
        default=None, description="How many patients it may be the primary of; null: no limit"
    )

    _no_nulls = field_validator("first_name", "last_name", "active", mode="before")(_not_null)

    @model_validator(mode="after")
    def _something_to_change(self) -> ProviderUpdate:
        _at_least_one_field(self, "first_name, last_name, npi, active, panel_capacity")
        return self


Reason = Annotated[ChangeReason, Field(description="Why the care team changes (default: other)")]
Note = Annotated[
    str,
    Field(
        max_length=NOTE_MAX_LENGTH,
        pattern=NOTE_PATTERN,
        description="Free text, stored with the change, never logged (it may hold health "
        "information); at most 500 characters",
    ),
]


class TeamChange(StrictBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "provider_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                    "reason": "patient_request",
                }
            ]
        }
    )

    provider_id: Uuid = Field(
        description="A provider of your organization (422 provider_not_found otherwise)"
    )
    reason: Reason = ChangeReason.OTHER
    note: Note | None = None


class MemberRemoval(StrictBody):
    model_config = ConfigDict(json_schema_extra={"examples": [{"reason": "provider_left"}]})

    reason: Reason = ChangeReason.OTHER
    note: Note | None = None


class PanelTransfer(StrictBody):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "to_provider_id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
                    "reason": "provider_left",
                    "previous_provider": "keep_as_secondary",
                    "dry_run": True,
                }
            ]
        }
    )

    to_provider_id: Uuid = Field(
        description="The provider who becomes the patients' primary (422 if unknown)"
    )
    reason: ChangeReason
    note: Note | None = None
    previous_provider: PreviousProvider = PreviousProvider.KEEP_AS_SECONDARY
    dry_run: StrictBool = False


class IdentifierOut(BaseModel):
    system: str
    value: str


class PatientOut(BaseModel):
    id: uuid.UUID
    first_name: str | None
    last_name: str | None
    dob: datetime.date | None
    gender: Gender = Field(description="male, female, other or unknown (none given)")
    identifiers: list[IdentifierOut] = Field(description="In (system, value) order")
    created_at: datetime.datetime
    primary_provider_id: uuid.UUID | None = Field(
        description="The patient's primary provider now; null: none (the ETag changes with it)"
    )


class PatientListOut(BaseModel):
    items: list[PatientOut] = Field(description="In the order `sort` asks (id by default).")
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end."
    )


class ProviderOut(BaseModel):
    id: uuid.UUID
    first_name: str | None
    last_name: str | None
    npi: str | None
    active: bool
    panel_size: int = Field(description="Patients it is the primary provider of, now")
    panel_capacity: int | None = Field(description="Its limit; null: none")
    created_at: datetime.datetime


class ProviderListOut(BaseModel):
    items: list[ProviderOut] = Field(description="In id order.")
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end."
    )


class RecordChangeOut(BaseModel):
    id: int = Field(description="The record's change number: 1 for its creation, then 2, 3...")
    action: str = Field(description="created or updated")
    fields: list[str] = Field(description="The fields it set or changed (never their values)")
    actor: str = Field(
        description="Who: api_key:<key id>, smart_client:<client id> (an access token), or "
        "the command or migration"
    )
    changed_at: datetime.datetime


class RecordChangesOut(BaseModel):
    items: list[RecordChangeOut] = Field(description="Newest first.")
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end."
    )


class CareTeamMemberOut(BaseModel):
    provider_id: uuid.UUID
    is_primary_provider: bool
    role: PeriodRole
    assigned_at: datetime.datetime
    since: datetime.datetime | None = Field(description="When its current role began")
    first_name: str | None
    last_name: str | None
    active: bool = Field(description="false: it takes no new care teams")


class CareTeamOut(BaseModel):
    patient_id: uuid.UUID
    primary_provider_id: uuid.UUID | None
    members: list[CareTeamMemberOut] = Field(description="The primary first.")


class CareTeamEventOut(BaseModel):
    id: int = Field(description="The event's number within your organization, in commit order")
    event_type: EventType = Field(
        description="primary_assigned: provider_id became the primary. primary_demoted: "
        "provider_id, the primary, became a secondary. secondary_added: provider_id joined "
        "as a secondary. provider_removed: provider_id left the team. migration_dedupe: "
        "provider_id, one of several primaries from before the rule, was made a secondary."
    )
    provider_id: uuid.UUID = Field(description="The provider the event is about")
    previous_primary_provider_id: uuid.UUID | None = Field(
        description="Who was the primary just before the event, when the event changes "
        "who the primary is: for primary_assigned the primary it replaced (null: none); "
        "for primary_demoted, migration_dedupe and a provider_removed of the primary, "
        "provider_id itself. Null when the event leaves the primary as it was "
        "(secondary_added; provider_removed of a secondary)."
    )
    actor: str
    reason: str | None = Field(
        description="Why: one of the reasons (free text on events from before them)"
    )
    note: str | None = Field(description="The note given with the change, if any")
    occurred_at: datetime.datetime


class CareTeamHistoryOut(BaseModel):
    items: list[CareTeamEventOut] = Field(description="Newest first.")
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end."
    )


class FeedEventOut(CareTeamEventOut):
    patient_id: uuid.UUID


class CareTeamEventsOut(BaseModel):
    items: list[FeedEventOut] = Field(description="Oldest first, in commit order.")
    next_cursor: str = Field(
        description="Pass as ?after= to continue after the last item (the same cursor "
        "when there was nothing new): keep it, and poll with it."
    )


class CareTeamPeriodOut(BaseModel):
    provider_id: uuid.UUID
    role: PeriodRole
    valid_from: datetime.datetime
    valid_to: datetime.datetime | None = Field(description="null while it lasts")
    start_reason: ChangeReason
    end_reason: ChangeReason | None


class CareTeamPeriodsOut(BaseModel):
    items: list[CareTeamPeriodOut] = Field(description="Oldest first.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")


class PanelPatientOut(BaseModel):
    id: uuid.UUID
    first_name: str | None
    last_name: str | None
    dob: datetime.date | None


class PanelEntryOut(BaseModel):
    patient_id: uuid.UUID
    role: PeriodRole
    since: datetime.datetime
    patient: PanelPatientOut | None = Field(
        description="With ?include=patient: the patient's names and birth date (now); "
        "null otherwise"
    )


class PanelOut(BaseModel):
    items: list[PanelEntryOut] = Field(description="In patient id order.")
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")


class TransferOut(BaseModel):
    dry_run: bool = Field(description="true: nothing changed; the figures are the run's")
    moved: int = Field(description="Patients this request moved (in a dry run: the run would move)")
    remaining: int = Field(
        description="Primary patients the provider still has after it (in a dry run: would "
        "still have after the run)"
    )
    refused_capacity: int = Field(
        description="Of those, the ones the target's capacity left out (in a dry run: would "
        "leave out)"
    )


class PanelSizeOut(BaseModel):
    provider_id: uuid.UUID
    active: bool
    panel_size: int
    panel_capacity: int | None


class PanelReportOut(BaseModel):
    items: list[PanelSizeOut] = Field(description="Every provider, in id order.")
    patients_without_primary: int = Field(
        description="Patients without a primary provider, with a care team or none at all"
    )


class Health(BaseModel):
    status: str


# --- keys and SMART clients (careteam/admin) ------------------------------------------------

MAX_SCOPES = 20
DEFAULT_SCOPES_DESCRIPTION = "system/*.cruds (every read and write, not careteam/admin)"

Scopes = Annotated[
    list[Scope],
    Field(
        min_length=1,
        max_length=MAX_SCOPES,
        description="SMART scopes (src/scopes.py), stored in v2 form, each once, sorted",
    ),
]


class ApiKeyCreate(StrictBody):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "nightly sync", "scopes": ["system/CareTeam.rs"]}]}
    )

    name: CredentialName | SkipJsonSchema[None] = Field(
        default=None, description="What the key is for", json_schema_extra=_no_default
    )
    scopes: Scopes = Field(
        default=list(DEFAULT_KEY_SCOPES),
        description=f"What the key may do (default {DEFAULT_SCOPES_DESCRIPTION}); "
        "careteam/admin makes another administrator's key",
    )


class ApiKeyIssuedOut(BaseModel):
    """A new key: `key` is shown this once and never again (only its hash is stored)."""

    id: uuid.UUID
    key: str = Field(description="The bearer credential: keep it secret; shown once")
    name: str | None
    scopes: list[str]
    created_at: datetime.datetime


class ApiKeyOut(BaseModel):
    id: uuid.UUID
    name: str | None
    scopes: list[str]
    created_at: datetime.datetime
    revoked_at: datetime.datetime | None = Field(description="null while the key works")


class ApiKeyListOut(BaseModel):
    items: list[ApiKeyOut] = Field(description="Oldest first; never an access token")
    next_cursor: str | None


JWKS_URL_MAX_LENGTH = 2048


class ClientCreate(StrictBody):
    """Exactly one of `jwks` and `jwks_url`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "bulk export",
                    "jwks_url": "https://bulk.example.org/.well-known/jwks.json",
                    "scopes": ["system/*.rs"],
                }
            ]
        }
    )

    name: CredentialName = Field(description="What the client is (e.g. the service)")
    jwks: dict[str, Any] | SkipJsonSchema[None] = Field(
        default=None,
        description="The client's public keys, a JWK Set: RSA of 2048 bits or more (RS384) "
        "or EC P-384 (ES384), each with a kid; private or symmetric keys are refused",
        json_schema_extra=_no_default,
    )
    jwks_url: str | SkipJsonSchema[None] = Field(
        default=None,
        max_length=JWKS_URL_MAX_LENGTH,
        description="Where the token endpoint fetches the client's JWK Set: https, to a "
        "public host (not localhost, nor a loopback, private, link-local, reserved or "
        "multicast address, nor a name resolving to one)",
        json_schema_extra=_no_default,
    )
    scopes: Scopes = Field(description="What the client may be granted")

    @model_validator(mode="after")
    def _one_way_to_the_keys(self) -> ClientCreate:
        if (self.jwks is None) == (self.jwks_url is None):
            raise ValueError("give exactly one of jwks and jwks_url")
        return self


class ClientOut(BaseModel):
    client_id: uuid.UUID = Field(description="The assertion's iss and sub")
    name: str
    jwks_url: str | None
    keys: int = Field(description="Public keys registered (0 when fetched from jwks_url)")
    scopes: list[str]
    created_at: datetime.datetime
    revoked_at: datetime.datetime | None = Field(description="null while the client works")


class ClientListOut(BaseModel):
    items: list[ClientOut] = Field(description="Oldest first")
    next_cursor: str | None


class AccessLogEntryOut(BaseModel):
    """Who read or changed which patients' data, when, and the outcome: ids, the route
    template, the query parameters' names (never their values) and counts."""

    id: uuid.UUID
    recorded_at: datetime.datetime
    api_key_id: uuid.UUID | None = Field(
        description="The API key that asked (null for a SMART token's or an operator's)"
    )
    client_id: uuid.UUID | None = Field(
        description="The SMART client whose access token asked (null for a plain key)"
    )
    operator: str | None = Field(
        description="An operator's command with no credential (`careteam export`): who ran "
        "it, user@host; null for a request"
    )
    route: str = Field(description='The method and route template, e.g. "GET /v1/patients/{id}"')
    interaction: str = Field(
        description="The FHIR restful interaction: read, vread, history-instance, "
        "search-type, create, update"
    )
    action: str = Field(description="C, R, U, D or E (FHIR AuditEvent.action)")
    parameters: list[str] = Field(
        description='The query parameters\' names, never their values ("?" for a name '
        "the API does not declare)"
    )
    status: int = Field(description="The HTTP status answered")
    result_count: int | None = Field(description="A search's or list's results on its page")
    patient_ids: list[uuid.UUID] = Field(description="The patients it named, as asked")


class AccessLogOut(BaseModel):
    items: list[AccessLogEntryOut] = Field(description="Oldest first.")
    next_cursor: str = Field(
        description="Pass as ?after= to continue after the last item (the same cursor "
        "when there was nothing new)."
    )
