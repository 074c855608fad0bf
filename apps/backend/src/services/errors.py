"""Domain errors of the service layer.

Every error a caller can meet is a CareTeamError with a stable `code` and a message that
carries ids only (never names or dates of birth). The HTTP layer maps them in one place
(src/api/errors.py: ANSWERS); no raw driver exception leaves the service.

The database code raises its own errors with SQLSTATEs of class CT. Their one list is
`sql/errcodes.csv` (SQLSTATE, the domain error it becomes, what it means), read here
into DATABASE_ERRORS; the SQL files raise only codes listed there (a test holds both
sides to it). An error raised by the database names no ids of its own: the statement's
Subject (the patient, the provider it named) supplies them.
"""

from __future__ import annotations

import csv
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Self

ERRCODES_FILE = Path(__file__).resolve().parents[2] / "sql" / "errcodes.csv"


@dataclass(frozen=True)
class Subject:
    """What a database statement acted on: the ids its errors name."""

    patient_id: uuid.UUID | None = None
    provider_id: uuid.UUID | None = None
    provider_field: str = "provider_id"  # the request field that named the provider


NO_SUBJECT = Subject()


class CareTeamError(Exception):
    """Base of every service error. `code` is stable and machine-readable; `title` is
    the same for every occurrence of the code; `message` says what happened, with ids."""

    code = "care_team_error"
    title = "Care team error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @classmethod
    def from_database(cls, subject: Subject, detail: str) -> Self:
        """The error as the database raised it (its SQLSTATE in sql/errcodes.csv), about
        `subject`; `detail` is the error's DETAIL. Each class the list names defines it."""
        raise NotImplementedError(f"{cls.__name__} is not raised by the database")


class NotFoundError(CareTeamError):
    """What the request acts on does not exist in this organization (or exists only in
    another one)."""

    code = "not_found"
    title = "Not found"


class PatientNotFound(NotFoundError):
    code = "patient_not_found"
    title = "Patient not found"

    def __init__(self, patient_id: uuid.UUID) -> None:
        super().__init__(f"patient {patient_id} not found in this organization")
        self.patient_id = patient_id

    @classmethod
    def from_database(cls, subject: Subject, detail: str) -> Self:
        return cls(_required(subject.patient_id))


class ProviderNotFound(NotFoundError):
    code = "provider_not_found"
    title = "Provider not found"

    def __init__(self, provider_id: uuid.UUID) -> None:
        super().__init__(f"provider {provider_id} not found in this organization")
        self.provider_id = provider_id


class VersionNotKept(NotFoundError):
    """The record had this version, but it was written before versions were kept
    (revision 20261207_record_snapshots): its values cannot be read back."""

    code = "version_not_kept"
    title = "Version not kept"

    def __init__(self, kind: str, record_id: uuid.UUID, version: int) -> None:
        super().__init__(
            f"version {version} of {kind} {record_id} was written before record versions "
            "were kept: its values cannot be read (the current version and every version "
            "written since can)"
        )
        self.record_id = record_id
        self.version = version


class ProviderNotOnCareTeam(NotFoundError):
    code = "provider_not_on_care_team"
    title = "Provider not on the care team"

    def __init__(self, patient_id: uuid.UUID, provider_id: uuid.UUID) -> None:
        super().__init__(f"provider {provider_id} is not on the care team of patient {patient_id}")

    @classmethod
    def from_database(cls, subject: Subject, detail: str) -> Self:
        return cls(_required(subject.patient_id), _required(subject.provider_id))


class InvalidArgument(CareTeamError):
    """A value the service was given breaks a rule the caller could have checked (an
    unknown reason, a note too long, a transfer to the same provider). `field` names it."""

    code = "invalid_argument"
    title = "Invalid argument"
    location = "body"  # where the request carried it: body, query, path

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


def page_limit(limit: int, most: int) -> int:
    """`limit` for a paged read that returns at most `most` rows; InvalidArgument outside
    1..most, never cut silently (a router asks one row more than its page to know
    whether another follows: cut, that row went missing and so did every later page)."""
    if not 1 <= limit <= most:
        raise InvalidArgument(f"limit must be 1 to {most}", field="limit")
    return limit


class InvalidCursor(InvalidArgument):
    """A cursor that is not one this server gave for this organization and this list
    (another organization's, another list's, forged, or of the release before)."""

    code = "invalid_cursor"
    title = "Invalid cursor"
    location = "query"

    def __init__(self, message: str, *, field: str = "cursor") -> None:
        super().__init__(message, field=field)


class InvalidReference(InvalidArgument):
    """A value of the request refers to something that does not exist in this
    organization (or exists only in another one): the request is invalid, while what it
    acts on exists. `field` names the argument that refers to nothing."""

    code = "invalid_reference"
    title = "Invalid reference"


