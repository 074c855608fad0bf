"""Domain errors of the service layer.

Every error a caller can meet is a CareTeamError with a stable `code` and a message that
carries ids only (never names or dates of birth). The HTTP layer maps them in one place;
no raw driver exception leaves the service.
"""

from __future__ import annotations

import uuid


class CareTeamError(Exception):
    """Base of every service error. `code` is stable and machine-readable."""

    code = "care_team_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(CareTeamError):
    """Something does not exist in this organization (or exists only in another one)."""

    code = "not_found"


class PatientNotFound(NotFoundError):
    code = "patient_not_found"

    def __init__(self, patient_id: uuid.UUID) -> None:
        super().__init__(f"patient {patient_id} not found in this organization")
        self.patient_id = patient_id


class ProviderNotFound(NotFoundError):
    code = "provider_not_found"

    def __init__(self, provider_id: uuid.UUID) -> None:
        super().__init__(f"provider {provider_id} not found in this organization")
        self.provider_id = provider_id


class ProviderNotOnCareTeam(NotFoundError):
    code = "provider_not_on_care_team"

    def __init__(self, patient_id: uuid.UUID, provider_id: uuid.UUID) -> None:
        super().__init__(f"provider {provider_id} is not on the care team of patient {patient_id}")


class ConflictError(CareTeamError):
    """The request contradicts the current state."""

    code = "conflict"


class ProviderInactive(ConflictError):
    code = "provider_inactive"

    def __init__(self, provider_id: uuid.UUID) -> None:
        super().__init__(f"provider {provider_id} is inactive and cannot join a care team")


class ProviderAlreadyPrimary(ConflictError):
    code = "provider_already_primary"

    def __init__(self, patient_id: uuid.UUID, provider_id: uuid.UUID) -> None:
        super().__init__(
            f"provider {provider_id} is the primary provider of patient {patient_id}; "
            "assign another primary first to make it a secondary"
        )


class PrimaryProviderConflict(ConflictError):
    """A write was refused by idx_unique_primary_provider_per_patient."""

    code = "primary_provider_conflict"

    def __init__(self, organization_id: uuid.UUID, patient_id: uuid.UUID) -> None:
        super().__init__(
            f"patient {patient_id} of organization {organization_id} already has a primary "
            "provider (refused by idx_unique_primary_provider_per_patient); retry the request"
        )


class DatabaseUnavailable(CareTeamError):
    """The database could not be reached or did not answer in time (the change was rolled
    back, unless the connection was lost during commit: then read the state to know)."""

    code = "database_unavailable"


class OutcomeUnknown(DatabaseUnavailable):
    """The connection was lost while committing and the outcome could not be checked."""

    code = "outcome_unknown"

    def __init__(self, operation: str) -> None:
        super().__init__(
            f"the connection was lost while {operation} was committing; it may or may not "
            "have been applied: read the current state before retrying"
        )


class DatabaseError(CareTeamError):
    """The database refused the operation for a reason the service did not expect."""

    code = "database_error"


class OrganizationNotFound(NotFoundError):
    code = "organization_not_found"

    def __init__(self, organization_id: uuid.UUID) -> None:
        super().__init__(f"organization {organization_id} not found")


class ApiKeyNotFound(NotFoundError):
    code = "api_key_not_found"

    def __init__(self, key_id: uuid.UUID) -> None:
        super().__init__(f"API key {key_id} not found or already revoked")