class ProviderReferenceNotFound(InvalidReference):
    """The provider a write names (not the resource it acts on) is unknown."""

    code = "provider_not_found"
    title = "Provider not found"

    def __init__(self, provider_id: uuid.UUID, *, field: str = "provider_id") -> None:
        super().__init__(f"provider {provider_id} not found in this organization", field=field)
        self.provider_id = provider_id

    @classmethod
    def from_database(cls, subject: Subject, detail: str) -> Self:
        return cls(_required(subject.provider_id), field=subject.provider_field)


class ConflictError(CareTeamError):
    """The request contradicts the current state."""

    code = "conflict"
    title = "Conflict"


class ProviderInactive(ConflictError):
    code = "provider_inactive"
    title = "Provider inactive"

    def __init__(self, provider_id: uuid.UUID) -> None:
        super().__init__(f"provider {provider_id} is inactive and cannot join a care team")

    @classmethod
    def from_database(cls, subject: Subject, detail: str) -> Self:
        return cls(_required(subject.provider_id))


class ProviderAlreadyPrimary(ConflictError):
    code = "provider_already_primary"
    title = "Provider already primary"

    def __init__(self, patient_id: uuid.UUID, provider_id: uuid.UUID) -> None:
        super().__init__(
            f"provider {provider_id} is the primary provider of patient {patient_id}; "
            "assign another primary first to make it a secondary"
        )

    @classmethod
    def from_database(cls, subject: Subject, detail: str) -> Self:
        return cls(_required(subject.patient_id), _required(subject.provider_id))


class PanelFull(ConflictError):
    """The provider already is the primary provider of as many patients as its capacity."""

    code = "panel_full"
    title = "Panel full"

    def __init__(self, provider_id: uuid.UUID, detail: str = "") -> None:
        counts = f" ({detail} patients)" if detail else ""
        super().__init__(f"provider {provider_id}'s panel is full{counts}")
        self.provider_id = provider_id

    @classmethod
    def from_database(cls, subject: Subject, detail: str) -> Self:
        return cls(_required(subject.provider_id), detail)


class ProviderHasPatients(ConflictError):
    """A provider who is still some patients' primary cannot be deactivated."""

    code = "provider_has_patients"
    title = "Provider has patients"

    def __init__(self, provider_id: uuid.UUID, patients: int) -> None:
        super().__init__(
            f"provider {provider_id} is the primary provider of {patients} patient(s); "
            "transfer the panel first"
        )
        self.provider_id = provider_id
        self.patients = patients


class PrimaryProviderConflict(ConflictError):
    """A write was refused by idx_unique_primary_provider_per_patient."""

    code = "primary_provider_conflict"
    title = "Primary provider conflict"

    def __init__(self, organization_id: uuid.UUID, patient_id: uuid.UUID) -> None:
        super().__init__(
            f"patient {patient_id} of organization {organization_id} already has a primary "
            "provider (refused by idx_unique_primary_provider_per_patient); retry the request"
        )


class DatabaseBusy(CareTeamError):
    """The operation waited too long for a lock or a statement (another writer held the
    patient, or the server is overloaded); nothing changed. Retrying soon is safe."""

    code = "busy"
    title = "Busy, retry shortly"
    retry_after_s = 1


class DatabaseUnavailable(CareTeamError):
    """The database could not be reached (the change was rolled back, unless the
    connection was lost during commit: then read the state to know)."""

    code = "database_unavailable"
    title = "Database unavailable"
    retry_after_s = 5


class AccessLogUnavailable(DatabaseUnavailable):
    """The access log entry of a request that reads or changes patient data could not
    be written, so its answer is withheld (src/api/access_log.py). A read can simply be
    retried; a write may have committed (read the state, or retry with the same
    Idempotency-Key)."""

    code = "access_log_unavailable"
    title = "Access log unavailable"
    retry_after_s = 5

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or "the access log could not record this request, so its answer is withheld; "
            "retry later (a write may have been done: read the state first, or retry with "
            "the same Idempotency-Key)"
        )


class OutcomeUnknown(DatabaseUnavailable):
    """The connection was lost while committing and the outcome could not be checked."""

    code = "outcome_unknown"
    title = "Outcome unknown"

    def __init__(self, operation: str) -> None:
        super().__init__(
            f"the connection was lost while {operation} was committing; it may or may not "
            "have been applied: read the current state before retrying"
        )


class DatabaseError(CareTeamError):
    """The database refused the operation for a reason the service did not expect."""

    code = "database_error"
    title = "Database error"


class OrganizationNotFound(NotFoundError):
    code = "organization_not_found"
    title = "Organization not found"

    def __init__(self, organization_id: uuid.UUID) -> None:
        super().__init__(f"organization {organization_id} not found")


class ApiKeyNotFound(NotFoundError):
    code = "api_key_not_found"
    title = "API key not found"

    def __init__(self, key_id: uuid.UUID) -> None:
        super().__init__(f"API key {key_id} not found")


class SmartClientNotFound(NotFoundError):
    code = "smart_client_not_found"
    title = "SMART client not found"

    def __init__(self, client_id: uuid.UUID) -> None:
        super().__init__(f"SMART client {client_id} not found")


class TokenRefused(CareTeamError):
    """The token endpoint refuses a request (src/services/smart_service.py). `error` is
    the OAuth 2.0 error code (RFC 6749 section 5.2: invalid_request, invalid_client,
    unsupported_grant_type, invalid_scope); the message is its error_description, with
    ids only. The token route answers it as OAuth does, never as a problem."""

    code = "token_refused"
    title = "Token refused"

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error


class ApiKeyNotLive(CareTeamError):
    """The request's API key was revoked after the request authenticated (checked by the
    first statement of each of its transactions): nothing changed."""

    code = "unauthorized"
    title = "Unauthorized"

    def __init__(self) -> None:
        super().__init__("missing, malformed or revoked API key")

    @classmethod
    def from_database(cls, subject: Subject, detail: str) -> Self:
        return cls()


class InsufficientScope(CareTeamError):
    """The request's credential is live but lacks the scope the operation needs: raised by
    the database's credential-management functions (careteam_admin_caller) when the
    caller does not hold careteam/admin, behind the HTTP layer's own check
    (src/api/auth.py), which answers the same 403 first."""

    code = "insufficient_scope"
    title = "Insufficient scope"
    scope = "careteam/admin"  # the only scope the database checks itself

    def __init__(self) -> None:
        super().__init__(f"this API key does not have the scope this request needs: {self.scope}")

    @classmethod
    def from_database(cls, subject: Subject, detail: str) -> Self:
        return cls()


class IdentifierTaken(ConflictError):
    """Another patient of the organization already has this identifier."""

    code = "identifier_taken"
    title = "Identifier taken"

    def __init__(self) -> None:
        super().__init__("another patient of this organization has one of these identifiers")


class NpiTaken(ConflictError):
    """Another provider of the organization already has this NPI."""

    code = "npi_taken"
    title = "NPI taken"

    def __init__(self) -> None:
        super().__init__("another provider of this organization has this NPI")


class PreconditionFailed(CareTeamError):
    """If-Match named a version that is no longer the current one: nothing changed."""

    code = "precondition_failed"
    title = "Precondition failed"

    def __init__(self, what: str) -> None:
        super().__init__(
            f"{what} changed since the version If-Match names; read it again and retry"
        )

    @classmethod
    def from_database(cls, subject: Subject, detail: str) -> Self:
        return cls(f"the care team of patient {_required(subject.patient_id)}")


class TransferInProgress(ConflictError):
    """Another panel transfer of one of the two providers (as source or target) runs."""

    code = "transfer_in_progress"
    title = "Transfer in progress"
    retry_after_s = 1

    def __init__(self) -> None:
        super().__init__(
            "another panel transfer of one of these providers is running; nothing changed: "
            "retry once it has finished"
        )

    @classmethod
    def from_database(cls, subject: Subject, detail: str) -> Self:
        return cls()


class IdempotencyKeyReused(ConflictError):
    """An Idempotency-Key already used for a different request: the key is bound to that
    one (a conflict with the key's state, as its being in progress is)."""

    code = "idempotency_key_reused"
    title = "Idempotency key reused"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or "this Idempotency-Key was used for a different request; use a new key for a "
            "new request"
        )

    @classmethod
    def from_database(cls, subject: Subject, detail: str) -> Self:
        if detail == "earlier release":
            return cls(
                "this Idempotency-Key holds a response stored by the release before this "
                "server's, which cannot be replayed: read the current state, then send the "
                "request again with a new key if it is still needed"
            )
        return cls()


class IdempotencyKeyInProgress(ConflictError):
    """The request that first used this key is still running."""

    code = "idempotency_key_in_progress"
    title = "Idempotency key in progress"
    retry_after_s = 1

    def __init__(self) -> None:
        super().__init__(
            "the request first sent with this Idempotency-Key is still running; retry shortly"
        )

    @classmethod
    def from_database(cls, subject: Subject, detail: str) -> Self:
        return cls()


def _required(value: uuid.UUID | None) -> uuid.UUID:
    """An id the statement's Subject must name for the error it raised."""
    if value is None:
        raise ValueError("the statement's Subject does not name what its error is about")
    return value


def _subclasses(cls: type[CareTeamError]) -> list[type[CareTeamError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found += _subclasses(sub)
    return found


def _read_errcodes() -> dict[str, type[CareTeamError]]:
    classes = {cls.__name__: cls for cls in _subclasses(CareTeamError)}
    with ERRCODES_FILE.open(newline="", encoding="utf-8") as listing:
        return {row["sqlstate"]: classes[row["domain_error"]] for row in csv.DictReader(listing)}


# SQLSTATE -> the domain error it becomes (sql/errcodes.csv).
DATABASE_ERRORS = _read_errcodes()


def from_database(
    sqlstate: str | None, detail: str | None, subject: Subject
) -> CareTeamError | None:
    """The domain error for an error our database code raised, or None (not one of ours)."""
    cls = DATABASE_ERRORS.get(sqlstate or "")
    return None if cls is None else cls.from_database(subject, detail or "")
